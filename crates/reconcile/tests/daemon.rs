//! DAEMON services: one task on every ACTIVE, connected, matching host, following hosts as
//! they join, drain, stop matching or go away, and rolling updates host by host.

mod common;

use std::collections::BTreeMap;

use common::*;
use flotilla_model::{ContainerInstanceStatus, TaskStatus, TaskStopCode};
use flotilla_reconcile::{PlacementConstraint, RolloutState};

struct Row {
    name: &'static str,
    change: fn(&mut Sim),
    expect: &'static [&'static str],
    requeue_after_ms: Option<u64>,
    desired: u32,
}

const fn row(name: &'static str, change: fn(&mut Sim), expect: &'static [&'static str]) -> Row {
    Row {
        name,
        change,
        expect,
        requeue_after_ms: None,
        desired: 3,
    }
}

/// Runs a daemon on three hosts (t001..t003 on host-0..host-2) to steady state, makes the
/// row's change, and compares the next plan; applying it and reconciling again must start
/// and stop nothing more.
fn check(rows: &[Row]) {
    for row in rows {
        let mut sim = Sim::new(daemon_service(), hosts(3));
        sim.run_until_quiet(1_000, 20);
        assert_eq!(sim.service.desired_count, 3);
        (row.change)(&mut sim);
        let plan = sim.reconcile();
        assert_eq!(task_changes(&plan), row.expect, "{}", row.name);
        // A steady service asks to be looked at in six hours (the repeated steady-state
        // event); rows only state shorter waits.
        let requeue = plan.requeue_after_ms.filter(|ms| *ms < 3_600_000);
        assert_eq!(requeue, row.requeue_after_ms, "{}", row.name);
        sim.apply(&plan);
        assert_eq!(sim.service.desired_count, row.desired, "{}", row.name);
        let again = sim.reconcile();
        assert_eq!(
            task_changes(&again),
            Vec::<String>::new(),
            "{}: again",
            row.name
        );
    }
}

fn drain_host_1(sim: &mut Sim) {
    set_status(&mut sim.hosts[1], ContainerInstanceStatus::Draining);
}

fn busy_host_1(sim: &mut Sim) {
    drain_host_1(sim);
    sim.other_groups.insert(
        "host-1".to_owned(),
        BTreeMap::from([("service:api".to_owned(), 2)]),
    );
}

#[test]
fn one_task_on_every_matching_host() {
    check(&[
        Row {
            desired: 4,
            ..row(
                "a host joins",
                |sim| sim.hosts.push(host(3)),
                &["start-on host-3"],
            )
        },
        Row {
            desired: 2,
            ..row(
                "a draining host with nothing else on it loses its daemon",
                drain_host_1,
                &["stop t002: Task stopped during instance draining"],
            )
        },
        Row {
            desired: 2,
            requeue_after_ms: Some(10_000),
            ..row(
                "the daemon is the last to stop on a draining host",
                busy_host_1,
                &[],
            )
        },
        Row {
            desired: 2,
            ..row(
                "tasks of other daemons do not hold it",
                |sim| {
                    busy_host_1(sim);
                    sim.hosts[1].other_daemon_tasks = 2;
                },
                &["stop t002: Task stopped during instance draining"],
            )
        },
        Row {
            desired: 2,
            ..row(
                "a host that stops matching the constraints loses its daemon",
                |sim| {
                    sim.service.placement_constraints = vec![PlacementConstraint {
                        kind: "memberOf".to_owned(),
                        expression: Some("attribute:ecs.availability-zone == a".to_owned()),
                    }];
                },
                &[
                    "stop t002: Task stopped because its container instance no longer meets the service's placement constraints",
                ],
            )
        },
        Row {
            desired: 2,
            ..row(
                "a disconnected host is left alone and not replaced elsewhere",
                |sim| sim.hosts[1].host.agent_connected = false,
                &[],
            )
        },
        Row {
            desired: 2,
            ..row(
                "a deregistered host's task is stopped",
                |sim| set_status(&mut sim.hosts[1], ContainerInstanceStatus::Inactive),
                &["stop t002: Task stopped because its container instance was deregistered"],
            )
        },
        row(
            "a stopped daemon task is replaced on its host",
            |sim| {
                let at = sim.now.plus_seconds(-10);
                let task = sim.tasks.iter_mut().find(|t| t.id == "t002").unwrap();
                *task = stopped(task.clone(), TaskStopCode::EssentialContainerExited, at);
            },
            &["start-on host-1"],
        ),
        row(
            "a second task on one host is stopped",
            |sim| {
                let mut extra = task(
                    "t009",
                    &deployment_id(1),
                    REV1,
                    "host-0",
                    TaskStatus::Running,
                );
                extra.created_at = sim.now;
                sim.tasks.push(extra);
            },
            &["stop t009: Scaling activity initiated by (deployment D1)"],
        ),
    ]);
}

struct Update {
    name: &'static str,
    hosts: usize,
    minimum_healthy_percent: u32,
    maximum_percent: u32,
    /// The most tasks any host may hold at once.
    per_host_max: usize,
    /// The floor may be crossed by one host: the bounds leave no room to move otherwise.
    no_room: bool,
}

/// Updates a daemon from rev 1 to rev 2, step by step, checking after every plan that no
/// host holds more than `per_host_max` tasks and that the hosts with a healthy task stay at
/// or above the floor; at the end each host runs exactly one rev 2 task.
fn check_update(updates: &[Update]) {
    for case in updates {
        let mut sim = Sim::new(daemon_service(), hosts(case.hosts));
        let configuration = &mut sim.service.deployment_configuration;
        configuration.minimum_healthy_percent = case.minimum_healthy_percent;
        configuration.maximum_percent = case.maximum_percent;
        sim.run_until_quiet(1_000, 20);
        sim.service.task_definition_arn = REV2.to_owned();
        sim.service.start_deployment(deployment_id(2), sim.now);
        let floor = sim
            .service
            .deployment_configuration
            .healthy_floor(case.hosts as u32) as usize
            - usize::from(case.no_room);
        for step in 0.. {
            assert!(step < 50, "{}: no end", case.name);
            let plan = sim.reconcile();
            sim.apply(&plan);
            for host in &sim.hosts {
                let here = sim
                    .live()
                    .filter(|t| t.container_instance_id.as_deref() == Some(&*host.host.id))
                    .count();
                assert!(
                    here <= case.per_host_max,
                    "{}: {here} on {}",
                    case.name,
                    host.host.id
                );
            }
            assert!(sim.healthy() >= floor, "{}: below the floor", case.name);
            if plan.changes.is_empty() && sim.stable() {
                break;
            }
            sim.tick(1_000);
            if let Some(wait) = plan.requeue_after_ms.filter(|_| plan.changes.is_empty()) {
                // Waiting for new tasks to turn healthy.
                sim.tick(i64::try_from(wait).unwrap());
            }
        }
        assert_eq!(sim.service.deployments.len(), 1, "{}", case.name);
        assert_eq!(
            sim.service.deployments[0].rollout_state,
            RolloutState::Completed,
            "{}",
            case.name
        );
        for host in &sim.hosts {
            let here: Vec<&str> = sim
                .live()
                .filter(|t| t.container_instance_id.as_deref() == Some(&*host.host.id))
                .map(|t| t.task_definition_arn.as_str())
                .collect();
            assert_eq!(here, [REV2], "{}: {}", case.name, host.host.id);
        }
    }
}

#[test]
fn rolling_updates_go_host_by_host() {
    check_update(&[
        Update {
            name: "defaults 0/100: stop, then start, on every host",
            hosts: 3,
            minimum_healthy_percent: 0,
            maximum_percent: 100,
            per_host_max: 1,
            no_room: false,
        },
        Update {
            name: "50/100: half the hosts at a time",
            hosts: 4,
            minimum_healthy_percent: 50,
            maximum_percent: 100,
            per_host_max: 1,
            no_room: false,
        },
        Update {
            name: "100/200: the new task starts beside the old one",
            hosts: 3,
            minimum_healthy_percent: 100,
            maximum_percent: 200,
            per_host_max: 2,
            no_room: false,
        },
        Update {
            name: "100/100: one host at a time",
            hosts: 3,
            minimum_healthy_percent: 100,
            maximum_percent: 100,
            per_host_max: 1,
            no_room: true,
        },
    ]);
}

#[test]
fn deleting_a_daemon_stops_every_task() {
    let mut sim = Sim::new(daemon_service(), hosts(3));
    sim.run_until_quiet(1_000, 20);
    sim.service.status = flotilla_reconcile::ServiceStatus::Draining;
    sim.step(1_000);
    sim.step(1_000);
    assert_eq!(sim.live().count(), 0);
    assert_eq!(
        sim.service.status,
        flotilla_reconcile::ServiceStatus::Inactive
    );
}
