//! Services and their deployments as the reconciler reads and writes them (ECS's `Service`,
//! `Deployment`, `DeploymentConfiguration`, `ServiceEvent`), plus the few edits the API shell
//! makes to them (create, new deployment, events, placement failures).
//!
//! These types live here until the model crate adopts them. They serialise in snake_case
//! for storage; only the API crate knows ECS's wire names. Fields marked *bookkeeping* are
//! the reconciler's memory between evaluations and never appear on the wire.
//!
//! A deployment's life (`status` / `rollout_state`):
//!
//! ```text
//!  CreateService or UpdateService
//!          |
//!          v                 D healthy tasks, no older tasks left
//!  PRIMARY / IN_PROGRESS ------------------------------------------> PRIMARY / COMPLETED
//!          |        |                                                      |
//!          |        | failed_tasks >= threshold (circuit breaker)          |
//!          |        v                                                      |
//!          |   PRIMARY / FAILED --(rollback)--> ACTIVE / FAILED            |
//!          |        (no rollback: frozen until      |                      |
//!          |         the next deployment)           |                      |
//!          | UpdateService                          |                      | UpdateService
//!          v                                        v                      v
//!  ACTIVE / IN_PROGRESS  ------------------>  (tasks drained)  <----  ACTIVE / COMPLETED
//!                                                   |
//!                        the PRIMARY completes:     v
//!                                  INACTIVE, dropped from deployments[]
//! ```

use std::collections::BTreeSet;

use flotilla_model::{LaunchType, Tag, Timestamp};
use flotilla_scheduler::{Constraint, SpreadField, Strategy};
use serde::{Deserialize, Serialize};

/// ECS keeps the latest 100 events of a service.
pub const SERVICE_EVENTS_MAX: usize = 100;

/// The spread ECS applies to a service created without a placement strategy.
pub const DEFAULT_SPREAD_ATTRIBUTE: &str = "ecs.availability-zone";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceStatus {
    Active,
    /// DeleteService was called: tasks are being stopped.
    Draining,
    /// Deleted and drained; kept only so describes still answer.
    Inactive,
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Draining => "DRAINING",
            Self::Inactive => "INACTIVE",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SchedulingStrategy {
    /// Keep `desired_count` tasks, placed by the strategies.
    Replica,
    /// One task on every ACTIVE host that meets the constraints.
    Daemon,
}

impl SchedulingStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replica => "REPLICA",
            Self::Daemon => "DAEMON",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    /// The deployment the service converges to; exactly one per service.
    Primary,
    /// An older deployment whose tasks are being replaced.
    Active,
    /// Finished; such deployments are dropped from `deployments[]`.
    Inactive,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "PRIMARY",
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutState {
    InProgress,
    Completed,
    Failed,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }
}

/// ECS's `DeploymentCircuitBreaker`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitBreaker {
    pub enable: bool,
    pub rollback: bool,
}

/// ECS's `DeploymentConfiguration` (the rolling controller's part of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentConfiguration {
    /// Cap on RUNNING + PENDING tasks during a deployment, in percent of the desired count.
    pub maximum_percent: u32,
    /// Floor of healthy tasks during a deployment, in percent of the desired count.
    pub minimum_healthy_percent: u32,
    pub circuit_breaker: Option<CircuitBreaker>,
}

impl DeploymentConfiguration {
    /// ECS's defaults: 200/100 for REPLICA, 100/0 for DAEMON.
    pub const fn default_for(strategy: SchedulingStrategy) -> Self {
        match strategy {
            SchedulingStrategy::Replica => Self {
                maximum_percent: 200,
                minimum_healthy_percent: 100,
                circuit_breaker: None,
            },
            SchedulingStrategy::Daemon => Self {
                maximum_percent: 100,
                minimum_healthy_percent: 0,
                circuit_breaker: None,
            },
        }
    }

    /// `floor(desired × maximumPercent / 100)`: the most tasks that may exist at once.
    pub fn task_cap(&self, desired: u32) -> u32 {
        let cap = u64::from(desired) * u64::from(self.maximum_percent) / 100;
        u32::try_from(cap).unwrap_or(u32::MAX)
    }

    /// `ceil(desired × minimumHealthyPercent / 100)`: the fewest healthy tasks to keep.
    pub fn healthy_floor(&self, desired: u32) -> u32 {
        let floor = (u64::from(desired) * u64::from(self.minimum_healthy_percent)).div_ceil(100);
        u32::try_from(floor).unwrap_or(u32::MAX)
    }

    fn breaker(&self) -> Option<CircuitBreaker> {
        self.circuit_breaker.filter(|breaker| breaker.enable)
    }

    pub(crate) fn breaker_enabled(&self) -> bool {
        self.breaker().is_some()
    }

    pub(crate) fn breaker_rolls_back(&self) -> bool {
        self.breaker().is_some_and(|breaker| breaker.rollback)
    }
}

/// ECS's `PlacementConstraint` as the user gave it; parsed with
/// [`flotilla_scheduler::parse_constraint`] when used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementConstraint {
    #[serde(rename = "type")]
    pub kind: String,
    pub expression: Option<String>,
}

/// ECS's `PlacementStrategy` as the user gave it; parsed with
/// [`flotilla_scheduler::parse_strategy`] when used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementStrategy {
    #[serde(rename = "type")]
    pub kind: String,
    pub field: Option<String>,
}

/// ECS's `ServiceEvent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEvent {
    pub id: String,
    pub created_at: Timestamp,
    pub message: String,
}

/// ECS's `Deployment`: one revision of the service being rolled out or kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// `ecs-svc/` and 19 digits, made by the caller.
    pub id: String,
    pub status: DeploymentStatus,
    pub task_definition_arn: String,
    pub desired_count: u32,
    pub pending_count: u32,
    pub running_count: u32,
    /// Tasks counted by the circuit breaker (ECS: "consecutively failed tasks"); stays 0
    /// once the deployment has proven a task, as ECS stops evaluating then.
    pub failed_tasks: u32,
    pub rollout_state: RolloutState,
    pub rollout_state_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Bookkeeping: start failures since the last proven task, which sets the restart
    /// throttle. Unlike `failed_tasks` it keeps counting after the rollout.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Bookkeeping: when the latest counted start failure happened.
    #[serde(default)]
    pub last_failure_at: Option<Timestamp>,
    /// Bookkeeping: no task of this deployment starts before this time (the throttle).
    #[serde(default)]
    pub next_start_at: Option<Timestamp>,
    /// Bookkeeping: a task of this deployment proved itself (healthy by its health checks,
    /// or running long enough), so the circuit breaker no longer evaluates it.
    #[serde(default)]
    pub proven: bool,
    /// Bookkeeping: failed starts of this deployment already counted, so a stopped task is
    /// counted once however often it is observed. Pruned to the tasks still observed, so it
    /// never outgrows the stopped tasks the store keeps.
    #[serde(default)]
    pub accounted_task_ids: BTreeSet<String>,
}

impl Deployment {
    /// A new PRIMARY deployment, IN_PROGRESS, with no tasks yet.
    pub fn new(
        id: String,
        task_definition_arn: String,
        desired_count: u32,
        now: Timestamp,
    ) -> Self {
        Self {
            id,
            status: DeploymentStatus::Primary,
            task_definition_arn,
            desired_count,
            pending_count: 0,
            running_count: 0,
            failed_tasks: 0,
            rollout_state: RolloutState::InProgress,
            rollout_state_reason: Some("ECS deployment in progress.".to_owned()),
            created_at: now,
            updated_at: now,
            consecutive_failures: 0,
            last_failure_at: None,
            next_start_at: None,
            proven: false,
            accounted_task_ids: BTreeSet::new(),
        }
    }
}

/// ECS's `Service`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub arn: String,
    pub cluster_arn: String,
    pub status: ServiceStatus,
    pub scheduling_strategy: SchedulingStrategy,
    /// Set by the user for REPLICA; for DAEMON, the reconciler sets it to the number of
    /// hosts that should run the daemon, as ECS does.
    pub desired_count: u32,
    pub running_count: u32,
    pub pending_count: u32,
    pub launch_type: LaunchType,
    /// The awsvpc network of the service's tasks (required for FARGATE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<flotilla_model::task::NetworkConfiguration>,
    /// The task definition the PRIMARY deployment runs.
    pub task_definition_arn: String,
    pub deployment_configuration: DeploymentConfiguration,
    pub placement_constraints: Vec<PlacementConstraint>,
    pub placement_strategy: Vec<PlacementStrategy>,
    pub health_check_grace_period_seconds: u32,
    /// PRIMARY first, then older ones, newest first.
    pub deployments: Vec<Deployment>,
    /// The latest [`SERVICE_EVENTS_MAX`], newest first.
    pub events: Vec<ServiceEvent>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub enable_execute_command: bool,
    /// Bookkeeping: while the service is steady, when the steady-state event was last
    /// recorded; `None` while it is not steady.
    #[serde(default)]
    pub steady_state_event_at: Option<Timestamp>,
    /// `propagateTags`: `SERVICE`, `TASK_DEFINITION` or `NONE` (the default).
    #[serde(default)]
    pub propagate_tags: Option<String>,
    /// `enableECSManagedTags`: tag tasks with `aws:ecs:clusterName` and `aws:ecs:serviceName`.
    #[serde(default)]
    pub enable_ecs_managed_tags: bool,
    /// The CreateService `clientToken`, so a retried create answers with this service.
    #[serde(default)]
    pub client_token: Option<String>,
    /// The principal that created the service (`createdBy`).
    #[serde(default)]
    pub created_by: Option<String>,
}

impl Service {
    /// A new ACTIVE service (CreateService) with ECS's default deployment configuration and
    /// no deployment yet: the shell then calls [`Self::start_deployment`] with the first
    /// deployment's id.
    pub fn new(
        name: &str,
        arn: &str,
        cluster_arn: &str,
        scheduling_strategy: SchedulingStrategy,
        task_definition_arn: &str,
        desired_count: u32,
        now: Timestamp,
    ) -> Self {
        let desired_count = match scheduling_strategy {
            SchedulingStrategy::Replica => desired_count,
            // The reconciler sets it from the hosts.
            SchedulingStrategy::Daemon => 0,
        };
        Self {
            name: name.to_owned(),
            arn: arn.to_owned(),
            cluster_arn: cluster_arn.to_owned(),
            status: ServiceStatus::Active,
            scheduling_strategy,
            desired_count,
            running_count: 0,
            pending_count: 0,
            launch_type: LaunchType::Ec2,
            network_configuration: None,
            task_definition_arn: task_definition_arn.to_owned(),
            deployment_configuration: DeploymentConfiguration::default_for(scheduling_strategy),
            placement_constraints: Vec::new(),
            placement_strategy: Vec::new(),
            health_check_grace_period_seconds: 0,
            deployments: Vec::new(),
            events: Vec::new(),
            created_at: now,
            tags: Vec::new(),
            enable_execute_command: false,
            steady_state_event_at: None,
            propagate_tags: None,
            enable_ecs_managed_tags: false,
            client_token: None,
            created_by: None,
        }
    }

    /// The task group of the service's tasks (`service:NAME`).
    pub fn group(&self) -> String {
        format!("service:{}", self.name)
    }

    pub fn primary(&self) -> Option<&Deployment> {
        self.deployments
            .iter()
            .find(|d| d.status == DeploymentStatus::Primary)
    }

    pub fn primary_mut(&mut self) -> Option<&mut Deployment> {
        self.deployments
            .iter_mut()
            .find(|d| d.status == DeploymentStatus::Primary)
    }

    /// Starts a new deployment of `self.task_definition_arn`: the first one after
    /// [`Self::new`], or UpdateService with a new task definition or configuration, or
    /// `forceNewDeployment`. The PRIMARY becomes ACTIVE and its tasks are replaced. A change of `desired_count` alone needs no new deployment.
    /// The new deployment has a fresh restart throttle, which is how an update resets it.
    pub fn start_deployment(&mut self, id: String, now: Timestamp) {
        for deployment in &mut self.deployments {
            if deployment.status == DeploymentStatus::Primary {
                deployment.status = DeploymentStatus::Active;
                deployment.updated_at = now;
            }
        }
        let deployment = Deployment::new(
            id,
            self.task_definition_arn.clone(),
            self.desired_count,
            now,
        );
        self.deployments.insert(0, deployment);
        self.steady_state_event_at = None;
    }

    /// Records an event: newest first, the latest [`SERVICE_EVENTS_MAX`] kept.
    pub fn record_event(&mut self, event: ServiceEvent) {
        self.events.insert(0, event);
        self.events.truncate(SERVICE_EVENTS_MAX);
    }

    /// The shell calls this when StartTasks could not place every task: it records the
    /// event (see [`crate::placement_failure_event`]) and throttles further starts of the
    /// deployment like a failed start, so a full cluster is retried with growing gaps rather
    /// than on every evaluation. It does not count towards the circuit breaker: a full
    /// cluster is no reason to roll a deployment back.
    pub fn record_placement_failure(
        &mut self,
        deployment_id: &str,
        message: String,
        event_id: String,
        now: Timestamp,
        restart_delay_base_ms: u64,
    ) {
        if let Some(deployment) = self.deployments.iter_mut().find(|d| d.id == deployment_id) {
            crate::deployment::throttle(deployment, 1, now, restart_delay_base_ms);
        }
        self.record_event(ServiceEvent {
            id: event_id,
            created_at: now,
            message,
        });
    }

    /// The placement constraints, parsed. A constraint that does not parse (the API
    /// validates them, so only a stored record from an older version could hold one) is
    /// kept as a `memberOf` that matches nothing, so it never widens where tasks go.
    pub fn constraints(&self) -> Vec<Constraint> {
        self.placement_constraints
            .iter()
            .map(|c| {
                flotilla_scheduler::parse_constraint(&c.kind, c.expression.as_deref())
                    .unwrap_or_else(|_| Constraint::MemberOf(never_matches()))
            })
            .collect()
    }

    /// The placement strategies, parsed; ECS's default (spread over availability zones,
    /// then over instances) when none were given. Strategies that do not parse are
    /// skipped: they only rank.
    pub fn strategies(&self) -> Vec<Strategy> {
        if self.placement_strategy.is_empty() {
            return vec![
                Strategy::Spread(SpreadField::Attribute(DEFAULT_SPREAD_ATTRIBUTE.to_owned())),
                Strategy::Spread(SpreadField::Instance),
            ];
        }
        self.placement_strategy
            .iter()
            .filter_map(|s| flotilla_scheduler::parse_strategy(&s.kind, s.field.as_deref()).ok())
            .collect()
    }
}

fn never_matches() -> flotilla_scheduler::query::Expression {
    // Every host either has the attribute or not: asking for both matches none.
    flotilla_scheduler::query::parse(
        "attribute:flotilla.invalid exists and attribute:flotilla.invalid not_exists",
    )
    .expect("a fixed, valid expression")
}
