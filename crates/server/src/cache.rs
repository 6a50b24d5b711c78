//! An in-memory, watch-fed view of every cluster's container instances and task summaries:
//! the snapshot placement decides on, and what counts and listings read, so a RunTask costs
//! the same with 10 tasks in the cluster as with 100,000.
//!
//! The store stays the source of truth. The cache follows it through a prefix watch (applied
//! in revision order; an entry only ever moves to a newer `mod_revision`), and the engine
//! writes its own commits through so the next request sees them at once. Placement commits
//! compare the instance revisions it read here, so a stale cache can cause a retry, never an
//! oversubscribed host.

use std::collections::{BTreeMap, HashMap};

use imbl::OrdMap;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use flotilla_model::{
    ContainerInstance, ContainerInstanceStatus, DesiredStatus, LaunchType, Task, TaskStatus,
};
use flotilla_reconcile::{SchedulingStrategy, Service, ServiceStatus};
use flotilla_store::{EventKind, Revision, Store};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::db::Versioned;

/// What listings, counts and placement need to know of a task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSummary {
    pub id: String,
    pub arn: String,
    pub instance_id: Option<String>,
    pub group: Option<String>,
    pub family: String,
    pub started_by: Option<String>,
    pub last_status: TaskStatus,
    pub desired_status: DesiredStatus,
    pub launch_type: LaunchType,
    pub mod_revision: Revision,
}

/// The fields of a stored task record that make its [`TaskSummary`], named as the record
/// names them: the watch hands the cache every task written by someone else, and reading
/// just these skips building the containers, overrides and timestamps of a whole `Task`.
#[derive(serde::Deserialize)]
struct StoredTaskSummary {
    id: String,
    arn: String,
    #[serde(default)]
    container_instance_id: Option<String>,
    #[serde(default)]
    group: Option<String>,
    family: String,
    #[serde(default)]
    started_by: Option<String>,
    last_status: TaskStatus,
    desired_status: DesiredStatus,
    launch_type: LaunchType,
}

impl TaskSummary {
    /// The summary of an encoded task record, without decoding the rest of it.
    fn decode(record: &[u8], mod_revision: Revision) -> Option<Self> {
        let stored: StoredTaskSummary = serde_json::from_slice(record).ok()?;
        Some(Self {
            id: stored.id,
            arn: stored.arn,
            instance_id: stored.container_instance_id,
            group: stored.group,
            family: stored.family,
            started_by: stored.started_by,
            last_status: stored.last_status,
            desired_status: stored.desired_status,
            launch_type: stored.launch_type,
            mod_revision,
        })
    }

    pub fn of(task: &Task, mod_revision: Revision) -> Self {
        Self {
            id: task.id.clone(),
            arn: task.arn.clone(),
            instance_id: task.container_instance_id.clone(),
            group: task.group.clone(),
            family: task.family.clone(),
            started_by: task.started_by.clone(),
            last_status: task.last_status,
            desired_status: task.desired_status,
            launch_type: task.launch_type,
            mod_revision,
        }
    }
}

/// The tasks on one host that are not STOPPED: what placement needs of them (how many by
/// group, how many RUNNING) and their ids, which is how an agent's poll and a
/// (de)registration find the host's tasks. Kept up to date with every task change, so a
/// placement snapshot costs O(hosts), not O(tasks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostTasks {
    pub groups: BTreeMap<String, u32>,
    pub running: u32,
    /// Persistent, so replacing an entry that a snapshot shares copies no ids.
    pub ids: imbl::OrdSet<String>,
}

impl HostTasks {
    fn add(&mut self, task: &TaskSummary) {
        self.ids.insert(task.id.clone());
        if let Some(group) = &task.group {
            *self.groups.entry(group.clone()).or_default() += 1;
        }
        if task.last_status == TaskStatus::Running {
            self.running += 1;
        }
    }

    fn remove(&mut self, task: &TaskSummary) {
        self.ids.remove(&task.id);
        if let Some(group) = &task.group
            && let Some(count) = self.groups.get_mut(group)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.groups.remove(group);
            }
        }
        if task.last_status == TaskStatus::Running {
            self.running = self.running.saturating_sub(1);
        }
    }
}

/// One cluster's instances and tasks. The maps are persistent (structurally shared), so a
/// snapshot is O(1) and a change while snapshots are out copies a path, not the cluster.
/// Values sit behind `Arc` because copying a path copies whole nodes of 64 entries: with
/// the records inline, every write under a live snapshot cloned hundreds of strings.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub instances: OrdMap<String, Arc<Versioned<ContainerInstance>>>,
    pub tasks: OrdMap<String, Arc<TaskSummary>>,
    /// Per instance id: its non-stopped tasks (see [`HostTasks`]). An entry is replaced,
    /// never changed in place, while anyone else holds it, so a holder can tell whether a
    /// host's tasks moved with `Arc::ptr_eq`.
    pub host_tasks: OrdMap<String, Arc<HostTasks>>,
    /// EC2 instance id -> container instance id, for instances that are not INACTIVE, so a
    /// registering host is found without a scan (10,000 registrations were O(n^2)).
    pub by_ec2_instance_id: OrdMap<String, String>,
    /// ACTIVE instances that are the user's (EC2) and that are Fargate capacity, so RunTask
    /// can tell "no container instances" without a scan.
    pub active_ec2_instances: usize,
    pub active_fargate_instances: usize,
    /// The ids of the instances whose record or task counts changed, oldest first: the
    /// newest [`HOST_CHANGES_MAX`] changes. With it a plan applier re-indexes only the
    /// hosts that moved since its last batch instead of comparing all of them.
    pub host_changes: imbl::Vector<String>,
    /// How many host changes there have ever been; `host_changes` holds the last ones.
    pub host_changes_total: u64,
}

/// Host changes a cluster remembers; an applier that falls further behind compares every
/// host once instead.
pub const HOST_CHANGES_MAX: usize = 16_384;

impl ClusterState {
    /// Replaces (or removes, with `None`) instance `id`, keeping `by_ec2_instance_id`.
    fn note_host_change(&mut self, id: &str) {
        self.host_changes.push_back(id.to_owned());
        if self.host_changes.len() > HOST_CHANGES_MAX {
            self.host_changes.pop_front();
        }
        self.host_changes_total += 1;
    }

    /// The ids of the tasks on instance `id` that are not STOPPED, in id order.
    pub fn task_ids_on(&self, id: &str) -> Vec<String> {
        self.host_tasks
            .get(id)
            .map(|tasks| tasks.ids.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The instance ids changed after the first `seen` host changes, or `None` when some of
    /// them are no longer remembered.
    pub fn host_changes_since(&self, seen: u64) -> Option<impl Iterator<Item = &String>> {
        let missed = self.host_changes_total.checked_sub(seen)?;
        let missed = usize::try_from(missed).ok()?;
        let skip = self.host_changes.len().checked_sub(missed)?;
        Some(self.host_changes.iter().skip(skip))
    }

    fn set_instance(&mut self, id: &str, instance: Option<Arc<Versioned<ContainerInstance>>>) {
        self.note_host_change(id);
        let old = match instance {
            Some(instance) => {
                self.count_active(&instance.value, 1);
                self.instances.insert(id.to_owned(), instance)
            }
            None => self.instances.remove(id),
        };
        if let Some(old) = &old {
            self.count_active(&old.value, -1);
        }
        if let Some(old) = old
            && self
                .by_ec2_instance_id
                .get(&old.value.ec2_instance_id)
                .is_some_and(|owner| owner == id)
        {
            self.by_ec2_instance_id.remove(&old.value.ec2_instance_id);
        }
        if let Some(new) = self.instances.get(id)
            && new.value.status != ContainerInstanceStatus::Inactive
        {
            self.by_ec2_instance_id
                .insert(new.value.ec2_instance_id.clone(), id.to_owned());
        }
    }

    fn count_active(&mut self, instance: &ContainerInstance, change: isize) {
        if instance.status != ContainerInstanceStatus::Active {
            return;
        }
        let count = if instance.is_fargate_capacity() {
            &mut self.active_fargate_instances
        } else {
            &mut self.active_ec2_instances
        };
        *count = count.saturating_add_signed(change);
    }

    /// Replaces (or removes, with `None`) the summary of task `id`, keeping `host_tasks`.
    fn set_task(&mut self, id: &str, task: Option<TaskSummary>) {
        let task = task.map(Arc::new);
        let old = match &task {
            Some(task) => self.tasks.insert(id.to_owned(), task.clone()),
            None => self.tasks.remove(id),
        };
        if let Some(old) = old.filter(|t| counts_on_host(t))
            && let Some(instance) = &old.instance_id
            && let Some(host) = self.host_tasks.get_mut(instance)
        {
            let host = Arc::make_mut(host);
            host.remove(&old);
            if host.ids.is_empty() {
                self.host_tasks.remove(instance);
            }
            self.note_host_change(instance);
        }
        if let Some(new) = task.filter(|t| counts_on_host(t))
            && let Some(instance) = &new.instance_id
        {
            Arc::make_mut(self.host_tasks.entry(instance.clone()).or_default()).add(&new);
            self.note_host_change(instance);
        }
    }
}

/// Stopped tasks hold nothing on their host.
fn counts_on_host(task: &TaskSummary) -> bool {
    task.last_status != TaskStatus::Stopped
}

/// `r/{account}/{region}/` plus the cluster name.
pub type ClusterKey = (String, String);

/// What the service controller and cluster counts need to know of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceSummary {
    pub status: ServiceStatus,
    pub scheduling_strategy: SchedulingStrategy,
}

/// A change the service controller reacts to, as the store watch delivered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheChange {
    /// A service record was written or deleted.
    Service {
        root: String,
        cluster: String,
        name: String,
    },
    /// A task of a service (group `service:NAME`) was written.
    ServiceTask {
        root: String,
        cluster: String,
        name: String,
    },
    /// A container instance was written or deleted: every service of the cluster may care.
    Instance { root: String, cluster: String },
}

/// How long a reader that needs everything committed waits for the cache to apply it.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Changes that may wait for the service controller; a controller that falls further
/// behind re-evaluates every service instead.
const CHANGES_QUEUE_MAX: usize = 4096;

#[derive(Default)]
struct State {
    clusters: HashMap<ClusterKey, Arc<ClusterState>>,
    services: HashMap<ClusterKey, BTreeMap<String, ServiceSummary>>,
}

/// Told of every write to a container instance, or to a task placed on one, once the cache
/// holds it: how a long-polling agent learns that its host's desired state moved. Routing
/// here costs nothing extra, since the cache has the task's host at hand (a second watch
/// would parse every task record again).
pub trait HostChanges: Send + Sync {
    /// Container instance `instance_id`, or a task on it, was written.
    fn changed(&self, instance_id: &str);
    /// The cache (re)loaded from a listing: any host may have changed.
    fn all_changed(&self);
}

pub struct StateCache {
    state: RwLock<State>,
    /// The newest store revision applied.
    applied: watch::Sender<Revision>,
    changes: broadcast::Sender<CacheChange>,
    /// Weak: the listener (the agents) holds the engine, which holds this cache.
    host_changes: OnceLock<Weak<dyn HostChanges>>,
}

enum Parsed<'a> {
    Instance {
        root: &'a str,
        cluster: &'a str,
        id: &'a str,
    },
    Task {
        root: &'a str,
        cluster: &'a str,
        id: &'a str,
    },
    Service {
        root: &'a str,
        cluster: &'a str,
        name: &'a str,
    },
}

/// Splits `r/{account}/{region}/{kind}/{cluster}/{id}`.
fn parse_key(key: &str) -> Option<Parsed<'_>> {
    let rest = key.strip_prefix("r/")?;
    let mut slashes = rest.match_indices('/').map(|(i, _)| i + 2);
    let _account_end = slashes.next()?;
    let root_end = slashes.next()?; // index after "r/{account}/{region}"
    let root = &key[..=root_end];
    let tail = &key[root_end + 1..];
    let (kind, tail) = tail.split_once('/')?;
    let (cluster, id) = tail.split_once('/')?;
    if id.contains('/') {
        return None;
    }
    match kind {
        "instance" => Some(Parsed::Instance { root, cluster, id }),
        "task" => Some(Parsed::Task { root, cluster, id }),
        "service" => Some(Parsed::Service {
            root,
            cluster,
            name: id,
        }),
        _ => None,
    }
}

impl StateCache {
    pub fn new() -> Self {
        Self {
            state: RwLock::new(State::default()),
            applied: watch::channel(0).0,
            changes: broadcast::channel(CHANGES_QUEUE_MAX).0,
            host_changes: OnceLock::new(),
        }
    }

    /// Whom to tell of host changes from now on (one listener; set before [`Self::run`]).
    pub fn tell_host_changes(&self, listener: &Arc<dyn HostChanges>) {
        if self.host_changes.set(Arc::downgrade(listener)).is_err() {
            tracing::warn!("the state cache already tells another listener of host changes");
        }
    }

    /// The host listener, while it lives.
    fn host_listener(&self) -> Option<Arc<dyn HostChanges>> {
        self.host_changes.get().and_then(Weak::upgrade)
    }

    /// Changes to services, their tasks and the hosts, as they arrive from the store.
    pub fn subscribe(&self) -> broadcast::Receiver<CacheChange> {
        self.changes.subscribe()
    }

    /// Every service known, as `(root, cluster, name)`.
    pub fn all_services(&self) -> Vec<(String, String, String)> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state
            .services
            .iter()
            .flat_map(|((root, cluster), names)| {
                names
                    .keys()
                    .map(|name| (root.clone(), cluster.clone(), name.clone()))
            })
            .collect()
    }

    /// The services of one cluster by name.
    pub fn services(&self, root: &str, cluster: &str) -> BTreeMap<String, ServiceSummary> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state
            .services
            .get(&(root.to_owned(), cluster.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    fn notify(&self, change: CacheChange) {
        // No receiver (no controller running) is fine.
        let _ = self.changes.send(change);
    }

    /// A consistent snapshot of one cluster (cheap: shared until the next change).
    pub fn cluster(&self, root: &str, cluster: &str) -> Arc<ClusterState> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state
            .clusters
            .get(&(root.to_owned(), cluster.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (bounded) until the cache has applied `revision`; false if it did not in time.
    pub async fn wait_for(&self, revision: Revision) -> bool {
        let mut receiver = self.applied.subscribe();
        matches!(
            tokio::time::timeout(
                CATCH_UP_TIMEOUT,
                receiver.wait_for(|applied| *applied >= revision),
            )
            .await,
            Ok(Ok(_))
        )
    }

    fn with_cluster(&self, root: &str, cluster: &str, change: impl FnOnce(&mut ClusterState)) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let entry = state
            .clusters
            .entry((root.to_owned(), cluster.to_owned()))
            .or_default();
        change(Arc::make_mut(entry));
    }

    /// The revision of what the cache holds of instance or task `id`, if anything; the
    /// engine's own commits arrive written through before the watch repeats them, so a
    /// repeat is recognised here without parsing the record again.
    fn known_revision(&self, parsed: &Parsed<'_>) -> Option<(Revision, Option<Arc<TaskSummary>>)> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let (root, cluster) = match parsed {
            Parsed::Instance { root, cluster, .. } | Parsed::Task { root, cluster, .. } => {
                (*root, *cluster)
            }
            Parsed::Service { .. } => return None,
        };
        let cluster = state.clusters.get(&(root.to_owned(), cluster.to_owned()))?;
        match parsed {
            Parsed::Instance { id, .. } => {
                cluster.instances.get(*id).map(|i| (i.mod_revision, None))
            }
            Parsed::Task { id, .. } => cluster
                .tasks
                .get(*id)
                .map(|t| (t.mod_revision, Some(t.clone()))),
            Parsed::Service { .. } => None,
        }
    }

    /// Records a put of `key` at `mod_revision`, unless something newer is already known,
    /// and tells the controllers and `hosts` (a listing passes none: it tells every host
    /// once, at the end).
    fn put(
        &self,
        key: &str,
        value: &[u8],
        mod_revision: Revision,
        hosts: Option<&dyn HostChanges>,
    ) {
        let parsed = parse_key(key);
        if let Some(parsed) = &parsed
            && let Some((known, summary)) = self.known_revision(parsed)
            && known >= mod_revision
        {
            // Already applied (written through); only tell the controllers and the host.
            match (parsed, summary) {
                (Parsed::Task { root, cluster, .. }, Some(summary)) => {
                    self.notify_service_task(root, cluster, summary.group.as_deref());
                    if let (Some(hosts), Some(instance_id)) = (hosts, &summary.instance_id) {
                        hosts.changed(instance_id);
                    }
                }
                (Parsed::Instance { root, cluster, id }, _) => {
                    self.notify_instance(root, cluster);
                    if let Some(hosts) = hosts {
                        hosts.changed(id);
                    }
                }
                _ => {}
            }
            return;
        }
        match parsed {
            Some(Parsed::Instance { root, cluster, id }) => {
                let Ok(instance) = serde_json::from_slice::<ContainerInstance>(value) else {
                    return;
                };
                self.with_cluster(root, cluster, |c| {
                    if c.instances
                        .get(id)
                        .is_none_or(|old| old.mod_revision < mod_revision)
                    {
                        c.set_instance(
                            id,
                            Some(Arc::new(Versioned {
                                key: key.to_owned(),
                                value: instance,
                                mod_revision,
                            })),
                        );
                    }
                });
                self.notify_instance(root, cluster);
                if let Some(hosts) = hosts {
                    hosts.changed(id);
                }
            }
            Some(Parsed::Task { root, cluster, id }) => {
                let Some(task) = TaskSummary::decode(value, mod_revision) else {
                    return;
                };
                let group = task.group.clone();
                let instance_id = hosts.and(task.instance_id.clone());
                self.with_cluster(root, cluster, |c| Self::put_task(c, id, task));
                self.notify_service_task(root, cluster, group.as_deref());
                if let (Some(hosts), Some(instance_id)) = (hosts, &instance_id) {
                    hosts.changed(instance_id);
                }
            }
            Some(Parsed::Service {
                root,
                cluster,
                name,
            }) => {
                let Ok(service) = serde_json::from_slice::<Service>(value) else {
                    return;
                };
                {
                    let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                    let services = state
                        .services
                        .entry((root.to_owned(), cluster.to_owned()))
                        .or_default();
                    services.insert(
                        name.to_owned(),
                        ServiceSummary {
                            status: service.status,
                            scheduling_strategy: service.scheduling_strategy,
                        },
                    );
                }
                self.notify(CacheChange::Service {
                    root: root.to_owned(),
                    cluster: cluster.to_owned(),
                    name: name.to_owned(),
                });
            }
            None => {}
        }
    }

    /// An instance was written or deleted: every service of its cluster may care.
    fn notify_instance(&self, root: &str, cluster: &str) {
        self.notify(CacheChange::Instance {
            root: root.to_owned(),
            cluster: cluster.to_owned(),
        });
    }

    /// A task of a service was written: its controller may have work.
    fn notify_service_task(&self, root: &str, cluster: &str, group: Option<&str>) {
        if let Some(name) = group.and_then(|g| g.strip_prefix("service:")) {
            self.notify(CacheChange::ServiceTask {
                root: root.to_owned(),
                cluster: cluster.to_owned(),
                name: name.to_owned(),
            });
        }
    }

    /// Records `task` unless something newer of it is already known.
    fn put_task(cluster: &mut ClusterState, id: &str, task: TaskSummary) {
        if cluster
            .tasks
            .get(id)
            .is_none_or(|old| old.mod_revision < task.mod_revision)
        {
            cluster.set_task(id, Some(task));
        }
    }

    /// Write-through of records the engine just committed at `revision`, all of one
    /// cluster (one lock and one copy-on-write of the cluster for the whole commit). The
    /// instance records are stored as given (they carry `revision`), so the committer can
    /// keep the same `Arc` and later tell, by pointer, that the cache still holds its write.
    pub fn committed(
        &self,
        instances: impl IntoIterator<Item = Arc<Versioned<ContainerInstance>>>,
        tasks: impl IntoIterator<Item = TaskSummary>,
        root: &str,
        cluster: &str,
        revision: Revision,
    ) {
        self.with_cluster(root, cluster, |c| {
            for instance in instances {
                if c.instances
                    .get(&instance.value.id)
                    .is_none_or(|old| old.mod_revision < revision)
                {
                    let id = instance.value.id.clone();
                    c.set_instance(&id, Some(instance));
                }
            }
            for mut task in tasks {
                task.mod_revision = revision;
                let id = task.id.clone();
                Self::put_task(c, &id, task);
            }
        });
    }

    pub fn delete(&self, key: &str, mod_revision: Revision) {
        match parse_key(key) {
            Some(Parsed::Instance { root, cluster, id }) => {
                self.with_cluster(root, cluster, |c| {
                    if c.instances
                        .get(id)
                        .is_some_and(|old| old.mod_revision < mod_revision)
                    {
                        c.set_instance(id, None);
                    }
                });
                self.notify_instance(root, cluster);
            }
            Some(Parsed::Task { root, cluster, id }) => self.with_cluster(root, cluster, |c| {
                if c.tasks
                    .get(id)
                    .is_some_and(|old| old.mod_revision < mod_revision)
                {
                    c.set_task(id, None);
                }
            }),
            Some(Parsed::Service {
                root,
                cluster,
                name,
            }) => {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                if let Some(services) = state
                    .services
                    .get_mut(&(root.to_owned(), cluster.to_owned()))
                {
                    services.remove(name);
                }
            }
            None => {}
        }
    }

    fn mark_applied(&self, revision: Revision) {
        self.applied.send_if_modified(|applied| {
            if revision > *applied {
                *applied = revision;
                true
            } else {
                false
            }
        });
    }

    /// Loads everything, then follows the store until `shutdown`. Re-lists after a lag.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, shutdown: CancellationToken) {
        loop {
            // Watch first, then list: events racing the listing are applied after it, and
            // the revision check makes applying them twice harmless. The watch covers every
            // key, not just `r/`: the cache only keeps `r/` records, but it must see the
            // store's other writes (the registry's `ecr/`) to know it has caught up with a
            // revision, which readers that need everything committed wait for.
            let mut watcher = match store.watch("", 0) {
                Ok(watcher) => watcher,
                Err(error) => {
                    tracing::warn!(%error, "state cache cannot watch the store");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if let Err(error) = self.load(&*store).await {
                tracing::warn!(%error, "state cache cannot list the store");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            loop {
                let events = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    events = watcher.next() => events,
                };
                let Ok(events) = events else {
                    tracing::warn!("state cache fell behind the store; reloading");
                    break;
                };
                let mut newest = 0;
                let hosts = self.host_listener();
                for event in events.iter() {
                    newest = newest.max(event.kv.mod_revision);
                    match event.kind {
                        EventKind::Put => self.put(
                            &event.kv.key,
                            &event.kv.value,
                            event.kv.mod_revision,
                            hosts.as_deref(),
                        ),
                        EventKind::Delete => self.delete(&event.kv.key, event.kv.mod_revision),
                    }
                }
                self.mark_applied(newest);
            }
        }
    }

    async fn load(&self, store: &dyn Store) -> Result<(), flotilla_store::StoreError> {
        let revision = store.revision().await?;
        let mut start_after = None;
        loop {
            let page = store
                .range(flotilla_store::RangeRequest {
                    prefix: "r/".into(),
                    start_after: start_after.take(),
                    limit: 1000,
                })
                .await?;
            for kv in &page.kvs {
                self.put(&kv.key, &kv.value, kv.mod_revision, None);
            }
            match (page.more, page.kvs.last()) {
                (true, Some(last)) => start_after = Some(last.key.clone()),
                _ => break,
            }
        }
        self.mark_applied(revision);
        if let Some(hosts) = self.host_listener() {
            hosts.all_changed();
        }
        Ok(())
    }
}

impl Default for StateCache {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write outside `r/` (the registry's) still counts as applied, so a reader that
    /// waits for the store's newest revision is not kept waiting for an `r/` write.
    #[tokio::test]
    async fn writes_outside_the_cached_prefix_are_caught_up_with() {
        let store: Arc<dyn Store> = Arc::new(flotilla_store::RedbStore::in_memory().unwrap());
        let cache = Arc::new(StateCache::new());
        let shutdown = CancellationToken::new();
        tokio::spawn(cache.clone().run(store.clone(), shutdown.clone()));
        let put = |key: &str| flotilla_store::Txn {
            compares: Vec::new(),
            ops: vec![flotilla_store::Op::Put {
                key: key.to_owned(),
                value: b"{}".to_vec(),
            }],
        };
        store.txn(put("r/0/us-east-1/cluster/c")).await.unwrap();
        store.txn(put("ecr/repo/0/us-east-1/web")).await.unwrap();
        let revision = store.revision().await.unwrap();
        let started = std::time::Instant::now();
        assert!(cache.wait_for(revision).await, "the cache caught up");
        assert!(started.elapsed() < CATCH_UP_TIMEOUT);
        shutdown.cancel();
    }

    /// What a long-polling agent hears: every write of its host's record or of a task on
    /// it, once the cache holds it, whether the record was written through first or not;
    /// and a "look again" for every host after each listing.
    #[tokio::test]
    async fn tells_the_host_listener_of_each_host_write() {
        #[derive(Default)]
        struct Heard(std::sync::Mutex<Vec<String>>);
        impl HostChanges for Heard {
            fn changed(&self, instance_id: &str) {
                self.0.lock().unwrap().push(instance_id.to_owned());
            }
            fn all_changed(&self) {
                self.0.lock().unwrap().push("*".to_owned());
            }
        }
        let store: Arc<dyn Store> = Arc::new(flotilla_store::RedbStore::in_memory().unwrap());
        let cache = Arc::new(StateCache::new());
        let heard = Arc::new(Heard::default());
        let listener: Arc<dyn HostChanges> = heard.clone();
        cache.tell_host_changes(&listener);
        let shutdown = CancellationToken::new();
        tokio::spawn(cache.clone().run(store.clone(), shutdown.clone()));
        // Written after the first listing, so each write comes by the watch.
        tokio::time::timeout(CATCH_UP_TIMEOUT, async {
            while heard.0.lock().unwrap().is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the cache listed the store");
        let keys = crate::db::Keys::new(&flotilla_model::Scope::new("us-east-1", "000000000000"));
        let instance = crate::fixtures::container_instance();
        let task = crate::fixtures::task();
        let mut unplaced = crate::fixtures::task();
        unplaced.id = "t-2".into();
        unplaced.container_instance_id = None;
        let puts = [
            (
                keys.instance("c", &instance.id),
                serde_json::to_vec(&instance).unwrap(),
            ),
            (keys.task("c", &task.id), serde_json::to_vec(&task).unwrap()),
            (
                keys.task("c", &unplaced.id),
                serde_json::to_vec(&unplaced).unwrap(),
            ),
        ];
        for (key, value) in puts {
            let txn = flotilla_store::Txn {
                compares: Vec::new(),
                ops: vec![flotilla_store::Op::Put { key, value }],
            };
            store.txn(txn).await.unwrap();
        }
        // The same task written again, this time through the cache before the watch.
        let mut running = task.clone();
        running.last_status = TaskStatus::Running;
        let txn = flotilla_store::Txn {
            compares: Vec::new(),
            ops: vec![flotilla_store::Op::Put {
                key: keys.task("c", &running.id),
                value: serde_json::to_vec(&running).unwrap(),
            }],
        };
        let flotilla_store::TxnOutcome::Committed { revision } = store.txn(txn).await.unwrap()
        else {
            panic!("an unconditional put conflicted");
        };
        cache.committed(
            [],
            [TaskSummary::of(&running, revision)],
            keys.root(),
            "c",
            revision,
        );
        assert!(cache.wait_for(revision).await, "the cache caught up");
        assert_eq!(*heard.0.lock().unwrap(), ["*", "i-1", "i-1", "i-1"]);
        shutdown.cancel();
    }

    /// The cache's partial read of a task record gives the summary of the whole record.
    #[test]
    fn a_decoded_task_summary_equals_the_summary_of_the_record() {
        let mut task = crate::fixtures::task();
        let decode = |task: &Task| TaskSummary::decode(&serde_json::to_vec(task).unwrap(), 7);
        assert_eq!(decode(&task), Some(TaskSummary::of(&task, 7)));
        task.container_instance_id = None;
        task.group = None;
        task.started_by = None;
        assert_eq!(decode(&task), Some(TaskSummary::of(&task, 7)));
        assert_eq!(TaskSummary::decode(b"{}", 7), None);
    }

    #[test]
    fn parses_resource_keys() {
        match parse_key("r/000000000000/us-east-1/task/prod/abc") {
            Some(Parsed::Task { root, cluster, id }) => {
                assert_eq!(
                    (root, cluster, id),
                    ("r/000000000000/us-east-1/", "prod", "abc")
                );
            }
            _ => panic!("not parsed"),
        }
        assert!(parse_key("r/0/us-east-1/cluster/prod").is_none());
        assert!(parse_key("r/0/us-east-1/itask/prod/i/t").is_none());
    }

    fn summary(id: usize, instance: usize, group: usize, status: TaskStatus) -> TaskSummary {
        TaskSummary {
            id: format!("t{id}"),
            arn: format!("arn:t{id}"),
            instance_id: Some(format!("i{instance}")),
            group: Some(format!("g{group}")),
            family: "f".into(),
            started_by: None,
            last_status: status,
            desired_status: DesiredStatus::Running,
            launch_type: LaunchType::Ec2,
            mod_revision: 1,
        }
    }

    proptest::proptest! {
        /// However tasks come, move and go, the per-host counts equal a recount.
        #[test]
        fn host_tasks_always_equal_a_recount(
            changes in proptest::collection::vec(
                (0usize..12, 0usize..4, 0usize..3, 0usize..4, proptest::bool::ANY),
                1..200,
            )
        ) {
            let statuses = [
                TaskStatus::Pending,
                TaskStatus::Running,
                TaskStatus::Stopping,
                TaskStatus::Stopped,
            ];
            let mut state = ClusterState::default();
            for (id, instance, group, status, delete) in changes {
                let task = (!delete).then(|| summary(id, instance, group, statuses[status]));
                state.set_task(&format!("t{id}"), task);
            }
            let mut recount: OrdMap<String, Arc<HostTasks>> = OrdMap::new();
            for task in state.tasks.values().filter(|t| counts_on_host(t)) {
                Arc::make_mut(recount.entry(task.instance_id.clone().unwrap()).or_default())
                    .add(task);
            }
            proptest::prop_assert_eq!(state.host_tasks, recount);
        }
    }
}
