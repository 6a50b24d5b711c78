//! Builders and a tiny simulator for the reconciler's tests: a service, hosts, tasks, and a
//! loop that applies each plan the way the server shell would, then lets fake agents move
//! tasks along (PENDING -> RUNNING, or to STOPPED when told or when the task definition is
//! set to fail).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use flotilla_model::resources::{Demand, Reservation, Resources};
use flotilla_model::{
    Container, ContainerInstanceStatus, DesiredStatus, HealthStatus, LaunchType, Task,
    TaskOverride, TaskStatus, TaskStopCode, Timestamp,
};
use flotilla_reconcile::{
    Change, Observed, ObservedHost, Plan, SchedulingStrategy, Service, placement_failure_event,
    reconcile, started_tasks_event,
};
use flotilla_scheduler::{Host, PlacementRequest};

pub const NAME: &str = "web";
pub const REV1: &str = "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1";
pub const REV2: &str = "arn:aws:ecs:us-east-1:000000000000:task-definition/web:2";
pub const REV3: &str = "arn:aws:ecs:us-east-1:000000000000:task-definition/web:3";
pub const ZONE: &str = "ecs.availability-zone";
pub const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);
pub const TASK_CPU: i64 = 256;
pub const TASK_MEMORY_MIB: i64 = 512;

pub fn deployment_id(n: u64) -> String {
    format!("ecs-svc/{:019}", 1_000_000_000_000_000_000 + n)
}

/// A REPLICA service of REV1 with its first deployment (`deployment_id(1)`).
pub fn service(desired: u32) -> Service {
    let mut service = Service::new(
        NAME,
        "arn:aws:ecs:us-east-1:000000000000:service/test/web",
        "arn:aws:ecs:us-east-1:000000000000:cluster/test",
        SchedulingStrategy::Replica,
        REV1,
        desired,
        T0,
    );
    service.start_deployment(deployment_id(1), T0);
    service
}

pub fn daemon_service() -> Service {
    let mut service = Service::new(
        NAME,
        "arn:aws:ecs:us-east-1:000000000000:service/test/web",
        "arn:aws:ecs:us-east-1:000000000000:cluster/test",
        SchedulingStrategy::Daemon,
        REV1,
        0,
        T0,
    );
    service.start_deployment(deployment_id(1), T0);
    service
}

/// An ACTIVE, connected host in zone `a` or `b` (alternating) with room for 16 tasks.
pub fn host(index: usize) -> ObservedHost {
    let resources = Resources {
        cpu: 16 * TASK_CPU,
        memory_mib: 16 * TASK_MEMORY_MIB,
        ..Default::default()
    };
    let zone = if index.is_multiple_of(2) { "a" } else { "b" };
    ObservedHost::new(
        Host {
            id: format!("host-{index}"),
            arn: format!("arn:aws:ecs:us-east-1:000000000000:container-instance/test/host-{index}"),
            ec2_instance_id: format!("i-{index:08x}"),
            active: true,
            agent_connected: true,
            remaining: resources.clone(),
            registered: resources,
            attributes: BTreeMap::from([(ZONE.to_owned(), Some(zone.to_owned()))]),
            agent_version: Some("1.0.0".to_owned()),
            registered_at: T0,
            running_tasks_count: 0,
            task_groups: BTreeMap::new(),
        },
        ContainerInstanceStatus::Active,
    )
}

pub fn hosts(count: usize) -> Vec<ObservedHost> {
    (0..count).map(host).collect()
}

pub fn set_status(host: &mut ObservedHost, status: ContainerInstanceStatus) {
    host.status = status;
    host.host.active = status == ContainerInstanceStatus::Active;
}

/// A task of `deployment` on `host`, in `status` (RUNNING ones started at `T0`).
pub fn task(id: &str, deployment: &str, definition: &str, host: &str, status: TaskStatus) -> Task {
    Task {
        id: id.to_owned(),
        arn: format!("arn:aws:ecs:us-east-1:000000000000:task/test/{id}"),
        cluster_name: "test".to_owned(),
        cluster_arn: "arn:aws:ecs:us-east-1:000000000000:cluster/test".to_owned(),
        task_definition_arn: definition.to_owned(),
        family: "web".to_owned(),
        revision: 1,
        container_instance_id: Some(host.to_owned()),
        container_instance_arn: None,
        launch_type: LaunchType::Ec2,
        capacity_provider_name: None,
        availability_zone: None,
        last_status: status,
        desired_status: if status == TaskStatus::Stopped {
            DesiredStatus::Stopped
        } else {
            DesiredStatus::Running
        },
        containers: vec![Container {
            id: format!("{id}-app"),
            arn: format!("arn:aws:ecs:us-east-1:000000000000:container/test/{id}/app"),
            name: "app".to_owned(),
            image: "busybox".to_owned(),
            image_digest: None,
            runtime_id: None,
            last_status: status,
            exit_code: None,
            reason: None,
            network_bindings: Vec::new(),
            health_status: None,
            cpu: 0,
            memory: None,
            memory_reservation: None,
            gpu_ids: Vec::new(),
            essential: true,
        }],
        cpu: Some(TASK_CPU.to_string()),
        memory: Some(TASK_MEMORY_MIB.to_string()),
        overrides: TaskOverride::default(),
        group: Some(format!("service:{NAME}")),
        started_by: Some(deployment.to_owned()),
        tags: Vec::new(),
        attributes: Vec::new(),
        enable_execute_command: false,
        health_status: HealthStatus::Unknown,
        connectivity: None,
        connectivity_at: None,
        created_at: T0,
        pull_started_at: None,
        pull_stopped_at: None,
        started_at: (status >= TaskStatus::Running).then_some(T0),
        stopping_at: None,
        execution_stopped_at: None,
        stopped_at: None,
        stop_code: None,
        stopped_reason: None,
        version: 1,
        reservation: Reservation {
            cpu: TASK_CPU,
            memory_mib: TASK_MEMORY_MIB,
            ..Default::default()
        },
        released: false,
        extra: BTreeMap::new(),
        attachments: Vec::new(),
    }
}

/// Gives the task an essential container with a health check, in `health`.
pub fn with_health(mut task: Task, health: HealthStatus) -> Task {
    task.containers[0].health_status = Some(health);
    task.health_status = health;
    task
}

pub fn stopped(mut task: Task, code: TaskStopCode, at: Timestamp) -> Task {
    task.last_status = TaskStatus::Stopped;
    task.desired_status = DesiredStatus::Stopped;
    task.stop_code = Some(code);
    task.stopped_at = Some(at);
    task.execution_stopped_at = Some(at);
    task
}

/// Writes `deployment_id(n)` as `Dn`, so table rows stay readable.
pub fn short(text: &str) -> String {
    let mut text = text.to_owned();
    for n in (1..100).rev() {
        text = text.replace(&deployment_id(n), &format!("D{n}"));
    }
    text
}

/// A plan in short words, for table rows: `update`, `start 3 D1`, `start-on host-1`,
/// `stop t1: <reason>`.
pub fn describe(plan: &Plan) -> Vec<String> {
    plan.changes
        .iter()
        .map(|change| match change {
            Change::UpdateService(_) => "update".to_owned(),
            Change::StartTasks {
                deployment_id,
                count,
                ..
            } => format!("start {count} {deployment_id}"),
            Change::StartTaskOn { host_id, .. } => format!("start-on {host_id}"),
            Change::StopTask { task_arn, reason } => {
                let id = task_arn.rsplit('/').next().unwrap_or_default();
                format!("stop {id}: {reason}")
            }
        })
        .map(|line| short(&line))
        .collect()
}

/// Like [`describe`] without the service update: only what happens to tasks.
pub fn task_changes(plan: &Plan) -> Vec<String> {
    describe(plan)
        .into_iter()
        .filter(|line| line != "update")
        .collect()
}

pub fn updated(plan: &Plan) -> Option<&Service> {
    plan.changes.iter().find_map(|change| match change {
        Change::UpdateService(service) => Some(&**service),
        _ => None,
    })
}

/// What happens to a started task in the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// RUNNING on the next tick (HEALTHY too, when health checks are on).
    Runs,
    /// STOPPED with TaskFailedToStart on the next tick.
    FailsToStart,
    /// RUNNING, then UNHEALTHY by its health check.
    TurnsUnhealthy,
    /// RUNNING on the next tick, then its essential container exits on the one after (a
    /// command that fails at once: the agent may report RUNNING before it sees the exit).
    ExitsAfterRunning,
}

/// The service, its tasks and hosts, applying plans as the server shell would.
pub struct Sim {
    pub service: Service,
    pub tasks: Vec<Task>,
    pub hosts: Vec<ObservedHost>,
    pub now: Timestamp,
    pub seed: u64,
    /// How tasks of each task definition behave; `Runs` when not listed.
    pub outcomes: BTreeMap<String, Outcome>,
    /// Started tasks get an essential container with a health check.
    pub health_checks: bool,
    /// Task groups of other services on each host (by host id), to test daemon draining.
    pub other_groups: BTreeMap<String, BTreeMap<String, u32>>,
    /// Every plan applied, in order.
    pub plans: Vec<Plan>,
    next_task: u64,
}

impl Sim {
    pub fn new(service: Service, hosts: Vec<ObservedHost>) -> Self {
        Self {
            service,
            tasks: Vec::new(),
            hosts,
            now: T0,
            seed: 1,
            outcomes: BTreeMap::new(),
            health_checks: false,
            other_groups: BTreeMap::new(),
            plans: Vec::new(),
            next_task: 0,
        }
    }

    /// Brings the hosts' remaining resources and task groups up to date with the tasks.
    pub fn refresh_hosts(&mut self) {
        for observed in &mut self.hosts {
            let host = &mut observed.host;
            host.remaining = host.registered.clone();
            host.task_groups = self.other_groups.get(&host.id).cloned().unwrap_or_default();
            host.running_tasks_count = 0;
            for task in &self.tasks {
                if task.last_status == TaskStatus::Stopped
                    || task.container_instance_id.as_deref() != Some(host.id.as_str())
                {
                    continue;
                }
                host.remaining.apply(&task.reservation);
                *host
                    .task_groups
                    .entry(task.group.clone().unwrap_or_default())
                    .or_default() += 1;
                if task.last_status == TaskStatus::Running {
                    host.running_tasks_count += 1;
                }
            }
        }
    }

    pub fn reconcile(&mut self) -> Plan {
        self.refresh_hosts();
        self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        reconcile(
            &Observed {
                service: &self.service,
                tasks: &self.tasks,
                hosts: &self.hosts,
                now: self.now,
                restart_delay_base_ms: flotilla_reconcile::THROTTLE_DELAY_BASE_MS,
                healthy_after_running_ms: flotilla_reconcile::HEALTHY_AFTER_RUNNING_MS,
            },
            self.seed,
        )
    }

    /// Applies a plan as the server shell would.
    pub fn apply(&mut self, plan: &Plan) {
        for change in &plan.changes {
            match change {
                Change::UpdateService(service) => self.service = (**service).clone(),
                Change::StopTask { task_arn, reason } => {
                    let now = self.now;
                    let task = self
                        .tasks
                        .iter_mut()
                        .find(|t| &t.arn == task_arn)
                        .expect("the plan stops a known task");
                    assert_ne!(task.desired_status, DesiredStatus::Stopped, "stopped twice");
                    task.desired_status = DesiredStatus::Stopped;
                    task.stop_code = Some(TaskStopCode::ServiceSchedulerInitiated);
                    task.stopped_reason = Some(reason.clone());
                    task.stopping_at = Some(now);
                }
                Change::StartTasks {
                    deployment_id,
                    task_definition_arn,
                    count,
                } => {
                    self.refresh_hosts();
                    let hosts: Vec<Host> = self.hosts.iter().map(|h| h.host.clone()).collect();
                    let request = PlacementRequest {
                        demand: Demand {
                            cpu: TASK_CPU,
                            memory_mib: TASK_MEMORY_MIB,
                            ..Default::default()
                        },
                        count: *count as usize,
                        group: self.service.group(),
                        constraints: self.service.constraints(),
                        strategies: self.service.strategies(),
                    };
                    let result = flotilla_scheduler::place(&hosts, &request, self.seed);
                    let mut started = Vec::new();
                    for placement in &result.placements {
                        let host_id = hosts[placement.host_index].id.clone();
                        started.push(self.create(deployment_id, task_definition_arn, &host_id));
                    }
                    self.record_started(&started);
                    if result.unplaced > 0 {
                        let message =
                            placement_failure_event(&self.service.name, &hosts, &result.rejections);
                        let event_id = format!("placement-{}", self.next_task);
                        self.service.record_placement_failure(
                            deployment_id,
                            message,
                            event_id,
                            self.now,
                            flotilla_reconcile::THROTTLE_DELAY_BASE_MS,
                        );
                    }
                }
                Change::StartTaskOn {
                    deployment_id,
                    task_definition_arn,
                    host_id,
                } => {
                    let id = self.create(deployment_id, task_definition_arn, host_id);
                    self.record_started(&[id]);
                }
            }
        }
    }

    fn record_started(&mut self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let message = started_tasks_event(&self.service.name, &ids);
        self.service.record_event(flotilla_reconcile::ServiceEvent {
            id: format!("started-{}", self.next_task),
            created_at: self.now,
            message,
        });
    }

    fn create(&mut self, deployment: &str, definition: &str, host: &str) -> String {
        self.next_task += 1;
        let id = format!("t{:03}", self.next_task);
        let mut task = task(&id, deployment, definition, host, TaskStatus::Pending);
        task.created_at = self.now;
        if self.health_checks {
            task = with_health(task, HealthStatus::Unknown);
        }
        self.tasks.push(task);
        id
    }

    /// Moves time on by `millis` and lets the agents act: told-to-stop tasks reach STOPPED,
    /// PENDING ones start (or fail, as their task definition's outcome says), health checks
    /// report. Tasks on hosts without a connected agent do not move; tasks on deregistered
    /// hosts that were told to stop are closed by the "control plane".
    pub fn tick(&mut self, millis: i64) {
        self.now = self.now.plus_millis(millis);
        let now = self.now;
        let connected: BTreeSet<String> = self
            .hosts
            .iter()
            .filter(|h| h.host.agent_connected)
            .map(|h| h.host.id.clone())
            .collect();
        let registered: BTreeSet<String> = self
            .hosts
            .iter()
            .filter(|h| {
                !matches!(
                    h.status,
                    ContainerInstanceStatus::Inactive | ContainerInstanceStatus::Deregistering
                )
            })
            .map(|h| h.host.id.clone())
            .collect();
        for task in &mut self.tasks {
            if task.last_status == TaskStatus::Stopped {
                continue;
            }
            let host = task.container_instance_id.clone().unwrap_or_default();
            if !registered.contains(&host) && task.desired_status == DesiredStatus::Stopped {
                stop_now(task, now);
                continue;
            }
            if !connected.contains(&host) {
                continue;
            }
            if task.desired_status == DesiredStatus::Stopped {
                stop_now(task, now);
                continue;
            }
            let outcome = self
                .outcomes
                .get(&task.task_definition_arn)
                .copied()
                .unwrap_or(Outcome::Runs);
            match (task.last_status, outcome) {
                (TaskStatus::Running, Outcome::TurnsUnhealthy) if self.health_checks => {
                    task.health_status = HealthStatus::Unhealthy;
                    task.containers[0].health_status = Some(HealthStatus::Unhealthy);
                }
                (TaskStatus::Running, Outcome::ExitsAfterRunning) => {
                    stop_now(task, now);
                    task.stop_code = Some(TaskStopCode::EssentialContainerExited);
                    task.stopped_reason = Some("Essential container in task exited".to_owned());
                }
                (TaskStatus::Running, _) => {}
                (_, Outcome::FailsToStart) => {
                    stop_now(task, now);
                    task.stop_code = Some(TaskStopCode::TaskFailedToStart);
                    task.stopped_reason = Some("CannotPullContainerError".to_owned());
                }
                (_, _) => {
                    task.last_status = TaskStatus::Running;
                    task.containers[0].last_status = TaskStatus::Running;
                    task.started_at = Some(now);
                    if self.health_checks && outcome == Outcome::Runs {
                        task.health_status = HealthStatus::Healthy;
                        task.containers[0].health_status = Some(HealthStatus::Healthy);
                    }
                }
            }
        }
    }

    /// Reconcile, apply, tick: one round. Returns the plan.
    pub fn step(&mut self, tick_ms: i64) -> Plan {
        let plan = self.reconcile();
        self.apply(&plan);
        self.plans.push(plan.clone());
        self.tick(tick_ms);
        plan
    }

    /// Whether the ServicesStable waiter would pass: one deployment, running = desired.
    pub fn stable(&self) -> bool {
        self.service.deployments.len() == 1
            && self.service.running_count == self.service.desired_count
    }

    /// Steps until a reconcile returns an empty plan for a stable service that is not
    /// waiting for anything but the six-hourly steady-state event (a throttled service
    /// returns empty plans too), at most `steps_max` times; returns the steps taken. An
    /// empty plan that asks to be looked at again moves time on to then.
    pub fn run_until_quiet(&mut self, tick_ms: i64, steps_max: usize) -> usize {
        for step in 0..steps_max {
            let plan = self.step(tick_ms);
            let waiting = plan.requeue_after_ms.is_some_and(|ms| ms < 3_600_000);
            if plan.changes.is_empty() && self.stable() && !waiting {
                return step;
            }
            if plan.changes.is_empty()
                && let Some(wait) = plan.requeue_after_ms.filter(|_| waiting)
            {
                // Nothing to do until then (a task turning healthy, a throttle gap).
                self.tick(i64::try_from(wait).unwrap_or(i64::MAX));
            }
        }
        panic!(
            "no steady state after {steps_max} steps: {:#?}\n{:?}",
            self.service.deployments,
            self.plans.last().map(describe)
        );
    }

    pub fn live(&self) -> impl Iterator<Item = &Task> {
        self.tasks
            .iter()
            .filter(|t| t.last_status != TaskStatus::Stopped)
    }

    /// Tasks RUNNING, desired RUNNING, and healthy: by their checks, or without checks
    /// RUNNING for the healthy-after window.
    pub fn healthy(&self) -> usize {
        self.live()
            .filter(|t| t.desired_status == DesiredStatus::Running)
            .filter(|t| self.is_healthy(t))
            .count()
    }

    /// RUNNING and healthy by its checks, or without checks for the healthy-after window.
    pub fn is_healthy(&self, task: &Task) -> bool {
        task.last_status == TaskStatus::Running
            && if self.health_checks {
                task.health_status == HealthStatus::Healthy
            } else {
                task.started_at.is_some_and(|at| {
                    self.now.millis_since(at) >= flotilla_reconcile::HEALTHY_AFTER_RUNNING_MS
                })
            }
    }

    pub fn messages(&self) -> Vec<&str> {
        self.service
            .events
            .iter()
            .map(|e| e.message.as_str())
            .collect()
    }
}

fn stop_now(task: &mut Task, now: Timestamp) {
    task.last_status = TaskStatus::Stopped;
    task.desired_status = DesiredStatus::Stopped;
    task.containers[0].last_status = TaskStatus::Stopped;
    task.stopped_at = Some(now);
    task.execution_stopped_at = Some(now);
}
