//! Response shapes of the ECS actions, and the rendering of domain records into them.
//!
//! Domain records (in `flotilla-model`) are storage forms; this module decides what ECS
//! shows of them and how (`registeredResources` as typed `Resource` entries, timestamps as
//! epoch seconds, tags only with `include=TAGS`, ...).

use flotilla_model::cluster::{CapacityProviderStrategyItem, ClusterSetting};
use flotilla_model::resources::Resources;
use flotilla_model::task::NetworkBinding;
use flotilla_model::{
    AccountSetting, Attribute, Cluster, ContainerInstance, Tag, Task, TaskDefinition, TaskOverride,
    Timestamp, VersionInfo,
};
use serde::Serialize;

/// `failures[]` entry: which reference failed and why (`MISSING`, `RESOURCE:CPU`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Failure {
    pub fn new(arn: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            arn: Some(arn.into()),
            reason: reason.into(),
            detail: None,
        }
    }

    pub fn missing(arn: impl Into<String>) -> Self {
        Self::new(arn, "MISSING")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub name: String,
    pub value: String,
}

/// Counts derived from a cluster's instances, tasks and services when it is described.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterCounts {
    pub registered_container_instances: u64,
    pub running_ec2_tasks: u64,
    pub running_fargate_tasks: u64,
    pub pending_ec2_tasks: u64,
    pub pending_fargate_tasks: u64,
    pub active_ec2_services: u64,
    pub active_fargate_services: u64,
    pub draining_ec2_services: u64,
    pub draining_fargate_services: u64,
}

/// Which optional parts of a cluster to show (`include`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterInclude {
    pub attachments: bool,
    pub configurations: bool,
    pub settings: bool,
    pub statistics: bool,
    pub tags: bool,
}

impl ClusterInclude {
    pub const ALL: Self = Self {
        attachments: true,
        configurations: true,
        settings: true,
        statistics: true,
        tags: true,
    };
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub cluster_arn: String,
    pub cluster_name: String,
    pub status: &'static str,
    pub registered_container_instances_count: u64,
    pub running_tasks_count: u64,
    pub pending_tasks_count: u64,
    pub active_services_count: u64,
    pub statistics: Vec<KeyValue>,
    pub tags: Vec<Tag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<Vec<ClusterSetting>>,
    pub capacity_providers: Vec<String>,
    pub default_capacity_provider_strategy: Vec<CapacityProviderStrategyItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_connect_defaults: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<serde_json::Value>>,
}

pub fn cluster(cluster: &Cluster, counts: &ClusterCounts, include: ClusterInclude) -> ClusterView {
    let statistics = if include.statistics {
        [
            ("runningEC2TasksCount", counts.running_ec2_tasks),
            ("runningFargateTasksCount", counts.running_fargate_tasks),
            ("pendingEC2TasksCount", counts.pending_ec2_tasks),
            ("pendingFargateTasksCount", counts.pending_fargate_tasks),
            ("activeEC2ServiceCount", counts.active_ec2_services),
            ("activeFargateServiceCount", counts.active_fargate_services),
            ("drainingEC2ServiceCount", counts.draining_ec2_services),
            (
                "drainingFargateServiceCount",
                counts.draining_fargate_services,
            ),
        ]
        .into_iter()
        .map(|(name, value)| KeyValue {
            name: name.to_owned(),
            value: value.to_string(),
        })
        .collect()
    } else {
        Vec::new()
    };
    ClusterView {
        cluster_arn: cluster.arn.clone(),
        cluster_name: cluster.name.clone(),
        status: cluster.status.as_str(),
        registered_container_instances_count: counts.registered_container_instances,
        running_tasks_count: counts.running_ec2_tasks + counts.running_fargate_tasks,
        pending_tasks_count: counts.pending_ec2_tasks + counts.pending_fargate_tasks,
        active_services_count: counts.active_ec2_services + counts.active_fargate_services,
        statistics,
        tags: if include.tags {
            cluster.tags.clone()
        } else {
            Vec::new()
        },
        settings: include.settings.then(|| cluster.settings.clone()),
        capacity_providers: cluster.capacity_providers.clone(),
        default_capacity_provider_strategy: cluster.default_capacity_provider_strategy.clone(),
        configuration: if include.configurations {
            cluster.configuration.clone()
        } else {
            None
        },
        service_connect_defaults: cluster.service_connect_defaults.clone(),
        attachments: include.attachments.then(Vec::new),
    }
}

/// One ECS `Resource` entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceView {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub double_value: f64,
    pub long_value: i64,
    pub integer_value: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string_set_value: Option<Vec<String>>,
}

pub fn resources(resources: &Resources, show_gpus: bool) -> Vec<ResourceView> {
    let integer = |name, value: i64| ResourceView {
        name,
        kind: "INTEGER",
        double_value: 0.0,
        long_value: 0,
        integer_value: value,
        string_set_value: None,
    };
    let set = |name, values: Vec<String>| ResourceView {
        name,
        kind: "STRINGSET",
        double_value: 0.0,
        long_value: 0,
        integer_value: 0,
        string_set_value: Some(values),
    };
    let mut out = vec![
        integer("CPU", resources.cpu),
        integer("MEMORY", resources.memory_mib),
        set(
            "PORTS",
            resources.ports_tcp.iter().map(u16::to_string).collect(),
        ),
        set(
            "PORTS_UDP",
            resources.ports_udp.iter().map(u16::to_string).collect(),
        ),
    ];
    if show_gpus {
        out.push(set("GPU", resources.gpu_ids.iter().cloned().collect()));
    }
    out
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInstanceView {
    pub container_instance_arn: String,
    pub ec2_instance_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_provider_name: Option<String>,
    pub version: u64,
    pub version_info: VersionInfo,
    pub remaining_resources: Vec<ResourceView>,
    pub registered_resources: Vec<ResourceView>,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub agent_connected: bool,
    pub running_tasks_count: u32,
    pub pending_tasks_count: u32,
    pub attributes: Vec<Attribute>,
    pub registered_at: Timestamp,
    pub attachments: Vec<serde_json::Value>,
    pub tags: Vec<Tag>,
}

pub fn container_instance(
    instance: &ContainerInstance,
    include_tags: bool,
) -> ContainerInstanceView {
    let show_gpus = !instance.registered.gpu_ids.is_empty();
    ContainerInstanceView {
        container_instance_arn: instance.arn.clone(),
        ec2_instance_id: instance.ec2_instance_id.clone(),
        capacity_provider_name: instance.capacity_provider_name.clone(),
        version: instance.version,
        version_info: instance.version_info.clone(),
        remaining_resources: resources(&instance.remaining, show_gpus),
        registered_resources: resources(&instance.registered, show_gpus),
        status: instance.status.as_str(),
        status_reason: instance.status_reason.clone(),
        agent_connected: instance.agent_connected,
        running_tasks_count: instance.running_tasks_count,
        pending_tasks_count: instance.pending_tasks_count,
        attributes: instance.attributes.clone(),
        registered_at: instance.registered_at,
        attachments: Vec::new(),
        tags: if include_tags {
            instance.tags.clone()
        } else {
            Vec::new()
        },
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    pub container_arn: String,
    pub task_arn: String,
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
    pub last_status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub network_bindings: Vec<NetworkBinding>,
    pub network_interfaces: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_status: Option<&'static str>,
    pub cpu: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpu_ids: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub attachments: Vec<serde_json::Value>,
    pub attributes: Vec<Attribute>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_provider_name: Option<String>,
    pub cluster_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connectivity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connectivity_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_instance_arn: Option<String>,
    pub containers: Vec<ContainerView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    pub created_at: Timestamp,
    pub desired_status: &'static str,
    pub enable_execute_command: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_stopped_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub health_status: &'static str,
    pub last_status: &'static str,
    pub launch_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    pub overrides: TaskOverride,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_stopped_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopping_at: Option<Timestamp>,
    pub tags: Vec<Tag>,
    pub task_arn: String,
    pub task_definition_arn: String,
    pub version: u64,
}

pub fn task(task: &Task, include_tags: bool) -> TaskView {
    TaskView {
        attachments: task
            .attachments
            .iter()
            .map(|a| serde_json::to_value(a).unwrap_or_default())
            .collect(),
        attributes: task.attributes.clone(),
        availability_zone: task.availability_zone.clone(),
        capacity_provider_name: task.capacity_provider_name.clone(),
        cluster_arn: task.cluster_arn.clone(),
        connectivity: task.connectivity.clone(),
        connectivity_at: task.connectivity_at,
        // A Fargate task runs on capacity Flotilla manages; ECS shows no instance for it.
        container_instance_arn: task
            .container_instance_arn
            .clone()
            .filter(|_| task.launch_type != flotilla_model::LaunchType::Fargate),
        containers: task
            .containers
            .iter()
            .map(|c| ContainerView {
                container_arn: c.arn.clone(),
                task_arn: task.arn.clone(),
                name: c.name.clone(),
                image: c.image.clone(),
                image_digest: c.image_digest.clone(),
                runtime_id: c.runtime_id.clone(),
                last_status: c.last_status.as_str(),
                exit_code: c.exit_code,
                reason: c.reason.clone(),
                network_bindings: c.network_bindings.clone(),
                network_interfaces: task
                    .attachments
                    .iter()
                    .filter_map(|a| {
                        Some(serde_json::json!({
                            "attachmentId": a.id,
                            "privateIpv4Address": a.detail("privateIPv4Address")?,
                        }))
                    })
                    .collect(),
                health_status: c.health_status.map(|h| h.as_str()),
                cpu: c.cpu.to_string(),
                memory: c.memory.map(|m| m.to_string()),
                memory_reservation: c.memory_reservation.map(|m| m.to_string()),
                gpu_ids: c.gpu_ids.clone(),
            })
            .collect(),
        cpu: task.cpu.clone(),
        created_at: task.created_at,
        desired_status: task.desired_status.as_str(),
        enable_execute_command: task.enable_execute_command,
        execution_stopped_at: task.execution_stopped_at,
        group: task.group.clone(),
        health_status: task.health_status.as_str(),
        last_status: task.last_status.as_str(),
        launch_type: task.launch_type.as_str(),
        memory: task.memory.clone(),
        overrides: task.overrides.clone(),
        pull_started_at: task.pull_started_at,
        pull_stopped_at: task.pull_stopped_at,
        started_at: task.started_at,
        started_by: task.started_by.clone(),
        stop_code: task.stop_code.map(|c| c.as_str()),
        stopped_at: task.stopped_at,
        stopped_reason: task.stopped_reason.clone(),
        stopping_at: task.stopping_at,
        tags: if include_tags {
            task.tags.clone()
        } else {
            Vec::new()
        },
        task_arn: task.arn.clone(),
        task_definition_arn: task.task_definition_arn.clone(),
        version: task.version,
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingView {
    pub name: String,
    pub value: String,
    pub principal_arn: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// Renders a setting; the account default shows the account root as its principal.
pub fn account_setting(setting: &AccountSetting, account_root_arn: &str) -> SettingView {
    SettingView {
        name: setting.name.clone(),
        value: setting.value.clone(),
        principal_arn: setting
            .principal_arn
            .clone()
            .unwrap_or_else(|| account_root_arn.to_owned()),
        kind: "user",
    }
}

// ---- Response envelopes -------------------------------------------------------------

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterResponse {
    pub cluster: ClusterView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeClustersResponse {
    pub clusters: Vec<ClusterView>,
    pub failures: Vec<Failure>,
}

/// `{"<member>": [...], "nextToken": ...}` for every List* action.
#[derive(Debug, Serialize)]
pub struct ListResponse<T: Serialize> {
    #[serde(flatten)]
    pub items: ListItems<T>,
    #[serde(rename = "nextToken", skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ListItems<T: Serialize> {
    ClusterArns(Vec<T>),
    TaskDefinitionArns(Vec<T>),
    Families(Vec<T>),
    ContainerInstanceArns(Vec<T>),
    TaskArns(Vec<T>),
    Attributes(Vec<T>),
    Settings(Vec<T>),
    ServiceArns(Vec<T>),
}

/// A task definition as ECS shows it: its tags travel beside it, not inside it.
#[derive(Debug)]
pub struct TaskDefinitionView(pub TaskDefinition);

impl Serialize for TaskDefinitionView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.tags.is_empty() {
            self.0.serialize(serializer)
        } else {
            let mut untagged = self.0.clone();
            untagged.tags.clear();
            untagged.serialize(serializer)
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinitionResponse {
    pub task_definition: TaskDefinitionView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteTaskDefinitionsResponse {
    pub task_definitions: Vec<TaskDefinitionView>,
    pub failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInstanceResponse {
    pub container_instance: ContainerInstanceView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInstancesResponse {
    pub container_instances: Vec<ContainerInstanceView>,
    pub failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TasksResponse {
    pub tasks: Vec<TaskView>,
    pub failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskResponse {
    pub task: TaskView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributesResponse {
    pub attributes: Vec<Attribute>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagsResponse {
    pub tags: Vec<Tag>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingResponse {
    pub setting: SettingView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityProviderView {
    pub capacity_provider_arn: String,
    pub name: String,
    pub status: &'static str,
    pub tags: Vec<Tag>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_scaling_group_provider: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_status: Option<String>,
}

/// A user-created capacity provider, as ECS shows it.
pub fn capacity_provider(
    provider: &flotilla_model::capacity::CapacityProvider,
    include_tags: bool,
) -> CapacityProviderView {
    CapacityProviderView {
        capacity_provider_arn: provider.arn.clone(),
        name: provider.name.clone(),
        status: if provider.status == "ACTIVE" {
            "ACTIVE"
        } else {
            "INACTIVE"
        },
        tags: if include_tags {
            provider.tags.clone()
        } else {
            Vec::new()
        },
        kind: "EC2_AUTOSCALING",
        auto_scaling_group_provider: Some(provider.auto_scaling_group_provider.clone()),
        update_status: provider.update_status.clone(),
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityProviderResponse {
    pub capacity_provider: CapacityProviderView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeCapacityProvidersResponse {
    pub capacity_providers: Vec<CapacityProviderView>,
    pub failures: Vec<Failure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// An empty JSON object, for actions that return nothing.
#[derive(Debug, Serialize)]
pub struct Empty {}

/// Serialises a response body.
pub fn encode<T: Serialize>(response: &T) -> Vec<u8> {
    serde_json::to_vec(response).unwrap_or_else(|_| b"{}".to_vec())
}

// ---- Services -----------------------------------------------------------------------

/// ECS's `DeploymentCircuitBreaker`.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerView {
    pub enable: bool,
    pub rollback: bool,
}

/// ECS's `DeploymentConfiguration` as DescribeServices shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfigurationView {
    pub deployment_circuit_breaker: CircuitBreakerView,
    pub maximum_percent: u32,
    pub minimum_healthy_percent: u32,
    pub strategy: &'static str,
}

/// ECS's `Deployment`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentView {
    pub id: String,
    pub status: &'static str,
    pub task_definition: String,
    pub desired_count: u32,
    pub pending_count: u32,
    pub running_count: u32,
    pub failed_tasks: u32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub launch_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<flotilla_model::task::NetworkConfiguration>,
    pub rollout_state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_state_reason: Option<String>,
}

/// ECS's `ServiceEvent`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEventView {
    pub id: String,
    pub created_at: Timestamp,
    pub message: String,
}

/// ECS's `DeploymentController`: Flotilla runs the rolling (`ECS`) controller only.
#[derive(Clone, Debug, Serialize)]
pub struct DeploymentControllerView {
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// ECS's `Service`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub service_arn: String,
    pub service_name: String,
    pub cluster_arn: String,
    pub load_balancers: Vec<serde_json::Value>,
    pub service_registries: Vec<serde_json::Value>,
    pub status: &'static str,
    pub desired_count: u32,
    pub running_count: u32,
    pub pending_count: u32,
    pub launch_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<flotilla_model::task::NetworkConfiguration>,
    pub task_definition: String,
    pub deployment_configuration: DeploymentConfigurationView,
    pub deployments: Vec<DeploymentView>,
    pub events: Vec<ServiceEventView>,
    pub created_at: Timestamp,
    pub placement_constraints: Vec<flotilla_model::task_definition::PlacementConstraint>,
    pub placement_strategy: Vec<flotilla_model::task_definition::PlacementStrategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_grace_period_seconds: Option<u32>,
    pub scheduling_strategy: &'static str,
    pub deployment_controller: DeploymentControllerView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(rename = "enableECSManagedTags")]
    pub enable_ecs_managed_tags: bool,
    pub propagate_tags: String,
    pub enable_execute_command: bool,
    pub availability_zone_rebalancing: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceResponse {
    pub service: ServiceView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeServicesResponse {
    pub services: Vec<ServiceView>,
    pub failures: Vec<Failure>,
}
