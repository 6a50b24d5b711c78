//! The host agent: registers its host as a container instance, long-polls the control plane
//! for the tasks it must run, runs them through a [`Runtime`] and reports what happens.
//!
//! ```text
//!  run ─► detect host ─► register ─► list managed containers ─┐
//!                                                             ▼
//!        ┌──────────── poll (heartbeat + long-poll, backoff on errors) ◄──────────┐
//!        ▼                                                                       │
//!   per task: a runner (task_runner) ── observe ─► decide (task_engine) ─► act ──┘
//!             woken by runtime events (route_events), new desired state, timers
//! ```
//!
//! Module map: [`runtime`] (the trait), [`spec`] (task definition → container spec, pure),
//! [`task_engine`] (per-task decisions, pure), [`task_runner`] (the shell per task),
//! [`host`] (capacity, identity, attributes), [`mod@logs`] (reading and serving logs),
//! [`fake`] (an in-memory runtime for tests), [`client`] (the signed protocol client).

mod backoff;
pub mod client;
pub mod fake;
pub mod host;
pub mod logs;
pub mod metadata;
pub mod registry_auth;
pub mod runtime;
pub mod spec;
pub mod task_engine;
pub mod task_runner;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use client::{ClientError, ServerClient, SigningIdentity};
use flotilla_model::resources::Resources;
use flotilla_model::task::{TaskOverride, TaskStatus};
use flotilla_model::{DesiredStatus, Timestamp, VersionInfo};
use flotilla_protocol::{
    AgentCall, AssignedTask, PROTOCOL_VERSION, PollRequest, PollResponse, RegisterRequest,
    RegisterResponse, ReportRequest, ReportResponse, TaskStateChange,
};
pub use logs::{LogsError, TaskLogChunk, fetch_logs, logs};
pub use runtime::{RegistryAuth, Runtime, RuntimeError};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::runtime::{BoxFuture, ListFilter, labels};
use crate::task_engine::EngineSettings;
use crate::task_runner::{
    Reporter, RunnerContext, TaskHandle, TaskUpdate, Wakers, route_events, spawn_task,
};

/// The agent's version, sent at registration.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long a poll waits on the server for a change (the poll is also the heartbeat).
pub const POLL_WAIT_MS: u64 = 20_000;
/// ECS's default for keeping stopped containers (`ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION`).
pub const STOPPED_CONTAINER_RETENTION_DEFAULT: Duration = Duration::from_secs(3 * 3600);
/// Memory kept for the operating system and the agent by default.
pub const MEMORY_RESERVE_MIB_DEFAULT: i64 = 256;
/// Attempts to reach the container runtime at start before giving up.
const RUNTIME_ATTEMPTS_MAX: u32 = 8;
/// How long runners get to finish on shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a finished task is remembered, so a stale poll answer cannot restart it.
const FINISHED_MEMORY: Duration = Duration::from_secs(3600);

/// The current time as a [`Timestamp`].
pub fn system_now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp::from_millis(millis)
}

/// How to run the agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The control plane's endpoint (`http://host:4750`).
    pub server: String,
    /// The cluster to join (name or ARN).
    pub cluster: String,
    pub identity: SigningIdentity,
    /// Custom attributes (`--attribute K=V`).
    pub attributes: Vec<(String, String)>,
    /// Becomes `ecs.availability-zone`.
    pub zone: Option<String>,
    /// Where the agent keeps its identity across restarts.
    pub data_dir: PathBuf,
    /// Memory kept back from tasks.
    pub memory_reserve_mib: i64,
    /// How long stopped containers are kept before removal.
    pub stopped_container_retention: Duration,
    /// Stop timeout of containers without `stopTimeout`.
    pub stop_timeout_default: Duration,
    /// Host ports tasks may not use.
    pub reserved_ports_tcp: Vec<u16>,
    /// GPU ids the host offers.
    pub gpu_ids: Vec<String>,
    /// Credentials for private registries.
    pub registry_auth: Vec<RegistryAuth>,
    /// Pull attempts per image before its task fails to start.
    pub pull_attempts_max: u32,
    /// Serve container logs here (`None`: no endpoint).
    pub logs_listen: Option<SocketAddr>,
    /// The URL the control plane should give out for the logs endpoint (default: derived
    /// from the bound address).
    pub logs_advertise_url: Option<String>,
    /// Offer this host as Fargate capacity (`flotilla agent --fargate`): it runs FARGATE
    /// and FARGATE_SPOT tasks only and is hidden from the user's instance lists.
    pub fargate_capacity: bool,
    /// The OCI runtime Fargate tasks run under (`runsc`, `kata-runtime`), when installed.
    pub fargate_runtime: Option<String>,
    /// Serve the task metadata endpoint (v4) on the cluster network's gateway.
    pub metadata_endpoint: bool,
}

impl AgentConfig {
    pub fn new(
        server: impl Into<String>,
        cluster: impl Into<String>,
        identity: SigningIdentity,
        data_dir: PathBuf,
    ) -> Self {
        Self {
            server: server.into(),
            cluster: cluster.into(),
            identity,
            attributes: Vec::new(),
            zone: None,
            data_dir,
            memory_reserve_mib: MEMORY_RESERVE_MIB_DEFAULT,
            stopped_container_retention: STOPPED_CONTAINER_RETENTION_DEFAULT,
            stop_timeout_default: spec::STOP_TIMEOUT_DEFAULT,
            reserved_ports_tcp: host::RESERVED_PORTS_TCP_DEFAULT.to_vec(),
            gpu_ids: Vec::new(),
            registry_auth: Vec::new(),
            pull_attempts_max: task_runner::PULL_ATTEMPTS_MAX,
            logs_listen: None,
            logs_advertise_url: None,
            fargate_capacity: false,
            fargate_runtime: None,
            metadata_endpoint: true,
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot use the data directory {path}: {message}")]
    DataDir { path: PathBuf, message: String },
    #[error("the control plane refused to register this host: {0}")]
    Registration(ClientError),
    #[error("cannot serve logs on {address}: {source}")]
    LogsListen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the container runtime is not usable: {0}")]
    Runtime(RuntimeError),
    #[error("this container instance was deregistered; its containers were stopped")]
    Deregistered,
}

/// Sends task state changes to the control plane.
struct ServerReporter {
    client: ServerClient,
    instance_arn: Arc<RwLock<String>>,
}

impl Reporter for ServerReporter {
    fn report(&self, change: TaskStateChange) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let arn = self
                .instance_arn
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let task_arn = change.task_arn.clone();
            let request = ReportRequest {
                container_instance_arn: arn,
                tasks: vec![change],
            };
            let response: ReportResponse = self
                .client
                .agent(AgentCall::Report, &request)
                .await
                .map_err(|e| e.to_string())?;
            if !response.accepted.contains(&task_arn) {
                // The control plane does not know the task (any more); retrying cannot help.
                tracing::warn!(task = %task_arn, "the control plane skipped the report of an unknown task");
            }
            Ok(())
        })
    }
}

/// What the host offers and says about itself.
struct HostFacts {
    resources: Resources,
    attributes: Vec<flotilla_model::Attribute>,
    version_info: VersionInfo,
    hostname: Option<String>,
}

async fn detect_host(
    config: &AgentConfig,
    runtime: &dyn Runtime,
    shutdown: &CancellationToken,
) -> Result<HostFacts, AgentError> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut attempt = 1;
    let info = loop {
        match runtime.info().await {
            Ok(info) => break info,
            Err(error) if attempt < RUNTIME_ATTEMPTS_MAX && !shutdown.is_cancelled() => {
                tracing::warn!(%error, attempt, "container runtime not reachable yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(AgentError::Runtime(error)),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
                attempt += 1;
            }
            Err(error) => return Err(AgentError::Runtime(error)),
        }
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut ports_tcp: BTreeSet<u16> = config.reserved_ports_tcp.iter().copied().collect();
    if let Some(address) = config.logs_listen {
        ports_tcp.insert(address.port());
    }
    Ok(HostFacts {
        resources: Resources {
            cpu: host::cpu_units(cores),
            memory_mib: host::memory_mib(&meminfo, config.memory_reserve_mib),
            ports_tcp,
            ports_udp: BTreeSet::new(),
            gpu_ids: config.gpu_ids.iter().cloned().collect(),
        },
        attributes: host::attributes(
            std::env::consts::ARCH,
            config.zone.as_deref(),
            &config.attributes,
        ),
        version_info: VersionInfo {
            agent_version: Some(AGENT_VERSION.to_owned()),
            agent_hash: None,
            docker_version: Some(info.version.clone()),
        },
        hostname: host::hostname(),
    })
}

/// Registers, retrying transient failures with backoff until `shutdown` (then `Ok(None)`).
/// A refused saved identity is dropped and the host registers afresh.
async fn register(
    client: &ServerClient,
    config: &AgentConfig,
    facts: &HostFacts,
    saved_arn: Option<String>,
    ec2_instance_id: &str,
    agent_endpoint: Option<String>,
    shutdown: &CancellationToken,
) -> Result<Option<RegisterResponse>, AgentError> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut arn = saved_arn;
    loop {
        let request = RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            cluster: config.cluster.clone(),
            container_instance_arn: arn.clone(),
            ec2_instance_id: ec2_instance_id.to_owned(),
            hostname: facts.hostname.clone(),
            resources: facts.resources.clone(),
            attributes: facts.attributes.clone(),
            version_info: facts.version_info.clone(),
            agent_endpoint: agent_endpoint.clone(),
            fargate_capacity: config.fargate_capacity,
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            result = client.agent::<_, RegisterResponse>(AgentCall::Register, &request) => result,
        };
        match result {
            Ok(response) => return Ok(Some(response)),
            Err(error) if error.is_retryable() => {
                tracing::warn!(%error, "cannot register yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            Err(error) if arn.is_some() => {
                tracing::warn!(%error, "the saved container instance was refused; registering as a new one");
                arn = None;
            }
            Err(error) => return Err(AgentError::Registration(error)),
        }
    }
}

/// A task the control plane does not list, found on the host: stop and remove it.
fn orphan_task(task_arn: &str, cluster_arn: &str, definition_arn: Option<&str>) -> AssignedTask {
    AssignedTask {
        task_arn: task_arn.to_owned(),
        cluster_arn: cluster_arn.to_owned(),
        task_definition_arn: definition_arn.unwrap_or_default().to_owned(),
        desired_status: DesiredStatus::Stopped,
        last_status: TaskStatus::Running,
        overrides: TaskOverride::default(),
        containers: Vec::new(),
        gpu_ids: Vec::new(),
        stop_code: None,
        stopped_reason: None,
        version: 0,
        created_at: Timestamp::default(),
        launch: Default::default(),
    }
}

/// The agent's loop state: one runner per task.
struct Tasks {
    context: Arc<RunnerContext>,
    wakers: Arc<Wakers>,
    runners: BTreeMap<String, TaskHandle>,
    /// Tasks whose runner finished, and when: a stale poll answer must not revive them.
    finished: BTreeMap<String, tokio::time::Instant>,
    shutdown: CancellationToken,
}

impl Tasks {
    fn reap(&mut self) {
        let now = tokio::time::Instant::now();
        let done: Vec<String> = self
            .runners
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(a, _)| a.clone())
            .collect();
        for arn in done {
            self.runners.remove(&arn);
            self.finished.insert(arn, now);
        }
        self.finished
            .retain(|_, at| now.duration_since(*at) < FINISHED_MEMORY);
    }

    fn spawn(&mut self, update: TaskUpdate) {
        let arn = update.task.task_arn.clone();
        tracing::info!(task = %arn, listed = update.listed, "taking on task");
        let handle = spawn_task(
            self.context.clone(),
            self.wakers.clone(),
            update,
            self.shutdown.clone(),
        );
        self.runners.insert(arn, handle);
    }

    /// Hands every runner its task's desired state; starts runners for new tasks.
    fn apply(&mut self, response: &PollResponse) {
        let listed: BTreeSet<&str> = response.tasks.iter().map(|t| t.task_arn.as_str()).collect();
        for task in &response.tasks {
            if self.finished.contains_key(&task.task_arn) {
                continue;
            }
            let update = TaskUpdate {
                task: task.clone(),
                definition: response
                    .task_definitions
                    .get(&task.task_definition_arn)
                    .cloned(),
                listed: true,
            };
            match self.runners.get(&task.task_arn) {
                Some(handle) => handle.update(update),
                None => self.spawn(update),
            }
        }
        for (arn, handle) in &self.runners {
            if !listed.contains(arn.as_str()) {
                let mut update = handle.current();
                if update.listed {
                    update.listed = false;
                    handle.update(update);
                }
            }
        }
    }

    /// Starts runners for containers of tasks nobody runs: they stop and clean them up.
    fn adopt_orphans(&mut self, existing: &[runtime::ObservedContainer], cluster_arn: &str) {
        let mut orphans: BTreeMap<String, Option<String>> = BTreeMap::new();
        for container in existing {
            if let Some(arn) = container.task_arn()
                && !self.runners.contains_key(arn)
            {
                orphans.insert(
                    arn.to_owned(),
                    container
                        .label(labels::TASK_DEFINITION_ARN)
                        .map(str::to_owned),
                );
            }
        }
        for (arn, definition_arn) in orphans {
            tracing::info!(task = %arn, "found containers of a task the control plane does not list; stopping them");
            let task = orphan_task(&arn, cluster_arn, definition_arn.as_deref());
            self.spawn(TaskUpdate {
                task,
                definition: None,
                listed: false,
            });
        }
    }

    async fn shutdown(mut self) {
        self.shutdown.cancel();
        let joins = std::mem::take(&mut self.runners)
            .into_values()
            .map(|h| h.join());
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, futures::future::join_all(joins))
            .await
            .is_err()
        {
            tracing::warn!("task runners did not end in time");
        }
    }
}

/// Stops every managed container of the cluster (after deregistration), each with its
/// own stop timeout.
async fn stop_all(runtime: &dyn Runtime, cluster: &str, instance_id: &str, default: Duration) {
    let filter = ListFilter::cluster(cluster).label(labels::INSTANCE, instance_id);
    let Ok(containers) = runtime.list(&filter).await else {
        return;
    };
    let stops = containers.iter().filter(|c| c.is_running()).map(|c| {
        let timeout = c
            .label(labels::STOP_TIMEOUT)
            .and_then(|t| t.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(default);
        async move {
            let _ = tokio::time::timeout(
                timeout + task_runner::STOP_GRACE,
                runtime.stop(&c.id, timeout),
            )
            .await;
        }
    });
    futures::future::join_all(stops).await;
}

/// Binds the task metadata endpoint on the cluster network's gateway (an ephemeral port, so
/// several agents can share a host) and returns it with its base URL.
async fn serve_metadata_endpoint(
    runtime: &dyn Runtime,
    cluster: &str,
) -> Result<(tokio::net::TcpListener, String), String> {
    let network = runtime
        .ensure_cluster_network(cluster)
        .await
        .map_err(|e| e.to_string())?;
    let gateway: std::net::IpAddr = network
        .gateway
        .parse()
        .map_err(|e| format!("gateway {}: {e}", network.gateway))?;
    let listener = tokio::net::TcpListener::bind((gateway, 0))
        .await
        .map_err(|e| format!("cannot listen on {gateway}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((listener, format!("http://{bound}")))
}

/// Runs the agent until `shutdown`: registers the host, adopts the containers it already
/// runs, then polls the control plane and runs the tasks it assigns. On shutdown the
/// containers keep running; the next agent adopts them.
pub async fn run(
    config: AgentConfig,
    runtime: Arc<dyn Runtime>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let data_dir_error = |e: std::io::Error| AgentError::DataDir {
        path: config.data_dir.clone(),
        message: e.to_string(),
    };
    let mut state = host::load_state(&config.data_dir).map_err(data_dir_error)?;
    let facts = detect_host(&config, &*runtime, &shutdown).await?;
    let background = shutdown.child_token();

    let mut agent_endpoint = None;
    let mut background_tasks = Vec::new();
    if let Some(address) = config.logs_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| AgentError::LogsListen { address, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| AgentError::LogsListen { address, source })?;
        agent_endpoint = Some(config.logs_advertise_url.clone().unwrap_or_else(|| {
            let host = if bound.ip().is_unspecified() {
                facts
                    .hostname
                    .clone()
                    .unwrap_or_else(|| "localhost".to_owned())
            } else {
                bound.ip().to_string()
            };
            format!("http://{host}:{}", bound.port())
        }));
        let (runtime, token) = (runtime.clone(), background.clone());
        background_tasks.push(tokio::spawn(async move {
            if let Err(error) = logs::serve_logs(listener, runtime, token).await {
                tracing::error!(%error, "the logs endpoint stopped");
            }
        }));
        tracing::info!(%bound, "serving container logs");
    }

    let client = ServerClient::new(&config.server, config.identity.clone());
    let saved_arn = state
        .container_instance_arn
        .clone()
        .filter(|_| state.cluster.as_deref() == Some(&config.cluster));
    let Some(registered) = register(
        &client,
        &config,
        &facts,
        saved_arn,
        &state.ec2_instance_id,
        agent_endpoint.clone(),
        &shutdown,
    )
    .await?
    else {
        background.cancel();
        return Ok(());
    };
    tracing::info!(instance = %registered.container_instance_arn, cluster = %registered.cluster_arn, "registered");
    state.cluster = Some(config.cluster.clone());
    state.container_instance_arn = Some(registered.container_instance_arn.clone());
    host::save_state(&config.data_dir, &state).map_err(data_dir_error)?;

    let cluster_arn = registered.cluster_arn.clone();
    let cluster_name = spec::task_id(&cluster_arn).to_owned();
    let instance_arn = Arc::new(RwLock::new(registered.container_instance_arn.clone()));
    let reporter = Arc::new(ServerReporter {
        client: client.clone(),
        instance_arn: instance_arn.clone(),
    });
    let settings = EngineSettings {
        stop_timeout_default: config.stop_timeout_default,
        retention: config.stopped_container_retention,
    };
    let mut context = RunnerContext::new(runtime.clone(), reporter, &cluster_name, settings);
    context.registry_auth = config.registry_auth.clone();
    context.server_registry = Some(Arc::new(registry_auth::ServerRegistryAuth::new(
        client.clone(),
        &config.server,
    )));
    context.instance_id = Some(state.ec2_instance_id.clone());
    context.pull_attempts_max = config.pull_attempts_max.max(1);
    context.fargate_runtime = config.fargate_runtime.clone();
    if config.metadata_endpoint {
        match serve_metadata_endpoint(&*runtime, &cluster_name).await {
            Ok((listener, url)) => {
                tracing::info!(%url, "serving the task metadata endpoint");
                let (runtime, directory, token) = (
                    runtime.clone(),
                    context.directory.clone(),
                    background.clone(),
                );
                background_tasks.push(tokio::spawn(async move {
                    if let Err(error) =
                        metadata::serve_metadata(listener, runtime, directory, token).await
                    {
                        tracing::error!(%error, "the task metadata endpoint stopped");
                    }
                }));
                context.metadata_endpoint = Some(url);
            }
            Err(error) => {
                tracing::warn!(%error, "no task metadata endpoint: containers get no ECS_CONTAINER_METADATA_URI_V4")
            }
        }
    }
    let wakers = Arc::new(Wakers::default());
    background_tasks.push(tokio::spawn(route_events(
        runtime.clone(),
        wakers.clone(),
        background.clone(),
    )));
    let mut tasks = Tasks {
        context: Arc::new(context),
        wakers,
        runners: BTreeMap::new(),
        finished: BTreeMap::new(),
        shutdown: background.child_token(),
    };

    // What already runs here, to adopt (listed tasks) or clean up (the others).
    let mut existing = None;
    let mut adopted = false;
    let mut since = 0;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut deregistered = false;
    let mut outcome = Ok(());
    loop {
        tasks.reap();
        if !adopted && existing.is_none() {
            let mine =
                ListFilter::cluster(&cluster_name).label(labels::INSTANCE, &state.ec2_instance_id);
            match runtime.list(&mine).await {
                Ok(containers) => {
                    tracing::info!(
                        containers = containers.len(),
                        "found managed containers on the host"
                    );
                    existing = Some(containers);
                }
                Err(error) => tracing::warn!(%error, "cannot list containers yet"),
            }
        }
        let request = PollRequest {
            container_instance_arn: instance_arn
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            since_revision: since,
            wait_ms: POLL_WAIT_MS,
        };
        let polled = tokio::select! {
            _ = shutdown.cancelled() => break,
            polled = client.agent::<_, PollResponse>(AgentCall::Poll, &request) => polled,
        };
        let retry = match polled {
            Ok(response) => {
                backoff.reset();
                since = response.revision;
                if response.instance_status == "INACTIVE" {
                    deregistered = true;
                    break;
                }
                tasks.apply(&response);
                if let Some(containers) = existing.take() {
                    tasks.adopt_orphans(&containers, &cluster_arn);
                    adopted = true;
                }
                false
            }
            Err(error @ ClientError::Refused { .. }) if !error.is_retryable() => {
                // The control plane no longer knows this instance (e.g. its state was reset).
                tracing::warn!(%error, "poll refused; registering again");
                let saved = Some(
                    instance_arn
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                );
                let again = register(
                    &client,
                    &config,
                    &facts,
                    saved,
                    &state.ec2_instance_id,
                    agent_endpoint.clone(),
                    &shutdown,
                );
                match again.await {
                    Ok(Some(registered)) => {
                        *instance_arn.write().unwrap_or_else(|e| e.into_inner()) =
                            registered.container_instance_arn.clone();
                        state.container_instance_arn = Some(registered.container_instance_arn);
                        if let Err(error) = host::save_state(&config.data_dir, &state) {
                            tracing::warn!(%error, "cannot save the agent state");
                        }
                        since = 0;
                        // Back off anyway: a control plane that keeps refusing polls must
                        // not be hammered with registrations.
                        true
                    }
                    Ok(None) => break,
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "poll failed; retrying");
                true
            }
        };
        if retry {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    tasks.shutdown().await;
    if deregistered {
        tracing::warn!("this container instance was deregistered; stopping its containers");
        stop_all(
            &*runtime,
            &cluster_name,
            &state.ec2_instance_id,
            config.stop_timeout_default,
        )
        .await;
    }
    background.cancel();
    for task in background_tasks {
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, task).await;
    }
    if deregistered {
        Err(AgentError::Deregistered)
    } else {
        outcome
    }
}
