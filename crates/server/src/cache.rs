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
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_model::{ContainerInstance, DesiredStatus, LaunchType, Task, TaskStatus};
use flotilla_store::{EventKind, Revision, Store};
use tokio::sync::watch;
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

impl TaskSummary {
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

/// One cluster's instances and tasks.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub instances: BTreeMap<String, Versioned<ContainerInstance>>,
    pub tasks: BTreeMap<String, TaskSummary>,
}

/// `r/{account}/{region}/` plus the cluster name.
pub type ClusterKey = (String, String);

#[derive(Default)]
struct State {
    clusters: HashMap<ClusterKey, Arc<ClusterState>>,
}

pub struct StateCache {
    state: RwLock<State>,
    /// The newest store revision applied.
    applied: watch::Sender<Revision>,
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
        _ => None,
    }
}

impl StateCache {
    pub fn new() -> Self {
        Self {
            state: RwLock::new(State::default()),
            applied: watch::channel(0).0,
        }
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

    /// Waits (bounded) until the cache has applied `revision`.
    pub async fn wait_for(&self, revision: Revision) {
        let mut receiver = self.applied.subscribe();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            receiver.wait_for(|applied| *applied >= revision),
        )
        .await;
    }

    fn with_cluster(&self, root: &str, cluster: &str, change: impl FnOnce(&mut ClusterState)) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let entry = state
            .clusters
            .entry((root.to_owned(), cluster.to_owned()))
            .or_default();
        change(Arc::make_mut(entry));
    }

    /// Records a put of `key` at `mod_revision`, unless something newer is already known.
    pub fn put(&self, key: &str, value: &[u8], mod_revision: Revision) {
        match parse_key(key) {
            Some(Parsed::Instance { root, cluster, id }) => {
                let Ok(instance) = serde_json::from_slice::<ContainerInstance>(value) else {
                    return;
                };
                self.with_cluster(root, cluster, |c| {
                    if c.instances
                        .get(id)
                        .is_none_or(|old| old.mod_revision < mod_revision)
                    {
                        c.instances.insert(
                            id.to_owned(),
                            Versioned {
                                key: key.to_owned(),
                                value: instance,
                                mod_revision,
                            },
                        );
                    }
                });
            }
            Some(Parsed::Task { root, cluster, id }) => {
                let Ok(task) = serde_json::from_slice::<Task>(value) else {
                    return;
                };
                self.put_task(root, cluster, id, &task, mod_revision);
            }
            None => {}
        }
    }

    fn put_task(&self, root: &str, cluster: &str, id: &str, task: &Task, mod_revision: Revision) {
        self.with_cluster(root, cluster, |c| {
            if c.tasks
                .get(id)
                .is_none_or(|old| old.mod_revision < mod_revision)
            {
                c.tasks
                    .insert(id.to_owned(), TaskSummary::of(task, mod_revision));
            }
        });
    }

    /// Write-through of records the engine just committed at `revision`.
    pub fn committed(
        &self,
        instances: &[ContainerInstance],
        tasks: &[Task],
        root: &str,
        revision: Revision,
    ) {
        for instance in instances {
            let key = format!("{root}instance/{}/{}", instance.cluster_name, instance.id);
            self.with_cluster(root, &instance.cluster_name, |c| {
                if c.instances
                    .get(&instance.id)
                    .is_none_or(|old| old.mod_revision < revision)
                {
                    c.instances.insert(
                        instance.id.clone(),
                        Versioned {
                            key,
                            value: instance.clone(),
                            mod_revision: revision,
                        },
                    );
                }
            });
        }
        for task in tasks {
            self.put_task(root, &task.cluster_name, &task.id, task, revision);
        }
    }

    pub fn delete(&self, key: &str, mod_revision: Revision) {
        match parse_key(key) {
            Some(Parsed::Instance { root, cluster, id }) => self.with_cluster(root, cluster, |c| {
                if c.instances
                    .get(id)
                    .is_some_and(|old| old.mod_revision < mod_revision)
                {
                    c.instances.remove(id);
                }
            }),
            Some(Parsed::Task { root, cluster, id }) => self.with_cluster(root, cluster, |c| {
                if c.tasks
                    .get(id)
                    .is_some_and(|old| old.mod_revision < mod_revision)
                {
                    c.tasks.remove(id);
                }
            }),
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
            // the revision check makes applying them twice harmless.
            let mut watcher = match store.watch("r/", 0) {
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
                for event in events {
                    newest = newest.max(event.kv.mod_revision);
                    match event.kind {
                        EventKind::Put => {
                            self.put(&event.kv.key, &event.kv.value, event.kv.mod_revision)
                        }
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
                self.put(&kv.key, &kv.value, kv.mod_revision);
            }
            match (page.more, page.kvs.last()) {
                (true, Some(last)) => start_after = Some(last.key.clone()),
                _ => break,
            }
        }
        self.mark_applied(revision);
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
}
