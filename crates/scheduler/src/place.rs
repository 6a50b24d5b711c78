//! Placing tasks and explaining why hosts cannot take them.
//!
//! One pass over the hosts checks everything that cannot change during the call (status,
//! agent, constraints, what each host had left) and keeps each host that could take a task
//! as a small `Candidate`. Tasks are then placed one at a time on those private copies, so
//! later tasks see earlier ones; only the chosen candidate changes after each task, and the
//! per-attribute spread counts are kept up to date incrementally.
//!
//! Ties left after every strategy are broken by the seed: a hash of the host index with a
//! salt drawn from `ChaCha8Rng`, drawn once per call, or once per task when the strategies
//! include `random`. Spreading equal hosts at random keeps evaluations from piling onto the
//! first hosts of the list. With no strategy at all the first host in order that fits wins
//! (first fit), the plain deterministic baseline.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use flotilla_model::resources::{Reservation, Shortfall};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::RANKS_MAX;
use crate::query::Expression;
use crate::{
    BinpackField, Constraint, Host, Placement, PlacementRequest, PlacementResult, RejectReason,
    Rejection, SpreadField, Strategy,
};

/// Room reserved up front for placements; a huge `count` grows the list only as tasks fit.
const PLACEMENTS_PREALLOCATED_MAX: usize = 1024;

/// One strategy as the ranking sees it; for every one, lower is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rank {
    CpuLeft,
    MemoryLeft,
    GroupTasksOnHost,
    /// Tasks of the group among hosts sharing this host's value of spread attribute `slot`.
    GroupTasksInBucket(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TieBreak {
    /// First fit: no strategies were asked for.
    HostOrder,
    /// A salted hash of the host index; the salt is fixed for the call.
    SeededPerCall,
    /// As above, with a new salt for every task (`random`).
    SeededPerTask,
}

/// A request compiled for one call.
pub(crate) struct Plan<'r> {
    pub(crate) request: &'r PlacementRequest,
    ranks: Vec<Rank>,
    tie_break: TieBreak,
    pub(crate) distinct_instance: bool,
    pub(crate) member_of: Vec<&'r Expression>,
    /// Whether a `memberOf` answer can change as this call places tasks.
    pub(crate) member_of_depends_on_tasks: bool,
    /// The attribute of each spread-by-attribute rank, by slot.
    pub(crate) spread_attributes: Vec<&'r str>,
    pub(crate) has_fixed_ports: bool,
}

impl<'r> Plan<'r> {
    pub(crate) fn new(request: &'r PlacementRequest) -> Self {
        let mut ranks = Vec::new();
        let mut spread_attributes = Vec::new();
        let mut tie_break = if request.strategies.is_empty() {
            TieBreak::HostOrder
        } else {
            TieBreak::SeededPerCall
        };
        for strategy in request.strategies.iter().take(RANKS_MAX) {
            ranks.push(match strategy {
                Strategy::Binpack(BinpackField::Cpu) => Rank::CpuLeft,
                Strategy::Binpack(BinpackField::Memory) => Rank::MemoryLeft,
                Strategy::Spread(SpreadField::Instance) => Rank::GroupTasksOnHost,
                Strategy::Spread(SpreadField::Attribute(name)) => {
                    spread_attributes.push(name.as_str());
                    Rank::GroupTasksInBucket(spread_attributes.len() - 1)
                }
                Strategy::Random => {
                    // Random never ties, so nothing after it can rank.
                    tie_break = TieBreak::SeededPerTask;
                    break;
                }
            });
        }
        let member_of: Vec<&Expression> = request
            .constraints
            .iter()
            .filter_map(|c| match c {
                Constraint::MemberOf(expression) => Some(expression),
                Constraint::DistinctInstance => None,
            })
            .collect();
        Plan {
            request,
            ranks,
            tie_break,
            distinct_instance: request
                .constraints
                .iter()
                .any(|c| matches!(c, Constraint::DistinctInstance)),
            member_of_depends_on_tasks: member_of.iter().any(|e| e.depends_on_tasks()),
            member_of,
            spread_attributes,
            has_fixed_ports: !request.demand.ports_tcp.is_empty()
                || !request.demand.ports_udp.is_empty(),
        }
    }

    /// The ranks a candidate's own columns decide, in order: all but spread by attribute,
    /// which is equal for candidates of one cell.
    pub(crate) fn local_ranks(&self) -> impl Iterator<Item = Rank> + '_ {
        self.ranks
            .iter()
            .copied()
            .filter(|rank| !matches!(rank, Rank::GroupTasksInBucket(_)))
    }

    /// Whether the tie-break order is fixed for the whole call (not drawn again per task).
    pub(crate) fn ties_fixed_for_call(&self) -> bool {
        self.tie_break != TieBreak::SeededPerTask
    }

    /// Whether ties go to the first host in order (no strategies at all).
    pub(crate) fn first_fit(&self) -> bool {
        self.tie_break == TieBreak::HostOrder
    }

    /// The tie-break key of a host when it is fixed for the call; lower wins.
    pub(crate) fn tie_key(&self, salt: u64, host_index: usize) -> u64 {
        match self.tie_break {
            TieBreak::HostOrder => host_index as u64,
            TieBreak::SeededPerCall => tie_hash(salt, host_index),
            TieBreak::SeededPerTask => 0,
        }
    }

    /// Why `host` cannot take one more task, given what it has left (`fit`), the tasks of the
    /// group on it and how many of those this call placed. ECS's order: status, agent,
    /// resources, then constraints.
    pub(crate) fn rejection(
        &self,
        host: &Host,
        fit: Result<(), Shortfall>,
        group_tasks: u32,
        placed_tasks: u32,
    ) -> Option<RejectReason> {
        if !host.active {
            return Some(RejectReason::Inactive);
        }
        if !host.agent_connected {
            return Some(RejectReason::AgentDisconnected);
        }
        if let Err(shortfall) = fit {
            return Some(RejectReason::Resource(shortfall));
        }
        if self.distinct_instance && group_tasks > 0 {
            return Some(RejectReason::DistinctInstance);
        }
        let member = |e: &&Expression| {
            if placed_tasks == 0 {
                e.matches(host)
            } else {
                e.matches_with_placed(host, &self.request.group, placed_tasks)
            }
        };
        if !self.member_of.iter().all(member) {
            return Some(RejectReason::MemberOf);
        }
        None
    }
}

fn group_tasks(host: &Host, group: &str) -> u32 {
    // Most hosts run few groups; skip the lookup on hosts with none.
    if host.task_groups.is_empty() {
        0
    } else {
        crate::lookup(&host.task_groups, group)
            .copied()
            .unwrap_or(0)
    }
}

/// A host that could take at least one task when the call began: its private copy.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub(crate) host_index: usize,
    pub(crate) cpu: i64,
    pub(crate) memory_mib: i64,
    pub(crate) gpus_free: usize,
    /// Tasks of the group on the host, including those placed by this call.
    pub(crate) group_tasks: u32,
    placed_tasks: u32,
    /// Set once the candidate cannot take another task.
    rejection: Option<RejectReason>,
    /// Bucket id per spread attribute slot.
    pub(crate) buckets: [u32; RANKS_MAX],
    /// The tie-break key when it is fixed for the call.
    tie: u64,
}

impl Candidate {
    pub(crate) fn new(
        host_index: usize,
        cpu: i64,
        memory_mib: i64,
        gpus_free: usize,
        group_tasks: u32,
    ) -> Self {
        Candidate {
            host_index,
            cpu,
            memory_mib,
            gpus_free,
            group_tasks,
            placed_tasks: 0,
            rejection: None,
            buckets: [0; RANKS_MAX],
            tie: 0,
        }
    }
}

/// FNV-1a: attribute values are short, and SipHash's DoS resistance buys nothing here.
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FnvHashMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// Up to this many distinct values are found by a scan; more go through a hash map.
const VALUES_SCANNED_MAX: usize = 8;

/// Numbers the distinct values of one attribute in order of first sight. Hosts without the
/// attribute share one bucket of their own, as ECS groups them.
#[derive(Default)]
pub(crate) struct Interner<'h> {
    values: Vec<Option<&'h str>>,
    ids: FnvHashMap<Option<&'h str>, u32>,
}

impl<'h> Interner<'h> {
    pub(crate) fn id(&mut self, value: Option<&'h str>) -> u32 {
        let same = |known: &Option<&str>| match (known, value) {
            (Some(a), Some(b)) => a.len() == b.len() && a == &b,
            (None, None) => true,
            _ => false,
        };
        if self.values.len() <= VALUES_SCANNED_MAX {
            if let Some(id) = self.values.iter().position(same) {
                return id as u32;
            }
        } else if let Some(id) = self.ids.get(&value) {
            return *id;
        }
        let id = self.values.len() as u32;
        self.values.push(value);
        if self.values.len() > VALUES_SCANNED_MAX {
            if self.ids.is_empty() {
                self.ids = self
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (*v, i as u32))
                    .collect();
            } else {
                self.ids.insert(value, id);
            }
        }
        id
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}

/// A host's value of `attribute`, `None` when it has no such attribute.
pub(crate) fn attribute_value<'h>(host: &'h Host, attribute: &str) -> Option<&'h str> {
    crate::lookup(&host.attributes, attribute).map(|v| v.as_deref().unwrap_or_default())
}

/// Salted 64-bit mix (splitmix64's finaliser): cheap, and uniform enough to break ties.
pub(crate) fn tie_hash(salt: u64, host_index: usize) -> u64 {
    let mut z = salt ^ (host_index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Keeping only each cell's best candidates pays off up to this many tasks per call; larger
/// calls rank every candidate for every task.
pub(crate) const CONTENDERS_PER_CELL_MAX: usize = 64;

/// The mutable state of one call.
pub(crate) struct Call<'h, 'r> {
    hosts: &'h [Host],
    plan: Plan<'r>,
    /// In host order.
    candidates: Vec<Candidate>,
    /// Per spread attribute slot: tasks of the group per bucket id.
    bucket_tasks: Vec<Vec<u32>>,
    /// Positions in `candidates` that can still win a task in this call.
    contenders: Vec<usize>,
    /// Salt of the tie-break hash; drawn again for every task under `random`.
    salt: u64,
}

impl<'h, 'r> Call<'h, 'r> {
    /// Builds a call by reading every host: the path for callers without a [`crate::HostIndex`].
    fn scanning(hosts: &'h [Host], request: &'r PlacementRequest, salt: u64) -> Self {
        let plan = Plan::new(request);
        let mut interners: Vec<Interner> = plan
            .spread_attributes
            .iter()
            .map(|_| Interner::default())
            .collect();
        let mut bucket_tasks: Vec<Vec<u32>> = vec![Vec::new(); plan.spread_attributes.len()];
        let mut candidates = Vec::new();
        for (host_index, host) in hosts.iter().enumerate() {
            let group_tasks = group_tasks(host, &request.group);
            let fit = host.remaining.check(&request.demand);
            let candidate = plan.rejection(host, fit, group_tasks, 0).is_none();
            // Tasks on hosts that are not ACTIVE are about to move, so spread ignores them.
            let counted = host.active && group_tasks > 0;
            if !candidate && !counted {
                continue;
            }
            let mut buckets = [0; RANKS_MAX];
            for (slot, attribute) in plan.spread_attributes.iter().enumerate() {
                let id = interners[slot].id(attribute_value(host, attribute));
                let tasks = &mut bucket_tasks[slot];
                tasks.resize(interners[slot].len(), 0);
                if counted {
                    tasks[id as usize] += group_tasks;
                }
                buckets[slot] = id;
            }
            if candidate {
                let remaining = &host.remaining;
                let mut candidate = Candidate::new(
                    host_index,
                    remaining.cpu,
                    remaining.memory_mib,
                    remaining.gpu_ids.len(),
                    group_tasks,
                );
                candidate.buckets = buckets;
                candidates.push(candidate);
            }
        }
        Call::assemble(hosts, plan, candidates, bucket_tasks, salt)
    }

    /// Finishes a call from its candidates (in host order) and spread counts.
    pub(crate) fn assemble(
        hosts: &'h [Host],
        plan: Plan<'r>,
        mut candidates: Vec<Candidate>,
        bucket_tasks: Vec<Vec<u32>>,
        salt: u64,
    ) -> Self {
        for candidate in &mut candidates {
            candidate.tie = plan.tie_key(salt, candidate.host_index);
        }
        let mut call = Call {
            hosts,
            plan,
            candidates,
            bucket_tasks,
            contenders: Vec::new(),
            salt,
        };
        call.contenders = call.contenders();
        call
    }

    /// Compares by the strategies, lower first. `local_only` skips spread-by-attribute ranks,
    /// which are equal for candidates in the same cell.
    fn compare_ranks(&self, a: &Candidate, b: &Candidate, local_only: bool) -> Ordering {
        for rank in &self.plan.ranks {
            let order = match *rank {
                Rank::CpuLeft => a.cpu.cmp(&b.cpu),
                Rank::MemoryLeft => a.memory_mib.cmp(&b.memory_mib),
                Rank::GroupTasksOnHost => a.group_tasks.cmp(&b.group_tasks),
                Rank::GroupTasksInBucket(_) if local_only => Ordering::Equal,
                Rank::GroupTasksInBucket(slot) => {
                    let tasks = &self.bucket_tasks[slot];
                    tasks[a.buckets[slot] as usize].cmp(&tasks[b.buckets[slot] as usize])
                }
            };
            if order.is_ne() {
                return order;
            }
        }
        Ordering::Equal
    }

    /// The candidates that can win a task of this call. Only the chosen candidate changes
    /// after a task, and spread-by-attribute counts change alike for every candidate in a
    /// cell (the same bucket in each spread attribute), so within a cell the order stays
    /// put except for the chosen one: the j-th distinct winner from a cell is among its j
    /// best at the start. Keeping each cell's best `count` is therefore exact.
    fn contenders(&self) -> Vec<usize> {
        let every = || (0..self.candidates.len()).collect();
        let count = self.plan.request.count;
        if self.plan.tie_break == TieBreak::SeededPerTask
            || count == 0
            || count > CONTENDERS_PER_CELL_MAX
            || count >= self.candidates.len()
        {
            return every();
        }
        // Cells numbered in mixed radix over the bucket ids of each spread attribute.
        let mut cells = 1usize;
        let mut strides = [0usize; RANKS_MAX];
        for (slot, tasks) in self.bucket_tasks.iter().enumerate() {
            strides[slot] = cells;
            match cells.checked_mul(tasks.len().max(1)) {
                Some(product) if product.saturating_mul(count) <= self.candidates.len() => {
                    cells = product;
                }
                _ => return every(),
            }
        }
        let cell_of = |c: &Candidate| -> usize {
            (0..self.bucket_tasks.len())
                .map(|slot| c.buckets[slot] as usize * strides[slot])
                .sum()
        };
        let better = |a: usize, b: usize| {
            let (a, b) = (&self.candidates[a], &self.candidates[b]);
            self.compare_ranks(a, b, true)
                .then(a.tie.cmp(&b.tie))
                .then(a.host_index.cmp(&b.host_index))
                == Ordering::Less
        };
        // Per cell, its best `count` so far, best first.
        let mut kept = vec![0usize; cells * count];
        let mut kept_len = vec![0usize; cells];
        for position in 0..self.candidates.len() {
            let cell = cell_of(&self.candidates[position]);
            let best = &mut kept[cell * count..(cell + 1) * count];
            let len = kept_len[cell];
            if len == count && !better(position, best[count - 1]) {
                continue;
            }
            let mut slot = len.min(count - 1);
            while slot > 0 && better(position, best[slot - 1]) {
                best[slot] = best[slot - 1];
                slot -= 1;
            }
            best[slot] = position;
            kept_len[cell] = (len + 1).min(count);
        }
        (0..cells)
            .flat_map(|cell| {
                kept[cell * count..cell * count + kept_len[cell]]
                    .iter()
                    .copied()
            })
            .collect()
    }

    /// The best open contender, by the ranks, then the tie-break.
    fn pick(&self) -> Option<usize> {
        let salt = self.salt;
        let per_task = self.plan.tie_break == TieBreak::SeededPerTask;
        let tie = |c: &Candidate| {
            if per_task {
                tie_hash(salt, c.host_index)
            } else {
                c.tie
            }
        };
        let mut best: Option<(usize, u64)> = None;
        for &position in &self.contenders {
            let candidate = &self.candidates[position];
            if candidate.rejection.is_some() {
                continue;
            }
            let Some((best_position, best_tie)) = best else {
                best = Some((position, tie(candidate)));
                continue;
            };
            let incumbent = &self.candidates[best_position];
            match self.compare_ranks(candidate, incumbent, false) {
                Ordering::Less => best = Some((position, tie(candidate))),
                Ordering::Greater => {}
                Ordering::Equal => {
                    let candidate_tie = tie(candidate);
                    if (candidate_tie, candidate.host_index) < (best_tie, incumbent.host_index) {
                        best = Some((position, candidate_tie));
                    }
                }
            }
        }
        best.map(|(position, _)| position)
    }

    /// Takes one task out of the candidate at `position` and returns the reservation.
    fn reserve(&mut self, position: usize) -> Reservation {
        let demand = &self.plan.request.demand;
        let candidate = &mut self.candidates[position];
        let host = &self.hosts[candidate.host_index];
        let gpus = demand.gpus as usize;
        // `Resources::reserve` takes GPU ids in order, so earlier tasks of this call took
        // the first ones.
        let gpu_ids = host
            .remaining
            .gpu_ids
            .iter()
            .skip(candidate.placed_tasks as usize * gpus)
            .take(gpus)
            .cloned()
            .collect();
        candidate.cpu -= demand.cpu;
        candidate.memory_mib -= demand.memory_mib;
        candidate.gpus_free -= gpus;
        candidate.group_tasks += 1;
        candidate.placed_tasks += 1;
        for (slot, tasks) in self.bucket_tasks.iter_mut().enumerate() {
            tasks[candidate.buckets[slot] as usize] += 1;
        }
        let fit = if demand.cpu > candidate.cpu {
            Err(Shortfall::Cpu)
        } else if demand.memory_mib > candidate.memory_mib {
            Err(Shortfall::Memory)
        } else if self.plan.has_fixed_ports {
            // The ports this task took are exactly the ones the next would need.
            Err(Shortfall::Ports)
        } else if gpus > candidate.gpus_free {
            Err(Shortfall::Gpu)
        } else {
            Ok(())
        };
        let plan = &self.plan;
        candidate.rejection = match fit {
            Err(shortfall) => Some(RejectReason::Resource(shortfall)),
            Ok(()) if plan.distinct_instance => Some(RejectReason::DistinctInstance),
            Ok(()) if plan.member_of_depends_on_tasks => {
                plan.rejection(host, fit, 0, candidate.placed_tasks)
            }
            Ok(()) => None,
        };
        Reservation {
            cpu: demand.cpu,
            memory_mib: demand.memory_mib,
            ports_tcp: demand.ports_tcp.clone(),
            ports_udp: demand.ports_udp.clone(),
            gpu_ids,
        }
    }

    /// For every host, in order, why it cannot take another task.
    fn rejections(&self) -> Vec<Rejection> {
        let mut candidates = self.candidates.iter().peekable();
        let mut rejections = Vec::with_capacity(self.hosts.len());
        for (host_index, host) in self.hosts.iter().enumerate() {
            let reason = match candidates.next_if(|c| c.host_index == host_index) {
                Some(candidate) => candidate.rejection,
                None => self.plan.rejection(
                    host,
                    host.remaining.check(&self.plan.request.demand),
                    group_tasks(host, &self.plan.request.group),
                    0,
                ),
            };
            if let Some(reason) = reason {
                rejections.push(Rejection { host_index, reason });
            }
        }
        rejections
    }
}

/// Places `request.count` tasks one at a time: filter (status, agent, resources including
/// fixed ports and GPUs, constraints), rank by the strategies in order, and reserve on a
/// private copy of the hosts so later tasks see earlier ones.
///
/// * `distinctInstance` counts tasks of `request.group` already on a host and those placed
///   earlier in the call; `memberOf` expressions on `task:group` or `runningTasksCount` see
///   them too (as running tasks of the group).
/// * `spread` counts the group's tasks on ACTIVE hosts; tasks on draining hosts are about to
///   move and do not count. Hosts without the attribute share one bucket.
/// * Ties left after every strategy go to the lowest hash of the host index salted from
///   `seed` (once per call, or once per task with `random`), so equal hosts share the load
///   across evaluations. With no strategy at all the first host in order that fits wins
///   (first fit), the plain deterministic baseline; the seed then does not matter.
/// * Stops early when no host can take another task; `unplaced` says how many were left and
///   `rejections` why each host refused.
pub fn place(hosts: &[Host], request: &PlacementRequest, seed: u64) -> PlacementResult {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let salt = rng.next_u64();
    let call = Call::scanning(hosts, request, salt);
    run(call, &mut rng)
}

/// Places the call's tasks one after another.
pub(crate) fn run(mut call: Call, rng: &mut ChaCha8Rng) -> PlacementResult {
    let request = call.plan.request;
    let mut placements = Vec::with_capacity(request.count.min(PLACEMENTS_PREALLOCATED_MAX));
    while placements.len() < request.count {
        if call.plan.tie_break == TieBreak::SeededPerTask {
            call.salt = rng.next_u64();
        }
        let Some(position) = call.pick() else {
            break;
        };
        let reservation = call.reserve(position);
        placements.push(Placement {
            host_index: call.candidates[position].host_index,
            reservation,
        });
    }
    let unplaced = request.count - placements.len();
    PlacementResult {
        rejections: if unplaced > 0 {
            call.rejections()
        } else {
            Vec::new()
        },
        placements,
        unplaced,
    }
}

/// For every host, whether one task of `request` would fit and, if not, the first reason.
pub fn explain(
    hosts: &[Host],
    request: &PlacementRequest,
) -> Vec<(usize, Result<(), RejectReason>)> {
    let plan = Plan::new(request);
    hosts
        .iter()
        .enumerate()
        .map(|(host_index, host)| {
            let fit = host.remaining.check(&request.demand);
            let reason = plan.rejection(host, fit, group_tasks(host, &request.group), 0);
            (host_index, reason.map_or(Ok(()), Err))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_model::Timestamp;
    use flotilla_model::resources::{Demand, Resources};
    use proptest::prelude::{ProptestConfig, any, prop, prop_assert_eq, proptest};

    use super::*;

    fn host(index: usize, spec: (i64, i64, Option<u8>, u8, u32)) -> Host {
        let (cpu, memory_mib, zone, subnet, group_tasks) = spec;
        let resources = Resources {
            cpu,
            memory_mib,
            ..Default::default()
        };
        let mut attributes = BTreeMap::new();
        if let Some(zone) = zone {
            attributes.insert("zone".to_owned(), Some(format!("z{zone}")));
        }
        attributes.insert("subnet".to_owned(), Some(format!("s{subnet}")));
        Host {
            id: index.to_string(),
            arn: index.to_string(),
            ec2_instance_id: index.to_string(),
            active: true,
            agent_connected: true,
            remaining: resources.clone(),
            registered: resources,
            attributes,
            agent_version: None,
            registered_at: Timestamp(0),
            running_tasks_count: group_tasks,
            task_groups: [("g".to_owned(), group_tasks)].into(),
        }
    }

    fn request(count: usize, strategies: &[usize]) -> PlacementRequest {
        let choices = [
            Strategy::Binpack(BinpackField::Cpu),
            Strategy::Binpack(BinpackField::Memory),
            Strategy::Spread(SpreadField::Instance),
            Strategy::Spread(SpreadField::Attribute("zone".to_owned())),
            Strategy::Spread(SpreadField::Attribute("subnet".to_owned())),
        ];
        PlacementRequest {
            demand: Demand {
                cpu: 100,
                memory_mib: 100,
                ..Default::default()
            },
            count,
            group: "g".to_owned(),
            constraints: Vec::new(),
            strategies: strategies.iter().map(|s| choices[*s].clone()).collect(),
        }
    }

    /// Places with pruning, and again ranking every candidate for every task.
    fn both_ways(
        hosts: &[Host],
        request: &PlacementRequest,
        seed: u64,
    ) -> (PlacementResult, PlacementResult, usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let salt = rng.next_u64();
        let pruned_call = Call::scanning(hosts, request, salt);
        let contenders = pruned_call.contenders.len();
        let pruned = run(pruned_call, &mut rng.clone());
        let mut full_call = Call::scanning(hosts, request, salt);
        full_call.contenders = (0..full_call.candidates.len()).collect();
        (pruned, run(full_call, &mut rng), contenders)
    }

    #[test]
    fn pruning_keeps_each_cells_best_count() {
        // 60 hosts in 4 zones: 4 cells of 15, of which a call of 3 keeps 3 each.
        let hosts: Vec<Host> = (0..60)
            .map(|i| host(i, (1000 + i as i64, 1000, Some((i % 4) as u8), 0, 0)))
            .collect();
        let (pruned, full, contenders) = both_ways(&hosts, &request(3, &[3, 0]), 1);
        assert_eq!(contenders, 12);
        assert_eq!(pruned, full);
        // Random draws afresh for every task, so nothing can be pruned.
        let mut random = request(3, &[3]);
        random.strategies.push(Strategy::Random);
        let (_, _, contenders) = both_ways(&hosts, &random, 1);
        assert_eq!(contenders, 60);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn keeping_only_each_cells_best_is_exact(
            specs in prop::collection::vec(
                (0i64..1000, 0i64..1000, prop::option::of(0u8..4), 0u8..3, 0u32..3),
                1..60,
            ),
            count in 1usize..12,
            strategies in prop::collection::vec(0usize..5, 0..4),
            seed in any::<u64>(),
        ) {
            let hosts: Vec<Host> = specs.into_iter().enumerate().map(|(i, s)| host(i, s)).collect();
            let request = request(count, &strategies);
            let (pruned, full, _) = both_ways(&hosts, &request, seed);
            prop_assert_eq!(pruned, full);
        }
    }
}
