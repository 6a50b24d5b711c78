//! Scale-in: which running tasks to stop first so what stays follows the strategies.
//!
//! The mirror of placement: binpack stops tasks where the most of the field will be left
//! (emptying the least used hosts), spread stops from the host or attribute value with the
//! most tasks (keeping the spread even). Tasks on the same host rank alike, so the choice is
//! made per host and that host's tasks go in the order the caller listed them. Ties are
//! broken as in placement: by the seed when strategies are given, else by the caller's order.

use std::collections::{BTreeMap, HashMap};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{BinpackField, Host, RANKS_MAX, SpreadField, Strategy};

#[derive(Clone, Copy)]
enum Rank {
    CpuLeft,
    MemoryLeft,
    TasksOnHost,
    TasksInBucket(usize),
}

/// The candidates on one host.
struct HostTasks {
    host_index: usize,
    /// Candidate indexes in the caller's order; `stopped` of them are already chosen.
    tasks: Vec<usize>,
    stopped: usize,
    cpu: i64,
    memory_mib: i64,
    buckets: [usize; RANKS_MAX],
}

impl HostTasks {
    fn left(&self) -> usize {
        self.tasks.len() - self.stopped
    }
}

/// Returns indexes into `candidates` (each the host index a task runs on), at most `count`
/// of them, in the order the tasks should be stopped.
pub fn choose_tasks_to_stop(
    hosts: &[Host],
    candidates: &[usize],
    strategies: &[Strategy],
    count: usize,
    seed: u64,
) -> Vec<usize> {
    let mut ranks = Vec::new();
    let mut spread_attributes = Vec::new();
    let mut fresh_salt_per_stop = false;
    for strategy in strategies.iter().take(RANKS_MAX) {
        ranks.push(match strategy {
            Strategy::Binpack(BinpackField::Cpu) => Rank::CpuLeft,
            Strategy::Binpack(BinpackField::Memory) => Rank::MemoryLeft,
            Strategy::Spread(SpreadField::Instance) => Rank::TasksOnHost,
            Strategy::Spread(SpreadField::Attribute(name)) => {
                spread_attributes.push(name.as_str());
                Rank::TasksInBucket(spread_attributes.len() - 1)
            }
            Strategy::Random => {
                fresh_salt_per_stop = true;
                break;
            }
        });
    }

    let mut by_host: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (candidate, host_index) in candidates.iter().enumerate() {
        by_host.entry(*host_index).or_default().push(candidate);
    }
    // Bucket ids per spread attribute; hosts without the attribute (or unknown hosts) share
    // one bucket, as in placement.
    let mut bucket_ids: Vec<HashMap<Option<&str>, usize>> =
        vec![HashMap::new(); spread_attributes.len()];
    let mut bucket_tasks: Vec<Vec<usize>> = vec![Vec::new(); spread_attributes.len()];
    let mut groups: Vec<HostTasks> = Vec::with_capacity(by_host.len());
    for (host_index, tasks) in by_host {
        let host = hosts.get(host_index);
        let mut buckets = [0; RANKS_MAX];
        for (slot, attribute) in spread_attributes.iter().enumerate() {
            let value = host
                .and_then(|h| crate::lookup(&h.attributes, attribute))
                .map(|v| v.as_deref().unwrap_or_default());
            let next = bucket_ids[slot].len();
            let id = *bucket_ids[slot].entry(value).or_insert(next);
            if id == next {
                bucket_tasks[slot].push(0);
            }
            bucket_tasks[slot][id] += tasks.len();
            buckets[slot] = id;
        }
        groups.push(HostTasks {
            host_index,
            stopped: 0,
            cpu: host.map_or(0, |h| h.remaining.cpu),
            memory_mib: host.map_or(0, |h| h.remaining.memory_mib),
            buckets,
            tasks,
        });
    }

    // Larger is stopped first, so each rank compares b with a.
    let compare = |a: &HostTasks, b: &HostTasks, bucket_tasks: &[Vec<usize>]| {
        for rank in &ranks {
            let order = match *rank {
                Rank::CpuLeft => b.cpu.cmp(&a.cpu),
                Rank::MemoryLeft => b.memory_mib.cmp(&a.memory_mib),
                Rank::TasksOnHost => b.left().cmp(&a.left()),
                Rank::TasksInBucket(slot) => {
                    let tasks = &bucket_tasks[slot];
                    tasks[b.buckets[slot]].cmp(&tasks[a.buckets[slot]])
                }
            };
            if order.is_ne() {
                return order;
            }
        }
        std::cmp::Ordering::Equal
    };

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut salt = rng.next_u64();
    let mut chosen = Vec::with_capacity(count.min(candidates.len()));
    while chosen.len() < count {
        if fresh_salt_per_stop {
            salt = rng.next_u64();
        }
        let mut best: Option<usize> = None;
        for (position, group) in groups.iter().enumerate() {
            if group.left() == 0 {
                continue;
            }
            let Some(best_position) = best else {
                best = Some(position);
                continue;
            };
            let incumbent = &groups[best_position];
            let better = match compare(group, incumbent, &bucket_tasks) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal if strategies.is_empty() => {
                    group.tasks[group.stopped] < incumbent.tasks[incumbent.stopped]
                }
                std::cmp::Ordering::Equal => {
                    crate::place::tie_hash(salt, group.host_index)
                        < crate::place::tie_hash(salt, incumbent.host_index)
                }
            };
            if better {
                best = Some(position);
            }
        }
        let Some(position) = best else { break };
        let group = &mut groups[position];
        chosen.push(group.tasks[group.stopped]);
        group.stopped += 1;
        for (slot, tasks) in bucket_tasks.iter_mut().enumerate() {
            tasks[group.buckets[slot]] -= 1;
        }
    }
    chosen
}
