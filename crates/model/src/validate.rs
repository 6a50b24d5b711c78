//! Validation and normalisation of task definitions and run-time overrides, as ECS does
//! them: pure functions that name the offending field and say what is accepted.

use std::collections::{BTreeMap, BTreeSet};

use crate::resources::Demand;
use crate::task::TaskOverride;
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

/// A normalised definition plus the launch types it is compatible with.
#[derive(Clone, Debug, PartialEq)]
pub struct NormalizedTaskDefinition {
    pub spec: TaskDefinitionSpec,
    pub compatibilities: Vec<Compatibility>,
}

const CONTAINERS_MAX: usize = 10;
const EC2_TASK_CPU_MIN: i64 = 128;
const EC2_TASK_CPU_MAX: i64 = 196_608;
const CONTAINER_MEMORY_MIB_MIN: i32 = 6;
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

fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 255
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// "1 vCPU" / "0.25 vcpu" / "1024" -> CPU units.
pub fn parse_cpu_units(field: &str, value: &str) -> Result<i64, ValidationError> {
    let text = value.trim().to_ascii_lowercase();
    let invalid = || {
        client(format!(
            "Invalid '{field}' value '{value}'. Use CPU units (\"1024\") or vCPUs (\"1 vCPU\")."
        ))
    };
    if let Some(number) = text.strip_suffix("vcpu") {
        let vcpus: f64 = number.trim().parse().map_err(|_| invalid())?;
        if vcpus <= 0.0 {
            return Err(invalid());
        }
        return Ok((vcpus * 1024.0).round() as i64);
    }
    text.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(invalid)
}

/// "1GB" / "1 gb" / "512" / "512 MiB" -> MiB.
pub fn parse_memory_mib(field: &str, value: &str) -> Result<i64, ValidationError> {
    let text = value.trim().to_ascii_lowercase();
    let invalid = || {
        client(format!(
            "Invalid '{field}' value '{value}'. Use MiB (\"512\") or GB (\"1GB\")."
        ))
    };
    for suffix in ["gb", "gib"] {
        if let Some(number) = text.strip_suffix(suffix) {
            let gb: f64 = number.trim().parse().map_err(|_| invalid())?;
            if gb <= 0.0 {
                return Err(invalid());
            }
            return Ok((gb * 1024.0).round() as i64);
        }
    }
    let number = text
        .strip_suffix("mib")
        .or_else(|| text.strip_suffix("mb"))
        .unwrap_or(&text);
    number
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(invalid)
}

/// Fargate's cpu/memory table.
pub fn fargate_size_is_valid(cpu_units: i64, memory_mib: i64) -> bool {
    let gb = |n: i64| n * 1024;
    match cpu_units {
        256 => [512, 1024, 2048].contains(&memory_mib),
        512 => (1..=4).any(|n| gb(n) == memory_mib),
        1024 => (2..=8).any(|n| gb(n) == memory_mib),
        2048 => (4..=16).any(|n| gb(n) == memory_mib),
        4096 => (8..=30).any(|n| gb(n) == memory_mib),
        8192 => (16..=60).step_by(4).any(|n| gb(n) == memory_mib),
        16384 => (32..=120).step_by(8).any(|n| gb(n) == memory_mib),
        _ => false,
    }
}

fn refuse(value: &Unsupported, path: &str) -> Result<(), ValidationError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::Array(items)) if items.is_empty() => Ok(()),
        Some(_) => Err(client(format!("Flotilla does not support '{path}' yet."))),
    }
}

/// Every reason a definition cannot run on Fargate, first one only.
fn fargate_problem(input: &TaskDefinitionInput, network_mode: NetworkMode) -> Option<String> {
    if network_mode != NetworkMode::Awsvpc {
        return Some("Fargate only supports network mode 'awsvpc'.".to_owned());
    }
    let (Some(cpu), Some(memory)) = (&input.cpu, &input.memory) else {
        return Some(
            "Fargate requires task definition to have 'cpu' and 'memory' values.".to_owned(),
        );
    };
    let (Ok(cpu), Ok(memory)) = (
        parse_cpu_units("cpu", cpu),
        parse_memory_mib("memory", memory),
    ) else {
        return Some("Fargate requires valid task-level 'cpu' and 'memory' values.".to_owned());
    };
    if !fargate_size_is_valid(cpu, memory) {
        return Some(format!(
            "No Fargate configuration exists for given values: {cpu} CPU, {memory} memory. See the Amazon ECS documentation for the valid values."
        ));
    }
    if input.pid_mode.as_deref().is_some_and(|m| m != "task") {
        return Some("Fargate only supports pidMode 'task'.".to_owned());
    }
    if input.ipc_mode.is_some() {
        return Some("Fargate does not support ipcMode.".to_owned());
    }
    for volume in &input.volumes {
        if volume
            .host
            .as_ref()
            .is_some_and(|h| h.source_path.is_some())
        {
            return Some(format!(
                "Fargate does not support host volumes with a sourcePath (volume '{}').",
                volume.name.as_deref().unwrap_or_default()
            ));
        }
    }
    for container in &input.container_definitions {
        let name = container.name();
        if container.privileged == Some(true) {
            return Some(format!(
                "Fargate does not support privileged containers (container '{name}')."
            ));
        }
        if container
            .linux_parameters
            .as_ref()
            .is_some_and(|l| !l.devices.is_empty())
        {
            return Some(format!(
                "Fargate does not support host devices (container '{name}')."
            ));
        }
        if container.gpu_count() > 0 {
            return Some(format!(
                "Fargate does not support GPUs (container '{name}')."
            ));
        }
        for mapping in &container.port_mappings {
            if let (Some(host), Some(port)) = (mapping.host_port, mapping.container_port)
                && host != 0
                && host != port
            {
                return Some(format!(
                    "Fargate requires hostPort to equal containerPort (container '{name}', port {port})."
                ));
            }
        }
    }
    None
}

/// Checks a RegisterTaskDefinition input and fills in ECS's defaults.
pub fn normalize_task_definition(
    input: TaskDefinitionInput,
) -> Result<NormalizedTaskDefinition, ValidationError> {
    if !is_name(&input.family) {
        return Err(client(format!(
            "Invalid family '{}'. Up to 255 letters (uppercase and lowercase), numbers, hyphens, and underscores are allowed.",
            input.family
        )));
    }
    if input.container_definitions.is_empty() || input.container_definitions.len() > CONTAINERS_MAX
    {
        return Err(client(format!(
            "containerDefinitions must hold 1 to {CONTAINERS_MAX} containers."
        )));
    }
    refuse(&input.proxy_configuration, "proxyConfiguration")?;
    refuse(&input.inference_accelerators, "inferenceAccelerators")?;
    let network_mode = input.network_mode.unwrap_or_default();
    let fargate_requested = input
        .requires_compatibilities
        .contains(&Compatibility::Fargate);
    if let Some(problem) = fargate_problem(&input, network_mode)
        && fargate_requested
    {
        return Err(client(problem));
    }
    let ec2_like = !fargate_requested
        || input
            .requires_compatibilities
            .iter()
            .any(|c| *c != Compatibility::Fargate);
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
    if let Some(cpu) = task_cpu
        && ec2_like
        && !fargate_requested
        && !(EC2_TASK_CPU_MIN..=EC2_TASK_CPU_MAX).contains(&cpu)
    {
        return Err(client(format!(
            "Invalid 'cpu' setting for task. The task CPU must be between {EC2_TASK_CPU_MIN} and {EC2_TASK_CPU_MAX} CPU units; got {cpu}."
        )));
    }
    match input.pid_mode.as_deref() {
        None | Some("host" | "task") => {}
        Some(other) => {
            return Err(client(format!(
                "Invalid pidMode '{other}'; accepted: host, task."
            )));
        }
    }
    match input.ipc_mode.as_deref() {
        None | Some("host" | "task" | "none") => {}
        Some(other) => {
            return Err(client(format!(
                "Invalid ipcMode '{other}'; accepted: host, task, none."
            )));
        }
    }
    if input.placement_constraints.len() > 10 {
        return Err(client(
            "A task definition can have at most 10 placement constraints.",
        ));
    }
    for (i, constraint) in input.placement_constraints.iter().enumerate() {
        if constraint.kind.as_deref() != Some("memberOf") {
            return Err(client(format!(
                "placementConstraints[{i}].type must be 'memberOf'; task definitions accept no other constraint type."
            )));
        }
        if constraint
            .expression
            .as_deref()
            .is_none_or(|e| e.trim().is_empty())
        {
            return Err(client(format!(
                "placementConstraints[{i}].expression is required for memberOf."
            )));
        }
    }
    let volumes = normalize_volumes(&input.volumes)?;
    let volume_names: BTreeSet<&str> = volumes.iter().filter_map(|v| v.name.as_deref()).collect();

    let names: Vec<&str> = input
        .container_definitions
        .iter()
        .map(|c| c.name())
        .collect();
    let mut seen = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        if !is_name(name) {
            return Err(client(format!(
                "containerDefinitions[{i}].name '{name}' is invalid. Up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed."
            )));
        }
        if !seen.insert(*name) {
            return Err(client(format!(
                "Container names must be unique within a task definition; '{name}' appears twice."
            )));
        }
    }
    let mut containers = Vec::with_capacity(names.len());
    let mut host_ports = BTreeSet::new();
    let mut cpu_total: i64 = 0;
    for (i, container) in input.container_definitions.iter().enumerate() {
        let normalized = normalize_container(
            i,
            container,
            network_mode,
            &names,
            &volume_names,
            task_memory,
        )?;
        cpu_total += i64::from(normalized.cpu);
        for (j, mapping) in normalized.port_mappings.iter().enumerate() {
            let host = mapping.host_port.unwrap_or(0);
            if host > 0 && !host_ports.insert((host, mapping.protocol.unwrap_or_default())) {
                return Err(client(format!(
                    "containerDefinitions[{i}].portMappings[{j}]: host port {host} is used more than once in the task definition."
                )));
            }
        }
        containers.push(normalized);
    }
    if !containers.iter().any(|c| c.is_essential()) {
        return Err(client(
            "A task definition must have at least one essential container.",
        ));
    }
    if let Some(cpu) = task_cpu
        && cpu_total > cpu
    {
        return Err(client(format!(
            "Invalid 'cpu' setting for task: the containers ask for {cpu_total} CPU units in total, more than the task's {cpu}."
        )));
    }
    if let Some(memory) = task_memory {
        for c in &containers {
            if c.memory.is_some_and(|m| i64::from(m) > memory) {
                return Err(client(format!(
                    "Invalid 'memory' setting for container '{}': its hard limit is more than the task's {memory} MiB.",
                    c.name()
                )));
            }
        }
    }
    check_dependencies(&containers)?;

    let spec = TaskDefinitionSpec {
        task_role_arn: input.task_role_arn.clone(),
        execution_role_arn: input.execution_role_arn.clone(),
        network_mode,
        container_definitions: containers,
        volumes,
        placement_constraints: input.placement_constraints.clone(),
        requires_compatibilities: input.requires_compatibilities.clone(),
        cpu: input.cpu.clone(),
        memory: input.memory.clone(),
        pid_mode: input.pid_mode.clone(),
        ipc_mode: input.ipc_mode.clone(),
        ephemeral_storage: input.ephemeral_storage.clone(),
        runtime_platform: input.runtime_platform.clone(),
        enable_fault_injection: input.enable_fault_injection,
    };
    let mut compatibilities = vec![Compatibility::Ec2, Compatibility::External];
    if fargate_problem(&input, network_mode).is_none() {
        compatibilities.push(Compatibility::Fargate);
    }
    if input
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

fn normalize_volumes(volumes: &[Volume]) -> Result<Vec<Volume>, ValidationError> {
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(volumes.len());
    for (i, volume) in volumes.iter().enumerate() {
        let path = format!("volumes[{i}]");
        let name = volume.name.as_deref().unwrap_or_default();
        if name.is_empty() || name.len() > 255 {
            return Err(client(format!(
                "{path}.name is required (1 to 255 characters)."
            )));
        }
        if !names.insert(name) {
            return Err(client(format!(
                "Volume names must be unique; '{name}' appears twice."
            )));
        }
        refuse(
            &volume.efs_volume_configuration,
            &format!("{path}.efsVolumeConfiguration"),
        )?;
        refuse(
            &volume.s3files_volume_configuration,
            &format!("{path}.s3filesVolumeConfiguration"),
        )?;
        refuse(
            &volume.fsx_windows_file_server_volume_configuration,
            &format!("{path}.fsxWindowsFileServerVolumeConfiguration"),
        )?;
        if volume.configured_at_launch == Some(true) {
            return Err(client(format!(
                "Flotilla does not support '{path}.configuredAtLaunch' yet."
            )));
        }
        if volume.host.is_some() && volume.docker_volume_configuration.is_some() {
            return Err(client(format!(
                "{path} can have host or dockerVolumeConfiguration, not both."
            )));
        }
        if let Some(docker) = &volume.docker_volume_configuration {
            match docker.scope.as_deref() {
                None | Some("task") => {
                    if docker.autoprovision == Some(true) {
                        return Err(client(format!(
                            "{path}.dockerVolumeConfiguration.autoprovision is only allowed with scope 'shared'."
                        )));
                    }
                }
                Some("shared") => {}
                Some(other) => {
                    return Err(client(format!(
                        "Invalid {path}.dockerVolumeConfiguration.scope '{other}'; accepted: task, shared."
                    )));
                }
            }
        }
        out.push(volume.clone());
    }
    Ok(out)
}

fn normalize_container(
    i: usize,
    container: &ContainerDefinition,
    network_mode: NetworkMode,
    names: &[&str],
    volumes: &BTreeSet<&str>,
    task_memory: Option<i64>,
) -> Result<ContainerDefinition, ValidationError> {
    let path = format!("containerDefinitions[{i}]");
    let name = container.name();
    let mut c = container.clone();
    refuse(
        &c.repository_credentials,
        &format!("{path}.repositoryCredentials"),
    )?;
    refuse(&c.environment_files, &format!("{path}.environmentFiles"))?;
    refuse(&c.secrets, &format!("{path}.secrets"))?;
    refuse(
        &c.firelens_configuration,
        &format!("{path}.firelensConfiguration"),
    )?;
    refuse(&c.credential_specs, &format!("{path}.credentialSpecs"))?;
    let image = c.image.as_deref().unwrap_or_default();
    if image.is_empty()
        || image.len() > 255
        || !image
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_:./#@".contains(ch))
    {
        return Err(client(format!(
            "{path}.image '{image}' is invalid. Up to 255 letters, numbers, hyphens, underscores, colons, periods, forward slashes, number signs and at signs are allowed."
        )));
    }
    if c.cpu < 0 {
        return Err(client(format!("{path}.cpu must not be negative.")));
    }
    for (field, value) in [
        ("memory", c.memory),
        ("memoryReservation", c.memory_reservation),
    ] {
        if value.is_some_and(|m| m < CONTAINER_MEMORY_MIB_MIN) {
            return Err(client(format!(
                "Invalid setting for container '{name}'. '{field}' must be at least {CONTAINER_MEMORY_MIB_MIN} MiB."
            )));
        }
    }
    if let (Some(hard), Some(soft)) = (c.memory, c.memory_reservation)
        && soft > hard
    {
        return Err(client(format!(
            "Invalid setting for container '{name}'. 'memoryReservation' must be less than or equal to 'memory'."
        )));
    }
    if task_memory.is_none() && c.memory.is_none() && c.memory_reservation.is_none() {
        return Err(client(format!(
            "Invalid setting for container '{name}'. At least one of 'memory' or 'memoryReservation' must be specified."
        )));
    }
    if let Some(log) = &c.log_configuration {
        if !LOG_DRIVERS.contains(&log.log_driver.as_str()) {
            return Err(client(format!(
                "Invalid {path}.logConfiguration.logDriver '{}'; accepted: {}.",
                log.log_driver,
                LOG_DRIVERS.join(", ")
            )));
        }
        refuse(
            &log.secret_options,
            &format!("{path}.logConfiguration.secretOptions"),
        )?;
    }
    for (j, ulimit) in c.ulimits.iter().enumerate() {
        if !ULIMIT_NAMES.contains(&ulimit.name.as_str()) {
            return Err(client(format!(
                "Invalid {path}.ulimits[{j}].name '{}'.",
                ulimit.name
            )));
        }
        if ulimit.soft_limit > ulimit.hard_limit {
            return Err(client(format!(
                "{path}.ulimits[{j}]: softLimit must not exceed hardLimit."
            )));
        }
    }
    if let Some(timeout) = c.stop_timeout
        && !(2..=120).contains(&timeout)
    {
        return Err(client(format!(
            "{path}.stopTimeout must be between 2 and 120 seconds."
        )));
    }
    if c.start_timeout.is_some_and(|t| t < 2) {
        return Err(client(format!(
            "{path}.startTimeout must be at least 2 seconds."
        )));
    }
    if let Some(policy) = &c.restart_policy {
        if policy
            .restart_attempt_period
            .is_some_and(|p| !(60..=1800).contains(&p))
        {
            return Err(client(format!(
                "{path}.restartPolicy.restartAttemptPeriod must be between 60 and 1800 seconds."
            )));
        }
        if policy.ignored_exit_codes.len() > 50 {
            return Err(client(format!(
                "{path}.restartPolicy.ignoredExitCodes can hold at most 50 codes."
            )));
        }
    }
    for (j, requirement) in c.resource_requirements.iter().enumerate() {
        match requirement.kind.as_str() {
            "GPU" => {
                if requirement
                    .value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .is_none()
                {
                    return Err(client(format!(
                        "{path}.resourceRequirements[{j}].value must be a positive number of GPUs."
                    )));
                }
            }
            other => {
                return Err(client(format!(
                    "Flotilla does not support resource requirements of type '{other}' yet."
                )));
            }
        }
    }
    if network_mode != NetworkMode::Bridge && !c.links.is_empty() {
        return Err(client(format!(
            "{path}.links are only supported in the bridge network mode."
        )));
    }
    for link in &c.links {
        let target = link.split(':').next().unwrap_or_default();
        if target == name || !names.contains(&target) {
            return Err(client(format!(
                "{path}.links: '{link}' does not name another container of this task definition."
            )));
        }
    }
    if network_mode == NetworkMode::None && !c.port_mappings.is_empty() {
        return Err(client(format!(
            "{path}.portMappings are not allowed in the none network mode."
        )));
    }
    let mut mapping_names = BTreeSet::new();
    for (j, mapping) in c.port_mappings.iter_mut().enumerate() {
        let at = format!("{path}.portMappings[{j}]");
        if mapping.container_port_range.is_some() {
            return Err(client(format!(
                "Flotilla does not support '{at}.containerPortRange' yet."
            )));
        }
        let port = mapping
            .container_port
            .ok_or_else(|| client(format!("{at}.containerPort is required.")))?;
        if !(1..=65535).contains(&port) {
            return Err(client(format!(
                "{at}.containerPort must be between 1 and 65535."
            )));
        }
        if mapping.host_port.is_some_and(|h| !(0..=65535).contains(&h)) {
            return Err(client(format!(
                "{at}.hostPort must be between 0 and 65535."
            )));
        }
        match network_mode {
            NetworkMode::Host | NetworkMode::Awsvpc => {
                if mapping.host_port.is_some_and(|h| h != 0 && h != port) {
                    return Err(client(format!(
                        "{at}: in the {} network mode hostPort must equal containerPort.",
                        network_mode.as_str()
                    )));
                }
                mapping.host_port = Some(port);
            }
            _ => {
                mapping.host_port.get_or_insert(0);
            }
        }
        mapping.protocol.get_or_insert(TransportProtocol::Tcp);
        if let Some(app) = &mapping.app_protocol
            && !["http", "http2", "grpc"].contains(&app.as_str())
        {
            return Err(client(format!(
                "Invalid {at}.appProtocol '{app}'; accepted: http, http2, grpc."
            )));
        }
        if let Some(mapping_name) = &mapping.name
            && !mapping_names.insert(mapping_name.clone())
        {
            return Err(client(format!("{at}.name '{mapping_name}' is used twice.")));
        }
    }
    if let Some(check) = &mut c.health_check {
        let at = format!("{path}.healthCheck");
        match check.command.first().map(String::as_str) {
            Some("CMD" | "CMD-SHELL") if check.command.len() > 1 => {}
            Some("NONE") => {}
            _ => {
                return Err(client(format!(
                    "{at}.command must start with CMD or CMD-SHELL followed by the command (or be [\"NONE\"])."
                )));
            }
        }
        for (field, value, range) in [
            ("interval", check.interval.get_or_insert(30), 5..=300),
            ("timeout", check.timeout.get_or_insert(5), 2..=60),
            ("retries", check.retries.get_or_insert(3), 1..=10),
        ] {
            if !range.contains(value) {
                return Err(client(format!(
                    "{at}.{field} must be between {} and {}.",
                    range.start(),
                    range.end()
                )));
            }
        }
        if check.start_period.is_some_and(|p| !(0..=300).contains(&p)) {
            return Err(client(format!(
                "{at}.startPeriod must be between 0 and 300."
            )));
        }
    }
    for (j, mount) in c.mount_points.iter().enumerate() {
        let source = mount.source_volume.as_deref().unwrap_or_default();
        if !volumes.contains(source) {
            return Err(client(format!(
                "{path}.mountPoints[{j}].sourceVolume '{source}' does not name a volume of the task definition."
            )));
        }
        if mount.container_path.as_deref().is_none_or(str::is_empty) {
            return Err(client(format!(
                "{path}.mountPoints[{j}].containerPath is required."
            )));
        }
    }
    for (j, from) in c.volumes_from.iter().enumerate() {
        let source = from.source_container.as_deref().unwrap_or_default();
        if source == name || !names.contains(&source) {
            return Err(client(format!(
                "{path}.volumesFrom[{j}].sourceContainer '{source}' does not name another container."
            )));
        }
    }
    c.essential.get_or_insert(true);
    Ok(c)
}

fn check_dependencies(containers: &[ContainerDefinition]) -> Result<(), ValidationError> {
    let by_name: BTreeMap<&str, &ContainerDefinition> =
        containers.iter().map(|c| (c.name(), c)).collect();
    for container in containers {
        for dependency in &container.depends_on {
            let target = dependency.container_name.as_str();
            let Some(other) = by_name.get(target) else {
                return Err(client(format!(
                    "Container '{}' depends on '{target}', which is not a container of this task definition.",
                    container.name()
                )));
            };
            if target == container.name() {
                return Err(client(format!(
                    "Container '{target}' cannot depend on itself."
                )));
            }
            match dependency.condition {
                ContainerCondition::Complete | ContainerCondition::Success
                    if other.is_essential() =>
                {
                    return Err(client(format!(
                        "Container '{}' depends on essential container '{target}' with condition {:?}; COMPLETE and SUCCESS can't be set on an essential container.",
                        container.name(),
                        dependency.condition
                    ).replace("Complete", "COMPLETE").replace("Success", "SUCCESS")));
                }
                ContainerCondition::Healthy if other.health_check.is_none() => {
                    return Err(client(format!(
                        "Container '{}' depends on '{target}' being HEALTHY, but '{target}' has no healthCheck.",
                        container.name()
                    )));
                }
                _ => {}
            }
        }
    }
    // Cycles: depth-first search with colours.
    fn visit<'a>(
        name: &'a str,
        by_name: &BTreeMap<&'a str, &'a ContainerDefinition>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Result<(), ValidationError> {
        match state.get(name) {
            Some(2) => return Ok(()),
            Some(1) => {
                path.push(name);
                return Err(client(format!(
                    "Container dependencies form a cycle: {}.",
                    path.join(" -> ")
                )));
            }
            _ => {}
        }
        state.insert(name, 1);
        path.push(name);
        if let Some(container) = by_name.get(name) {
            for dependency in &container.depends_on {
                visit(dependency.container_name.as_str(), by_name, state, path)?;
            }
        }
        path.pop();
        state.insert(name, 2);
        Ok(())
    }
    let mut state = BTreeMap::new();
    for name in by_name.keys() {
        visit(name, &by_name, &mut state, &mut Vec::new())?;
    }
    Ok(())
}

/// Checks RunTask/StartTask overrides against the definition they apply to.
pub fn validate_overrides(
    task_definition: &TaskDefinition,
    overrides: &TaskOverride,
) -> Result<(), ValidationError> {
    let invalid = |m: String| ValidationError {
        kind: ErrorKind::InvalidParameterException,
        message: m,
    };
    refuse(
        &overrides.inference_accelerator_overrides,
        "overrides.inferenceAcceleratorOverrides",
    )
    .map_err(|e| invalid(e.message))?;
    if let Some(cpu) = &overrides.cpu {
        parse_cpu_units("overrides.cpu", cpu).map_err(|e| invalid(e.message))?;
    }
    if let Some(memory) = &overrides.memory {
        parse_memory_mib("overrides.memory", memory).map_err(|e| invalid(e.message))?;
    }
    let mut seen = BTreeSet::new();
    for (i, o) in overrides.container_overrides.iter().enumerate() {
        let name = o.name.as_deref().unwrap_or_default();
        if task_definition.container(name).is_none() {
            return Err(invalid(format!(
                "overrides.containerOverrides[{i}].name '{name}' is not a container of {}.",
                task_definition.family_revision()
            )));
        }
        if !seen.insert(name) {
            return Err(invalid(format!("Container '{name}' is overridden twice.")));
        }
        refuse(
            &o.environment_files,
            &format!("overrides.containerOverrides[{i}].environmentFiles"),
        )
        .map_err(|e| invalid(e.message))?;
        if o.cpu.is_some_and(|c| c < 0) {
            return Err(invalid(format!(
                "overrides.containerOverrides[{i}].cpu must not be negative."
            )));
        }
        for (field, value) in [
            ("memory", o.memory),
            ("memoryReservation", o.memory_reservation),
        ] {
            if value.is_some_and(|m| m < CONTAINER_MEMORY_MIB_MIN) {
                return Err(invalid(format!(
                    "overrides.containerOverrides[{i}].{field} must be at least {CONTAINER_MEMORY_MIB_MIN} MiB."
                )));
            }
        }
        if let (Some(hard), Some(soft)) = (o.memory, o.memory_reservation)
            && soft > hard
        {
            return Err(invalid(format!(
                "overrides.containerOverrides[{i}]: memoryReservation must not exceed memory."
            )));
        }
    }
    Ok(())
}

/// What one task of this definition (with overrides) reserves on a host.
pub fn task_demand(task_definition: &TaskDefinition, overrides: &TaskOverride) -> Demand {
    let spec = &task_definition.spec;
    let mut demand = Demand::default();
    let mut cpu_sum = 0i64;
    let mut memory_sum = 0i64;
    for container in &spec.container_definitions {
        let o = overrides.container(container.name());
        cpu_sum += i64::from(o.and_then(|o| o.cpu).unwrap_or(container.cpu));
        let hard = o.and_then(|o| o.memory).or(container.memory);
        let soft = o
            .and_then(|o| o.memory_reservation)
            .or(container.memory_reservation);
        memory_sum += i64::from(hard.or(soft).unwrap_or(0));
        let gpus = o
            .filter(|o| !o.resource_requirements.is_empty())
            .map(|o| {
                o.resource_requirements
                    .iter()
                    .filter(|r| r.kind == "GPU")
                    .filter_map(|r| r.value.parse::<u32>().ok())
                    .sum()
            })
            .unwrap_or_else(|| container.gpu_count());
        demand.gpus += gpus;
        if spec.network_mode != NetworkMode::Awsvpc {
            for mapping in &container.port_mappings {
                let host = mapping.host_port.unwrap_or(0);
                if host > 0 {
                    let port = host as u16;
                    match mapping.protocol.unwrap_or_default() {
                        TransportProtocol::Tcp => demand.ports_tcp.insert(port),
                        TransportProtocol::Udp => demand.ports_udp.insert(port),
                    };
                }
            }
        }
    }
    let task_cpu = overrides
        .cpu
        .as_deref()
        .or(spec.cpu.as_deref())
        .and_then(|v| parse_cpu_units("cpu", v).ok());
    let task_memory = overrides
        .memory
        .as_deref()
        .or(spec.memory.as_deref())
        .and_then(|v| parse_memory_mib("memory", v).ok());
    demand.cpu = task_cpu.unwrap_or(cpu_sum);
    demand.memory_mib = task_memory.unwrap_or(memory_sum);
    demand
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> TaskDefinitionInput {
        serde_json::from_value(json).expect("shape")
    }

    /// Registers `json`; `Err(fragment)` expects a ClientException containing it.
    fn check(
        json: serde_json::Value,
        expected: Result<(), &str>,
    ) -> Option<NormalizedTaskDefinition> {
        let result = normalize_task_definition(input(json.clone()));
        match (result, expected) {
            (Ok(normalized), Ok(())) => Some(normalized),
            (Err(error), Err(fragment)) => {
                assert_eq!(error.kind, ErrorKind::ClientException);
                assert!(
                    error.message.contains(fragment),
                    "{json}: '{}' lacks '{fragment}'",
                    error.message
                );
                None
            }
            (Ok(_), Err(fragment)) => {
                panic!("{json}: accepted, expected an error with '{fragment}'")
            }
            (Err(error), Ok(())) => panic!("{json}: refused: {}", error.message),
        }
    }

    fn app(extra: serde_json::Value) -> serde_json::Value {
        let mut base = serde_json::json!({"name": "app", "image": "busybox", "memory": 128});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        base
    }

    fn td(containers: Vec<serde_json::Value>) -> serde_json::Value {
        serde_json::json!({"family": "f", "containerDefinitions": containers})
    }

    #[test]
    fn rules_table() {
        use serde_json::json;
        let rows: Vec<(serde_json::Value, Result<(), &str>)> = vec![
            (td(vec![app(json!({}))]), Ok(())),
            (
                json!({"family": "bad name", "containerDefinitions": [app(json!({}))]}),
                Err("Invalid family"),
            ),
            (
                json!({"family": "f", "containerDefinitions": []}),
                Err("1 to 10"),
            ),
            (td(vec![app(json!({})), app(json!({}))]), Err("unique")),
            (td(vec![app(json!({"essential": false}))]), Err("essential")),
            (
                td(vec![json!({"name": "a", "image": "busybox"})]),
                Err("At least one of 'memory' or 'memoryReservation'"),
            ),
            (
                td(vec![app(json!({"memoryReservation": 256}))]),
                Err("less than or equal"),
            ),
            (td(vec![app(json!({"memory": 4}))]), Err("at least 6")),
            (td(vec![app(json!({"image": ""}))]), Err("image")),
            (
                td(vec![app(json!({"portMappings": [{"containerPort": 0}]}))]),
                Err("containerPort"),
            ),
            (
                td(vec![app(
                    json!({"portMappings": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 8080}]}),
                )]),
                Err("more than once"),
            ),
            (
                td(vec![app(json!({"healthCheck": {"command": ["ls"]}}))]),
                Err("CMD"),
            ),
            (
                td(vec![app(
                    json!({"healthCheck": {"command": ["CMD", "true"], "interval": 1}}),
                )]),
                Err("interval"),
            ),
            (
                td(vec![app(
                    json!({"dependsOn": [{"containerName": "ghost", "condition": "START"}]}),
                )]),
                Err("not a container"),
            ),
            (
                td(vec![
                    app(
                        json!({"name": "a", "dependsOn": [{"containerName": "b", "condition": "START"}]}),
                    ),
                    app(
                        json!({"name": "b", "dependsOn": [{"containerName": "a", "condition": "START"}]}),
                    ),
                ]),
                Err("cycle"),
            ),
            (
                td(vec![
                    app(
                        json!({"name": "a", "dependsOn": [{"containerName": "b", "condition": "COMPLETE"}]}),
                    ),
                    app(json!({"name": "b"})),
                ]),
                Err("essential container"),
            ),
            (
                td(vec![
                    app(
                        json!({"name": "a", "dependsOn": [{"containerName": "b", "condition": "HEALTHY"}]}),
                    ),
                    app(json!({"name": "b"})),
                ]),
                Err("no healthCheck"),
            ),
            (
                td(vec![app(
                    json!({"secrets": [{"name": "x", "valueFrom": "y"}]}),
                )]),
                Err("does not support 'containerDefinitions[0].secrets'"),
            ),
            (
                td(vec![app(
                    json!({"ulimits": [{"name": "bogus", "softLimit": 1, "hardLimit": 1}]}),
                )]),
                Err("ulimits"),
            ),
            (
                td(vec![app(
                    json!({"logConfiguration": {"logDriver": "carrier-pigeon"}}),
                )]),
                Err("logDriver"),
            ),
            (td(vec![app(json!({"links": ["ghost"]}))]), Err("links")),
            (
                td(vec![app(
                    json!({"mountPoints": [{"sourceVolume": "v", "containerPath": "/d"}]}),
                )]),
                Err("sourceVolume"),
            ),
            (
                td(vec![app(json!({"stopTimeout": 500}))]),
                Err("stopTimeout"),
            ),
            (
                json!({"family": "f", "networkMode": "host", "containerDefinitions": [app(json!({"portMappings": [{"containerPort": 80, "hostPort": 81}]}))]}),
                Err("hostPort must equal"),
            ),
            (
                json!({"family": "f", "cpu": "64", "containerDefinitions": [app(json!({}))]}),
                Err("between 128"),
            ),
            (
                json!({"family": "f", "cpu": "256", "containerDefinitions": [app(json!({"cpu": 512}))]}),
                Err("more than the task"),
            ),
            (
                json!({"family": "f", "requiresCompatibilities": ["FARGATE"], "containerDefinitions": [app(json!({}))]}),
                Err("awsvpc"),
            ),
            (
                json!({"family": "f", "requiresCompatibilities": ["FARGATE"], "networkMode": "awsvpc", "cpu": "256", "memory": "4096", "containerDefinitions": [app(json!({}))]}),
                Err("No Fargate configuration exists for given values: 256 CPU, 4096 memory"),
            ),
            (
                json!({"family": "f", "requiresCompatibilities": ["FARGATE"], "networkMode": "awsvpc", "cpu": "256", "memory": "512", "containerDefinitions": [app(json!({"privileged": true}))]}),
                Err("privileged"),
            ),
            (
                json!({"family": "f", "requiresCompatibilities": ["FARGATE"], "networkMode": "awsvpc", "cpu": ".25 vCPU", "memory": "0.5GB", "containerDefinitions": [app(json!({}))]}),
                Ok(()),
            ),
            (
                json!({"family": "f", "placementConstraints": [{"type": "distinctInstance"}], "containerDefinitions": [app(json!({}))]}),
                Err("memberOf"),
            ),
        ];
        for (json, expected) in rows {
            check(json, expected);
        }
    }

    #[test]
    fn normalisation_fills_ecs_defaults() {
        let normalized = check(
            td(vec![app(serde_json::json!({"portMappings": [{"containerPort": 80}], "healthCheck": {"command": ["CMD-SHELL", "true"]}}))]),
            Ok(()),
        )
        .unwrap();
        let c = &normalized.spec.container_definitions[0];
        assert_eq!(c.essential, Some(true));
        assert_eq!(c.port_mappings[0].host_port, Some(0));
        assert_eq!(c.port_mappings[0].protocol, Some(TransportProtocol::Tcp));
        let check_ = c.health_check.as_ref().unwrap();
        assert_eq!(
            (check_.interval, check_.timeout, check_.retries),
            (Some(30), Some(5), Some(3))
        );
        assert_eq!(normalized.spec.network_mode, NetworkMode::Bridge);
        assert_eq!(
            normalized.compatibilities,
            vec![Compatibility::Ec2, Compatibility::External]
        );
        // Normalising again changes nothing.
        let again = normalize_task_definition(TaskDefinitionInput {
            family: "f".into(),
            container_definitions: normalized.spec.container_definitions.clone(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            again.spec.container_definitions,
            normalized.spec.container_definitions
        );
    }

    #[test]
    fn fargate_table_edges() {
        for (cpu, memory, ok) in [
            (256, 512, true),
            (256, 4096, false),
            (512, 1024, true),
            (2048, 16384, true),
            (8192, 16384, true),
            (8192, 17408, false),
            (16384, 122880, true),
            (16384, 32768, true),
            (300, 512, false),
        ] {
            assert_eq!(fargate_size_is_valid(cpu, memory), ok, "{cpu}/{memory}");
        }
    }

    #[test]
    fn cpu_and_memory_strings() {
        assert_eq!(parse_cpu_units("cpu", "1 vCPU").unwrap(), 1024);
        assert_eq!(parse_cpu_units("cpu", "0.25 vcpu").unwrap(), 256);
        assert_eq!(parse_cpu_units("cpu", "512").unwrap(), 512);
        assert!(parse_cpu_units("cpu", "lots").is_err());
        assert_eq!(parse_memory_mib("memory", "1GB").unwrap(), 1024);
        assert_eq!(parse_memory_mib("memory", "2 gb").unwrap(), 2048);
        assert_eq!(parse_memory_mib("memory", "512").unwrap(), 512);
        assert!(parse_memory_mib("memory", "-1").is_err());
    }

    fn registered(json: serde_json::Value) -> TaskDefinition {
        let normalized = normalize_task_definition(input(json)).unwrap();
        TaskDefinition {
            task_definition_arn: "arn".into(),
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

    #[test]
    fn demand_counts_fixed_ports_and_applies_overrides() {
        use serde_json::json;
        let definition = registered(td(vec![
            app(
                json!({"name": "a", "cpu": 100, "portMappings": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]}),
            ),
            app(
                json!({"name": "b", "cpu": 50, "memory": null, "memoryReservation": 64, "portMappings": [{"containerPort": 53, "hostPort": 53, "protocol": "udp"}]}),
            ),
        ]));
        let demand = task_demand(&definition, &TaskOverride::default());
        assert_eq!((demand.cpu, demand.memory_mib), (150, 128 + 64));
        assert_eq!(demand.ports_tcp, [8080].into());
        assert_eq!(demand.ports_udp, [53].into());
        let overrides: TaskOverride = serde_json::from_value(
            json!({"containerOverrides": [{"name": "a", "cpu": 10, "memory": 32}]}),
        )
        .unwrap();
        validate_overrides(&definition, &overrides).unwrap();
        let demand = task_demand(&definition, &overrides);
        assert_eq!((demand.cpu, demand.memory_mib), (60, 32 + 64));
        let task_level: TaskOverride =
            serde_json::from_value(json!({"cpu": "1 vCPU", "memory": "1GB"})).unwrap();
        let demand = task_demand(&definition, &task_level);
        assert_eq!((demand.cpu, demand.memory_mib), (1024, 1024));
        let bad: TaskOverride =
            serde_json::from_value(json!({"containerOverrides": [{"name": "ghost"}]})).unwrap();
        assert_eq!(
            validate_overrides(&definition, &bad).unwrap_err().kind,
            ErrorKind::InvalidParameterException
        );
    }
}
