//! What the agent says about its host: capacity, a stable identity kept in the data
//! directory, and the built-in attributes placement constraints can match.

use std::io::Read;
use std::path::Path;

use flotilla_model::Attribute;
use serde::{Deserialize, Serialize};

/// ECS counts 1024 CPU units per core.
pub const CPU_UNITS_PER_CORE: i64 = 1024;
/// Host ports ECS keeps for the host by default (SSH, Docker, the ECS agent).
pub const RESERVED_PORTS_TCP_DEFAULT: [u16; 5] = [22, 2375, 2376, 51678, 51679];
const STATE_FILE: &str = "agent-state.json";

/// `MemTotal` of `/proc/meminfo`, in MiB.
pub fn parse_mem_total_mib(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let value: i64 = parts.next()?.parse().ok()?;
    let bytes = match parts.next().unwrap_or("kB") {
        "kB" => value * 1024,
        "mB" | "MB" => value * 1024 * 1024,
        _ => value,
    };
    Some(bytes / (1024 * 1024))
}

/// Memory the host offers to tasks: its total less `reserve_mib`, never negative.
pub fn memory_mib(meminfo: &str, reserve_mib: i64) -> i64 {
    parse_mem_total_mib(meminfo).map_or(0, |total| (total - reserve_mib).max(0))
}

/// CPU units of a host with `cores` cores.
pub fn cpu_units(cores: usize) -> i64 {
    cores as i64 * CPU_UNITS_PER_CORE
}

/// ECS's name of a CPU architecture (`std::env::consts::ARCH` form in).
pub fn cpu_architecture(arch: &str) -> String {
    match arch {
        "aarch64" => "arm64".to_owned(),
        other => other.to_owned(),
    }
}

fn attribute(name: &str, value: Option<&str>) -> Attribute {
    Attribute {
        name: name.to_owned(),
        value: value.map(str::to_owned),
        target_type: None,
        target_id: None,
    }
}

/// The `ecs.*` attributes and capabilities of this host, then `custom` ones (which replace
/// built-in ones of the same name), sorted by name.
///
/// ECS agents also advertise `com.amazonaws.ecs.capability.*` attributes (Docker API
/// versions, log drivers); they are left out while the control plane counts every name
/// outside `ecs.*` against the limit of 10 custom attributes and does not check a task
/// definition's `requiresAttributes`.
pub fn attributes(arch: &str, zone: Option<&str>, custom: &[(String, String)]) -> Vec<Attribute> {
    let mut attributes = vec![
        attribute("ecs.os-type", Some("linux")),
        attribute("ecs.os-family", Some("LINUX")),
        attribute("ecs.cpu-architecture", Some(&cpu_architecture(arch))),
        attribute("ecs.capability.container-health-check", None),
        attribute("ecs.capability.container-ordering", None),
    ];
    if let Some(zone) = zone {
        attributes.push(attribute("ecs.availability-zone", Some(zone)));
    }
    for (name, value) in custom {
        attributes.retain(|a| a.name != *name);
        attributes.push(attribute(name, Some(value)));
    }
    attributes.sort();
    attributes
}

/// An instance id from random bytes: `i-` and 17 hex digits.
pub fn instance_id_from(bytes: &[u8; 9]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("i-{}", &hex[..17])
}

fn random_instance_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 9];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(instance_id_from(&bytes))
}

/// What the agent keeps across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    pub ec2_instance_id: String,
    /// The cluster the ARN below belongs to.
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub container_instance_arn: Option<String>,
}

/// Reads the state file of `data_dir`, creating the directory and a new instance id on
/// first start.
pub fn load_state(data_dir: &Path) -> std::io::Result<AgentState> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let state = AgentState {
                ec2_instance_id: random_instance_id()?,
                ..Default::default()
            };
            save_state(data_dir, &state)?;
            Ok(state)
        }
        Err(e) => Err(e),
    }
}

/// Writes the state file atomically (write then rename).
pub fn save_state(data_dir: &Path, state: &AgentState) -> std::io::Result<()> {
    let path = data_dir.join(STATE_FILE);
    let temporary = data_dir.join(format!("{STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, &path)
}

/// The host's name, if the kernel says.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_from_meminfo() {
        let meminfo = "MemTotal:       24684544 kB\nMemFree:        23000000 kB\n";
        assert_eq!(parse_mem_total_mib(meminfo), Some(24106));
        assert_eq!(memory_mib(meminfo, 256), 23850);
        assert_eq!(memory_mib(meminfo, 1_000_000), 0);
        assert_eq!(memory_mib("garbage", 0), 0);
    }

    #[test]
    fn cpu_and_architecture() {
        assert_eq!(cpu_units(2), 2048);
        assert_eq!(cpu_architecture("x86_64"), "x86_64");
        assert_eq!(cpu_architecture("aarch64"), "arm64");
    }

    #[test]
    fn instance_ids_have_ecs_shape() {
        let id = instance_id_from(&[0xab; 9]);
        assert_eq!(id, "i-ababababababababa");
        assert_eq!(id.len(), 19);
    }

    #[test]
    fn builtin_and_custom_attributes() {
        let custom = vec![
            ("stack".to_owned(), "blue".to_owned()),
            ("ecs.os-family".to_owned(), "X".to_owned()),
        ];
        let attributes = attributes("aarch64", Some("zone-a"), &custom);
        let value = |name: &str| {
            attributes
                .iter()
                .find(|a| a.name == name)
                .map(|a| a.value.clone())
        };
        assert_eq!(value("ecs.cpu-architecture"), Some(Some("arm64".into())));
        assert_eq!(value("ecs.availability-zone"), Some(Some("zone-a".into())));
        assert_eq!(value("ecs.os-type"), Some(Some("linux".into())));
        assert_eq!(value("ecs.os-family"), Some(Some("X".into())));
        assert_eq!(value("stack"), Some(Some("blue".into())));
        assert_eq!(value("ecs.capability.container-ordering"), Some(None));
        assert!(
            attributes
                .iter()
                .all(|a| a.name.starts_with("ecs.") || a.name == "stack")
        );
        assert!(attributes.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn state_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("flotilla-agent-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut state = load_state(&dir).unwrap();
        assert!(state.ec2_instance_id.starts_with("i-"));
        state.container_instance_arn = Some("arn:x".into());
        save_state(&dir, &state).unwrap();
        assert_eq!(load_state(&dir).unwrap(), state);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
