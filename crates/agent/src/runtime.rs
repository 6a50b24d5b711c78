//! The [`Runtime`] trait: the only door through which the agent touches containers.
//!
//! Everything the agent asks of a container engine is here: make an image present, create,
//! start, stop, inspect, remove and list containers, create and remove volumes, read logs
//! and watch events. The Docker implementation lives in `flotilla-docker`; [`crate::fake`]
//! keeps containers in memory for tests. What a container should look like is decided by the
//! pure [`crate::spec::container_spec`]; a runtime only translates a [`ContainerSpec`].
//!
//! The trait is object-safe (`Arc<dyn Runtime>`): methods return boxed futures and streams.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use flotilla_model::Timestamp;
use flotilla_model::task::{HealthStatus, NetworkBinding, TaskNetwork};
use futures::Stream;

pub use crate::spec::{
    ContainerSpec, DeviceSpec, HealthCheckSpec, LogSpec, MountKind, MountSpec, NetworkSpec,
    PortSpec, UlimitSpec, VolumeSpec,
};

/// A boxed future, as the object-safe [`Runtime`] returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed stream, as the object-safe [`Runtime`] returns them.
pub type BoxStream<'a, T> = Pin<Box<dyn Stream<Item = T> + Send + 'a>>;

/// Labels every managed container (and task-scoped volume) carries. They are how the agent
/// finds its containers again after a restart: the labels are the agent's durable state.
pub mod labels {
    /// `true` on everything the agent created.
    pub const MANAGED: &str = "com.flotilla.managed";
    pub const TASK_ARN: &str = "com.flotilla.task-arn";
    /// The task id (the last segment of the task ARN), for look-ups by id.
    pub const TASK_ID: &str = "com.flotilla.task-id";
    pub const CONTAINER_NAME: &str = "com.flotilla.container-name";
    pub const CLUSTER: &str = "com.flotilla.cluster";
    /// The agent (host identity, `ec2InstanceId`) that owns the container: several agents
    /// may share one Docker Engine, and each adopts or cleans up only its own.
    pub const INSTANCE: &str = "com.flotilla.instance-id";
    pub const TASK_DEFINITION_ARN: &str = "com.flotilla.task-definition-arn";
    /// The container's stop timeout in seconds, so an orphan can be stopped as it asked.
    pub const STOP_TIMEOUT: &str = "com.flotilla.stop-timeout";
    /// `com.flotilla.log.driver` holds the requested log driver when it was mapped to
    /// `json-file` (e.g. `awslogs`); `com.flotilla.log.<option>` holds its options.
    pub const LOG_PREFIX: &str = "com.flotilla.log.";
    /// Labels the ECS agent puts on containers, kept for tools that read them.
    pub const ECS_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
    pub const ECS_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
    pub const ECS_CLUSTER: &str = "com.amazonaws.ecs.cluster";
    pub const ECS_FAMILY: &str = "com.amazonaws.ecs.task-definition-family";
    pub const ECS_REVISION: &str = "com.amazonaws.ecs.task-definition-version";
}

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container, image or volume does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The name is already taken (create), or the object is in use (remove).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The image could not be made present.
    #[error("{image}: {message}")]
    Pull { image: String, message: String },
    /// The engine refused the request (bad configuration, start failure, ...).
    #[error("{0}")]
    Refused(String),
    /// The engine could not be reached or did not answer in time; retrying may help.
    #[error("container runtime unavailable: {0}")]
    Unavailable(String),
}

impl RuntimeError {
    /// Whether trying the same call again later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Credentials for pulling from one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The registry host (`registry.example.com:5000`); `docker.io` for Docker Hub.
    pub server_address: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server_address", &self.server_address)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl RegistryAuth {
    /// The credentials in `auths` that apply to `image`, by registry host.
    pub fn for_image<'a>(auths: &'a [RegistryAuth], image: &str) -> Option<&'a RegistryAuth> {
        let host = image_registry(image);
        auths.iter().find(|auth| auth.server_address == host)
    }
}

/// The registry host of an image reference (`docker.io` when none is named).
pub fn image_registry(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// An image made present by [`Runtime::ensure_image`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The engine's image id (`sha256:...` of the config).
    pub id: String,
    /// The manifest digest (`sha256:...`) when the image came from a registry, else the id.
    pub digest: String,
}

/// What the runtime says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// e.g. `Docker 20.10.24`.
    pub version: String,
    /// The engine API version (`1.41`), advertised as `docker-remote-api` capabilities.
    pub api_version: Option<String>,
}

/// A container's lifecycle as the engine reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ContainerStatus {
    /// Created and never started, or created and not started since.
    Created,
    /// Running (also paused or restarting: the process is still there).
    Running,
    /// Exited or dead.
    Exited,
}

/// One container as the runtime sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedContainer {
    pub id: String,
    /// The engine's name of the container (without a leading `/`).
    pub runtime_name: String,
    pub labels: BTreeMap<String, String>,
    pub status: ContainerStatus,
    /// Set once the container has exited.
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    /// The engine's error message, e.g. why a start failed.
    pub error: Option<String>,
    /// `None` when the container has no health check; `Unknown` while it is starting.
    pub health: Option<HealthStatus>,
    /// When the current (or last) run started; `None` if it never started.
    pub started_at: Option<Timestamp>,
    /// When the last run ended; `None` if it never ended.
    pub finished_at: Option<Timestamp>,
    /// The image reference the container was created from.
    pub image: String,
    pub image_digest: Option<String>,
    /// Host ports bound to container ports (bridge mode), as the engine assigned them.
    pub network_bindings: Vec<NetworkBinding>,
}

impl ObservedContainer {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    pub fn task_arn(&self) -> Option<&str> {
        self.label(labels::TASK_ARN)
    }

    pub fn container_name(&self) -> Option<&str> {
        self.label(labels::CONTAINER_NAME)
    }

    pub fn is_running(&self) -> bool {
        self.status == ContainerStatus::Running
    }

    pub fn has_exited(&self) -> bool {
        self.status == ContainerStatus::Exited
    }
}

/// Which managed containers to list: all of them, narrowed by label equality.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub labels: BTreeMap<String, String>,
}

impl ListFilter {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn label(mut self, name: &str, value: &str) -> Self {
        self.labels.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn cluster(cluster: &str) -> Self {
        Self::all().label(labels::CLUSTER, cluster)
    }

    pub fn task(task_arn: &str) -> Self {
        Self::all().label(labels::TASK_ARN, task_arn)
    }

    /// Whether `labels` pass this filter (managed, and every wanted label equal).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(labels::MANAGED).map(String::as_str) == Some("true")
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Something happened to a managed container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEvent {
    pub container_id: String,
    pub task_arn: Option<String>,
    pub container_name: Option<String>,
    pub kind: RuntimeEventKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeEventKind {
    Created,
    Started,
    /// The process exited (with its code when the engine says).
    Died {
        exit_code: Option<i32>,
    },
    Health(HealthStatus),
    OutOfMemory,
    Removed,
}

/// Which output stream a log chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// A piece of a container's output (usually one line, with its newline).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogChunk {
    pub stream: LogStream,
    pub bytes: Vec<u8>,
}

/// A cluster's network on one host: awsvpc tasks get their addresses from its subnet, and
/// the agent serves the task metadata endpoint on its gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNetwork {
    /// The engine's name of the network (`flotilla-<cluster>`).
    pub name: String,
    /// The engine's id of the network.
    pub id: String,
    pub subnet_cidr: String,
    pub gateway: String,
}

/// An awsvpc task's sandbox: a container that owns the task's network namespace (and
/// address) and does nothing else; the task's containers join its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The runtime name, see [`crate::spec::sandbox_name`].
    pub name: String,
    /// The cluster whose network it joins.
    pub cluster: String,
    /// The task's labels (but no container name: the sandbox is not one of its containers).
    pub labels: BTreeMap<String, String>,
    /// The OCI runtime, as the task's containers use it.
    pub oci_runtime: Option<String>,
}

/// A container engine. All methods are idempotent where the engine allows it: stopping a
/// stopped container, removing a missing one or creating an existing volume succeed.
pub trait Runtime: Send + Sync {
    /// The engine's name and version.
    fn info(&self) -> BoxFuture<'_, Result<RuntimeInfo, RuntimeError>>;

    /// Makes `image` present, pulling it only if it is missing.
    fn ensure_image<'a>(
        &'a self,
        image: &'a str,
        auth: Option<&'a RegistryAuth>,
    ) -> BoxFuture<'a, Result<ImageInfo, RuntimeError>>;

    /// Creates a volume if no volume of that name exists.
    fn create_volume<'a>(
        &'a self,
        volume: &'a VolumeSpec,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Removes a volume; a missing volume is not an error.
    fn remove_volume<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Names of managed volumes whose labels pass `filter`.
    fn list_volumes<'a>(
        &'a self,
        filter: &'a ListFilter,
    ) -> BoxFuture<'a, Result<Vec<String>, RuntimeError>>;

    /// Creates a container (not started) and returns its id. A taken name is
    /// [`RuntimeError::Conflict`].
    fn create<'a>(&'a self, spec: &'a ContainerSpec)
    -> BoxFuture<'a, Result<String, RuntimeError>>;

    /// Starts a created or exited container; starting a running one does nothing.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Sends SIGTERM, then SIGKILL after `timeout`, and returns once the container stopped.
    fn stop<'a>(
        &'a self,
        id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// The container's current state (by id or name).
    fn inspect<'a>(&'a self, id: &'a str)
    -> BoxFuture<'a, Result<ObservedContainer, RuntimeError>>;

    /// Removes a container (killing it if it still runs) with its anonymous volumes; a
    /// missing container is not an error.
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Managed containers whose labels pass `filter`, running or not, fully inspected.
    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
    ) -> BoxFuture<'a, Result<Vec<ObservedContainer>, RuntimeError>>;

    /// The container's output so far, then (with `follow`) new output until it stops.
    fn logs(&self, id: &str, follow: bool) -> BoxStream<'static, Result<LogChunk, RuntimeError>>;

    /// Events of managed containers from now on. The stream ends when the engine connection
    /// breaks; callers reconnect and re-inspect (events may have been missed meanwhile).
    fn events(&self) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;

    /// Makes the cluster's network present (awsvpc tasks, the metadata endpoint).
    fn ensure_cluster_network<'a>(
        &'a self,
        cluster: &'a str,
    ) -> BoxFuture<'a, Result<ClusterNetwork, RuntimeError>> {
        let _ = cluster;
        Box::pin(std::future::ready(Err(RuntimeError::Refused(
            "this runtime has no task networks (awsvpc)".to_owned(),
        ))))
    }

    /// Makes an awsvpc task's sandbox present and running, and says what its network
    /// looks like. Remove it with [`Runtime::remove`] by its name.
    fn ensure_sandbox<'a>(
        &'a self,
        spec: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<TaskNetwork, RuntimeError>> {
        let _ = spec;
        Box::pin(std::future::ready(Err(RuntimeError::Refused(
            "this runtime has no task networks (awsvpc)".to_owned(),
        ))))
    }

    /// One sample of a container's resource usage, in the Docker Engine's stats format
    /// (what the task metadata endpoint's `/stats` shows).
    fn stats<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<serde_json::Value, RuntimeError>> {
        let _ = id;
        Box::pin(std::future::ready(Err(RuntimeError::Refused(
            "this runtime keeps no statistics".to_owned(),
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_of_image_references() {
        for (image, registry) in [
            ("busybox", "docker.io"),
            ("library/busybox:1", "docker.io"),
            ("registry.example.com/app:1", "registry.example.com"),
            ("localhost:5000/app", "localhost:5000"),
            ("localhost/app", "localhost"),
            (
                "123.dkr.ecr.us-east-1.amazonaws.com/app@sha256:00",
                "123.dkr.ecr.us-east-1.amazonaws.com",
            ),
        ] {
            assert_eq!(image_registry(image), registry, "{image}");
        }
    }

    #[test]
    fn list_filter_requires_managed_and_labels() {
        let labels: BTreeMap<String, String> = [(labels::MANAGED, "true"), (labels::CLUSTER, "c1")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        assert!(ListFilter::all().matches(&labels));
        assert!(ListFilter::cluster("c1").matches(&labels));
        assert!(!ListFilter::cluster("c2").matches(&labels));
        assert!(!ListFilter::all().matches(&BTreeMap::new()));
    }
}
