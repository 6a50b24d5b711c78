//! Clusters and account settings.

use serde::{Deserialize, Serialize};

use crate::{Tag, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterStatus {
    Active,
    Provisioning,
    Deprovisioning,
    Failed,
    Inactive,
}

impl ClusterStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Provisioning => "PROVISIONING",
            Self::Deprovisioning => "DEPROVISIONING",
            Self::Failed => "FAILED",
            Self::Inactive => "INACTIVE",
        }
    }
}

/// A cluster setting (`containerInsights` = enabled | disabled | enhanced).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSetting {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityProviderStrategyItem {
    pub capacity_provider: String,
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub base: i32,
}

/// A cluster record. Counts of instances and tasks are derived when described, not stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    pub arn: String,
    pub status: ClusterStatus,
    pub settings: Vec<ClusterSetting>,
    /// `executeCommandConfiguration` / `managedStorageConfiguration`, kept as given.
    pub configuration: Option<serde_json::Value>,
    pub service_connect_defaults: Option<serde_json::Value>,
    pub capacity_providers: Vec<String>,
    pub default_capacity_provider_strategy: Vec<CapacityProviderStrategyItem>,
    pub tags: Vec<Tag>,
    pub created_at: Timestamp,
}

/// An account setting, for one principal or (principal `None`) the account default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSetting {
    pub name: String,
    pub value: String,
    pub principal_arn: Option<String>,
}
