//! The per-task decision function: given what the control plane wants, what the runtime
//! shows and what the agent remembers, say what to do next and what to report. Pure: no IO,
//! no clock (`now` is an argument), deterministic order (definition order, `BTreeMap`s).
//!
//! ```text
//!  PROVISIONING ─► PENDING ───────────────► RUNNING ──────────► STOPPING ──► STOPPED ──► (removed
//!  (server)        pull images (pullStarted/  every container       stop in reverse      after the
//!                  pullStoppedAt), create      has started           dependency order     retention)
//!                  volumes and containers,     (startedAt)           (SIGTERM, SIGKILL
//!                  start in dependsOn order                          after stopTimeout)
//!        │               │                          │
//!        └───────────────┴──────────────────────────┴─► a stop cause: desired STOPPED, an essential
//!                                                       container exited, a pull/create/start failed,
//!                                                       a dependency can never be met
//! ```
//!
//! The shell ([`crate::task_runner`]) observes, calls [`decide`], sends the report, runs the
//! actions, writes their outcomes into the [`TaskRecord`] and calls [`decide`] again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_model::task::{HealthStatus, NetworkBinding, TaskNetwork, TaskStatus, TaskStopCode};
use flotilla_model::task_definition::{ContainerCondition, NetworkMode};
use flotilla_model::{ContainerDefinition, DesiredStatus, TaskDefinition, Timestamp};
use flotilla_protocol::{AssignedTask, ContainerStateChange, TaskStateChange};

use crate::runtime::{ContainerStatus, ObservedContainer, labels};
use crate::spec::{VolumeSource, host_mode_bindings, task_volumes};

/// `stoppedReason` when an essential container exits.
pub const REASON_ESSENTIAL_EXITED: &str = "Essential container in task exited";
/// A container's `reason` when the kernel killed it for exceeding its memory limit.
pub const REASON_OUT_OF_MEMORY: &str = "OutOfMemoryError: Container killed due to memory usage";
/// A container's `reason` when it vanished from the runtime (removed behind the agent's back).
pub const REASON_CONTAINER_LOST: &str = "ContainerLost: the container no longer exists on the host";
/// ECS's default `restartAttemptPeriod`: a container must run this long to be restarted.
pub const RESTART_ATTEMPT_PERIOD_DEFAULT_S: i64 = 300;
/// A Fargate Spot task's warning between SIGTERM and SIGKILL when its capacity is reclaimed.
pub const SPOT_INTERRUPTION_WARNING: Duration = Duration::from_secs(120);

/// Agent settings that shape decisions.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Used for containers without `stopTimeout`.
    pub stop_timeout_default: Duration,
    /// How long stopped containers are kept (for logs and inspection) before removal.
    pub retention: Duration,
}

/// Everything [`decide`] looks at, besides the record.
#[derive(Clone, Copy, Debug)]
pub struct TaskInput<'a> {
    pub task: &'a AssignedTask,
    /// `None` when the control plane did not send it (or for orphans found on the host).
    pub definition: Option<&'a TaskDefinition>,
    /// `false` once the control plane no longer lists the task: stop and clean up quietly.
    pub listed: bool,
    /// The task's containers as the runtime shows them, by container name.
    pub observed: &'a BTreeMap<String, ObservedContainer>,
    pub settings: &'a EngineSettings,
}

/// What made a container fail before it could run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Pull,
    Create,
    Start,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    /// The reason ECS shows for this failure.
    pub fn reason(&self) -> String {
        let prefix = match self.kind {
            FailureKind::Pull => "CannotPullContainerError",
            FailureKind::Create => "CannotCreateContainerError",
            FailureKind::Start => "CannotStartContainerError",
        };
        format!("{prefix}: {}", self.message)
    }
}

/// Why the task stops. Both parts are optional: a task the control plane forgot stops
/// without a reason to report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopCause {
    pub code: Option<TaskStopCode>,
    pub reason: Option<String>,
}

impl StopCause {
    fn new(code: TaskStopCode, reason: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            reason: Some(reason.into()),
        }
    }
}

/// What the agent remembers about one task, besides what the runtime shows. Fields are
/// written either by the shell (outcomes of actions) or by [`decide`] (sticky decisions).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskRecord {
    // Written by the shell.
    /// Containers whose image is present.
    pub images_ready: BTreeSet<String>,
    /// Image digests by container, from pulls.
    pub image_digests: BTreeMap<String, String>,
    /// Task-scoped volumes exist.
    pub volumes_ready: bool,
    /// Why volumes could not be created.
    pub volume_failure: Option<String>,
    /// Pull, create and start failures, by container.
    pub failures: BTreeMap<String, Failure>,
    /// Restarts by container: how many and the last one.
    pub restarts: BTreeMap<String, (u32, Timestamp)>,
    /// The last report the control plane accepted.
    pub reported: Option<TaskStateChange>,
    /// The task's volumes are removed.
    pub volumes_removed: bool,
    /// The task's own network (awsvpc), once its sandbox is up.
    pub network: Option<TaskNetwork>,
    /// Why the task's network could not be set up.
    pub network_failure: Option<String>,
    /// The task's sandbox is removed (its interface detached).
    pub network_removed: bool,

    // Written by `decide`.
    pub pull_started_at: Option<Timestamp>,
    pub pull_stopped_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub stop: Option<StopCause>,
    pub stopping_at: Option<Timestamp>,
    pub stopped_at: Option<Timestamp>,
    /// Containers seen in the runtime at least once (so a vanished one is known as lost).
    pub seen: BTreeSet<String>,
    /// The last non-empty host port bindings seen, by container (exited containers lose them).
    pub bindings: BTreeMap<String, Vec<NetworkBinding>>,
}

impl TaskRecord {
    fn reported_status(&self) -> Option<TaskStatus> {
        self.reported.as_ref().map(|r| r.status)
    }
}

/// One step the shell must take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make the container's image present (pull if missing).
    Pull {
        container: String,
        image: String,
    },
    /// Create the task's engine volumes.
    CreateVolumes,
    Create {
        container: String,
    },
    Start {
        container: String,
    },
    /// Start an exited container again, in place (restart policy).
    Restart {
        container: String,
    },
    /// SIGTERM, then SIGKILL after `timeout`.
    Stop {
        container: String,
        timeout: Duration,
    },
    /// Remove a container (after the retention period).
    Remove {
        container: String,
    },
    /// Remove the task's engine volumes (after its containers).
    RemoveVolumes,
    /// Give an awsvpc task its own network namespace and address (before its containers).
    SetUpNetwork,
    /// Remove an awsvpc task's network namespace (once it is STOPPED and reported).
    TearDownNetwork,
}

/// The outcome of one [`decide`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// A state change to send, when it differs from the last accepted one.
    pub report: Option<TaskStateChange>,
    /// Decide again at this time even if nothing happens (timeouts, retention).
    pub wake_at: Option<Timestamp>,
    /// Everything is stopped, reported and removed: the task can be forgotten.
    pub done: bool,
}

impl Plan {
    fn wake(&mut self, at: Timestamp) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// Where one container stands.
#[derive(Clone, Copy, Debug)]
enum Phase<'a> {
    /// Not created yet.
    Waiting,
    Failed(&'a Failure),
    /// Created, never started.
    Created(&'a ObservedContainer),
    Running(&'a ObservedContainer),
    Exited(&'a ObservedContainer),
    /// Created once, gone now.
    Lost,
}

impl Phase<'_> {
    fn has_started(&self) -> bool {
        matches!(self, Phase::Running(_) | Phase::Exited(_))
    }

    fn observed(&self) -> Option<&ObservedContainer> {
        match self {
            Phase::Created(o) | Phase::Running(o) | Phase::Exited(o) => Some(o),
            _ => None,
        }
    }
}

/// Whether a dependency condition holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Dependency {
    Met,
    /// Not yet; look again at the deadline if there is one.
    Waiting(Option<Timestamp>),
    /// It never will: why.
    Never(String),
}

fn condition_name(condition: ContainerCondition) -> &'static str {
    match condition {
        ContainerCondition::Start => "START",
        ContainerCondition::Complete => "COMPLETE",
        ContainerCondition::Success => "SUCCESS",
        ContainerCondition::Healthy => "HEALTHY",
    }
}

fn dependency_state(
    condition: ContainerCondition,
    definition: Option<&ContainerDefinition>,
    phase: Phase<'_>,
    now: Timestamp,
) -> Dependency {
    let state = match (condition, phase) {
        (_, Phase::Failed(failure)) => Dependency::Never(failure.reason()),
        (_, Phase::Lost) => Dependency::Never("it no longer exists".to_owned()),
        (ContainerCondition::Start, p) if p.has_started() => Dependency::Met,
        (ContainerCondition::Complete, Phase::Exited(_)) => Dependency::Met,
        (ContainerCondition::Success, Phase::Exited(o)) => match o.exit_code {
            Some(0) => Dependency::Met,
            Some(code) => Dependency::Never(format!("it exited with code {code}")),
            None => Dependency::Never("it exited without an exit code".to_owned()),
        },
        (ContainerCondition::Healthy, _) if definition.is_none_or(|d| d.health_check.is_none()) => {
            Dependency::Never("it has no health check".to_owned())
        }
        (ContainerCondition::Healthy, Phase::Exited(o)) => {
            Dependency::Never(format!("it exited with code {}", o.exit_code.unwrap_or(-1)))
        }
        (ContainerCondition::Healthy, Phase::Running(o)) => match o.health {
            Some(HealthStatus::Healthy) => Dependency::Met,
            Some(HealthStatus::Unhealthy) => Dependency::Never("it is unhealthy".to_owned()),
            _ => Dependency::Waiting(None),
        },
        _ => Dependency::Waiting(None),
    };
    // `startTimeout` of the dependency: how long it may take to reach the condition once started.
    if state == Dependency::Waiting(None)
        && let (Some(timeout), Some(started)) = (
            definition.and_then(|d| d.start_timeout),
            phase.observed().and_then(|o| o.started_at),
        )
    {
        let deadline = started.plus_seconds(i64::from(timeout.max(0)));
        if now >= deadline {
            return Dependency::Never(format!(
                "it did not reach {} within {timeout}s",
                condition_name(condition)
            ));
        }
        return Dependency::Waiting(Some(deadline));
    }
    state
}

/// Whether an exited container is restarted in place, by its restart policy.
fn should_restart(
    definition: &ContainerDefinition,
    observed: &ObservedContainer,
    now: Timestamp,
) -> bool {
    let Some(policy) = definition.restart_policy.as_ref().filter(|p| p.enabled) else {
        return false;
    };
    let Some(code) = observed.exit_code else {
        return false;
    };
    if policy.ignored_exit_codes.contains(&code) {
        return false;
    }
    // A container must have run for the attempt period; one that fails faster stays down.
    let period_ms = i64::from(
        policy
            .restart_attempt_period
            .unwrap_or(RESTART_ATTEMPT_PERIOD_DEFAULT_S as i32),
    ) * 1000;
    let Some(started) = observed.started_at else {
        return false;
    };
    observed.finished_at.unwrap_or(now).millis_since(started) >= period_ms
}

/// The containers `name` must wait for before it may start (dependsOn plus links, which
/// need a running target).
fn start_dependencies(definition: &ContainerDefinition) -> Vec<(String, ContainerCondition)> {
    let mut dependencies: Vec<(String, ContainerCondition)> = definition
        .depends_on
        .iter()
        .map(|d| (d.container_name.clone(), d.condition))
        .collect();
    for link in &definition.links {
        let target = link.split_once(':').map_or(link.as_str(), |(t, _)| t);
        if !dependencies.iter().any(|(d, _)| d == target) {
            dependencies.push((target.to_owned(), ContainerCondition::Start));
        }
    }
    dependencies
}

/// The containers that must exist before `definition` can be created (volumesFrom, links).
fn create_dependencies(definition: &ContainerDefinition) -> Vec<String> {
    let mut names: Vec<String> = definition
        .volumes_from
        .iter()
        .filter_map(|v| v.source_container.clone())
        .collect();
    names.extend(
        definition
            .links
            .iter()
            .map(|l| l.split_once(':').map_or(l.as_str(), |(t, _)| t).to_owned()),
    );
    names
}

fn stop_timeout(
    definition: Option<&ContainerDefinition>,
    observed: Option<&ObservedContainer>,
    default: Duration,
) -> Duration {
    definition
        .and_then(|d| d.stop_timeout)
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .or_else(|| {
            observed
                .and_then(|o| o.label(labels::STOP_TIMEOUT))
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs)
        })
        .unwrap_or(default)
}

/// Decides the next steps for one task. Writes its sticky decisions into `record`.
pub fn decide(input: &TaskInput<'_>, record: &mut TaskRecord, now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    let task = input.task;
    let definitions: Vec<&ContainerDefinition> = input
        .definition
        .map(|d| d.spec.container_definitions.iter().collect())
        .unwrap_or_default();
    let definition_of = |name: &str| definitions.iter().copied().find(|d| d.name() == name);
    let awsvpc = input
        .definition
        .is_some_and(|d| d.spec.network_mode == NetworkMode::Awsvpc);

    // Remember what was seen: containers that existed, and their host ports.
    for (name, observed) in input.observed {
        record.seen.insert(name.clone());
        if !observed.network_bindings.is_empty() {
            record
                .bindings
                .insert(name.clone(), observed.network_bindings.clone());
        }
    }
    let created_before = |name: &str| {
        record.seen.contains(name)
            || task
                .containers
                .iter()
                .any(|c| c.name == name && c.runtime_id.is_some())
    };

    // Every container the task has: the definition's, then any other found on the host.
    let mut names: Vec<String> = definitions.iter().map(|d| d.name().to_owned()).collect();
    names.extend(
        input
            .observed
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let phases: BTreeMap<&str, Phase<'_>> = names
        .iter()
        .map(|name| {
            let phase = if let Some(failure) = record.failures.get(name) {
                Phase::Failed(failure)
            } else {
                match input.observed.get(name) {
                    Some(o) if o.status == ContainerStatus::Running => Phase::Running(o),
                    Some(o) if o.status == ContainerStatus::Exited => Phase::Exited(o),
                    Some(o) => Phase::Created(o),
                    None if created_before(name) => Phase::Lost,
                    None => Phase::Waiting,
                }
            };
            (name.as_str(), phase)
        })
        .collect();

    let desired_stop = task.desired_status == DesiredStatus::Stopped;
    let mut restarting: BTreeSet<&str> = if record.stop.is_none() && !desired_stop && input.listed {
        phases
            .iter()
            .filter_map(|(name, phase)| match (phase, definition_of(name)) {
                (Phase::Exited(o), Some(d)) if should_restart(d, o, now) => Some(*name),
                _ => None,
            })
            .collect()
    } else {
        BTreeSet::new()
    };

    // Dependencies of containers that have not started yet.
    let mut never_met: Option<String> = None;
    let mut startable: Vec<&str> = Vec::new();
    for definition in &definitions {
        let name = definition.name();
        if !matches!(phases.get(name), Some(Phase::Created(_) | Phase::Waiting)) {
            continue;
        }
        let mut ready = true;
        for (dependency, condition) in start_dependencies(definition) {
            let state = match phases.get(dependency.as_str()) {
                Some(phase) => dependency_state(condition, definition_of(&dependency), *phase, now),
                None => Dependency::Never("the task has no such container".to_owned()),
            };
            match state {
                Dependency::Met => {}
                Dependency::Waiting(deadline) => {
                    ready = false;
                    if let Some(deadline) = deadline {
                        plan.wake(deadline);
                    }
                }
                Dependency::Never(why) => {
                    ready = false;
                    never_met.get_or_insert_with(|| {
                        format!(
                            "DependencyNeverMet: container {name} depends on {dependency} reaching {}, but {why}",
                            condition_name(condition)
                        )
                    });
                }
            }
        }
        if ready && matches!(phases.get(name), Some(Phase::Created(_))) {
            startable.push(name);
        }
    }

    // Why the task stops, if it does; the first cause sticks.
    if record.stop.is_none() {
        let essential_gone = definitions.iter().any(|d| {
            d.is_essential()
                && !restarting.contains(d.name())
                && match phases.get(d.name()) {
                    Some(Phase::Exited(_) | Phase::Lost) => true,
                    Some(Phase::Failed(_)) => record.started_at.is_some(),
                    _ => false,
                }
        });
        let failure = definitions.iter().find_map(|d| match phases.get(d.name()) {
            Some(Phase::Failed(f)) if record.started_at.is_none() => Some(f.reason()),
            _ => None,
        });
        let cause = if !input.listed {
            Some(StopCause::default())
        } else if desired_stop {
            Some(StopCause {
                code: task.stop_code,
                reason: task.stopped_reason.clone(),
            })
        } else if input.definition.is_none() {
            Some(StopCause::new(
                TaskStopCode::TaskFailedToStart,
                format!(
                    "TaskDefinitionUnavailable: the agent did not receive {}",
                    task.task_definition_arn
                ),
            ))
        } else if let Some(message) = &record.volume_failure {
            Some(StopCause::new(
                TaskStopCode::TaskFailedToStart,
                format!("ResourceInitializationError: {message}"),
            ))
        } else if let Some(message) = &record.network_failure {
            Some(StopCause::new(
                TaskStopCode::TaskFailedToStart,
                format!(
                    "ResourceInitializationError: failed to set up the task's network: {message}"
                ),
            ))
        } else if let Some(reason) = failure {
            Some(StopCause::new(TaskStopCode::TaskFailedToStart, reason))
        } else if essential_gone {
            Some(StopCause::new(
                TaskStopCode::EssentialContainerExited,
                REASON_ESSENTIAL_EXITED,
            ))
        } else if let Some(reason) = never_met {
            Some(StopCause::new(TaskStopCode::TaskFailedToStart, reason))
        } else if task.last_status >= TaskStatus::Stopping {
            // The agent restarted while the task was stopping: finish the job.
            Some(StopCause {
                code: task.stop_code,
                reason: task.stopped_reason.clone(),
            })
        } else {
            None
        };
        if let Some(cause) = cause {
            record.stop = Some(cause);
            record.stopping_at = Some(now);
        }
    }
    if record.stop.is_some() {
        restarting.clear();
    }

    let any_running = phases.values().any(|p| matches!(p, Phase::Running(_)));
    let stopping = record.stop.is_some();
    if stopping {
        if any_running {
            // Reverse dependency order: stop a container once nothing running depends on it.
            let depends_on = |dependent: &ContainerDefinition, target: &str| {
                start_dependencies(dependent)
                    .iter()
                    .any(|(d, _)| d == target)
                    || create_dependencies(dependent).iter().any(|d| d == target)
            };
            let running: Vec<&str> = phases
                .iter()
                .filter(|(_, p)| matches!(p, Phase::Running(_)))
                .map(|(n, _)| *n)
                .collect();
            let mut to_stop: Vec<&str> = running
                .iter()
                .copied()
                .filter(|target| {
                    !running
                        .iter()
                        .any(|other| definition_of(other).is_some_and(|d| depends_on(d, target)))
                })
                .collect();
            if to_stop.is_empty() {
                to_stop = running; // a dependency cycle: stop everything at once
            }
            for name in names.iter().filter(|n| to_stop.contains(&n.as_str())) {
                let observed = input.observed.get(name);
                let timeout = if task.stop_code == Some(TaskStopCode::SpotInterruption) {
                    // Fargate Spot: the two-minute warning before SIGKILL.
                    SPOT_INTERRUPTION_WARNING
                } else {
                    stop_timeout(
                        definition_of(name),
                        observed,
                        input.settings.stop_timeout_default,
                    )
                };
                plan.actions.push(Action::Stop {
                    container: name.clone(),
                    timeout,
                });
            }
        } else {
            let finished = input.observed.values().filter_map(|o| o.finished_at).max();
            let stopped_at = *record.stopped_at.get_or_insert(
                finished
                    .unwrap_or(now)
                    .max(record.stopping_at.unwrap_or(now))
                    .min(now),
            );
            let reported_stopped = record.reported_status() == Some(TaskStatus::Stopped);
            if awsvpc && !record.network_removed && (reported_stopped || !input.listed) {
                // The interface goes when the task stops; stopped containers stay for logs.
                plan.actions.push(Action::TearDownNetwork);
            }
            if reported_stopped || !input.listed {
                // The retention keeps containers for their logs; with none left, finish now.
                let deadline = stopped_at.plus_millis(input.settings.retention.as_millis() as i64);
                if now < deadline && !input.observed.is_empty() {
                    plan.wake(deadline);
                } else if !input.observed.is_empty() {
                    plan.actions
                        .extend(input.observed.keys().map(|name| Action::Remove {
                            container: name.clone(),
                        }));
                } else if !record.volumes_removed {
                    plan.actions.push(Action::RemoveVolumes);
                } else {
                    plan.done = true;
                }
            }
        }
    } else {
        let waiting: Vec<&ContainerDefinition> = definitions
            .iter()
            .copied()
            .filter(|d| matches!(phases.get(d.name()), Some(Phase::Waiting)))
            .collect();
        let pulls: Vec<Action> = waiting
            .iter()
            .filter(|d| !record.images_ready.contains(d.name()))
            .map(|d| Action::Pull {
                container: d.name().to_owned(),
                image: d.image.clone().unwrap_or_default(),
            })
            .collect();
        if !pulls.is_empty() {
            record.pull_started_at.get_or_insert(now);
            plan.actions.extend(pulls);
        } else {
            if record.pull_started_at.is_some() && record.pull_stopped_at.is_none() {
                record.pull_stopped_at = Some(now);
            }
            let needs_volumes = input.definition.is_some_and(|d| {
                task_volumes(task, d, "")
                    .values()
                    .any(|v| !matches!(v, VolumeSource::Host { .. }))
            });
            if !waiting.is_empty() && needs_volumes && !record.volumes_ready {
                plan.actions.push(Action::CreateVolumes);
            } else if !waiting.is_empty() && awsvpc && record.network.is_none() {
                plan.actions.push(Action::SetUpNetwork);
            } else {
                for definition in &waiting {
                    let ready = create_dependencies(definition).iter().all(|d| {
                        phases
                            .get(d.as_str())
                            .is_some_and(|p| p.observed().is_some())
                    });
                    if ready {
                        plan.actions.push(Action::Create {
                            container: definition.name().to_owned(),
                        });
                    }
                }
            }
        }
        plan.actions
            .extend(startable.iter().map(|name| Action::Start {
                container: (*name).to_owned(),
            }));
        plan.actions
            .extend(restarting.iter().map(|name| Action::Restart {
                container: (*name).to_owned(),
            }));
    }

    // The state to report.
    let all_started = definitions.iter().all(|d| {
        phases.get(d.name()).is_some_and(|p| {
            p.has_started() || matches!(p, Phase::Failed(_)) && record.started_at.is_some()
        })
    });
    let mut status = if stopping {
        if any_running {
            TaskStatus::Stopping
        } else {
            TaskStatus::Stopped
        }
    } else if all_started {
        TaskStatus::Running
    } else {
        TaskStatus::Pending
    };
    if let Some(reported) = record.reported_status() {
        status = status.max(reported);
    }
    if all_started && status >= TaskStatus::Running && record.started_at.is_none() {
        let last_start = definitions
            .iter()
            .filter_map(|d| {
                phases
                    .get(d.name())
                    .and_then(|p| p.observed())
                    .and_then(|o| o.started_at)
            })
            .max();
        record.started_at = Some(last_start.unwrap_or(now).min(now));
    }
    if input.listed && record.reported_status() != Some(TaskStatus::Stopped) {
        let change = state_change(input, record, &phases, &restarting, status, now);
        let unchanged = record.reported.as_ref().is_some_and(|r| {
            TaskStateChange {
                at: now,
                ..r.clone()
            } == change
        });
        if !unchanged {
            plan.report = Some(change);
        }
    }
    plan
}

fn state_change(
    input: &TaskInput<'_>,
    record: &TaskRecord,
    phases: &BTreeMap<&str, Phase<'_>>,
    restarting: &BTreeSet<&str>,
    status: TaskStatus,
    now: Timestamp,
) -> TaskStateChange {
    let definitions: Vec<&ContainerDefinition> = input
        .definition
        .map(|d| d.spec.container_definitions.iter().collect())
        .unwrap_or_default();
    let host_mode = input
        .definition
        .is_some_and(|d| d.spec.network_mode == NetworkMode::Host);
    let mut containers = Vec::new();
    let mut essential_health = Vec::new();
    for definition in &definitions {
        let name = definition.name();
        let phase = phases.get(name).copied().unwrap_or(Phase::Waiting);
        let observed = phase.observed();
        let container_status = match phase {
            _ if status == TaskStatus::Stopped => TaskStatus::Stopped,
            Phase::Waiting | Phase::Created(_) => TaskStatus::Pending,
            Phase::Running(_) => TaskStatus::Running,
            Phase::Exited(_) if restarting.contains(name) => TaskStatus::Running,
            Phase::Exited(_) | Phase::Failed(_) | Phase::Lost => TaskStatus::Stopped,
        };
        let reason = match phase {
            Phase::Failed(failure) => Some(failure.reason()),
            Phase::Lost => Some(REASON_CONTAINER_LOST.to_owned()),
            _ if observed.is_some_and(|o| o.oom_killed) => Some(REASON_OUT_OF_MEMORY.to_owned()),
            _ => None,
        };
        let health = definition.health_check.as_ref().map(|_| match phase {
            Phase::Running(o) => o.health.unwrap_or(HealthStatus::Unknown),
            _ => HealthStatus::Unknown,
        });
        if definition.is_essential()
            && let Some(health) = health
        {
            essential_health.push(health);
        }
        let network_bindings = if host_mode {
            if phase.has_started() {
                host_mode_bindings(definition)
            } else {
                Vec::new()
            }
        } else {
            record.bindings.get(name).cloned().unwrap_or_default()
        };
        containers.push(ContainerStateChange {
            name: name.to_owned(),
            status: container_status,
            runtime_id: observed.map(|o| o.id.clone()),
            image_digest: record
                .image_digests
                .get(name)
                .cloned()
                .or_else(|| observed.and_then(|o| o.image_digest.clone())),
            exit_code: match phase {
                Phase::Exited(o) if container_status == TaskStatus::Stopped => o.exit_code,
                _ => None,
            },
            reason,
            network_bindings,
            health_status: health,
        });
    }
    let health_status = if essential_health.is_empty() {
        HealthStatus::Unknown
    } else if essential_health.contains(&HealthStatus::Unhealthy) {
        HealthStatus::Unhealthy
    } else if essential_health.iter().all(|h| *h == HealthStatus::Healthy) {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unknown
    };
    let cause = record
        .stop
        .clone()
        .filter(|_| status >= TaskStatus::Stopping)
        .unwrap_or_default();
    TaskStateChange {
        task_arn: input.task.task_arn.clone(),
        status,
        reason: cause.reason,
        stop_code: cause.code,
        health_status: Some(health_status),
        containers,
        pull_started_at: record.pull_started_at,
        pull_stopped_at: record.pull_stopped_at,
        started_at: record.started_at.filter(|_| status >= TaskStatus::Running),
        execution_stopped_at: record.stopped_at.filter(|_| status == TaskStatus::Stopped),
        network: record.network.clone(),
        at: now,
    }
}

#[cfg(test)]
#[path = "task_engine_tests.rs"]
mod tests;
