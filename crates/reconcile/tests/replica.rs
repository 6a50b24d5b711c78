//! REPLICA services: keeping the desired count, replacing what stops or fails its health
//! checks or sits on a draining or vanished host, scaling in by the strategies, deleting.

mod common;

use common::*;
use flotilla_model::{ContainerInstanceStatus, HealthStatus, Task, TaskStatus, TaskStopCode};
use flotilla_reconcile::{
    Observed, ObservedHost, PlacementStrategy, Service, ServiceStatus, reconcile,
};

struct Row {
    name: &'static str,
    service: Service,
    tasks: Vec<Task>,
    hosts: Vec<ObservedHost>,
    /// Seconds after `T0`.
    at_seconds: i64,
    expect: &'static [&'static str],
    requeue_after_ms: Option<u64>,
}

fn row(name: &'static str, service: Service, tasks: Vec<Task>) -> Row {
    Row {
        name,
        service,
        tasks,
        hosts: hosts(2),
        at_seconds: 60,
        expect: &[],
        requeue_after_ms: None,
    }
}

impl Row {
    fn hosts(mut self, hosts: Vec<ObservedHost>) -> Self {
        self.hosts = hosts;
        self
    }
    fn at(mut self, seconds: i64) -> Self {
        self.at_seconds = seconds;
        self
    }
    fn expect(mut self, expect: &'static [&'static str]) -> Self {
        self.expect = expect;
        self
    }
    fn requeue(mut self, millis: u64) -> Self {
        self.requeue_after_ms = Some(millis);
        self
    }
}

/// Runs each row's reconcile and compares what happens to tasks; then applies the plan and
/// reconciles again, which must start and stop nothing more (idempotence).
fn check(rows: Vec<Row>) {
    for row in rows {
        let mut sim = Sim::new(row.service, row.hosts);
        sim.tasks = row.tasks;
        sim.now = T0.plus_seconds(row.at_seconds);
        let plan = sim.reconcile();
        assert_eq!(task_changes(&plan), row.expect, "{}", row.name);
        assert_eq!(
            plan.requeue_after_ms, row.requeue_after_ms,
            "{}: requeue",
            row.name
        );
        sim.apply(&plan);
        let again = sim.reconcile();
        assert_eq!(
            task_changes(&again),
            Vec::<String>::new(),
            "{}: again",
            row.name
        );
    }
}

fn d1() -> String {
    deployment_id(1)
}

fn running(id: &str, host: &str) -> Task {
    task(id, &d1(), REV1, host, TaskStatus::Running)
}

fn pending(id: &str, host: &str) -> Task {
    task(id, &d1(), REV1, host, TaskStatus::Pending)
}

fn with_status(
    mut hosts: Vec<ObservedHost>,
    index: usize,
    status: ContainerInstanceStatus,
) -> Vec<ObservedHost> {
    set_status(&mut hosts[index], status);
    hosts
}

fn disconnected(mut hosts: Vec<ObservedHost>, index: usize) -> Vec<ObservedHost> {
    hosts[index].host.agent_connected = false;
    hosts
}

fn strategy(kind: &str, field: &str) -> Service {
    let mut service = service(3);
    service.placement_strategy = vec![PlacementStrategy {
        kind: kind.to_owned(),
        field: Some(field.to_owned()),
    }];
    service
}

fn grace(seconds: u32) -> Service {
    let mut service = service(2);
    service.health_check_grace_period_seconds = seconds;
    service
}

#[test]
fn keeps_the_desired_count() {
    check(vec![
        row("a fresh service starts its tasks", service(3), vec![]).expect(&["start 3 D1"]),
        row(
            "pending tasks count",
            service(3),
            vec![running("t1", "host-0"), pending("t2", "host-1")],
        )
        .expect(&["start 1 D1"]),
        row(
            "a stopped task is replaced",
            service(2),
            vec![
                running("t1", "host-0"),
                stopped(
                    running("t2", "host-1"),
                    TaskStopCode::EssentialContainerExited,
                    T0,
                ),
            ],
        )
        .expect(&["start 1 D1"]),
        row(
            "a task that failed a moment ago waits for the restart throttle",
            service(2),
            vec![running("t1", "host-0"), {
                // Up for 4 s only: a failed start, not a proven task.
                let mut t = stopped(
                    running("t2", "host-1"),
                    TaskStopCode::EssentialContainerExited,
                    T0.plus_seconds(59),
                );
                t.started_at = Some(T0.plus_seconds(55));
                t
            }],
        )
        .requeue(1_000),
        row(
            "a task that died after proving itself is replaced at once, without the throttle",
            service(2),
            vec![running("t1", "host-0"), {
                let mut t = stopped(
                    running("t2", "host-1"),
                    TaskStopCode::EssentialContainerExited,
                    T0.plus_seconds(59),
                );
                t.started_at = Some(T0);
                t
            }],
        )
        .at(60)
        .expect(&["start 1 D1"]),
        row(
            "a task stopping on its own is replaced",
            service(2),
            vec![running("t1", "host-0"), {
                let mut t = running("t2", "host-1");
                t.last_status = TaskStatus::Stopping;
                t
            }],
        )
        .expect(&["start 1 D1"]),
        row(
            "a task failing its health checks is stopped and replaced",
            service(2),
            vec![
                with_health(running("t1", "host-0"), HealthStatus::Healthy),
                with_health(running("t2", "host-1"), HealthStatus::Unhealthy),
            ],
        )
        .expect(&["stop t2: Task failed container health checks", "start 1 D1"]),
        row(
            "within the grace period an unhealthy task is left until the period ends",
            grace(100),
            vec![
                with_health(running("t1", "host-0"), HealthStatus::Healthy),
                with_health(running("t2", "host-1"), HealthStatus::Unhealthy),
            ],
        )
        .requeue(40_000),
        row(
            "after the grace period it goes",
            grace(100),
            vec![
                with_health(running("t1", "host-0"), HealthStatus::Healthy),
                with_health(running("t2", "host-1"), HealthStatus::Unhealthy),
            ],
        )
        .at(100)
        .expect(&["stop t2: Task failed container health checks", "start 1 D1"]),
        row(
            "a task on a disconnected host counts as lost and is left alone",
            service(2),
            vec![running("t1", "host-0"), running("t2", "host-1")],
        )
        .hosts(disconnected(hosts(2), 1))
        .expect(&["start 1 D1"]),
        row(
            "a task on a deregistered host is stopped and replaced",
            service(2),
            vec![running("t1", "host-0"), running("t2", "host-1")],
        )
        .hosts(with_status(hosts(2), 1, ContainerInstanceStatus::Inactive))
        .expect(&[
            "stop t2: Task stopped because its container instance was deregistered",
            "start 1 D1",
        ]),
        row(
            "a task on a host nobody knows is treated as deregistered",
            service(1),
            vec![running("t1", "host-9")],
        )
        .expect(&[
            "stop t1: Task stopped because its container instance was deregistered",
            "start 1 D1",
        ]),
        row(
            "a task of a deployment no longer listed is replaced first",
            service(1),
            vec![task("t1", "ecs-svc/5", REV1, "host-0", TaskStatus::Running)],
        )
        .expect(&["start 1 D1"]),
        row(
            "and stopped once the replacement is healthy",
            service(1),
            vec![
                task("t1", "ecs-svc/5", REV1, "host-0", TaskStatus::Running),
                running("t2", "host-1"),
            ],
        )
        .expect(&["stop t1: Scaling activity initiated by (deployment D1)"]),
    ]);
}

#[test]
fn draining_hosts_are_replaced_first_then_stopped() {
    let draining = || with_status(hosts(3), 1, ContainerInstanceStatus::Draining);
    check(vec![
        row(
            "a running task on a draining host is replaced first",
            service(2),
            vec![running("t1", "host-0"), running("t2", "host-1")],
        )
        .hosts(draining())
        .expect(&["start 1 D1"]),
        row(
            "and stopped once its replacement is healthy",
            service(2),
            vec![
                running("t1", "host-0"),
                running("t2", "host-1"),
                running("t3", "host-2"),
            ],
        )
        .hosts(draining())
        .expect(&["stop t2: Task stopped during instance draining"]),
        row(
            "but not while the replacement is pending",
            service(2),
            vec![
                running("t1", "host-0"),
                running("t2", "host-1"),
                pending("t3", "host-2"),
            ],
        )
        .hosts(draining()),
        row(
            "a pending task on a draining host is stopped at once",
            service(2),
            vec![running("t1", "host-0"), pending("t2", "host-1")],
        )
        .hosts(draining())
        .expect(&[
            "stop t2: Task stopped during instance draining",
            "start 1 D1",
        ]),
        row(
            "minimumHealthyPercent 50 lets it go before its replacement",
            {
                let mut service = service(2);
                service.deployment_configuration.minimum_healthy_percent = 50;
                service
            },
            vec![running("t1", "host-0"), running("t2", "host-1")],
        )
        .hosts(draining())
        .expect(&[
            "stop t2: Task stopped during instance draining",
            "start 1 D1",
        ]),
    ]);
}

#[test]
fn scale_in_follows_the_strategies() {
    let crowded = || {
        vec![
            running("t1", "host-0"),
            running("t2", "host-0"),
            running("t3", "host-0"),
            running("t4", "host-1"),
        ]
    };
    check(vec![
        row("pending tasks go before running ones", service(3), {
            let mut tasks = crowded();
            tasks[1] = pending("t2", "host-0");
            tasks
        })
        .expect(&["stop t2: Scaling activity initiated by (deployment D1)"]),
        row(
            "binpack stops on the host that will have the most left",
            strategy("binpack", "memory"),
            crowded(),
        )
        .expect(&["stop t4: Scaling activity initiated by (deployment D1)"]),
        row(
            "spread over instances stops on the fullest host",
            strategy("spread", "instanceId"),
            crowded(),
        )
        .expect(&["stop t1: Scaling activity initiated by (deployment D1)"]),
        row(
            "scaling to zero stops everything, emptying the emptiest host first (binpack)",
            {
                let mut service = strategy("binpack", "cpu");
                service.desired_count = 0;
                service
            },
            crowded(),
        )
        .expect(&[
            "stop t4: Scaling activity initiated by (deployment D1)",
            "stop t1: Scaling activity initiated by (deployment D1)",
            "stop t2: Scaling activity initiated by (deployment D1)",
            "stop t3: Scaling activity initiated by (deployment D1)",
        ]),
    ]);
}

#[test]
fn spread_by_zone_keeps_the_zones_balanced() {
    // Zone a (hosts 0 and 2) runs three tasks, zone b (host 1) one: scaling to 2 takes
    // both stops from zone a, whatever the seed.
    for seed in 0..20 {
        let hosts = hosts(3);
        let tasks = vec![
            running("t1", "host-0"),
            running("t2", "host-1"),
            running("t3", "host-2"),
            running("t4", "host-2"),
        ];
        let service = service(2);
        let plan = reconcile(
            &Observed {
                service: &service,
                tasks: &tasks,
                hosts: &hosts,
                // Long enough after the tasks started for them to count healthy.
                now: T0.plus_seconds(60),
                restart_delay_base_ms: flotilla_reconcile::THROTTLE_DELAY_BASE_MS,
                healthy_after_running_ms: flotilla_reconcile::HEALTHY_AFTER_RUNNING_MS,
            },
            seed,
        );
        let stops = task_changes(&plan);
        assert_eq!(stops.len(), 2, "{stops:?}");
        assert!(stops.iter().all(|s| !s.starts_with("stop t2")), "{stops:?}");
    }
}

#[test]
fn deleting_drains_then_goes_inactive() {
    let mut sim = Sim::new(service(3), hosts(2));
    sim.run_until_quiet(1_000, 20);
    assert_eq!(sim.live().count(), 3);

    sim.service.status = ServiceStatus::Draining;
    let plan = sim.step(1_000);
    let stops = task_changes(&plan);
    assert_eq!(stops.len(), 3, "{stops:?}");
    assert!(
        stops
            .iter()
            .all(|s| s.ends_with(": Service is being deleted"))
    );
    assert_eq!(sim.service.desired_count, 0);
    assert_eq!(
        sim.service.status,
        ServiceStatus::Draining,
        "until the tasks stop"
    );

    sim.step(1_000);
    assert_eq!(sim.service.status, ServiceStatus::Inactive);
    assert_eq!(sim.live().count(), 0);
    assert_eq!(
        sim.reconcile().changes,
        vec![],
        "an INACTIVE service is left alone"
    );
}

#[test]
fn a_steady_service_gets_an_empty_plan() {
    let mut sim = Sim::new(service(3), hosts(2));
    sim.run_until_quiet(1_000, 20);
    let steady: Vec<&str> = sim
        .messages()
        .into_iter()
        .filter(|m| *m == "(service web) has reached a steady state.")
        .collect();
    assert_eq!(steady.len(), 1, "{:?}", sim.messages());
    for _ in 0..5 {
        let plan = sim.step(60_000);
        assert_eq!(plan.changes, vec![]);
    }
    // ECS repeats the steady-state event every six hours.
    sim.tick(6 * 60 * 60 * 1_000);
    let plan = sim.step(1_000);
    assert_eq!(describe(&plan), ["update"]);
    assert_eq!(
        sim.messages()[0],
        "(service web) has reached a steady state."
    );
    assert_eq!(sim.messages().len(), 4, "{:?}", sim.messages());
}
