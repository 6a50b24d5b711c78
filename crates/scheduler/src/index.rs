//! Hosts kept ready for many placement calls: the long-lived view of one cluster that a
//! control plane updates as tasks start and stop.
//!
//! A call to [`crate::place`] reads every host's attribute and task-group maps, which costs
//! about a tenth of a microsecond per host per call: scattered heap nodes, so it is memory
//! bound. `HostIndex` keeps what a call needs in flat columns between calls (status and
//! resources, `memberOf` answers per expression, bucket ids per spread attribute, hosts per
//! task group) and updates them host by host as the index changes. `HostIndex::place` only
//! caches: it gives exactly the answer `place(index.hosts(), request, seed)` gives.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use flotilla_model::resources::Reservation;

use crate::place::{Call, Candidate, FnvHashMap, Plan, attribute_value, run};
use crate::query::Expression;
use crate::{Host, Placement, PlacementRequest, PlacementResult};

/// `memberOf` expressions whose answers are kept; when a call needs more, all are dropped.
const EXPRESSIONS_CACHED_MAX: usize = 64;
/// Spread attributes whose bucket ids are kept; when a call needs more, all are dropped.
const ATTRIBUTES_CACHED_MAX: usize = 16;

/// Hosts plus the columns placement reads, kept in step with every change.
#[derive(Debug, Default)]
pub struct HostIndex {
    hosts: Vec<Host>,
    facts: Vec<HostFacts>,
    /// Tasks per host by group; only hosts with at least one task of the group.
    groups: FnvHashMap<String, FnvHashMap<usize, u32>>,
    /// `memberOf` answers per host, by expression text.
    member_of: FnvHashMap<String, MemberOfColumn>,
    /// Bucket id per host, by attribute name.
    attributes: FnvHashMap<String, AttributeColumn>,
    /// The placing group's tasks per host during a call; all zero between calls.
    group_tasks_scratch: Vec<u32>,
}

/// What the filter reads of a host, packed so a call streams through it.
#[derive(Clone, Copy, Debug, Default)]
struct HostFacts {
    active: bool,
    agent_connected: bool,
    cpu: i64,
    memory_mib: i64,
    gpus_free: usize,
}

impl HostFacts {
    fn of(host: &Host) -> Self {
        HostFacts {
            active: host.active,
            agent_connected: host.agent_connected,
            cpu: host.remaining.cpu,
            memory_mib: host.remaining.memory_mib,
            gpus_free: host.remaining.gpu_ids.len(),
        }
    }
}

#[derive(Debug)]
struct MemberOfColumn {
    expression: Expression,
    matches: Vec<bool>,
}

#[derive(Debug, Default)]
struct AttributeColumn {
    bucket_ids: Vec<u32>,
    /// Hosts without the attribute share the `None` bucket.
    ids: FnvHashMap<Option<String>, u32>,
}

impl AttributeColumn {
    fn id(&mut self, value: Option<&str>) -> u32 {
        if let Some(id) = self.ids.get(&value.map(str::to_owned)) {
            return *id;
        }
        let id = self.ids.len() as u32;
        self.ids.insert(value.map(str::to_owned), id);
        id
    }
}

impl HostIndex {
    pub fn new(hosts: Vec<Host>) -> Self {
        let mut index = HostIndex::default();
        for host in hosts {
            index.push_host(host);
        }
        index
    }

    /// The hosts, in the order placements and rejections refer to them.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn into_hosts(self) -> Vec<Host> {
        self.hosts
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Adds a host at the end and returns its index.
    pub fn push_host(&mut self, host: Host) -> usize {
        let host_index = self.hosts.len();
        self.hosts.push(host);
        self.facts.push(HostFacts::default());
        self.group_tasks_scratch.push(0);
        for column in self.member_of.values_mut() {
            column.matches.push(false);
        }
        for column in self.attributes.values_mut() {
            column.bucket_ids.push(0);
        }
        self.index_host(host_index);
        host_index
    }

    /// Puts a new view of a host in place (status, resources, attributes, tasks all may
    /// change). A host leaving the cluster can be replaced by an inactive one.
    pub fn replace_host(&mut self, host_index: usize, host: Host) {
        for group in self.hosts[host_index].task_groups.keys() {
            if let Some(hosts) = self.groups.get_mut(group) {
                hosts.remove(&host_index);
                if hosts.is_empty() {
                    self.groups.remove(group);
                }
            }
        }
        self.hosts[host_index] = host;
        self.index_host(host_index);
    }

    /// Enters a host's groups, attribute buckets and facts into the columns.
    fn index_host(&mut self, host_index: usize) {
        let host = &self.hosts[host_index];
        for (group, tasks) in &host.task_groups {
            if *tasks > 0 {
                self.groups
                    .entry(group.clone())
                    .or_default()
                    .insert(host_index, *tasks);
            }
        }
        for (name, column) in &mut self.attributes {
            column.bucket_ids[host_index] = column.id(attribute_value(host, name));
        }
        self.refresh(host_index);
    }

    /// Commits a placement this index proposed: takes the reservation from the host and
    /// counts the task in its group and as running (as `place` counts tasks within a call).
    pub fn apply(&mut self, placement: &Placement, group: &str) {
        let host_index = placement.host_index;
        let host = &mut self.hosts[host_index];
        host.remaining.apply(&placement.reservation);
        *host.task_groups.entry(group.to_owned()).or_default() += 1;
        host.running_tasks_count += 1;
        *self
            .groups
            .entry(group.to_owned())
            .or_default()
            .entry(host_index)
            .or_default() += 1;
        self.refresh(host_index);
    }

    /// Gives back what a stopped task of `group` held on a host.
    pub fn release(&mut self, host_index: usize, reservation: &Reservation, group: &str) {
        let Host {
            remaining,
            registered,
            task_groups,
            running_tasks_count,
            ..
        } = &mut self.hosts[host_index];
        remaining.release(reservation, registered);
        *running_tasks_count = running_tasks_count.saturating_sub(1);
        if let Some(tasks) = task_groups.get_mut(group) {
            *tasks = tasks.saturating_sub(1);
            if *tasks == 0 {
                task_groups.remove(group);
            }
        }
        if let Some(hosts) = self.groups.get_mut(group) {
            if let Some(tasks) = hosts.get_mut(&host_index) {
                *tasks = tasks.saturating_sub(1);
                if *tasks == 0 {
                    hosts.remove(&host_index);
                }
            }
            if hosts.is_empty() {
                self.groups.remove(group);
            }
        }
        self.refresh(host_index);
    }

    /// Re-reads what can change with tasks and resources.
    fn refresh(&mut self, host_index: usize) {
        let host = &self.hosts[host_index];
        self.facts[host_index] = HostFacts::of(host);
        for column in self.member_of.values_mut() {
            column.matches[host_index] = column.expression.matches(host);
        }
    }

    fn cache_columns(&mut self, plan: &Plan) {
        let missing_expressions = plan
            .member_of
            .iter()
            .filter(|e| !self.member_of.contains_key(e.source()))
            .count();
        if self.member_of.len() + missing_expressions > EXPRESSIONS_CACHED_MAX {
            self.member_of.clear();
        }
        for expression in &plan.member_of {
            if !self.member_of.contains_key(expression.source()) {
                let matches = self.hosts.iter().map(|h| expression.matches(h)).collect();
                let column = MemberOfColumn {
                    expression: (*expression).clone(),
                    matches,
                };
                self.member_of
                    .insert(expression.source().to_owned(), column);
            }
        }
        let missing_attributes = plan
            .spread_attributes
            .iter()
            .filter(|a| !self.attributes.contains_key(**a))
            .count();
        if self.attributes.len() + missing_attributes > ATTRIBUTES_CACHED_MAX {
            self.attributes.clear();
        }
        for attribute in &plan.spread_attributes {
            if !self.attributes.contains_key(*attribute) {
                let mut column = AttributeColumn::default();
                let bucket_ids = self
                    .hosts
                    .iter()
                    .map(|h| column.id(attribute_value(h, attribute)))
                    .collect();
                column.bucket_ids = bucket_ids;
                self.attributes.insert((*attribute).to_owned(), column);
            }
        }
    }

    /// Proposes placements without changing the index: the same answer as
    /// `place(self.hosts(), request, seed)`. Commit the ones kept with [`Self::apply`].
    pub fn place(&mut self, request: &PlacementRequest, seed: u64) -> PlacementResult {
        let plan = Plan::new(request);
        self.cache_columns(&plan);
        let mut group_tasks = std::mem::take(&mut self.group_tasks_scratch);
        let group = self.groups.get(&request.group);
        for (host_index, tasks) in group.into_iter().flatten() {
            group_tasks[*host_index] = *tasks;
        }
        let member_of: Vec<&[bool]> = plan
            .member_of
            .iter()
            .map(|e| self.member_of[e.source()].matches.as_slice())
            .collect();
        let attributes: Vec<&AttributeColumn> = plan
            .spread_attributes
            .iter()
            .map(|a| &self.attributes[*a])
            .collect();

        // Tasks on hosts that are not ACTIVE are about to move, so spread ignores them.
        let mut bucket_tasks: Vec<Vec<u32>> =
            attributes.iter().map(|c| vec![0; c.ids.len()]).collect();
        for (host_index, tasks) in group.into_iter().flatten() {
            if self.facts[*host_index].active {
                for (slot, column) in attributes.iter().enumerate() {
                    bucket_tasks[slot][column.bucket_ids[*host_index] as usize] += *tasks;
                }
            }
        }

        let demand = &request.demand;
        let mut candidates = Vec::new();
        for (host_index, facts) in self.facts.iter().enumerate() {
            let open = facts.active
                && facts.agent_connected
                && demand.cpu <= facts.cpu
                && demand.memory_mib <= facts.memory_mib
                && demand.gpus as usize <= facts.gpus_free
                && !(plan.distinct_instance && group_tasks[host_index] > 0)
                && member_of.iter().all(|column| column[host_index])
                && (!plan.has_fixed_ports
                    || self.hosts[host_index].remaining.check(demand).is_ok());
            if open {
                let mut candidate = Candidate::new(
                    host_index,
                    facts.cpu,
                    facts.memory_mib,
                    facts.gpus_free,
                    group_tasks[host_index],
                );
                for (slot, column) in attributes.iter().enumerate() {
                    candidate.buckets[slot] = column.bucket_ids[host_index];
                }
                candidates.push(candidate);
            }
        }

        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let salt = rng.next_u64();
        let call = Call::assemble(&self.hosts, plan, candidates, bucket_tasks, salt);
        let result = run(call, &mut rng);
        for host_index in group.into_iter().flat_map(|g| g.keys()) {
            group_tasks[*host_index] = 0;
        }
        self.group_tasks_scratch = group_tasks;
        result
    }
}
