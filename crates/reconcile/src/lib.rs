//! Service reconcilers as pure functions: given one service, its tasks and the cluster's
//! hosts at one instant, say what to change and when to look again. No IO, no clock, no
//! randomness beyond the seed argument.
//!
//! Invariants:
//! * **Level-triggered and idempotent.** The plan depends only on what is observed; applying
//!   it and reconciling again starts and stops nothing more than the new state needs, and a
//!   steady service gets an empty plan. What must be remembered between evaluations (failed
//!   starts counted, throttle times, the steady-state event) lives in the service record and
//!   is written through [`Change::UpdateService`].
//! * **Bounded.** Tasks holding a host (dying ones included) never exceed
//!   `floor(D × maximumPercent / 100)` because of a start, and healthy tasks never drop below
//!   `ceil(D × minimumHealthyPercent / 100)` because of a stop, except the one documented
//!   case where the two leave no room at all (e.g. 100/100): then, once nothing is in flight,
//!   one task (DAEMON: one host) is replaced at a time rather than none.
//! * **Deterministic.** The same observation and seed give the same plan; event and rollback
//!   deployment ids come from the seed.
//!
//! # Applying a plan (the shell's side)
//! Apply the changes in order, ideally in one store transaction that also checks the
//! service record is the one that was observed (else reconcile again):
//! * [`Change::UpdateService`]: write the service record as given (it carries the new
//!   `deployments[]`, counts, rollout states, events and status). It comes first, so a
//!   rollback deployment exists before tasks are started for it.
//! * [`Change::StopTask`]: set the task's desired status STOPPED, `stoppedReason` to the
//!   reason and `stopCode` ServiceSchedulerInitiated; a task on a deregistered host has no
//!   agent to report it, so record it STOPPED and release its reservation at once.
//! * [`Change::StartTasks`]: place `count` tasks of the task definition through the
//!   scheduler as RunTask does (group `service:NAME`, `startedBy` the deployment id, the
//!   service's constraints and [`Service::strategies`], launch type and tags), then record
//!   [`started_tasks_event`]. For tasks no host could take, record
//!   [`placement_failure_event`] with [`Service::record_placement_failure`], which also
//!   throttles the next attempt.
//! * [`Change::StartTaskOn`]: the same for one task on the named host (DAEMON); if it no
//!   longer fits, treat it as a placement failure.
//!
//! Reconcile a service again when its record, its tasks or the cluster's hosts change, and
//! after `requeue_after_ms` when the plan asks for it (throttle expiry, a health-check grace
//! period ending, a draining host to look at again, the six-hourly steady-state event).
//! Pass every task of the service still stored (STOPPED ones too: they are how failed starts
//! are counted, once each) and every host of the cluster with its status: a task on a host
//! that is not passed is treated as on a deregistered host and stopped.
//!
//! Events: the reconciler records its events (stops, deployment completed or failed,
//! rollback, steady state) only in the service record it writes; there is no separate event
//! change. The shell records the events only it can word (tasks started, placement failures)
//! the same way, with [`Service::record_event`].

mod daemon;
mod deployment;
mod evaluation;
mod events;
mod health;
mod replica;
mod service;

use flotilla_model::{ContainerInstanceStatus, Task, Timestamp};
use flotilla_scheduler::Host;

pub use daemon::{CONSTRAINT_STOP_REASON, DRAINING_RECHECK_MS};
pub use deployment::{
    BREAKER_FAILED_REASON, BREAKER_THRESHOLD_MAX, BREAKER_THRESHOLD_MIN, THROTTLE_DELAY_BASE_MS,
    THROTTLE_DELAY_MAX_MS, breaker_threshold, throttle_delay_ms, throttle_delay_with_base_ms,
};
pub use evaluation::{
    DELETE_STOP_REASON, DEREGISTERED_STOP_REASON, DRAINING_STOP_REASON,
    STEADY_STATE_EVENT_REPEAT_MS,
};
pub use events::{
    deployment_completed_event, deployment_failed_event, new_deployment_id, new_event_id,
    placement_failure_event, rolling_back_event, started_tasks_event, steady_state_event,
    stopped_tasks_event,
};
pub use health::{HEALTHY_AFTER_RUNNING_MS, UNHEALTHY_STOP_REASON};
pub use service::{
    CircuitBreaker, DEFAULT_SPREAD_ATTRIBUTE, Deployment, DeploymentConfiguration,
    DeploymentStatus, PlacementConstraint, PlacementStrategy, RolloutState, SERVICE_EVENTS_MAX,
    SchedulingStrategy, Service, ServiceEvent, ServiceStatus,
};

use crate::evaluation::Evaluation;

/// One container instance as the reconciler sees it.
#[derive(Clone, Debug)]
pub struct ObservedHost {
    pub host: Host,
    /// ACTIVE and DRAINING matter apart (`host.active` folds them together).
    pub status: ContainerInstanceStatus,
    /// Non-stopped tasks on this host of *other* DAEMON services, so a daemon on a
    /// DRAINING host does not wait for them; 0 when the shell does not know.
    pub other_daemon_tasks: u32,
}

impl ObservedHost {
    pub fn new(host: Host, status: ContainerInstanceStatus) -> Self {
        Self {
            host,
            status,
            other_daemon_tasks: 0,
        }
    }
}

/// What the reconciler is given: one service at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub service: &'a Service,
    /// The service's tasks (group `service:NAME`), in any state; each belongs to the
    /// deployment its `started_by` names.
    pub tasks: &'a [Task],
    /// Every container instance of the cluster.
    pub hosts: &'a [ObservedHost],
    pub now: Timestamp,
    /// The first gap of the restart throttle, doubled with each failure in a row:
    /// [`THROTTLE_DELAY_BASE_MS`] as in ECS, less where an operator wants failing
    /// deployments to fail fast.
    pub restart_delay_base_ms: u64,
    /// How long a task without health checks must run before it counts healthy:
    /// [`HEALTHY_AFTER_RUNNING_MS`] as in ECS, less where an operator wants rollouts of such
    /// tasks to move faster (at the price of trusting a crash that comes later).
    pub healthy_after_running_ms: i64,
}

/// One thing for the shell to do; see the crate documentation for how to apply each.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Start `count` new tasks of `deployment_id` (the shell places them through the
    /// scheduler, as RunTask does).
    StartTasks {
        deployment_id: String,
        task_definition_arn: String,
        count: u32,
    },
    /// DAEMON: start one task of `deployment_id` on this host.
    StartTaskOn {
        deployment_id: String,
        task_definition_arn: String,
        host_id: String,
    },
    /// Tell a task to stop; `reason` becomes its `stoppedReason` (ECS's wording).
    StopTask { task_arn: String, reason: String },
    /// Write the service record: deployments, counts, rollout states, events, status.
    UpdateService(Box<Service>),
}

/// What to change, and when to evaluate again if nothing else prompts it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// In the order to apply them: the service record first, then stops, then starts.
    pub changes: Vec<Change>,
    pub requeue_after_ms: Option<u64>,
}

/// Reconciles one service: see the crate documentation. `seed` makes the ids of events and
/// rollback deployments and breaks ties in scale-in; pass a fresh one per evaluation.
pub fn reconcile(observed: &Observed<'_>, seed: u64) -> Plan {
    let mut ev = Evaluation::new(observed, seed);
    match ev.next.status {
        ServiceStatus::Inactive => return Plan::default(),
        ServiceStatus::Draining => {
            ev.classify();
            ev.drain_for_delete();
            return ev.finish();
        }
        ServiceStatus::Active => {}
    }
    if ev.next.primary().is_none() {
        // CreateService makes the first deployment; until then there is nothing to run.
        return Plan::default();
    }

    let eligible = match ev.next.scheduling_strategy {
        SchedulingStrategy::Replica => Vec::new(),
        SchedulingStrategy::Daemon => {
            let eligible = daemon::eligible_hosts(&ev);
            let hosts = eligible.iter().filter(|e| **e).count();
            ev.next.desired_count = u32::try_from(hosts).unwrap_or(u32::MAX);
            eligible
        }
    };

    deployment::account(
        &mut ev.next,
        observed.tasks,
        observed.now,
        observed.restart_delay_base_ms,
        observed.healthy_after_running_ms,
    );
    let desired = ev.next.desired_count;
    let mut ids = ev.ids.clone();
    let tripped =
        deployment::trip_breaker(&mut ev.next, desired, || ids.deployment_id(), observed.now);
    ev.ids = ids;
    match tripped {
        None => {}
        Some(deployment::Tripped::Failed { deployment_id }) => {
            let message = deployment_failed_event(&ev.next.name, &deployment_id);
            ev.message(message);
        }
        Some(deployment::Tripped::RolledBack {
            deployment_id,
            to_deployment_id,
        }) => {
            let failed = deployment_failed_event(&ev.next.name, &deployment_id);
            let rolling_back = rolling_back_event(&ev.next.name, &to_deployment_id);
            ev.message(failed);
            ev.message(rolling_back);
        }
    }

    ev.classify();
    match ev.next.scheduling_strategy {
        SchedulingStrategy::Replica => replica::plan(&mut ev),
        SchedulingStrategy::Daemon => daemon::plan(&mut ev, &eligible),
    }
    ev.finish()
}
