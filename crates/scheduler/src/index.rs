//! Hosts kept ready for many placement calls: the long-lived view of one cluster that a
//! control plane updates as tasks start and stop.
//!
//! A call to [`crate::place`] reads every host's attribute and task-group maps, which costs
//! about a tenth of a microsecond per host per call: scattered heap nodes, so it is memory
//! bound. `HostIndex` keeps what a call needs in flat columns between calls and updates them
//! host by host as the index changes:
//! * per request shape (its `memberOf` expressions and spread attributes), each host's cell
//!   (its bucket in every spread attribute), or closed when it is inactive, disconnected or
//!   outside a `memberOf`;
//! * per task group, its tasks per host (a full column once the group runs on many hosts)
//!   and its spread counts per attribute bucket;
//! * what each host has left.
//!
//! A call then makes one pass over flat columns: it skips closed hosts, checks resources,
//! and for calls of a few tasks keeps only each cell's best `count` hosts (the only ones
//! that can win, as `Call::contenders` in `place.rs` shows), so nothing it allocates grows
//! with the cluster. The pass cannot be avoided while ties go to a hash of the host index
//! salted per call: every open host in the lowest-ranked class can win the tie, so each
//! must be hashed.
//!
//! `HostIndex::place` only caches: it gives exactly the answer
//! `place(index.hosts(), request, seed)` gives.

use std::ops::ControlFlow;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use flotilla_model::resources::Reservation;

use crate::RANKS_MAX;
use crate::place::{
    CONTENDERS_PER_CELL_MAX, Call, Candidate, FnvHashMap, Plan, Rank, attribute_value, run,
};
use crate::query::Expression;
use crate::{Host, Placement, PlacementRequest, PlacementResult};

/// `memberOf` expressions whose answers are kept; when a call needs more, all are dropped.
const EXPRESSIONS_CACHED_MAX: usize = 64;
/// Spread attributes whose bucket ids are kept; when a call needs more, all are dropped.
const ATTRIBUTES_CACHED_MAX: usize = 16;
/// Request shapes whose cell columns are kept; when a call needs more, all are dropped.
const SHAPES_CACHED_MAX: usize = 16;
/// A group with tasks on at least one host in this many keeps a column for every host.
const GROUP_DENSE_HOSTS_DIVISOR: usize = 16;
/// The cell of a host that no request of the shape can use (inactive, disconnected or
/// outside a `memberOf`).
const CLOSED: u32 = u32::MAX;

/// Hosts plus the columns placement reads, kept in step with every change.
#[derive(Debug, Default)]
pub struct HostIndex {
    hosts: Vec<Host>,
    facts: Vec<HostFacts>,
    /// Tasks per host by group; only groups with at least one task.
    groups: FnvHashMap<String, GroupColumn>,
    /// `memberOf` answers per host, by slot.
    member_of: Vec<MemberOfColumn>,
    /// Slot in `member_of` by expression text.
    member_of_slots: FnvHashMap<String, usize>,
    /// Bucket id per host, by slot.
    attributes: Vec<AttributeColumn>,
    /// Slot in `attributes` by attribute name.
    attribute_slots: FnvHashMap<String, usize>,
    /// Each host's cell for requests of one shape, by [`shape_key`].
    shapes: FnvHashMap<String, ShapeColumn>,
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

/// Tasks of one group per host, and per spread bucket.
#[derive(Debug, Default)]
struct GroupColumn {
    /// Only hosts with at least one task of the group.
    by_host: FnvHashMap<usize, u32>,
    /// The same for every host, kept once the group runs on many hosts: a call then reads
    /// it as it is, where copying the map into a column would cost as much as the scan.
    dense: Option<Vec<u32>>,
    /// Per attribute slot, the group's tasks on ACTIVE hosts per bucket id (spread counts;
    /// tasks on other hosts are about to move). Shorter vectors mean zeros.
    bucket_tasks: Vec<Vec<u32>>,
}

impl GroupColumn {
    fn tasks(&self, host_index: usize) -> u32 {
        self.by_host.get(&host_index).copied().unwrap_or(0)
    }
}

/// Adds `tasks` (may be negative) to a group's spread count of one attribute's bucket.
fn add_bucket_tasks(bucket_tasks: &mut Vec<Vec<u32>>, slot: usize, bucket: u32, tasks: i64) {
    if bucket_tasks.len() <= slot {
        bucket_tasks.resize_with(slot + 1, Vec::new);
    }
    let buckets = &mut bucket_tasks[slot];
    if buckets.len() <= bucket as usize {
        buckets.resize(bucket as usize + 1, 0);
    }
    let sum = i64::from(buckets[bucket as usize]) + tasks;
    buckets[bucket as usize] = u32::try_from(sum).unwrap_or(0);
}

#[derive(Debug)]
struct MemberOfColumn {
    expression: Expression,
    matches: Vec<bool>,
}

#[derive(Debug, Default)]
struct AttributeColumn {
    name: String,
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

/// For requests with the same `memberOf` expressions and spread attributes: which hosts
/// can be candidates at all, and in which cell (hosts sharing a bucket in every spread
/// attribute), so a call reads one number per host instead of several columns.
#[derive(Debug)]
struct ShapeColumn {
    member_of: Vec<usize>,
    attributes: Vec<usize>,
    /// Bucket ids per attribute when the column was built; a host with a newer id drops it.
    bucket_counts: Vec<usize>,
    /// Mixed-radix weight of each attribute's bucket id in the cell number.
    strides: [usize; RANKS_MAX],
    cell_count: usize,
    /// Per host: its cell, or [`CLOSED`].
    cells: Vec<u32>,
}

impl ShapeColumn {
    /// The cell of a host, or `None` when a bucket id is newer than the column.
    fn cell_of(
        &self,
        host_index: usize,
        facts: &[HostFacts],
        member_of: &[MemberOfColumn],
        attributes: &[AttributeColumn],
    ) -> Option<u32> {
        let mut cell = 0usize;
        for ((slot, stride), count) in self
            .attributes
            .iter()
            .zip(self.strides)
            .zip(&self.bucket_counts)
        {
            let bucket = attributes[*slot].bucket_ids[host_index] as usize;
            if bucket >= *count {
                return None;
            }
            cell += bucket * stride;
        }
        let facts = &facts[host_index];
        let open = facts.active
            && facts.agent_connected
            && self
                .member_of
                .iter()
                .all(|slot| member_of[*slot].matches[host_index]);
        Some(if open { cell as u32 } else { CLOSED })
    }
}

/// The key of a request's shape: its `memberOf` expressions and spread attributes.
fn shape_key(plan: &Plan) -> String {
    let mut key = String::new();
    for expression in &plan.member_of {
        key.push_str(expression.source());
        key.push('\0');
    }
    key.push('\u{1}');
    for attribute in &plan.spread_attributes {
        key.push_str(attribute);
        key.push('\0');
    }
    key
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
        for column in self.groups.values_mut() {
            if let Some(dense) = &mut column.dense {
                dense.push(0);
            }
        }
        for column in &mut self.member_of {
            column.matches.push(false);
        }
        for column in &mut self.attributes {
            column.bucket_ids.push(0);
        }
        for shape in self.shapes.values_mut() {
            shape.cells.push(CLOSED);
        }
        self.index_host(host_index);
        host_index
    }

    /// Puts a new view of a host in place (status, resources, attributes, tasks all may
    /// change). A host leaving the cluster can be replaced by an inactive one.
    pub fn replace_host(&mut self, host_index: usize, host: Host) {
        // Taken out while the host still has its old status and buckets, which its
        // tasks were counted under.
        let groups: Vec<String> = self.hosts[host_index].task_groups.keys().cloned().collect();
        for group in &groups {
            self.set_group_tasks(group, host_index, 0);
        }
        self.hosts[host_index] = host;
        self.index_host(host_index);
    }

    /// Enters a host's attribute buckets, facts and groups into the columns.
    fn index_host(&mut self, host_index: usize) {
        let host = &self.hosts[host_index];
        for column in &mut self.attributes {
            column.bucket_ids[host_index] = column.id(attribute_value(host, &column.name));
        }
        self.refresh(host_index);
        // After the buckets and status, which the group's spread counts follow.
        let groups: Vec<(String, u32)> = self.hosts[host_index]
            .task_groups
            .iter()
            .filter(|(_, tasks)| **tasks > 0)
            .map(|(group, tasks)| (group.clone(), *tasks))
            .collect();
        for (group, tasks) in groups {
            self.set_group_tasks(&group, host_index, tasks);
        }
    }

    /// Sets the tasks of `group` on a host in the group's columns, keeping its spread
    /// counts in step, and drops the group once it has no tasks left.
    fn set_group_tasks(&mut self, group: &str, host_index: usize, tasks: u32) {
        let host_count = self.hosts.len();
        let column = match self.groups.get_mut(group) {
            Some(column) => column,
            None if tasks == 0 => return,
            None => self.groups.entry(group.to_owned()).or_default(),
        };
        let before = column.tasks(host_index);
        if tasks == 0 {
            column.by_host.remove(&host_index);
        } else {
            column.by_host.insert(host_index, tasks);
        }
        if self.facts[host_index].active && tasks != before {
            let change = i64::from(tasks) - i64::from(before);
            for (slot, attribute) in self.attributes.iter().enumerate() {
                let bucket = attribute.bucket_ids[host_index];
                add_bucket_tasks(&mut column.bucket_tasks, slot, bucket, change);
            }
        }
        match &mut column.dense {
            Some(dense) => dense[host_index] = tasks,
            None if column.by_host.len() * GROUP_DENSE_HOSTS_DIVISOR >= host_count => {
                let mut dense = vec![0; host_count];
                for (host_index, tasks) in &column.by_host {
                    dense[*host_index] = *tasks;
                }
                column.dense = Some(dense);
            }
            None => {}
        }
        if column.by_host.is_empty() {
            self.groups.remove(group);
        }
    }

    /// Commits a placement this index proposed: takes the reservation from the host and
    /// counts the task in its group and as running (as `place` counts tasks within a call).
    pub fn apply(&mut self, placement: &Placement, group: &str) {
        let host_index = placement.host_index;
        let host = &mut self.hosts[host_index];
        host.remaining.apply(&placement.reservation);
        let tasks = host.task_groups.entry(group.to_owned()).or_default();
        *tasks += 1;
        let tasks = *tasks;
        host.running_tasks_count += 1;
        self.set_group_tasks(group, host_index, tasks);
        self.refresh(host_index);
    }

    /// Sets a host's count of running tasks (what `runningTasksCount` reads), as when its
    /// tasks moved on while its record and task groups stayed the same.
    pub fn set_running_tasks_count(&mut self, host_index: usize, count: u32) {
        if self.hosts[host_index].running_tasks_count != count {
            self.hosts[host_index].running_tasks_count = count;
            self.refresh(host_index);
        }
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
        let mut tasks_left = 0;
        if let Some(tasks) = task_groups.get_mut(group) {
            *tasks = tasks.saturating_sub(1);
            tasks_left = *tasks;
            if *tasks == 0 {
                task_groups.remove(group);
            }
        }
        self.set_group_tasks(group, host_index, tasks_left);
        self.refresh(host_index);
    }

    /// Re-reads what can change with tasks and resources.
    fn refresh(&mut self, host_index: usize) {
        let host = &self.hosts[host_index];
        self.facts[host_index] = HostFacts::of(host);
        for column in &mut self.member_of {
            column.matches[host_index] = column.expression.matches(host);
        }
        let (facts, member_of, attributes) = (&self.facts, &self.member_of, &self.attributes);
        self.shapes.retain(|_, shape| {
            match shape.cell_of(host_index, facts, member_of, attributes) {
                Some(cell) => {
                    shape.cells[host_index] = cell;
                    true
                }
                // A new attribute value: the cell numbers no longer fit; built anew when
                // a call needs it.
                None => false,
            }
        });
    }

    /// Makes sure the columns a call of `plan` reads exist; returns its shape's key.
    fn cache_columns(&mut self, plan: &Plan) -> String {
        let missing_expressions = plan
            .member_of
            .iter()
            .filter(|e| !self.member_of_slots.contains_key(e.source()))
            .count();
        if self.member_of.len() + missing_expressions > EXPRESSIONS_CACHED_MAX {
            self.member_of.clear();
            self.member_of_slots.clear();
            self.shapes.clear();
        }
        for expression in &plan.member_of {
            if !self.member_of_slots.contains_key(expression.source()) {
                let matches = self.hosts.iter().map(|h| expression.matches(h)).collect();
                self.member_of_slots
                    .insert(expression.source().to_owned(), self.member_of.len());
                self.member_of.push(MemberOfColumn {
                    expression: (*expression).clone(),
                    matches,
                });
            }
        }
        let missing_attributes = plan
            .spread_attributes
            .iter()
            .filter(|a| !self.attribute_slots.contains_key(**a))
            .count();
        if self.attributes.len() + missing_attributes > ATTRIBUTES_CACHED_MAX {
            self.attributes.clear();
            self.attribute_slots.clear();
            self.shapes.clear();
            for column in self.groups.values_mut() {
                column.bucket_tasks.clear();
            }
        }
        for attribute in &plan.spread_attributes {
            if !self.attribute_slots.contains_key(*attribute) {
                self.add_attribute(attribute);
            }
        }
        let key = shape_key(plan);
        let member_of: Vec<usize> = plan
            .member_of
            .iter()
            .map(|e| self.member_of_slots[e.source()])
            .collect();
        let attributes: Vec<usize> = plan
            .spread_attributes
            .iter()
            .map(|a| self.attribute_slots[*a])
            .collect();
        let fits = self
            .shapes
            .get(&key)
            .is_some_and(|shape| shape.member_of == member_of && shape.attributes == attributes);
        if !fits {
            if self.shapes.len() >= SHAPES_CACHED_MAX {
                self.shapes.clear();
            }
            let shape = self.build_shape(member_of, attributes);
            self.shapes.insert(key.clone(), shape);
        }
        key
    }

    /// Adds a column for a spread attribute, with every group's spread counts over it.
    fn add_attribute(&mut self, attribute: &str) {
        let mut column = AttributeColumn {
            name: attribute.to_owned(),
            ..AttributeColumn::default()
        };
        column.bucket_ids = self
            .hosts
            .iter()
            .map(|h| column.id(attribute_value(h, attribute)))
            .collect();
        let slot = self.attributes.len();
        for group in self.groups.values_mut() {
            for (host_index, tasks) in &group.by_host {
                if self.facts[*host_index].active {
                    let bucket = column.bucket_ids[*host_index];
                    add_bucket_tasks(&mut group.bucket_tasks, slot, bucket, i64::from(*tasks));
                }
            }
        }
        self.attribute_slots.insert(attribute.to_owned(), slot);
        self.attributes.push(column);
    }

    fn build_shape(&self, member_of: Vec<usize>, attributes: Vec<usize>) -> ShapeColumn {
        let mut strides = [0; RANKS_MAX];
        let mut cell_count = 1usize;
        let mut bucket_counts = Vec::with_capacity(attributes.len());
        for (position, slot) in attributes.iter().enumerate() {
            let buckets = self.attributes[*slot].ids.len().max(1);
            strides[position] = cell_count;
            bucket_counts.push(buckets);
            // Cell numbers are kept as `u32` below `CLOSED`; past that, every host
            // shares one cell and the call keeps every candidate (see `Scan::cells`).
            cell_count = cell_count.saturating_mul(buckets);
        }
        let mut shape = ShapeColumn {
            member_of,
            attributes,
            bucket_counts,
            strides,
            cell_count,
            cells: Vec::with_capacity(self.hosts.len()),
        };
        if cell_count >= CLOSED as usize {
            shape.strides = [0; RANKS_MAX];
        }
        for host_index in 0..self.hosts.len() {
            let cell = shape
                .cell_of(host_index, &self.facts, &self.member_of, &self.attributes)
                .unwrap_or(CLOSED);
            shape.cells.push(cell);
        }
        shape
    }

    /// Proposes placements without changing the index: the same answer as
    /// `place(self.hosts(), request, seed)`. Commit the ones kept with [`Self::apply`].
    pub fn place(&mut self, request: &PlacementRequest, seed: u64) -> PlacementResult {
        let plan = Plan::new(request);
        let shape_key = self.cache_columns(&plan);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let salt = rng.next_u64();

        // The group's tasks per host as one column: its own when the group runs on many
        // hosts, else the scratch column filled from its map (and emptied again below).
        let mut scratch = std::mem::take(&mut self.group_tasks_scratch);
        let group = self.groups.get(&request.group);
        let dense = group.and_then(|g| g.dense.as_deref());
        if dense.is_none() {
            for (host_index, tasks) in group.into_iter().flat_map(|g| &g.by_host) {
                scratch[*host_index] = *tasks;
            }
        }
        let shape = &self.shapes[&shape_key];
        let scan = Scan {
            index: self,
            plan: &plan,
            shape,
            group_tasks: dense.unwrap_or(&scratch),
            salt,
        };
        let bucket_tasks = || -> Vec<Vec<u32>> {
            shape
                .attributes
                .iter()
                .map(|slot| {
                    let mut tasks = group
                        .and_then(|g| g.bucket_tasks.get(*slot))
                        .cloned()
                        .unwrap_or_default();
                    tasks.resize(self.attributes[*slot].ids.len(), 0);
                    tasks
                })
                .collect()
        };
        let mut result = None;
        if let Some(count) = scan.contenders_per_cell() {
            let candidates = scan.best_per_cell(count);
            let call = Call::assemble(
                &self.hosts,
                Plan::new(request),
                candidates,
                bucket_tasks(),
                salt,
            );
            let pruned = run(call, &mut rng.clone());
            // Rejections name every host that refused, and most hosts were never candidates:
            // a call that leaves tasks unplaced is made again over every host.
            if pruned.unplaced == 0 {
                result = Some(pruned);
            }
        }
        let result = result.unwrap_or_else(|| {
            let call = Call::assemble(
                &self.hosts,
                Plan::new(request),
                scan.every(),
                bucket_tasks(),
                salt,
            );
            run(call, &mut rng)
        });
        if dense.is_none() {
            for host_index in group.into_iter().flat_map(|g| g.by_host.keys()) {
                scratch[*host_index] = 0;
            }
        }
        self.group_tasks_scratch = scratch;
        result
    }
}

/// One call's view of the index's columns.
struct Scan<'i, 'p, 'r> {
    index: &'i HostIndex,
    plan: &'p Plan<'r>,
    shape: &'i ShapeColumn,
    /// Tasks of the request's group per host.
    group_tasks: &'i [u32],
    salt: u64,
}

/// A candidate's place in its cell when only `tasks on the host` (or nothing) ranks before
/// the tie-break: the tasks above the tie-break key, compared as one number.
type PackedKey = u128;

/// A candidate's place in its cell in general: the local ranks in order, then the tie-break.
type RankedKey = ([i64; RANKS_MAX], u64);

impl Scan<'_, '_, '_> {
    /// How many candidates to keep per cell, when keeping only each cell's best is possible
    /// and pays: the tie-break is fixed for the call (`random` draws per task) and the cells
    /// are few next to the hosts.
    fn contenders_per_cell(&self) -> Option<usize> {
        let count = self.plan.request.count;
        let possible = self.plan.ties_fixed_for_call()
            && count > 0
            && count <= CONTENDERS_PER_CELL_MAX
            && self.shape.cell_count < CLOSED as usize;
        (possible && self.shape.cell_count.checked_mul(count)? <= self.index.hosts.len())
            .then_some(count)
    }

    /// Every host that can take a task.
    fn every(&self) -> Vec<Candidate> {
        let mut candidates = Vec::new();
        self.visit_open_hosts(|host_index, _| {
            candidates.push(self.candidate(host_index));
            ControlFlow::Continue(())
        });
        candidates
    }

    /// Each cell's best `count` hosts that can take a task, by the local ranks and the
    /// tie-break. As `Call::contenders` shows, only these can win a task of this call.
    fn best_per_cell(&self, count: usize) -> Vec<Candidate> {
        let local_ranks: Vec<Rank> = self.plan.local_ranks().collect();
        let cells = self.shape.cell_count;
        if local_ranks
            .iter()
            .all(|rank| *rank == Rank::GroupTasksOnHost)
        {
            let by_tasks = !local_ranks.is_empty();
            // First fit without spread attributes: once the first `count` open hosts are
            // found, no later host can rank before them.
            let stops_when_full = self.plan.first_fit() && self.shape.attributes.is_empty();
            let mut best = BestPerCell::<PackedKey>::new(cells, count);
            self.visit_open_hosts(|host_index, cell| {
                let tie = PackedKey::from(self.plan.tie_key(self.salt, host_index));
                let key = if by_tasks {
                    PackedKey::from(self.group_tasks[host_index]) << 64 | tie
                } else {
                    tie
                };
                let full = best.offer(cell, key, host_index);
                if full && stops_when_full {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            self.candidates(best.host_indices())
        } else {
            let facts = &self.index.facts;
            let mut best = BestPerCell::<RankedKey>::new(cells, count);
            self.visit_open_hosts(|host_index, cell| {
                let mut ranks = [0; RANKS_MAX];
                for (value, rank) in ranks.iter_mut().zip(&local_ranks) {
                    *value = match rank {
                        Rank::CpuLeft => facts[host_index].cpu,
                        Rank::MemoryLeft => facts[host_index].memory_mib,
                        Rank::GroupTasksOnHost => i64::from(self.group_tasks[host_index]),
                        Rank::GroupTasksInBucket(_) => 0,
                    };
                }
                let tie = self.plan.tie_key(self.salt, host_index);
                best.offer(cell, (ranks, tie), host_index);
                ControlFlow::Continue(())
            });
            self.candidates(best.host_indices())
        }
    }

    /// Hands each host that can take a task, with its cell, to `open`, in host order.
    fn visit_open_hosts(&self, mut open: impl FnMut(usize, usize) -> ControlFlow<()>) {
        let plan = self.plan;
        let demand = &plan.request.demand;
        let gpus = demand.gpus as usize;
        let hosts = &self.index.hosts;
        let host_count = hosts.len();
        let cells = &self.shape.cells[..host_count];
        let facts = &self.index.facts[..host_count];
        let group_tasks = &self.group_tasks[..host_count];
        for host_index in 0..host_count {
            // The shape's column already holds status, agent and `memberOf`.
            let cell = cells[host_index];
            if cell == CLOSED {
                continue;
            }
            let facts = &facts[host_index];
            let is_open = demand.cpu <= facts.cpu
                && demand.memory_mib <= facts.memory_mib
                && gpus <= facts.gpus_free
                && !(plan.distinct_instance && group_tasks[host_index] > 0)
                && (!plan.has_fixed_ports || hosts[host_index].remaining.check(demand).is_ok());
            if is_open && open(host_index, cell as usize).is_break() {
                break;
            }
        }
    }

    /// The candidates for these hosts, in host order.
    fn candidates(&self, mut host_indices: Vec<usize>) -> Vec<Candidate> {
        host_indices.sort_unstable();
        host_indices
            .into_iter()
            .map(|host_index| self.candidate(host_index))
            .collect()
    }

    fn candidate(&self, host_index: usize) -> Candidate {
        let facts = &self.index.facts[host_index];
        let mut candidate = Candidate::new(
            host_index,
            facts.cpu,
            facts.memory_mib,
            facts.gpus_free,
            self.group_tasks[host_index],
        );
        for (position, slot) in self.shape.attributes.iter().enumerate() {
            candidate.buckets[position] = self.index.attributes[*slot].bucket_ids[host_index];
        }
        candidate
    }
}

/// Each cell's best `count` hosts offered so far, by key (lower first). Hosts are offered
/// in host order, so of two equal keys the one kept is the earlier host, as ranking wants.
struct BestPerCell<K> {
    count: usize,
    /// `count` slots per cell, best first; `lens` says how many are filled.
    kept: Vec<(K, usize)>,
    lens: Vec<usize>,
    /// Per full cell, the key of its worst kept host: most hosts compare against it once
    /// and go.
    worst: Vec<Option<K>>,
}

impl<K: Ord + Copy + Default> BestPerCell<K> {
    fn new(cells: usize, count: usize) -> Self {
        BestPerCell {
            count,
            kept: vec![(K::default(), 0); cells * count],
            lens: vec![0; cells],
            worst: vec![None; cells],
        }
    }

    /// Offers a host to its cell; returns whether the cell is full afterwards.
    #[inline]
    fn offer(&mut self, cell: usize, key: K, host_index: usize) -> bool {
        match self.worst[cell] {
            Some(worst) if key >= worst => true,
            _ => self.keep(cell, key, host_index),
        }
    }

    fn keep(&mut self, cell: usize, key: K, host_index: usize) -> bool {
        let count = self.count;
        let len = self.lens[cell];
        let best = &mut self.kept[cell * count..(cell + 1) * count];
        let mut slot = len.min(count - 1);
        while slot > 0 && key < best[slot - 1].0 {
            best[slot] = best[slot - 1];
            slot -= 1;
        }
        best[slot] = (key, host_index);
        self.lens[cell] = (len + 1).min(count);
        let full = self.lens[cell] == count;
        if full {
            self.worst[cell] = Some(best[count - 1].0);
        }
        full
    }

    fn host_indices(&self) -> Vec<usize> {
        self.lens
            .iter()
            .enumerate()
            .flat_map(|(cell, len)| {
                self.kept[cell * self.count..cell * self.count + len]
                    .iter()
                    .map(|(_, host_index)| *host_index)
            })
            .collect()
    }
}
