//! Task placement, decided in pure functions: filter hosts by what they have left
//! (CPU, memory, ports, GPUs) and by constraints, rank the rest by the strategies in order,
//! and pick. No IO, no clock, no global randomness: a seed makes every answer replayable.

pub mod query;

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use flotilla_model::Timestamp;
use flotilla_model::resources::{Demand, Reservation, Resources, Shortfall};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A read-only view of one container instance.
#[derive(Clone, Debug)]
pub struct Host {
    pub id: String,
    pub arn: String,
    pub ec2_instance_id: String,
    /// Status ACTIVE; DRAINING and other states never get new tasks.
    pub active: bool,
    pub agent_connected: bool,
    pub remaining: Resources,
    pub registered: Resources,
    pub attributes: BTreeMap<String, Option<String>>,
    pub agent_version: Option<String>,
    pub registered_at: Timestamp,
    pub running_tasks_count: u32,
    /// Non-stopped tasks on this host by task group (`family:web`, `service:api`).
    pub task_groups: BTreeMap<String, u32>,
}

#[derive(Clone, Debug)]
pub enum Constraint {
    DistinctInstance,
    MemberOf(query::Expression),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinpackField {
    Cpu,
    Memory,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpreadField {
    Instance,
    Attribute(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    Binpack(BinpackField),
    Spread(SpreadField),
    Random,
}

/// A placement constraint or strategy that is not valid.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PlacementError {
    #[error("Invalid placement constraint type '{0}'; accepted: distinctInstance, memberOf.")]
    ConstraintType(String),
    #[error("A memberOf placement constraint needs an expression.")]
    MissingExpression,
    #[error("A distinctInstance placement constraint takes no expression.")]
    UnexpectedExpression,
    #[error("{0}")]
    Expression(#[from] query::QueryError),
    #[error("Invalid placement strategy type '{0}'; accepted: binpack, spread, random.")]
    StrategyType(String),
    #[error("Invalid field '{field}' for the {strategy} placement strategy; accepted: {accepted}.")]
    StrategyField {
        strategy: &'static str,
        field: String,
        accepted: &'static str,
    },
}

pub fn parse_constraint(
    kind: &str,
    expression: Option<&str>,
) -> Result<Constraint, PlacementError> {
    let expression = expression.filter(|e| !e.trim().is_empty());
    match kind {
        "distinctInstance" if expression.is_none() => Ok(Constraint::DistinctInstance),
        "distinctInstance" => Err(PlacementError::UnexpectedExpression),
        "memberOf" => match expression {
            Some(text) => Ok(Constraint::MemberOf(query::parse(text)?)),
            None => Err(PlacementError::MissingExpression),
        },
        other => Err(PlacementError::ConstraintType(other.to_owned())),
    }
}

pub fn parse_strategy(kind: &str, field: Option<&str>) -> Result<Strategy, PlacementError> {
    match kind {
        "binpack" => match field.map(str::to_ascii_lowercase).as_deref() {
            Some("cpu") => Ok(Strategy::Binpack(BinpackField::Cpu)),
            Some("memory") => Ok(Strategy::Binpack(BinpackField::Memory)),
            _ => Err(PlacementError::StrategyField {
                strategy: "binpack",
                field: field.unwrap_or_default().to_owned(),
                accepted: "cpu, memory",
            }),
        },
        "spread" => match field {
            Some("instanceId" | "host") => Ok(Strategy::Spread(SpreadField::Instance)),
            Some(f) if f.starts_with("attribute:") && f.len() > "attribute:".len() => Ok(
                Strategy::Spread(SpreadField::Attribute(f["attribute:".len()..].to_owned())),
            ),
            _ => Err(PlacementError::StrategyField {
                strategy: "spread",
                field: field.unwrap_or_default().to_owned(),
                accepted: "instanceId, host, attribute:NAME",
            }),
        },
        "random" if field.is_none_or(str::is_empty) => Ok(Strategy::Random),
        "random" => Err(PlacementError::StrategyField {
            strategy: "random",
            field: field.unwrap_or_default().to_owned(),
            accepted: "no field",
        }),
        other => Err(PlacementError::StrategyType(other.to_owned())),
    }
}

#[derive(Clone, Debug)]
pub struct PlacementRequest {
    pub demand: Demand,
    pub count: usize,
    /// The task group placed (`family:NAME` or `service:NAME`): spread and distinctInstance count it.
    pub group: String,
    pub constraints: Vec<Constraint>,
    pub strategies: Vec<Strategy>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub host_index: usize,
    pub reservation: Reservation,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RejectReason {
    Resource(Shortfall),
    Inactive,
    AgentDisconnected,
    DistinctInstance,
    MemberOf,
}

impl RejectReason {
    /// The words ECS uses in RunTask's `failures[].reason`.
    pub fn ecs_reason(&self) -> String {
        match self {
            Self::Resource(shortfall) => shortfall.reason().to_owned(),
            Self::Inactive => "INACTIVE".to_owned(),
            Self::AgentDisconnected => "AGENT".to_owned(),
            Self::DistinctInstance => {
                "DistinctInstance placement constraint unsatisfied.".to_owned()
            }
            Self::MemberOf => "MemberOf placement constraint unsatisfied.".to_owned(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub host_index: usize,
    pub reason: RejectReason,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlacementResult {
    pub placements: Vec<Placement>,
    pub unplaced: usize,
    /// When tasks went unplaced: for every host, why it could not take another one.
    pub rejections: Vec<Rejection>,
}

/// Why `host` can never take a task of this request, whatever was placed before.
fn static_rejection(host: &Host, request: &PlacementRequest) -> Option<RejectReason> {
    if !host.active {
        return Some(RejectReason::Inactive);
    }
    if !host.agent_connected {
        return Some(RejectReason::AgentDisconnected);
    }
    for constraint in &request.constraints {
        if let Constraint::MemberOf(expression) = constraint
            && !expression.matches(host)
        {
            return Some(RejectReason::MemberOf);
        }
    }
    None
}

/// Mutable state of one placement call: what is left where, and group counts.
struct Working<'a> {
    hosts: &'a [Host],
    /// Hosts whose remaining resources changed in this call.
    remaining: HashMap<usize, Resources>,
    group_on_host: Vec<u32>,
    /// Per spread-by-attribute strategy: attribute value -> tasks of the group.
    buckets: Vec<HashMap<Option<String>, u32>>,
    spread_attributes: Vec<Option<String>>,
}

impl<'a> Working<'a> {
    fn new(hosts: &'a [Host], request: &PlacementRequest) -> Self {
        let group_on_host: Vec<u32> = hosts
            .iter()
            .map(|h| h.task_groups.get(&request.group).copied().unwrap_or(0))
            .collect();
        let spread_attributes: Vec<Option<String>> = request
            .strategies
            .iter()
            .map(|s| match s {
                Strategy::Spread(SpreadField::Attribute(name)) => Some(name.clone()),
                _ => None,
            })
            .collect();
        let buckets = spread_attributes
            .iter()
            .map(|attribute| {
                let mut counts = HashMap::new();
                if let Some(name) = attribute {
                    for (i, host) in hosts.iter().enumerate() {
                        let value = host.attributes.get(name).cloned().flatten();
                        *counts.entry(value).or_insert(0) += group_on_host[i];
                    }
                }
                counts
            })
            .collect();
        Self {
            hosts,
            remaining: HashMap::new(),
            group_on_host,
            buckets,
            spread_attributes,
        }
    }

    fn remaining(&self, i: usize) -> &Resources {
        self.remaining.get(&i).unwrap_or(&self.hosts[i].remaining)
    }

    fn dynamic_rejection(&self, i: usize, request: &PlacementRequest) -> Option<RejectReason> {
        if request
            .constraints
            .iter()
            .any(|c| matches!(c, Constraint::DistinctInstance))
            && self.group_on_host[i] > 0
        {
            return Some(RejectReason::DistinctInstance);
        }
        self.remaining(i)
            .check(&request.demand)
            .err()
            .map(RejectReason::Resource)
    }

    fn attribute_value(&self, i: usize, name: &str) -> Option<String> {
        self.hosts[i].attributes.get(name).cloned().flatten()
    }

    /// Lower is better, compared strategy by strategy.
    fn score(&self, i: usize, request: &PlacementRequest, rng: &mut ChaCha8Rng) -> [i64; 6] {
        let mut key = [0i64; 6];
        for (slot, strategy) in request.strategies.iter().take(5).enumerate() {
            key[slot] = match strategy {
                Strategy::Binpack(BinpackField::Cpu) => self.remaining(i).cpu - request.demand.cpu,
                Strategy::Binpack(BinpackField::Memory) => {
                    self.remaining(i).memory_mib - request.demand.memory_mib
                }
                Strategy::Spread(SpreadField::Instance) => i64::from(self.group_on_host[i]),
                Strategy::Spread(SpreadField::Attribute(name)) => {
                    let value = self.attribute_value(i, name);
                    i64::from(self.buckets[slot].get(&value).copied().unwrap_or(0))
                }
                Strategy::Random => rng.random::<u32>() as i64,
            };
        }
        key[5] = i as i64;
        key
    }

    fn reserve(&mut self, i: usize, request: &PlacementRequest) -> Option<Reservation> {
        let mut remaining = self.remaining(i).clone();
        let reservation = remaining.reserve(&request.demand).ok()?;
        self.remaining.insert(i, remaining);
        self.group_on_host[i] += 1;
        for (slot, attribute) in self.spread_attributes.iter().enumerate() {
            if let Some(name) = attribute {
                let value = self.attribute_value(i, name);
                *self.buckets[slot].entry(value).or_insert(0) += 1;
            }
        }
        Some(reservation)
    }
}

/// Places `request.count` tasks one after another on private copies of the hosts.
pub fn place(hosts: &[Host], request: &PlacementRequest, seed: u64) -> PlacementResult {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let static_rejections: Vec<Option<RejectReason>> =
        hosts.iter().map(|h| static_rejection(h, request)).collect();
    let candidates: Vec<usize> = (0..hosts.len())
        .filter(|i| static_rejections[*i].is_none())
        .collect();
    let mut working = Working::new(hosts, request);
    let mut placements = Vec::with_capacity(request.count);
    for _ in 0..request.count {
        let mut best: Option<([i64; 6], usize)> = None;
        for &i in &candidates {
            if working.dynamic_rejection(i, request).is_some() {
                continue;
            }
            let key = working.score(i, request, &mut rng);
            if best
                .as_ref()
                .is_none_or(|(best_key, _)| key.cmp(best_key) == Ordering::Less)
            {
                best = Some((key, i));
            }
        }
        let Some((_, chosen)) = best else { break };
        match working.reserve(chosen, request) {
            Some(reservation) => placements.push(Placement {
                host_index: chosen,
                reservation,
            }),
            None => break,
        }
    }
    let unplaced = request.count - placements.len();
    let rejections = if unplaced > 0 {
        (0..hosts.len())
            .filter_map(|i| {
                static_rejections[i]
                    .clone()
                    .or_else(|| working.dynamic_rejection(i, request))
                    .map(|reason| Rejection {
                        host_index: i,
                        reason,
                    })
            })
            .collect()
    } else {
        Vec::new()
    };
    PlacementResult {
        placements,
        unplaced,
        rejections,
    }
}

/// For every host: would one task of `request` fit, and if not, why.
pub fn explain(
    hosts: &[Host],
    request: &PlacementRequest,
) -> Vec<(usize, Result<(), RejectReason>)> {
    let working = Working::new(hosts, request);
    (0..hosts.len())
        .map(|i| {
            let verdict = match static_rejection(&hosts[i], request)
                .or_else(|| working.dynamic_rejection(i, request))
            {
                Some(reason) => Err(reason),
                None => Ok(()),
            };
            (i, verdict)
        })
        .collect()
}

/// Scale-in: which candidate tasks (given by the host index each runs on) to stop first.
/// binpack stops where the most room will be left; spread stops from the fullest bucket.
pub fn choose_tasks_to_stop(
    hosts: &[Host],
    candidates: &[usize],
    strategies: &[Strategy],
    count: usize,
    seed: u64,
) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut on_host: HashMap<usize, i64> = HashMap::new();
    for &h in candidates {
        *on_host.entry(h).or_default() += 1;
    }
    let mut room: HashMap<usize, (i64, i64)> = candidates
        .iter()
        .map(|&h| (h, (hosts[h].remaining.cpu, hosts[h].remaining.memory_mib)))
        .collect();
    let mut buckets: Vec<HashMap<Option<String>, i64>> = strategies
        .iter()
        .map(|s| {
            let mut counts = HashMap::new();
            if let Strategy::Spread(SpreadField::Attribute(name)) = s {
                for &h in candidates {
                    *counts
                        .entry(hosts[h].attributes.get(name).cloned().flatten())
                        .or_insert(0) += 1;
                }
            }
            counts
        })
        .collect();
    let mut left: Vec<usize> = (0..candidates.len()).collect();
    let mut chosen = Vec::new();
    while chosen.len() < count && !left.is_empty() {
        let mut best: Option<(Vec<i64>, usize)> = None;
        for (position, &c) in left.iter().enumerate() {
            let h = candidates[c];
            let mut key: Vec<i64> = strategies
                .iter()
                .enumerate()
                .map(|(slot, s)| match s {
                    // Larger is better here, so negate.
                    Strategy::Binpack(BinpackField::Cpu) => -room[&h].0,
                    Strategy::Binpack(BinpackField::Memory) => -room[&h].1,
                    Strategy::Spread(SpreadField::Instance) => -on_host[&h],
                    Strategy::Spread(SpreadField::Attribute(name)) => -buckets[slot]
                        .get(&hosts[h].attributes.get(name).cloned().flatten())
                        .copied()
                        .unwrap_or(0),
                    Strategy::Random => rng.random::<u32>() as i64,
                })
                .collect();
            key.push(c as i64);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, position));
            }
        }
        let Some((_, position)) = best else { break };
        let c = left.remove(position);
        let h = candidates[c];
        *on_host.entry(h).or_default() -= 1;
        for (slot, s) in strategies.iter().enumerate() {
            if let Strategy::Spread(SpreadField::Attribute(name)) = s {
                *buckets[slot]
                    .entry(hosts[h].attributes.get(name).cloned().flatten())
                    .or_insert(0) -= 1;
            }
        }
        if let Some(r) = room.get_mut(&h) {
            // Stopping a task frees roughly an even share of what the host's tasks use.
            r.0 += 1;
            r.1 += 1;
        }
        chosen.push(c);
    }
    chosen
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn host(i: usize, cpu: i64, memory_mib: i64) -> Host {
        Host {
            id: format!("h{i}"),
            arn: format!("arn:h{i}"),
            ec2_instance_id: format!("i-{i}"),
            active: true,
            agent_connected: true,
            remaining: Resources {
                cpu,
                memory_mib,
                ..Default::default()
            },
            registered: Resources {
                cpu,
                memory_mib,
                ..Default::default()
            },
            attributes: BTreeMap::new(),
            agent_version: Some("1.2.3".into()),
            registered_at: Timestamp::from_millis(0),
            running_tasks_count: 0,
            task_groups: BTreeMap::new(),
        }
    }

    fn request(cpu: i64, memory_mib: i64, count: usize) -> PlacementRequest {
        PlacementRequest {
            demand: Demand {
                cpu,
                memory_mib,
                ..Default::default()
            },
            count,
            group: "family:web".into(),
            constraints: vec![],
            strategies: vec![],
        }
    }

    fn hosts_of(result: &PlacementResult) -> Vec<usize> {
        result.placements.iter().map(|p| p.host_index).collect()
    }

    #[test]
    fn first_fit_without_strategies_and_shortfall_reasons() {
        let hosts = vec![host(0, 512, 512), host(1, 2048, 2048)];
        let result = place(&hosts, &request(512, 256, 3), 1);
        assert_eq!(hosts_of(&result), vec![0, 1, 1]);
        let result = place(&hosts, &request(4096, 1, 1), 1);
        assert_eq!(result.unplaced, 1);
        assert_eq!(result.rejections[0].reason.ecs_reason(), "RESOURCE:CPU");
        let result = place(&hosts, &request(1, 4096, 1), 1);
        assert_eq!(result.rejections[1].reason.ecs_reason(), "RESOURCE:MEMORY");
    }

    #[test]
    fn ports_and_gpus() {
        let mut hosts = vec![host(0, 4096, 4096), host(1, 4096, 4096)];
        hosts[1].remaining.gpu_ids = ["g0".to_owned()].into();
        let mut r = request(1, 1, 3);
        r.demand.ports_tcp = [80].into();
        let result = place(&hosts, &r, 1);
        assert_eq!(hosts_of(&result), vec![0, 1]);
        assert_eq!(
            result.rejections[0].reason,
            RejectReason::Resource(Shortfall::Ports)
        );
        let mut r = request(1, 1, 2);
        r.demand.gpus = 1;
        let result = place(&hosts, &r, 1);
        assert_eq!(hosts_of(&result), vec![1]);
        assert_eq!(
            result.placements[0].reservation.gpu_ids,
            ["g0".to_owned()].into()
        );
        assert_eq!(result.rejections[0].reason.ecs_reason(), "RESOURCE:GPU");
    }

    #[test]
    fn inactive_and_disconnected_hosts_are_skipped() {
        let mut hosts = vec![
            host(0, 4096, 4096),
            host(1, 4096, 4096),
            host(2, 4096, 4096),
        ];
        hosts[0].active = false;
        hosts[1].agent_connected = false;
        let result = place(&hosts, &request(1, 1, 1), 1);
        assert_eq!(hosts_of(&result), vec![2]);
    }

    #[test]
    fn distinct_instance_and_member_of() {
        let mut hosts = vec![
            host(0, 4096, 4096),
            host(1, 4096, 4096),
            host(2, 4096, 4096),
        ];
        hosts[2]
            .attributes
            .insert("stack".into(), Some("prod".into()));
        hosts[0].task_groups.insert("family:web".into(), 1);
        let mut r = request(1, 1, 3);
        r.constraints = vec![Constraint::DistinctInstance];
        let result = place(&hosts, &r, 1);
        assert_eq!(hosts_of(&result), vec![1, 2]);
        assert_eq!(result.rejections[0].reason, RejectReason::DistinctInstance);
        let mut r = request(1, 1, 2);
        r.constraints =
            vec![parse_constraint("memberOf", Some("attribute:stack == prod")).unwrap()];
        let result = place(&hosts, &r, 1);
        assert_eq!(hosts_of(&result), vec![2, 2]);
        assert!(parse_constraint("memberOf", Some("stack ==")).is_err());
        assert!(parse_constraint("sometimes", None).is_err());
    }

    #[test]
    fn binpack_and_spread() {
        let hosts = vec![
            host(0, 4096, 4096),
            host(1, 1024, 4096),
            host(2, 2048, 4096),
        ];
        let mut r = request(512, 1, 2);
        r.strategies = vec![Strategy::Binpack(BinpackField::Cpu)];
        assert_eq!(hosts_of(&place(&hosts, &r, 1)), vec![1, 1]);
        r.strategies = vec![Strategy::Spread(SpreadField::Instance)];
        r.count = 3;
        let mut spread = hosts_of(&place(&hosts, &r, 1));
        spread.sort();
        assert_eq!(spread, vec![0, 1, 2]);
        let mut zoned = vec![
            host(0, 4096, 4096),
            host(1, 4096, 4096),
            host(2, 4096, 4096),
        ];
        zoned[0].attributes.insert("zone".into(), Some("a".into()));
        zoned[1].attributes.insert("zone".into(), Some("a".into()));
        zoned[2].attributes.insert("zone".into(), Some("b".into()));
        r.strategies = vec![
            parse_strategy("spread", Some("attribute:zone")).unwrap(),
            Strategy::Spread(SpreadField::Instance),
        ];
        r.count = 4;
        let placed = hosts_of(&place(&zoned, &r, 1));
        let in_b = placed.iter().filter(|i| **i == 2).count();
        assert_eq!(in_b, 2, "two per zone: {placed:?}");
        assert!(parse_strategy("binpack", Some("disk")).is_err());
        assert!(parse_strategy("random", Some("x")).is_err());
    }

    #[test]
    fn random_is_deterministic_per_seed() {
        let hosts: Vec<Host> = (0..20).map(|i| host(i, 4096, 4096)).collect();
        let mut r = request(1, 1, 5);
        r.strategies = vec![Strategy::Random];
        assert_eq!(place(&hosts, &r, 7), place(&hosts, &r, 7));
        let differ =
            (0..10).any(|s| hosts_of(&place(&hosts, &r, s)) != hosts_of(&place(&hosts, &r, 99)));
        assert!(differ);
    }

    #[test]
    fn scale_in_picks_as_strategies_say() {
        let hosts = vec![host(0, 100, 100), host(1, 3000, 3000)];
        let order = choose_tasks_to_stop(
            &hosts,
            &[0, 1, 1],
            &[Strategy::Binpack(BinpackField::Cpu)],
            1,
            1,
        );
        assert_eq!(
            order,
            vec![1],
            "binpack stops where the most room will be left"
        );
        let order = choose_tasks_to_stop(
            &hosts,
            &[0, 1, 1],
            &[Strategy::Spread(SpreadField::Instance)],
            1,
            1,
        );
        assert!(
            order == vec![1] || order == vec![2],
            "spread stops on the host with most tasks"
        );
    }

    mod properties {
        use proptest::prelude::{Strategy as _, any, prop_assert, prop_assert_eq, proptest};

        use super::*;

        fn arb_hosts() -> impl proptest::strategy::Strategy<Value = Vec<Host>> {
            proptest::collection::vec((1i64..4096, 1i64..4096, 0u8..3, any::<bool>()), 1..12)
                .prop_map(|specs| {
                    specs
                        .into_iter()
                        .enumerate()
                        .map(|(i, (cpu, memory, zone, prod))| {
                            let mut h = host(i, cpu, memory);
                            h.remaining.ports_tcp = [22].into();
                            h.attributes.insert("zone".into(), Some(format!("z{zone}")));
                            if prod {
                                h.attributes.insert("stack".into(), Some("prod".into()));
                            }
                            h
                        })
                        .collect()
                })
        }

        proptest! {
            #[test]
            fn never_oversubscribes_and_constraints_hold(
                hosts in arb_hosts(),
                cpu in 0i64..1024,
                memory in 1i64..1024,
                count in 1usize..20,
                port in proptest::option::of(20u16..25),
                distinct in any::<bool>(),
                seed in any::<u64>(),
            ) {
                let mut r = request(cpu, memory, count);
                if let Some(port) = port { r.demand.ports_tcp = [port].into(); }
                r.constraints.push(parse_constraint("memberOf", Some("attribute:stack == prod")).unwrap());
                if distinct { r.constraints.push(Constraint::DistinctInstance); }
                r.strategies = vec![Strategy::Random];
                let result = place(&hosts, &r, seed);
                prop_assert_eq!(result.placements.len() + result.unplaced, count);
                let mut used: HashMap<usize, (i64, i64, usize)> = HashMap::new();
                for p in &result.placements {
                    let e = used.entry(p.host_index).or_default();
                    e.0 += cpu; e.1 += memory; e.2 += 1;
                    prop_assert_eq!(hosts[p.host_index].attributes.get("stack"), Some(&Some("prod".to_owned())));
                }
                for (h, (c, m, n)) in used {
                    prop_assert!(c <= hosts[h].remaining.cpu && m <= hosts[h].remaining.memory_mib);
                    if port.is_some() || distinct { prop_assert!(n <= 1); }
                }
            }

            #[test]
            fn spread_stays_within_one_of_even(n_hosts in 1usize..10, count in 1usize..40) {
                let hosts: Vec<Host> = (0..n_hosts).map(|i| host(i, 100_000, 100_000)).collect();
                let mut r = request(1, 1, count);
                r.strategies = vec![Strategy::Spread(SpreadField::Instance)];
                let result = place(&hosts, &r, 3);
                let mut per = vec![0usize; n_hosts];
                for p in &result.placements { per[p.host_index] += 1; }
                let (lo, hi) = (per.iter().min().unwrap(), per.iter().max().unwrap());
                prop_assert!(hi - lo <= 1, "{per:?}");
            }

            #[test]
            fn binpack_uses_no_more_hosts_than_first_fit(hosts in arb_hosts(), cpu in 1i64..512, count in 1usize..15) {
                // Equal-sized hosts: the classic case where packing must not spread.
                let hosts: Vec<Host> = hosts.iter().enumerate().map(|(i, _)| host(i, 2048, 2048)).collect();
                let mut r = request(cpu, 1, count);
                let first_fit = place(&hosts, &r, 1);
                r.strategies = vec![Strategy::Binpack(BinpackField::Cpu)];
                let packed = place(&hosts, &r, 1);
                let distinct = |res: &PlacementResult| res.placements.iter().map(|p| p.host_index).collect::<std::collections::BTreeSet<_>>().len();
                prop_assert_eq!(packed.placements.len(), first_fit.placements.len());
                prop_assert!(distinct(&packed) <= distinct(&first_fit));
            }
        }
    }
}
