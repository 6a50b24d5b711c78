//! The plan applier: one worker per cluster takes RunTask placements off a bounded queue,
//! decides a whole batch against one snapshot (each placement sees the ones before it), and
//! commits the batch in one compare-and-swap transaction, so one fsync covers many
//! requests and two placements can never oversubscribe a host. The worker keeps its host
//! index between batches and re-indexes only the hosts whose record or tasks changed.
//! Up to [`BATCHES_IN_FLIGHT_MAX`] batches commit at once, each decided on top of the ones
//! before it; the store evaluates them in the order they were sent.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::responses::Failure;
use flotilla_model::resources::Reservation;
use flotilla_model::{ContainerInstance, ContainerInstanceStatus, EcsError, Task};
use flotilla_scheduler::PlacementRequest;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use super::tasks::{Launch, RunTaskToken, new_task};
use super::{Engine, RequestContext, contention};
use crate::cache::{ClusterState, HostTasks, TaskSummary};
use crate::db::{CAS_RETRIES_MAX, TxnBuilder, Versioned};
use flotilla_scheduler::HostIndex;

/// Placements that may wait for a cluster's applier.
const QUEUE_MAX: usize = 1024;
/// Placements decided and committed together.
const JOBS_PER_BATCH_MAX: usize = 64;
/// Tasks one batch may place: each writes up to two keys (the task and its host) and
/// compares two, which keeps a batch's transaction well inside the store's limit of
/// operations per transaction.
const TASKS_PER_BATCH_MAX: usize = 240;
/// Batches committing at once. Each is sent as soon as it is decided, so while the store
/// syncs one the next queue behind it and its writer makes them durable together; more
/// would only hold more placements that a conflict throws away.
const BATCHES_IN_FLIGHT_MAX: usize = 4;
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
    /// Hosts the batches in flight write (`in_flight`) keep the index's own view, which holds
    /// those batches' placements; they are seen again once the write-through journals them.
    /// With batches in flight a rebuild would drop their placements and move host positions,
    /// so then it returns false instead, and the caller lands those batches first.
    #[must_use]
    fn refresh(&mut self, state: &ClusterState, in_flight: &Pipeline<'_>) -> bool {
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
                    (Some(&position), Some(_)) if in_flight.written(position).is_some() => {}
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
                return true;
            }
        }
        if !in_flight.flights.is_empty() {
            return false;
        }
        self.rebuild(state);
        true
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
        if source.0.mod_revision != instance.mod_revision {
            self.index.replace_host(
                position,
                crate::placement::host(&instance.value, tasks.map(|t| &**t)),
            );
            *source = (instance.clone(), tasks.cloned());
        } else if !same_tasks {
            // The record is the one the index holds (usually its own write, see
            // `landed`) and the task counts moved. When the groups moved only by the
            // index's own placements they already match, and only the running count
            // (which counts a batch's placements as running) is taken from the cache:
            // far cheaper than re-indexing the host.
            let host = &self.index.hosts()[position];
            let (running, groups) = tasks.map_or((0, None), |t| (t.running, Some(&t.groups)));
            if groups.map_or(host.task_groups.is_empty(), |g| *g == host.task_groups) {
                self.index.set_running_tasks_count(position, running);
            } else {
                self.index.replace_host(
                    position,
                    crate::placement::host(&instance.value, tasks.map(|t| &**t)),
                );
            }
            *source = (instance.clone(), tasks.cloned());
        }
    }

    /// Takes the host records a landed batch, decided on this index, wrote (see
    /// [`Engine::land`]), as committed. The host entries already hold the batch's
    /// placements; only what the next batch's compares expect moves forward.
    fn landed(&mut self, records: &[(usize, Arc<Versioned<ContainerInstance>>)]) {
        for (position, record) in records {
            if let Some(source) = self.sources.get_mut(*position)
                && source.0.mod_revision < record.mod_revision
            {
                source.0 = record.clone();
            }
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
        // A thread of its own: deciding a batch is CPU work that would hold up a request
        // worker, and a woken applier would queue behind every ready request task, which
        // stretches each batch's round trip. On its own thread `flotilla bench scheduler`
        // placed about 5% more per second (mean of eight runs alternated with the old
        // build). The thread ends with the applier, when it idles out or the server stops.
        // If the thread or its runtime cannot be had, the receiver is dropped: the caller's
        // send fails, and it tries once more before answering with a retryable error.
        let engine = self.clone();
        let spawned = std::thread::Builder::new()
            .name("flotilla-applier".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(engine.run_applier(receiver)),
                    Err(error) => tracing::error!(%error, "cannot start a plan applier's runtime"),
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start a plan applier's thread");
        }
        sender
    }

    /// Takes jobs off the queue and places them, batches committing while the next ones are
    /// decided (a pipeline up to [`BATCHES_IN_FLIGHT_MAX`] deep): each batch's index already
    /// holds the placements of those in flight, and its transaction expects the host records
    /// they write, byte for byte ([`flotilla_store::Compare::Value`]), since their revisions
    /// are not known until they commit. If a batch in flight fails, the ones decided on top
    /// of it that fail with it are decided again one at a time.
    async fn run_applier(self, mut receiver: mpsc::Receiver<PlacementJob>) {
        let mut kept: Option<KeptIndex> = None;
        let mut pipeline = Pipeline::default();
        loop {
            // Land what has committed, oldest first: its callers are waiting.
            while let Some(front) = pipeline.flights.front_mut()
                && let Some(committed) = (&mut front.commit).now_or_never()
            {
                let flight = pipeline.flights.pop_front().expect("a front flight");
                self.land_or_retry(flight, committed, &mut pipeline, &mut kept)
                    .await;
            }
            let mut jobs = Vec::new();
            if pipeline.flights.is_empty() {
                let first = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    received = tokio::time::timeout(IDLE_TIMEOUT, receiver.recv()) => match received {
                        Ok(Some(job)) => job,
                        Ok(None) | Err(_) => return,
                    },
                };
                jobs.push(first);
            } else if pipeline.flights.len() >= BATCHES_IN_FLIGHT_MAX {
                self.land_front(&mut pipeline, &mut kept).await;
                continue;
            } else if let Ok(job) = receiver.try_recv() {
                jobs.push(job);
            } else {
                // Nothing queued: whichever comes first, the oldest commit or a new job.
                let front = pipeline.flights.front_mut().expect("a front flight");
                tokio::select! {
                    biased;
                    committed = &mut front.commit => {
                        let flight = pipeline.flights.pop_front().expect("a front flight");
                        self.land_or_retry(flight, committed, &mut pipeline, &mut kept).await;
                        continue;
                    }
                    received = receiver.recv() => match received {
                        Some(job) => jobs.push(job),
                        None => {
                            self.drain_and_retry(&mut pipeline, &mut kept).await;
                            return;
                        }
                    },
                }
            }
            let mut tasks: usize = jobs.iter().map(|j| j.request.count).sum();
            while jobs.len() < JOBS_PER_BATCH_MAX && tasks < TASKS_PER_BATCH_MAX {
                match receiver.try_recv() {
                    Ok(job) => {
                        tasks += job.request.count;
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            // A job whose token a batch in flight records (a client's retry of a call still
            // being placed): let them finish first, so the retry finds the token's tasks.
            if jobs.iter().any(|job| {
                job.token
                    .as_ref()
                    .is_some_and(|token| pipeline.records_token(&token.key))
            }) {
                self.drain_and_retry(&mut pipeline, &mut kept).await;
            }
            let jobs = self.without_repeated_tokens(jobs).await;
            if jobs.is_empty() {
                continue;
            }
            let mut index = kept.take().unwrap_or_default();
            let keys = jobs[0].ctx.keys();
            let mut snapshot = self.cache.cluster(keys.root(), &jobs[0].cluster_name);
            if !index.refresh(&snapshot, &pipeline) {
                // Hosts joined or left: land the batches in flight, then index afresh.
                drop(snapshot);
                let retries = self.drain(&mut pipeline, None).await;
                if !retries.is_empty() {
                    kept = None;
                    for retry in retries {
                        self.apply_batch(retry, &mut kept).await;
                    }
                    self.apply_batch(jobs, &mut kept).await;
                    continue;
                }
                index = KeptIndex::default();
                snapshot = self.cache.cluster(keys.root(), &jobs[0].cluster_name);
                let _ = index.refresh(&snapshot, &pipeline);
            }
            let decided = self.decide(jobs, &mut index, &pipeline, snapshot);
            if decided.txn.is_empty() {
                // What it could not place holds only if the batches it saw commit.
                let retries = self.drain(&mut pipeline, Some(&mut index)).await;
                if !retries.is_empty() {
                    kept = None;
                    for retry in retries {
                        self.apply_batch(retry, &mut kept).await;
                    }
                    self.apply_batch(decided.jobs, &mut kept).await;
                    continue;
                }
                decided.answer();
                kept = Some(index);
                continue;
            }
            pipeline.flights.push_back(self.submit(decided));
            kept = Some(index);
        }
    }

    /// Sends a decided batch's transaction to the store at once (it is queued behind the
    /// batches sent before it).
    fn submit(&self, decided: Decided) -> InFlight<'_> {
        let Decided {
            jobs,
            answers,
            txn,
            written,
            tokens,
            created,
            root,
            cluster_name,
        } = decided;
        InFlight {
            jobs,
            answers,
            written,
            tokens,
            created,
            root,
            cluster_name,
            commit: self.db.commit_queued(txn.build()),
        }
    }

    /// Waits for the oldest batch in flight and lands it.
    async fn land_front(&self, pipeline: &mut Pipeline<'_>, kept: &mut Option<KeptIndex>) {
        if let Some(mut flight) = pipeline.flights.pop_front() {
            let committed = (&mut flight.commit).await;
            self.land_or_retry(flight, committed, pipeline, kept).await;
        }
    }

    /// Lands `flight`, the oldest batch. If it failed, so may the batches decided on top of
    /// it: they are landed or collected too, the index is dropped, and every failed batch
    /// is decided again on its own.
    async fn land_or_retry(
        &self,
        flight: InFlight<'_>,
        committed: Committed,
        pipeline: &mut Pipeline<'_>,
        kept: &mut Option<KeptIndex>,
    ) {
        if let Err(retry) = self.land(flight, committed, kept.as_mut()).await {
            let mut retries = vec![retry];
            retries.extend(self.drain(pipeline, None).await);
            *kept = None;
            for retry in retries {
                self.apply_batch(retry, kept).await;
            }
        }
    }

    /// Lands every batch in flight, oldest first; if any failed, drops the index and decides
    /// the failed ones again, each on its own.
    async fn drain_and_retry(&self, pipeline: &mut Pipeline<'_>, kept: &mut Option<KeptIndex>) {
        let retries = self.drain(pipeline, kept.as_mut()).await;
        if !retries.is_empty() {
            *kept = None;
            for retry in retries {
                self.apply_batch(retry, kept).await;
            }
        }
    }

    /// Waits for and lands every batch in flight, oldest first, telling `kept` (the index
    /// they were decided on) what they wrote. Returns the jobs of those that conflicted,
    /// batch by batch (each within the batch limits), to be decided again; after a
    /// conflict the index must be dropped.
    async fn drain(
        &self,
        pipeline: &mut Pipeline<'_>,
        mut kept: Option<&mut KeptIndex>,
    ) -> Vec<Vec<PlacementJob>> {
        let mut retries = Vec::new();
        while let Some(mut flight) = pipeline.flights.pop_front() {
            let committed = (&mut flight.commit).await;
            if let Err(retry) = self.land(flight, committed, kept.as_deref_mut()).await {
                retries.push(retry);
            }
        }
        retries
    }

    /// Lands a batch whose commit finished. Committed: writes it through to the cache and
    /// answers its jobs. A conflict: hands its jobs back to be decided again. A storage
    /// error: answers it.
    ///
    /// `kept`, the index the batch was decided on (if it is kept), learns the revision of the
    /// host records the batch wrote. It cannot count on the cache's journal for that: when
    /// the store's watch delivers the write before this write-through, the journal entry
    /// comes while the batch is still in flight, so the index skips it, and the write-through
    /// then changes nothing and journals nothing. The index would go on expecting the
    /// record's old revision, and the host's next placement would conflict.
    async fn land(
        &self,
        flight: InFlight<'_>,
        committed: Committed,
        kept: Option<&mut KeptIndex>,
    ) -> Result<(), Vec<PlacementJob>> {
        match committed {
            Ok(Some(revision)) => {
                self.placement_counters.batches_committed.inc();
                // One record per host, shared by the index and the cache.
                let records: Vec<(usize, Arc<Versioned<ContainerInstance>>)> = flight
                    .written
                    .into_iter()
                    .map(|(position, host)| {
                        let record = Versioned {
                            key: host.key,
                            value: host.instance,
                            mod_revision: revision,
                        };
                        (position, Arc::new(record))
                    })
                    .collect();
                if let Some(index) = kept {
                    index.landed(&records);
                }
                // The callers are answered first, so their responses are written while this
                // thread writes the batch through. A caller's next read cannot miss its
                // tasks: readers wait until the cache has applied the store's revision
                // (which the write-through does not claim), and the applier's own next
                // batch is decided on this thread, after the write-through.
                for (job, answer) in flight.jobs.into_iter().zip(flight.answers) {
                    let _ = job.reply.send(answer);
                }
                self.cache.committed(
                    records.into_iter().map(|(_, record)| record),
                    flight.created,
                    &flight.root,
                    &flight.cluster_name,
                    revision,
                );
                Ok(())
            }
            Ok(None) => {
                self.placement_counters.batches_conflicted.inc();
                // Decided again on what the conflict was with (or, should the cache not
                // catch up in time, conflicting again and ending in a contention error).
                if let Ok(revision) = self.db.store.revision().await {
                    self.cache.wait_for(revision).await;
                }
                Err(flight.jobs)
            }
            Err(error) => {
                for job in flight.jobs {
                    let _ = job.reply.send(Err(error.clone()));
                }
                Ok(())
            }
        }
    }

    /// Answers the jobs whose token was used before; returns the others.
    async fn without_repeated_tokens(&self, jobs: Vec<PlacementJob>) -> Vec<PlacementJob> {
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
        pending
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

    /// Decides and commits one batch with nothing else in flight, deciding again after a
    /// conflict. `kept` is the index from earlier batches; it is left in place only when
    /// this batch's placements committed (or nothing was placed), so it never holds a
    /// placement the store does not.
    async fn apply_batch(&self, mut jobs: Vec<PlacementJob>, kept: &mut Option<KeptIndex>) {
        for _ in 0..CAS_RETRIES_MAX {
            jobs = self.without_repeated_tokens(jobs).await;
            if jobs.is_empty() {
                return;
            }
            let mut index = kept.take().unwrap_or_default();
            let snapshot = self
                .cache
                .cluster(jobs[0].ctx.keys().root(), &jobs[0].cluster_name);
            let _ = index.refresh(&snapshot, &Pipeline::default());
            let decided = self.decide(jobs, &mut index, &Pipeline::default(), snapshot);
            if decided.txn.is_empty() {
                decided.answer();
                *kept = Some(index);
                return;
            }
            let mut flight = self.submit(decided);
            let committed = (&mut flight.commit).await;
            match self.land(flight, committed, Some(&mut index)).await {
                Ok(()) => {
                    *kept = Some(index);
                    return;
                }
                Err(retry) => jobs = retry,
            }
        }
        for job in jobs {
            let _ = job.reply.send(Err(contention()));
        }
    }

    /// Decides one batch against `kept`, already brought up to date with `snapshot`, and
    /// leaves it holding the batch's placements. Every job sees the placements of the jobs
    /// before it; hosts the batches `in_flight` write start from what the newest of them
    /// writes. No IO.
    ///
    /// The snapshot is the cache as it is, without waiting for the store's watch to catch
    /// up: this applier's own commits are written through, and whatever else is newer in
    /// the store makes the commit's compares fail, and the batch is decided again after the
    /// cache catches up.
    fn decide(
        &self,
        jobs: Vec<PlacementJob>,
        kept: &mut KeptIndex,
        in_flight: &Pipeline<'_>,
        snapshot: Arc<ClusterState>,
    ) -> Decided {
        let keys = jobs[0].ctx.keys();
        let cluster_name = jobs[0].cluster_name.clone();
        let any_active = snapshot.active_ec2_instances + snapshot.active_fargate_instances > 0;
        // Let go of the snapshot before the write-through, so the cache updates its maps in
        // place instead of copying the paths this snapshot still shares.
        drop(snapshot);
        let KeptIndex { index, sources, .. } = kept;
        let mut txn = TxnBuilder::new();
        let mut touched: BTreeMap<usize, ContainerInstance> = BTreeMap::new();
        let mut created_all: Vec<TaskSummary> = Vec::new();
        let mut answers: Vec<JobOutcome> = Vec::with_capacity(jobs.len());
        // The clientTokens this batch records: fingerprint and the job that placed.
        let mut recorded: HashMap<&str, (&str, usize)> = HashMap::new();
        for job in &jobs {
            // A retry in the same batch as the call it repeats gets that call's tasks.
            if let Some(token) = &job.token
                && let Some(&(fingerprint, earlier)) = recorded.get(token.key.as_str())
            {
                answers.push(if fingerprint == token.fingerprint {
                    match &answers[earlier] {
                        Ok(placed) => Ok(Placed {
                            tasks: placed.tasks.clone(),
                            failures: Vec::new(),
                            unplaced_event: None,
                        }),
                        Err(error) => Err(error.clone()),
                    }
                } else {
                    Err(EcsError::Conflict(
                        "The clientToken was already used with different parameters.".into(),
                    ))
                });
                continue;
            }
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
                // A host the batch in flight writes starts from what that batch writes.
                let instance = touched.entry(i).or_insert_with(|| {
                    in_flight
                        .written(i)
                        .map_or_else(|| sources[i].0.value.clone(), |w| w.instance.clone())
                });
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
                recorded.insert(&token.key, (&token.fingerprint, answers.len()));
            }
            created_all.extend(created.iter().map(|task| TaskSummary::of(task, 0)));
            answers.push(Ok(Placed {
                tasks: created,
                failures,
                unplaced_event,
            }));
        }
        let tokens = recorded.keys().map(|&key| key.to_owned()).collect();
        let mut written = HashMap::with_capacity(touched.len());
        for (i, mut instance) in touched {
            instance.version += 1;
            let key = &sources[i].0.key;
            match in_flight.written(i) {
                Some(host) => txn.expect_value(key, host.bytes.clone()),
                None => txn.expect(key, sources[i].0.mod_revision),
            };
            let bytes = serde_json::to_vec(&instance).unwrap_or_default();
            txn.put_encoded(key, bytes.clone());
            written.insert(
                i,
                WrittenHost {
                    key: key.clone(),
                    instance,
                    bytes,
                },
            );
        }
        Decided {
            jobs,
            answers,
            txn,
            written,
            tokens,
            created: created_all,
            root: keys.root().to_owned(),
            cluster_name,
        }
    }
}

/// A host record a batch writes.
struct WrittenHost {
    key: String,
    instance: ContainerInstance,
    /// The record encoded: what the next batch's compare expects.
    bytes: Vec<u8>,
}

/// Host records a batch writes, by host index.
type Written = HashMap<usize, WrittenHost>;

/// A batch decided and not yet sent.
struct Decided {
    jobs: Vec<PlacementJob>,
    answers: Vec<JobOutcome>,
    txn: TxnBuilder,
    written: Written,
    /// The keys of the clientTokens it records.
    tokens: HashSet<String>,
    /// The summaries of the tasks it creates, for the cache's write-through.
    created: Vec<TaskSummary>,
    root: String,
    cluster_name: String,
}

impl Decided {
    /// Answers the jobs of a batch that wrote nothing.
    fn answer(self) {
        for (job, answer) in self.jobs.into_iter().zip(self.answers) {
            let _ = job.reply.send(answer);
        }
    }
}

/// How a batch's commit ended: its revision, None on a conflict, or a storage error.
type Committed = Result<Option<flotilla_store::Revision>, EcsError>;

/// A batch whose commit is under way.
struct InFlight<'a> {
    jobs: Vec<PlacementJob>,
    answers: Vec<JobOutcome>,
    written: Written,
    tokens: HashSet<String>,
    /// The summaries of the tasks it creates, for the cache's write-through.
    created: Vec<TaskSummary>,
    root: String,
    cluster_name: String,
    /// Queued on the store when the batch was sent; polled only to learn the outcome.
    commit: flotilla_store::BoxFuture<'a, Committed>,
}

/// The batches in flight, oldest first.
#[derive(Default)]
struct Pipeline<'a> {
    flights: VecDeque<InFlight<'a>>,
}

impl Pipeline<'_> {
    /// What the newest batch in flight that writes host `position` writes.
    fn written(&self, position: usize) -> Option<&WrittenHost> {
        self.flights
            .iter()
            .rev()
            .find_map(|flight| flight.written.get(&position))
    }

    /// Whether a batch in flight records the clientToken stored under `key`.
    fn records_token(&self, key: &str) -> bool {
        self.flights
            .iter()
            .any(|flight| flight.tokens.contains(key))
    }
}
