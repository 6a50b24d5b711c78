//! The shell around [`crate::task_engine`]: one tokio task per ECS task that observes its
//! containers, asks [`decide`] what to do, reports, acts and waits for the next event.
//!
//! ```text
//!   ┌──► observe (list by task label) ──► decide (pure) ──► report ──► act ──┐
//!   │                                                                        │
//!   └── wake: runtime event, new desired state, wake_at, resync, backoff ◄───┘
//! ```
//!
//! A runner never blocks on more than one bounded call at a time: pulls race against a stop
//! request, every runtime call has a timeout, reports are retried with backoff.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_model::{DesiredStatus, TaskDefinition, Timestamp};
use flotilla_protocol::{AssignedTask, TaskStateChange};
use futures::StreamExt;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::runtime::SandboxSpec;
use crate::runtime::{
    BoxFuture, ListFilter, ObservedContainer, RegistryAuth, Runtime, RuntimeError,
};
use crate::spec::{
    SpecContext, VolumeSource, container_spec, runtime_name, sandbox_name, task_labels,
    task_volumes,
};
use crate::task_engine::{
    Action, EngineSettings, Failure, FailureKind, Plan, TaskInput, TaskRecord, decide,
};

/// Looks again at a task this often even without events (events can be missed).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// The longest any single observation (list + inspect) may take.
pub const OBSERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a create, start, remove or volume call may take.
pub const RUNTIME_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Added to a container's stop timeout for the engine to confirm the stop.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// The longest one report may take before it is retried later.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pull attempts per image before the task fails, and the longest one attempt may take.
pub const PULL_ATTEMPTS_MAX: u32 = 3;
pub const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// Image pulls running at once on the host.
pub const PULLS_CONCURRENT_MAX: usize = 4;
/// The same plan this many times in a row means the runtime does not do what it says:
/// back off instead of spinning.
const REPEATED_PLANS_MAX: u32 = 5;

/// A source of the current time (milliseconds since the epoch).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Where task state changes go: the control plane in the agent, a recorder in tests.
pub trait Reporter: Send + Sync {
    /// Sends one change; `Ok` means the receiver accepted it.
    fn report(&self, change: TaskStateChange) -> BoxFuture<'_, Result<(), String>>;
}

/// Shared by every runner of an agent.
pub struct RunnerContext {
    pub runtime: Arc<dyn Runtime>,
    pub reporter: Arc<dyn Reporter>,
    pub settings: EngineSettings,
    /// The cluster name container labels carry.
    pub cluster: String,
    /// The agent's host id that container labels carry (`labels::INSTANCE`), if any.
    pub instance_id: Option<String>,
    pub registry_auth: Vec<RegistryAuth>,
    /// Tokens for the control plane's own registry (images named `SERVER_HOST/...`).
    pub server_registry: Option<Arc<crate::registry_auth::ServerRegistryAuth>>,
    pub clock: Clock,
    pub pull_attempts_max: u32,
    pub pull_retry_delay: Duration,
    pub resync_interval: Duration,
    /// The task metadata endpoint's base URL, given to containers (`None`: not served).
    pub metadata_endpoint: Option<String>,
    /// The OCI runtime Fargate tasks run under, if not the engine's default.
    pub fargate_runtime: Option<String>,
    /// What the metadata endpoint knows of each task.
    pub directory: Arc<crate::metadata::Directory>,
    pulls: Semaphore,
}

impl std::fmt::Debug for RunnerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerContext")
            .field("cluster", &self.cluster)
            .field("settings", &self.settings)
            .finish()
    }
}

impl RunnerContext {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        reporter: Arc<dyn Reporter>,
        cluster: &str,
        settings: EngineSettings,
    ) -> Self {
        Self {
            runtime,
            reporter,
            settings,
            cluster: cluster.to_owned(),
            instance_id: None,
            registry_auth: Vec::new(),
            server_registry: None,
            clock: Arc::new(crate::system_now),
            pull_attempts_max: PULL_ATTEMPTS_MAX,
            pull_retry_delay: Duration::from_secs(2),
            resync_interval: RESYNC_INTERVAL,
            metadata_endpoint: None,
            fargate_runtime: None,
            directory: Arc::default(),
            pulls: Semaphore::new(PULLS_CONCURRENT_MAX),
        }
    }
}

/// What the control plane says about a task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskUpdate {
    pub task: AssignedTask,
    pub definition: Option<TaskDefinition>,
    /// `false` once the control plane no longer lists the task.
    pub listed: bool,
}

/// Wake-up handles of the running tasks, by task ARN, for the event router.
#[derive(Debug, Default)]
pub struct Wakers {
    inner: Mutex<BTreeMap<String, Arc<Notify>>>,
}

impl Wakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Notify>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, task_arn: &str) -> Arc<Notify> {
        self.lock().entry(task_arn.to_owned()).or_default().clone()
    }

    fn unregister(&self, task_arn: &str) {
        self.lock().remove(task_arn);
    }

    /// Makes the task's runner look again.
    pub fn wake(&self, task_arn: &str) {
        if let Some(notify) = self.lock().get(task_arn) {
            notify.notify_one();
        }
    }

    pub fn wake_all(&self) {
        for notify in self.lock().values() {
            notify.notify_one();
        }
    }
}

/// Forwards runtime events to the runners they concern, reconnecting with backoff when
/// the event stream breaks. Runs until `shutdown`.
pub async fn route_events(
    runtime: Arc<dyn Runtime>,
    wakers: Arc<Wakers>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let mut events = runtime.events();
        // Whatever happened while not subscribed was missed: everyone looks again.
        wakers.wake_all();
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = events.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    backoff.reset();
                    if let Some(task_arn) = &event.task_arn {
                        tracing::debug!(task = %task_arn, container = ?event.container_name, kind = ?event.kind, "runtime event");
                        wakers.wake(task_arn);
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "runtime event stream failed; reconnecting");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// A running task runner.
#[derive(Debug)]
pub struct TaskHandle {
    updates: watch::Sender<TaskUpdate>,
    join: JoinHandle<TaskRecord>,
}

impl TaskHandle {
    /// Hands the runner a newer desired state.
    pub fn update(&self, update: TaskUpdate) {
        self.updates.send_if_modified(|current| {
            if *current == update {
                false
            } else {
                *current = update;
                true
            }
        });
    }

    /// The last state handed to the runner.
    pub fn current(&self) -> TaskUpdate {
        self.updates.borrow().clone()
    }

    /// Whether the runner ended (its task is stopped, reported and removed).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Waits for the runner to end and returns what it remembered.
    pub async fn join(self) -> Option<TaskRecord> {
        self.join.await.ok()
    }
}

/// Starts a runner for one task. It ends when the task is stopped, reported and removed,
/// or on `shutdown` (leaving containers as they are, for the next agent to adopt).
pub fn spawn_task(
    context: Arc<RunnerContext>,
    wakers: Arc<Wakers>,
    update: TaskUpdate,
    shutdown: CancellationToken,
) -> TaskHandle {
    let task_arn = update.task.task_arn.clone();
    let (updates, receiver) = watch::channel(update);
    let wake = wakers.register(&task_arn);
    let join = tokio::spawn(async move {
        let record = run_task(&context, receiver, &wake, &shutdown).await;
        wakers.unregister(&task_arn);
        record
    });
    TaskHandle { updates, join }
}

/// How a batch of actions went.
enum Outcome {
    Done,
    /// Something failed in a way that may pass: try again after a backoff.
    Transient(String),
    /// A stop request or shutdown cut the actions short.
    Interrupted,
}

async fn observe(
    runtime: &dyn Runtime,
    task_arn: &str,
) -> Result<BTreeMap<String, ObservedContainer>, RuntimeError> {
    let listed = tokio::time::timeout(OBSERVE_TIMEOUT, runtime.list(&ListFilter::task(task_arn)))
        .await
        .map_err(|_| {
            RuntimeError::Unavailable(format!("listing containers took over {OBSERVE_TIMEOUT:?}"))
        })??;
    let mut observed = BTreeMap::new();
    for container in listed {
        let Some(name) = container.container_name().map(str::to_owned) else {
            continue;
        };
        // Names are deterministic, so there is one container per name; prefer that one.
        let expected = runtime_name(task_arn, &name);
        let keep = match observed.get(&name) {
            None => true,
            Some(existing) => {
                let existing: &ObservedContainer = existing;
                existing.runtime_name != expected && container.runtime_name == expected
            }
        };
        if keep {
            observed.insert(name, container);
        }
    }
    Ok(observed)
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::from_millis(at.millis_since(now).max(0) as u64)
}

async fn run_task(
    context: &RunnerContext,
    mut updates: watch::Receiver<TaskUpdate>,
    wake: &Notify,
    shutdown: &CancellationToken,
) -> TaskRecord {
    let mut record = TaskRecord::default();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut report_backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut report_retry_at: Option<tokio::time::Instant> = None;
    let mut last_actions: Vec<Action> = Vec::new();
    let mut repeats = 0u32;
    let task_arn = updates.borrow().task.task_arn.clone();
    loop {
        if shutdown.is_cancelled() {
            return record;
        }
        let update = updates.borrow_and_update().clone();
        let observed = match observe(&*context.runtime, &task_arn).await {
            Ok(observed) => observed,
            Err(error) => {
                tracing::warn!(task = %task_arn, %error, "cannot observe the task's containers");
                let delay = backoff.next_delay();
                if !idle(&mut updates, wake, shutdown, delay).await {
                    return record;
                }
                continue;
            }
        };
        let now = (context.clock)();
        let input = TaskInput {
            task: &update.task,
            definition: update.definition.as_ref(),
            listed: update.listed,
            observed: &observed,
            settings: &context.settings,
        };
        let Plan {
            actions,
            report,
            wake_at,
            done,
        } = decide(&input, &mut record, now);
        let mut accepted = false;

        if let Some(change) = report
            && report_retry_at.is_none_or(|at| tokio::time::Instant::now() >= at)
        {
            tracing::info!(task = %task_arn, status = change.status.as_str(), reason = ?change.reason, "reporting");
            match tokio::time::timeout(REPORT_TIMEOUT, context.reporter.report(change.clone()))
                .await
            {
                Ok(Ok(())) => {
                    record.reported = Some(change);
                    report_backoff.reset();
                    report_retry_at = None;
                    // What was decided assumed the report had not been accepted yet (e.g.
                    // cleanup waits for STOPPED to be accepted): decide again at once.
                    accepted = true;
                }
                Ok(Err(error)) => {
                    tracing::warn!(task = %task_arn, %error, "report failed; will retry");
                    report_retry_at =
                        Some(tokio::time::Instant::now() + report_backoff.next_delay());
                }
                Err(_) => {
                    tracing::warn!(task = %task_arn, "report timed out; will retry");
                    report_retry_at =
                        Some(tokio::time::Instant::now() + report_backoff.next_delay());
                }
            }
        }
        if done {
            // An awsvpc task's sandbox (also one an earlier agent left) goes with the task.
            let sandbox = sandbox_name(&task_arn);
            let _ = with_timeout(
                RUNTIME_CALL_TIMEOUT,
                "removing a sandbox",
                context.runtime.remove(&sandbox),
            )
            .await;
            context.directory.forget(&task_arn);
            tracing::info!(task = %task_arn, "task stopped and removed");
            return record;
        }
        context.directory.remember(&update, record.network.clone());

        let mut delay = if accepted {
            Duration::ZERO
        } else {
            context.resync_interval
        };
        if let Some(at) = wake_at {
            delay = delay.min(until(now, at));
        }
        if let Some(at) = report_retry_at {
            delay = delay.min(at.saturating_duration_since(tokio::time::Instant::now()));
        }
        if !actions.is_empty() {
            repeats = if actions == last_actions {
                repeats + 1
            } else {
                0
            };
            last_actions = actions.clone();
            let outcome = if repeats >= REPEATED_PLANS_MAX {
                Outcome::Transient(format!(
                    "the same actions were needed {repeats} times: {actions:?}"
                ))
            } else {
                execute(
                    context,
                    &update,
                    &observed,
                    &mut record,
                    actions,
                    &mut updates,
                    shutdown,
                )
                .await
            };
            match outcome {
                Outcome::Done | Outcome::Interrupted => {
                    backoff.reset();
                    continue;
                }
                Outcome::Transient(error) => {
                    tracing::warn!(task = %task_arn, %error, "action failed; will retry");
                    delay = delay.min(backoff.next_delay());
                }
            }
        } else {
            last_actions.clear();
            repeats = 0;
        }
        if !idle(&mut updates, wake, shutdown, delay).await {
            return record;
        }
    }
}

/// Waits for a reason to look again. Returns `false` when the runner must end.
async fn idle(
    updates: &mut watch::Receiver<TaskUpdate>,
    wake: &Notify,
    shutdown: &CancellationToken,
    delay: Duration,
) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        changed = updates.changed() => changed.is_ok(),
        _ = wake.notified() => true,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Resolves once the control plane wants the task stopped (or no longer lists it).
async fn stop_requested(updates: &mut watch::Receiver<TaskUpdate>) {
    loop {
        {
            let update = updates.borrow_and_update();
            if update.task.desired_status == DesiredStatus::Stopped || !update.listed {
                return;
            }
        }
        if updates.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn with_timeout<T>(
    limit: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(RuntimeError::Unavailable(format!(
            "{what} took over {limit:?}"
        )))
    })
}

async fn pull(
    context: &RunnerContext,
    image: &str,
) -> Result<crate::runtime::ImageInfo, RuntimeError> {
    let _permit = context.pulls.acquire().await;
    let fetched = match (
        RegistryAuth::for_image(&context.registry_auth, image),
        &context.server_registry,
    ) {
        (None, Some(server)) => server.auth_for(image).await,
        _ => None,
    };
    let auth = RegistryAuth::for_image(&context.registry_auth, image).or(fetched.as_ref());
    let mut attempt = 1;
    loop {
        let result = with_timeout(
            PULL_TIMEOUT,
            "pulling an image",
            context.runtime.ensure_image(image, auth),
        )
        .await;
        match result {
            Ok(info) => return Ok(info),
            Err(error) if attempt >= context.pull_attempts_max => return Err(error),
            Err(error) => {
                tracing::warn!(%image, %error, attempt, "pull failed; retrying");
                tokio::time::sleep(context.pull_retry_delay * attempt).await;
                attempt += 1;
            }
        }
    }
}

async fn execute(
    context: &RunnerContext,
    update: &TaskUpdate,
    observed: &BTreeMap<String, ObservedContainer>,
    record: &mut TaskRecord,
    actions: Vec<Action>,
    updates: &mut watch::Receiver<TaskUpdate>,
    shutdown: &CancellationToken,
) -> Outcome {
    let task = &update.task;
    let runtime = &*context.runtime;
    let mut transient: Option<String> = None;
    let id_of = |name: &str| observed.get(name).map(|o| o.id.clone());

    // Pulls: all at once (one per image), abandoned if the task is to stop meanwhile.
    let mut pulls: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for action in &actions {
        if let Action::Pull { container, image } = action {
            pulls
                .entry(image.clone())
                .or_default()
                .push(container.clone());
        }
    }
    if !pulls.is_empty() {
        let work = futures::future::join_all(pulls.keys().map(|image| pull(context, image)));
        let results = tokio::select! {
            results = work => results,
            _ = stop_requested(updates) => return Outcome::Interrupted,
            _ = shutdown.cancelled() => return Outcome::Interrupted,
        };
        for ((image, containers), result) in pulls.iter().zip(results) {
            for container in containers {
                match &result {
                    Ok(info) => {
                        record.images_ready.insert(container.clone());
                        record
                            .image_digests
                            .insert(container.clone(), info.digest.clone());
                    }
                    Err(error) => {
                        tracing::warn!(task = %task.task_arn, %image, %error, "cannot pull image");
                        let message = match error {
                            RuntimeError::Pull { message, .. } => {
                                format!("pull image {image}: {message}")
                            }
                            other => format!("pull image {image}: {other}"),
                        };
                        record.failures.insert(
                            container.clone(),
                            Failure {
                                kind: FailureKind::Pull,
                                message,
                            },
                        );
                    }
                }
            }
        }
    }

    // Stops: all at once; each waits up to its container's timeout.
    let stops: Vec<(String, Duration)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { container, timeout } => Some((container.clone(), *timeout)),
            _ => None,
        })
        .collect();
    if !stops.is_empty() {
        let work = futures::future::join_all(stops.iter().map(|(name, timeout)| {
            let id = id_of(name);
            async move {
                tracing::info!(task = %task.task_arn, container = %name, ?timeout, "stopping container");
                match id {
                    Some(id) => with_timeout(*timeout + STOP_GRACE, "stopping a container", runtime.stop(&id, *timeout)).await,
                    None => Ok(()),
                }
            }
        }));
        let results = tokio::select! {
            results = work => results,
            _ = shutdown.cancelled() => return Outcome::Interrupted,
        };
        for ((name, _), result) in stops.iter().zip(results) {
            match result {
                Ok(()) | Err(RuntimeError::NotFound(_)) => {}
                Err(error) => transient = Some(format!("stop {name}: {error}")),
            }
        }
    }

    for action in actions {
        if shutdown.is_cancelled() {
            return Outcome::Interrupted;
        }
        match action {
            Action::Pull { .. } | Action::Stop { .. } => {}
            Action::CreateVolumes => {
                let Some(definition) = &update.definition else {
                    continue;
                };
                let mut failed = false;
                for source in task_volumes(task, definition, &context.cluster).values() {
                    let spec = match source {
                        VolumeSource::Task(spec)
                        | VolumeSource::Shared {
                            spec,
                            autoprovision: true,
                        } => spec,
                        _ => continue,
                    };
                    match with_timeout(
                        RUNTIME_CALL_TIMEOUT,
                        "creating a volume",
                        runtime.create_volume(spec),
                    )
                    .await
                    {
                        Ok(()) => {}
                        Err(error) if error.is_transient() => {
                            transient = Some(format!("create volume {}: {error}", spec.name));
                            failed = true;
                        }
                        Err(error) => {
                            record.volume_failure =
                                Some(format!("create volume {}: {error}", spec.name));
                            failed = true;
                        }
                    }
                }
                record.volumes_ready = !failed;
            }
            Action::Create { container } => {
                let Some(definition) = &update.definition else {
                    continue;
                };
                let Some(container_definition) = definition.container(&container) else {
                    continue;
                };
                let spec_context = SpecContext {
                    cluster: &context.cluster,
                    stop_timeout_default: context.settings.stop_timeout_default,
                    instance_id: context.instance_id.as_deref(),
                    metadata_endpoint: context.metadata_endpoint.as_deref(),
                    fargate_runtime: context.fargate_runtime.as_deref(),
                };
                let spec = container_spec(task, definition, container_definition, &spec_context);
                tracing::info!(task = %task.task_arn, %container, name = %spec.name, "creating container");
                match with_timeout(
                    RUNTIME_CALL_TIMEOUT,
                    "creating a container",
                    runtime.create(&spec),
                )
                .await
                {
                    Ok(_) => {}
                    Err(RuntimeError::Conflict(message)) => {
                        // The name is taken: by this task's container (seen next time), or by
                        // something else, which is a failure.
                        let ours = runtime
                            .inspect(&spec.name)
                            .await
                            .is_ok_and(|o| o.task_arn() == Some(task.task_arn.as_str()));
                        if !ours {
                            record.failures.insert(
                                container,
                                Failure {
                                    kind: FailureKind::Create,
                                    message,
                                },
                            );
                        }
                    }
                    Err(error) if error.is_transient() => {
                        transient = Some(format!("create {container}: {error}"))
                    }
                    Err(error) => {
                        record.failures.insert(
                            container,
                            Failure {
                                kind: FailureKind::Create,
                                message: error.to_string(),
                            },
                        );
                    }
                }
            }
            Action::Start { container } | Action::Restart { container } => {
                let Some(id) = id_of(&container) else {
                    continue;
                };
                if observed.get(&container).is_some_and(|o| o.has_exited()) {
                    let entry = record
                        .restarts
                        .entry(container.clone())
                        .or_insert((0, Timestamp::default()));
                    *entry = (entry.0 + 1, (context.clock)());
                    tracing::info!(task = %task.task_arn, %container, restarts = entry.0, "restarting container");
                } else {
                    tracing::info!(task = %task.task_arn, %container, "starting container");
                }
                match with_timeout(
                    RUNTIME_CALL_TIMEOUT,
                    "starting a container",
                    runtime.start(&id),
                )
                .await
                {
                    Ok(()) => {}
                    Err(error) if error.is_transient() => {
                        transient = Some(format!("start {container}: {error}"))
                    }
                    Err(error) => {
                        record.failures.insert(
                            container,
                            Failure {
                                kind: FailureKind::Start,
                                message: error.to_string(),
                            },
                        );
                    }
                }
            }
            Action::Remove { container } => {
                let Some(id) = id_of(&container) else {
                    continue;
                };
                tracing::info!(task = %task.task_arn, %container, "removing container");
                match with_timeout(
                    RUNTIME_CALL_TIMEOUT,
                    "removing a container",
                    runtime.remove(&id),
                )
                .await
                {
                    Ok(()) | Err(RuntimeError::NotFound(_)) => {}
                    Err(error) => transient = Some(format!("remove {container}: {error}")),
                }
            }
            Action::SetUpNetwork => {
                let mut labels = task_labels(task, &context.cluster);
                if let Some(instance_id) = &context.instance_id {
                    labels.insert(
                        crate::runtime::labels::INSTANCE.to_owned(),
                        instance_id.clone(),
                    );
                }
                let fargate = task.launch.launch_type == flotilla_model::LaunchType::Fargate;
                let spec = SandboxSpec {
                    name: sandbox_name(&task.task_arn),
                    cluster: context.cluster.clone(),
                    labels,
                    oci_runtime: context.fargate_runtime.clone().filter(|_| fargate),
                };
                tracing::info!(task = %task.task_arn, sandbox = %spec.name, "setting up the task's network");
                match with_timeout(
                    RUNTIME_CALL_TIMEOUT,
                    "setting up a task network",
                    runtime.ensure_sandbox(&spec),
                )
                .await
                {
                    Ok(network) => {
                        tracing::info!(task = %task.task_arn, address = %network.private_ipv4_address, "task network up");
                        record.network = Some(network);
                    }
                    Err(error) if error.is_transient() => {
                        transient = Some(format!("set up network: {error}"))
                    }
                    Err(error) => record.network_failure = Some(error.to_string()),
                }
            }
            Action::TearDownNetwork => {
                let name = sandbox_name(&task.task_arn);
                match with_timeout(
                    RUNTIME_CALL_TIMEOUT,
                    "removing a sandbox",
                    runtime.remove(&name),
                )
                .await
                {
                    Ok(()) | Err(RuntimeError::NotFound(_)) => record.network_removed = true,
                    Err(error) => transient = Some(format!("remove sandbox {name}: {error}")),
                }
            }
            Action::RemoveVolumes => {
                let filter = ListFilter::task(&task.task_arn);
                match with_timeout(
                    RUNTIME_CALL_TIMEOUT,
                    "listing volumes",
                    runtime.list_volumes(&filter),
                )
                .await
                {
                    Ok(names) => {
                        let mut removed = true;
                        for name in names {
                            match with_timeout(
                                RUNTIME_CALL_TIMEOUT,
                                "removing a volume",
                                runtime.remove_volume(&name),
                            )
                            .await
                            {
                                Ok(()) | Err(RuntimeError::NotFound(_)) => {}
                                Err(error) => {
                                    transient = Some(format!("remove volume {name}: {error}"));
                                    removed = false;
                                }
                            }
                        }
                        record.volumes_removed = removed;
                    }
                    Err(error) => transient = Some(format!("list volumes: {error}")),
                }
            }
        }
    }
    match transient {
        Some(error) => Outcome::Transient(error),
        None => Outcome::Done,
    }
}

/// A [`Reporter`] that keeps every change, for tests: await the state you expect.
#[derive(Debug)]
pub struct RecordingReporter {
    changes: watch::Sender<Vec<TaskStateChange>>,
}

impl Default for RecordingReporter {
    fn default() -> Self {
        Self {
            changes: watch::channel(Vec::new()).0,
        }
    }
}

impl RecordingReporter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every change reported so far, in order.
    pub fn changes(&self) -> Vec<TaskStateChange> {
        self.changes.borrow().clone()
    }

    /// The first reported change (past or future) that satisfies `predicate`.
    pub async fn wait_for(
        &self,
        mut predicate: impl FnMut(&TaskStateChange) -> bool,
    ) -> TaskStateChange {
        let mut receiver = self.changes.subscribe();
        let changes = receiver
            .wait_for(|changes| changes.iter().any(&mut predicate))
            .await;
        let changes = changes.map(|c| c.clone()).unwrap_or_default();
        changes
            .into_iter()
            .find(|c| predicate(c))
            .expect("found by wait_for")
    }
}

impl Reporter for RecordingReporter {
    fn report(&self, change: TaskStateChange) -> BoxFuture<'_, Result<(), String>> {
        self.changes.send_modify(|changes| changes.push(change));
        Box::pin(std::future::ready(Ok(())))
    }
}
