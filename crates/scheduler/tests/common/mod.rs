//! Builders shared by the integration tests: hosts and requests with only what a test needs.

#![allow(dead_code)]

use std::collections::BTreeMap;

use flotilla_model::Timestamp;
use flotilla_model::resources::{Demand, Resources};
use flotilla_scheduler::{Constraint, Host, PlacementRequest, PlacementResult, Strategy};

/// The group every request in these tests places.
pub const GROUP: &str = "service:web";

/// An active, connected host with `cpu` units and `memory_mib` free and nothing else.
pub fn host(index: usize, cpu: i64, memory_mib: i64) -> Host {
    let resources = Resources {
        cpu,
        memory_mib,
        ..Default::default()
    };
    Host {
        id: format!("host-{index}"),
        arn: format!("arn:aws:ecs:us-east-1:000000000000:container-instance/test/host-{index}"),
        ec2_instance_id: format!("i-{index:08x}"),
        active: true,
        agent_connected: true,
        remaining: resources.clone(),
        registered: resources,
        attributes: BTreeMap::new(),
        agent_version: Some("1.51.0".to_owned()),
        registered_at: Timestamp::from_millis(0),
        running_tasks_count: 0,
        task_groups: BTreeMap::new(),
    }
}

/// `count` identical hosts.
pub fn hosts(count: usize, cpu: i64, memory_mib: i64) -> Vec<Host> {
    (0..count).map(|i| host(i, cpu, memory_mib)).collect()
}

pub fn with_attribute(mut host: Host, name: &str, value: &str) -> Host {
    host.attributes
        .insert(name.to_owned(), Some(value.to_owned()));
    host
}

pub fn with_group_tasks(mut host: Host, group: &str, tasks: u32) -> Host {
    host.task_groups.insert(group.to_owned(), tasks);
    host.running_tasks_count += tasks;
    host
}

pub fn request(cpu: i64, memory_mib: i64, count: usize) -> PlacementRequest {
    PlacementRequest {
        demand: Demand {
            cpu,
            memory_mib,
            ..Default::default()
        },
        count,
        group: GROUP.to_owned(),
        constraints: Vec::new(),
        strategies: Vec::new(),
    }
}

pub fn with_strategies(
    mut request: PlacementRequest,
    strategies: &[(&str, Option<&str>)],
) -> PlacementRequest {
    request.strategies = strategies
        .iter()
        .map(|(kind, field)| {
            flotilla_scheduler::parse_strategy(kind, *field).expect("valid strategy")
        })
        .collect::<Vec<Strategy>>();
    request
}

pub fn member_of(expression: &str) -> Constraint {
    flotilla_scheduler::parse_constraint("memberOf", Some(expression)).expect("valid expression")
}

/// The host index of each placement, in placement order.
pub fn placed_on(result: &PlacementResult) -> Vec<usize> {
    result.placements.iter().map(|p| p.host_index).collect()
}

/// Tasks placed per host.
pub fn tasks_per_host(result: &PlacementResult, host_count: usize) -> Vec<usize> {
    let mut tasks = vec![0; host_count];
    for placement in &result.placements {
        tasks[placement.host_index] += 1;
    }
    tasks
}
