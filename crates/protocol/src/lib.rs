//! The agent protocol, version 1: how a host agent registers, learns which tasks it must
//! run and reports what happened to them. It rides on the control plane's awsJson 1.1
//! endpoint (`POST /`, SigV4-signed) under the target prefix [`TARGET_PREFIX`], so agents
//! and API clients share one listener, one authentication path and one error shape.
//!
//! The protocol is level-triggered: every [`PollResponse`] carries the full desired state
//! of the instance's tasks, never a diff, so a lost message or a restarted agent needs no
//! replay. New fields are added as `Option`/`#[serde(default)]`; incompatible changes get a
//! new prefix (`FlotillaAgentV2`). See `docs/agent-protocol.md`.

use std::collections::BTreeMap;

use flotilla_model::resources::Resources;
use flotilla_model::task::{
    HealthStatus, LaunchType, NetworkBinding, TaskNetwork, TaskOverride, TaskStatus, TaskStopCode,
};
use flotilla_model::{Attribute, DesiredStatus, TaskDefinition, Timestamp, VersionInfo};
use serde::{Deserialize, Serialize};

/// `X-Amz-Target` prefix of agent protocol calls: `FlotillaAgentV1.Register` etc.
pub const TARGET_PREFIX: &str = "FlotillaAgentV1";
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest a poll may wait for a change before answering with the same state.
pub const POLL_WAIT_MS_MAX: u64 = 30_000;

/// The calls of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentCall {
    Register,
    Poll,
    Report,
}

impl AgentCall {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "Register" => Self::Register,
            "Poll" => Self::Poll,
            "Report" => Self::Report,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "Register",
            Self::Poll => "Poll",
            Self::Report => "Report",
        }
    }

    pub fn target(self) -> String {
        format!("{TARGET_PREFIX}.{}", self.name())
    }
}

/// `Register`: a host joins a cluster, or re-joins with the ARN it had.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub protocol_version: u32,
    pub cluster: String,
    /// Set when the agent restarts and wants its old identity (and tasks) back.
    #[serde(default)]
    pub container_instance_arn: Option<String>,
    /// A stable id of the host (`i-` + hex), kept by the agent across restarts.
    pub ec2_instance_id: String,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Capacity: CPU units, memory MiB, ports the host keeps for itself, GPU ids.
    pub resources: Resources,
    #[serde(default)]
    pub attributes: Vec<Attribute>,
    #[serde(default)]
    pub version_info: VersionInfo,
    /// Where the control plane can reach this agent (logs), if anywhere.
    #[serde(default)]
    pub agent_endpoint: Option<String>,
    /// The host offers itself as Fargate capacity: it runs FARGATE and FARGATE_SPOT tasks
    /// only and is hidden from ListContainerInstances/DescribeContainerInstances.
    #[serde(default)]
    pub fargate_capacity: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub container_instance_arn: String,
    pub cluster_arn: String,
    /// Poll at least this often; the server counts polls as heartbeats.
    pub heartbeat_interval_ms: u64,
    /// After this long without a poll the instance is marked disconnected.
    pub disconnect_timeout_ms: u64,
}

/// `Poll`: heartbeat plus long-poll for the desired state of this instance's tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollRequest {
    pub container_instance_arn: String,
    /// Answer at once if the instance's state changed after this revision; else wait.
    #[serde(default)]
    pub since_revision: u64,
    /// How long to wait for a change, capped at [`POLL_WAIT_MS_MAX`].
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollResponse {
    /// Pass back as `sinceRevision` in the next poll.
    pub revision: u64,
    /// ACTIVE, DRAINING or INACTIVE (deregistered: the agent should stop its tasks and exit).
    pub instance_status: String,
    /// Every task assigned to this instance that the agent still has to act on or report.
    pub tasks: Vec<AssignedTask>,
    /// The task definitions the tasks above refer to, by ARN.
    pub task_definitions: BTreeMap<String, TaskDefinition>,
}

/// One task as the agent must see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignedTask {
    pub task_arn: String,
    pub cluster_arn: String,
    pub task_definition_arn: String,
    pub desired_status: DesiredStatus,
    /// What the server last heard from the agent about this task.
    pub last_status: TaskStatus,
    pub overrides: TaskOverride,
    pub containers: Vec<AssignedContainer>,
    /// GPU ids reserved for this task, in container order of demand.
    #[serde(default)]
    pub gpu_ids: Vec<String>,
    #[serde(default)]
    pub stop_code: Option<TaskStopCode>,
    #[serde(default)]
    pub stopped_reason: Option<String>,
    pub version: u64,
    pub created_at: Timestamp,
    /// Launch type, placement and task-level size: what Fargate isolation and the task
    /// metadata endpoint need.
    #[serde(default)]
    pub launch: TaskLaunch,
}

/// How a task was launched, as its agent needs to know it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskLaunch {
    #[serde(default)]
    pub launch_type: LaunchType,
    #[serde(default)]
    pub capacity_provider_name: Option<String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Task-level CPU units and MiB (overrides applied), when the task has a size.
    #[serde(default)]
    pub cpu: Option<String>,
    #[serde(default)]
    pub memory: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignedContainer {
    pub name: String,
    pub container_arn: String,
    #[serde(default)]
    pub runtime_id: Option<String>,
}

/// `Report`: what happened to tasks and containers since the last report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportRequest {
    pub container_instance_arn: String,
    pub tasks: Vec<TaskStateChange>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStateChange {
    pub task_arn: String,
    pub status: TaskStatus,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub stop_code: Option<TaskStopCode>,
    #[serde(default)]
    pub health_status: Option<HealthStatus>,
    #[serde(default)]
    pub containers: Vec<ContainerStateChange>,
    #[serde(default)]
    pub pull_started_at: Option<Timestamp>,
    #[serde(default)]
    pub pull_stopped_at: Option<Timestamp>,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub execution_stopped_at: Option<Timestamp>,
    /// The task's own network (awsvpc), once it is up.
    #[serde(default)]
    pub network: Option<TaskNetwork>,
    /// When the agent observed this state.
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateChange {
    pub name: String,
    pub status: TaskStatus,
    #[serde(default)]
    pub runtime_id: Option<String>,
    #[serde(default)]
    pub image_digest: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub network_bindings: Vec<NetworkBinding>,
    #[serde(default)]
    pub health_status: Option<HealthStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportResponse {
    /// Task ARNs whose report was applied. Reports for unknown tasks are skipped.
    pub accepted: Vec<String>,
}

/// `X-Amz-Target` prefix of Flotilla's own operator calls (not ECS, not agent-to-server).
pub const OPERATOR_TARGET_PREFIX: &str = "FlotillaV1";

/// `FlotillaV1.LocateTaskLogs`: where the logs of a task's containers can be read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocateTaskLogsRequest {
    #[serde(default)]
    pub cluster: Option<String>,
    /// A task id or ARN.
    pub task: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocateTaskLogsResponse {
    pub task_arn: String,
    /// The agent's logs endpoint (`GET {endpoint}/v1/tasks/{task}/logs`).
    pub endpoint: String,
    pub containers: Vec<String>,
}

/// `FlotillaV1.ExplainPlacement`: host by host, would a task of this definition go there,
/// and if not, why. Nothing is placed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainPlacementRequest {
    #[serde(default)]
    pub cluster: Option<String>,
    pub task_definition: String,
    /// The task group placement counts (default `family:FAMILY`).
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub placement_constraints: Vec<flotilla_model::task_definition::PlacementConstraint>,
    #[serde(default)]
    pub placement_strategy: Vec<flotilla_model::task_definition::PlacementStrategy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostVerdict {
    pub container_instance_arn: String,
    pub ec2_instance_id: String,
    pub fits: bool,
    /// Why not, in ECS's words (`RESOURCE:MEMORY`, `MemberOf placement constraint unsatisfied.`, ...).
    #[serde(default)]
    pub reason: Option<String>,
    pub remaining_cpu: i64,
    pub remaining_memory: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainPlacementResponse {
    /// CPU units and MiB one task needs.
    pub cpu: i64,
    pub memory: i64,
    pub hosts: Vec<HostVerdict>,
    /// Where RunTask would put one task now, if anywhere.
    #[serde(default)]
    pub chosen: Option<String>,
}

/// `FlotillaV1.ReclaimSpotCapacity`: the operator takes FARGATE_SPOT capacity back. Up to
/// `count` running FARGATE_SPOT tasks of the cluster get a two-minute warning (SIGTERM,
/// then SIGKILL after 120 s) and stop with stopCode `SpotInterruption`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReclaimSpotCapacityRequest {
    #[serde(default)]
    pub cluster: Option<String>,
    /// How many tasks to interrupt (default 1, at most 100).
    #[serde(default)]
    pub count: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReclaimSpotCapacityResponse {
    pub task_arns: Vec<String>,
}
