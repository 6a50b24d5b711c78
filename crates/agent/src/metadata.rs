//! The task metadata endpoint, version 4, as applications and SDKs read it through
//! `ECS_CONTAINER_METADATA_URI_V4`: `${URI}` (this container), `${URI}/task`,
//! `${URI}/taskWithTags`, `${URI}/stats` and `${URI}/task/stats`.
//!
//! The agent serves it on the cluster network's gateway address, which every container on
//! the host can reach (awsvpc tasks from their own namespace, bridge tasks through the
//! host). A container's URI is `http://{gateway}:{port}/v4/{task id}/{container name}`.
//! What the endpoint shows comes from the task runners ([`Directory`]) and the runtime
//! (containers, statistics); the documents are built by pure functions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flotilla_model::task::TaskNetwork;
use flotilla_model::task_definition::NetworkMode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::runtime::{ListFilter, ObservedContainer, Runtime};
use crate::spec::task_id;
use crate::task_runner::TaskUpdate;

/// What the endpoint knows of one task besides its containers.
#[derive(Clone, Debug)]
pub struct TaskEntry {
    pub update: TaskUpdate,
    pub network: Option<TaskNetwork>,
}

/// The tasks of this agent, by task id, as their runners last saw them.
#[derive(Debug, Default)]
pub struct Directory {
    tasks: Mutex<BTreeMap<String, TaskEntry>>,
}

impl Directory {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TaskEntry>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a task's latest desired state and network (runners call this every turn).
    pub fn remember(&self, update: &TaskUpdate, network: Option<TaskNetwork>) {
        let id = task_id(&update.task.task_arn).to_owned();
        let mut tasks = self.lock();
        match tasks.get_mut(&id) {
            Some(entry) if entry.update == *update && entry.network == network => {}
            Some(entry) => {
                entry.update = update.clone();
                entry.network = network;
            }
            None => {
                tasks.insert(
                    id,
                    TaskEntry {
                        update: update.clone(),
                        network,
                    },
                );
            }
        }
    }

    pub fn forget(&self, task_arn: &str) {
        self.lock().remove(task_id(task_arn));
    }

    pub fn get(&self, task_id: &str) -> Option<TaskEntry> {
        self.lock().get(task_id).cloned()
    }
}

fn known_status(container: &ObservedContainer) -> &'static str {
    use crate::runtime::ContainerStatus;
    match container.status {
        ContainerStatus::Created => "CREATED",
        ContainerStatus::Running => "RUNNING",
        ContainerStatus::Exited => "STOPPED",
    }
}

/// The `Networks` entry of a container of this task.
fn networks(entry: &TaskEntry) -> Value {
    let mode = entry
        .update
        .definition
        .as_ref()
        .map_or(NetworkMode::Bridge, |d| d.spec.network_mode);
    match (&entry.network, mode) {
        (Some(network), NetworkMode::Awsvpc) => {
            let prefix = network
                .subnet_cidr
                .split_once('/')
                .map_or("", |(_, bits)| bits);
            json!([{
                "NetworkMode": "awsvpc",
                "IPv4Addresses": [network.private_ipv4_address],
                "AttachmentIndex": 0,
                "MACAddress": network.mac_address,
                "IPv4SubnetCIDRBlock": network.subnet_cidr,
                "PrivateDNSName": format!("ip-{}.ec2.internal", network.private_ipv4_address.replace('.', "-")),
                "SubnetGatewayIpv4Address": format!("{}/{prefix}", network.gateway_ipv4_address),
            }])
        }
        (_, mode) => json!([{ "NetworkMode": mode.as_str() }]),
    }
}

/// The metadata of one container (`${ECS_CONTAINER_METADATA_URI_V4}`).
pub fn container_document(entry: &TaskEntry, container: &ObservedContainer) -> Value {
    let name = container.container_name().unwrap_or_default();
    let definition = entry
        .update
        .definition
        .as_ref()
        .and_then(|d| d.container(name));
    let container_arn = entry
        .update
        .task
        .containers
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.container_arn.clone())
        .unwrap_or_default();
    let mut document = json!({
        "DockerId": container.id,
        "Name": name,
        "DockerName": container.runtime_name,
        "Image": container.image,
        "ImageID": container.image_digest.clone().unwrap_or_default(),
        "Labels": container.labels,
        "DesiredStatus": entry.update.task.desired_status.as_str(),
        "KnownStatus": known_status(container),
        "Limits": {
            "CPU": definition.map_or(0, |d| d.cpu),
            "Memory": definition.and_then(|d| d.memory).unwrap_or(0),
        },
        "Type": "NORMAL",
        "LaunchType": entry.update.task.launch.launch_type.as_str(),
        "ContainerARN": container_arn,
        "Networks": networks(entry),
    });
    if let Some(started) = container.started_at {
        document["StartedAt"] = json!(started.to_rfc3339());
    }
    if let Some(finished) = container.finished_at {
        document["FinishedAt"] = json!(finished.to_rfc3339());
    }
    if let Some(code) = container.exit_code {
        document["ExitCode"] = json!(code);
    }
    document
}

/// The metadata of the task (`${ECS_CONTAINER_METADATA_URI_V4}/task`).
pub fn task_document(entry: &TaskEntry, containers: &[ObservedContainer]) -> Value {
    let task = &entry.update.task;
    let definition = entry.update.definition.as_ref();
    let running = containers.iter().any(|c| c.is_running());
    let cpu_units = task
        .launch
        .cpu
        .as_deref()
        .and_then(|c| c.parse::<f64>().ok());
    let memory = task
        .launch
        .memory
        .as_deref()
        .and_then(|m| m.parse::<i64>().ok());
    let mut limits = json!({});
    if let Some(units) = cpu_units {
        limits["CPU"] = json!(units / 1024.0);
    }
    if let Some(memory) = memory {
        limits["Memory"] = json!(memory);
    }
    let mut document = json!({
        "Cluster": task.cluster_arn,
        "TaskARN": task.task_arn,
        "Family": definition.map(|d| d.family.clone()).unwrap_or_default(),
        "Revision": definition.map(|d| d.revision.to_string()).unwrap_or_default(),
        "DesiredStatus": task.desired_status.as_str(),
        "KnownStatus": if running { "RUNNING" } else { "PENDING" },
        "Limits": limits,
        "LaunchType": task.launch.launch_type.as_str(),
        "Containers": containers
            .iter()
            .map(|c| container_document(entry, c))
            .collect::<Vec<_>>(),
    });
    if let Some(zone) = &task.launch.availability_zone {
        document["AvailabilityZone"] = json!(zone);
    }
    if let Some(provider) = &task.launch.capacity_provider_name {
        document["CapacityProviderName"] = json!(provider);
    }
    document
}

#[derive(Clone)]
struct MetadataState {
    runtime: Arc<dyn Runtime>,
    directory: Arc<Directory>,
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, what).into_response()
}

/// The task's entry and its containers (the task's own, not its sandbox).
async fn lookup(
    state: &MetadataState,
    task: &str,
) -> Result<(TaskEntry, Vec<ObservedContainer>), Response> {
    let entry = state
        .directory
        .get(task)
        .ok_or_else(|| not_found(format!("task {task} is not on this host")))?;
    let containers = state
        .runtime
        .list(&ListFilter::task(&entry.update.task.task_arn))
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response())?
        .into_iter()
        .filter(|c| c.container_name().is_some())
        .collect();
    Ok((entry, containers))
}

fn json_response(value: Value) -> Response {
    axum::Json(value).into_response()
}

async fn container_metadata(
    State(state): State<MetadataState>,
    Path((task, container)): Path<(String, String)>,
) -> Response {
    match lookup(&state, &task).await {
        Ok((entry, containers)) => match containers
            .iter()
            .find(|c| c.container_name() == Some(container.as_str()))
        {
            Some(observed) => json_response(container_document(&entry, observed)),
            None => not_found(format!("task {task} has no container {container}")),
        },
        Err(response) => response,
    }
}

async fn task_metadata(
    State(state): State<MetadataState>,
    Path((task, _container)): Path<(String, String)>,
) -> Response {
    match lookup(&state, &task).await {
        Ok((entry, containers)) => json_response(task_document(&entry, &containers)),
        Err(response) => response,
    }
}

async fn container_stats(
    State(state): State<MetadataState>,
    Path((task, container)): Path<(String, String)>,
) -> Response {
    let (_, containers) = match lookup(&state, &task).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(observed) = containers
        .iter()
        .find(|c| c.container_name() == Some(container.as_str()))
    else {
        return not_found(format!("task {task} has no container {container}"));
    };
    match state.runtime.stats(&observed.id).await {
        Ok(stats) => json_response(stats),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

async fn task_stats(
    State(state): State<MetadataState>,
    Path((task, _container)): Path<(String, String)>,
) -> Response {
    let (_, containers) = match lookup(&state, &task).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let samples =
        futures::future::join_all(containers.iter().map(|c| state.runtime.stats(&c.id))).await;
    let mut out = serde_json::Map::new();
    for (container, sample) in containers.iter().zip(samples) {
        // ECS shows null for a container it has no statistics of.
        out.insert(container.id.clone(), sample.unwrap_or(Value::Null));
    }
    json_response(Value::Object(out))
}

/// The endpoint's routes.
pub fn metadata_router(runtime: Arc<dyn Runtime>, directory: Arc<Directory>) -> Router {
    Router::new()
        .route("/v4/{task}/{container}", get(container_metadata))
        .route("/v4/{task}/{container}/task", get(task_metadata))
        .route("/v4/{task}/{container}/taskWithTags", get(task_metadata))
        .route("/v4/{task}/{container}/stats", get(container_stats))
        .route("/v4/{task}/{container}/task/stats", get(task_stats))
        .with_state(MetadataState { runtime, directory })
}

/// Serves the endpoint on `listener` until `shutdown`.
pub async fn serve_metadata(
    listener: tokio::net::TcpListener,
    runtime: Arc<dyn Runtime>,
    directory: Arc<Directory>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, metadata_router(runtime, directory))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
