//! The server side of the agent protocol: registration, long-poll with heartbeats, state
//! reports, and the liveness monitor that marks silent hosts `agentConnected: false`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_api::action::decode;
use flotilla_api::{ApiError, responses::encode};
use flotilla_model::{
    Arn, ArnResource, ContainerInstance, ContainerInstanceStatus, EcsError, Scope, Task, TaskStatus,
};
use flotilla_protocol::*;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cache::HostChanges;
use crate::db::{CAS_RETRIES_MAX, Db, Keys, TxnBuilder, Versioned};
use crate::engine::InstanceRegistration;
use crate::engine::{Engine, RequestContext, apply_task_state_change, release_on_stop};

/// Liveness and change notification for connected agents.
pub struct Agents {
    engine: Engine,
    /// Instance ARN -> when it last polled.
    last_seen: Mutex<HashMap<String, Instant>>,
    /// Instance id -> a counter bumped whenever its tasks or record change (ids are random
    /// UUIDs, unique across clusters and accounts). The state cache bumps it
    /// ([`HostChanges`]), once it holds the change a poll will read.
    changes: Mutex<HashMap<String, watch::Sender<u64>>>,
    pub heartbeat_interval: Duration,
    pub disconnect_timeout: Duration,
}

/// Where an instance ARN points.
struct InstanceAddress {
    keys: Keys,
    cluster: String,
    id: String,
}

fn address(arn: &str) -> Result<InstanceAddress, EcsError> {
    let parsed = Arn::parse(arn).map_err(|e| EcsError::invalid(e.to_string()))?;
    match parsed.resource {
        ArnResource::ContainerInstance {
            cluster_name: Some(cluster),
            instance_id,
        } => Ok(InstanceAddress {
            keys: Keys::new(&Scope::new(parsed.region, parsed.account_id)),
            cluster,
            id: instance_id,
        }),
        _ => Err(EcsError::invalid(format!(
            "'{arn}' is not a container instance ARN."
        ))),
    }
}

impl Agents {
    pub fn new(engine: Engine, heartbeat_interval: Duration, disconnect_timeout: Duration) -> Self {
        Self {
            engine,
            last_seen: Mutex::new(HashMap::new()),
            changes: Mutex::new(HashMap::new()),
            heartbeat_interval,
            disconnect_timeout,
        }
    }

    fn db(&self) -> &Db {
        self.engine.db()
    }

    fn subscribe(&self, instance_id: &str) -> watch::Receiver<u64> {
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        changes
            .entry(instance_id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn seen(&self, arn: &str) {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(arn.to_owned(), Instant::now());
    }

    pub fn connected_count(&self) -> usize {
        let now = Instant::now();
        let seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.values()
            .filter(|at| now.duration_since(**at) < self.disconnect_timeout)
            .count()
    }

    /// Handles one agent protocol call.
    pub async fn handle(
        &self,
        ctx: &RequestContext,
        call: AgentCall,
        body: &[u8],
    ) -> Result<Vec<u8>, ApiError> {
        match call {
            AgentCall::Register => Ok(encode(&self.register(ctx, decode(body)?).await?)),
            AgentCall::Poll => Ok(encode(&self.poll(ctx, decode(body)?).await?)),
            AgentCall::Report => Ok(encode(&self.report(ctx, decode(body)?).await?)),
        }
    }

    /// `FlotillaV1.LocateTaskLogs`: the logs endpoint of the agent that runs a task.
    pub async fn locate_task_logs(
        &self,
        ctx: &RequestContext,
        body: &[u8],
    ) -> Result<Vec<u8>, ApiError> {
        let request: LocateTaskLogsRequest = decode(body)?;
        let cluster = self
            .engine
            .active_cluster(ctx, request.cluster.as_deref())
            .await?;
        let keys = ctx.keys();
        let task_id = flotilla_model::arn::last_segment(&request.task);
        let task = self
            .db()
            .get::<Task>(&keys.task(&cluster.value.name, task_id))
            .await?
            .ok_or_else(|| EcsError::invalid("The referenced task was not found."))?
            .value;
        let instance_id = task.container_instance_id.clone().ok_or_else(|| {
            EcsError::invalid("The task has not been placed on a container instance.")
        })?;
        let instance = self
            .db()
            .get::<ContainerInstance>(&keys.instance(&cluster.value.name, &instance_id))
            .await?
            .ok_or_else(|| EcsError::invalid("The task's container instance is gone."))?
            .value;
        let endpoint = instance.agent_endpoint.ok_or_else(|| {
            EcsError::client("The agent running this task does not serve logs (it was started without a logs listener).")
        })?;
        Ok(encode(&LocateTaskLogsResponse {
            task_arn: task.arn,
            endpoint,
            containers: task.containers.iter().map(|c| c.name.clone()).collect(),
        }))
    }

    async fn register(
        &self,
        ctx: &RequestContext,
        request: RegisterRequest,
    ) -> Result<RegisterResponse, EcsError> {
        if request.protocol_version != PROTOCOL_VERSION {
            return Err(EcsError::client(format!(
                "Agent protocol version {} is not supported; this server speaks version {PROTOCOL_VERSION}.",
                request.protocol_version
            )));
        }
        let cluster_arn = ctx.scope.cluster_arn(&request.cluster);
        let registration = InstanceRegistration {
            cluster: Some(request.cluster),
            container_instance_arn: request.container_instance_arn,
            ec2_instance_id: Some(request.ec2_instance_id),
            hostname: request.hostname,
            resources: request.resources,
            attributes: request.attributes,
            version_info: request.version_info,
            tags: Vec::new(),
            agent_endpoint: request.agent_endpoint,
            fargate_capacity: request.fargate_capacity,
        };
        let instance = self.engine.register_instance(ctx, registration).await?;
        self.seen(&instance.arn);
        Ok(RegisterResponse {
            container_instance_arn: instance.arn,
            cluster_arn,
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64,
            disconnect_timeout_ms: self.disconnect_timeout.as_millis() as u64,
        })
    }

    /// Reads the instance and the tasks it must act on. The revision is the newest change
    /// the answer is complete up to: the instance record's, or a listed task's as of the
    /// snapshot the tasks were found in (a task read later may be newer, and its change
    /// wakes the poll again). Placing a task writes its host's record, so a task placed at
    /// or before the record's revision is always in the snapshot, which is taken after it.
    async fn desired_state(
        &self,
        at: &InstanceAddress,
    ) -> Result<(Versioned<ContainerInstance>, PollResponse), EcsError> {
        let instance = self
            .db()
            .get::<ContainerInstance>(&at.keys.instance(&at.cluster, &at.id))
            .await?
            .ok_or_else(|| EcsError::invalid("Unknown container instance; register again."))?;
        let snapshot = self.engine.snapshot_in(at.keys.root(), &at.cluster).await?;
        let mut revision = instance.mod_revision;
        let mut tasks = Vec::new();
        let mut task_definitions = BTreeMap::new();
        for task_id in snapshot.task_ids_on(&at.id) {
            if let Some(summary) = snapshot.tasks.get(&task_id) {
                revision = revision.max(summary.mod_revision);
            }
            let Some(task) = self
                .db()
                .get::<Task>(&at.keys.task(&at.cluster, &task_id))
                .await?
            else {
                continue;
            };
            let task = task.value;
            if task.last_status == TaskStatus::Stopped {
                continue;
            }
            if !task_definitions.contains_key(&task.task_definition_arn) {
                let td = at.keys.task_definition(&task.family, task.revision);
                if let Some(td) = self.db().get::<flotilla_model::TaskDefinition>(&td).await? {
                    task_definitions.insert(task.task_definition_arn.clone(), td.value);
                }
            }
            tasks.push(AssignedTask {
                task_arn: task.arn.clone(),
                cluster_arn: task.cluster_arn.clone(),
                task_definition_arn: task.task_definition_arn.clone(),
                desired_status: task.desired_status,
                last_status: task.last_status,
                overrides: task.overrides.clone(),
                containers: task
                    .containers
                    .iter()
                    .map(|c| AssignedContainer {
                        name: c.name.clone(),
                        container_arn: c.arn.clone(),
                        runtime_id: c.runtime_id.clone(),
                    })
                    .collect(),
                gpu_ids: task.reservation.gpu_ids.iter().cloned().collect(),
                stop_code: task.stop_code,
                stopped_reason: task.stopped_reason.clone(),
                version: task.version,
                created_at: task.created_at,
                launch: TaskLaunch {
                    launch_type: task.launch_type,
                    capacity_provider_name: task.capacity_provider_name.clone(),
                    availability_zone: task.availability_zone.clone(),
                    cpu: task.cpu.clone(),
                    memory: task.memory.clone(),
                },
            });
        }
        let response = PollResponse {
            revision,
            instance_status: instance.value.status.as_str().to_owned(),
            tasks,
            task_definitions,
        };
        Ok((instance, response))
    }

    async fn poll(
        &self,
        ctx: &RequestContext,
        request: PollRequest,
    ) -> Result<PollResponse, EcsError> {
        let _ = ctx;
        let at = address(&request.container_instance_arn)?;
        self.seen(&request.container_instance_arn);
        let mut changes = self.subscribe(&at.id);
        changes.borrow_and_update();
        let (instance, response) = self.desired_state(&at).await?;
        if !instance.value.agent_connected
            && instance.value.status != ContainerInstanceStatus::Inactive
        {
            self.set_connected(&at, true).await?;
        }
        let wait = Duration::from_millis(request.wait_ms.min(POLL_WAIT_MS_MAX));
        if response.revision > request.since_revision || wait.is_zero() {
            return Ok(response);
        }
        // Nothing new: wait for a change to this instance or the timeout, then answer.
        let _ = tokio::time::timeout(wait, changes.changed()).await;
        self.seen(&request.container_instance_arn);
        Ok(self.desired_state(&at).await?.1)
    }

    async fn set_connected(&self, at: &InstanceAddress, connected: bool) -> Result<(), EcsError> {
        let key = at.keys.instance(&at.cluster, &at.id);
        for _ in 0..CAS_RETRIES_MAX {
            let Some(instance) = self.db().get::<ContainerInstance>(&key).await? else {
                return Ok(());
            };
            if instance.value.agent_connected == connected
                || instance.value.status == ContainerInstanceStatus::Inactive
            {
                return Ok(());
            }
            let mut changed = instance.value.clone();
            changed.agent_connected = connected;
            changed.version += 1;
            let mut txn = TxnBuilder::new();
            txn.replace(&instance, &changed);
            if self.db().commit(txn.build()).await?.is_some() {
                tracing::info!(instance = %changed.arn, connected, "agent connection changed");
                return Ok(());
            }
        }
        Err(crate::engine::contention())
    }

    async fn report(
        &self,
        ctx: &RequestContext,
        request: ReportRequest,
    ) -> Result<ReportResponse, EcsError> {
        let _ = ctx;
        let at = address(&request.container_instance_arn)?;
        self.seen(&request.container_instance_arn);
        let mut accepted = Vec::new();
        for change in &request.tasks {
            let task_id = flotilla_model::arn::last_segment(&change.task_arn);
            let task_key = at.keys.task(&at.cluster, task_id);
            let instance_key = at.keys.instance(&at.cluster, &at.id);
            for attempt in 0..=CAS_RETRIES_MAX {
                if attempt == CAS_RETRIES_MAX {
                    return Err(crate::engine::contention());
                }
                let Some(task) = self.db().get::<Task>(&task_key).await? else {
                    break;
                };
                if task.value.container_instance_id.as_deref() != Some(at.id.as_str()) {
                    break;
                }
                let mut updated = task.value.clone();
                if !apply_task_state_change(&mut updated, change) {
                    accepted.push(change.task_arn.clone());
                    break;
                }
                let mut txn = TxnBuilder::new();
                if updated.last_status == TaskStatus::Stopped
                    && !updated.released
                    && let Some(instance) =
                        self.db().get::<ContainerInstance>(&instance_key).await?
                {
                    let mut instance_changed = instance.value.clone();
                    release_on_stop(&mut updated, &mut instance_changed);
                    txn.replace(&instance, &instance_changed);
                }
                txn.replace(&task, &updated);
                if self.db().commit(txn.build()).await?.is_some() {
                    accepted.push(change.task_arn.clone());
                    break;
                }
            }
        }
        Ok(ReportResponse { accepted })
    }

    /// Marks instances whose agent stopped polling as disconnected, and reconnects none
    /// (a poll does that). Runs until `shutdown`.
    pub async fn run_liveness_monitor(self: Arc<Self>, shutdown: CancellationToken) {
        // Instances that were connected before a restart get a full timeout to come back.
        if let Ok(instances) = self.known_instances().await {
            let now = Instant::now();
            let mut seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
            for arn in instances {
                seen.entry(arn).or_insert(now);
            }
        }
        let tick =
            (self.disconnect_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let now = Instant::now();
            let silent: Vec<String> = {
                let seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.iter()
                    .filter(|(_, at)| now.duration_since(**at) >= self.disconnect_timeout)
                    .map(|(arn, _)| arn.clone())
                    .collect()
            };
            for arn in silent {
                if let Ok(at) = address(&arn) {
                    match self.set_connected(&at, false).await {
                        Ok(()) => {
                            self.last_seen
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&arn);
                        }
                        Err(error) => {
                            tracing::warn!(%arn, %error, "could not mark agent disconnected")
                        }
                    }
                }
            }
        }
    }

    async fn known_instances(&self) -> Result<Vec<String>, EcsError> {
        let all = self.db().list::<serde_json::Value>("r/").await?;
        Ok(all
            .into_iter()
            .filter(|kv| kv.key.contains("/instance/"))
            .filter_map(|kv| serde_json::from_value::<ContainerInstance>(kv.value).ok())
            .filter(|i| i.agent_connected && i.status != ContainerInstanceStatus::Inactive)
            .map(|i| i.arn)
            .collect())
    }
}

/// Wakes the long-polls of the hosts whose records or tasks the state cache applied.
impl HostChanges for Agents {
    fn changed(&self, instance_id: &str) {
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = changes.get(instance_id) {
            sender.send_modify(|n| *n += 1);
        }
    }

    fn all_changed(&self) {
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        for sender in changes.values() {
            sender.send_modify(|n| *n += 1);
        }
    }
}
