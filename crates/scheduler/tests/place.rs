//! Placement by table: filters and their reasons, constraints, strategies, tie-breaks,
//! explain, parsing of constraints and strategies, and the index giving the same answers.

mod common;

use common::{
    GROUP, host, hosts, member_of, placed_on, request, tasks_per_host, with_attribute,
    with_group_tasks, with_strategies,
};
use flotilla_model::resources::Shortfall;
use flotilla_scheduler::{
    BinpackField, Constraint, Host, HostIndex, PlacementError, RejectReason, Rejection,
    SpreadField, Strategy, explain, parse_constraint, parse_strategy, place,
};

fn reasons(result: &flotilla_scheduler::PlacementResult) -> Vec<(usize, String)> {
    result
        .rejections
        .iter()
        .map(|r| (r.host_index, r.reason.ecs_reason()))
        .collect()
}

#[test]
fn without_strategies_the_first_host_that_fits_wins() {
    let hosts = vec![host(0, 512, 512), host(1, 2048, 2048), host(2, 4096, 4096)];
    let result = place(&hosts, &request(512, 256, 4), 1);
    assert_eq!(placed_on(&result), vec![0, 1, 1, 1]);
    assert_eq!(result.unplaced, 0);
    assert!(
        result.rejections.is_empty(),
        "no reasons when everything was placed"
    );
    // The seed does not matter without strategies.
    assert_eq!(place(&hosts, &request(512, 256, 4), 99), result);
}

#[test]
fn each_shortfall_is_reported_in_ecs_words() {
    let hosts = vec![host(0, 1024, 1024), host(1, 2048, 512)];
    // (cpu, memory, reason on host 0, reason on host 1)
    let rows = [
        (4096, 1, "RESOURCE:CPU", "RESOURCE:CPU"),
        (1, 4096, "RESOURCE:MEMORY", "RESOURCE:MEMORY"),
        // CPU is checked before memory, as ECS does.
        (1536, 1024, "RESOURCE:CPU", "RESOURCE:MEMORY"),
    ];
    for (cpu, memory_mib, host_0, host_1) in rows {
        let result = place(&hosts, &request(cpu, memory_mib, 1), 1);
        assert_eq!(result.unplaced, 1);
        let expected = vec![(0, host_0.to_owned()), (1, host_1.to_owned())];
        assert_eq!(reasons(&result), expected, "cpu {cpu} memory {memory_mib}");
    }
}

#[test]
fn later_tasks_see_what_earlier_ones_took() {
    let hosts = vec![host(0, 1024, 4096), host(1, 1024, 4096)];
    let result = place(&hosts, &request(512, 1024, 5), 1);
    assert_eq!(placed_on(&result), vec![0, 0, 1, 1]);
    assert_eq!(result.unplaced, 1);
    assert_eq!(
        result.rejections,
        vec![
            Rejection {
                host_index: 0,
                reason: RejectReason::Resource(Shortfall::Cpu)
            },
            Rejection {
                host_index: 1,
                reason: RejectReason::Resource(Shortfall::Cpu)
            },
        ]
    );
}

#[test]
fn fixed_host_ports_are_taken_once() {
    let mut hosts = hosts(3, 4096, 4096);
    hosts[0].remaining.ports_tcp = [22, 80].into();
    hosts[2].remaining.ports_udp = [53].into();
    let mut tcp = request(1, 1, 3);
    tcp.demand.ports_tcp = [80].into();
    let result = place(&hosts, &tcp, 1);
    assert_eq!(placed_on(&result), vec![1, 2]);
    assert_eq!(result.placements[0].reservation.ports_tcp, [80].into());
    assert_eq!(
        reasons(&result),
        vec![
            (0, "RESOURCE:PORTS".to_owned()),
            (1, "RESOURCE:PORTS".to_owned()),
            (2, "RESOURCE:PORTS".to_owned()),
        ]
    );
    let mut udp = request(1, 1, 3);
    udp.demand.ports_udp = [53].into();
    udp.demand.ports_tcp = [80].into();
    assert_eq!(placed_on(&place(&hosts, &udp, 1)), vec![1]);
    // No fixed ports (dynamic ones are Docker's business): any number fit.
    assert_eq!(place(&hosts, &request(1, 1, 30), 1).unplaced, 0);
}

#[test]
fn gpus_are_handed_out_by_id() {
    let mut hosts = hosts(2, 4096, 4096);
    hosts[1].remaining.gpu_ids = ["gpu-0", "gpu-1", "gpu-2"].map(str::to_owned).into();
    let mut gpu = request(1, 1, 3);
    gpu.demand.gpus = 1;
    let result = place(&hosts, &gpu, 1);
    assert_eq!(placed_on(&result), vec![1, 1, 1]);
    let ids: Vec<Vec<String>> = result
        .placements
        .iter()
        .map(|p| p.reservation.gpu_ids.iter().cloned().collect())
        .collect();
    assert_eq!(ids, vec![vec!["gpu-0"], vec!["gpu-1"], vec!["gpu-2"]]);
    gpu.demand.gpus = 2;
    let result = place(&hosts, &gpu, 1);
    assert_eq!(placed_on(&result), vec![1]);
    assert_eq!(
        reasons(&result),
        vec![
            (0, "RESOURCE:GPU".to_owned()),
            (1, "RESOURCE:GPU".to_owned())
        ]
    );
}

#[test]
fn inactive_and_disconnected_hosts_are_never_chosen() {
    let mut hosts = hosts(3, 4096, 4096);
    hosts[0].active = false;
    hosts[1].agent_connected = false;
    let result = place(&hosts, &request(1, 1, 2), 1);
    assert_eq!(placed_on(&result), vec![2, 2]);
    let result = place(&hosts[..2], &request(1, 1, 1), 1);
    assert_eq!(
        reasons(&result),
        vec![(0, "INACTIVE".to_owned()), (1, "AGENT".to_owned())]
    );
}

#[test]
fn distinct_instance_counts_running_and_just_placed_tasks() {
    let hosts = vec![
        with_group_tasks(host(0, 4096, 4096), GROUP, 1),
        with_group_tasks(host(1, 4096, 4096), "service:other", 3),
        host(2, 4096, 4096),
    ];
    let mut distinct = request(1, 1, 3);
    distinct.constraints = vec![Constraint::DistinctInstance];
    let result = place(&hosts, &distinct, 1);
    assert_eq!(placed_on(&result), vec![1, 2]);
    assert_eq!(result.unplaced, 1);
    let wording = "DistinctInstance placement constraint unsatisfied.";
    assert_eq!(
        reasons(&result),
        (0..3).map(|i| (i, wording.to_owned())).collect::<Vec<_>>()
    );
}

#[test]
fn member_of_keeps_tasks_on_matching_hosts() {
    let hosts = vec![
        with_attribute(host(0, 4096, 4096), "stack", "dev"),
        host(1, 4096, 4096),
        with_attribute(host(2, 4096, 4096), "stack", "prod"),
    ];
    let mut prod = request(1, 1, 2);
    prod.constraints = vec![member_of("attribute:stack == prod")];
    assert_eq!(placed_on(&place(&hosts, &prod, 1)), vec![2, 2]);
    // Constraints combine: both must hold.
    prod.constraints.push(member_of("runningTasksCount > 5"));
    let result = place(&hosts, &prod, 1);
    assert_eq!(result.unplaced, 2);
    let wording = "MemberOf placement constraint unsatisfied.";
    assert_eq!(
        reasons(&result),
        (0..3).map(|i| (i, wording.to_owned())).collect::<Vec<_>>()
    );
    // Resources are checked before constraints.
    let result = place(&hosts, &request(8192, 1, 1), 1);
    assert_eq!(
        result.rejections[0].reason,
        RejectReason::Resource(Shortfall::Cpu)
    );
}

#[test]
fn task_dependent_member_of_sees_earlier_placements_of_the_call() {
    let hosts = vec![
        with_group_tasks(host(0, 4096, 4096), "service:db", 1),
        host(1, 4096, 4096),
        host(2, 4096, 4096),
    ];
    // A cap on running tasks holds for the whole call.
    let mut capped = request(1, 1, 6);
    capped.constraints = vec![member_of("runningTasksCount < 2")];
    let result = place(&hosts, &capped, 1);
    assert_eq!(tasks_per_host(&result, 3), vec![1, 2, 2]);
    assert_eq!(result.unplaced, 1);
    assert_eq!(
        result
            .rejections
            .iter()
            .map(|r| r.reason)
            .collect::<Vec<_>>(),
        vec![RejectReason::MemberOf; 3]
    );
    // Anti-affinity with the group itself allows one task per host.
    let mut spread_out = request(1, 1, 5);
    spread_out.constraints = vec![member_of(&format!("not(task:group == {GROUP})"))];
    assert_eq!(
        tasks_per_host(&place(&hosts, &spread_out, 1), 3),
        vec![1, 1, 1]
    );
    // Affinity: only next to the database.
    let mut near_db = request(1, 1, 2);
    near_db.constraints = vec![member_of("task:group == service:db")];
    assert_eq!(placed_on(&place(&hosts, &near_db, 1)), vec![0, 0]);
}

#[test]
fn binpack_fills_the_fullest_host_first() {
    let hosts = vec![
        host(0, 4096, 1024),
        host(1, 1024, 8192),
        host(2, 2048, 2048),
    ];
    let cpu = with_strategies(request(512, 128, 3), &[("binpack", Some("cpu"))]);
    assert_eq!(placed_on(&place(&hosts, &cpu, 1)), vec![1, 1, 2]);
    let memory = with_strategies(request(512, 128, 3), &[("binpack", Some("MEMORY"))]);
    assert_eq!(placed_on(&place(&hosts, &memory, 1)), vec![0, 0, 0]);
}

#[test]
fn spread_by_instance_evens_out_the_group() {
    let hosts = vec![
        with_group_tasks(host(0, 4096, 4096), GROUP, 2),
        with_group_tasks(host(1, 4096, 4096), "service:other", 5),
        host(2, 4096, 4096),
    ];
    let spread = with_strategies(request(1, 1, 4), &[("spread", Some("instanceId"))]);
    for seed in 0..20 {
        assert_eq!(
            tasks_per_host(&place(&hosts, &spread, seed), 3),
            vec![0, 2, 2],
            "seed {seed}"
        );
    }
    let host_alias = with_strategies(request(1, 1, 7), &[("spread", Some("host"))]);
    assert_eq!(
        tasks_per_host(&place(&hosts, &host_alias, 3), 3),
        vec![1, 3, 3]
    );
}

#[test]
fn spread_by_attribute_evens_out_the_values() {
    let zoned = vec![
        with_attribute(host(0, 4096, 4096), "zone", "a"),
        with_attribute(host(1, 4096, 4096), "zone", "a"),
        with_attribute(host(2, 4096, 4096), "zone", "b"),
    ];
    let by_zone = with_strategies(
        request(1, 1, 4),
        &[
            ("spread", Some("attribute:zone")),
            ("spread", Some("instanceId")),
        ],
    );
    for seed in 0..20 {
        assert_eq!(
            tasks_per_host(&place(&zoned, &by_zone, seed), 3),
            vec![1, 1, 2],
            "seed {seed}"
        );
    }
    // Existing tasks count: zone a already holds three.
    let mut busy = zoned.clone();
    busy[0] = with_group_tasks(busy[0].clone(), GROUP, 3);
    assert_eq!(tasks_per_host(&place(&busy, &by_zone, 1), 3), vec![0, 1, 3]);
    // ... but not those on a draining host, which are about to move.
    busy[0].active = false;
    assert_eq!(tasks_per_host(&place(&busy, &by_zone, 1), 3), vec![0, 2, 2]);
    // Hosts without the attribute form one bucket of their own.
    let partly = vec![
        with_attribute(host(0, 4096, 4096), "zone", "a"),
        host(1, 4096, 4096),
        host(2, 4096, 4096),
    ];
    let per_host = tasks_per_host(&place(&partly, &by_zone, 1), 3);
    assert_eq!(per_host[0], 2, "{per_host:?}");
    assert_eq!(per_host[1] + per_host[2], 2, "{per_host:?}");
}

#[test]
fn strategies_apply_in_order() {
    let hosts = vec![
        with_group_tasks(with_attribute(host(0, 4096, 1000), "zone", "a"), GROUP, 1),
        with_attribute(host(1, 4096, 4000), "zone", "b"),
        with_attribute(host(2, 4096, 3000), "zone", "b"),
    ];
    let zone_first = with_strategies(
        request(1, 100, 1),
        &[
            ("spread", Some("attribute:zone")),
            ("binpack", Some("memory")),
        ],
    );
    assert_eq!(placed_on(&place(&hosts, &zone_first, 1)), vec![2]);
    let memory_first = with_strategies(
        request(1, 100, 1),
        &[
            ("binpack", Some("memory")),
            ("spread", Some("attribute:zone")),
        ],
    );
    assert_eq!(placed_on(&place(&hosts, &memory_first, 1)), vec![0]);
    // Random decides everything after it.
    let random_first = with_strategies(
        request(1, 100, 1),
        &[("random", None), ("binpack", Some("memory"))],
    );
    let chosen: std::collections::BTreeSet<usize> = (0..50)
        .flat_map(|seed| placed_on(&place(&hosts, &random_first, seed)))
        .collect();
    assert_eq!(chosen.len(), 3, "random reaches every host: {chosen:?}");
}

#[test]
fn random_is_replayable_from_the_seed() {
    let hosts = hosts(20, 4096, 4096);
    let random = with_strategies(request(1, 1, 5), &[("random", None)]);
    for seed in 0..10 {
        assert_eq!(place(&hosts, &random, seed), place(&hosts, &random, seed));
    }
    let answers: std::collections::BTreeSet<Vec<usize>> = (0..10)
        .map(|seed| placed_on(&place(&hosts, &random, seed)))
        .collect();
    assert!(answers.len() > 1, "different seeds can differ");
    // Tasks of one call are drawn independently, so they may share a host.
    let two_hosts = hosts[..2].to_vec();
    let many = with_strategies(request(1, 1, 40), &[("random", None)]);
    let per_host = tasks_per_host(&place(&two_hosts, &many, 5), 2);
    assert!(per_host[0] > 5 && per_host[1] > 5, "{per_host:?}");
}

#[test]
fn ties_after_the_strategies_are_broken_by_the_seed() {
    let hosts = hosts(10, 4096, 4096);
    let spread = with_strategies(request(1, 1, 1), &[("spread", Some("instanceId"))]);
    let first_choices: std::collections::BTreeSet<Vec<usize>> = (0..20)
        .map(|seed| placed_on(&place(&hosts, &spread, seed)))
        .collect();
    assert!(
        first_choices.len() > 3,
        "equal hosts share the load: {first_choices:?}"
    );
    // Binpack keeps filling the host it chose.
    let binpack = with_strategies(request(1024, 1, 4), &[("binpack", Some("cpu"))]);
    let result = place(&hosts, &binpack, 7);
    assert_eq!(
        tasks_per_host(&result, 10)
            .iter()
            .filter(|n| **n > 0)
            .count(),
        1
    );
}

#[test]
fn counts_of_zero_and_empty_clusters() {
    let result = place(&hosts(3, 1, 1), &request(1, 1, 0), 1);
    assert!(result.placements.is_empty() && result.unplaced == 0 && result.rejections.is_empty());
    let result = place(&[], &request(1, 1, 2), 1);
    assert_eq!(result.unplaced, 2);
    assert!(result.rejections.is_empty());
}

#[test]
fn explain_says_why_for_every_host() {
    let mut hosts = vec![
        host(0, 4096, 4096),
        host(1, 4096, 4096),
        host(2, 100, 4096),
        with_group_tasks(host(3, 4096, 4096), GROUP, 1),
        with_attribute(host(4, 4096, 4096), "stack", "dev"),
        with_attribute(host(5, 4096, 4096), "stack", "prod"),
    ];
    hosts[0].active = false;
    hosts[1].agent_connected = false;
    let mut req = request(512, 512, 1);
    req.constraints = vec![
        Constraint::DistinctInstance,
        member_of("attribute:stack != dev"),
    ];
    assert_eq!(
        explain(&hosts, &req),
        vec![
            (0, Err(RejectReason::Inactive)),
            (1, Err(RejectReason::AgentDisconnected)),
            (2, Err(RejectReason::Resource(Shortfall::Cpu))),
            (3, Err(RejectReason::DistinctInstance)),
            (4, Err(RejectReason::MemberOf)),
            (5, Ok(())),
        ]
    );
}

#[test]
fn constraints_parse_as_ecs_gives_them() {
    assert!(matches!(
        parse_constraint("distinctInstance", None),
        Ok(Constraint::DistinctInstance)
    ));
    assert!(matches!(
        parse_constraint("distinctInstance", Some("  ")),
        Ok(Constraint::DistinctInstance)
    ));
    assert!(matches!(
        parse_constraint("memberOf", Some("attribute:stack == prod")),
        Ok(Constraint::MemberOf(_))
    ));
    let rows = [
        (
            "sometimes",
            None,
            "Invalid placement constraint type 'sometimes'; accepted: distinctInstance, memberOf.",
        ),
        (
            "memberOf",
            None,
            "A memberOf placement constraint needs an expression.",
        ),
        (
            "memberOf",
            Some(""),
            "A memberOf placement constraint needs an expression.",
        ),
        (
            "distinctInstance",
            Some("attribute:a exists"),
            "A distinctInstance placement constraint takes no expression.",
        ),
        (
            "memberOf",
            Some("stack == prod"),
            "Invalid expression at position 0: unknown subject 'stack'; expected attribute:NAME, \
             agentConnected, agentVersion, ec2InstanceId, registeredAt, runningTasksCount or task:group",
        ),
    ];
    for (kind, expression, message) in rows {
        let error = parse_constraint(kind, expression).expect_err(kind);
        assert_eq!(error.to_string(), message);
    }
}

#[test]
fn strategies_parse_as_ecs_gives_them() {
    let valid = [
        ("binpack", Some("cpu"), Strategy::Binpack(BinpackField::Cpu)),
        ("binpack", Some("CPU"), Strategy::Binpack(BinpackField::Cpu)),
        (
            "binpack",
            Some("memory"),
            Strategy::Binpack(BinpackField::Memory),
        ),
        (
            "binpack",
            Some("MEMORY"),
            Strategy::Binpack(BinpackField::Memory),
        ),
        (
            "spread",
            Some("instanceId"),
            Strategy::Spread(SpreadField::Instance),
        ),
        (
            "spread",
            Some("host"),
            Strategy::Spread(SpreadField::Instance),
        ),
        (
            "spread",
            Some("attribute:ecs.availability-zone"),
            Strategy::Spread(SpreadField::Attribute("ecs.availability-zone".to_owned())),
        ),
        ("random", None, Strategy::Random),
        ("random", Some(""), Strategy::Random),
    ];
    for (kind, field, expected) in valid {
        assert_eq!(
            parse_strategy(kind, field),
            Ok(expected),
            "{kind} {field:?}"
        );
    }
    let invalid = [
        (
            "binpack",
            Some("disk"),
            "Invalid field 'disk' for the binpack placement strategy; accepted: cpu, memory.",
        ),
        (
            "binpack",
            None,
            "Invalid field '' for the binpack placement strategy; accepted: cpu, memory.",
        ),
        (
            "spread",
            Some("attribute:"),
            "Invalid field 'attribute:' for the spread placement strategy; accepted: instanceId, host, attribute:NAME.",
        ),
        (
            "spread",
            Some("attribute:a b"),
            "Invalid field 'attribute:a b' for the spread placement strategy; accepted: instanceId, host, attribute:NAME.",
        ),
        (
            "random",
            Some("cpu"),
            "Invalid field 'cpu' for the random placement strategy; accepted: no field.",
        ),
        (
            "pack",
            None,
            "Invalid placement strategy type 'pack'; accepted: binpack, spread, random.",
        ),
    ];
    for (kind, field, message) in invalid {
        let error = parse_strategy(kind, field).expect_err(kind);
        assert_eq!(error.to_string(), message);
        assert!(!matches!(error, PlacementError::Expression(_)));
    }
}

#[test]
fn the_index_answers_as_place_does_and_follows_changes() {
    let zones = ["a", "b", "c"];
    let hosts: Vec<Host> = (0..12)
        .map(|i| with_attribute(host(i, 2048, 4096), "zone", zones[i % 3]))
        .collect();
    let mut index = HostIndex::new(hosts.clone());
    let mut req = with_strategies(
        request(512, 512, 5),
        &[("spread", Some("attribute:zone")), ("binpack", Some("cpu"))],
    );
    req.constraints = vec![member_of("attribute:zone != c")];
    for seed in 0..5 {
        let expected = place(index.hosts(), &req, seed);
        let result = index.place(&req, seed);
        assert_eq!(result, expected, "seed {seed}");
        for placement in &result.placements {
            index.apply(placement, GROUP);
        }
    }
    let host = &index.hosts()[0];
    assert_eq!(
        host.task_groups.get(GROUP).copied().unwrap_or(0),
        host.running_tasks_count
    );
    // Releasing gives resources back; replacing a host changes its answers.
    let placed = index.place(&req, 9);
    let first = placed.placements[0].clone();
    index.apply(&first, GROUP);
    let before = index.hosts()[first.host_index].remaining.clone();
    index.release(first.host_index, &first.reservation, GROUP);
    assert_eq!(
        index.hosts()[first.host_index].remaining.cpu,
        before.cpu + 512
    );
    let mut moved = index.hosts()[1].clone();
    moved
        .attributes
        .insert("zone".to_owned(), Some("c".to_owned()));
    index.replace_host(1, moved);
    let added = index.push_host(with_attribute(host_with_index(12), "zone", "d"));
    assert_eq!(added, 12);
    for seed in 10..15 {
        assert_eq!(
            index.place(&req, seed),
            place(index.hosts(), &req, seed),
            "seed {seed}"
        );
    }
}

fn host_with_index(i: usize) -> Host {
    host(i, 2048, 4096)
}
