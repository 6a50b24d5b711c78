//! Container instances: hosts registered to a cluster, their capacity and what is left of it.

use serde::{Deserialize, Serialize};

use crate::resources::Resources;
use crate::{Attribute, Tag, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContainerInstanceStatus {
    Active,
    Draining,
    Registering,
    Deregistering,
    RegistrationFailed,
    /// Deregistered; kept briefly so describes of recent ARNs still answer.
    Inactive,
}

impl ContainerInstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Draining => "DRAINING",
            Self::Registering => "REGISTERING",
            Self::Deregistering => "DEREGISTERING",
            Self::RegistrationFailed => "REGISTRATION_FAILED",
            Self::Inactive => "INACTIVE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ACTIVE" => Self::Active,
            "DRAINING" => Self::Draining,
            "REGISTERING" => Self::Registering,
            "DEREGISTERING" => Self::Deregistering,
            "REGISTRATION_FAILED" => Self::RegistrationFailed,
            "INACTIVE" => Self::Inactive,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
}

/// A container instance record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerInstance {
    pub id: String,
    pub arn: String,
    pub cluster_name: String,
    /// ECS calls this the EC2 instance id; Flotilla uses the host's own id (`i-` + hex).
    pub ec2_instance_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_provider_name: Option<String>,
    /// Bumped on every change, like ECS's `version`.
    pub version: u64,
    pub version_info: VersionInfo,
    pub registered: Resources,
    pub remaining: Resources,
    pub status: ContainerInstanceStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub agent_connected: bool,
    pub running_tasks_count: u32,
    pub pending_tasks_count: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
    pub registered_at: Timestamp,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// The URL the control plane can reach the agent at (for logs), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_endpoint: Option<String>,
}

/// The `capacityProviderName` of a host that offers Fargate capacity: it runs FARGATE and
/// FARGATE_SPOT tasks only and is hidden from the user's instance lists.
pub const FARGATE_CAPACITY: &str = "FARGATE";
/// The attribute a Fargate-capacity host carries, so placement can tell the two kinds apart.
pub const CAPACITY_ATTRIBUTE: &str = "flotilla.capacity";

impl ContainerInstance {
    /// Whether this host is Fargate capacity (managed by Flotilla, hidden from users).
    pub fn is_fargate_capacity(&self) -> bool {
        self.capacity_provider_name.as_deref() == Some(FARGATE_CAPACITY)
    }

    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// Sets or replaces a custom or built-in attribute.
    pub fn put_attribute(&mut self, name: &str, value: Option<String>) {
        match self.attributes.iter_mut().find(|a| a.name == name) {
            Some(existing) => existing.value = value,
            None => self.attributes.push(Attribute {
                name: name.to_owned(),
                value,
                target_type: None,
                target_id: None,
            }),
        }
        self.attributes.sort();
    }
}
