//! Properties of placement over generated clusters and requests: nothing is oversubscribed,
//! constraints always hold, the reasons given are the true ones, spread stays even, binpack
//! packs, and the index answers exactly as `place` does.

mod common;

use std::collections::BTreeSet;

use common::{GROUP, host, hosts, tasks_per_host};
use flotilla_model::resources::Reservation;
use flotilla_scheduler::{
    BinpackField, Constraint, Host, HostIndex, PlacementRequest, PlacementResult, SpreadField,
    Strategy, explain, place,
};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

/// Expressions over the generated attributes, including ones that change as tasks land.
const EXPRESSIONS: [&str; 6] = [
    "attribute:stack == prod",
    "attribute:zone in [z0, z1]",
    "not(attribute:zone == z2) or attribute:stack exists",
    "runningTasksCount < 3",
    "not(task:group == service:web)",
    "task:group !exists or attribute:stack !exists",
];

fn strategy_choices() -> Vec<Strategy> {
    vec![
        Strategy::Binpack(BinpackField::Cpu),
        Strategy::Binpack(BinpackField::Memory),
        Strategy::Spread(SpreadField::Instance),
        Strategy::Spread(SpreadField::Attribute("zone".to_owned())),
        Strategy::Random,
    ]
}

prop_compose! {
    fn arb_host(index: usize)(
        cpu in 0i64..4096,
        memory_mib in 0i64..4096,
        port_80_taken in prop::bool::weighted(0.2),
        gpus in 0usize..3,
        zone in prop::option::weighted(0.8, 0usize..3),
        prod in prop::option::weighted(0.7, any::<bool>()),
        active in prop::bool::weighted(0.9),
        agent_connected in prop::bool::weighted(0.9),
        group_tasks in prop::option::weighted(0.3, 1u32..3),
        other_tasks in 0u32..3,
    ) -> Host {
        let mut h = host(index, cpu, memory_mib);
        h.remaining.ports_tcp = if port_80_taken { [22, 80].into() } else { [22].into() };
        h.remaining.gpu_ids = (0..gpus).map(|g| format!("gpu-{g}")).collect();
        if let Some(zone) = zone {
            h.attributes.insert("zone".to_owned(), Some(format!("z{zone}")));
        }
        if let Some(prod) = prod {
            h.attributes.insert("stack".to_owned(), Some(if prod { "prod" } else { "dev" }.to_owned()));
        }
        h.active = active;
        h.agent_connected = agent_connected;
        if let Some(tasks) = group_tasks {
            h.task_groups.insert(GROUP.to_owned(), tasks);
        }
        if other_tasks > 0 {
            h.task_groups.insert("service:other".to_owned(), other_tasks);
        }
        h.running_tasks_count = group_tasks.unwrap_or(0) + other_tasks;
        h
    }
}

fn arb_hosts(max: usize) -> impl proptest::strategy::Strategy<Value = Vec<Host>> {
    (1..max).prop_flat_map(|n| (0..n).map(arb_host).collect::<Vec<_>>())
}

prop_compose! {
    fn arb_request()(
        cpu in 0i64..1024,
        memory_mib in 0i64..1024,
        port_80 in prop::bool::weighted(0.2),
        gpus in prop::bool::weighted(0.2),
        count in 0usize..25,
        distinct in prop::bool::weighted(0.2),
        expressions in prop::collection::vec(0..EXPRESSIONS.len(), 0..3),
        strategies in prop::collection::vec(0..5usize, 0..4),
    ) -> PlacementRequest {
        let mut request = common::request(cpu, memory_mib, count);
        if port_80 {
            request.demand.ports_tcp = [80].into();
        }
        request.demand.gpus = u32::from(gpus);
        if distinct {
            request.constraints.push(Constraint::DistinctInstance);
        }
        request.constraints.extend(expressions.into_iter().map(|e| common::member_of(EXPRESSIONS[e])));
        let choices = strategy_choices();
        request.strategies = strategies.into_iter().map(|s| choices[s].clone()).collect();
        request
    }
}

/// Applies a placement to a host as the control plane would.
fn commit(host: &mut Host, reservation: &Reservation, group: &str) {
    host.remaining.apply(reservation);
    *host.task_groups.entry(group.to_owned()).or_default() += 1;
    host.running_tasks_count += 1;
}

/// Replays `result` on a copy of the hosts, checking that every placement fits and meets
/// every constraint at the moment it is made; returns the hosts afterwards.
fn replay(
    hosts: &[Host],
    request: &PlacementRequest,
    result: &PlacementResult,
) -> Result<Vec<Host>, TestCaseError> {
    let mut after = hosts.to_vec();
    for placement in &result.placements {
        let host = &mut after[placement.host_index];
        prop_assert!(host.active && host.agent_connected);
        prop_assert_eq!(
            host.remaining.check(&request.demand),
            Ok(()),
            "oversubscribed"
        );
        prop_assert!(
            placement
                .reservation
                .gpu_ids
                .is_subset(&host.remaining.gpu_ids)
        );
        prop_assert_eq!(
            placement.reservation.gpu_ids.len(),
            request.demand.gpus as usize
        );
        for constraint in &request.constraints {
            match constraint {
                Constraint::DistinctInstance => {
                    prop_assert_eq!(host.task_groups.get(GROUP).copied().unwrap_or(0), 0)
                }
                Constraint::MemberOf(expression) => {
                    prop_assert!(expression.matches(host), "{}", expression)
                }
            }
        }
        commit(host, &placement.reservation, &request.group);
    }
    Ok(after)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn placements_fit_meet_constraints_and_reasons_are_true(
        hosts in arb_hosts(14),
        request in arb_request(),
        seed in any::<u64>(),
    ) {
        let result = place(&hosts, &request, seed);
        prop_assert_eq!(result.placements.len() + result.unplaced, request.count);
        prop_assert_eq!(&place(&hosts, &request, seed), &result, "replayable from the seed");
        let after = replay(&hosts, &request, &result)?;
        if result.unplaced > 0 {
            // Nothing more fits anywhere, and the reasons are the ones explain gives for the
            // hosts as this call left them.
            let expected: Vec<(usize, String)> = explain(&after, &request)
                .into_iter()
                .filter_map(|(i, verdict)| verdict.err().map(|r| (i, r.ecs_reason())))
                .collect();
            prop_assert_eq!(expected.len(), hosts.len());
            let given: Vec<(usize, String)> =
                result.rejections.iter().map(|r| (r.host_index, r.reason.ecs_reason())).collect();
            prop_assert_eq!(given, expected);
        } else {
            prop_assert!(result.rejections.is_empty());
        }
    }

    #[test]
    fn spread_by_instance_stays_within_one_of_even(
        host_count in 1usize..10,
        count in 1usize..40,
        seed in any::<u64>(),
    ) {
        let hosts = hosts(host_count, 100_000, 100_000);
        let request = common::with_strategies(common::request(1, 1, count), &[("spread", Some("instanceId"))]);
        let per_host = tasks_per_host(&place(&hosts, &request, seed), host_count);
        let (low, high) = (per_host.iter().min().unwrap(), per_host.iter().max().unwrap());
        prop_assert!(high - low <= 1, "{:?}", per_host);
    }

    #[test]
    fn spread_by_attribute_stays_within_one_of_even(
        zones in prop::collection::vec(0usize..4, 4..16),
        count in 1usize..40,
        seed in any::<u64>(),
    ) {
        let hosts: Vec<Host> = zones
            .iter()
            .enumerate()
            .map(|(i, z)| common::with_attribute(host(i, 100_000, 100_000), "zone", &format!("z{z}")))
            .collect();
        let request = common::with_strategies(common::request(1, 1, count), &[("spread", Some("attribute:zone"))]);
        let result = place(&hosts, &request, seed);
        let present: BTreeSet<usize> = zones.iter().copied().collect();
        let per_zone: Vec<usize> = present
            .iter()
            .map(|z| result.placements.iter().filter(|p| zones[p.host_index] == *z).count())
            .collect();
        let (low, high) = (per_zone.iter().min().unwrap(), per_zone.iter().max().unwrap());
        prop_assert!(high - low <= 1, "{:?}", per_zone);
    }

    #[test]
    fn binpack_uses_no_more_hosts_than_first_fit(
        host_count in 1usize..12,
        cpu in 1i64..4096,
        memory_mib in 1i64..4096,
        demand_cpu in 0i64..1024,
        demand_memory_mib in 0i64..1024,
        count in 1usize..30,
        by_memory in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // Equal hosts: packing must never spread wider than filling them in order.
        let hosts = hosts(host_count, cpu, memory_mib);
        let first_fit_request = common::request(demand_cpu, demand_memory_mib, count);
        let field = if by_memory { "memory" } else { "cpu" };
        let binpack_request = common::with_strategies(first_fit_request.clone(), &[("binpack", Some(field))]);
        let first_fit = place(&hosts, &first_fit_request, seed);
        let packed = place(&hosts, &binpack_request, seed);
        let used = |r: &PlacementResult| r.placements.iter().map(|p| p.host_index).collect::<BTreeSet<_>>().len();
        prop_assert_eq!(packed.placements.len(), first_fit.placements.len());
        prop_assert!(used(&packed) <= used(&first_fit), "{} > {}", used(&packed), used(&first_fit));
    }

    #[test]
    fn the_index_answers_as_place_does_through_changes(
        hosts in arb_hosts(12),
        requests in prop::collection::vec(arb_request(), 1..6),
        replacements in prop::collection::vec((0usize..12, arb_host(0)), 0..3),
        seed in any::<u64>(),
    ) {
        let mut index = HostIndex::new(hosts);
        for (step, request) in requests.iter().enumerate() {
            let seed = seed.wrapping_add(step as u64);
            let expected = place(index.hosts(), request, seed);
            let result = index.place(request, seed);
            prop_assert_eq!(&result, &expected, "step {}", step);
            for placement in &result.placements {
                index.apply(placement, &request.group);
            }
            if let Some(first) = result.placements.first() {
                index.release(first.host_index, &first.reservation, &request.group);
            }
            if let Some((host_index, replacement)) = replacements.get(step) {
                let host_index = host_index % index.len();
                index.replace_host(host_index, replacement.clone());
            }
        }
        // The columns followed the hosts: a fresh index over the same hosts agrees.
        let hosts = index.hosts().to_vec();
        let mut fresh = HostIndex::new(hosts.clone());
        for request in &requests {
            prop_assert_eq!(index.place(request, seed), fresh.place(request, seed));
            prop_assert_eq!(fresh.place(request, seed), place(&hosts, request, seed));
        }
    }
}

/// One change a control plane makes to its index between placement calls.
#[derive(Clone, Debug)]
enum Change {
    /// Place, then commit the first `committed` placements.
    Place {
        request: PlacementRequest,
        committed: usize,
    },
    /// Release the n-th committed placement still running (modulo how many run).
    Release(usize),
    Replace(usize, Host),
    Push(Host),
    /// A host's tasks moved on (started, say) while its record and groups stayed.
    SetRunning(usize, u32),
}

/// Groups the sequences place, so spread and distinctInstance see several at once.
const GROUPS: [&str; 2] = [GROUP, "service:other"];

prop_compose! {
    /// A host whose zone may be one no host had before, so cells are numbered anew.
    fn arb_changed_host()(host in arb_host(0), zone in 0usize..5, moves in any::<bool>()) -> Host {
        let mut host = host;
        if moves {
            host.attributes.insert("zone".to_owned(), Some(format!("z{zone}")));
        }
        host
    }
}

fn arb_change() -> impl proptest::strategy::Strategy<Value = Change> {
    let place = (
        arb_request(),
        0usize..GROUPS.len(),
        0usize..12,
        prop::bool::weighted(0.1),
        0usize..30,
    )
        .prop_map(|(mut request, group, count, large, committed)| {
            request.group = GROUPS[group].to_owned();
            // Mostly small calls, which keep only each cell's best hosts; now and then one
            // past that limit, which ranks every host.
            request.count = if large { 70 } else { count };
            if request.strategies.len() < 3 && group == 1 {
                request
                    .strategies
                    .push(Strategy::Spread(SpreadField::Attribute("stack".to_owned())));
            }
            Change::Place { request, committed }
        });
    prop_oneof![
        6 => place,
        2 => any::<usize>().prop_map(Change::Release),
        1 => (any::<usize>(), arb_changed_host()).prop_map(|(i, h)| Change::Replace(i, h)),
        1 => arb_changed_host().prop_map(Change::Push),
        1 => (any::<usize>(), 0u32..5).prop_map(|(i, n)| Change::SetRunning(i, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_index_answers_as_place_does_through_any_sequence_of_changes(
        hosts in arb_hosts(60),
        changes in prop::collection::vec(arb_change(), 1..24),
        seed in any::<u64>(),
    ) {
        let mut index = HostIndex::new(hosts);
        let mut running: Vec<(flotilla_scheduler::Placement, String)> = Vec::new();
        for (step, change) in changes.into_iter().enumerate() {
            match change {
                Change::Place { request, committed } => {
                    let seed = seed.wrapping_add(step as u64);
                    let expected = place(index.hosts(), &request, seed);
                    let result = index.place(&request, seed);
                    prop_assert_eq!(&result, &expected, "step {}", step);
                    for placement in result.placements.into_iter().take(committed) {
                        index.apply(&placement, &request.group);
                        running.push((placement, request.group.clone()));
                    }
                }
                Change::Release(n) if !running.is_empty() => {
                    let (placement, group) = running.swap_remove(n % running.len());
                    index.release(placement.host_index, &placement.reservation, &group);
                }
                Change::Release(_) => {}
                Change::Replace(host_index, mut host) => {
                    let host_index = host_index % index.len();
                    host.id = format!("host-{host_index}");
                    index.replace_host(host_index, host);
                    // Its tasks went with the old view of the host.
                    running.retain(|(placement, _)| placement.host_index != host_index);
                }
                Change::Push(mut host) => {
                    host.id = format!("host-{}", index.len());
                    index.push_host(host);
                }
                Change::SetRunning(host_index, count) => {
                    index.set_running_tasks_count(host_index % index.len(), count);
                }
            }
        }
        // The columns followed the hosts: a fresh index over the same hosts agrees.
        let hosts = index.hosts().to_vec();
        let mut fresh = HostIndex::new(hosts.clone());
        for group in GROUPS {
            let mut request = common::with_strategies(
                common::request(100, 100, 5),
                &[("spread", Some("attribute:zone")), ("spread", Some("instanceId"))],
            );
            request.group = group.to_owned();
            prop_assert_eq!(index.place(&request, seed), place(&hosts, &request, seed));
            prop_assert_eq!(fresh.place(&request, seed), place(&hosts, &request, seed));
        }
    }
}
