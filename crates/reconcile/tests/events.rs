//! Service events: ECS's wording, the latest 100 kept newest first, ids from the seed.

mod common;

use common::*;
use flotilla_model::resources::Demand;
use flotilla_reconcile::{
    Observed, SERVICE_EVENTS_MAX, ServiceEvent, placement_failure_event, reconcile,
    started_tasks_event, stopped_tasks_event,
};
use flotilla_scheduler::{Constraint, Host, PlacementRequest, query};

fn request(cpu: i64, memory_mib: i64, constraints: Vec<Constraint>) -> PlacementRequest {
    PlacementRequest {
        demand: Demand {
            cpu,
            memory_mib,
            ..Default::default()
        },
        count: 1,
        group: "service:web".to_owned(),
        constraints,
        strategies: Vec::new(),
    }
}

/// Places one task with the real scheduler and words its failure.
fn check(rows: &[(&str, Vec<Host>, PlacementRequest, &str)]) {
    for (name, hosts, request, expect) in rows {
        let result = flotilla_scheduler::place(hosts, request, 1);
        assert_eq!(result.unplaced, 1, "{name}");
        let message = placement_failure_event("web", hosts, &result.rejections);
        let prefix = "(service web) was unable to place a task because no container instance \
                      met all of its requirements.";
        assert_eq!(message, format!("{prefix} {expect}"), "{name}");
    }
}

fn plain_hosts(count: usize) -> Vec<Host> {
    hosts(count).into_iter().map(|h| h.host).collect()
}

#[test]
fn placement_failures_name_the_closest_host() {
    let zone_c = || {
        vec![Constraint::MemberOf(
            query::parse("attribute:ecs.availability-zone == c").unwrap(),
        )]
    };
    let mut small_and_big = plain_hosts(2);
    small_and_big[0].remaining.cpu = 100;
    small_and_big[1].remaining.memory_mib = 100;
    let mut disconnected = plain_hosts(1);
    disconnected[0].agent_connected = false;
    check(&[
        (
            "not enough CPU anywhere",
            plain_hosts(2),
            request(100_000, 512, vec![]),
            "The closest matching (container-instance host-0) has insufficient CPU units available.",
        ),
        (
            "the host short of memory got further than the one short of CPU",
            small_and_big,
            request(256, 512, vec![]),
            "The closest matching (container-instance host-1) has insufficient memory available.",
        ),
        (
            "a constraint no host meets",
            plain_hosts(2),
            request(256, 512, zone_c()),
            "The closest matching (container-instance host-0) encountered error \
             \"MemberOf placement constraint unsatisfied\".",
        ),
        (
            "no host at all",
            Vec::new(),
            request(256, 512, vec![]),
            "Reason: No Container Instances were found in your cluster.",
        ),
        (
            "no host with a connected agent",
            disconnected,
            request(256, 512, vec![]),
            "Reason: No Container Instances were found in your cluster.",
        ),
    ]);
}

#[test]
fn task_events_use_ecs_wording() {
    assert_eq!(
        started_tasks_event("web", &["a1", "b2"]),
        "(service web) has started 2 tasks: (task a1) (task b2)."
    );
    assert_eq!(
        stopped_tasks_event("web", &["a1"]),
        "(service web) has stopped 1 running tasks: (task a1)."
    );
}

#[test]
fn the_latest_hundred_events_are_kept_newest_first() {
    let mut service = service(1);
    for n in 0..150 {
        service.record_event(ServiceEvent {
            id: format!("e{n}"),
            created_at: T0.plus_seconds(n),
            message: format!("event {n}"),
        });
    }
    assert_eq!(service.events.len(), SERVICE_EVENTS_MAX);
    assert_eq!(service.events[0].id, "e149");
    assert_eq!(service.events[99].id, "e50");
}

#[test]
fn the_same_observation_and_seed_give_the_same_plan() {
    let service = service(2);
    let tasks = vec![
        task(
            "t1",
            &deployment_id(1),
            REV1,
            "host-0",
            flotilla_model::TaskStatus::Running,
        ),
        task(
            "t2",
            &deployment_id(1),
            REV1,
            "host-1",
            flotilla_model::TaskStatus::Running,
        ),
        task(
            "t3",
            &deployment_id(1),
            REV1,
            "host-1",
            flotilla_model::TaskStatus::Running,
        ),
    ];
    let hosts = hosts(2);
    let observed = Observed {
        service: &service,
        tasks: &tasks,
        hosts: &hosts,
        now: T0.plus_seconds(5),
        restart_delay_base_ms: flotilla_reconcile::THROTTLE_DELAY_BASE_MS,
        healthy_after_running_ms: flotilla_reconcile::HEALTHY_AFTER_RUNNING_MS,
    };
    let plan = reconcile(&observed, 42);
    assert_eq!(plan, reconcile(&observed, 42));
    let event_ids = |plan: &flotilla_reconcile::Plan| {
        updated(plan)
            .map(|s| s.events.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert!(!event_ids(&plan).is_empty());
    assert_ne!(event_ids(&plan), event_ids(&reconcile(&observed, 43)));
}
