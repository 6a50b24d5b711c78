//! Request shapes of the ECS actions Flotilla serves, as botocore's `ecs` model names them.
//!
//! Every member is optional at the serde level; required members are checked by
//! [`required`] so a missing one yields InvalidParameterException naming it (AWS's
//! behaviour) instead of a deserialisation error. Unknown members are ignored, so newer SDKs
//! keep working; known members Flotilla does not implement are typed [`Unsupported`] and
//! refused by the engine with a message naming them.

use flotilla_model::cluster::{CapacityProviderStrategyItem, ClusterSetting};
use flotilla_model::task::TaskOverride;
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
    pub network_configuration: Unsupported,
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
    pub network_configuration: Unsupported,
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
