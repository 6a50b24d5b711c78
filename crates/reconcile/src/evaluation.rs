//! One evaluation: the observed tasks classified once, the service record being rewritten,
//! and the stops, starts and events collected on the way, turned into a [`Plan`] at the end.

use std::collections::BTreeMap;

use flotilla_model::{ContainerInstanceStatus, DesiredStatus, Task, TaskStatus, Timestamp};
use flotilla_scheduler::{Host, Strategy};

use crate::events::{self, Ids};
use crate::health;
use crate::service::{DeploymentStatus, RolloutState, ServiceEvent, ServiceStatus};
use crate::{Change, Observed, Plan, Service};

/// ECS repeats the steady-state event every six hours while a service stays steady.
pub const STEADY_STATE_EVENT_REPEAT_MS: i64 = 6 * 60 * 60 * 1_000;

pub const DELETE_STOP_REASON: &str = "Service is being deleted";
pub const DRAINING_STOP_REASON: &str = "Task stopped during instance draining";
pub const DEREGISTERED_STOP_REASON: &str =
    "Task stopped because its container instance was deregistered";

/// Where a task's host stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// ACTIVE with its agent connected, or a task with no host.
    Active,
    /// The host is DRAINING: its tasks are replaced, then stopped.
    Draining,
    /// The agent is disconnected (or the host still registering): nothing can be known or
    /// done there, so the task counts for nothing (it is replaced) and is left alone; if the
    /// host comes back, the surplus is scaled in.
    Lost,
    /// The host is deregistered or unknown: the task is stopped to close its record.
    Gone,
}

/// A task that has not reached STOPPED, classified.
#[derive(Clone, Debug)]
pub(crate) struct LiveTask<'a> {
    pub task: &'a Task,
    /// Index into `Observed::hosts`.
    pub host: Option<usize>,
    pub place: Place,
    /// Position of its deployment in `deployments[]` (0 is the newest); `None` for tasks of
    /// deployments no longer listed, which are replaced like the oldest deployment's.
    pub deployment: Option<usize>,
    pub primary: bool,
    /// PENDING or RUNNING and desired RUNNING (see `health::is_wanted`).
    pub wanted: bool,
    pub healthy: bool,
    /// RUNNING and not healthy yet, but not failing either: within the healthy-after window,
    /// or waiting for its first health check result. Likely to turn healthy soon, so an
    /// outgoing one is kept for the floor's budget rather than stopped outright.
    pub maturing: bool,
    /// Stopped by this evaluation.
    pub stop: bool,
}

impl LiveTask<'_> {
    /// Holds resources on a host the service can see: counts towards maximumPercent.
    pub fn counted(&self) -> bool {
        matches!(self.place, Place::Active | Place::Draining)
    }

    /// Counts towards the desired count once this evaluation's stops are applied.
    pub fn active(&self) -> bool {
        self.wanted && !self.stop && self.counted()
    }

    pub fn active_healthy(&self) -> bool {
        self.active() && self.healthy
    }

    pub fn running(&self) -> bool {
        self.task.last_status == TaskStatus::Running
    }

    /// A PRIMARY task on a host that keeps it: what the service converges to.
    pub fn kept(&self) -> bool {
        self.active() && self.primary && self.place == Place::Active
    }
}

pub(crate) struct Evaluation<'a> {
    pub observed: &'a Observed<'a>,
    pub now: Timestamp,
    pub seed: u64,
    /// The service as it will be written.
    pub next: Service,
    pub live: Vec<LiveTask<'a>>,
    /// The hosts as the scheduler sees them, for scale-in.
    pub hosts: Vec<Host>,
    pub ids: Ids,
    stops: Vec<Change>,
    stopped_task_ids: Vec<&'a str>,
    starts: Vec<Change>,
    messages: Vec<String>,
    requeue_at: Option<Timestamp>,
}

impl<'a> Evaluation<'a> {
    pub fn new(observed: &'a Observed<'a>, seed: u64) -> Self {
        Self {
            observed,
            now: observed.now,
            seed,
            next: observed.service.clone(),
            live: Vec::new(),
            hosts: observed.hosts.iter().map(|h| h.host.clone()).collect(),
            ids: Ids::new(seed),
            stops: Vec::new(),
            stopped_task_ids: Vec::new(),
            starts: Vec::new(),
            messages: Vec::new(),
            requeue_at: None,
        }
    }

    /// Classifies the tasks that have not reached STOPPED, against the deployments as they
    /// stand now (after the breaker may have added a rollback).
    pub fn classify(&mut self) {
        let host_index: BTreeMap<&str, usize> = self
            .observed
            .hosts
            .iter()
            .enumerate()
            .map(|(index, h)| (h.host.id.as_str(), index))
            .collect();
        let primary_id = self.next.primary().map(|d| d.id.clone());
        let window = self.observed.healthy_after_running_ms;
        self.live = self
            .observed
            .tasks
            .iter()
            .filter(|t| t.last_status != TaskStatus::Stopped)
            .map(|task| {
                let host = task
                    .container_instance_id
                    .as_deref()
                    .and_then(|id| host_index.get(id).copied());
                let place = match (task.container_instance_id.as_deref(), host) {
                    (None, _) => Place::Active,
                    (Some(_), None) => Place::Gone,
                    (Some(_), Some(index)) => {
                        let observed = &self.observed.hosts[index];
                        match observed.status {
                            ContainerInstanceStatus::Inactive
                            | ContainerInstanceStatus::Deregistering
                            | ContainerInstanceStatus::RegistrationFailed => Place::Gone,
                            _ if !observed.host.agent_connected => Place::Lost,
                            ContainerInstanceStatus::Registering => Place::Lost,
                            ContainerInstanceStatus::Draining => Place::Draining,
                            ContainerInstanceStatus::Active => Place::Active,
                        }
                    }
                };
                let started_by = task.started_by.as_deref();
                let healthy = health::is_healthy(task, self.observed.now, window);
                LiveTask {
                    task,
                    host,
                    place,
                    deployment: self
                        .next
                        .deployments
                        .iter()
                        .position(|d| Some(d.id.as_str()) == started_by),
                    primary: started_by.is_some() && started_by == primary_id.as_deref(),
                    wanted: health::is_wanted(task),
                    healthy,
                    maturing: !healthy
                        && health::is_running(task)
                        && task.health_status != flotilla_model::HealthStatus::Unhealthy,
                    stop: false,
                }
            })
            .collect();
        // A RUNNING task without checks turns healthy when its window ends with no report to
        // prompt an evaluation: come back then.
        let turning_healthy: Vec<Timestamp> = self
            .live
            .iter()
            .filter(|t| t.maturing && !health::has_health_checks(t.task))
            .filter_map(|t| health::healthy_without_checks_at(t.task, window))
            .collect();
        for at in turning_healthy {
            self.requeue_at(at);
        }
    }

    /// How many live tasks `keep` accepts.
    pub fn count(&self, keep: impl Fn(&LiveTask<'a>) -> bool) -> u32 {
        u32::try_from(self.live.iter().filter(|t| keep(t)).count()).unwrap_or(u32::MAX)
    }

    /// The positions in `live` of the tasks `keep` accepts.
    pub fn indexes(&self, keep: impl Fn(&LiveTask<'a>) -> bool) -> Vec<usize> {
        (0..self.live.len())
            .filter(|&i| keep(&self.live[i]))
            .collect()
    }

    /// Stops `self.live[index]` unless it is already told to stop.
    pub fn stop(&mut self, index: usize, reason: &str) {
        let live = &mut self.live[index];
        if live.stop || live.task.desired_status == DesiredStatus::Stopped {
            return;
        }
        live.stop = true;
        let task: &'a Task = live.task;
        self.stopped_task_ids.push(&task.id);
        self.stops.push(Change::StopTask {
            task_arn: task.arn.clone(),
            reason: reason.to_owned(),
        });
    }

    pub fn start(&mut self, change: Change) {
        self.starts.push(change);
    }

    pub fn changes_tasks(&self) -> bool {
        !self.stops.is_empty() || !self.starts.is_empty()
    }

    pub fn message(&mut self, message: String) {
        self.messages.push(message);
    }

    /// Asks to be evaluated again at `at` (the earliest of all such asks wins).
    pub fn requeue_at(&mut self, at: Timestamp) {
        self.requeue_at = Some(self.requeue_at.map_or(at, |earlier| earlier.min(at)));
    }

    pub fn primary_index(&self) -> Option<usize> {
        self.next
            .deployments
            .iter()
            .position(|d| d.status == DeploymentStatus::Primary)
    }

    /// Stops what must go whatever the deployment configuration says: tasks of deregistered
    /// hosts (nothing will ever report them again) and tasks failing their health checks
    /// past the grace period (they are not healthy, so stopping them lowers no floor).
    pub fn stop_forced(&mut self) {
        let grace_seconds = self.next.health_check_grace_period_seconds;
        for index in 0..self.live.len() {
            let task = self.live[index].task;
            if self.live[index].place == Place::Gone {
                self.stop(index, DEREGISTERED_STOP_REASON);
            } else if self.live[index].counted() {
                if health::is_unhealthy(task, grace_seconds, self.now) {
                    self.stop(index, health::UNHEALTHY_STOP_REASON);
                } else if health::is_running(task)
                    && task.health_status == flotilla_model::HealthStatus::Unhealthy
                    && let Some(end) = health::grace_ends_at(task, grace_seconds)
                {
                    // Unhealthy within the grace period: judge it when the period ends.
                    self.requeue_at(end);
                }
            }
        }
    }

    /// `candidates` (indexes into `live`) in the order to stop them: those not healthy yet
    /// first (PENDING before RUNNING, newest first), so a scale-in keeps the tasks that have
    /// proven themselves; then healthy ones as the strategies say (binpack: from the host
    /// that will have the most left; spread: from the fullest host or zone).
    pub fn stop_order(&self, candidates: &[usize], strategies: &[Strategy]) -> Vec<usize> {
        let mut pending: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| !self.live[i].healthy)
            .collect();
        pending.sort_by(|&a, &b| {
            let (a_running, b_running) = (self.live[a].running(), self.live[b].running());
            let (a, b) = (self.live[a].task, self.live[b].task);
            a_running
                .cmp(&b_running)
                .then_with(|| b.created_at.cmp(&a.created_at))
                .then_with(|| a.id.cmp(&b.id))
        });
        let mut running: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| self.live[i].healthy)
            .collect();
        // A stable order first, so ties the strategies leave follow it.
        running.sort_by(|&a, &b| self.live[a].task.id.cmp(&self.live[b].task.id));
        let host_of: Vec<usize> = running
            .iter()
            .map(|&i| self.live[i].host.unwrap_or(self.hosts.len()))
            .collect();
        let chosen = flotilla_scheduler::choose_tasks_to_stop(
            &self.hosts,
            &host_of,
            strategies,
            running.len(),
            self.seed,
        );
        pending.extend(chosen.into_iter().map(|c| running[c]));
        pending
    }

    /// Records one event for this evaluation's stops (ECS lists them in one message).
    pub fn record_stops_event(&mut self) {
        if self.stopped_task_ids.is_empty() {
            return;
        }
        let message = events::stopped_tasks_event(&self.next.name, &self.stopped_task_ids);
        self.stopped_task_ids.clear();
        self.messages.push(message);
    }

    /// Writes each deployment's and the service's task counts (after this evaluation's
    /// stops). The PRIMARY's desired count is the service's; an older deployment's is what
    /// it still runs, shrinking as it is replaced.
    pub fn refresh_counts(&mut self) {
        let desired = self.next.desired_count;
        let mut service_running = 0;
        let mut service_pending = 0;
        let mut per_deployment = vec![(0u32, 0u32); self.next.deployments.len()];
        for live in self.live.iter().filter(|t| t.active()) {
            let running = live.running();
            if running {
                service_running += 1;
            } else {
                service_pending += 1;
            }
            if let Some(index) = live.deployment {
                let counts = &mut per_deployment[index];
                if running {
                    counts.0 += 1;
                } else {
                    counts.1 += 1;
                }
            }
        }
        for (deployment, (running, pending)) in self.next.deployments.iter_mut().zip(per_deployment)
        {
            deployment.running_count = running;
            deployment.pending_count = pending;
            deployment.desired_count = if deployment.status == DeploymentStatus::Primary {
                desired
            } else {
                running + pending
            };
        }
        self.next.running_count = service_running;
        self.next.pending_count = service_pending;
    }

    /// Ends a rollout whose PRIMARY has everything (`complete`): older deployments become
    /// INACTIVE and are dropped, so exactly one deployment remains (the ServicesStable
    /// waiter needs it), and the PRIMARY is COMPLETED. Then records the steady-state event
    /// once per steady period, again every six hours, when nothing is left to do.
    pub fn settle(&mut self, complete: bool, quiet: bool) {
        if complete && let Some(primary) = self.primary_index() {
            let deployment = self.next.deployments.swap_remove(primary);
            self.next.deployments.clear();
            self.next.deployments.push(deployment);
            let primary = &mut self.next.deployments[0];
            if primary.rollout_state == RolloutState::InProgress {
                primary.rollout_state = RolloutState::Completed;
                primary.rollout_state_reason =
                    Some(format!("ECS deployment {} completed.", primary.id));
                let message = events::deployment_completed_event(&self.next.name, &primary.id);
                self.messages.push(message);
            }
            // Positions changed; nothing after this reads them.
            for live in &mut self.live {
                live.deployment = None;
            }
        }
        let steady = complete && quiet && !self.changes_tasks();
        if !steady {
            self.next.steady_state_event_at = None;
            return;
        }
        let due = self
            .next
            .steady_state_event_at
            .is_none_or(|at| self.now.millis_since(at) >= STEADY_STATE_EVENT_REPEAT_MS);
        if due {
            self.next.steady_state_event_at = Some(self.now);
            self.messages
                .push(events::steady_state_event(&self.next.name));
        }
        if let Some(at) = self.next.steady_state_event_at {
            self.requeue_at(at.plus_millis(STEADY_STATE_EVENT_REPEAT_MS));
        }
    }

    /// A DRAINING (deleted) service: every task is told to stop; once none is left on a
    /// reachable host (ACTIVE or DRAINING, agent connected), the service is INACTIVE. Tasks
    /// on lost or deregistered hosts do not hold it up: nothing may ever report them.
    pub fn drain_for_delete(&mut self) {
        for index in 0..self.live.len() {
            self.stop(index, DELETE_STOP_REASON);
        }
        self.record_stops_event();
        self.next.desired_count = 0;
        self.refresh_counts();
        if !self.live.iter().any(LiveTask::counted) {
            self.next.status = ServiceStatus::Inactive;
        }
    }

    pub fn finish(mut self) -> Plan {
        let now = self.now;
        for message in std::mem::take(&mut self.messages) {
            let event = ServiceEvent {
                id: self.ids.event_id(),
                created_at: now,
                message,
            };
            self.next.record_event(event);
        }
        // A deployment whose record changed was updated now.
        for deployment in &mut self.next.deployments {
            let before = self
                .observed
                .service
                .deployments
                .iter()
                .find(|d| d.id == deployment.id);
            let changed = before.is_none_or(|before| {
                let mut before = before.clone();
                before.updated_at = deployment.updated_at;
                before != *deployment
            });
            if changed && before.is_some() {
                deployment.updated_at = now;
            }
        }
        let mut changes = Vec::with_capacity(1 + self.stops.len() + self.starts.len());
        if self.next != *self.observed.service {
            changes.push(Change::UpdateService(Box::new(self.next)));
        }
        changes.append(&mut self.stops);
        changes.append(&mut self.starts);
        Plan {
            changes,
            requeue_after_ms: self
                .requeue_at
                .map(|at| u64::try_from(at.millis_since(now)).unwrap_or(0)),
        }
    }
}
