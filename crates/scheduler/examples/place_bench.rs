//! Placement throughput: by default 10,000 hosts in 3 zones, 100,000 tasks placed in calls
//! of 10 with spread(attribute:ecs.availability-zone), spread(instanceId) and a memberOf
//! constraint.
//!
//! Run with `cargo run --release -p flotilla-scheduler --example place_bench`. It runs twice:
//! through a `HostIndex` kept between calls, and through `place` on a plain `Vec<Host>`.
//! Only the time inside the placing call is measured; committing each call's placements
//! (what the plan applier does) happens between calls, outside the clock.
//!
//! Environment: `HOSTS` sets the cluster size (default 10,000), `TASKS` the tasks placed
//! (default 100,000) and `MODE` runs only `indexed` or `stateless`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_model::Timestamp;
use flotilla_model::resources::{Demand, Resources};
use flotilla_scheduler::{
    Host, HostIndex, PlacementRequest, parse_constraint, parse_strategy, place,
};

const HOSTS_DEFAULT: usize = 10_000;
const TASKS_DEFAULT: usize = 100_000;
const TASKS_PER_CALL: usize = 10;
const GROUPS: usize = 10;
const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

fn host(index: usize) -> Host {
    let resources = Resources {
        cpu: 8192,
        memory_mib: 32768,
        ports_tcp: [22, 2375, 2376, 51678, 51679].into(),
        ..Default::default()
    };
    let mut attributes: BTreeMap<String, Option<String>> = [
        ("ecs.ami-id", "ami-0123456789abcdef0"),
        ("ecs.availability-zone", ZONES[index % ZONES.len()]),
        (
            "ecs.instance-type",
            if index.is_multiple_of(2) {
                "m5.2xlarge"
            } else {
                "c5.2xlarge"
            },
        ),
        ("ecs.os-type", "linux"),
        ("ecs.os-family", "LINUX"),
        ("ecs.cpu-architecture", "x86_64"),
        ("ecs.vpc-id", "vpc-0a1b2c3d"),
        (
            "ecs.subnet-id",
            ["subnet-a", "subnet-b", "subnet-c"][index % 3],
        ),
        // Nine hosts in ten run production; the memberOf constraint keeps tasks there.
        ("stack", if index % 10 == 9 { "canary" } else { "prod" }),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), Some(value.to_owned())))
    .collect();
    for capability in [
        "com.amazonaws.ecs.capability.docker-remote-api.1.44",
        "com.amazonaws.ecs.capability.logging-driver.awslogs",
        "com.amazonaws.ecs.capability.task-iam-role",
        "ecs.capability.execution-role-awslogs",
        "ecs.capability.task-eni",
    ] {
        attributes.insert(capability.to_owned(), None);
    }
    Host {
        id: format!("{index:032x}"),
        arn: format!("arn:aws:ecs:us-east-1:000000000000:container-instance/bench/{index:032x}"),
        ec2_instance_id: format!("i-{index:017x}"),
        active: true,
        agent_connected: true,
        remaining: resources.clone(),
        registered: resources,
        attributes,
        agent_version: Some("1.89.0".to_owned()),
        registered_at: Timestamp::from_millis(1_700_000_000_000 + index as i64),
        running_tasks_count: 0,
        task_groups: BTreeMap::new(),
    }
}

/// How placements reach the hosts between calls.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `place(&hosts, ..)` on a `Vec<Host>` that the caller updates.
    Stateless,
    /// `HostIndex::place`, committing with `HostIndex::apply`.
    Indexed,
}

/// A positive count from the environment, or `default` when unset.
fn count_from_env(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => match text.replace('_', "").parse() {
            Ok(count) if count > 0 => count,
            _ => panic!("{name} must be a positive count, got {text:?}"),
        },
        Err(_) => default,
    }
}

fn main() {
    let host_count = count_from_env("HOSTS", HOSTS_DEFAULT);
    let task_count = count_from_env("TASKS", TASKS_DEFAULT);
    let modes = match std::env::var("MODE").as_deref() {
        Ok("indexed") => vec![Mode::Indexed],
        Ok("stateless") => vec![Mode::Stateless],
        Ok(other) => panic!("MODE must be indexed or stateless, got {other:?}"),
        Err(_) => vec![Mode::Indexed, Mode::Stateless],
    };
    for mode in modes {
        run(mode, host_count, task_count);
    }
}

fn run(mode: Mode, host_count: usize, task_count: usize) {
    let mut hosts: Vec<Host> = (0..host_count).map(host).collect();
    let mut index = HostIndex::new(hosts.clone());
    let constraints =
        vec![parse_constraint("memberOf", Some("attribute:stack == prod")).expect("valid")];
    let strategies = vec![
        parse_strategy("spread", Some("attribute:ecs.availability-zone")).expect("valid"),
        parse_strategy("spread", Some("instanceId")).expect("valid"),
    ];
    let demand = Demand {
        cpu: 256,
        memory_mib: 512,
        ..Default::default()
    };
    let calls = task_count / TASKS_PER_CALL;
    let mut call_durations = Vec::with_capacity(calls);
    let mut placed = 0usize;
    for call in 0..calls {
        let group = format!("service:svc-{}", call % GROUPS);
        let request = PlacementRequest {
            demand: demand.clone(),
            count: TASKS_PER_CALL,
            group: group.clone(),
            constraints: constraints.clone(),
            strategies: strategies.clone(),
        };
        let started = Instant::now();
        let result = match mode {
            Mode::Stateless => place(&hosts, &request, call as u64),
            Mode::Indexed => index.place(&request, call as u64),
        };
        call_durations.push(started.elapsed());
        assert_eq!(result.unplaced, 0, "call {call} could not place every task");
        placed += result.placements.len();
        for placement in result.placements {
            match mode {
                Mode::Stateless => {
                    let host = &mut hosts[placement.host_index];
                    host.remaining.apply(&placement.reservation);
                    *host.task_groups.entry(group.clone()).or_default() += 1;
                    host.running_tasks_count += 1;
                }
                Mode::Indexed => index.apply(&placement, &group),
            }
        }
    }
    let hosts = match mode {
        Mode::Stateless => hosts,
        Mode::Indexed => index.into_hosts(),
    };
    let total: Duration = call_durations.iter().sum();
    call_durations.sort();
    let percentile = |p: f64| {
        call_durations[((call_durations.len() as f64 * p) as usize).min(call_durations.len() - 1)]
    };
    let per_host: Vec<u32> = hosts.iter().map(|h| h.running_tasks_count).collect();
    let per_zone: Vec<u32> = (0..ZONES.len())
        .map(|z| per_host.iter().skip(z).step_by(ZONES.len()).sum())
        .collect();
    println!(
        "{mode:?}: {placed} placements on {host_count} hosts in {calls} calls of {TASKS_PER_CALL}: {:.0} placements/s",
        placed as f64 / total.as_secs_f64()
    );
    println!(
        "  per call: p50 {:?}, p99 {:?}, max {:?}",
        percentile(0.50),
        percentile(0.99),
        call_durations[call_durations.len() - 1]
    );
    println!(
        "  tasks per zone {per_zone:?}; per production host min {} max {}",
        per_host
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 10 != 9)
            .map(|(_, n)| *n)
            .min()
            .unwrap_or(0),
        per_host.iter().max().copied().unwrap_or(0)
    );
}
