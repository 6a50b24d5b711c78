//! Validation and normalisation of task definitions and run-time overrides, as ECS does them.
//!
//! Pure functions, no IO. Every refusal names the offending field with a JSON path such as
//! `containerDefinitions[1].portMappings[0].hostPort` and says what is accepted. Task
//! definition content is refused with `ClientException` (as ECS's RegisterTaskDefinition
//! does); RunTask/StartTask overrides with `InvalidParameterException`.
//!
//! Normalisation fills in what ECS shows on DescribeTaskDefinition: `essential`, port
//! mapping `protocol` and `hostPort` (per network mode), health-check defaults, the network
//! mode, and task-level `cpu`/`memory` as plain CPU units and MiB ("1 vCPU" -> "1024").
//! Normalising a normalised definition again changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use crate::resources::Demand;
use crate::task::{ContainerOverride, TaskOverride};
use crate::task_definition::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    ClientException,
    InvalidParameterException,
}

/// A refused task definition or override; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub kind: ErrorKind,
    pub message: String,
}

fn client(message: impl Into<String>) -> ValidationError {
    ValidationError {
        kind: ErrorKind::ClientException,
        message: message.into(),
    }
}

fn invalid_parameter(message: impl Into<String>) -> ValidationError {
    ValidationError {
        kind: ErrorKind::InvalidParameterException,
        message: message.into(),
    }
}

/// A normalised definition plus the launch types it is compatible with.
#[derive(Clone, Debug, PartialEq)]
pub struct NormalizedTaskDefinition {
    pub spec: TaskDefinitionSpec,
    pub compatibilities: Vec<Compatibility>,
}

const NAME_RULE: &str =
    "Up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed.";
const CONTAINERS_MAX: usize = 10;
const EC2_TASK_CPU: RangeInclusive<i64> = 128..=196_608;
const MEMORY_MIB_MIN: i32 = 6;
const PLACEMENT_CONSTRAINTS_MAX: usize = 10;
const IGNORED_EXIT_CODES_MAX: usize = 50;
const PORT: RangeInclusive<i32> = 1..=65535;
const HOST_PORT: RangeInclusive<i32> = 0..=65535;
const HEALTH_INTERVAL: (i32, RangeInclusive<i32>) = (30, 5..=300);
const HEALTH_TIMEOUT: (i32, RangeInclusive<i32>) = (5, 2..=60);
const HEALTH_RETRIES: (i32, RangeInclusive<i32>) = (3, 1..=10);
const HEALTH_START_PERIOD: RangeInclusive<i32> = 0..=300;
const STOP_TIMEOUT: RangeInclusive<i32> = 2..=120;
const START_TIMEOUT_MIN: i32 = 2;
const FARGATE_START_TIMEOUT_MAX: i32 = 120;
const RESTART_ATTEMPT_PERIOD: RangeInclusive<i32> = 60..=1800;
const EPHEMERAL_STORAGE_GIB: RangeInclusive<i32> = 21..=200;
const SWAPPINESS: RangeInclusive<i32> = 0..=100;
const PORT_NAME_MAX: usize = 64;

const ULIMIT_NAMES: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];
const LOG_DRIVERS: [&str; 8] = [
    "json-file",
    "syslog",
    "journald",
    "gelf",
    "fluentd",
    "awslogs",
    "splunk",
    "awsfirelens",
];
const APP_PROTOCOLS: [&str; 3] = ["http", "http2", "grpc"];
const CAPABILITIES: [&str; 38] = [
    "ALL",
    "AUDIT_CONTROL",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];
const CPU_ARCHITECTURES: [&str; 2] = ["X86_64", "ARM64"];
const WINDOWS_FAMILIES: [&str; 9] = [
    "WINDOWS_SERVER_2019_FULL",
    "WINDOWS_SERVER_2019_CORE",
    "WINDOWS_SERVER_2016_FULL",
    "WINDOWS_SERVER_2004_CORE",
    "WINDOWS_SERVER_2022_CORE",
    "WINDOWS_SERVER_2022_FULL",
    "WINDOWS_SERVER_2025_CORE",
    "WINDOWS_SERVER_2025_FULL",
    "WINDOWS_SERVER_20H2_CORE",
];

/// 1 to 255 letters, digits, hyphens and underscores (families, container and volume names).
fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 255
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn out_of_range<T: std::fmt::Display>(path: &str, value: T, range: &RangeInclusive<T>) -> String {
    format!(
        "Invalid '{path}' value {value}: it must be between {} and {}.",
        range.start(),
        range.end()
    )
}

/// A whole number of units from a decimal `number` times `factor` ("0.25" x 1024 = 256).
fn scaled(number: &str, factor: i64) -> Option<i64> {
    let number = number.trim();
    if number.is_empty()
        || !number.chars().all(|c| c.is_ascii_digit() || c == '.')
        || number.chars().filter(|c| *c == '.').count() > 1
        || number == "."
    {
        return None;
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut units = whole.checked_mul(factor)?;
    if !fraction.is_empty() {
        // Exact decimal arithmetic: fraction digits / 10^len, times factor, must be whole.
        let digits = fraction.trim_end_matches('0');
        if digits.len() > 12 {
            return None;
        }
        if !digits.is_empty() {
            let numerator: i64 = digits.parse().ok()?;
            let denominator = 10i64.pow(digits.len() as u32);
            let part = numerator.checked_mul(factor)?;
            if part % denominator != 0 {
                return None;
            }
            units = units.checked_add(part / denominator)?;
        }
    }
    Some(units)
}

/// "1 vCPU" / "0.25 vcpu" / "1024" -> CPU units. Errors name the field and accepted forms.
pub fn parse_cpu_units(field: &str, value: &str) -> Result<i64, ValidationError> {
    let text = value.trim().to_ascii_lowercase();
    let units = match text
        .strip_suffix("vcpus")
        .or_else(|| text.strip_suffix("vcpu"))
    {
        Some(number) => scaled(number, 1024),
        None => scaled(&text, 1).filter(|_| !text.contains('.')),
    };
    units.filter(|u| *u > 0).ok_or_else(|| {
        client(format!(
            "Invalid '{field}' value '{value}'. Give a positive whole number of CPU units (\"1024\") or vCPUs (\"1 vCPU\", \"0.25 vCPU\")."
        ))
    })
}

/// "1GB" / "1 gb" / "512" / "512 MiB" -> MiB. Errors name the field and accepted forms.
pub fn parse_memory_mib(field: &str, value: &str) -> Result<i64, ValidationError> {
    let text = value.trim().to_ascii_lowercase();
    let mib = [("gib", 1024), ("gb", 1024), ("mib", 1), ("mb", 1)]
        .into_iter()
        .find_map(|(suffix, factor)| text.strip_suffix(suffix).map(|n| scaled(n, factor)))
        .unwrap_or_else(|| scaled(&text, 1).filter(|_| !text.contains('.')));
    mib.filter(|m| *m > 0).ok_or_else(|| {
        client(format!(
            "Invalid '{field}' value '{value}'. Give a positive whole number of MiB (\"512\") or GB (\"1GB\", \"0.5 GB\")."
        ))
    })
}

/// Fargate's cpu/memory table (ECS-SEMANTICS.md "Fargate task sizes").
pub fn fargate_size_is_valid(cpu_units: i64, memory_mib: i64) -> bool {
    let gb = |range: RangeInclusive<i64>, step: usize| {
        range
            .step_by(step)
            .any(|n| n.checked_mul(1024) == Some(memory_mib))
    };
    match cpu_units {
        256 => [512, 1024, 2048].contains(&memory_mib),
        512 => gb(1..=4, 1),
        1024 => gb(2..=8, 1),
        2048 => gb(4..=16, 1),
        4096 => gb(8..=30, 1),
        8192 => gb(16..=60, 4),
        16384 => gb(32..=120, 8),
        _ => false,
    }
}

/// Refuses a present [`Unsupported`] field by name. `null` and an empty list mean absent.
fn refuse_unsupported(value: &Unsupported, path: &str) -> Result<(), ValidationError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::Array(items)) if items.is_empty() => Ok(()),
        Some(_) => Err(unsupported(path)),
    }
}

fn unsupported(path: &str) -> ValidationError {
    client(format!("Flotilla does not support '{path}' yet."))
}

/// What the checks of one container need to know about the rest of the definition.
struct Context<'a> {
    network_mode: NetworkMode,
    names: &'a [&'a str],
    volumes: &'a BTreeSet<&'a str>,
    task_memory: Option<i64>,
    fargate_requested: bool,
}

/// Checks a RegisterTaskDefinition input and fills in ECS's defaults.
pub fn normalize_task_definition(
    input: TaskDefinitionInput,
) -> Result<NormalizedTaskDefinition, ValidationError> {
    if !is_name(&input.family) {
        return Err(client(format!(
            "Invalid 'family' value '{}'. {NAME_RULE}",
            input.family
        )));
    }
    let count = input.container_definitions.len();
    if count == 0 || count > CONTAINERS_MAX {
        return Err(client(format!(
            "Invalid 'containerDefinitions': a task definition holds 1 to {CONTAINERS_MAX} containers, not {count}."
        )));
    }
    refuse_unsupported(&input.proxy_configuration, "proxyConfiguration")?;
    refuse_unsupported(&input.inference_accelerators, "inferenceAccelerators")?;

    let network_mode = input.network_mode.unwrap_or_default();
    let fargate_requested = input
        .requires_compatibilities
        .contains(&Compatibility::Fargate);
    let task_cpu = input
        .cpu
        .as_deref()
        .map(|v| parse_cpu_units("cpu", v))
        .transpose()?;
    let task_memory = input
        .memory
        .as_deref()
        .map(|v| parse_memory_mib("memory", v))
        .transpose()?;
    if fargate_requested
        && let Some(problem) = fargate_task_problem(network_mode, task_cpu, task_memory)
    {
        return Err(client(problem));
    }
    if let Some(cpu) = task_cpu
        && !EC2_TASK_CPU.contains(&cpu)
    {
        return Err(client(format!(
            "Invalid 'cpu' setting for task: {cpu} CPU units. The task CPU must be between {} and {} CPU units.",
            EC2_TASK_CPU.start(),
            EC2_TASK_CPU.end()
        )));
    }
    match input.pid_mode.as_deref() {
        None | Some("host" | "task") => {}
        Some(other) => {
            return Err(client(format!(
                "Invalid 'pidMode' value '{other}'. Accepted values: host, task."
            )));
        }
    }
    match input.ipc_mode.as_deref() {
        None | Some("host" | "task" | "none") => {}
        Some(other) => {
            return Err(client(format!(
                "Invalid 'ipcMode' value '{other}'. Accepted values: host, task, none."
            )));
        }
    }
    if let Some(storage) = &input.ephemeral_storage
        && !EPHEMERAL_STORAGE_GIB.contains(&storage.size_in_gi_b)
    {
        return Err(client(out_of_range(
            "ephemeralStorage.sizeInGiB",
            storage.size_in_gi_b,
            &EPHEMERAL_STORAGE_GIB,
        )));
    }
    check_runtime_platform(input.runtime_platform.as_ref())?;
    check_placement_constraints(&input.placement_constraints)?;
    check_volumes(&input.volumes)?;

    let names: Vec<&str> = input
        .container_definitions
        .iter()
        .map(|c| c.name())
        .collect();
    let mut seen = BTreeSet::new();
    for (i, container) in input.container_definitions.iter().enumerate() {
        let name = container.name();
        if container.name.is_none() {
            return Err(client(format!(
                "containerDefinitions[{i}].name is required. {NAME_RULE}"
            )));
        }
        if !is_name(name) {
            return Err(client(format!(
                "Invalid 'containerDefinitions[{i}].name' value '{name}'. {NAME_RULE}"
            )));
        }
        if !seen.insert(name) {
            return Err(client(format!(
                "Invalid 'containerDefinitions[{i}].name': container names must be unique within a task definition, and '{name}' is used twice."
            )));
        }
    }
    let volume_names: BTreeSet<&str> = input
        .volumes
        .iter()
        .filter_map(|v| v.name.as_deref())
        .collect();
    let context = Context {
        network_mode,
        names: &names,
        volumes: &volume_names,
        task_memory,
        fargate_requested,
    };
    let containers = input
        .container_definitions
        .iter()
        .enumerate()
        .map(|(i, c)| normalize_container(i, c, &context))
        .collect::<Result<Vec<_>, _>>()?;
    check_across_containers(&containers, task_cpu, task_memory)?;
    check_dependencies(&containers)?;

    let spec = TaskDefinitionSpec {
        task_role_arn: input.task_role_arn,
        execution_role_arn: input.execution_role_arn,
        network_mode,
        container_definitions: containers,
        volumes: input.volumes,
        placement_constraints: input.placement_constraints,
        requires_compatibilities: input.requires_compatibilities,
        cpu: task_cpu.map(|c| c.to_string()),
        memory: task_memory.map(|m| m.to_string()),
        pid_mode: input.pid_mode,
        ipc_mode: input.ipc_mode,
        ephemeral_storage: input.ephemeral_storage,
        runtime_platform: input.runtime_platform,
        enable_fault_injection: input.enable_fault_injection,
    };
    let fargate_problem = fargate_problem(&spec, task_cpu, task_memory);
    if fargate_requested && let Some(problem) = &fargate_problem {
        return Err(client(problem.clone()));
    }
    let mut compatibilities = vec![Compatibility::Ec2, Compatibility::External];
    if fargate_problem.is_none() {
        compatibilities.push(Compatibility::Fargate);
    }
    if spec
        .requires_compatibilities
        .contains(&Compatibility::ManagedInstances)
    {
        compatibilities.push(Compatibility::ManagedInstances);
    }
    compatibilities.sort();
    Ok(NormalizedTaskDefinition {
        spec,
        compatibilities,
    })
}

fn check_runtime_platform(platform: Option<&RuntimePlatform>) -> Result<(), ValidationError> {
    let Some(platform) = platform else {
        return Ok(());
    };
    if let Some(arch) = platform.cpu_architecture.as_deref()
        && !CPU_ARCHITECTURES.contains(&arch)
    {
        return Err(client(format!(
            "Invalid 'runtimePlatform.cpuArchitecture' value '{arch}'. Accepted values: X86_64, ARM64."
        )));
    }
    match platform.operating_system_family.as_deref() {
        None | Some("LINUX") => Ok(()),
        Some(family) if WINDOWS_FAMILIES.contains(&family) => Err(client(format!(
            "Flotilla does not support 'runtimePlatform.operatingSystemFamily' {family} yet; only LINUX."
        ))),
        Some(family) => Err(client(format!(
            "Invalid 'runtimePlatform.operatingSystemFamily' value '{family}'. Accepted values: LINUX, {}.",
            WINDOWS_FAMILIES.join(", ")
        ))),
    }
}

fn check_placement_constraints(constraints: &[PlacementConstraint]) -> Result<(), ValidationError> {
    if constraints.len() > PLACEMENT_CONSTRAINTS_MAX {
        return Err(client(format!(
            "Invalid 'placementConstraints': a task definition can have at most {PLACEMENT_CONSTRAINTS_MAX} placement constraints, not {}.",
            constraints.len()
        )));
    }
    for (i, constraint) in constraints.iter().enumerate() {
        if constraint.kind.as_deref() != Some("memberOf") {
            return Err(client(format!(
                "Invalid 'placementConstraints[{i}].type' value '{}'. Task definitions accept only 'memberOf'.",
                constraint.kind.as_deref().unwrap_or_default()
            )));
        }
        if constraint
            .expression
            .as_deref()
            .is_none_or(|e| e.trim().is_empty())
        {
            return Err(client(format!(
                "placementConstraints[{i}].expression is required for a 'memberOf' constraint (a cluster query language expression)."
            )));
        }
    }
    Ok(())
}

fn check_volumes(volumes: &[Volume]) -> Result<(), ValidationError> {
    let mut names = BTreeSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let path = format!("volumes[{i}]");
        let Some(name) = volume.name.as_deref() else {
            return Err(client(format!("{path}.name is required. {NAME_RULE}")));
        };
        if !is_name(name) {
            return Err(client(format!(
                "Invalid '{path}.name' value '{name}'. {NAME_RULE}"
            )));
        }
        if !names.insert(name) {
            return Err(client(format!(
                "Invalid '{path}.name': volume names must be unique, and '{name}' is used twice."
            )));
        }
        refuse_unsupported(
            &volume.efs_volume_configuration,
            &format!("{path}.efsVolumeConfiguration"),
        )?;
        refuse_unsupported(
            &volume.s3files_volume_configuration,
            &format!("{path}.s3filesVolumeConfiguration"),
        )?;
        refuse_unsupported(
            &volume.fsx_windows_file_server_volume_configuration,
            &format!("{path}.fsxWindowsFileServerVolumeConfiguration"),
        )?;
        if volume.configured_at_launch == Some(true) {
            return Err(unsupported(&format!("{path}.configuredAtLaunch")));
        }
        if volume.host.is_some() && volume.docker_volume_configuration.is_some() {
            return Err(client(format!(
                "Invalid '{path}': give at most one of 'host' and 'dockerVolumeConfiguration'."
            )));
        }
        if let Some(docker) = &volume.docker_volume_configuration {
            let at = format!("{path}.dockerVolumeConfiguration");
            match docker.scope.as_deref() {
                None | Some("task") if docker.autoprovision == Some(true) => {
                    return Err(client(format!(
                        "Invalid '{at}.autoprovision': it can only be true when 'scope' is 'shared'."
                    )));
                }
                None | Some("task" | "shared") => {}
                Some(other) => {
                    return Err(client(format!(
                        "Invalid '{at}.scope' value '{other}'. Accepted values: task, shared."
                    )));
                }
            }
        }
    }
    Ok(())
}

fn check_image(path: &str, image: Option<&str>) -> Result<(), ValidationError> {
    let Some(image) = image else {
        return Err(client(format!("{path}.image is required.")));
    };
    let rule = "Up to 255 letters (uppercase and lowercase), numbers, hyphens, underscores, colons, periods, forward slashes, and number signs are allowed, plus '@sha256:' and 64 hex digits for a digest.";
    let charset_ok = image
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || "-_:./#@".contains(ch));
    let digest_ok = match image.split_once('@') {
        None => true,
        Some((repository, digest)) => {
            !repository.is_empty()
                && digest.strip_prefix("sha256:").is_some_and(|hex| {
                    hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())
                })
        }
    };
    if image.is_empty() || image.len() > 255 || !charset_ok || !digest_ok {
        return Err(client(format!(
            "Invalid '{path}.image' value '{image}'. {rule}"
        )));
    }
    Ok(())
}

fn normalize_container(
    i: usize,
    container: &ContainerDefinition,
    context: &Context<'_>,
) -> Result<ContainerDefinition, ValidationError> {
    let path = format!("containerDefinitions[{i}]");
    let name = container.name();
    let mut c = container.clone();
    for (value, field) in [
        (&c.repository_credentials, "repositoryCredentials"),
        (&c.environment_files, "environmentFiles"),
        (&c.secrets, "secrets"),
        (&c.firelens_configuration, "firelensConfiguration"),
        (&c.credential_specs, "credentialSpecs"),
    ] {
        refuse_unsupported(value, &format!("{path}.{field}"))?;
    }
    check_image(&path, c.image.as_deref())?;
    check_container_memory(&path, &c, context)?;
    if let Some(log) = &c.log_configuration {
        if !LOG_DRIVERS.contains(&log.log_driver.as_str()) {
            return Err(client(format!(
                "Invalid '{path}.logConfiguration.logDriver' value '{}'. Accepted values: {}.",
                log.log_driver,
                LOG_DRIVERS.join(", ")
            )));
        }
        refuse_unsupported(
            &log.secret_options,
            &format!("{path}.logConfiguration.secretOptions"),
        )?;
    }
    for (j, ulimit) in c.ulimits.iter().enumerate() {
        if !ULIMIT_NAMES.contains(&ulimit.name.as_str()) {
            return Err(client(format!(
                "Invalid '{path}.ulimits[{j}].name' value '{}'. Accepted values: {}.",
                ulimit.name,
                ULIMIT_NAMES.join(", ")
            )));
        }
        if ulimit.soft_limit > ulimit.hard_limit {
            return Err(client(format!(
                "Invalid '{path}.ulimits[{j}]': softLimit {} is above hardLimit {}; softLimit must be less than or equal to hardLimit.",
                ulimit.soft_limit, ulimit.hard_limit
            )));
        }
    }
    if let Some(timeout) = c.stop_timeout
        && !STOP_TIMEOUT.contains(&timeout)
    {
        return Err(client(out_of_range(
            &format!("{path}.stopTimeout"),
            timeout,
            &STOP_TIMEOUT,
        )));
    }
    if let Some(timeout) = c.start_timeout
        && timeout < START_TIMEOUT_MIN
    {
        return Err(client(format!(
            "Invalid '{path}.startTimeout' value {timeout}: it must be at least {START_TIMEOUT_MIN} seconds."
        )));
    }
    if let Some(policy) = &c.restart_policy {
        if let Some(period) = policy.restart_attempt_period
            && !RESTART_ATTEMPT_PERIOD.contains(&period)
        {
            return Err(client(out_of_range(
                &format!("{path}.restartPolicy.restartAttemptPeriod"),
                period,
                &RESTART_ATTEMPT_PERIOD,
            )));
        }
        if policy.ignored_exit_codes.len() > IGNORED_EXIT_CODES_MAX {
            return Err(client(format!(
                "Invalid '{path}.restartPolicy.ignoredExitCodes': at most {IGNORED_EXIT_CODES_MAX} exit codes are allowed, not {}.",
                policy.ignored_exit_codes.len()
            )));
        }
    }
    check_resource_requirements(&path, &c.resource_requirements, false)?;
    if let Some(consistency) = c.version_consistency.as_deref()
        && !["enabled", "disabled"].contains(&consistency)
    {
        return Err(client(format!(
            "Invalid '{path}.versionConsistency' value '{consistency}'. Accepted values: enabled, disabled."
        )));
    }
    if let Some(linux) = &c.linux_parameters {
        check_linux_parameters(&path, linux)?;
    }
    if context.network_mode == NetworkMode::Awsvpc {
        if c.hostname.is_some() {
            return Err(client(format!(
                "Invalid '{path}.hostname': the hostname parameter is not supported when networkMode=awsvpc."
            )));
        }
        if !c.extra_hosts.is_empty() {
            return Err(client(format!(
                "Invalid '{path}.extraHosts': extraHosts are not supported when networkMode=awsvpc."
            )));
        }
    }
    check_links(&path, name, &c.links, context)?;
    normalize_port_mappings(&path, name, &mut c.port_mappings, context.network_mode)?;
    if let Some(check) = &mut c.health_check {
        normalize_health_check(&path, check)?;
    }
    for (j, mount) in c.mount_points.iter().enumerate() {
        let source = mount.source_volume.as_deref().unwrap_or_default();
        if !context.volumes.contains(source) {
            return Err(client(format!(
                "Invalid '{path}.mountPoints[{j}].sourceVolume' value '{source}': it must name a volume of the task definition ('volumes[].name')."
            )));
        }
        if mount.container_path.as_deref().is_none_or(str::is_empty) {
            return Err(client(format!(
                "{path}.mountPoints[{j}].containerPath is required (the path in the container to mount the volume at)."
            )));
        }
    }
    for (j, from) in c.volumes_from.iter().enumerate() {
        let source = from.source_container.as_deref().unwrap_or_default();
        if source == name || !context.names.contains(&source) {
            return Err(client(format!(
                "Invalid '{path}.volumesFrom[{j}].sourceContainer' value '{source}': it must name another container of this task definition."
            )));
        }
    }
    c.essential.get_or_insert(true);
    Ok(c)
}

fn check_container_memory(
    path: &str,
    c: &ContainerDefinition,
    context: &Context<'_>,
) -> Result<(), ValidationError> {
    let name = c.name();
    if c.cpu < 0 {
        return Err(client(format!(
            "Invalid setting for container '{name}'. '{path}.cpu' must be 0 or more CPU units, not {}.",
            c.cpu
        )));
    }
    for (field, value) in [
        ("memory", c.memory),
        ("memoryReservation", c.memory_reservation),
    ] {
        if let Some(value) = value
            && value < MEMORY_MIB_MIN
        {
            return Err(client(format!(
                "Invalid setting for container '{name}'. '{path}.{field}' must be at least {MEMORY_MIB_MIN} MiB, not {value}."
            )));
        }
    }
    if let (Some(hard), Some(soft)) = (c.memory, c.memory_reservation)
        && soft > hard
    {
        return Err(client(format!(
            "Invalid setting for container '{name}'. '{path}.memoryReservation' ({soft} MiB) must be less than or equal to 'memory' ({hard} MiB)."
        )));
    }
    // Fargate requires task-level memory, and says so itself.
    if context.task_memory.is_none()
        && !context.fargate_requested
        && c.memory.is_none()
        && c.memory_reservation.is_none()
    {
        return Err(client(format!(
            "Invalid setting for container '{name}'. At least one of 'memory' or 'memoryReservation' must be specified. Set one on {path}, or a task-level 'memory'."
        )));
    }
    Ok(())
}

/// GPU (a positive whole number) is the only resource requirement Flotilla runs.
fn check_resource_requirements(
    path: &str,
    requirements: &[ResourceRequirement],
    overrides: bool,
) -> Result<(), ValidationError> {
    let fail = |message: String| {
        if overrides {
            invalid_parameter(message)
        } else {
            client(message)
        }
    };
    for (j, requirement) in requirements.iter().enumerate() {
        let at = format!("{path}.resourceRequirements[{j}]");
        match requirement.kind.as_str() {
            "GPU" => {
                if requirement
                    .value
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .is_none()
                {
                    return Err(fail(format!(
                        "Invalid '{at}.value' value '{}': a GPU requirement is a positive whole number of GPUs.",
                        requirement.value
                    )));
                }
            }
            "InferenceAccelerator" => {
                return Err(fail(format!(
                    "Flotilla does not support '{at}' of type 'InferenceAccelerator' yet."
                )));
            }
            other => {
                return Err(fail(format!(
                    "Invalid '{at}.type' value '{other}'. Accepted values: GPU."
                )));
            }
        }
    }
    Ok(())
}

fn check_linux_parameters(path: &str, linux: &LinuxParameters) -> Result<(), ValidationError> {
    let at = format!("{path}.linuxParameters");
    if let Some(capabilities) = &linux.capabilities {
        for (field, list) in [("add", &capabilities.add), ("drop", &capabilities.drop)] {
            for (k, capability) in list.iter().enumerate() {
                if !CAPABILITIES.contains(&capability.as_str()) {
                    return Err(client(format!(
                        "Invalid '{at}.capabilities.{field}[{k}]' value '{capability}'. Accepted values: {}.",
                        CAPABILITIES.join(", ")
                    )));
                }
            }
        }
    }
    for (k, device) in linux.devices.iter().enumerate() {
        if device.host_path.is_empty() {
            return Err(client(format!("{at}.devices[{k}].hostPath is required.")));
        }
    }
    if let Some(size) = linux.shared_memory_size
        && size <= 0
    {
        return Err(client(format!(
            "Invalid '{at}.sharedMemorySize' value {size}: it must be a positive number of MiB."
        )));
    }
    for (k, tmpfs) in linux.tmpfs.iter().enumerate() {
        if tmpfs.container_path.is_empty() || tmpfs.size <= 0 {
            return Err(client(format!(
                "Invalid '{at}.tmpfs[{k}]': containerPath is required and size must be a positive number of MiB."
            )));
        }
    }
    if let Some(swap) = linux.max_swap
        && swap < 0
    {
        return Err(client(format!(
            "Invalid '{at}.maxSwap' value {swap}: it must be 0 or a positive number of MiB."
        )));
    }
    if let Some(swappiness) = linux.swappiness
        && !SWAPPINESS.contains(&swappiness)
    {
        return Err(client(out_of_range(
            &format!("{at}.swappiness"),
            swappiness,
            &SWAPPINESS,
        )));
    }
    Ok(())
}

fn check_links(
    path: &str,
    name: &str,
    links: &[String],
    context: &Context<'_>,
) -> Result<(), ValidationError> {
    if links.is_empty() {
        return Ok(());
    }
    if context.network_mode != NetworkMode::Bridge {
        return Err(client(format!(
            "Invalid '{path}.links': links are only supported when networkMode=bridge, not {}.",
            context.network_mode.as_str()
        )));
    }
    for (j, link) in links.iter().enumerate() {
        let (target, alias) = link.split_once(':').unwrap_or((link, link));
        if target == name || !context.names.contains(&target) || !is_name(alias) {
            return Err(client(format!(
                "Invalid '{path}.links[{j}]' value '{link}': a link is 'name' or 'name:alias', naming another container of this task definition."
            )));
        }
    }
    Ok(())
}

fn normalize_port_mappings(
    path: &str,
    name: &str,
    mappings: &mut [PortMapping],
    network_mode: NetworkMode,
) -> Result<(), ValidationError> {
    if network_mode == NetworkMode::None && !mappings.is_empty() {
        return Err(client(format!(
            "Invalid '{path}.portMappings': port mappings are not allowed when networkMode=none."
        )));
    }
    for (j, mapping) in mappings.iter_mut().enumerate() {
        let at = format!("{path}.portMappings[{j}]");
        if mapping.container_port_range.is_some() {
            return Err(unsupported(&format!("{at}.containerPortRange")));
        }
        let Some(port) = mapping.container_port else {
            return Err(client(format!(
                "Invalid 'containerPort' setting for container '{name}'. {at}.containerPort is required (1 to 65535)."
            )));
        };
        if !PORT.contains(&port) {
            return Err(client(format!(
                "Invalid 'containerPort' setting for container '{name}'. {}",
                out_of_range(&format!("{at}.containerPort"), port, &PORT)
            )));
        }
        if let Some(host) = mapping.host_port
            && !HOST_PORT.contains(&host)
        {
            return Err(client(format!(
                "Invalid 'hostPort' setting for container '{name}'. {}",
                out_of_range(&format!("{at}.hostPort"), host, &HOST_PORT)
            )));
        }
        match network_mode {
            NetworkMode::Host | NetworkMode::Awsvpc => {
                if let Some(host) = mapping.host_port
                    && host != 0
                    && host != port
                {
                    return Err(client(format!(
                        "When networkMode={}, the host ports and container ports in port mappings must match: '{at}.hostPort' is {host} but containerPort is {port}. Leave hostPort out or set it to the containerPort.",
                        network_mode.as_str()
                    )));
                }
                mapping.host_port = Some(port);
            }
            NetworkMode::Bridge | NetworkMode::None => {
                // Absent or 0: a dynamic host port.
                mapping.host_port.get_or_insert(0);
            }
        }
        mapping.protocol.get_or_insert(TransportProtocol::Tcp);
        if let Some(app) = mapping.app_protocol.as_deref()
            && !APP_PROTOCOLS.contains(&app)
        {
            return Err(client(format!(
                "Invalid '{at}.appProtocol' value '{app}'. Accepted values: http, http2, grpc."
            )));
        }
        if let Some(port_name) = mapping.name.as_deref()
            && (port_name.is_empty()
                || port_name.len() > PORT_NAME_MAX
                || port_name.starts_with('-')
                || !port_name.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-'
                }))
        {
            return Err(client(format!(
                "Invalid '{at}.name' value '{port_name}'. Up to {PORT_NAME_MAX} lowercase letters, numbers, underscores, and hyphens are allowed, not starting with a hyphen."
            )));
        }
    }
    Ok(())
}

fn normalize_health_check(path: &str, check: &mut HealthCheck) -> Result<(), ValidationError> {
    let at = format!("{path}.healthCheck");
    match check.command.first().map(String::as_str) {
        Some("CMD" | "CMD-SHELL") if check.command.len() > 1 => {}
        Some("NONE") => {}
        _ => {
            return Err(client(format!(
                "Invalid '{at}.command': it must start with CMD (arguments run directly) or CMD-SHELL (run with the container's shell), followed by the command, or be [\"NONE\"]."
            )));
        }
    }
    for (field, value, (default, range)) in [
        ("interval", &mut check.interval, HEALTH_INTERVAL),
        ("timeout", &mut check.timeout, HEALTH_TIMEOUT),
        ("retries", &mut check.retries, HEALTH_RETRIES),
    ] {
        let value = *value.get_or_insert(default);
        if !range.contains(&value) {
            return Err(client(out_of_range(
                &format!("{at}.{field}"),
                value,
                &range,
            )));
        }
    }
    if let Some(period) = check.start_period
        && !HEALTH_START_PERIOD.contains(&period)
    {
        return Err(client(out_of_range(
            &format!("{at}.startPeriod"),
            period,
            &HEALTH_START_PERIOD,
        )));
    }
    Ok(())
}

/// Rules that relate containers to each other and to the task-level size.
fn check_across_containers(
    containers: &[ContainerDefinition],
    task_cpu: Option<i64>,
    task_memory: Option<i64>,
) -> Result<(), ValidationError> {
    let mut host_ports = BTreeMap::new();
    let mut port_names = BTreeMap::new();
    for (i, c) in containers.iter().enumerate() {
        for (j, mapping) in c.port_mappings.iter().enumerate() {
            let at = format!("containerDefinitions[{i}].portMappings[{j}]");
            let host = mapping.host_port.unwrap_or(0);
            let protocol = mapping.protocol.unwrap_or_default();
            if host > 0
                && let Some(first) = host_ports.insert((host, protocol), at.clone())
            {
                return Err(client(format!(
                    "Invalid '{at}.hostPort': host port {host}/{} is already used by {first}; a host port can be mapped once per protocol in a task definition.",
                    protocol.as_str()
                )));
            }
            if let Some(name) = &mapping.name
                && let Some(first) = port_names.insert(name.as_str(), at.clone())
            {
                return Err(client(format!(
                    "Invalid '{at}.name': port mapping names must be unique within a task definition, and '{name}' is already used by {first}."
                )));
            }
        }
    }
    if !containers.iter().any(ContainerDefinition::is_essential) {
        return Err(client(
            "Invalid 'containerDefinitions': a task definition must have at least one essential container ('essential' defaults to true).",
        ));
    }
    if let Some(cpu) = task_cpu {
        let total: i64 = containers.iter().map(|c| i64::from(c.cpu)).sum();
        if total > cpu {
            return Err(client(format!(
                "Invalid 'cpu' setting for task: the containers' 'cpu' values add up to {total} CPU units, more than the task's {cpu}."
            )));
        }
    }
    if let Some(memory) = task_memory {
        let mut reserved = 0i64;
        for (i, c) in containers.iter().enumerate() {
            for (field, value) in [
                ("memory", c.memory),
                ("memoryReservation", c.memory_reservation),
            ] {
                if let Some(value) = value
                    && i64::from(value) > memory
                {
                    return Err(client(format!(
                        "Invalid setting for container '{}'. 'containerDefinitions[{i}].{field}' ({value} MiB) is more than the task's 'memory' ({memory} MiB).",
                        c.name()
                    )));
                }
            }
            reserved += i64::from(c.memory_reservation.or(c.memory).unwrap_or(0));
        }
        if reserved > memory {
            return Err(client(format!(
                "Invalid 'memory' setting for task: the containers reserve {reserved} MiB in total ('memoryReservation', else 'memory'), more than the task's {memory} MiB."
            )));
        }
    }
    Ok(())
}

fn has_health_check(container: &ContainerDefinition) -> bool {
    container
        .health_check
        .as_ref()
        .is_some_and(|h| h.command.first().map(String::as_str) != Some("NONE"))
}

fn condition_name(condition: ContainerCondition) -> &'static str {
    match condition {
        ContainerCondition::Start => "START",
        ContainerCondition::Complete => "COMPLETE",
        ContainerCondition::Success => "SUCCESS",
        ContainerCondition::Healthy => "HEALTHY",
    }
}

fn check_dependencies(containers: &[ContainerDefinition]) -> Result<(), ValidationError> {
    let index: BTreeMap<&str, usize> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name(), i))
        .collect();
    for (i, container) in containers.iter().enumerate() {
        for (j, dependency) in container.depends_on.iter().enumerate() {
            let at = format!("containerDefinitions[{i}].dependsOn[{j}]");
            let target = dependency.container_name.as_str();
            let Some(&k) = index.get(target) else {
                return Err(client(format!(
                    "Invalid '{at}.containerName' value '{target}': it must name another container of this task definition."
                )));
            };
            if k == i {
                return Err(client(format!(
                    "Invalid '{at}.containerName': container '{target}' cannot depend on itself."
                )));
            }
            let other = &containers[k];
            match dependency.condition {
                ContainerCondition::Complete | ContainerCondition::Success
                    if other.is_essential() =>
                {
                    return Err(client(format!(
                        "Invalid '{at}.condition': the {} condition can't be set on an essential container ('{target}'). Use START or HEALTHY, or make '{target}' non-essential.",
                        condition_name(dependency.condition)
                    )));
                }
                ContainerCondition::Healthy if !has_health_check(other) => {
                    return Err(client(format!(
                        "Invalid '{at}.condition': HEALTHY needs a healthCheck on container '{target}', which has none."
                    )));
                }
                _ => {}
            }
        }
    }
    if let Some(cycle) = find_cycle(containers, &index) {
        let names: Vec<&str> = cycle.iter().map(|&i| containers[i].name()).collect();
        return Err(client(format!(
            "Invalid 'dependsOn': container dependencies form a cycle: {}.",
            names.join(" -> ")
        )));
    }
    Ok(())
}

/// The first dependency cycle, as container indexes from a container back to itself.
fn find_cycle(
    containers: &[ContainerDefinition],
    index: &BTreeMap<&str, usize>,
) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        i: usize,
        containers: &[ContainerDefinition],
        index: &BTreeMap<&str, usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        match marks[i] {
            Mark::Done => return None,
            Mark::OnPath => {
                let start = path.iter().position(|&p| p == i).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(i);
                return Some(cycle);
            }
            Mark::New => {}
        }
        marks[i] = Mark::OnPath;
        path.push(i);
        for dependency in &containers[i].depends_on {
            if let Some(&k) = index.get(dependency.container_name.as_str())
                && let Some(cycle) = visit(k, containers, index, marks, path)
            {
                return Some(cycle);
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; containers.len()];
    (0..containers.len()).find_map(|i| visit(i, containers, index, &mut marks, &mut Vec::new()))
}

/// The task-level reasons a definition cannot run on Fargate.
fn fargate_task_problem(
    network_mode: NetworkMode,
    cpu: Option<i64>,
    memory: Option<i64>,
) -> Option<String> {
    if network_mode != NetworkMode::Awsvpc {
        return Some("Fargate only supports network mode 'awsvpc'.".to_owned());
    }
    let Some(cpu) = cpu else {
        return Some("Fargate requires that 'cpu' be defined at the task level.".to_owned());
    };
    let Some(memory) = memory else {
        return Some("Fargate requires that 'memory' be defined at the task level.".to_owned());
    };
    if !fargate_size_is_valid(cpu, memory) {
        return Some(format!(
            "No Fargate configuration exists for given values: {cpu} CPU, {memory} memory. See the Amazon ECS documentation for the valid values."
        ));
    }
    None
}

/// The first reason a (normalised) definition cannot run on Fargate, if any.
fn fargate_problem(
    spec: &TaskDefinitionSpec,
    cpu: Option<i64>,
    memory: Option<i64>,
) -> Option<String> {
    if let Some(problem) = fargate_task_problem(spec.network_mode, cpu, memory) {
        return Some(problem);
    }
    let refused = |path: String| Some(format!("Fargate does not support '{path}'."));
    if let Some(mode) = spec.pid_mode.as_deref()
        && mode != "task"
    {
        return Some(format!(
            "Fargate only supports pidMode 'task', not '{mode}'."
        ));
    }
    if spec.ipc_mode.is_some() {
        return refused("ipcMode".to_owned());
    }
    for (i, volume) in spec.volumes.iter().enumerate() {
        if volume
            .host
            .as_ref()
            .is_some_and(|h| h.source_path.is_some())
        {
            return refused(format!("volumes[{i}].host.sourcePath"));
        }
        if volume.docker_volume_configuration.is_some() {
            return refused(format!("volumes[{i}].dockerVolumeConfiguration"));
        }
    }
    for (i, c) in spec.container_definitions.iter().enumerate() {
        let path = format!("containerDefinitions[{i}]");
        if c.privileged == Some(true) {
            return refused(format!("{path}.privileged"));
        }
        if !c.docker_security_options.is_empty() {
            return refused(format!("{path}.dockerSecurityOptions"));
        }
        if c.gpu_count() > 0 {
            return refused(format!("{path}.resourceRequirements (GPU)"));
        }
        if c.start_timeout
            .is_some_and(|t| t > FARGATE_START_TIMEOUT_MAX)
        {
            return Some(format!(
                "Fargate accepts '{path}.startTimeout' from {START_TIMEOUT_MIN} to {FARGATE_START_TIMEOUT_MAX} seconds."
            ));
        }
        if let Some(linux) = &c.linux_parameters {
            let at = format!("{path}.linuxParameters");
            if !linux.devices.is_empty() {
                return refused(format!("{at}.devices"));
            }
            if linux.shared_memory_size.is_some() {
                return refused(format!("{at}.sharedMemorySize"));
            }
            if linux.max_swap.is_some() {
                return refused(format!("{at}.maxSwap"));
            }
            if linux.swappiness.is_some() {
                return refused(format!("{at}.swappiness"));
            }
            if let Some(capabilities) = &linux.capabilities
                && capabilities.add.iter().any(|c| c != "SYS_PTRACE")
            {
                return Some(format!(
                    "Fargate only supports adding the SYS_PTRACE capability ('{at}.capabilities.add')."
                ));
            }
        }
        for (j, mapping) in c.port_mappings.iter().enumerate() {
            if let (Some(host), Some(port)) = (mapping.host_port, mapping.container_port)
                && host != 0
                && host != port
            {
                return Some(format!(
                    "Fargate requires '{path}.portMappings[{j}].hostPort' to equal containerPort."
                ));
            }
        }
    }
    None
}

/// Subnets and security groups an `awsvpcConfiguration` may name (ECS's limits).
const SUBNETS_MAX: usize = 16;
const SECURITY_GROUPS_MAX: usize = 5;

/// Checks the `networkConfiguration` of RunTask, StartTask or a service against the task
/// definition's network mode and the launch type; returns the awsvpc configuration of an
/// awsvpc task. Refusals are InvalidParameterException with ECS's messages.
pub fn validate_network_configuration(
    network_mode: NetworkMode,
    fargate: bool,
    configuration: Option<&crate::task::NetworkConfiguration>,
) -> Result<Option<crate::task::AwsVpcConfiguration>, ValidationError> {
    let awsvpc = configuration.and_then(|c| c.awsvpc_configuration.as_ref());
    if network_mode != NetworkMode::Awsvpc {
        if awsvpc.is_some() {
            return Err(invalid_parameter(
                "Network Configuration is not valid for the given networkMode of this task definition.",
            ));
        }
        return Ok(None);
    }
    let Some(awsvpc) = awsvpc else {
        return Err(invalid_parameter(
            "Network Configuration must be provided when networkMode 'awsvpc' is specified.",
        ));
    };
    if awsvpc.subnets.is_empty() {
        return Err(invalid_parameter(
            "subnets can not be empty: 'networkConfiguration.awsvpcConfiguration.subnets' must name 1 to 16 subnets (subnet-...).",
        ));
    }
    if awsvpc.subnets.len() > SUBNETS_MAX {
        return Err(invalid_parameter(format!(
            "At most {SUBNETS_MAX} subnets can be provided in 'networkConfiguration.awsvpcConfiguration.subnets'."
        )));
    }
    if awsvpc.security_groups.len() > SECURITY_GROUPS_MAX {
        return Err(invalid_parameter(format!(
            "At most {SECURITY_GROUPS_MAX} security groups can be provided in 'networkConfiguration.awsvpcConfiguration.securityGroups'."
        )));
    }
    let id_ok = |id: &str, prefix: &str| {
        id.strip_prefix(prefix).is_some_and(|rest| {
            !rest.is_empty() && rest.len() <= 64 && rest.chars().all(|c| c.is_ascii_alphanumeric())
        })
    };
    if let Some(subnet) = awsvpc.subnets.iter().find(|s| !id_ok(s, "subnet-")) {
        return Err(invalid_parameter(format!(
            "Error retrieving subnet information for [{subnet}]: The subnet ID '{subnet}' is malformed (ErrorCode: InvalidSubnetID.Malformed). Subnet ids look like 'subnet-0123abcd'."
        )));
    }
    if let Some(group) = awsvpc.security_groups.iter().find(|g| !id_ok(g, "sg-")) {
        return Err(invalid_parameter(format!(
            "Error retrieving security group information for [{group}]: The security group ID '{group}' is malformed. Security group ids look like 'sg-0123abcd'."
        )));
    }
    match awsvpc.assign_public_ip.as_deref() {
        None | Some("DISABLED") => {}
        Some("ENABLED") if fargate => {}
        Some("ENABLED") => {
            return Err(invalid_parameter(
                "Assign public IP is not supported for this launch type.",
            ));
        }
        Some(other) => {
            return Err(invalid_parameter(format!(
                "Invalid 'networkConfiguration.awsvpcConfiguration.assignPublicIp' value '{other}'; accepted: ENABLED, DISABLED."
            )));
        }
    }
    Ok(Some(awsvpc.clone()))
}

/// Why a task of `task_definition` (with `overrides`) cannot run on Fargate, if it cannot:
/// the definition must be Fargate-compatible (awsvpc, a task size from the Fargate table, no
/// privileged containers, host devices, host-path volumes or host ports other than the
/// container port) and an overridden size must be in the table too.
pub fn fargate_launch_problem(
    task_definition: &TaskDefinition,
    overrides: &TaskOverride,
) -> Option<String> {
    let spec = &task_definition.spec;
    let cpu = spec
        .cpu
        .as_deref()
        .and_then(|c| parse_cpu_units("cpu", c).ok());
    let memory = spec
        .memory
        .as_deref()
        .and_then(|m| parse_memory_mib("memory", m).ok());
    if let Some(problem) = fargate_problem(spec, cpu, memory) {
        return Some(format!(
            "Task definition does not support launch_type FARGATE: {problem}"
        ));
    }
    let cpu = overrides
        .cpu
        .as_deref()
        .and_then(|c| parse_cpu_units("overrides.cpu", c).ok())
        .or(cpu)?;
    let memory = overrides
        .memory
        .as_deref()
        .and_then(|m| parse_memory_mib("overrides.memory", m).ok())
        .or(memory)?;
    (!fargate_size_is_valid(cpu, memory)).then(|| {
        format!(
            "No Fargate configuration exists for given values: {cpu} CPU, {memory} memory. See the Amazon ECS documentation for the valid values."
        )
    })
}

/// Why a service cannot use the FARGATE launch type with this scheduling strategy, if it
/// cannot (for the service scheduler: Fargate has no hosts to run one task on each of).
pub fn fargate_service_problem(scheduling_strategy: &str) -> Option<String> {
    (scheduling_strategy == "DAEMON").then(|| {
        "The DAEMON scheduling strategy is not supported with the FARGATE launch type or Fargate capacity providers.".to_owned()
    })
}

/// Validate RunTask/StartTask overrides against a registered task definition: container
/// override names must exist, cpu/memory overrides parse and are positive and consistent,
/// unsupported override fields (environmentFiles, inferenceAcceleratorOverrides) refused.
pub fn validate_overrides(
    task_definition: &TaskDefinition,
    overrides: &TaskOverride,
) -> Result<(), ValidationError> {
    let as_invalid = |e: ValidationError| invalid_parameter(e.message);
    refuse_unsupported(
        &overrides.inference_accelerator_overrides,
        "overrides.inferenceAcceleratorOverrides",
    )
    .map_err(as_invalid)?;
    let spec = &task_definition.spec;
    let task_cpu = match (&overrides.cpu, &spec.cpu) {
        (Some(cpu), _) => Some(parse_cpu_units("overrides.cpu", cpu).map_err(as_invalid)?),
        (None, Some(cpu)) => parse_cpu_units("cpu", cpu).ok(),
        (None, None) => None,
    };
    let task_memory = match (&overrides.memory, &spec.memory) {
        (Some(memory), _) => {
            Some(parse_memory_mib("overrides.memory", memory).map_err(as_invalid)?)
        }
        (None, Some(memory)) => parse_memory_mib("memory", memory).ok(),
        (None, None) => None,
    };
    let fargate_only = !spec.requires_compatibilities.is_empty()
        && spec
            .requires_compatibilities
            .iter()
            .all(|c| *c == Compatibility::Fargate);
    if overrides.cpu.is_some() || overrides.memory.is_some() {
        if fargate_only {
            if let (Some(cpu), Some(memory)) = (task_cpu, task_memory)
                && !fargate_size_is_valid(cpu, memory)
            {
                return Err(invalid_parameter(format!(
                    "Invalid 'overrides.cpu'/'overrides.memory': no Fargate configuration exists for given values: {cpu} CPU, {memory} memory. See the Amazon ECS documentation for the valid values."
                )));
            }
        } else if let Some(cpu) = task_cpu
            && overrides.cpu.is_some()
            && !EC2_TASK_CPU.contains(&cpu)
        {
            return Err(invalid_parameter(format!(
                "Invalid 'overrides.cpu': {cpu} CPU units. The task CPU must be between {} and {} CPU units.",
                EC2_TASK_CPU.start(),
                EC2_TASK_CPU.end()
            )));
        }
    }
    if let Some(storage) = &overrides.ephemeral_storage
        && !EPHEMERAL_STORAGE_GIB.contains(&storage.size_in_gi_b)
    {
        return Err(invalid_parameter(out_of_range(
            "overrides.ephemeralStorage.sizeInGiB",
            storage.size_in_gi_b,
            &EPHEMERAL_STORAGE_GIB,
        )));
    }
    let mut seen = BTreeSet::new();
    for (i, o) in overrides.container_overrides.iter().enumerate() {
        let at = format!("overrides.containerOverrides[{i}]");
        let Some(name) = o.name.as_deref() else {
            return Err(invalid_parameter(format!(
                "{at}.name is required: a container override must name a container of {}.",
                task_definition.family_revision()
            )));
        };
        let Some(container) = task_definition.container(name) else {
            return Err(invalid_parameter(format!(
                "Override for container named {name} is not a container in the TaskDefinition ({at}.name; {} has {}).",
                task_definition.family_revision(),
                spec.container_definitions
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if !seen.insert(name) {
            return Err(invalid_parameter(format!(
                "Invalid '{at}.name': container '{name}' is overridden more than once."
            )));
        }
        check_container_override(&at, container, o)?;
    }
    // Consistency of the effective sizes with the (possibly overridden) task size.
    let effective: Vec<(&str, i64, Option<i32>, Option<i32>)> = spec
        .container_definitions
        .iter()
        .map(|c| {
            let o = overrides.container(c.name());
            (
                c.name(),
                i64::from(o.and_then(|o| o.cpu).unwrap_or(c.cpu)),
                o.and_then(|o| o.memory).or(c.memory),
                o.and_then(|o| o.memory_reservation)
                    .or(c.memory_reservation),
            )
        })
        .collect();
    if let Some(cpu) = task_cpu {
        let total: i64 = effective.iter().map(|e| e.1).sum();
        if total > cpu {
            return Err(invalid_parameter(format!(
                "Invalid 'overrides': the containers' cpu adds up to {total} CPU units, more than the task's {cpu}."
            )));
        }
    }
    if let Some(memory) = task_memory {
        let mut reserved = 0i64;
        for (name, _, hard, soft) in &effective {
            if let Some(hard) = hard
                && i64::from(*hard) > memory
            {
                return Err(invalid_parameter(format!(
                    "Invalid 'overrides': container '{name}' has a memory limit of {hard} MiB, more than the task's {memory} MiB."
                )));
            }
            reserved += i64::from(soft.or(*hard).unwrap_or(0));
        }
        if reserved > memory {
            return Err(invalid_parameter(format!(
                "Invalid 'overrides': the containers reserve {reserved} MiB in total, more than the task's {memory} MiB."
            )));
        }
    }
    Ok(())
}

fn check_container_override(
    at: &str,
    container: &ContainerDefinition,
    o: &ContainerOverride,
) -> Result<(), ValidationError> {
    let name = container.name();
    refuse_unsupported(&o.environment_files, &format!("{at}.environmentFiles"))
        .map_err(|e| invalid_parameter(e.message))?;
    if let Some(cpu) = o.cpu
        && cpu < 0
    {
        return Err(invalid_parameter(format!(
            "Invalid '{at}.cpu' value {cpu}: it must be 0 or more CPU units."
        )));
    }
    for (field, value) in [
        ("memory", o.memory),
        ("memoryReservation", o.memory_reservation),
    ] {
        if let Some(value) = value
            && value < MEMORY_MIB_MIN
        {
            return Err(invalid_parameter(format!(
                "Invalid '{at}.{field}' value {value}: it must be at least {MEMORY_MIB_MIN} MiB."
            )));
        }
    }
    let hard = o.memory.or(container.memory);
    let soft = o.memory_reservation.or(container.memory_reservation);
    if let (Some(hard), Some(soft)) = (hard, soft)
        && soft > hard
    {
        return Err(invalid_parameter(format!(
            "Invalid '{at}': container '{name}' would have memoryReservation {soft} MiB above its memory limit of {hard} MiB; memoryReservation must be less than or equal to memory."
        )));
    }
    check_resource_requirements(at, &o.resource_requirements, true)
}

fn gpus(requirements: &[ResourceRequirement]) -> u32 {
    requirements
        .iter()
        .filter(|r| r.kind == "GPU")
        .filter_map(|r| r.value.trim().parse::<u32>().ok())
        .sum()
}

/// The resources a task of this definition (with overrides) reserves on a host: cpu =
/// task-level cpu if set else sum of container cpu; memory = task-level memory if set, else
/// sum over containers of (memory hard limit, else memoryReservation); tcp/udp host ports =
/// fixed hostPorts (non-zero) of all containers in bridge/host mode (awsvpc: none on the
/// host); gpus = sum of GPU resourceRequirements. Container overrides
/// (cpu/memory/memoryReservation/resourceRequirements) and task overrides apply first.
pub fn task_demand(task_definition: &TaskDefinition, overrides: &TaskOverride) -> Demand {
    let spec = &task_definition.spec;
    let mut demand = Demand::default();
    let mut cpu_sum = 0i64;
    let mut memory_sum = 0i64;
    let ports_on_host = matches!(spec.network_mode, NetworkMode::Bridge | NetworkMode::Host);
    for container in &spec.container_definitions {
        let o = overrides.container(container.name());
        cpu_sum += i64::from(o.and_then(|o| o.cpu).unwrap_or(container.cpu).max(0));
        let hard = o.and_then(|o| o.memory).or(container.memory);
        let soft = o
            .and_then(|o| o.memory_reservation)
            .or(container.memory_reservation);
        memory_sum += i64::from(hard.or(soft).unwrap_or(0).max(0));
        demand.gpus += match o {
            Some(o) if !o.resource_requirements.is_empty() => gpus(&o.resource_requirements),
            _ => gpus(&container.resource_requirements),
        };
        if ports_on_host {
            for mapping in &container.port_mappings {
                let Some(port) = mapping
                    .host_port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                else {
                    continue;
                };
                match mapping.protocol.unwrap_or_default() {
                    TransportProtocol::Tcp => demand.ports_tcp.insert(port),
                    TransportProtocol::Udp => demand.ports_udp.insert(port),
                };
            }
        }
    }
    let task_cpu = overrides
        .cpu
        .as_deref()
        .and_then(|v| parse_cpu_units("overrides.cpu", v).ok())
        .or_else(|| {
            spec.cpu
                .as_deref()
                .and_then(|v| parse_cpu_units("cpu", v).ok())
        });
    let task_memory = overrides
        .memory
        .as_deref()
        .and_then(|v| parse_memory_mib("overrides.memory", v).ok())
        .or_else(|| {
            spec.memory
                .as_deref()
                .and_then(|v| parse_memory_mib("memory", v).ok())
        });
    demand.cpu = task_cpu.unwrap_or(cpu_sum);
    demand.memory_mib = task_memory.unwrap_or(memory_sum);
    demand
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// A property of an accepted definition's normalised form.
    type Property = fn(&NormalizedTaskDefinition);

    enum Expect {
        /// Accepted; the property holds of the normalised output.
        Valid(Property),
        /// Refused with a ClientException whose message contains this.
        Invalid(&'static str),
    }
    use Expect::{Invalid, Valid};

    const OK: Expect = Valid(|_| {});

    fn normalize_json(json: &Value) -> Result<NormalizedTaskDefinition, ValidationError> {
        let input: TaskDefinitionInput =
            serde_json::from_value(json.clone()).expect("a RegisterTaskDefinition request shape");
        normalize_task_definition(input)
    }

    /// Registers the normalised spec again, as a client echoing DescribeTaskDefinition would.
    fn renormalize(
        family: &str,
        spec: &TaskDefinitionSpec,
    ) -> Result<NormalizedTaskDefinition, ValidationError> {
        let mut json = serde_json::to_value(spec).unwrap();
        json["family"] = json!(family);
        normalize_json(&json)
    }

    /// The one table helper: registers `json` and checks the expectation. Accepted
    /// definitions must also normalise to themselves.
    fn check(label: &str, json: Value, expected: Expect) {
        match (normalize_json(&json), expected) {
            (Ok(normalized), Valid(property)) => {
                property(&normalized);
                let family = json["family"].as_str().unwrap_or_default();
                let again = renormalize(family, &normalized.spec)
                    .unwrap_or_else(|e| panic!("{label}: normalised output refused: {e}"));
                assert_eq!(
                    again, normalized,
                    "{label}: normalisation is not idempotent"
                );
            }
            (Err(error), Invalid(fragment)) => {
                assert_eq!(error.kind, ErrorKind::ClientException, "{label}");
                assert!(
                    error.message.contains(fragment),
                    "{label}: message {:?} lacks {fragment:?}",
                    error.message
                );
            }
            (Ok(_), Invalid(fragment)) => {
                panic!("{label}: accepted; expected a refusal mentioning {fragment:?}")
            }
            (Err(error), Valid(_)) => panic!("{label}: refused: {error}"),
        }
    }

    /// `base` with `extra`'s keys set (a `null` removes the key).
    fn with(mut base: Value, extra: Value) -> Value {
        let object = base.as_object_mut().unwrap();
        for (key, value) in extra.as_object().unwrap() {
            if value.is_null() {
                object.remove(key);
            } else {
                object.insert(key.clone(), value.clone());
            }
        }
        base
    }

    /// A container named `app` with 128 MiB, plus `extra`.
    fn app(extra: Value) -> Value {
        with(
            json!({"name": "app", "image": "busybox", "memory": 128}),
            extra,
        )
    }

    /// An EC2 (bridge) definition of family `f`.
    fn td(containers: Vec<Value>) -> Value {
        json!({"family": "f", "containerDefinitions": containers})
    }

    /// A bridge definition with task-level fields `extra`.
    fn td_with(extra: Value, containers: Vec<Value>) -> Value {
        with(td(containers), extra)
    }

    /// A definition that requires FARGATE: awsvpc, 256 CPU / 512 MiB, plus `extra`.
    fn fargate(extra: Value, containers: Vec<Value>) -> Value {
        with(
            json!({
                "family": "f",
                "requiresCompatibilities": ["FARGATE"],
                "networkMode": "awsvpc",
                "cpu": "256",
                "memory": "512",
                "containerDefinitions": containers,
            }),
            extra,
        )
    }

    fn c0(n: &NormalizedTaskDefinition) -> &ContainerDefinition {
        &n.spec.container_definitions[0]
    }

    fn port0(n: &NormalizedTaskDefinition) -> &PortMapping {
        &c0(n).port_mappings[0]
    }

    fn fargate_sized(cpu: &str, memory: &str) -> Value {
        fargate(json!({"cpu": cpu, "memory": memory}), vec![app(json!({}))])
    }

    fn family_rows() -> Vec<(&'static str, Value, Expect)> {
        vec![
            ("minimal definition", td(vec![app(json!({}))]), OK),
            (
                "family with a space",
                with(td(vec![app(json!({}))]), json!({"family": "bad name"})),
                Invalid("Invalid 'family' value 'bad name'"),
            ),
            (
                "empty family",
                with(td(vec![app(json!({}))]), json!({"family": ""})),
                Invalid("'family'"),
            ),
            (
                "family of 255",
                with(td(vec![app(json!({}))]), json!({"family": "a".repeat(255)})),
                OK,
            ),
            (
                "family of 256",
                with(td(vec![app(json!({}))]), json!({"family": "a".repeat(256)})),
                Invalid("Up to 255 letters"),
            ),
            (
                "no containers",
                td(vec![]),
                Invalid("1 to 10 containers, not 0"),
            ),
            (
                "ten containers",
                td((0..10)
                    .map(|i| app(json!({"name": format!("c{i}")})))
                    .collect()),
                OK,
            ),
            (
                "eleven containers",
                td((0..11)
                    .map(|i| app(json!({"name": format!("c{i}")})))
                    .collect()),
                Invalid("1 to 10 containers, not 11"),
            ),
            (
                "container without name",
                td(vec![app(json!({"name": null}))]),
                Invalid("containerDefinitions[0].name is required"),
            ),
            (
                "container name with a dot",
                td(vec![app(json!({"name": "a.b"}))]),
                Invalid("'containerDefinitions[0].name' value 'a.b'"),
            ),
            (
                "duplicate container names",
                td(vec![app(json!({})), app(json!({}))]),
                Invalid("'containerDefinitions[1].name': container names must be unique"),
            ),
            (
                "image missing",
                td(vec![app(json!({"image": null}))]),
                Invalid("containerDefinitions[0].image is required"),
            ),
            (
                "image empty",
                td(vec![app(json!({"image": ""}))]),
                Invalid("'containerDefinitions[0].image'"),
            ),
            (
                "image with a space",
                td(vec![app(json!({"image": "busy box"}))]),
                Invalid("'containerDefinitions[0].image' value 'busy box'"),
            ),
            (
                "image of 256 characters",
                td(vec![app(json!({"image": "a".repeat(256)}))]),
                Invalid("Up to 255 letters"),
            ),
            (
                "image with registry, port, tag",
                td(vec![app(
                    json!({"image": "registry.example.com:5000/team/app_1:v1.2-rc#3"}),
                )]),
                OK,
            ),
            (
                "image with digest",
                td(vec![app(
                    json!({"image": format!("nginx@sha256:{}", "ab".repeat(32))}),
                )]),
                OK,
            ),
            (
                "image with a short digest",
                td(vec![app(json!({"image": "nginx@sha256:abc"}))]),
                Invalid("@sha256:"),
            ),
        ]
    }

    fn essential_and_size_rows() -> Vec<(&'static str, Value, Expect)> {
        vec![
            (
                "essential defaults to true",
                td(vec![app(json!({}))]),
                Valid(|n| assert_eq!(c0(n).essential, Some(true))),
            ),
            (
                "explicit non-essential kept",
                td(vec![
                    app(json!({"name": "main"})),
                    app(json!({"name": "side", "essential": false})),
                ]),
                Valid(|n| assert_eq!(n.spec.container_definitions[1].essential, Some(false))),
            ),
            (
                "no essential container",
                td(vec![app(json!({"essential": false}))]),
                Invalid("at least one essential container"),
            ),
            (
                "EC2 container without memory",
                td(vec![app(json!({"memory": null}))]),
                Invalid(
                    "Invalid setting for container 'app'. At least one of 'memory' or 'memoryReservation' must be specified.",
                ),
            ),
            (
                "memoryReservation alone",
                td(vec![app(json!({"memory": null, "memoryReservation": 64}))]),
                OK,
            ),
            (
                "task memory instead of container memory",
                td_with(json!({"memory": "512"}), vec![app(json!({"memory": null}))]),
                OK,
            ),
            (
                "memory below 6 MiB",
                td(vec![app(json!({"memory": 5}))]),
                Invalid("'containerDefinitions[0].memory' must be at least 6 MiB"),
            ),
            (
                "memory of exactly 6 MiB",
                td(vec![app(json!({"memory": 6}))]),
                OK,
            ),
            (
                "memoryReservation below 6 MiB",
                td(vec![app(json!({"memoryReservation": 4}))]),
                Invalid("'containerDefinitions[0].memoryReservation' must be at least 6"),
            ),
            (
                "memoryReservation above memory",
                td(vec![app(json!({"memoryReservation": 256}))]),
                Invalid("must be less than or equal to 'memory'"),
            ),
            (
                "memoryReservation equal to memory",
                td(vec![app(json!({"memoryReservation": 128}))]),
                OK,
            ),
            (
                "negative container cpu",
                td(vec![app(json!({"cpu": -1}))]),
                Invalid("'containerDefinitions[0].cpu' must be 0 or more"),
            ),
            (
                "task cpu below 128",
                td_with(json!({"cpu": "64"}), vec![app(json!({}))]),
                Invalid("between 128 and 196608"),
            ),
            (
                "task cpu of 128",
                td_with(json!({"cpu": "128"}), vec![app(json!({}))]),
                OK,
            ),
            (
                "task cpu of 196608",
                td_with(json!({"cpu": "196608"}), vec![app(json!({}))]),
                OK,
            ),
            (
                "task cpu above 196608",
                td_with(json!({"cpu": "196609"}), vec![app(json!({}))]),
                Invalid("between 128 and 196608"),
            ),
            (
                "task cpu that is not a number",
                td_with(json!({"cpu": "lots"}), vec![app(json!({}))]),
                Invalid("Invalid 'cpu' value 'lots'"),
            ),
            (
                "task memory that is not a number",
                td_with(json!({"memory": "1 TB"}), vec![app(json!({}))]),
                Invalid("Invalid 'memory' value '1 TB'"),
            ),
            (
                "task cpu and memory in vCPU and GB are normalised",
                td_with(
                    json!({"cpu": "1 vCPU", "memory": "1GB"}),
                    vec![app(json!({}))],
                ),
                Valid(|n| {
                    assert_eq!(n.spec.cpu.as_deref(), Some("1024"));
                    assert_eq!(n.spec.memory.as_deref(), Some("1024"));
                }),
            ),
            (
                "container cpu above the task's",
                td_with(
                    json!({"cpu": "256"}),
                    vec![
                        app(json!({"name": "a", "cpu": 200})),
                        app(json!({"name": "b", "cpu": 100})),
                    ],
                ),
                Invalid("add up to 300 CPU units, more than the task's 256"),
            ),
            (
                "container cpu equal to the task's",
                td_with(json!({"cpu": "256"}), vec![app(json!({"cpu": 256}))]),
                OK,
            ),
            (
                "container memory above the task's",
                td_with(json!({"memory": "512"}), vec![app(json!({"memory": 1024}))]),
                Invalid("'containerDefinitions[0].memory' (1024 MiB) is more than the task's"),
            ),
            (
                "container reservations above the task's memory",
                td_with(
                    json!({"memory": "512"}),
                    vec![
                        app(json!({"name": "a", "memory": 300})),
                        app(json!({"name": "b", "memory": 300})),
                    ],
                ),
                Invalid("reserve 600 MiB in total"),
            ),
        ]
    }

    fn fargate_rows() -> Vec<(&'static str, Value, Expect)> {
        vec![
            (
                "Fargate definition",
                fargate(json!({}), vec![app(json!({"memory": null}))]),
                Valid(|n| {
                    assert_eq!(
                        n.compatibilities,
                        [
                            Compatibility::Ec2,
                            Compatibility::Fargate,
                            Compatibility::External
                        ]
                    )
                }),
            ),
            (
                "Fargate in bridge mode",
                fargate(json!({"networkMode": null}), vec![app(json!({}))]),
                Invalid("Fargate only supports network mode 'awsvpc'."),
            ),
            (
                "Fargate without task cpu",
                fargate(json!({"cpu": null}), vec![app(json!({}))]),
                Invalid("Fargate requires that 'cpu' be defined at the task level."),
            ),
            (
                "Fargate without task memory",
                fargate(json!({"memory": null}), vec![app(json!({"memory": null}))]),
                Invalid("Fargate requires that 'memory' be defined at the task level."),
            ),
            ("Fargate 256/512", fargate_sized("256", "512"), OK),
            (
                "Fargate 256/4096",
                fargate_sized("256", "4096"),
                Invalid(
                    "No Fargate configuration exists for given values: 256 CPU, 4096 memory. See the Amazon ECS documentation for the valid values.",
                ),
            ),
            ("Fargate 2048/16384", fargate_sized("2048", "16384"), OK),
            ("Fargate 8192/16384", fargate_sized("8 vCPU", "16 GB"), OK),
            (
                "Fargate 8192/17408",
                fargate_sized("8192", "17408"),
                Invalid("No Fargate configuration exists for given values: 8192 CPU, 17408 memory"),
            ),
            ("Fargate 16384/122880", fargate_sized("16384", "122880"), OK),
            (
                "Fargate .25 vCPU / 0.5GB",
                fargate_sized(".25 vCPU", "0.5GB"),
                OK,
            ),
            (
                "Fargate privileged",
                fargate(json!({}), vec![app(json!({"privileged": true}))]),
                Invalid("Fargate does not support 'containerDefinitions[0].privileged'"),
            ),
            (
                "Fargate devices",
                fargate(
                    json!({}),
                    vec![app(
                        json!({"linuxParameters": {"devices": [{"hostPath": "/dev/fuse"}]}}),
                    )],
                ),
                Invalid("'containerDefinitions[0].linuxParameters.devices'"),
            ),
            (
                "Fargate host volume with sourcePath",
                fargate(
                    json!({"volumes": [{"name": "v", "host": {"sourcePath": "/data"}}]}),
                    vec![app(json!({}))],
                ),
                Invalid("Fargate does not support 'volumes[0].host.sourcePath'"),
            ),
            (
                "Fargate host volume without sourcePath",
                fargate(
                    json!({"volumes": [{"name": "v", "host": {}}]}),
                    vec![app(
                        json!({"mountPoints": [{"sourceVolume": "v", "containerPath": "/d"}]}),
                    )],
                ),
                OK,
            ),
            (
                "Fargate Docker volume",
                fargate(
                    json!({"volumes": [{"name": "v", "dockerVolumeConfiguration": {"scope": "task"}}]}),
                    vec![app(json!({}))],
                ),
                Invalid("'volumes[0].dockerVolumeConfiguration'"),
            ),
            (
                "Fargate hostPort different from containerPort",
                fargate(
                    json!({}),
                    vec![app(
                        json!({"portMappings": [{"containerPort": 80, "hostPort": 8080}]}),
                    )],
                ),
                Invalid("host ports and container ports in port mappings must match"),
            ),
            (
                "Fargate pidMode host",
                fargate(json!({"pidMode": "host"}), vec![app(json!({}))]),
                Invalid("Fargate only supports pidMode 'task'"),
            ),
            (
                "Fargate pidMode task",
                fargate(json!({"pidMode": "task"}), vec![app(json!({}))]),
                OK,
            ),
            (
                "Fargate ipcMode",
                fargate(json!({"ipcMode": "task"}), vec![app(json!({}))]),
                Invalid("Fargate does not support 'ipcMode'"),
            ),
            (
                "Fargate GPU",
                fargate(
                    json!({}),
                    vec![app(
                        json!({"resourceRequirements": [{"type": "GPU", "value": "1"}]}),
                    )],
                ),
                Invalid("'containerDefinitions[0].resourceRequirements (GPU)'"),
            ),
            (
                "Fargate capability other than SYS_PTRACE",
                fargate(
                    json!({}),
                    vec![app(
                        json!({"linuxParameters": {"capabilities": {"add": ["NET_ADMIN"]}}}),
                    )],
                ),
                Invalid("SYS_PTRACE"),
            ),
            (
                "awsvpc EC2 definition that fits Fargate is compatible with it",
                td_with(
                    json!({"networkMode": "awsvpc", "cpu": "512", "memory": "1024"}),
                    vec![app(json!({}))],
                ),
                Valid(|n| assert!(n.compatibilities.contains(&Compatibility::Fargate))),
            ),
            (
                "bridge definition is not Fargate-compatible",
                td(vec![app(json!({}))]),
                Valid(|n| {
                    assert_eq!(
                        n.compatibilities,
                        [Compatibility::Ec2, Compatibility::External]
                    )
                }),
            ),
            (
                "awsvpc with privileged container is not Fargate-compatible",
                td_with(
                    json!({"networkMode": "awsvpc", "cpu": "512", "memory": "1024"}),
                    vec![app(json!({"privileged": true}))],
                ),
                Valid(|n| assert!(!n.compatibilities.contains(&Compatibility::Fargate))),
            ),
            (
                "MANAGED_INSTANCES requested",
                td_with(
                    json!({"requiresCompatibilities": ["MANAGED_INSTANCES", "EC2"]}),
                    vec![app(json!({}))],
                ),
                Valid(|n| {
                    assert_eq!(
                        n.compatibilities,
                        [
                            Compatibility::Ec2,
                            Compatibility::External,
                            Compatibility::ManagedInstances
                        ]
                    );
                    assert_eq!(
                        n.spec.requires_compatibilities,
                        [Compatibility::ManagedInstances, Compatibility::Ec2]
                    );
                }),
            ),
        ]
    }

    fn port_rows() -> Vec<(&'static str, Value, Expect)> {
        let ports = |mappings: Value| app(json!({"portMappings": mappings}));
        vec![
            (
                "bridge: missing hostPort is dynamic (0), protocol tcp",
                td(vec![ports(json!([{"containerPort": 80}]))]),
                Valid(|n| {
                    assert_eq!(port0(n).host_port, Some(0));
                    assert_eq!(port0(n).protocol, Some(TransportProtocol::Tcp));
                }),
            ),
            (
                "bridge: fixed hostPort kept",
                td(vec![ports(
                    json!([{"containerPort": 80, "hostPort": 8080, "protocol": "udp"}]),
                )]),
                Valid(|n| {
                    assert_eq!(port0(n).host_port, Some(8080));
                    assert_eq!(port0(n).protocol, Some(TransportProtocol::Udp));
                }),
            ),
            (
                "containerPort 0",
                td(vec![ports(json!([{"containerPort": 0}]))]),
                Invalid("'containerDefinitions[0].portMappings[0].containerPort' value 0"),
            ),
            (
                "containerPort 65536",
                td(vec![ports(json!([{"containerPort": 65536}]))]),
                Invalid("between 1 and 65535"),
            ),
            (
                "containerPort 65535",
                td(vec![ports(json!([{"containerPort": 65535}]))]),
                OK,
            ),
            (
                "containerPort missing",
                td(vec![ports(json!([{"hostPort": 80}]))]),
                Invalid("containerDefinitions[0].portMappings[0].containerPort is required"),
            ),
            (
                "containerPortRange",
                td(vec![ports(json!([{"containerPortRange": "8000-8010"}]))]),
                Invalid(
                    "Flotilla does not support 'containerDefinitions[0].portMappings[0].containerPortRange' yet.",
                ),
            ),
            (
                "negative hostPort",
                td(vec![ports(json!([{"containerPort": 80, "hostPort": -1}]))]),
                Invalid("'containerDefinitions[0].portMappings[0].hostPort' value -1"),
            ),
            (
                "hostPort 65536",
                td(vec![ports(
                    json!([{"containerPort": 80, "hostPort": 65536}]),
                )]),
                Invalid("between 0 and 65535"),
            ),
            (
                "host mode: hostPort differs",
                td_with(
                    json!({"networkMode": "host"}),
                    vec![ports(json!([{"containerPort": 80, "hostPort": 81}]))],
                ),
                Invalid(
                    "When networkMode=host, the host ports and container ports in port mappings must match: 'containerDefinitions[0].portMappings[0].hostPort'",
                ),
            ),
            (
                "host mode: missing hostPort becomes containerPort",
                td_with(
                    json!({"networkMode": "host"}),
                    vec![ports(json!([{"containerPort": 80}]))],
                ),
                Valid(|n| assert_eq!(port0(n).host_port, Some(80))),
            ),
            (
                "awsvpc: hostPort 0 becomes containerPort",
                td_with(
                    json!({"networkMode": "awsvpc"}),
                    vec![ports(json!([{"containerPort": 80, "hostPort": 0}]))],
                ),
                Valid(|n| assert_eq!(port0(n).host_port, Some(80))),
            ),
            (
                "awsvpc: hostPort differs",
                td_with(
                    json!({"networkMode": "awsvpc"}),
                    vec![ports(json!([{"containerPort": 80, "hostPort": 8080}]))],
                ),
                Invalid("When networkMode=awsvpc"),
            ),
            (
                "same fixed host port twice across containers",
                td(vec![
                    app(
                        json!({"name": "a", "portMappings": [{"containerPort": 80, "hostPort": 8080}]}),
                    ),
                    app(
                        json!({"name": "b", "portMappings": [{"containerPort": 81, "hostPort": 8080}]}),
                    ),
                ]),
                Invalid(
                    "'containerDefinitions[1].portMappings[0].hostPort': host port 8080/tcp is already used by containerDefinitions[0].portMappings[0]",
                ),
            ),
            (
                "same fixed host port, different protocols",
                td(vec![ports(json!([
                    {"containerPort": 53, "hostPort": 53, "protocol": "tcp"},
                    {"containerPort": 53, "hostPort": 53, "protocol": "udp"}
                ]))]),
                OK,
            ),
            (
                "several dynamic host ports",
                td(vec![ports(json!([
                    {"containerPort": 80}, {"containerPort": 81, "hostPort": 0}
                ]))]),
                OK,
            ),
            (
                "host mode: two containers on one port",
                td_with(
                    json!({"networkMode": "host"}),
                    vec![
                        app(json!({"name": "a", "portMappings": [{"containerPort": 80}]})),
                        app(json!({"name": "b", "portMappings": [{"containerPort": 80}]})),
                    ],
                ),
                Invalid("host port 80/tcp is already used"),
            ),
            (
                "appProtocol http2",
                td(vec![ports(
                    json!([{"containerPort": 80, "appProtocol": "http2"}]),
                )]),
                OK,
            ),
            (
                "appProtocol ftp",
                td(vec![ports(
                    json!([{"containerPort": 80, "appProtocol": "ftp"}]),
                )]),
                Invalid(
                    "'containerDefinitions[0].portMappings[0].appProtocol' value 'ftp'. Accepted values: http, http2, grpc.",
                ),
            ),
            (
                "port mapping names unique across containers",
                td(vec![
                    app(
                        json!({"name": "a", "portMappings": [{"containerPort": 80, "name": "web"}]}),
                    ),
                    app(
                        json!({"name": "b", "portMappings": [{"containerPort": 81, "name": "web"}]}),
                    ),
                ]),
                Invalid("'containerDefinitions[1].portMappings[0].name'"),
            ),
            (
                "port mapping name with capitals",
                td(vec![ports(json!([{"containerPort": 80, "name": "Web"}]))]),
                Invalid("lowercase letters"),
            ),
            (
                "none mode with port mappings",
                td_with(
                    json!({"networkMode": "none"}),
                    vec![ports(json!([{"containerPort": 80}]))],
                ),
                Invalid("not allowed when networkMode=none"),
            ),
            (
                "networkMode defaults to bridge",
                td(vec![app(json!({}))]),
                Valid(|n| assert_eq!(n.spec.network_mode, NetworkMode::Bridge)),
            ),
        ]
    }

    fn link_and_health_rows() -> Vec<(&'static str, Value, Expect)> {
        let health = |check: Value| app(json!({"healthCheck": check}));
        vec![
            (
                "link with alias",
                td(vec![
                    app(json!({"name": "web", "links": ["db:database"]})),
                    app(json!({"name": "db"})),
                ]),
                OK,
            ),
            (
                "link to an unknown container",
                td(vec![app(json!({"links": ["ghost"]}))]),
                Invalid("'containerDefinitions[0].links[0]' value 'ghost'"),
            ),
            (
                "link to itself",
                td(vec![app(json!({"links": ["app"]}))]),
                Invalid("naming another container"),
            ),
            (
                "links in awsvpc mode",
                td_with(
                    json!({"networkMode": "awsvpc"}),
                    vec![
                        app(json!({"name": "web", "links": ["db"]})),
                        app(json!({"name": "db"})),
                    ],
                ),
                Invalid("links are only supported when networkMode=bridge"),
            ),
            (
                "health check defaults",
                td(vec![health(
                    json!({"command": ["CMD-SHELL", "curl -f localhost"]}),
                )]),
                Valid(|n| {
                    let check = c0(n).health_check.as_ref().unwrap();
                    assert_eq!(
                        (
                            check.interval,
                            check.timeout,
                            check.retries,
                            check.start_period
                        ),
                        (Some(30), Some(5), Some(3), None)
                    );
                }),
            ),
            (
                "health check values kept",
                td(vec![health(json!({
                    "command": ["CMD", "true"], "interval": 5, "timeout": 60, "retries": 10, "startPeriod": 0
                }))]),
                Valid(|n| {
                    let check = c0(n).health_check.as_ref().unwrap();
                    assert_eq!(
                        (
                            check.interval,
                            check.timeout,
                            check.retries,
                            check.start_period
                        ),
                        (Some(5), Some(60), Some(10), Some(0))
                    );
                }),
            ),
            (
                "health check NONE",
                td(vec![health(json!({"command": ["NONE"]}))]),
                OK,
            ),
            (
                "health check without CMD",
                td(vec![health(json!({"command": ["ls"]}))]),
                Invalid("'containerDefinitions[0].healthCheck.command': it must start with CMD"),
            ),
            (
                "health check with an empty command",
                td(vec![health(json!({"command": []}))]),
                Invalid("healthCheck.command"),
            ),
            (
                "health check of CMD alone",
                td(vec![health(json!({"command": ["CMD"]}))]),
                Invalid("followed by the command"),
            ),
            (
                "health check interval 4",
                td(vec![health(
                    json!({"command": ["CMD", "true"], "interval": 4}),
                )]),
                Invalid(
                    "'containerDefinitions[0].healthCheck.interval' value 4: it must be between 5 and 300",
                ),
            ),
            (
                "health check interval 301",
                td(vec![health(
                    json!({"command": ["CMD", "true"], "interval": 301}),
                )]),
                Invalid("healthCheck.interval"),
            ),
            (
                "health check timeout 1",
                td(vec![health(
                    json!({"command": ["CMD", "true"], "timeout": 1}),
                )]),
                Invalid("healthCheck.timeout' value 1: it must be between 2 and 60"),
            ),
            (
                "health check retries 11",
                td(vec![health(
                    json!({"command": ["CMD", "true"], "retries": 11}),
                )]),
                Invalid("healthCheck.retries' value 11: it must be between 1 and 10"),
            ),
            (
                "health check startPeriod 301",
                td(vec![health(
                    json!({"command": ["CMD", "true"], "startPeriod": 301}),
                )]),
                Invalid("healthCheck.startPeriod' value 301: it must be between 0 and 300"),
            ),
        ]
    }

    fn dependency_rows() -> Vec<(&'static str, Value, Expect)> {
        let dep = |name: &str, on: &str, condition: &str| {
            app(json!({"name": name, "dependsOn": [{"containerName": on, "condition": condition}]}))
        };
        vec![
            (
                "START dependency",
                td(vec![dep("a", "b", "START"), app(json!({"name": "b"}))]),
                OK,
            ),
            (
                "dependency on an unknown container",
                td(vec![dep("a", "ghost", "START")]),
                Invalid(
                    "'containerDefinitions[0].dependsOn[0].containerName' value 'ghost': it must name another container",
                ),
            ),
            (
                "dependency on itself",
                td(vec![dep("a", "a", "START")]),
                Invalid("container 'a' cannot depend on itself"),
            ),
            (
                "dependency cycle",
                td(vec![
                    dep("a", "b", "START"),
                    dep("b", "c", "START"),
                    dep("c", "a", "START"),
                ]),
                Invalid("container dependencies form a cycle: a -> b -> c -> a."),
            ),
            (
                "COMPLETE on an essential container",
                td(vec![dep("a", "b", "COMPLETE"), app(json!({"name": "b"}))]),
                Invalid(
                    "'containerDefinitions[0].dependsOn[0].condition': the COMPLETE condition can't be set on an essential container ('b')",
                ),
            ),
            (
                "SUCCESS on an essential container",
                td(vec![dep("a", "b", "SUCCESS"), app(json!({"name": "b"}))]),
                Invalid("the SUCCESS condition can't be set on an essential container"),
            ),
            (
                "SUCCESS on a non-essential container",
                td(vec![
                    dep("a", "init", "SUCCESS"),
                    app(json!({"name": "init", "essential": false})),
                ]),
                OK,
            ),
            (
                "HEALTHY on a container without a health check",
                td(vec![dep("a", "b", "HEALTHY"), app(json!({"name": "b"}))]),
                Invalid("HEALTHY needs a healthCheck on container 'b'"),
            ),
            (
                "HEALTHY on a container with a health check",
                td(vec![
                    dep("a", "b", "HEALTHY"),
                    app(json!({"name": "b", "healthCheck": {"command": ["CMD", "true"]}})),
                ]),
                OK,
            ),
        ]
    }

    fn volume_rows() -> Vec<(&'static str, Value, Expect)> {
        let volumes = |volumes: Value, container: Value| {
            td_with(json!({"volumes": volumes}), vec![app(container)])
        };
        let mount = json!({"mountPoints": [{"sourceVolume": "v", "containerPath": "/data"}]});
        vec![
            (
                "bind mount",
                volumes(
                    json!([{"name": "v", "host": {"sourcePath": "/srv"}}]),
                    mount.clone(),
                ),
                OK,
            ),
            (
                "duplicate volume names",
                volumes(json!([{"name": "v"}, {"name": "v"}]), json!({})),
                Invalid("'volumes[1].name': volume names must be unique"),
            ),
            (
                "volume without a name",
                volumes(json!([{"host": {}}]), json!({})),
                Invalid("volumes[0].name is required"),
            ),
            (
                "volume name of 256",
                volumes(json!([{"name": "v".repeat(256)}]), json!({})),
                Invalid("'volumes[0].name'"),
            ),
            (
                "host and docker volume together",
                volumes(
                    json!([{"name": "v", "host": {}, "dockerVolumeConfiguration": {}}]),
                    json!({}),
                ),
                Invalid("'volumes[0]': give at most one of 'host' and 'dockerVolumeConfiguration'"),
            ),
            (
                "docker volume scope bogus",
                volumes(
                    json!([{"name": "v", "dockerVolumeConfiguration": {"scope": "global"}}]),
                    json!({}),
                ),
                Invalid("'volumes[0].dockerVolumeConfiguration.scope' value 'global'"),
            ),
            (
                "autoprovision with task scope",
                volumes(
                    json!([{"name": "v", "dockerVolumeConfiguration": {"autoprovision": true}}]),
                    json!({}),
                ),
                Invalid("'volumes[0].dockerVolumeConfiguration.autoprovision'"),
            ),
            (
                "autoprovision with shared scope",
                volumes(
                    json!([{"name": "v", "dockerVolumeConfiguration": {"scope": "shared", "autoprovision": true, "driver": "local"}}]),
                    mount.clone(),
                ),
                OK,
            ),
            (
                "mount of an unknown volume",
                volumes(json!([]), mount.clone()),
                Invalid("'containerDefinitions[0].mountPoints[0].sourceVolume' value 'v'"),
            ),
            (
                "mount without containerPath",
                volumes(
                    json!([{"name": "v"}]),
                    json!({"mountPoints": [{"sourceVolume": "v"}]}),
                ),
                Invalid("containerDefinitions[0].mountPoints[0].containerPath is required"),
            ),
            (
                "volumesFrom another container",
                td(vec![
                    app(json!({"name": "a", "volumesFrom": [{"sourceContainer": "b"}]})),
                    app(json!({"name": "b"})),
                ]),
                OK,
            ),
            (
                "volumesFrom an unknown container",
                td(vec![app(
                    json!({"volumesFrom": [{"sourceContainer": "ghost"}]}),
                )]),
                Invalid("'containerDefinitions[0].volumesFrom[0].sourceContainer' value 'ghost'"),
            ),
            (
                "volumesFrom itself",
                td(vec![app(
                    json!({"volumesFrom": [{"sourceContainer": "app"}]}),
                )]),
                Invalid("another container"),
            ),
            (
                "configuredAtLaunch",
                volumes(
                    json!([{"name": "v", "configuredAtLaunch": true}]),
                    json!({}),
                ),
                Invalid("Flotilla does not support 'volumes[0].configuredAtLaunch' yet."),
            ),
            (
                "configuredAtLaunch false",
                volumes(
                    json!([{"name": "v", "configuredAtLaunch": false}]),
                    json!({}),
                ),
                OK,
            ),
        ]
    }

    fn container_option_rows() -> Vec<(&'static str, Value, Expect)> {
        vec![
            (
                "ulimit nofile",
                td(vec![app(
                    json!({"ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 4096}]}),
                )]),
                OK,
            ),
            (
                "ulimit with an unknown name",
                td(vec![app(
                    json!({"ulimits": [{"name": "bogus", "softLimit": 1, "hardLimit": 1}]}),
                )]),
                Invalid(
                    "'containerDefinitions[0].ulimits[0].name' value 'bogus'. Accepted values: core",
                ),
            ),
            (
                "ulimit soft above hard",
                td(vec![app(
                    json!({"ulimits": [{"name": "nproc", "softLimit": 2, "hardLimit": 1}]}),
                )]),
                Invalid("'containerDefinitions[0].ulimits[0]': softLimit 2 is above hardLimit 1"),
            ),
            (
                "log driver awslogs",
                td(vec![app(
                    json!({"logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "g"}}}),
                )]),
                OK,
            ),
            (
                "unknown log driver",
                td(vec![app(
                    json!({"logConfiguration": {"logDriver": "carrier-pigeon"}}),
                )]),
                Invalid(
                    "'containerDefinitions[0].logConfiguration.logDriver' value 'carrier-pigeon'. Accepted values: json-file",
                ),
            ),
            (
                "restart policy",
                td(vec![app(json!({"restartPolicy": {
                    "enabled": true, "ignoredExitCodes": [0, 1], "restartAttemptPeriod": 60
                }}))]),
                OK,
            ),
            (
                "restartAttemptPeriod 59",
                td(vec![app(
                    json!({"restartPolicy": {"enabled": true, "restartAttemptPeriod": 59}}),
                )]),
                Invalid(
                    "restartPolicy.restartAttemptPeriod' value 59: it must be between 60 and 1800",
                ),
            ),
            (
                "restartAttemptPeriod 1801",
                td(vec![app(
                    json!({"restartPolicy": {"enabled": true, "restartAttemptPeriod": 1801}}),
                )]),
                Invalid("restartAttemptPeriod"),
            ),
            (
                "51 ignored exit codes",
                td(vec![app(json!({"restartPolicy": {
                    "enabled": true, "ignoredExitCodes": (0..51).collect::<Vec<i32>>()
                }}))]),
                Invalid("'containerDefinitions[0].restartPolicy.ignoredExitCodes': at most 50"),
            ),
            (
                "stopTimeout 1",
                td(vec![app(json!({"stopTimeout": 1}))]),
                Invalid(
                    "'containerDefinitions[0].stopTimeout' value 1: it must be between 2 and 120",
                ),
            ),
            (
                "stopTimeout 121",
                td(vec![app(json!({"stopTimeout": 121}))]),
                Invalid("stopTimeout"),
            ),
            (
                "stopTimeout 120",
                td(vec![app(json!({"stopTimeout": 120}))]),
                OK,
            ),
            (
                "startTimeout 1",
                td(vec![app(json!({"startTimeout": 1}))]),
                Invalid("'containerDefinitions[0].startTimeout' value 1: it must be at least 2"),
            ),
            (
                "GPU requirement",
                td(vec![app(
                    json!({"resourceRequirements": [{"type": "GPU", "value": "2"}]}),
                )]),
                OK,
            ),
            (
                "GPU requirement of 0",
                td(vec![app(
                    json!({"resourceRequirements": [{"type": "GPU", "value": "0"}]}),
                )]),
                Invalid("'containerDefinitions[0].resourceRequirements[0].value' value '0'"),
            ),
            (
                "GPU requirement that is not a number",
                td(vec![app(
                    json!({"resourceRequirements": [{"type": "GPU", "value": "one"}]}),
                )]),
                Invalid("positive whole number of GPUs"),
            ),
            (
                "InferenceAccelerator requirement",
                td(vec![app(json!({"resourceRequirements": [
                    {"type": "InferenceAccelerator", "value": "device_1"}
                ]}))]),
                Invalid(
                    "Flotilla does not support 'containerDefinitions[0].resourceRequirements[0]' of type 'InferenceAccelerator' yet.",
                ),
            ),
            (
                "unknown requirement type",
                td(vec![app(
                    json!({"resourceRequirements": [{"type": "TPU", "value": "1"}]}),
                )]),
                Invalid("'containerDefinitions[0].resourceRequirements[0].type' value 'TPU'"),
            ),
            (
                "versionConsistency bogus",
                td(vec![app(json!({"versionConsistency": "sometimes"}))]),
                Invalid("'containerDefinitions[0].versionConsistency' value 'sometimes'"),
            ),
            (
                "unknown capability",
                td(vec![app(
                    json!({"linuxParameters": {"capabilities": {"add": ["FLY"]}}}),
                )]),
                Invalid(
                    "'containerDefinitions[0].linuxParameters.capabilities.add[0]' value 'FLY'",
                ),
            ),
            (
                "swappiness 101",
                td(vec![app(
                    json!({"linuxParameters": {"maxSwap": 0, "swappiness": 101}}),
                )]),
                Invalid("linuxParameters.swappiness' value 101"),
            ),
            (
                "hostname in awsvpc mode",
                td_with(
                    json!({"networkMode": "awsvpc"}),
                    vec![app(json!({"hostname": "web"}))],
                ),
                Invalid("'containerDefinitions[0].hostname'"),
            ),
            (
                "hostname in bridge mode",
                td(vec![app(json!({"hostname": "web"}))]),
                OK,
            ),
        ]
    }

    fn task_option_rows() -> Vec<(&'static str, Value, Expect)> {
        let constraint =
            json!({"type": "memberOf", "expression": "attribute:ecs.os-type == linux"});
        vec![
            (
                "memberOf constraint",
                td_with(
                    json!({"placementConstraints": [constraint.clone()]}),
                    vec![app(json!({}))],
                ),
                OK,
            ),
            (
                "ten constraints",
                td_with(
                    json!({"placementConstraints": vec![constraint.clone(); 10]}),
                    vec![app(json!({}))],
                ),
                OK,
            ),
            (
                "eleven constraints",
                td_with(
                    json!({"placementConstraints": vec![constraint.clone(); 11]}),
                    vec![app(json!({}))],
                ),
                Invalid("'placementConstraints': a task definition can have at most 10"),
            ),
            (
                "distinctInstance in a task definition",
                td_with(
                    json!({"placementConstraints": [{"type": "distinctInstance"}]}),
                    vec![app(json!({}))],
                ),
                Invalid(
                    "'placementConstraints[0].type' value 'distinctInstance'. Task definitions accept only 'memberOf'",
                ),
            ),
            (
                "memberOf without an expression",
                td_with(
                    json!({"placementConstraints": [{"type": "memberOf", "expression": " "}]}),
                    vec![app(json!({}))],
                ),
                Invalid("placementConstraints[0].expression is required"),
            ),
            (
                "pidMode bogus",
                td_with(json!({"pidMode": "container"}), vec![app(json!({}))]),
                Invalid("'pidMode' value 'container'. Accepted values: host, task."),
            ),
            (
                "ipcMode bogus",
                td_with(json!({"ipcMode": "shareable"}), vec![app(json!({}))]),
                Invalid("'ipcMode' value 'shareable'. Accepted values: host, task, none."),
            ),
            (
                "pidMode host and ipcMode none on EC2",
                td_with(
                    json!({"pidMode": "host", "ipcMode": "none"}),
                    vec![app(json!({}))],
                ),
                OK,
            ),
            (
                "ephemeral storage of 20 GiB",
                td_with(
                    json!({"ephemeralStorage": {"sizeInGiB": 20}}),
                    vec![app(json!({}))],
                ),
                Invalid("'ephemeralStorage.sizeInGiB' value 20: it must be between 21 and 200"),
            ),
            (
                "Windows runtime platform",
                td_with(
                    json!({"runtimePlatform": {"operatingSystemFamily": "WINDOWS_SERVER_2022_CORE"}}),
                    vec![app(json!({}))],
                ),
                Invalid("'runtimePlatform.operatingSystemFamily'"),
            ),
            (
                "Linux ARM64 runtime platform",
                td_with(
                    json!({"runtimePlatform": {"operatingSystemFamily": "LINUX", "cpuArchitecture": "ARM64"}}),
                    vec![app(json!({}))],
                ),
                OK,
            ),
        ]
    }

    fn unsupported_rows() -> Vec<(&'static str, Value, Expect)> {
        let container = |field: &str, value: Value| td(vec![app(json!({field: value}))]);
        let volume = |field: &str| {
            td_with(
                json!({"volumes": [{"name": "v", field: {"fileSystemId": "fs-1"}}]}),
                vec![app(json!({}))],
            )
        };
        vec![
            (
                "secrets",
                container("secrets", json!([{"name": "x", "valueFrom": "arn"}])),
                Invalid("Flotilla does not support 'containerDefinitions[0].secrets' yet."),
            ),
            (
                "an empty secrets list is no secret",
                container("secrets", json!([])),
                OK,
            ),
            (
                "repositoryCredentials",
                container(
                    "repositoryCredentials",
                    json!({"credentialsParameter": "arn"}),
                ),
                Invalid("'containerDefinitions[0].repositoryCredentials'"),
            ),
            (
                "environmentFiles",
                container("environmentFiles", json!([{"value": "arn", "type": "s3"}])),
                Invalid("'containerDefinitions[0].environmentFiles'"),
            ),
            (
                "firelensConfiguration",
                container("firelensConfiguration", json!({"type": "fluentbit"})),
                Invalid("'containerDefinitions[0].firelensConfiguration'"),
            ),
            (
                "credentialSpecs",
                container("credentialSpecs", json!(["credentialspec:arn"])),
                Invalid("'containerDefinitions[0].credentialSpecs'"),
            ),
            (
                "logConfiguration.secretOptions",
                container(
                    "logConfiguration",
                    json!({"logDriver": "splunk", "secretOptions": [{"name": "t", "valueFrom": "arn"}]}),
                ),
                Invalid("'containerDefinitions[0].logConfiguration.secretOptions'"),
            ),
            (
                "efsVolumeConfiguration",
                volume("efsVolumeConfiguration"),
                Invalid("Flotilla does not support 'volumes[0].efsVolumeConfiguration' yet."),
            ),
            (
                "s3filesVolumeConfiguration",
                volume("s3filesVolumeConfiguration"),
                Invalid("'volumes[0].s3filesVolumeConfiguration'"),
            ),
            (
                "fsxWindowsFileServerVolumeConfiguration",
                volume("fsxWindowsFileServerVolumeConfiguration"),
                Invalid("'volumes[0].fsxWindowsFileServerVolumeConfiguration'"),
            ),
            (
                "proxyConfiguration",
                td_with(
                    json!({"proxyConfiguration": {"type": "APPMESH", "containerName": "app"}}),
                    vec![app(json!({}))],
                ),
                Invalid("Flotilla does not support 'proxyConfiguration' yet."),
            ),
            (
                "inferenceAccelerators",
                td_with(
                    json!({"inferenceAccelerators": [{"deviceName": "d", "deviceType": "eia2.medium"}]}),
                    vec![app(json!({}))],
                ),
                Invalid("Flotilla does not support 'inferenceAccelerators' yet."),
            ),
        ]
    }

    #[test]
    fn task_definition_rules() {
        let tables = [
            family_rows(),
            essential_and_size_rows(),
            fargate_rows(),
            port_rows(),
            link_and_health_rows(),
            dependency_rows(),
            volume_rows(),
            container_option_rows(),
            task_option_rows(),
            unsupported_rows(),
        ];
        for (label, json, expected) in tables.into_iter().flatten() {
            check(label, json, expected);
        }
    }

    #[test]
    fn fargate_table_edges() {
        for (cpu, memory, ok) in [
            (256, 512, true),
            (256, 2048, true),
            (256, 3072, false),
            (256, 4096, false),
            (512, 1024, true),
            (512, 4096, true),
            (512, 5120, false),
            (1024, 2048, true),
            (1024, 8192, true),
            (1024, 1024, false),
            (2048, 4096, true),
            (2048, 16384, true),
            (2048, 17408, false),
            (4096, 30720, true),
            (4096, 31744, false),
            (8192, 16384, true),
            (8192, 20480, true),
            (8192, 17408, false),
            (8192, 61440, true),
            (8192, 65536, false),
            (16384, 32768, true),
            (16384, 40960, true),
            (16384, 36864, false),
            (16384, 122880, true),
            (16384, 131072, false),
            (300, 512, false),
            (128, 512, false),
        ] {
            assert_eq!(fargate_size_is_valid(cpu, memory), ok, "{cpu}/{memory}");
        }
    }

    #[test]
    fn cpu_and_memory_strings() {
        for (value, units) in [
            ("1 vCPU", Some(1024)),
            ("1vcpu", Some(1024)),
            ("0.25 vcpu", Some(256)),
            (".5 vCPU", Some(512)),
            ("2 vCPUs", Some(2048)),
            ("0.125 vCPU", Some(128)),
            ("1024", Some(1024)),
            (" 256 ", Some(256)),
            ("0.1 vCPU", None),
            ("0", None),
            ("-1", None),
            ("1.5", None),
            ("lots", None),
            ("", None),
            ("vCPU", None),
            ("1e3", None),
            ("99999999999999999999", None),
        ] {
            match (parse_cpu_units("cpu", value), units) {
                (Ok(parsed), Some(units)) => assert_eq!(parsed, units, "{value:?}"),
                (Err(error), None) => {
                    assert_eq!(error.kind, ErrorKind::ClientException);
                    assert!(error.message.contains("'cpu'"), "{}", error.message);
                    assert!(error.message.contains("1 vCPU"), "{}", error.message);
                }
                (result, _) => panic!("{value:?}: {result:?}"),
            }
        }
        for (value, mib) in [
            ("1GB", Some(1024)),
            ("1 gb", Some(1024)),
            ("0.5GB", Some(512)),
            ("2 GiB", Some(2048)),
            ("512", Some(512)),
            ("512 MiB", Some(512)),
            ("512mb", Some(512)),
            ("120 GB", Some(122880)),
            ("0.3GB", None),
            ("0", None),
            ("-1", None),
            ("1 TB", None),
            ("12.5", None),
            ("GB", None),
        ] {
            match (parse_memory_mib("memory", value), mib) {
                (Ok(parsed), Some(mib)) => assert_eq!(parsed, mib, "{value:?}"),
                (Err(error), None) => {
                    assert!(error.message.contains("'memory'"), "{}", error.message);
                    assert!(error.message.contains("1GB"), "{}", error.message);
                }
                (result, _) => panic!("{value:?}: {result:?}"),
            }
        }
    }

    fn registered(json: Value) -> TaskDefinition {
        let normalized = normalize_json(&json).unwrap();
        TaskDefinition {
            task_definition_arn: "arn:aws:ecs:local:000000000000:task-definition/f:1".into(),
            family: "f".into(),
            revision: 1,
            status: TaskDefinitionStatus::Active,
            spec: normalized.spec,
            compatibilities: normalized.compatibilities,
            requires_attributes: vec![],
            registered_at: crate::Timestamp(0),
            registered_by: None,
            deregistered_at: None,
            delete_requested_at: None,
            tags: vec![],
        }
    }

    fn overrides(json: Value) -> TaskOverride {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn demand_counts_fixed_ports_only() {
        let bridge = registered(td(vec![
            app(json!({"name": "a", "cpu": 100, "portMappings": [
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 81},
                {"containerPort": 82, "hostPort": 0}
            ]})),
            app(
                json!({"name": "b", "cpu": 50, "memory": null, "memoryReservation": 64,
                "portMappings": [{"containerPort": 53, "hostPort": 53, "protocol": "udp"}]}),
            ),
        ]));
        let demand = task_demand(&bridge, &TaskOverride::default());
        assert_eq!(
            (demand.cpu, demand.memory_mib, demand.gpus),
            (150, 128 + 64, 0)
        );
        assert_eq!(demand.ports_tcp, [8080].into());
        assert_eq!(demand.ports_udp, [53].into());

        let host = registered(td_with(
            json!({"networkMode": "host"}),
            vec![app(json!({"portMappings": [{"containerPort": 80}]}))],
        ));
        assert_eq!(
            task_demand(&host, &TaskOverride::default()).ports_tcp,
            [80].into()
        );

        let awsvpc = registered(td_with(
            json!({"networkMode": "awsvpc", "cpu": "512", "memory": "1GB"}),
            vec![app(json!({"portMappings": [{"containerPort": 80}]}))],
        ));
        let demand = task_demand(&awsvpc, &TaskOverride::default());
        assert!(demand.ports_tcp.is_empty() && demand.ports_udp.is_empty());
        assert_eq!((demand.cpu, demand.memory_mib), (512, 1024));
    }

    #[test]
    fn demand_applies_overrides_first() {
        let definition = registered(td(vec![
            app(json!({"name": "a", "cpu": 100, "memoryReservation": 64,
                "resourceRequirements": [{"type": "GPU", "value": "1"}]})),
            app(json!({"name": "b", "cpu": 50, "memory": null, "memoryReservation": 64})),
        ]));
        let base = task_demand(&definition, &TaskOverride::default());
        assert_eq!((base.cpu, base.memory_mib, base.gpus), (150, 128 + 64, 1));

        let container_level = overrides(json!({"containerOverrides": [
            {"name": "a", "cpu": 10, "memory": 32, "memoryReservation": 16,
             "resourceRequirements": [{"type": "GPU", "value": "2"}]},
            {"name": "b", "memoryReservation": 100}
        ]}));
        validate_overrides(&definition, &container_level).unwrap();
        let demand = task_demand(&definition, &container_level);
        assert_eq!(
            (demand.cpu, demand.memory_mib, demand.gpus),
            (60, 32 + 100, 2)
        );

        let task_level = overrides(json!({"cpu": "1 vCPU", "memory": "1GB"}));
        validate_overrides(&definition, &task_level).unwrap();
        let demand = task_demand(&definition, &task_level);
        assert_eq!((demand.cpu, demand.memory_mib), (1024, 1024));
    }

    #[test]
    fn override_rules() {
        let definition = registered(td(vec![
            app(json!({"name": "a", "cpu": 100, "memoryReservation": 64})),
            app(json!({"name": "b", "memory": null, "memoryReservation": 64})),
        ]));
        let fargate_definition = registered(fargate(json!({}), vec![app(json!({}))]));
        let rows: Vec<(&TaskDefinition, Value, Option<&str>)> = vec![
            (&definition, json!({}), None),
            (
                &definition,
                json!({"containerOverrides": [{"name": "a", "command": ["sh"]}]}),
                None,
            ),
            (
                &definition,
                json!({"containerOverrides": [{"name": "ghost"}]}),
                Some(
                    "Override for container named ghost is not a container in the TaskDefinition (overrides.containerOverrides[0].name",
                ),
            ),
            (
                &definition,
                json!({"containerOverrides": [{"command": ["sh"]}]}),
                Some("overrides.containerOverrides[0].name is required"),
            ),
            (
                &definition,
                json!({"containerOverrides": [{"name": "a"}, {"name": "a"}]}),
                Some(
                    "'overrides.containerOverrides[1].name': container 'a' is overridden more than once",
                ),
            ),
            (
                &definition,
                json!({"containerOverrides": [{"name": "a", "cpu": -1}]}),
                Some("'overrides.containerOverrides[0].cpu' value -1"),
            ),
            (
                &definition,
                json!({"containerOverrides": [{"name": "a", "memory": 4}]}),
                Some("'overrides.containerOverrides[0].memory' value 4: it must be at least 6 MiB"),
            ),
            (
                &definition,
                json!({"containerOverrides": [{"name": "a", "memory": 32}]}),
                Some("memoryReservation 64 MiB above its memory limit of 32 MiB"),
            ),
            (
                &definition,
                json!({"containerOverrides": [{"name": "a", "environmentFiles": [{"value": "arn", "type": "s3"}]}]}),
                Some(
                    "Flotilla does not support 'overrides.containerOverrides[0].environmentFiles' yet.",
                ),
            ),
            (
                &definition,
                json!({"containerOverrides": [{"name": "a", "resourceRequirements": [{"type": "GPU", "value": "0"}]}]}),
                Some("'overrides.containerOverrides[0].resourceRequirements[0].value'"),
            ),
            (
                &definition,
                json!({"inferenceAcceleratorOverrides": [{"deviceName": "d", "deviceType": "t"}]}),
                Some("Flotilla does not support 'overrides.inferenceAcceleratorOverrides' yet."),
            ),
            (
                &definition,
                json!({"cpu": "lots"}),
                Some("Invalid 'overrides.cpu' value 'lots'"),
            ),
            (
                &definition,
                json!({"memory": "-5"}),
                Some("Invalid 'overrides.memory' value '-5'"),
            ),
            (
                &definition,
                json!({"cpu": "64"}),
                Some("between 128 and 196608"),
            ),
            (
                &definition,
                json!({"cpu": "128", "containerOverrides": [{"name": "b", "cpu": 200}]}),
                Some("the containers' cpu adds up to 300 CPU units, more than the task's 128"),
            ),
            (
                &definition,
                json!({"memory": "150", "containerOverrides": [{"name": "b", "memoryReservation": 100}]}),
                Some("the containers reserve 164 MiB in total, more than the task's 150 MiB"),
            ),
            (
                &definition,
                json!({"memory": "120"}),
                Some("container 'a' has a memory limit of 128 MiB, more than the task's 120 MiB"),
            ),
            (
                &definition,
                json!({"cpu": "0.25 vCPU", "memory": "0.5GB"}),
                None,
            ),
            (
                &fargate_definition,
                json!({"cpu": "512", "memory": "1GB"}),
                None,
            ),
            (
                &fargate_definition,
                json!({"memory": "4096"}),
                Some("no Fargate configuration exists for given values: 256 CPU, 4096 memory"),
            ),
            (
                &definition,
                json!({"ephemeralStorage": {"sizeInGiB": 500}}),
                Some("'overrides.ephemeralStorage.sizeInGiB' value 500"),
            ),
        ];
        for (definition, json, expected) in rows {
            let result = validate_overrides(definition, &overrides(json.clone()));
            match (result, expected) {
                (Ok(()), None) => {}
                (Err(error), Some(fragment)) => {
                    assert_eq!(error.kind, ErrorKind::InvalidParameterException, "{json}");
                    assert!(
                        error.message.contains(fragment),
                        "{json}: message {:?} lacks {fragment:?}",
                        error.message
                    );
                }
                (result, expected) => panic!("{json}: got {result:?}, expected {expected:?}"),
            }
        }
    }

    /// A JSON object of the present `fields`.
    fn object(fields: Vec<(&str, Option<Value>)>) -> Value {
        Value::Object(
            fields
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
                .collect(),
        )
    }

    /// One of `good` nearly always, one of `bad` now and then.
    fn usually<T: Clone + std::fmt::Debug + 'static>(
        good: Vec<T>,
        bad: Vec<T>,
    ) -> impl Strategy<Value = T> {
        prop_oneof![
            24 => prop::sample::select(good),
            1 => prop::sample::select(bad),
        ]
    }

    fn some_json<T: serde::Serialize>(value: Option<T>) -> Option<Value> {
        value.map(|v| json!(v))
    }

    fn arb_port_mapping() -> impl Strategy<Value = Value> {
        (
            prop_oneof![
                24 => (1..=65535i32).prop_map(Some),
                1 => prop::sample::select(vec![None, Some(0), Some(70000)]),
            ],
            usually(vec![None, Some(0)], vec![Some(8080), Some(-1)]),
            prop::sample::select(vec![None, Some("tcp"), Some("udp")]),
            usually(vec![None], vec![Some("web"), Some("Bad")]),
            usually(vec![None, Some("http"), Some("grpc")], vec![Some("ftp")]),
        )
            .prop_map(|(container, host, protocol, name, app)| {
                object(vec![
                    ("containerPort", some_json(container)),
                    ("hostPort", some_json(host)),
                    ("protocol", some_json(protocol)),
                    ("name", some_json(name)),
                    ("appProtocol", some_json(app)),
                ])
            })
    }

    fn arb_health_check() -> impl Strategy<Value = Value> {
        (
            usually(
                vec![
                    json!(["CMD", "true"]),
                    json!(["CMD-SHELL", "exit 0"]),
                    json!(["NONE"]),
                ],
                vec![json!(["ls"]), json!([]), json!(["CMD"])],
            ),
            usually(
                vec![None, Some(5), Some(30), Some(300)],
                vec![Some(4), Some(301)],
            ),
            usually(vec![None, Some(2), Some(60)], vec![Some(1), Some(61)]),
            usually(vec![None, Some(1), Some(10)], vec![Some(0), Some(11)]),
            usually(vec![None, Some(0), Some(300)], vec![Some(301)]),
        )
            .prop_map(|(command, interval, timeout, retries, start)| {
                object(vec![
                    ("command", Some(command)),
                    ("interval", some_json(interval)),
                    ("timeout", some_json(timeout)),
                    ("retries", some_json(retries)),
                    ("startPeriod", some_json(start)),
                ])
            })
    }

    /// A container, before its name and references to others are decided.
    #[derive(Clone, Debug)]
    struct GenContainer {
        fields: Value,
        rename: Option<&'static str>,
        /// (seed for the target, whether the dependency should be valid)
        dependency: Option<(usize, bool)>,
        link: bool,
        /// Some(true): mount the first volume; Some(false): mount a missing one.
        mount: Option<bool>,
    }

    fn arb_container() -> impl Strategy<Value = GenContainer> {
        (
            (
                usually(
                    vec!["busybox", "nginx:1.27", "public.ecr.aws/team/app:v1"],
                    vec!["bad image", ""],
                ),
                usually(vec![None, Some(0), Some(10), Some(128)], vec![Some(-1)]),
                usually(
                    vec![
                        (Some(128), None),
                        (Some(256), Some(64)),
                        (None, Some(64)),
                        (Some(64), Some(64)),
                    ],
                    vec![(None, None), (Some(4), None), (Some(64), Some(128))],
                ),
                prop::sample::select(vec![None, None, Some(true), Some(false)]),
                prop::collection::vec(arb_port_mapping(), 0..3),
                prop::option::weighted(0.3, arb_health_check()),
            ),
            (
                usually(
                    vec![None, Some(2), Some(30), Some(120)],
                    vec![Some(1), Some(121)],
                ),
                prop::sample::select(vec![None, Some(false), Some(true)]),
                usually(vec![None, None, None, Some("GPU")], vec![Some("TPU")]),
                usually(vec![None], vec![Some("bad name"), Some("c0")]),
                prop::option::weighted(0.3, (any::<usize>(), usually(vec![true], vec![false]))),
                usually(vec![false], vec![true]),
                prop::option::weighted(0.3, usually(vec![true], vec![false])),
            ),
        )
            .prop_map(
                |(
                    (image, cpu, (memory, reservation), essential, ports, health),
                    (stop, privileged, requirement, rename, dependency, link, mount),
                )| {
                    GenContainer {
                        fields: object(vec![
                            ("image", some_json(Some(image).filter(|i| !i.is_empty()))),
                            ("cpu", some_json(cpu)),
                            ("memory", some_json(memory)),
                            ("memoryReservation", some_json(reservation)),
                            ("essential", some_json(essential)),
                            ("portMappings", Some(json!(ports))),
                            ("healthCheck", health),
                            ("stopTimeout", some_json(stop)),
                            ("privileged", some_json(privileged)),
                            (
                                "resourceRequirements",
                                requirement.map(|kind| json!([{"type": kind, "value": "1"}])),
                            ),
                        ]),
                        rename,
                        dependency,
                        link,
                        mount,
                    }
                },
            )
    }

    fn arb_volume() -> impl Strategy<Value = Value> {
        usually(
            vec![
                json!({}),
                json!({"host": {}}),
                json!({"host": {"sourcePath": "/srv"}}),
                json!({"dockerVolumeConfiguration": {"scope": "task", "driver": "local"}}),
                json!({"dockerVolumeConfiguration": {"scope": "shared", "autoprovision": true}}),
            ],
            vec![
                json!({"host": {}, "dockerVolumeConfiguration": {}}),
                json!({"dockerVolumeConfiguration": {"scope": "global"}}),
                json!({"dockerVolumeConfiguration": {"autoprovision": true}}),
                json!({"efsVolumeConfiguration": {"fileSystemId": "fs-1"}}),
            ],
        )
    }

    /// The condition a valid dependency on `target` can use.
    fn valid_condition(target: &Value) -> &'static str {
        let healthy = target["healthCheck"]["command"]
            .get(0)
            .is_some_and(|c| c != "NONE");
        if healthy {
            "HEALTHY"
        } else if target["essential"] == json!(false) {
            "SUCCESS"
        } else {
            "START"
        }
    }

    /// RegisterTaskDefinition requests, nearly all valid, with occasional mistakes.
    fn arb_definition() -> impl Strategy<Value = Value> {
        (
            usually(vec!["f", "web-app"], vec!["bad name", ""]),
            prop::sample::select(vec![
                None,
                Some("bridge"),
                Some("host"),
                Some("awsvpc"),
                Some("awsvpc"),
                Some("none"),
            ]),
            usually(
                vec![
                    vec![],
                    vec!["EC2"],
                    vec!["EXTERNAL", "EC2"],
                    vec!["MANAGED_INSTANCES"],
                ],
                vec![vec!["FARGATE"]],
            ),
            usually(
                vec![
                    (None, None),
                    (Some("256"), Some("512")),
                    (Some("1 vCPU"), Some("2GB")),
                    (Some("0.5 vcpu"), Some("1 gb")),
                    (Some("2048"), Some("4096")),
                    (Some("256"), Some("4096")),
                ],
                vec![(Some("lots"), None), (Some("64"), None), (None, Some("0"))],
            ),
            prop_oneof![
                24 => prop::collection::vec(arb_container(), 1..4),
                1 => Just(vec![]),
            ],
            prop::collection::vec(arb_volume(), 0..3),
            usually(vec![None, Some("task"), Some("host")], vec![Some("bogus")]),
            usually(
                vec![None, None, Some("task"), Some("host"), Some("none")],
                vec![Some("bogus")],
            ),
        )
            .prop_map(
                |(family, mode, compatibilities, (cpu, memory), gen_containers, volumes, pid, ipc)| {
                    let volumes: Vec<Value> = volumes
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| with(v, json!({"name": format!("v{i}")})))
                        .collect();
                    let count = gen_containers.len();
                    let mut containers: Vec<Value> = gen_containers
                        .iter()
                        .enumerate()
                        .map(|(i, g)| {
                            let name = g.rename.map_or(format!("c{i}"), str::to_owned);
                            with(g.fields.clone(), json!({"name": name}))
                        })
                        .collect();
                    for (i, g) in gen_containers.iter().enumerate() {
                        if i == 0 && g.fields["essential"] == json!(false) && g.rename.is_none() {
                            // Keep one essential container unless a mutation says otherwise.
                            containers[0]["essential"] = json!(true);
                        }
                        if mode == Some("none") && g.rename.is_none() {
                            containers[i]["portMappings"] = json!([]);
                        }
                        if let Some((seed, good)) = g.dependency
                            && (i > 0 || !good)
                        {
                            let dependency = if good {
                                let target = &containers[seed % i];
                                json!({"containerName": target["name"], "condition": valid_condition(target)})
                            } else {
                                let target = ["ghost".to_owned(), format!("c{}", seed % count)]
                                    [seed % 2]
                                    .clone();
                                json!({"containerName": target, "condition": "START"})
                            };
                            containers[i]["dependsOn"] = json!([dependency]);
                        }
                        if g.link && count > 1 {
                            let target = containers[(i + 1) % count]["name"].clone();
                            containers[i]["links"] = json!([target]);
                        }
                        match g.mount {
                            Some(true) if !volumes.is_empty() => {
                                containers[i]["mountPoints"] =
                                    json!([{"sourceVolume": "v0", "containerPath": "/data"}]);
                            }
                            Some(false) => {
                                containers[i]["mountPoints"] =
                                    json!([{"sourceVolume": "ghost", "containerPath": "/data"}]);
                            }
                            _ => {}
                        }
                    }
                    object(vec![
                        ("family", Some(json!(family))),
                        ("networkMode", some_json(mode)),
                        ("requiresCompatibilities", Some(json!(compatibilities))),
                        ("cpu", some_json(cpu)),
                        ("memory", some_json(memory)),
                        ("containerDefinitions", Some(json!(containers))),
                        ("volumes", Some(json!(volumes))),
                        ("pidMode", some_json(pid)),
                        ("ipcMode", some_json(ipc)),
                    ])
                },
            )
    }

    fn arb_overrides() -> impl Strategy<Value = Value> {
        (
            prop::collection::vec(
                (
                    usually(vec![Some("c0"), Some("c1")], vec![None, Some("ghost")]),
                    usually(vec![None, Some(0), Some(128)], vec![Some(-1)]),
                    usually(vec![None, Some(64), Some(1024)], vec![Some(4)]),
                    prop::sample::select(vec![None, Some(8), Some(64)]),
                ),
                0..3,
            ),
            usually(
                vec![None, Some("512"), Some("1 vCPU")],
                vec![Some("bad"), Some("64")],
            ),
            usually(vec![None, Some("1024"), Some("0.5GB")], vec![Some("x")]),
        )
            .prop_map(|(containers, cpu, memory)| {
                let containers: Vec<Value> = containers
                    .into_iter()
                    .map(|(name, cpu, memory, reservation)| {
                        object(vec![
                            ("name", name.map(|v| json!(v))),
                            ("cpu", cpu.map(|v| json!(v))),
                            ("memory", memory.map(|v| json!(v))),
                            ("memoryReservation", reservation.map(|v| json!(v))),
                        ])
                    })
                    .collect();
                object(vec![
                    ("containerOverrides", Some(json!(containers))),
                    ("cpu", cpu.map(|v| json!(v))),
                    ("memory", memory.map(|v| json!(v))),
                ])
            })
    }

    /// The generator must reach the interesting part: a fair share of its definitions are
    /// accepted (and so checked for idempotence), including Fargate-compatible ones.
    #[test]
    fn generator_yields_accepted_definitions() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = arb_definition();
        let (mut accepted, mut fargate, mut errors) = (0, 0, BTreeMap::new());
        for _ in 0..2000 {
            let json = strategy.new_tree(&mut runner).unwrap().current();
            match normalize_json(&json) {
                Ok(n) => {
                    accepted += 1;
                    fargate += usize::from(n.compatibilities.contains(&Compatibility::Fargate));
                }
                Err(e) => {
                    let key: String = e.message.chars().take(40).collect();
                    *errors.entry(key).or_insert(0) += 1;
                }
            }
        }
        eprintln!("accepted {accepted}, fargate {fargate}, errors {errors:#?}");
        assert!(accepted >= 400, "only {accepted} of 2000 accepted");
        assert!(fargate >= 5, "only {fargate} Fargate-compatible");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Random inputs of the right shape never panic the validator; whatever it accepts
        /// normalises to itself, and its demand and overrides are computed without panics.
        #[test]
        fn normalisation_never_panics_and_is_idempotent(
            json in arb_definition(),
            overrides_json in arb_overrides(),
        ) {
            let Ok(normalized) = normalize_json(&json) else {
                return Ok(());
            };
            let family = json["family"].as_str().unwrap();
            let again = renormalize(family, &normalized.spec);
            prop_assert_eq!(again.as_ref(), Ok(&normalized));
            prop_assert!(normalized.compatibilities.contains(&Compatibility::Ec2));
            prop_assert!(normalized.compatibilities.contains(&Compatibility::External));
            prop_assert!(normalized.compatibilities.is_sorted());
            let spec = &normalized.spec;
            for container in &spec.container_definitions {
                prop_assert!(container.essential.is_some());
                for mapping in &container.port_mappings {
                    prop_assert!(mapping.protocol.is_some());
                    prop_assert!(mapping.host_port.is_some());
                }
            }
            if normalized.compatibilities.contains(&Compatibility::Fargate) {
                let cpu = parse_cpu_units("cpu", spec.cpu.as_deref().unwrap()).unwrap();
                let memory = parse_memory_mib("memory", spec.memory.as_deref().unwrap()).unwrap();
                prop_assert!(fargate_size_is_valid(cpu, memory));
            }
            let definition = registered(json.clone());
            let overrides: TaskOverride = serde_json::from_value(overrides_json).unwrap();
            let valid_overrides = validate_overrides(&definition, &overrides).is_ok();
            let no_overrides = TaskOverride::default();
            let demand = task_demand(
                &definition,
                if valid_overrides { &overrides } else { &no_overrides },
            );
            prop_assert!(demand.cpu >= 0 && demand.memory_mib > 0);
            if spec.network_mode == NetworkMode::Awsvpc {
                prop_assert!(demand.ports_tcp.is_empty() && demand.ports_udp.is_empty());
            }
        }
    }

    #[test]
    fn network_configuration_as_ecs_checks_it() {
        use crate::task::NetworkConfiguration;
        let config =
            |json: Value| -> NetworkConfiguration { serde_json::from_value(json).unwrap() };
        let awsvpc = |json: Value| config(json!({"awsvpcConfiguration": json}));
        let ok = awsvpc(json!({"subnets": ["subnet-0abc"], "securityGroups": ["sg-1"]}));
        let checked =
            validate_network_configuration(NetworkMode::Awsvpc, false, Some(&ok)).unwrap();
        assert_eq!(checked.unwrap().subnets, vec!["subnet-0abc"]);
        assert_eq!(
            validate_network_configuration(NetworkMode::Bridge, false, None).unwrap(),
            None
        );
        for (mode, fargate, given, expected) in [
            (
                NetworkMode::Awsvpc,
                true,
                None,
                "Network Configuration must be provided when networkMode 'awsvpc' is specified.",
            ),
            (
                NetworkMode::Bridge,
                false,
                Some(ok.clone()),
                "Network Configuration is not valid for the given networkMode of this task definition.",
            ),
            (
                NetworkMode::Awsvpc,
                true,
                Some(awsvpc(json!({"subnets": []}))),
                "subnets can not be empty",
            ),
            (
                NetworkMode::Awsvpc,
                true,
                Some(awsvpc(json!({"subnets": ["vpc-1"]}))),
                "InvalidSubnetID.Malformed",
            ),
            (
                NetworkMode::Awsvpc,
                true,
                Some(awsvpc(
                    json!({"subnets": ["subnet-1"], "securityGroups": ["x"]}),
                )),
                "security group ID 'x'",
            ),
            (
                NetworkMode::Awsvpc,
                false,
                Some(awsvpc(
                    json!({"subnets": ["subnet-1"], "assignPublicIp": "ENABLED"}),
                )),
                "Assign public IP is not supported for this launch type.",
            ),
            (
                NetworkMode::Awsvpc,
                true,
                Some(awsvpc(
                    json!({"subnets": ["subnet-1"], "assignPublicIp": "YES"}),
                )),
                "accepted: ENABLED, DISABLED",
            ),
        ] {
            let error = validate_network_configuration(mode, fargate, given.as_ref()).unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidParameterException);
            assert!(error.message.contains(expected), "{}", error.message);
        }
        let public = awsvpc(json!({"subnets": ["subnet-1"], "assignPublicIp": "ENABLED"}));
        assert!(validate_network_configuration(NetworkMode::Awsvpc, true, Some(&public)).is_ok());
    }

    #[test]
    fn fargate_launches_need_a_fargate_definition_and_size() {
        let fargate_td = registered(fargate_sized("256", "512"));
        assert_eq!(
            fargate_launch_problem(&fargate_td, &TaskOverride::default()),
            None
        );
        let bigger = overrides(json!({"cpu": "512", "memory": "1024"}));
        assert_eq!(fargate_launch_problem(&fargate_td, &bigger), None);
        let bad = overrides(json!({"cpu": "256", "memory": "4096"}));
        let problem = fargate_launch_problem(&fargate_td, &bad).unwrap();
        assert!(
            problem
                .contains("No Fargate configuration exists for given values: 256 CPU, 4096 memory"),
            "{problem}"
        );
        let ec2_td = registered(td(vec![app(json!({}))]));
        let problem = fargate_launch_problem(&ec2_td, &TaskOverride::default()).unwrap();
        assert!(
            problem.starts_with("Task definition does not support launch_type FARGATE"),
            "{problem}"
        );
        assert!(problem.contains("awsvpc"), "{problem}");
        assert!(fargate_service_problem("DAEMON").is_some());
        assert_eq!(fargate_service_problem("REPLICA"), None);
    }
}
