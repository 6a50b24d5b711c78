//! Request shapes of the ECS actions Flotilla serves, as botocore's `ecs` model names them.
//!
//! Every member is optional at the serde level; required members are checked by
//! [`required`] so a missing one yields InvalidParameterException naming it (AWS's
//! behaviour) instead of a deserialisation error. Unknown members are ignored, so newer SDKs
//! keep working; known members Flotilla does not implement are typed [`Unsupported`] and
//! refused by the engine with a message naming them.

use flotilla_model::cluster::{CapacityProviderStrategyItem, ClusterSetting};
use flotilla_model::task::{NetworkConfiguration, TaskOverride};
use flotilla_model::task_definition::{PlacementConstraint, PlacementStrategy, Unsupported};
use flotilla_model::{Attribute, EcsError, Tag, TaskDefinitionInput, VersionInfo};
use serde::Deserialize;

/// A member that must be present and non-empty.
pub fn required<'a>(value: &'a Option<String>, member: &str) -> Result<&'a str, EcsError> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(EcsError::invalid(format!(
            "{member} is required and must not be empty."
        ))),
    }
}

/// Refuses a member Flotilla recognises but does not implement.
pub fn refuse_unsupported(value: &Unsupported, member: &str) -> Result<(), EcsError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::Array(items)) if items.is_empty() => Ok(()),
        Some(_) => Err(EcsError::UnsupportedFeature(format!(
            "Flotilla does not support '{member}' yet."
        ))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CreateClusterRequest {
    pub cluster_name: Option<String>,
    pub tags: Vec<Tag>,
    pub settings: Vec<ClusterSetting>,
    pub configuration: Option<serde_json::Value>,
    pub capacity_providers: Vec<String>,
    pub default_capacity_provider_strategy: Vec<CapacityProviderStrategyItem>,
    pub service_connect_defaults: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DescribeClustersRequest {
    pub clusters: Vec<String>,
    pub include: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListRequest {
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterRequest {
    pub cluster: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateClusterRequest {
    pub cluster: Option<String>,
    pub settings: Option<Vec<ClusterSetting>>,
    pub configuration: Option<serde_json::Value>,
    pub service_connect_defaults: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateClusterSettingsRequest {
    pub cluster: Option<String>,
    pub settings: Option<Vec<ClusterSetting>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PutClusterCapacityProvidersRequest {
    pub cluster: Option<String>,
    pub capacity_providers: Option<Vec<String>>,
    pub default_capacity_provider_strategy: Option<Vec<CapacityProviderStrategyItem>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DescribeCapacityProvidersRequest {
    pub capacity_providers: Vec<String>,
    pub include: Vec<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegisterTaskDefinitionRequest {
    #[serde(flatten)]
    pub task_definition: TaskDefinitionInput,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DescribeTaskDefinitionRequest {
    pub task_definition: Option<String>,
    pub include: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListTaskDefinitionsRequest {
    pub family_prefix: Option<String>,
    pub status: Option<String>,
    pub sort: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListTaskDefinitionFamiliesRequest {
    pub family_prefix: Option<String>,
    pub status: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeregisterTaskDefinitionRequest {
    pub task_definition: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeleteTaskDefinitionsRequest {
    pub task_definitions: Vec<String>,
}

/// One entry of RegisterContainerInstance's `totalResources`.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceInput {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub double_value: Option<f64>,
    pub long_value: Option<i64>,
    pub integer_value: Option<i64>,
    pub string_set_value: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegisterContainerInstanceRequest {
    pub cluster: Option<String>,
    pub instance_identity_document: Option<String>,
    pub instance_identity_document_signature: Option<String>,
    pub total_resources: Vec<ResourceInput>,
    pub version_info: Option<VersionInfo>,
    pub container_instance_arn: Option<String>,
    pub attributes: Vec<Attribute>,
    pub platform_devices: Unsupported,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DescribeContainerInstancesRequest {
    pub cluster: Option<String>,
    pub container_instances: Vec<String>,
    pub include: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListContainerInstancesRequest {
    pub cluster: Option<String>,
    pub filter: Option<String>,
    pub status: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateContainerInstancesStateRequest {
    pub cluster: Option<String>,
    pub container_instances: Vec<String>,
    pub status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeregisterContainerInstanceRequest {
    pub cluster: Option<String>,
    pub container_instance: Option<String>,
    pub force: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RunTaskRequest {
    pub cluster: Option<String>,
    pub task_definition: Option<String>,
    pub count: Option<i64>,
    pub group: Option<String>,
    pub started_by: Option<String>,
    pub tags: Vec<Tag>,
    pub overrides: Option<TaskOverride>,
    pub launch_type: Option<String>,
    pub capacity_provider_strategy: Vec<CapacityProviderStrategyItem>,
    pub placement_constraints: Vec<PlacementConstraint>,
    pub placement_strategy: Vec<PlacementStrategy>,
    pub platform_version: Option<String>,
    pub propagate_tags: Option<String>,
    #[serde(rename = "enableECSManagedTags")]
    pub enable_ecs_managed_tags: Option<bool>,
    pub enable_execute_command: Option<bool>,
    pub reference_id: Option<String>,
    pub client_token: Option<String>,
    pub network_configuration: Option<NetworkConfiguration>,
    pub volume_configurations: Unsupported,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StartTaskRequest {
    pub cluster: Option<String>,
    pub task_definition: Option<String>,
    pub container_instances: Vec<String>,
    pub group: Option<String>,
    pub started_by: Option<String>,
    pub tags: Vec<Tag>,
    pub overrides: Option<TaskOverride>,
    pub propagate_tags: Option<String>,
    #[serde(rename = "enableECSManagedTags")]
    pub enable_ecs_managed_tags: Option<bool>,
    pub enable_execute_command: Option<bool>,
    pub reference_id: Option<String>,
    pub network_configuration: Option<NetworkConfiguration>,
    pub volume_configurations: Unsupported,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StopTaskRequest {
    pub cluster: Option<String>,
    pub task: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DescribeTasksRequest {
    pub cluster: Option<String>,
    pub tasks: Vec<String>,
    pub include: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListTasksRequest {
    pub cluster: Option<String>,
    pub container_instance: Option<String>,
    pub family: Option<String>,
    pub started_by: Option<String>,
    pub service_name: Option<String>,
    pub desired_status: Option<String>,
    pub launch_type: Option<String>,
    pub daemon_name: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AttributesRequest {
    pub cluster: Option<String>,
    pub attributes: Vec<Attribute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListAttributesRequest {
    pub cluster: Option<String>,
    pub target_type: Option<String>,
    pub attribute_name: Option<String>,
    pub attribute_value: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TagResourceRequest {
    pub resource_arn: Option<String>,
    pub tags: Option<Vec<Tag>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UntagResourceRequest {
    pub resource_arn: Option<String>,
    pub tag_keys: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListTagsForResourceRequest {
    pub resource_arn: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PutAccountSettingRequest {
    pub name: Option<String>,
    pub value: Option<String>,
    pub principal_arn: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListAccountSettingsRequest {
    pub name: Option<String>,
    pub value: Option<String>,
    pub principal_arn: Option<String>,
    pub effective_settings: Option<bool>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeleteAccountSettingRequest {
    pub name: Option<String>,
    pub principal_arn: Option<String>,
}

/// ECS's `DeploymentCircuitBreaker` as given (both members are required by ECS).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentCircuitBreakerInput {
    pub enable: Option<bool>,
    pub rollback: Option<bool>,
}

/// ECS's `DeploymentConfiguration` as given: the rolling controller's members, plus the
/// ones Flotilla recognises but does not implement (refused by name when set).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentConfigurationInput {
    pub deployment_circuit_breaker: Option<DeploymentCircuitBreakerInput>,
    pub maximum_percent: Option<i64>,
    pub minimum_healthy_percent: Option<i64>,
    /// `ROLLING` (the only one served) or `BLUE_GREEN`, `LINEAR`, `CANARY`.
    pub strategy: Option<String>,
    pub alarms: Unsupported,
    pub bake_time_in_minutes: Unsupported,
    pub lifecycle_hooks: Unsupported,
    pub linear_configuration: Unsupported,
    pub canary_configuration: Unsupported,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentControllerInput {
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CreateServiceRequest {
    pub cluster: Option<String>,
    pub service_name: Option<String>,
    pub task_definition: Option<String>,
    pub desired_count: Option<i64>,
    pub client_token: Option<String>,
    pub launch_type: Option<String>,
    pub capacity_provider_strategy: Vec<CapacityProviderStrategyItem>,
    pub platform_version: Option<String>,
    pub role: Option<String>,
    pub deployment_configuration: Option<DeploymentConfigurationInput>,
    pub placement_constraints: Vec<PlacementConstraint>,
    pub placement_strategy: Vec<PlacementStrategy>,
    pub health_check_grace_period_seconds: Option<i64>,
    pub scheduling_strategy: Option<String>,
    pub deployment_controller: Option<DeploymentControllerInput>,
    pub tags: Vec<Tag>,
    #[serde(rename = "enableECSManagedTags")]
    pub enable_ecs_managed_tags: Option<bool>,
    pub propagate_tags: Option<String>,
    pub enable_execute_command: Option<bool>,
    pub availability_zone_rebalancing: Option<String>,
    pub load_balancers: Unsupported,
    pub service_registries: Unsupported,
    pub network_configuration: Option<NetworkConfiguration>,
    pub service_connect_configuration: Unsupported,
    pub volume_configurations: Unsupported,
    pub vpc_lattice_configurations: Unsupported,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateServiceRequest {
    pub cluster: Option<String>,
    pub service: Option<String>,
    pub desired_count: Option<i64>,
    pub task_definition: Option<String>,
    pub capacity_provider_strategy: Vec<CapacityProviderStrategyItem>,
    pub deployment_configuration: Option<DeploymentConfigurationInput>,
    /// `None` keeps the service's constraints; `Some(vec![])` clears them (ECS semantics).
    pub placement_constraints: Option<Vec<PlacementConstraint>>,
    pub placement_strategy: Option<Vec<PlacementStrategy>>,
    pub platform_version: Option<String>,
    pub force_new_deployment: Option<bool>,
    pub health_check_grace_period_seconds: Option<i64>,
    pub deployment_controller: Option<DeploymentControllerInput>,
    pub enable_execute_command: Option<bool>,
    #[serde(rename = "enableECSManagedTags")]
    pub enable_ecs_managed_tags: Option<bool>,
    pub propagate_tags: Option<String>,
    pub availability_zone_rebalancing: Option<String>,
    pub load_balancers: Unsupported,
    pub service_registries: Unsupported,
    pub network_configuration: Option<NetworkConfiguration>,
    pub service_connect_configuration: Unsupported,
    pub volume_configurations: Unsupported,
    pub vpc_lattice_configurations: Unsupported,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeleteServiceRequest {
    pub cluster: Option<String>,
    pub service: Option<String>,
    pub force: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DescribeServicesRequest {
    pub cluster: Option<String>,
    pub services: Vec<String>,
    pub include: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListServicesRequest {
    pub cluster: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
    pub launch_type: Option<String>,
    pub scheduling_strategy: Option<String>,
    pub resource_management_type: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CreateCapacityProviderRequest {
    pub name: Option<String>,
    pub cluster: Option<String>,
    pub auto_scaling_group_provider: Option<serde_json::Value>,
    pub managed_instances_provider: Unsupported,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateCapacityProviderRequest {
    pub name: Option<String>,
    pub cluster: Option<String>,
    pub auto_scaling_group_provider: Option<serde_json::Value>,
    pub managed_instances_provider: Unsupported,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeleteCapacityProviderRequest {
    pub capacity_provider: Option<String>,
    pub cluster: Option<String>,
}
