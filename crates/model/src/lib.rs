//! ECS's nouns as Flotilla's domain types: clusters, task definitions, tasks, container
//! instances, resources, ARNs. No IO, no clock, no randomness: callers pass time and IDs in.

pub mod arn;
pub mod capacity;
pub mod cluster;
pub mod container_instance;
pub mod error;
pub mod resources;
pub mod task;
pub mod task_definition;
pub mod time;
pub mod validate;

pub use arn::{Arn, ArnResource, Scope};
pub use cluster::{
    AccountSetting, CapacityProviderStrategyItem, Cluster, ClusterSetting, ClusterStatus,
};
pub use container_instance::{ContainerInstance, ContainerInstanceStatus, VersionInfo};
pub use error::EcsError;
pub use resources::{Resources, Shortfall};
pub use task::{
    Attachment, AwsVpcConfiguration, Container, ContainerOverride, DesiredStatus, HealthStatus,
    LaunchType, NetworkBinding, NetworkConfiguration, Task, TaskNetwork, TaskOverride, TaskStatus,
    TaskStopCode,
};
pub use task_definition::{
    ContainerDefinition, TaskDefinition, TaskDefinitionInput, TaskDefinitionSpec,
};
pub use time::Timestamp;

use serde::{Deserialize, Serialize};

/// A resource tag (`key`/`value`), as on every taggable ECS resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// A `name`/`value` pair (container environment and similar).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyValuePair {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// An attribute of a container instance (built-in `ecs.*` or custom), used by `memberOf`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Attribute {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
}

/// Merge `incoming` tags into `tags`: same key replaces, new keys append.
pub fn merge_tags(tags: &mut Vec<Tag>, incoming: &[Tag]) {
    for tag in incoming {
        match tags.iter_mut().find(|t| t.key == tag.key) {
            Some(existing) => existing.value = tag.value.clone(),
            None => tags.push(tag.clone()),
        }
    }
}
