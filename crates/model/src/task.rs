//! Tasks and their containers: states, stop codes, timestamps, network bindings.
//!
//! ```text
//!   PROVISIONING -> PENDING -> ACTIVATING -> RUNNING -> DEACTIVATING -> STOPPING
//!        |             |                        |                         |
//!        +-------------+------------------------+------> DEPROVISIONING -> STOPPED
//! ```
//! `lastStatus` only moves forward (the agent owns it); `desiredStatus` is RUNNING or
//! STOPPED (the API and schedulers own it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resources::Reservation;
use crate::task_definition::{
    EphemeralStorage, ResourceRequirement, TransportProtocol, Unsupported,
};
use crate::{Attribute, KeyValuePair, Tag, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Provisioning,
    Pending,
    Activating,
    Running,
    Deactivating,
    Stopping,
    Deprovisioning,
    Stopped,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 8] = [
        Self::Provisioning,
        Self::Pending,
        Self::Activating,
        Self::Running,
        Self::Deactivating,
        Self::Stopping,
        Self::Deprovisioning,
        Self::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "PROVISIONING",
            Self::Pending => "PENDING",
            Self::Activating => "ACTIVATING",
            Self::Running => "RUNNING",
            Self::Deactivating => "DEACTIVATING",
            Self::Stopping => "STOPPING",
            Self::Deprovisioning => "DEPROVISIONING",
            Self::Stopped => "STOPPED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Counted as "pending" by DescribeClusters/DescribeContainerInstances.
    pub fn is_pending(self) -> bool {
        self < Self::Running
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DesiredStatus {
    Running,
    Pending,
    Stopped,
}

impl DesiredStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Pending => "PENDING",
            Self::Stopped => "STOPPED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RUNNING" => Self::Running,
            "PENDING" => Self::Pending,
            "STOPPED" => Self::Stopped,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskStopCode {
    TaskFailedToStart,
    EssentialContainerExited,
    UserInitiated,
    ServiceSchedulerInitiated,
    SpotInterruption,
    TerminationNotice,
}

impl TaskStopCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskFailedToStart => "TaskFailedToStart",
            Self::EssentialContainerExited => "EssentialContainerExited",
            Self::UserInitiated => "UserInitiated",
            Self::ServiceSchedulerInitiated => "ServiceSchedulerInitiated",
            Self::SpotInterruption => "SpotInterruption",
            Self::TerminationNotice => "TerminationNotice",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    #[default]
    Unknown,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "HEALTHY",
            Self::Unhealthy => "UNHEALTHY",
            Self::Unknown => "UNKNOWN",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LaunchType {
    #[default]
    #[serde(rename = "EC2")]
    Ec2,
    Fargate,
    External,
    ManagedInstances,
}

impl LaunchType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ec2 => "EC2",
            Self::Fargate => "FARGATE",
            Self::External => "EXTERNAL",
            Self::ManagedInstances => "MANAGED_INSTANCES",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "EC2" => Self::Ec2,
            "FARGATE" => Self::Fargate,
            "EXTERNAL" => Self::External,
            "MANAGED_INSTANCES" => Self::ManagedInstances,
            _ => return None,
        })
    }
}

/// A host port bound to a container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkBinding {
    #[serde(rename = "bindIP", skip_serializing_if = "Option::is_none")]
    pub bind_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_port: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<TransportProtocol>,
}

/// Per-container overrides of RunTask/StartTask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<KeyValuePair>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_files: Unsupported,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_requirements: Vec<ResourceRequirement>,
}

/// Task-level overrides of RunTask/StartTask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TaskOverride {
    #[serde(default)]
    pub container_overrides: Vec<ContainerOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<EphemeralStorage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inference_accelerator_overrides: Unsupported,
}

impl TaskOverride {
    pub fn container(&self, name: &str) -> Option<&ContainerOverride> {
        self.container_overrides
            .iter()
            .find(|o| o.name.as_deref() == Some(name))
    }
}

/// One container of a task, as reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub arn: String,
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The Docker container id, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
    pub last_status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_bindings: Vec<NetworkBinding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<HealthStatus>,
    pub cpu: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_ids: Vec<String>,
    pub essential: bool,
}

/// A task record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub arn: String,
    pub cluster_name: String,
    pub cluster_arn: String,
    pub task_definition_arn: String,
    pub family: String,
    pub revision: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_instance_arn: Option<String>,
    pub launch_type: LaunchType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_provider_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    pub last_status: TaskStatus,
    pub desired_status: DesiredStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    /// Task-level size as ECS shows it (strings of CPU units and MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    pub overrides: TaskOverride,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
    pub enable_execute_command: bool,
    pub health_status: HealthStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connectivity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connectivity_at: Option<Timestamp>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_stopped_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_stopped_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<TaskStopCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    /// Bumped on every change, like ECS's `version`.
    pub version: u64,
    /// What this task holds on its container instance until it is STOPPED.
    pub reservation: Reservation,
    /// Whether `reservation` has been given back (exactly once, on reaching STOPPED).
    pub released: bool,
    /// Docker labels and environment the agent needs but ECS does not show.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
    /// The task's elastic network interface (awsvpc), as DescribeTasks shows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

impl Task {
    pub fn container_mut(&mut self, name: &str) -> Option<&mut Container> {
        self.containers.iter_mut().find(|c| c.name == name)
    }
}

/// `networkConfiguration.awsvpcConfiguration` of RunTask, StartTask and services.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AwsVpcConfiguration {
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_public_ip: Option<String>,
}

/// `networkConfiguration` of RunTask, StartTask and services.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awsvpc_configuration: Option<AwsVpcConfiguration>,
}

/// What a task's network interface looks like on its host, as the agent reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskNetwork {
    pub private_ipv4_address: String,
    pub mac_address: String,
    /// The cluster network's subnet (`172.18.0.0/16`).
    pub subnet_cidr: String,
    pub gateway_ipv4_address: String,
}

/// ECS's attachment kind for a task's network interface.
pub const ENI_ATTACHMENT: &str = "ElasticNetworkInterface";

/// An attachment of a task (its elastic network interface), as ECS shows it.
///
/// ```text
///   PRECREATED -> ATTACHED -> DELETED
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub details: Vec<KeyValuePair>,
}

impl Attachment {
    /// A new interface of a task in `subnet_id`, not yet on a host.
    pub fn eni(id: String, subnet_id: &str) -> Self {
        Self {
            id,
            kind: ENI_ATTACHMENT.to_owned(),
            status: "PRECREATED".to_owned(),
            details: vec![pair("subnetId", subnet_id)],
        }
    }

    pub fn detail(&self, name: &str) -> Option<&str> {
        self.details
            .iter()
            .find(|d| d.name.as_deref() == Some(name))
            .and_then(|d| d.value.as_deref())
    }

    /// The interface is up on its host with `network`. ECS's detail names: `subnetId`,
    /// `networkInterfaceId`, `macAddress`, `privateDnsName`, `privateIPv4Address`.
    pub fn attach(&mut self, network: &TaskNetwork) {
        let subnet_id = self.detail("subnetId").unwrap_or_default().to_owned();
        let hex: String = self
            .id
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(17)
            .collect();
        let interface_id = format!("eni-{hex}");
        let address = &network.private_ipv4_address;
        self.details = vec![
            pair("subnetId", &subnet_id),
            pair("networkInterfaceId", &interface_id),
            pair("macAddress", &network.mac_address),
            pair(
                "privateDnsName",
                &format!("ip-{}.ec2.internal", address.replace('.', "-")),
            ),
            pair("privateIPv4Address", address),
        ];
        self.status = "ATTACHED".to_owned();
    }
}

fn pair(name: &str, value: &str) -> KeyValuePair {
    KeyValuePair {
        name: Some(name.to_owned()),
        value: Some(value.to_owned()),
    }
}
