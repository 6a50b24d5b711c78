//! The plan applier: one worker per cluster takes RunTask placements off a bounded queue,
//! decides a whole batch against one snapshot (each placement sees the ones before it), and
//! commits the batch in one compare-and-swap transaction, so one fsync covers many
//! requests and two placements can never oversubscribe a host. The worker keeps its host
//! index between batches and re-indexes only the hosts whose record or tasks changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::responses::Failure;
use flotilla_model::resources::Reservation;
use flotilla_model::{ContainerInstance, ContainerInstanceStatus, EcsError, Task};
use flotilla_scheduler::PlacementRequest;
use tokio::sync::{mpsc, oneshot};

use super::tasks::{Launch, RunTaskToken, new_task};
use super::{Engine, RequestContext, contention};
use crate::cache::{ClusterState, HostTasks};
use crate::db::{CAS_RETRIES_MAX, TxnBuilder, Versioned};
use flotilla_scheduler::HostIndex;

/// Placements that may wait for a cluster's applier.
const QUEUE_MAX: usize = 1024;
/// Placements decided and committed together.
const JOBS_PER_BATCH_MAX: usize = 64;
/// An idle applier stops after this long (a new one starts with the next placement).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one job placed (tasks) and could not place (failures), or why it was refused.
type JobOutcome = Result<Placed, EcsError>;

/// What a placement job achieved.
pub(crate) struct Placed {
    pub tasks: Vec<Task>,
    /// One per host that could not take a task, with ECS's reason (`RESOURCE:CPU`, ...).
    pub failures: Vec<Failure>,
    /// For a service's job that left tasks unplaced: the service event naming the
    /// closest matching container instance.
    pub unplaced_event: Option<String>,
}

/// An idempotency token to check and record with the placement.
pub(crate) struct TokenSpec {
    pub key: String,
    pub fingerprint: String,
}

/// One RunTask call's placement.
pub(crate) struct PlacementJob {
    pub ctx: RequestContext,
    pub cluster_arn: String,
    pub cluster_name: String,
    pub launch: Launch,
    pub request: PlacementRequest,
    pub token: Option<TokenSpec>,
    /// The service whose reconciler asked for this placement, if any.
    pub service_name: Option<String>,
    pub reply: oneshot::Sender<JobOutcome>,
}

/// The host index an applier keeps between batches, with what each host was built from.
/// Only the index's own commits and the cache move a host forward, and the cache keeps a
/// journal of the hosts that changed, so a batch re-indexes only those: with 10,000 hosts
/// that turns a rebuild per batch (tens of milliseconds) into a few hundred updates.
/// A host's instance record and task counts as an index was built from them.
type HostSource = (Arc<Versioned<ContainerInstance>>, Option<Arc<HostTasks>>);

#[derive(Default)]
struct KeptIndex {
    index: HostIndex,
    /// Per host index: the instance record and the task counts it was built from (the
    /// cache replaces a host's counts rather than changing them, so `Arc::ptr_eq` tells).
    sources: Vec<HostSource>,
    /// Host index by instance id.
    positions: HashMap<String, usize>,
    /// How many of the cluster's host changes the index has caught up with.
    seen_changes: u64,
    built: bool,
}

impl KeptIndex {
    /// Brings the index up to date with the cluster: host by host from the change journal,
    /// or from scratch when hosts joined or left, or the journal no longer reaches back.
    fn refresh(&mut self, state: &ClusterState) {
        if self.built
            && let Some(changed) = state.host_changes_since(self.seen_changes)
        {
            let mut joined_or_left = false;
            // A placement changes a host twice (its record and its tasks): look once.
            let mut looked_at = HashSet::new();
            for id in changed {
                if !looked_at.insert(id) {
                    continue;
                }
                let instance = state
                    .instances
                    .get(id)
                    .filter(|i| i.value.status != ContainerInstanceStatus::Inactive);
                match (self.positions.get(id), instance) {
                    (Some(&position), Some(instance)) => {
                        self.update(position, instance, state.host_tasks.get(id));
                    }
                    (None, None) => {}
                    _ => {
                        joined_or_left = true;
                        break;
                    }
                }
            }
            if !joined_or_left {
                self.seen_changes = state.host_changes_total;
                return;
            }
        }
        self.rebuild(state);
    }

    fn update(
        &mut self,
        position: usize,
        instance: &Arc<Versioned<ContainerInstance>>,
        tasks: Option<&Arc<HostTasks>>,
    ) {
        let source = &mut self.sources[position];
        let same_tasks = match (&source.1, tasks) {
            (Some(kept), Some(now)) => Arc::ptr_eq(kept, now),
            (None, None) => true,
            _ => false,
        };
        if source.0.mod_revision != instance.mod_revision || !same_tasks {
            self.index.replace_host(
                position,
                crate::placement::host(&instance.value, tasks.map(|t| &**t)),
            );
            *source = (instance.clone(), tasks.cloned());
        }
    }

    /// Indexes every host that is not INACTIVE, in id order.
    fn rebuild(&mut self, state: &ClusterState) {
        let instances: Vec<&Arc<Versioned<ContainerInstance>>> = state
            .instances
            .values()
            .filter(|i| i.value.status != ContainerInstanceStatus::Inactive)
            .collect();
        self.index = HostIndex::new(crate::placement::hosts(
            instances.iter().map(|i| &i.value),
            &state.host_tasks,
        ));
        self.sources = instances
            .iter()
            .map(|i| ((*i).clone(), state.host_tasks.get(&i.value.id).cloned()))
            .collect();
        self.positions = instances
            .iter()
            .enumerate()
            .map(|(position, i)| (i.value.id.clone(), position))
            .collect();
        self.seen_changes = state.host_changes_total;
        self.built = true;
    }
}

impl Engine {
    /// Queues a placement on its cluster's applier and waits for the outcome.
    pub(crate) async fn apply_placement(&self, job: PlacementJob) -> JobOutcome {
        let cluster_key = job.ctx.keys().cluster(&job.cluster_name);
        let (reply, answer) = oneshot::channel();
        let mut job = PlacementJob { reply, ..job };
        // Every launch type stays on its own capacity (FARGATE on Fargate-capacity hosts).
        job.request
            .constraints
            .push(super::tasks::capacity_constraint(
                job.launch.capacity.launch_type,
            ));
        for _ in 0..2 {
            let sender = self.applier(&cluster_key);
            match sender.send(job).await {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(EcsError::Server("The placement was abandoned.".into()))
                    });
                }
                // The applier stopped (idle) just now: start a new one and send again.
                Err(mpsc::error::SendError(returned)) => {
                    self.appliers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&cluster_key);
                    job = returned;
                }
            }
        }
        Err(contention())
    }

    fn applier(&self, cluster_key: &str) -> mpsc::Sender<PlacementJob> {
        let mut appliers = self.appliers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = appliers.get(cluster_key).filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::channel(QUEUE_MAX);
        appliers.insert(cluster_key.to_owned(), sender.clone());
        tokio::spawn(self.clone().run_applier(receiver));
        sender
    }

    async fn run_applier(self, mut receiver: mpsc::Receiver<PlacementJob>) {
        let mut kept = None;
        loop {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                received = tokio::time::timeout(IDLE_TIMEOUT, receiver.recv()) => match received {
                    Ok(Some(job)) => job,
                    Ok(None) | Err(_) => return,
                },
            };
            let mut batch = vec![first];
            while batch.len() < JOBS_PER_BATCH_MAX {
                match receiver.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.apply_batch(batch, &mut kept).await;
        }
    }

    /// Answers a job whose token was used before, if it was.
    async fn answer_from_token(&self, job: &PlacementJob) -> Result<Option<Placed>, EcsError> {
        let Some(token) = &job.token else {
            return Ok(None);
        };
        let Some(record) = self.db.get::<RunTaskToken>(&token.key).await? else {
            return Ok(None);
        };
        if record.value.expires_at <= job.ctx.now {
            return Ok(None);
        }
        if record.value.fingerprint != token.fingerprint {
            return Err(EcsError::Conflict(
                "The clientToken was already used with different parameters.".into(),
            ));
        }
        let keys = job.ctx.keys();
        let mut tasks = Vec::new();
        for id in &record.value.task_ids {
            if let Some(task) = self
                .db
                .get::<Task>(&keys.task(&job.cluster_name, id))
                .await?
            {
                tasks.push(task.value);
            }
        }
        Ok(Some(Placed {
            tasks,
            failures: Vec::new(),
            unplaced_event: None,
        }))
    }

    /// Decides and commits one batch. `kept` is the index from earlier batches; it is left
    /// in place only when this batch's placements committed (or nothing was placed), so it
    /// never holds a placement the store does not.
    async fn apply_batch(&self, mut jobs: Vec<PlacementJob>, kept: &mut Option<KeptIndex>) {
        for _ in 0..CAS_RETRIES_MAX {
            // Jobs answered without placing (repeated tokens, errors) leave the batch.
            let mut pending = Vec::with_capacity(jobs.len());
            for job in jobs {
                match self.answer_from_token(&job).await {
                    Ok(Some(answer)) => {
                        let _ = job.reply.send(Ok(answer));
                    }
                    Ok(None) => pending.push(job),
                    Err(error) => {
                        let _ = job.reply.send(Err(error));
                    }
                }
            }
            jobs = pending;
            if jobs.is_empty() {
                return;
            }
            let ctx = &jobs[0].ctx;
            let cluster_name = jobs[0].cluster_name.clone();
            let keys = ctx.keys();
            // The cache as it is, without waiting for the store's watch to catch up: this
            // applier's own commits are written through, and whatever else is newer in the
            // store makes the commit's revision check fail, and the batch is decided again
            // after the cache catches up.
            let snapshot = self.cache.cluster(keys.root(), &cluster_name);
            // Every job of the batch places against one index, seeing the placements of the
            // jobs before it; the index is taken out while it may hold uncommitted ones.
            let mut taken = kept.take().unwrap_or_default();
            taken.refresh(&snapshot);
            let any_active = snapshot.active_ec2_instances + snapshot.active_fargate_instances > 0;
            // Let go of the snapshot before the write-through, so the cache updates its
            // maps in place instead of copying the paths this snapshot still shares.
            drop(snapshot);
            let KeptIndex { index, sources, .. } = &mut taken;
            let mut txn = TxnBuilder::new();
            let mut touched: BTreeMap<usize, ContainerInstance> = BTreeMap::new();
            let mut created_all: Vec<Task> = Vec::new();
            let mut answers: Vec<JobOutcome> = Vec::with_capacity(jobs.len());
            for job in &jobs {
                if !any_active {
                    answers.push(Err(EcsError::invalid(
                        "No Container Instances were found in your cluster.",
                    )));
                    continue;
                }
                let result = index.place(&job.request, rand::random());
                let unplaced_event = match (&job.service_name, result.unplaced > 0) {
                    (Some(service), true) => Some(flotilla_reconcile::placement_failure_event(
                        service,
                        index.hosts(),
                        &result.rejections,
                    )),
                    _ => None,
                };
                let failures: Vec<Failure> = if result.unplaced > 0 {
                    result
                        .rejections
                        .iter()
                        .map(|r| {
                            Failure::new(
                                index.hosts()[r.host_index].arn.clone(),
                                r.reason.ecs_reason(),
                            )
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let mut created = Vec::new();
                for placement in result.placements {
                    let i = placement.host_index;
                    // Later jobs of this batch see this placement.
                    index.apply(&placement, &job.launch.group);
                    let reservation: Reservation = placement.reservation;
                    let instance = touched
                        .entry(i)
                        .or_insert_with(|| sources[i].0.value.clone());
                    instance.remaining.apply(&reservation);
                    let task = new_task(
                        &job.ctx,
                        &job.cluster_arn,
                        &cluster_name,
                        &job.launch,
                        instance,
                        reservation,
                    );
                    let task_key = keys.task(&cluster_name, &task.id);
                    txn.expect(&task_key, 0).put(&task_key, &task);
                    txn.put(
                        &keys.instance_task(&cluster_name, &instance.id, &task.id),
                        &(),
                    );
                    created.push(task);
                }
                if let (Some(token), false) = (&job.token, created.is_empty()) {
                    let record = RunTaskToken {
                        fingerprint: token.fingerprint.clone(),
                        task_ids: created.iter().map(|t| t.id.clone()).collect(),
                        expires_at: job
                            .ctx
                            .now
                            .plus_millis(self.config.client_token_retention_ms),
                    };
                    txn.put(&token.key, &record);
                }
                created_all.extend(created.iter().cloned());
                answers.push(Ok(Placed {
                    tasks: created,
                    failures,
                    unplaced_event,
                }));
            }
            let mut updated = Vec::with_capacity(touched.len());
            for (i, mut instance) in touched {
                instance.version += 1;
                txn.replace(&sources[i].0, &instance);
                updated.push(instance);
            }
            let committed = if txn.is_empty() {
                Ok(Some(0))
            } else {
                self.db.commit(txn.build()).await
            };
            match committed {
                Ok(Some(revision)) => {
                    *kept = Some(taken);
                    if revision > 0 {
                        self.cache.committed(
                            updated,
                            &created_all,
                            keys.root(),
                            &cluster_name,
                            revision,
                        );
                    }
                    for (job, answer) in jobs.into_iter().zip(answers) {
                        let _ = job.reply.send(answer);
                    }
                    return;
                }
                Ok(None) => {
                    // A host changed under us (a report, a drain): catch up and decide again.
                    if let Ok(revision) = self.db.store.revision().await {
                        self.cache.wait_for(revision).await;
                    }
                }
                Err(error) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(error.clone()));
                    }
                    return;
                }
            }
        }
        for job in jobs {
            let _ = job.reply.send(Err(contention()));
        }
    }
}
