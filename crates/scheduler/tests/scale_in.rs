//! Scale-in: which tasks to stop first under each strategy.

mod common;

use std::collections::BTreeSet;

use common::{host, with_attribute};
use flotilla_scheduler::{BinpackField, Host, SpreadField, Strategy, choose_tasks_to_stop};

const CPU: Strategy = Strategy::Binpack(BinpackField::Cpu);
const MEMORY: Strategy = Strategy::Binpack(BinpackField::Memory);
const INSTANCE: Strategy = Strategy::Spread(SpreadField::Instance);

fn zone() -> Strategy {
    Strategy::Spread(SpreadField::Attribute("zone".to_owned()))
}

#[test]
fn binpack_stops_where_the_most_room_will_be_left() {
    let hosts = vec![host(0, 100, 9000), host(1, 3000, 200), host(2, 1000, 1000)];
    let candidates = [0, 1, 2, 1];
    // Host 1 has the most CPU left: both its tasks go first, in the caller's order.
    assert_eq!(
        choose_tasks_to_stop(&hosts, &candidates, &[CPU], 3, 1),
        vec![1, 3, 2]
    );
    assert_eq!(
        choose_tasks_to_stop(&hosts, &candidates, &[MEMORY], 2, 1),
        vec![0, 2]
    );
}

#[test]
fn spread_stops_from_the_fullest_host() {
    let hosts: Vec<Host> = (0..3).map(|i| host(i, 4096, 4096)).collect();
    let candidates = [0, 0, 0, 1, 2];
    let stops = choose_tasks_to_stop(&hosts, &candidates, &[INSTANCE], 3, 1);
    assert_eq!(stops[..2], [0, 1], "host 0 holds three, the others one");
    assert!([2, 3, 4].contains(&stops[2]), "{stops:?}");
}

#[test]
fn spread_by_attribute_keeps_the_zones_balanced() {
    let hosts = vec![
        with_attribute(host(0, 4096, 4096), "zone", "a"),
        with_attribute(host(1, 4096, 4096), "zone", "a"),
        with_attribute(host(2, 4096, 4096), "zone", "b"),
    ];
    // Zone a runs four tasks, zone b one.
    let candidates = [0, 0, 1, 1, 2];
    for seed in 0..10 {
        let stops = choose_tasks_to_stop(&hosts, &candidates, &[zone(), INSTANCE], 3, seed);
        assert!(
            stops.iter().all(|c| candidates[*c] != 2),
            "seed {seed}: {stops:?}"
        );
        let left_on_host_0 = 2 - stops.iter().filter(|c| candidates[**c] == 0).count();
        let left_on_host_1 = 2 - stops.iter().filter(|c| candidates[**c] == 1).count();
        assert_eq!(left_on_host_0 + left_on_host_1, 1, "seed {seed}: {stops:?}");
    }
}

#[test]
fn without_strategies_the_callers_order_holds() {
    let hosts: Vec<Host> = (0..3).map(|i| host(i, 4096, 4096)).collect();
    assert_eq!(
        choose_tasks_to_stop(&hosts, &[2, 0, 1, 0], &[], 3, 7),
        vec![0, 1, 2]
    );
}

#[test]
fn at_most_every_candidate_once() {
    let hosts: Vec<Host> = (0..3).map(|i| host(i, 4096, 4096)).collect();
    let candidates = [0, 1, 1, 2];
    for strategies in [
        vec![],
        vec![CPU],
        vec![INSTANCE],
        vec![Strategy::Random],
        vec![zone()],
    ] {
        let stops = choose_tasks_to_stop(&hosts, &candidates, &strategies, 10, 3);
        assert_eq!(stops.len(), 4, "{strategies:?}");
        assert_eq!(
            stops.iter().collect::<BTreeSet<_>>().len(),
            4,
            "{strategies:?}"
        );
    }
    assert!(choose_tasks_to_stop(&hosts, &[], &[CPU], 3, 1).is_empty());
    assert!(choose_tasks_to_stop(&hosts, &candidates, &[CPU], 0, 1).is_empty());
}

#[test]
fn random_is_replayable_from_the_seed() {
    let hosts: Vec<Host> = (0..8).map(|i| host(i, 4096, 4096)).collect();
    let candidates: Vec<usize> = (0..8).collect();
    let random = [Strategy::Random];
    assert_eq!(
        choose_tasks_to_stop(&hosts, &candidates, &random, 3, 5),
        choose_tasks_to_stop(&hosts, &candidates, &random, 3, 5)
    );
    let answers: BTreeSet<Vec<usize>> = (0..10)
        .map(|seed| choose_tasks_to_stop(&hosts, &candidates, &random, 3, seed))
        .collect();
    assert!(answers.len() > 1);
}

#[test]
fn tasks_on_unknown_hosts_rank_as_empty_hosts() {
    let hosts = vec![host(0, 10, 10)];
    // Host 5 does not exist: it has no room, so binpack stops the task on host 0 first.
    assert_eq!(
        choose_tasks_to_stop(&hosts, &[5, 0], &[CPU], 2, 1),
        vec![1, 0]
    );
}
