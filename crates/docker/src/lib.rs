//! [`DockerRuntime`]: the agent's [`Runtime`] over the local Docker Engine (bollard). Every
//! Docker quirk lives here: API version negotiation, image references without a tag, the
//! shape of port maps and health states, `0001-01-01` timestamps, error status codes.

pub mod sandbox;
pub mod testing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, DeviceMapping,
    DeviceRequest, HealthConfig, HealthStatusEnum, HostConfig, HostConfigLogConfig, PortBinding,
    ResourcesUlimits, VolumeCreateOptions,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptions, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use flotilla_agent::runtime::{
    BoxFuture, BoxStream, ContainerSpec, ContainerStatus, ImageInfo, ListFilter, LogChunk,
    LogStream, MountKind, NetworkSpec, ObservedContainer, RegistryAuth, Runtime, RuntimeError,
    RuntimeEvent, RuntimeEventKind, RuntimeInfo, VolumeSpec, labels,
};
use flotilla_model::Timestamp;
use flotilla_model::task::{HealthStatus, NetworkBinding};
use flotilla_model::task_definition::TransportProtocol;
use futures::StreamExt;

/// The longest any Docker request may wait for its answer's headers. Stops answer after
/// the container's stop timeout (ECS allows up to 120 s), so this is generous.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Image digests remembered by image id.
const DIGEST_CACHE_MAX: usize = 1024;

/// A [`Runtime`] over a Docker Engine.
#[derive(Clone, Debug)]
pub struct DockerRuntime {
    docker: Docker,
    digests: Arc<Mutex<HashMap<String, String>>>,
}

pub(crate) fn server_error(error: DockerError) -> RuntimeError {
    match error {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => RuntimeError::NotFound(message),
            409 => RuntimeError::Conflict(message),
            500..=599 if message.contains("connection refused") => {
                RuntimeError::Unavailable(message)
            }
            _ => RuntimeError::Refused(message),
        },
        DockerError::DockerStreamError { error } => RuntimeError::Refused(error),
        other => RuntimeError::Unavailable(other.to_string()),
    }
}

/// Adds `:latest` to a reference without tag or digest (Docker would pull every tag).
fn with_default_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || last.contains('@') {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

/// Docker's RFC 3339 times; its zero time (`0001-01-01T00:00:00Z`) means "never".
fn parse_time(value: Option<&str>) -> Option<Timestamp> {
    let parsed =
        time::OffsetDateTime::parse(value?, &time::format_description::well_known::Rfc3339).ok()?;
    if parsed.year() < 1971 {
        return None;
    }
    Some(Timestamp::from_millis(
        (parsed.unix_timestamp_nanos() / 1_000_000) as i64,
    ))
}

fn health_of(status: Option<HealthStatusEnum>) -> Option<HealthStatus> {
    match status? {
        HealthStatusEnum::HEALTHY => Some(HealthStatus::Healthy),
        HealthStatusEnum::UNHEALTHY => Some(HealthStatus::Unhealthy),
        HealthStatusEnum::STARTING => Some(HealthStatus::Unknown),
        HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
    }
}

fn nanos(duration: Duration) -> i64 {
    duration.as_nanos().min(i64::MAX as u128) as i64
}

fn port_key(port: u16, protocol: TransportProtocol) -> String {
    format!("{port}/{}", protocol.as_str())
}

/// The Docker create request for a spec.
pub fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let exposed_ports: HashMap<String, HashMap<(), ()>> = spec
        .ports
        .iter()
        .map(|p| (port_key(p.container_port, p.protocol), HashMap::new()))
        .collect();
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for port in &spec.ports {
        let entry = port_bindings
            .entry(port_key(port.container_port, port.protocol))
            .or_insert_with(|| Some(Vec::new()));
        if let Some(list) = entry {
            // An empty host port: Docker picks a free ephemeral port.
            list.push(PortBinding {
                host_ip: None,
                host_port: Some(port.host_port.map(|p| p.to_string()).unwrap_or_default()),
            });
        }
    }
    let binds: Vec<String> = spec
        .mounts
        .iter()
        .map(|m| {
            let mode = if m.read_only { "ro" } else { "rw" };
            match m.kind {
                MountKind::Bind | MountKind::Volume => format!("{}:{}:{mode}", m.source, m.target),
            }
        })
        .collect();
    let device_requests = (!spec.gpu_ids.is_empty()).then(|| {
        vec![DeviceRequest {
            driver: Some("nvidia".to_owned()),
            device_ids: Some(spec.gpu_ids.clone()),
            capabilities: Some(vec![vec!["gpu".to_owned()]]),
            ..Default::default()
        }]
    });
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let host_config = HostConfig {
        cpu_shares: spec.cpu_shares,
        memory: spec.memory_bytes,
        memory_reservation: spec.memory_reservation_bytes,
        memory_swap: spec.memory_swap_bytes,
        memory_swappiness: spec.memory_swappiness,
        ulimits: (!spec.ulimits.is_empty()).then(|| {
            spec.ulimits
                .iter()
                .map(|u| ResourcesUlimits {
                    name: Some(u.name.clone()),
                    soft: Some(u.soft),
                    hard: Some(u.hard),
                })
                .collect()
        }),
        binds: (!binds.is_empty()).then_some(binds),
        volumes_from: (!spec.volumes_from.is_empty()).then(|| {
            spec.volumes_from
                .iter()
                .map(|v| format!("{}:{}", v.container, if v.read_only { "ro" } else { "rw" }))
                .collect()
        }),
        links: (!spec.links.is_empty()).then(|| {
            spec.links
                .iter()
                .map(|l| format!("{}:{}", l.container, l.alias))
                .collect()
        }),
        extra_hosts: (!spec.extra_hosts.is_empty()).then(|| {
            spec.extra_hosts
                .iter()
                .map(|(host, ip)| format!("{host}:{ip}"))
                .collect()
        }),
        readonly_rootfs: Some(spec.readonly_root_filesystem),
        privileged: Some(spec.privileged),
        cap_add: non_empty(&spec.capabilities_add),
        cap_drop: non_empty(&spec.capabilities_drop),
        devices: (!spec.devices.is_empty()).then(|| {
            spec.devices
                .iter()
                .map(|d| DeviceMapping {
                    path_on_host: Some(d.host_path.clone()),
                    path_in_container: Some(d.container_path.clone()),
                    cgroup_permissions: Some(d.permissions.clone()),
                })
                .collect()
        }),
        device_requests,
        init: spec.init.then_some(true),
        shm_size: spec.shm_size_bytes,
        tmpfs: (!spec.tmpfs.is_empty()).then(|| spec.tmpfs.clone().into_iter().collect()),
        dns: non_empty(&spec.dns_servers),
        dns_search: non_empty(&spec.dns_search_domains),
        security_opt: non_empty(&spec.security_options),
        sysctls: (!spec.sysctls.is_empty()).then(|| spec.sysctls.clone().into_iter().collect()),
        log_config: spec.log.as_ref().map(|log| HostConfigLogConfig {
            typ: Some(log.driver.clone()),
            config: Some(log.options.clone().into_iter().collect()),
        }),
        network_mode: Some(match &spec.network {
            NetworkSpec::Bridge => "bridge".to_owned(),
            NetworkSpec::Host => "host".to_owned(),
            NetworkSpec::None => "none".to_owned(),
            NetworkSpec::Container(name) => format!("container:{name}"),
        }),
        nano_cpus: spec.nano_cpus,
        pids_limit: spec.pids_limit,
        runtime: spec.oci_runtime.clone(),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        pid_mode: spec.pid_mode.clone(),
        ipc_mode: spec.ipc_mode.clone(),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: spec.entry_point.clone(),
        cmd: spec.command.clone(),
        env: Some(spec.environment.clone()),
        working_dir: spec.working_directory.clone(),
        user: spec.user.clone(),
        hostname: spec.hostname.clone(),
        labels: Some(spec.labels.clone().into_iter().collect()),
        exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
        network_disabled: spec.network_disabled.then_some(true),
        tty: Some(spec.tty),
        open_stdin: Some(spec.interactive),
        healthcheck: spec.health_check.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: Some(nanos(h.interval)),
            timeout: Some(nanos(h.timeout)),
            retries: Some(h.retries),
            start_period: Some(nanos(h.start_period)),
            start_interval: None,
        }),
        stop_timeout: Some(spec.stop_timeout.as_secs() as i64),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Host port bindings from Docker's port map (`"80/tcp": [{HostIp, HostPort}]`).
fn bindings(ports: Option<&HashMap<String, Option<Vec<PortBinding>>>>) -> Vec<NetworkBinding> {
    let mut out = Vec::new();
    for (key, bound) in ports.into_iter().flatten() {
        let (port, protocol) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let Ok(container_port) = port.parse::<i32>() else {
            continue;
        };
        let protocol = if protocol == "udp" {
            TransportProtocol::Udp
        } else {
            TransportProtocol::Tcp
        };
        for binding in bound.iter().flatten() {
            let Some(host_port) = binding
                .host_port
                .as_deref()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            out.push(NetworkBinding {
                bind_ip: binding
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .or_else(|| Some("0.0.0.0".to_owned())),
                container_port: Some(container_port),
                host_port: Some(host_port),
                protocol: Some(protocol),
            });
        }
    }
    out.sort_by(|a, b| (a.container_port, &a.bind_ip).cmp(&(b.container_port, &b.bind_ip)));
    out
}

fn digest_of(inspect: &bollard::models::ImageInspect) -> String {
    inspect
        .repo_digests
        .iter()
        .flatten()
        .find_map(|d| d.split_once('@').map(|(_, digest)| digest.to_owned()))
        .or_else(|| inspect.id.clone())
        .unwrap_or_default()
}

impl DockerRuntime {
    /// Connects to the local Docker Engine (`DOCKER_HOST` or the default socket) and agrees
    /// on an API version both sides speak.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?
            .with_timeout(REQUEST_TIMEOUT);
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        Ok(Self::from_client(docker))
    }

    /// Wraps an already configured client.
    pub fn from_client(docker: Docker) -> Self {
        Self {
            docker,
            digests: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The underlying client (tests use it to inspect what Docker holds).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    async fn image_digest(&self, image_id: &str) -> Option<String> {
        if let Some(digest) = self
            .digests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(image_id)
        {
            return Some(digest.clone());
        }
        let inspect = self.docker.inspect_image(image_id).await.ok()?;
        let digest = digest_of(&inspect);
        let mut cache = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= DIGEST_CACHE_MAX {
            cache.clear();
        }
        cache.insert(image_id.to_owned(), digest.clone());
        Some(digest)
    }

    async fn observe(&self, inspect: ContainerInspectResponse) -> ObservedContainer {
        let state = inspect.state.unwrap_or_default();
        let config = inspect.config.unwrap_or_default();
        let status = match state.status {
            Some(ContainerStateStatusEnum::CREATED)
            | None
            | Some(ContainerStateStatusEnum::EMPTY) => ContainerStatus::Created,
            Some(
                ContainerStateStatusEnum::RUNNING
                | ContainerStateStatusEnum::PAUSED
                | ContainerStateStatusEnum::RESTARTING,
            ) => ContainerStatus::Running,
            Some(
                ContainerStateStatusEnum::EXITED
                | ContainerStateStatusEnum::DEAD
                | ContainerStateStatusEnum::REMOVING,
            ) => ContainerStatus::Exited,
        };
        let image_digest = match inspect.image.as_deref() {
            Some(id) => self.image_digest(id).await,
            None => None,
        };
        ObservedContainer {
            id: inspect.id.unwrap_or_default(),
            runtime_name: inspect
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            status,
            exit_code: (status == ContainerStatus::Exited)
                .then(|| state.exit_code.unwrap_or(-1) as i32),
            oom_killed: state.oom_killed.unwrap_or(false),
            error: state.error.filter(|e| !e.is_empty()),
            health: health_of(state.health.and_then(|h| h.status)),
            started_at: parse_time(state.started_at.as_deref()),
            finished_at: parse_time(state.finished_at.as_deref())
                .filter(|_| status == ContainerStatus::Exited),
            image: config.image.unwrap_or_default(),
            image_digest,
            network_bindings: if status == ContainerStatus::Running {
                bindings(
                    inspect
                        .network_settings
                        .as_ref()
                        .and_then(|n| n.ports.as_ref()),
                )
            } else {
                Vec::new()
            },
        }
    }

    fn label_filters(filter: &ListFilter) -> HashMap<String, Vec<String>> {
        let mut wanted = vec![format!("{}=true", labels::MANAGED)];
        wanted.extend(filter.labels.iter().map(|(k, v)| format!("{k}={v}")));
        HashMap::from([("label".to_owned(), wanted)])
    }
}

fn event_kind(action: &str, attributes: &HashMap<String, String>) -> Option<RuntimeEventKind> {
    if let Some(health) = action.strip_prefix("health_status:") {
        return Some(RuntimeEventKind::Health(match health.trim() {
            "healthy" => HealthStatus::Healthy,
            "unhealthy" => HealthStatus::Unhealthy,
            _ => HealthStatus::Unknown,
        }));
    }
    Some(match action {
        "create" => RuntimeEventKind::Created,
        "start" => RuntimeEventKind::Started,
        "die" => RuntimeEventKind::Died {
            exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
        },
        "oom" => RuntimeEventKind::OutOfMemory,
        "destroy" => RuntimeEventKind::Removed,
        _ => return None,
    })
}

impl Runtime for DockerRuntime {
    fn ensure_cluster_network<'a>(
        &'a self,
        cluster: &'a str,
    ) -> BoxFuture<'a, Result<flotilla_agent::runtime::ClusterNetwork, RuntimeError>> {
        Box::pin(self.cluster_network(cluster))
    }

    fn ensure_sandbox<'a>(
        &'a self,
        spec: &'a flotilla_agent::runtime::SandboxSpec,
    ) -> BoxFuture<'a, Result<flotilla_model::task::TaskNetwork, RuntimeError>> {
        Box::pin(self.sandbox(spec))
    }

    fn stats<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<serde_json::Value, RuntimeError>> {
        Box::pin(self.one_stats(id))
    }

    fn info(&self) -> BoxFuture<'_, Result<RuntimeInfo, RuntimeError>> {
        Box::pin(async move {
            let version = self.docker.version().await.map_err(server_error)?;
            Ok(RuntimeInfo {
                version: format!("Docker {}", version.version.unwrap_or_default()),
                api_version: version.api_version,
            })
        })
    }

    fn ensure_image<'a>(
        &'a self,
        image: &'a str,
        auth: Option<&'a RegistryAuth>,
    ) -> BoxFuture<'a, Result<ImageInfo, RuntimeError>> {
        Box::pin(async move {
            let reference = with_default_tag(image);
            let inspected = match self.docker.inspect_image(&reference).await {
                Ok(inspect) => inspect,
                Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    tracing::info!(image = %reference, "pulling image");
                    let options = CreateImageOptionsBuilder::new()
                        .from_image(&reference)
                        .build();
                    let credentials = auth.map(|a| DockerCredentials {
                        username: Some(a.username.clone()),
                        password: Some(a.password.clone()),
                        serveraddress: Some(a.server_address.clone()),
                        ..Default::default()
                    });
                    let mut progress = self.docker.create_image(Some(options), None, credentials);
                    while let Some(step) = progress.next().await {
                        if let Err(error) = step {
                            let message = match server_error(error) {
                                RuntimeError::Unavailable(m)
                                | RuntimeError::Refused(m)
                                | RuntimeError::NotFound(m)
                                | RuntimeError::Conflict(m) => m,
                                other => other.to_string(),
                            };
                            return Err(RuntimeError::Pull {
                                image: image.to_owned(),
                                message,
                            });
                        }
                    }
                    self.docker
                        .inspect_image(&reference)
                        .await
                        .map_err(|e| RuntimeError::Pull {
                            image: image.to_owned(),
                            message: format!("pulled but not found: {}", server_error(e)),
                        })?
                }
                Err(error) => return Err(server_error(error)),
            };
            Ok(ImageInfo {
                id: inspected.id.clone().unwrap_or_default(),
                digest: digest_of(&inspected),
            })
        })
    }

    fn create_volume<'a>(
        &'a self,
        volume: &'a VolumeSpec,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let options = VolumeCreateOptions {
                name: Some(volume.name.clone()),
                driver: volume.driver.clone(),
                driver_opts: Some(volume.driver_opts.clone().into_iter().collect()),
                labels: Some(volume.labels.clone().into_iter().collect()),
                ..Default::default()
            };
            self.docker
                .create_volume(options)
                .await
                .map(|_| ())
                .map_err(server_error)
        })
    }

    fn remove_volume<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            match self
                .docker
                .remove_volume(name, None::<RemoveVolumeOptions>)
                .await
                .map_err(server_error)
            {
                Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
                Err(error) => Err(error),
            }
        })
    }

    fn list_volumes<'a>(
        &'a self,
        filter: &'a ListFilter,
    ) -> BoxFuture<'a, Result<Vec<String>, RuntimeError>> {
        Box::pin(async move {
            let options = ListVolumesOptionsBuilder::new()
                .filters(&Self::label_filters(filter))
                .build();
            let listed = self
                .docker
                .list_volumes(Some(options))
                .await
                .map_err(server_error)?;
            Ok(listed
                .volumes
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.name)
                .collect())
        })
    }

    fn create<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<String, RuntimeError>> {
        Box::pin(async move {
            let options = CreateContainerOptionsBuilder::new()
                .name(&spec.name)
                .build();
            let created = self
                .docker
                .create_container(Some(options), create_body(spec))
                .await
                .map_err(server_error)?;
            for warning in created.warnings {
                tracing::warn!(container = %spec.name, %warning, "docker warned on create");
            }
            Ok(created.id)
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.docker
                .start_container(id, None::<StartContainerOptions>)
                .await
                .map_err(server_error)
        })
    }

    fn stop<'a>(
        &'a self,
        id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
            let options = StopContainerOptionsBuilder::new().t(seconds).build();
            self.docker
                .stop_container(id, Some(options))
                .await
                .map_err(server_error)
        })
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ObservedContainer, RuntimeError>> {
        Box::pin(async move {
            let inspect = self
                .docker
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
                .map_err(server_error)?;
            Ok(self.observe(inspect).await)
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let options = RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            match self
                .docker
                .remove_container(id, Some(options))
                .await
                .map_err(server_error)
            {
                Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
                Err(error) => Err(error),
            }
        })
    }

    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
    ) -> BoxFuture<'a, Result<Vec<ObservedContainer>, RuntimeError>> {
        Box::pin(async move {
            let options = ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&Self::label_filters(filter))
                .build();
            let summaries = self
                .docker
                .list_containers(Some(options))
                .await
                .map_err(server_error)?;
            let mut containers = Vec::with_capacity(summaries.len());
            for summary in summaries {
                let Some(id) = summary.id else { continue };
                match self
                    .docker
                    .inspect_container(&id, None::<InspectContainerOptions>)
                    .await
                {
                    Ok(inspect) => containers.push(self.observe(inspect).await),
                    // Removed between the list and the inspect.
                    Err(DockerError::DockerResponseServerError {
                        status_code: 404, ..
                    }) => {}
                    Err(error) => return Err(server_error(error)),
                }
            }
            containers.sort_by(|a, b| a.runtime_name.cmp(&b.runtime_name));
            Ok(containers)
        })
    }

    fn logs(&self, id: &str, follow: bool) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        let options = LogsOptionsBuilder::new()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail("all")
            .build();
        let docker = self.docker.clone();
        let id = id.to_owned();
        let stream =
            futures::stream::once(async move { docker.logs(&id, Some(options)) }).flatten();
        stream
            .filter_map(|item| async move {
                match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        Some(Ok(LogChunk {
                            stream: LogStream::Stdout,
                            bytes: message.to_vec(),
                        }))
                    }
                    Ok(LogOutput::StdErr { message }) => Some(Ok(LogChunk {
                        stream: LogStream::Stderr,
                        bytes: message.to_vec(),
                    })),
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(error) => Some(Err(server_error(error))),
                }
            })
            .boxed()
    }

    fn events(&self) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        let filters: HashMap<String, Vec<String>> = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "label".to_owned(),
                vec![format!("{}=true", labels::MANAGED)],
            ),
        ]);
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        let docker = self.docker.clone();
        let stream = futures::stream::once(async move { docker.events(Some(options)) }).flatten();
        stream
            .filter_map(|item| async move {
                match item {
                    Ok(message) => {
                        let actor = message.actor.unwrap_or_default();
                        let attributes = actor.attributes.unwrap_or_default();
                        let kind =
                            event_kind(message.action.as_deref().unwrap_or_default(), &attributes)?;
                        Some(Ok(RuntimeEvent {
                            container_id: actor.id.unwrap_or_default(),
                            task_arn: attributes.get(labels::TASK_ARN).cloned(),
                            container_name: attributes.get(labels::CONTAINER_NAME).cloned(),
                            kind,
                        }))
                    }
                    Err(error) => Some(Err(server_error(error))),
                }
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_get_a_default_tag() {
        for (image, expected) in [
            ("busybox", "busybox:latest"),
            ("busybox:1.36", "busybox:1.36"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost:5000/app:v1", "localhost:5000/app:v1"),
            ("app@sha256:abc", "app@sha256:abc"),
        ] {
            assert_eq!(with_default_tag(image), expected);
        }
    }

    #[test]
    fn docker_times() {
        assert_eq!(parse_time(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(
            parse_time(Some("2024-05-01T12:00:00.123456789Z")),
            Some(Timestamp::from_millis(1_714_564_800_123))
        );
        assert_eq!(parse_time(None), None);
    }

    #[test]
    fn port_maps_become_network_bindings() {
        let ports = HashMap::from([
            (
                "80/tcp".to_owned(),
                Some(vec![
                    PortBinding {
                        host_ip: Some("0.0.0.0".into()),
                        host_port: Some("32768".into()),
                    },
                    PortBinding {
                        host_ip: Some("::".into()),
                        host_port: Some("32768".into()),
                    },
                ]),
            ),
            (
                "53/udp".to_owned(),
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: Some("5353".into()),
                }]),
            ),
            ("9/tcp".to_owned(), None),
        ]);
        let bindings = bindings(Some(&ports));
        assert_eq!(bindings.len(), 3);
        assert_eq!(bindings[0].container_port, Some(53));
        assert_eq!(bindings[0].protocol, Some(TransportProtocol::Udp));
        assert_eq!(bindings[0].bind_ip.as_deref(), Some("0.0.0.0"));
        assert_eq!(bindings[1].host_port, Some(32768));
    }

    #[test]
    fn health_events() {
        let none = HashMap::new();
        assert_eq!(
            event_kind("health_status: healthy", &none),
            Some(RuntimeEventKind::Health(HealthStatus::Healthy))
        );
        assert_eq!(
            event_kind("health_status: unhealthy", &none),
            Some(RuntimeEventKind::Health(HealthStatus::Unhealthy))
        );
        let died = HashMap::from([("exitCode".to_owned(), "137".to_owned())]);
        assert_eq!(
            event_kind("die", &died),
            Some(RuntimeEventKind::Died {
                exit_code: Some(137)
            })
        );
        assert_eq!(event_kind("exec_start: sh", &none), None);
    }
}
