//! From ECS container definitions to [`ContainerSpec`]s: what a container must look like,
//! decided by pure functions. No IO: runtimes translate a spec, they never read a task
//! definition.
//!
//! Names are deterministic (`flotilla-<task id>-<container>`), so a restarted agent finds
//! the same containers, a second create fails instead of duplicating, and siblings can be
//! referenced (`links`, `volumesFrom`) before they exist.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_model::task_definition::{NetworkMode, TransportProtocol, Volume};
use flotilla_model::{ContainerDefinition, TaskDefinition};
use flotilla_protocol::AssignedTask;
use serde::Serialize;

use crate::runtime::labels;

/// ECS's default `stopTimeout` on EC2 (`ECS_CONTAINER_STOP_TIMEOUT`).
pub const STOP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// ECS's health check defaults, in seconds.
pub const HEALTH_INTERVAL_DEFAULT_S: i64 = 30;
pub const HEALTH_TIMEOUT_DEFAULT_S: i64 = 5;
pub const HEALTH_RETRIES_DEFAULT: i64 = 3;
/// Swappiness ECS applies when `maxSwap` is set without `swappiness`.
pub const SWAPPINESS_DEFAULT: i64 = 60;
/// The least CPU shares the kernel accepts; ECS passes `cpu: 1` up to it.
pub const CPU_SHARES_MIN: i64 = 2;

const MIB: i64 = 1024 * 1024;

/// The network a container joins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkSpec {
    Bridge,
    Host,
    None,
    /// The network namespace of another container (by runtime name): an awsvpc task's
    /// containers join their task's sandbox, see [`sandbox_name`].
    Container(String),
}

/// The pids limit of each container of a Fargate task.
pub const FARGATE_PIDS_MAX: i64 = 4096;
/// Nanoseconds of CPU time per second that one ECS CPU unit (1/1024 vCPU) may use.
const NANO_CPUS_PER_UNIT: i64 = 1_000_000_000 / 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    pub container_port: u16,
    /// `None`: the engine picks a free host port (ECS's dynamic port mapping).
    pub host_port: Option<u16>,
    pub protocol: TransportProtocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A host path.
    Bind,
    /// A named engine volume.
    Volume,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountSpec {
    pub kind: MountKind,
    /// Host path or volume name.
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumesFromSpec {
    /// The runtime name of the source container.
    pub container: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkSpec {
    /// The runtime name of the linked container.
    pub container: String,
    pub alias: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UlimitSpec {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    pub host_path: String,
    pub container_path: String,
    /// cgroup permissions, `rwm` or a subset.
    pub permissions: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// `["CMD", ...]` or `["CMD-SHELL", "..."]`, as Docker's HEALTHCHECK takes it.
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: i64,
    pub start_period: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogSpec {
    pub driver: String,
    pub options: BTreeMap<String, String>,
}

/// A volume the runtime must create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    pub name: String,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// Where a task definition volume comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeSource {
    /// A host directory (`host.sourcePath`).
    Host { path: String },
    /// An engine volume created with the task and removed after it (`scope: task`, or a
    /// volume with neither `host.sourcePath` nor a Docker configuration).
    Task(VolumeSpec),
    /// An engine volume that outlives the task (`scope: shared`); created when missing only
    /// with `autoprovision`.
    Shared {
        spec: VolumeSpec,
        autoprovision: bool,
    },
}

impl VolumeSource {
    fn mount(&self, target: String, read_only: bool) -> MountSpec {
        match self {
            Self::Host { path } => MountSpec {
                kind: MountKind::Bind,
                source: path.clone(),
                target,
                read_only,
            },
            Self::Task(spec) | Self::Shared { spec, .. } => MountSpec {
                kind: MountKind::Volume,
                source: spec.name.clone(),
                target,
                read_only,
            },
        }
    }
}

/// Everything a runtime needs to create one container.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    /// The runtime name, see [`runtime_name`].
    pub name: String,
    pub image: String,
    pub entry_point: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    /// `NAME=value`, definition order, overrides applied.
    pub environment: Vec<String>,
    pub working_directory: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub network: NetworkSpec,
    pub network_disabled: bool,
    /// Published ports (bridge mode only).
    pub ports: Vec<PortSpec>,
    pub cpu_shares: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub memory_reservation_bytes: Option<i64>,
    pub memory_swap_bytes: Option<i64>,
    pub memory_swappiness: Option<i64>,
    pub ulimits: Vec<UlimitSpec>,
    pub mounts: Vec<MountSpec>,
    pub volumes_from: Vec<VolumesFromSpec>,
    pub links: Vec<LinkSpec>,
    /// `(hostname, ip)` entries for `/etc/hosts`.
    pub extra_hosts: Vec<(String, String)>,
    pub readonly_root_filesystem: bool,
    pub privileged: bool,
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    pub devices: Vec<DeviceSpec>,
    pub init: bool,
    pub shm_size_bytes: Option<i64>,
    /// Container path -> mount options (`size=64m,noexec`).
    pub tmpfs: BTreeMap<String, String>,
    pub dns_servers: Vec<String>,
    pub dns_search_domains: Vec<String>,
    pub security_options: Vec<String>,
    pub sysctls: BTreeMap<String, String>,
    pub health_check: Option<HealthCheckSpec>,
    pub stop_timeout: Duration,
    /// `None`: the engine's default log driver.
    pub log: Option<LogSpec>,
    pub interactive: bool,
    pub tty: bool,
    /// GPU ids given to this container.
    pub gpu_ids: Vec<String>,
    pub pid_mode: Option<String>,
    pub ipc_mode: Option<String>,
    /// A hard CPU limit in billionths of a CPU (Fargate: the task's size).
    pub nano_cpus: Option<i64>,
    /// The most processes the container may have.
    pub pids_limit: Option<i64>,
    /// The OCI runtime to run the container with (`runsc`, `kata-runtime`); `None`: the
    /// engine's default.
    pub oci_runtime: Option<String>,
}

/// What [`container_spec`] needs besides the task.
#[derive(Clone, Debug, Default)]
pub struct SpecContext<'a> {
    /// The cluster name the agent runs in (labels carry it, adoption filters on it).
    pub cluster: &'a str,
    /// Used when the definition has no `stopTimeout`.
    pub stop_timeout_default: Duration,
    /// The owning agent's host id, carried as a label (see `labels::INSTANCE`).
    pub instance_id: Option<&'a str>,
    /// The agent's task metadata endpoint (`http://172.18.0.1:40123`), given to containers
    /// as `ECS_CONTAINER_METADATA_URI_V4`.
    pub metadata_endpoint: Option<&'a str>,
    /// The OCI runtime Fargate tasks run under (operator setting), if not the default.
    pub fargate_runtime: Option<&'a str>,
}

/// The last segment of an ARN: a task's id.
pub fn task_id(task_arn: &str) -> &str {
    task_arn.rsplit('/').next().unwrap_or(task_arn)
}

/// Keeps the characters engines allow in names (`[a-zA-Z0-9_.-]`).
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The runtime name of a task's container: `flotilla-<task id>-<container>`.
pub fn runtime_name(task_arn: &str, container: &str) -> String {
    format!(
        "flotilla-{}-{}",
        sanitize(task_id(task_arn)),
        sanitize(container)
    )
}

/// The engine volume name of a task-scoped volume: `flotilla-<task id>-<volume>`.
pub fn task_volume_name(task_arn: &str, volume: &str) -> String {
    format!(
        "flotilla-{}-{}",
        sanitize(task_id(task_arn)),
        sanitize(volume)
    )
}

/// The labels that tie a container or volume to its task.
pub fn task_labels(task: &AssignedTask, cluster: &str) -> BTreeMap<String, String> {
    [
        (labels::MANAGED, "true"),
        (labels::TASK_ARN, task.task_arn.as_str()),
        (labels::TASK_ID, task_id(&task.task_arn)),
        (labels::CLUSTER, cluster),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// How the task's network mode runs on one host. `awsvpc` (an ENI per task) becomes the
/// network namespace of the task's sandbox container, which has its own address on the
/// cluster's network.
pub fn network_spec(mode: NetworkMode, task_arn: &str) -> NetworkSpec {
    match mode {
        NetworkMode::Bridge => NetworkSpec::Bridge,
        NetworkMode::Awsvpc => NetworkSpec::Container(sandbox_name(task_arn)),
        NetworkMode::Host => NetworkSpec::Host,
        NetworkMode::None => NetworkSpec::None,
    }
}

/// The runtime name of an awsvpc task's sandbox (the container that owns its network
/// namespace): `flotilla-<task id>.sandbox`. ECS container names cannot hold a `.`, so it
/// never collides with a container of the task.
pub fn sandbox_name(task_arn: &str) -> String {
    format!("flotilla-{}.sandbox", sanitize(task_id(task_arn)))
}

/// The path of a container's metadata under the agent's metadata endpoint.
pub fn metadata_path(task_arn: &str, container: &str) -> String {
    format!("/v4/{}/{}", task_id(task_arn), container)
}

/// Every volume the task's containers mount, by task definition volume name. A mount of
/// a volume the definition does not declare gets a task-scoped volume, as Docker would.
pub fn task_volumes(
    task: &AssignedTask,
    definition: &TaskDefinition,
    cluster: &str,
) -> BTreeMap<String, VolumeSource> {
    let mut volumes: BTreeMap<String, VolumeSource> = BTreeMap::new();
    for volume in &definition.spec.volumes {
        let Some(name) = volume.name.as_deref() else {
            continue;
        };
        volumes.insert(name.to_owned(), volume_source(task, volume, name, cluster));
    }
    for container in &definition.spec.container_definitions {
        for mount in &container.mount_points {
            if let Some(name) = mount.source_volume.as_deref()
                && !volumes.contains_key(name)
            {
                let spec = VolumeSpec {
                    name: task_volume_name(&task.task_arn, name),
                    driver: None,
                    driver_opts: BTreeMap::new(),
                    labels: task_labels(task, cluster),
                };
                volumes.insert(name.to_owned(), VolumeSource::Task(spec));
            }
        }
    }
    volumes
}

fn volume_source(task: &AssignedTask, volume: &Volume, name: &str, cluster: &str) -> VolumeSource {
    if let Some(path) = volume.host.as_ref().and_then(|h| h.source_path.clone()) {
        return VolumeSource::Host { path };
    }
    let config = volume
        .docker_volume_configuration
        .clone()
        .unwrap_or_default();
    let shared = config.scope.as_deref() == Some("shared");
    let mut labels = config.labels.clone();
    if !shared {
        labels.extend(task_labels(task, cluster));
    }
    let spec = VolumeSpec {
        name: if shared {
            name.to_owned()
        } else {
            task_volume_name(&task.task_arn, name)
        },
        driver: config.driver.clone(),
        driver_opts: config.driver_opts.clone(),
        labels,
    };
    if shared {
        VolumeSource::Shared {
            spec,
            autoprovision: config.autoprovision.unwrap_or(false),
        }
    } else {
        VolumeSource::Task(spec)
    }
}

/// The GPU ids of `container`: the task's ids dealt out in container order of demand.
fn container_gpu_ids(
    task: &AssignedTask,
    definition: &TaskDefinition,
    container: &ContainerDefinition,
) -> Vec<String> {
    let mut next = 0usize;
    for candidate in &definition.spec.container_definitions {
        let count = candidate.gpu_count() as usize;
        if candidate.name() == container.name() {
            return task
                .gpu_ids
                .iter()
                .skip(next)
                .take(count)
                .cloned()
                .collect();
        }
        next += count;
    }
    Vec::new()
}

/// Expands `containerPortRange` (`"8000-8003"`) into its ports.
fn port_range(range: &str) -> Vec<u16> {
    let Some((low, high)) = range.split_once('-') else {
        return range.trim().parse().map(|p| vec![p]).unwrap_or_default();
    };
    match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
        (Ok(low), Ok(high)) if low <= high => (low..=high).collect(),
        _ => Vec::new(),
    }
}

fn seconds(value: Option<i32>, default: i64) -> Duration {
    Duration::from_secs(value.map(i64::from).unwrap_or(default).max(0) as u64)
}

/// Translates one ECS container definition of `task` into a [`ContainerSpec`].
pub fn container_spec(
    task: &AssignedTask,
    definition: &TaskDefinition,
    container: &ContainerDefinition,
    context: &SpecContext<'_>,
) -> ContainerSpec {
    let name = container.name();
    let overrides = task.overrides.container(name);
    let network = network_spec(definition.spec.network_mode, &task.task_arn);
    let bridge = network == NetworkSpec::Bridge;
    // Docker refuses a hostname, DNS settings or extra hosts with the host's network or
    // another container's.
    let own_network = matches!(network, NetworkSpec::Bridge | NetworkSpec::None);
    let fargate = task.launch.launch_type == flotilla_model::LaunchType::Fargate;

    let mut environment: Vec<(String, String)> = Vec::new();
    let entries = container
        .environment
        .iter()
        .chain(overrides.iter().flat_map(|o| o.environment.iter()));
    for pair in entries {
        let Some(key) = pair.name.clone() else {
            continue;
        };
        let value = pair.value.clone().unwrap_or_default();
        match environment.iter_mut().find(|(k, _)| *k == key) {
            Some(existing) => existing.1 = value,
            None => environment.push((key, value)),
        }
    }
    let gpu_ids = container_gpu_ids(task, definition, container);
    if !gpu_ids.is_empty() {
        environment.push(("NVIDIA_VISIBLE_DEVICES".to_owned(), gpu_ids.join(",")));
    }
    if let Some(endpoint) = context.metadata_endpoint {
        let uri = format!(
            "{}{}",
            endpoint.trim_end_matches('/'),
            metadata_path(&task.task_arn, name)
        );
        environment.push(("ECS_CONTAINER_METADATA_URI_V4".to_owned(), uri.clone()));
        environment.push(("ECS_CONTAINER_METADATA_URI".to_owned(), uri));
    }
    if fargate {
        environment.push(("AWS_EXECUTION_ENV".to_owned(), "AWS_ECS_FARGATE".to_owned()));
    }

    let mut ports = Vec::new();
    if bridge {
        for mapping in &container.port_mappings {
            let protocol = mapping.protocol.unwrap_or_default();
            if let Some(port) = mapping.container_port.and_then(|p| u16::try_from(p).ok()) {
                let host_port = mapping
                    .host_port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0);
                ports.push(PortSpec {
                    container_port: port,
                    host_port,
                    protocol,
                });
            } else if let Some(range) = mapping.container_port_range.as_deref() {
                ports.extend(port_range(range).into_iter().map(|p| PortSpec {
                    container_port: p,
                    host_port: None,
                    protocol,
                }));
            }
        }
    }

    let cpu = overrides.and_then(|o| o.cpu).unwrap_or(container.cpu);
    let memory_mib = overrides.and_then(|o| o.memory).or(container.memory);
    let memory_reservation_mib = overrides
        .and_then(|o| o.memory_reservation)
        .or(container.memory_reservation);
    let linux = container.linux_parameters.clone().unwrap_or_default();
    // Fargate holds every container to the task's size: its memory is a hard limit (unless
    // the container's own is lower) and its CPU units a hard quota.
    let task_size = |value: &Option<String>| value.as_deref().and_then(|v| v.parse::<i64>().ok());
    let task_memory_mib = task_size(&task.launch.memory).filter(|_| fargate);
    let task_cpu_units = task_size(&task.launch.cpu).filter(|_| fargate);
    let memory_bytes = match (memory_mib.map(i64::from), task_memory_mib) {
        (Some(own), Some(task)) => Some(own.min(task) * MIB),
        (own, task) => own.or(task).map(|m| m * MIB),
    };
    let memory_swap_bytes = match (memory_bytes, linux.max_swap) {
        (Some(memory), Some(swap)) => Some(memory + i64::from(swap.max(0)) * MIB),
        // Fargate has no swap: the memory limit is the whole of it.
        (Some(memory), None) if fargate => Some(memory),
        _ => None,
    };
    let memory_swappiness = linux
        .swappiness
        .map(i64::from)
        .or(linux.max_swap.map(|_| SWAPPINESS_DEFAULT));

    let volumes = task_volumes(task, definition, context.cluster);
    let mounts = container
        .mount_points
        .iter()
        .filter_map(|mount| {
            let source = volumes.get(mount.source_volume.as_deref()?)?;
            Some(source.mount(
                mount.container_path.clone()?,
                mount.read_only.unwrap_or(false),
            ))
        })
        .collect();
    let volumes_from = container
        .volumes_from
        .iter()
        .filter_map(|from| {
            Some(VolumesFromSpec {
                container: runtime_name(&task.task_arn, from.source_container.as_deref()?),
                read_only: from.read_only.unwrap_or(false),
            })
        })
        .collect();
    let links = if bridge {
        container
            .links
            .iter()
            .map(|link| {
                let (target, alias) = link
                    .split_once(':')
                    .unwrap_or((link.as_str(), link.as_str()));
                LinkSpec {
                    container: runtime_name(&task.task_arn, target),
                    alias: alias.to_owned(),
                }
            })
            .collect()
    } else {
        Vec::new()
    };

    let stop_timeout = container
        .stop_timeout
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or(context.stop_timeout_default);

    let mut labels = container.docker_labels.clone();
    labels.extend(task_labels(task, context.cluster));
    if let Some(instance_id) = context.instance_id {
        labels.insert(labels::INSTANCE.to_owned(), instance_id.to_owned());
    }
    labels.insert(labels::CONTAINER_NAME.to_owned(), name.to_owned());
    labels.insert(
        labels::TASK_DEFINITION_ARN.to_owned(),
        definition.task_definition_arn.clone(),
    );
    labels.insert(
        labels::STOP_TIMEOUT.to_owned(),
        stop_timeout.as_secs().to_string(),
    );
    labels.insert(labels::ECS_TASK_ARN.to_owned(), task.task_arn.clone());
    labels.insert(labels::ECS_CONTAINER_NAME.to_owned(), name.to_owned());
    labels.insert(labels::ECS_CLUSTER.to_owned(), context.cluster.to_owned());
    labels.insert(labels::ECS_FAMILY.to_owned(), definition.family.clone());
    labels.insert(
        labels::ECS_REVISION.to_owned(),
        definition.revision.to_string(),
    );

    let log = container
        .log_configuration
        .as_ref()
        .map(|config| match config.log_driver.as_str() {
            // CloudWatch Logs is not here: keep the output locally (readable through the agent's
            // logs endpoint) and the requested configuration as labels.
            "awslogs" => {
                labels.insert(
                    format!("{}driver", labels::LOG_PREFIX),
                    config.log_driver.clone(),
                );
                for (key, value) in &config.options {
                    labels.insert(format!("{}{key}", labels::LOG_PREFIX), value.clone());
                }
                LogSpec {
                    driver: "json-file".to_owned(),
                    options: BTreeMap::new(),
                }
            }
            driver => LogSpec {
                driver: driver.to_owned(),
                options: config.options.clone(),
            },
        });

    let health_check = container.health_check.as_ref().map(|check| {
        let test = match check.command.first().map(String::as_str) {
            Some("CMD" | "CMD-SHELL" | "NONE") => check.command.clone(),
            _ => vec!["CMD-SHELL".to_owned(), check.command.join(" ")],
        };
        HealthCheckSpec {
            test,
            interval: seconds(check.interval, HEALTH_INTERVAL_DEFAULT_S),
            timeout: seconds(check.timeout, HEALTH_TIMEOUT_DEFAULT_S),
            retries: check
                .retries
                .map(i64::from)
                .unwrap_or(HEALTH_RETRIES_DEFAULT),
            start_period: seconds(check.start_period, 0),
        }
    });

    let capabilities = linux.capabilities.clone().unwrap_or_default();
    let devices = linux
        .devices
        .iter()
        .map(|device| DeviceSpec {
            host_path: device.host_path.clone(),
            container_path: device
                .container_path
                .clone()
                .unwrap_or_else(|| device.host_path.clone()),
            permissions: if device.permissions.is_empty() {
                "rwm".to_owned()
            } else {
                let has = |p: &str| device.permissions.iter().any(|x| x.eq_ignore_ascii_case(p));
                [("read", 'r'), ("write", 'w'), ("mknod", 'm')]
                    .into_iter()
                    .filter(|(p, _)| has(p))
                    .map(|(_, c)| c)
                    .collect()
            },
        })
        .collect();
    let tmpfs = linux
        .tmpfs
        .iter()
        .map(|t| {
            let mut options = vec![format!("size={}m", t.size)];
            options.extend(t.mount_options.iter().cloned());
            (t.container_path.clone(), options.join(","))
        })
        .collect();

    ContainerSpec {
        name: runtime_name(&task.task_arn, name),
        image: container.image.clone().unwrap_or_default(),
        entry_point: (!container.entry_point.is_empty()).then(|| container.entry_point.clone()),
        command: overrides
            .and_then(|o| o.command.clone())
            .or_else(|| (!container.command.is_empty()).then(|| container.command.clone())),
        environment: environment
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        working_directory: container.working_directory.clone(),
        user: container.user.clone(),
        hostname: container.hostname.clone().filter(|_| own_network),
        labels,
        network,
        network_disabled: container.disable_networking.unwrap_or(false),
        ports,
        cpu_shares: (cpu > 0).then(|| i64::from(cpu).max(CPU_SHARES_MIN)),
        memory_bytes,
        memory_reservation_bytes: memory_reservation_mib.map(|m| i64::from(m) * MIB),
        memory_swap_bytes,
        memory_swappiness,
        ulimits: container
            .ulimits
            .iter()
            .map(|u| UlimitSpec {
                name: u.name.clone(),
                soft: u.soft_limit,
                hard: u.hard_limit,
            })
            .collect(),
        mounts,
        volumes_from,
        links,
        extra_hosts: if !own_network {
            Vec::new()
        } else {
            container
                .extra_hosts
                .iter()
                .map(|h| (h.hostname.clone(), h.ip_address.clone()))
                .collect()
        },
        readonly_root_filesystem: container.readonly_root_filesystem.unwrap_or(false),
        privileged: container.privileged.unwrap_or(false),
        capabilities_add: capabilities.add,
        capabilities_drop: capabilities.drop,
        devices,
        init: linux.init_process_enabled.unwrap_or(false),
        shm_size_bytes: linux.shared_memory_size.map(|m| i64::from(m) * MIB),
        tmpfs,
        dns_servers: if !own_network {
            Vec::new()
        } else {
            container.dns_servers.clone()
        },
        dns_search_domains: if !own_network {
            Vec::new()
        } else {
            container.dns_search_domains.clone()
        },
        security_options: {
            let mut options = container.docker_security_options.clone();
            if fargate {
                options.push("no-new-privileges:true".to_owned());
            }
            options
        },
        sysctls: container
            .system_controls
            .iter()
            .filter_map(|s| Some((s.namespace.clone()?, s.value.clone().unwrap_or_default())))
            .collect(),
        health_check,
        stop_timeout,
        log,
        interactive: container.interactive.unwrap_or(false),
        tty: container.pseudo_terminal.unwrap_or(false),
        gpu_ids,
        pid_mode: definition.spec.pid_mode.clone().filter(|m| m == "host"),
        ipc_mode: definition
            .spec
            .ipc_mode
            .clone()
            .filter(|m| m == "host" || m == "none"),
        nano_cpus: task_cpu_units.map(|units| units * NANO_CPUS_PER_UNIT),
        pids_limit: fargate.then_some(FARGATE_PIDS_MAX),
        oci_runtime: context
            .fargate_runtime
            .filter(|_| fargate)
            .map(str::to_owned),
    }
}

/// Host ports of a host-mode container: its container ports, bound on all addresses.
pub fn host_mode_bindings(container: &ContainerDefinition) -> Vec<flotilla_model::NetworkBinding> {
    container
        .port_mappings
        .iter()
        .filter_map(|m| {
            let port = m.container_port?;
            Some(flotilla_model::NetworkBinding {
                bind_ip: Some("0.0.0.0".to_owned()),
                container_port: Some(port),
                host_port: Some(m.host_port.filter(|p| *p != 0).unwrap_or(port)),
                protocol: Some(m.protocol.unwrap_or_default()),
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use flotilla_model::Timestamp;
    use flotilla_model::task::{DesiredStatus, TaskOverride, TaskStatus};
    use serde_json::{Value, json};

    use super::*;

    pub const TASK_ARN: &str = "arn:aws:ecs:us-east-1:000000000000:task/default/0123456789abcdef";

    pub fn task() -> AssignedTask {
        AssignedTask {
            task_arn: TASK_ARN.to_owned(),
            cluster_arn: "arn:aws:ecs:us-east-1:000000000000:cluster/default".to_owned(),
            task_definition_arn: "arn:aws:ecs:us-east-1:000000000000:task-definition/web:3"
                .to_owned(),
            desired_status: DesiredStatus::Running,
            last_status: TaskStatus::Provisioning,
            overrides: TaskOverride::default(),
            containers: Vec::new(),
            gpu_ids: Vec::new(),
            stop_code: None,
            stopped_reason: None,
            version: 1,
            created_at: Timestamp::from_millis(0),
            launch: Default::default(),
        }
    }

    /// A task definition from the JSON of its spec (`containerDefinitions`, `volumes`, ...).
    pub fn definition(spec: Value) -> TaskDefinition {
        let mut value = json!({
            "taskDefinitionArn": "arn:aws:ecs:us-east-1:000000000000:task-definition/web:3",
            "family": "web",
            "revision": 3,
            "status": "ACTIVE",
            "networkMode": "bridge",
            "compatibilities": ["EC2"],
            "registeredAt": 0.0,
        });
        for (k, v) in spec.as_object().cloned().unwrap_or_default() {
            value[k] = v;
        }
        serde_json::from_value(value).expect("a valid task definition")
    }

    fn spec_of(definition: &TaskDefinition, task: &AssignedTask) -> Value {
        let context = SpecContext {
            instance_id: None,
            cluster: "default",
            stop_timeout_default: STOP_TIMEOUT_DEFAULT,
            ..Default::default()
        };
        let container = &definition.spec.container_definitions[0];
        serde_json::to_value(container_spec(task, definition, container, &context)).unwrap()
    }

    /// Checks that every key of `expected` has that value in `actual` (`null` = absent).
    fn assert_subset(case: &str, actual: &Value, expected: &Value) {
        for (key, want) in expected.as_object().expect("an object of expectations") {
            let got = actual.get(key).unwrap_or(&Value::Null);
            assert_eq!(got, want, "{case}: field {key}\nwhole spec: {actual:#}");
        }
    }

    #[test]
    fn container_definitions_translate_field_by_field() {
        // (case, task definition spec, overrides, expected fields of the ContainerSpec)
        let cases: Vec<(&str, Value, Value, Value)> = vec![
            (
                "names, image, labels and defaults",
                json!({"containerDefinitions": [{"name": "app", "image": "busybox", "dockerLabels": {"team": "a"}}]}),
                json!({}),
                json!({
                    "name": "flotilla-0123456789abcdef-app",
                    "image": "busybox",
                    "entryPoint": null, "command": null, "cpuShares": null, "memoryBytes": null,
                    "network": "bridge", "stopTimeout": {"secs": 30, "nanos": 0}, "log": null,
                    "labels": {
                        "team": "a",
                        "com.flotilla.managed": "true",
                        "com.flotilla.task-arn": TASK_ARN,
                        "com.flotilla.task-id": "0123456789abcdef",
                        "com.flotilla.container-name": "app",
                        "com.flotilla.cluster": "default",
                        "com.flotilla.task-definition-arn": "arn:aws:ecs:us-east-1:000000000000:task-definition/web:3",
                        "com.flotilla.stop-timeout": "30",
                        "com.amazonaws.ecs.task-arn": TASK_ARN,
                        "com.amazonaws.ecs.container-name": "app",
                        "com.amazonaws.ecs.cluster": "default",
                        "com.amazonaws.ecs.task-definition-family": "web",
                        "com.amazonaws.ecs.task-definition-version": "3",
                    },
                }),
            ),
            (
                "command, entry point, environment and overrides",
                json!({"containerDefinitions": [{
                    "name": "app", "image": "busybox", "entryPoint": ["sh", "-c"], "command": ["echo hi"],
                    "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "workingDirectory": "/srv", "user": "1000:1000",
                }]}),
                json!({"containerOverrides": [{"name": "app", "command": ["echo bye"],
                    "environment": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}]}]}),
                json!({
                    "entryPoint": ["sh", "-c"], "command": ["echo bye"],
                    "environment": ["A=1", "B=20", "C=3"],
                    "workingDirectory": "/srv", "user": "1000:1000",
                }),
            ),
            (
                "bridge ports: static, dynamic (0 or absent), udp, ranges",
                json!({"containerDefinitions": [{"name": "app", "image": "x", "portMappings": [
                    {"containerPort": 80, "hostPort": 8080},
                    {"containerPort": 81, "hostPort": 0},
                    {"containerPort": 53, "protocol": "udp"},
                    {"containerPortRange": "9000-9001"},
                ]}]}),
                json!({}),
                json!({"ports": [
                    {"containerPort": 80, "hostPort": 8080, "protocol": "tcp"},
                    {"containerPort": 81, "hostPort": null, "protocol": "tcp"},
                    {"containerPort": 53, "hostPort": null, "protocol": "udp"},
                    {"containerPort": 9000, "hostPort": null, "protocol": "tcp"},
                    {"containerPort": 9001, "hostPort": null, "protocol": "tcp"},
                ]}),
            ),
            (
                "host mode: no published ports, hostname, links, dns or extra hosts",
                json!({"networkMode": "host", "containerDefinitions": [{"name": "app", "image": "x",
                    "portMappings": [{"containerPort": 80}], "hostname": "h", "links": ["db"],
                    "dnsServers": ["1.1.1.1"], "extraHosts": [{"hostname": "a", "ipAddress": "10.0.0.1"}]}]}),
                json!({}),
                json!({"network": "host", "ports": [], "hostname": null, "links": [], "dnsServers": [], "extraHosts": []}),
            ),
            (
                "none mode and disabled networking",
                json!({"networkMode": "none", "containerDefinitions": [{"name": "app", "image": "x",
                    "portMappings": [{"containerPort": 80}], "disableNetworking": true}]}),
                json!({}),
                json!({"network": "none", "ports": [], "networkDisabled": true}),
            ),
            (
                "cpu shares and memory limits, overridden",
                json!({"containerDefinitions": [{"name": "app", "image": "x", "cpu": 256, "memory": 512, "memoryReservation": 128}]}),
                json!({"containerOverrides": [{"name": "app", "cpu": 1, "memoryReservation": 64}]}),
                json!({"cpuShares": 2, "memoryBytes": 536870912, "memoryReservationBytes": 67108864,
                    "memorySwapBytes": null, "memorySwappiness": null}),
            ),
            (
                "swap: maxSwap adds to the hard limit, swappiness defaults to 60",
                json!({"containerDefinitions": [{"name": "app", "image": "x", "memory": 100,
                    "linuxParameters": {"maxSwap": 50}}]}),
                json!({}),
                json!({"memoryBytes": 104857600, "memorySwapBytes": 157286400, "memorySwappiness": 60}),
            ),
            (
                "linux parameters",
                json!({"containerDefinitions": [{"name": "app", "image": "x", "linuxParameters": {
                    "capabilities": {"add": ["NET_ADMIN"], "drop": ["MKNOD"]},
                    "devices": [{"hostPath": "/dev/fuse", "permissions": ["read", "write"]}],
                    "initProcessEnabled": true, "sharedMemorySize": 64,
                    "tmpfs": [{"containerPath": "/run", "size": 16, "mountOptions": ["noexec"]}],
                    "swappiness": 10,
                }}]}),
                json!({}),
                json!({
                    "capabilitiesAdd": ["NET_ADMIN"], "capabilitiesDrop": ["MKNOD"],
                    "devices": [{"hostPath": "/dev/fuse", "containerPath": "/dev/fuse", "permissions": "rw"}],
                    "init": true, "shmSizeBytes": 67108864, "tmpfs": {"/run": "size=16m,noexec"},
                    "memorySwappiness": 10, "memorySwapBytes": null,
                }),
            ),
            (
                "security, dns, hosts, sysctls, ulimits, read-only root, privileged, tty",
                json!({"containerDefinitions": [{"name": "app", "image": "x",
                    "dnsServers": ["10.0.0.2"], "dnsSearchDomains": ["corp"],
                    "extraHosts": [{"hostname": "db", "ipAddress": "10.0.0.9"}],
                    "dockerSecurityOptions": ["no-new-privileges"],
                    "systemControls": [{"namespace": "net.core.somaxconn", "value": "1024"}],
                    "ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 4096}],
                    "readonlyRootFilesystem": true, "privileged": true, "interactive": true, "pseudoTerminal": true,
                    "hostname": "web-1"}]}),
                json!({}),
                json!({
                    "dnsServers": ["10.0.0.2"], "dnsSearchDomains": ["corp"], "extraHosts": [["db", "10.0.0.9"]],
                    "securityOptions": ["no-new-privileges"], "sysctls": {"net.core.somaxconn": "1024"},
                    "ulimits": [{"name": "nofile", "soft": 1024, "hard": 4096}],
                    "readonlyRootFilesystem": true, "privileged": true, "interactive": true, "tty": true,
                    "hostname": "web-1",
                }),
            ),
            (
                "health check with defaults and a bare command",
                json!({"containerDefinitions": [{"name": "app", "image": "x",
                    "healthCheck": {"command": ["CMD-SHELL", "test -f /ok"], "interval": 5, "retries": 2}}]}),
                json!({}),
                json!({"healthCheck": {"test": ["CMD-SHELL", "test -f /ok"],
                    "interval": {"secs": 5, "nanos": 0}, "timeout": {"secs": 5, "nanos": 0},
                    "retries": 2, "startPeriod": {"secs": 0, "nanos": 0}}}),
            ),
            (
                "stop timeout",
                json!({"containerDefinitions": [{"name": "app", "image": "x", "stopTimeout": 2}]}),
                json!({}),
                json!({"stopTimeout": {"secs": 2, "nanos": 0}}),
            ),
            (
                "json-file log options pass through",
                json!({"containerDefinitions": [{"name": "app", "image": "x",
                    "logConfiguration": {"logDriver": "json-file", "options": {"max-size": "10m"}}}]}),
                json!({}),
                json!({"log": {"driver": "json-file", "options": {"max-size": "10m"}}}),
            ),
            (
                "mounts: host path, task volume, shared volume, undeclared volume; volumesFrom; links",
                json!({
                    "volumes": [
                        {"name": "data", "host": {"sourcePath": "/srv/data"}},
                        {"name": "scratch", "dockerVolumeConfiguration": {"scope": "task", "driver": "local"}},
                        {"name": "cache", "dockerVolumeConfiguration": {"scope": "shared", "autoprovision": true}},
                        {"name": "empty", "host": {}},
                    ],
                    "containerDefinitions": [{"name": "app", "image": "x",
                        "mountPoints": [
                            {"sourceVolume": "data", "containerPath": "/data", "readOnly": true},
                            {"sourceVolume": "scratch", "containerPath": "/scratch"},
                            {"sourceVolume": "cache", "containerPath": "/cache"},
                            {"sourceVolume": "empty", "containerPath": "/empty"},
                            {"sourceVolume": "undeclared", "containerPath": "/u"},
                        ],
                        "volumesFrom": [{"sourceContainer": "side", "readOnly": true}],
                        "links": ["db:database", "cache"]}],
                }),
                json!({}),
                json!({
                    "mounts": [
                        {"kind": "bind", "source": "/srv/data", "target": "/data", "readOnly": true},
                        {"kind": "volume", "source": "flotilla-0123456789abcdef-scratch", "target": "/scratch", "readOnly": false},
                        {"kind": "volume", "source": "cache", "target": "/cache", "readOnly": false},
                        {"kind": "volume", "source": "flotilla-0123456789abcdef-empty", "target": "/empty", "readOnly": false},
                        {"kind": "volume", "source": "flotilla-0123456789abcdef-undeclared", "target": "/u", "readOnly": false},
                    ],
                    "volumesFrom": [{"container": "flotilla-0123456789abcdef-side", "readOnly": true}],
                    "links": [
                        {"container": "flotilla-0123456789abcdef-db", "alias": "database"},
                        {"container": "flotilla-0123456789abcdef-cache", "alias": "cache"},
                    ],
                }),
            ),
            (
                "pid and ipc modes: host only",
                json!({"pidMode": "host", "ipcMode": "task", "containerDefinitions": [{"name": "app", "image": "x"}]}),
                json!({}),
                json!({"pidMode": "host", "ipcMode": null}),
            ),
        ];
        for (case, spec, overrides, expected) in cases {
            let definition = definition(spec);
            let mut task = task();
            task.overrides = serde_json::from_value(overrides).unwrap();
            assert_subset(case, &spec_of(&definition, &task), &expected);
        }
    }

    #[test]
    fn awslogs_maps_to_json_file_and_keeps_its_options_as_labels() {
        let definition = definition(
            json!({"containerDefinitions": [{"name": "app", "image": "x",
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/web", "awslogs-region": "eu-west-1"}}}]}),
        );
        let spec = spec_of(&definition, &task());
        assert_eq!(spec["log"], json!({"driver": "json-file", "options": {}}));
        assert_eq!(spec["labels"]["com.flotilla.log.driver"], "awslogs");
        assert_eq!(spec["labels"]["com.flotilla.log.awslogs-group"], "/ecs/web");
        assert_eq!(
            spec["labels"]["com.flotilla.log.awslogs-region"],
            "eu-west-1"
        );
    }

    #[test]
    fn gpus_are_dealt_in_container_order() {
        let definition = definition(json!({"containerDefinitions": [
            {"name": "a", "image": "x", "resourceRequirements": [{"type": "GPU", "value": "1"}]},
            {"name": "b", "image": "x", "resourceRequirements": [{"type": "GPU", "value": "2"}]},
        ]}));
        let mut task = task();
        task.gpu_ids = vec!["0".into(), "1".into(), "2".into()];
        let context = SpecContext {
            instance_id: None,
            cluster: "default",
            stop_timeout_default: STOP_TIMEOUT_DEFAULT,
            ..Default::default()
        };
        let b = container_spec(
            &task,
            &definition,
            &definition.spec.container_definitions[1],
            &context,
        );
        assert_eq!(b.gpu_ids, vec!["1".to_owned(), "2".to_owned()]);
        assert!(
            b.environment
                .contains(&"NVIDIA_VISIBLE_DEVICES=1,2".to_owned())
        );
    }

    #[test]
    fn task_volumes_by_scope() {
        let definition = definition(json!({
            "volumes": [
                {"name": "t", "dockerVolumeConfiguration": {"scope": "task", "labels": {"x": "y"}}},
                {"name": "s", "dockerVolumeConfiguration": {"scope": "shared"}},
                {"name": "h", "host": {"sourcePath": "/h"}},
            ],
            "containerDefinitions": [{"name": "app", "image": "x"}],
        }));
        let volumes = task_volumes(&task(), &definition, "default");
        match &volumes["t"] {
            VolumeSource::Task(spec) => {
                assert_eq!(spec.name, "flotilla-0123456789abcdef-t");
                assert_eq!(spec.labels["x"], "y");
                assert_eq!(spec.labels[labels::TASK_ARN], TASK_ARN);
            }
            other => panic!("t: {other:?}"),
        }
        assert!(
            matches!(&volumes["s"], VolumeSource::Shared { spec, autoprovision: false } if spec.name == "s")
        );
        assert_eq!(volumes["h"], VolumeSource::Host { path: "/h".into() });
    }

    #[test]
    fn host_mode_binds_container_ports() {
        let definition = definition(
            json!({"networkMode": "host", "containerDefinitions": [{"name": "app", "image": "x",
            "portMappings": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "udp"}]}]}),
        );
        let bindings = host_mode_bindings(&definition.spec.container_definitions[0]);
        assert_eq!(bindings.len(), 2);
        assert_eq!(bindings[0].host_port, Some(8080));
        assert_eq!(bindings[1].protocol, Some(TransportProtocol::Udp));
    }

    #[test]
    fn runtime_names_are_sanitized() {
        assert_eq!(
            runtime_name("arn:aws:ecs:r:a:task/c/abc", "web app"),
            "flotilla-abc-web-app"
        );
        assert_eq!(task_id("abc"), "abc");
    }

    #[test]
    fn fargate_tasks_join_their_sandbox_and_are_held_to_their_size() {
        let definition = definition(json!({
            "networkMode": "awsvpc",
            "cpu": "512",
            "memory": "1024",
            "containerDefinitions": [
                {"name": "app", "image": "busybox", "portMappings": [{"containerPort": 80}]},
                {"name": "side", "image": "busybox", "memory": 128},
            ],
        }));
        let mut task = task();
        task.launch = flotilla_protocol::TaskLaunch {
            launch_type: flotilla_model::LaunchType::Fargate,
            cpu: Some("512".into()),
            memory: Some("1024".into()),
            ..Default::default()
        };
        let context = SpecContext {
            cluster: "default",
            stop_timeout_default: STOP_TIMEOUT_DEFAULT,
            metadata_endpoint: Some("http://172.18.0.1:40000"),
            fargate_runtime: Some("runsc"),
            ..Default::default()
        };
        let specs: Vec<ContainerSpec> = definition
            .spec
            .container_definitions
            .iter()
            .map(|c| container_spec(&task, &definition, c, &context))
            .collect();
        let sandbox = NetworkSpec::Container(sandbox_name(TASK_ARN));
        for spec in &specs {
            assert_eq!(spec.network, sandbox);
            assert!(spec.ports.is_empty(), "awsvpc publishes no host ports");
            assert_eq!(spec.nano_cpus, Some(512 * (1_000_000_000 / 1024)));
            assert_eq!(spec.pids_limit, Some(FARGATE_PIDS_MAX));
            assert_eq!(spec.oci_runtime.as_deref(), Some("runsc"));
            assert!(
                spec.security_options
                    .contains(&"no-new-privileges:true".to_owned())
            );
            assert_eq!(spec.memory_swap_bytes, spec.memory_bytes, "no swap");
        }
        assert_eq!(specs[0].memory_bytes, Some(1024 * MIB), "the task's memory");
        assert_eq!(
            specs[1].memory_bytes,
            Some(128 * MIB),
            "its own, lower limit"
        );
        assert!(specs[0].environment.contains(&format!(
            "ECS_CONTAINER_METADATA_URI_V4=http://172.18.0.1:40000/v4/{}/app",
            task_id(TASK_ARN)
        )));
        assert!(
            specs[0]
                .environment
                .contains(&"AWS_EXECUTION_ENV=AWS_ECS_FARGATE".to_owned())
        );

        // The same definition on EC2: no Fargate limits, no runtime override.
        let ec2 = container_spec(
            &task_on_ec2(),
            &definition,
            &definition.spec.container_definitions[0],
            &context,
        );
        assert_eq!(ec2.nano_cpus, None);
        assert_eq!(ec2.oci_runtime, None);
        assert_eq!(ec2.network, sandbox, "awsvpc on EC2 too");
    }

    fn task_on_ec2() -> AssignedTask {
        task()
    }
}
