//! awsvpc on one Docker Engine: a bridge network per cluster (`flotilla-<cluster>`, its
//! subnet chosen by Docker), and per task a sandbox container that owns the task's network
//! namespace and address; the task's containers join it (`network_mode: container:<sandbox>`)
//! and share its localhost.
//!
//! The sandbox runs `flotilla/pause:1`, an image Flotilla makes itself on first use (no
//! registry, no toolchain): a 189-byte static x86-64 ELF, [`pause_elf`], that blocks SIGINT
//! and SIGTERM, waits for one of them and exits 0. As PID 1 it must do so explicitly: the
//! kernel drops default-action signals to a namespace's init.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, Ipam, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    InspectNetworkOptions, ListNetworksOptionsBuilder, StartContainerOptions, StatsOptionsBuilder,
};
use flotilla_agent::runtime::{ClusterNetwork, RuntimeError, SandboxSpec, labels};
use flotilla_model::task::TaskNetwork;
use futures::StreamExt;

use crate::{DockerRuntime, server_error};

/// Held while a cluster network is looked up or created, by every runtime of the process.
static NETWORK_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Set once the pause image is known to be present (it is never removed by Flotilla; a
/// sandbox create that finds it missing clears this and the next attempt imports it).
static PAUSE_IMAGE_PRESENT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
/// Cluster networks found or made, by cluster: a sandbox needs no look-up after the first.
static NETWORKS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, ClusterNetwork>>> =
    std::sync::LazyLock::new(Default::default);

fn known_network(cluster: &str) -> Option<ClusterNetwork> {
    NETWORKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(cluster)
        .cloned()
}

/// The sandbox image, made by [`DockerRuntime::ensure_pause_image`].
pub const PAUSE_IMAGE: &str = "flotilla/pause:1";
const PAUSE_REPOSITORY: &str = "flotilla/pause";
const PAUSE_TAG: &str = "1";
const PAUSE_PATH: &str = "/pause";
/// Where the ELF is loaded (the conventional base of x86-64 executables).
const LOAD_ADDRESS: u64 = 0x40_0000;
const ELF_HEADER_BYTES: usize = 64;
const PROGRAM_HEADER_BYTES: usize = 56;

/// The pause program's machine code (x86-64, position-independent):
///
/// ```text
///   mov eax, 14; xor edi, edi; lea rsi, [rip+set]; xor edx, edx; mov r10d, 8; syscall
///                                         ; rt_sigprocmask(SIG_BLOCK, &set, NULL, 8)
/// wait:
///   mov eax, 128; lea rdi, [rip+set]; xor esi, esi; xor edx, edx; mov r10d, 8; syscall
///                                         ; rt_sigtimedwait(&set, NULL, NULL, 8)
///   test eax, eax; jle wait               ; interrupted: wait again
///   mov eax, 231; xor edi, edi; syscall   ; exit_group(0)
/// set:
///   .quad (1 << (SIGINT - 1)) | (1 << (SIGTERM - 1))
/// ```
const PAUSE_CODE: [u8; 69] = [
    0xb8, 0x0e, 0x00, 0x00, 0x00, 0x31, 0xff, 0x48, 0x8d, 0x35, 0x2f, 0x00, 0x00, 0x00, 0x31, 0xd2,
    0x41, 0xba, 0x08, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0x80, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x3d,
    0x19, 0x00, 0x00, 0x00, 0x31, 0xf6, 0x31, 0xd2, 0x41, 0xba, 0x08, 0x00, 0x00, 0x00, 0x0f, 0x05,
    0x85, 0xc0, 0x7e, 0xe4, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05, 0x02, 0x40, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00,
];

/// The pause program as a static ELF executable: an ELF header, one loadable segment
/// (read + execute) covering the whole file, and [`PAUSE_CODE`] right after the headers.
pub fn pause_elf() -> Vec<u8> {
    let code_offset = ELF_HEADER_BYTES + PROGRAM_HEADER_BYTES;
    let size = (code_offset + PAUSE_CODE.len()) as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI, padding.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: executable
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(LOAD_ADDRESS + code_offset as u64).to_le_bytes()); // e_entry
    elf.extend_from_slice(&(ELF_HEADER_BYTES as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(ELF_HEADER_BYTES as u16).to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&(PROGRAM_HEADER_BYTES as u16).to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    // The one program header: PT_LOAD, R+X, the whole file at LOAD_ADDRESS.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R + X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&size.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&size.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(&PAUSE_CODE);
    elf
}

/// A tar archive (ustar) holding one regular file, as `docker import` takes a root fs.
fn tar_of_one_file(name: &str, mode: u32, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let mut put = |offset: usize, bytes: &[u8]| {
        header[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, name.as_bytes());
    put(100, format!("{mode:07o}\0").as_bytes());
    put(108, b"0000000\0"); // uid
    put(116, b"0000000\0"); // gid
    put(124, format!("{:011o}\0", content.len()).as_bytes());
    put(136, b"00000000000\0"); // mtime
    put(148, b"        "); // checksum, counted as spaces
    put(156, b"0"); // regular file
    put(257, b"ustar\0");
    put(263, b"00");
    let checksum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0; 1024]);
    tar
}

/// The Docker network of a cluster.
pub fn cluster_network_name(cluster: &str) -> String {
    let safe: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("flotilla-{safe}")
}

impl DockerRuntime {
    /// Imports [`PAUSE_IMAGE`] from [`pause_elf`] unless Docker has it.
    pub async fn ensure_pause_image(&self) -> Result<(), RuntimeError> {
        if PAUSE_IMAGE_PRESENT.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        if self.docker.inspect_image(PAUSE_IMAGE).await.is_ok() {
            PAUSE_IMAGE_PRESENT.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        let options = CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo(PAUSE_REPOSITORY)
            .tag(PAUSE_TAG)
            .build();
        let tar = tar_of_one_file(PAUSE_PATH.trim_start_matches('/'), 0o755, &pause_elf());
        let mut progress =
            self.docker
                .create_image(Some(options), Some(bollard::body_full(tar.into())), None);
        while let Some(step) = progress.next().await {
            step.map_err(server_error)?;
        }
        tracing::info!(image = PAUSE_IMAGE, "made the sandbox image");
        PAUSE_IMAGE_PRESENT.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The ids of the networks named exactly `name`, oldest-created id order not assumed:
    /// sorted by id, so every process picks the same one.
    async fn networks_named(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        let options = ListNetworksOptionsBuilder::new()
            .filters(&HashMap::from([("name".to_owned(), vec![name.to_owned()])]))
            .build();
        let mut ids: Vec<String> = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(server_error)?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub(crate) async fn cluster_network(
        &self,
        cluster: &str,
    ) -> Result<ClusterNetwork, RuntimeError> {
        if let Some(network) = known_network(cluster) {
            return Ok(network);
        }
        let name = cluster_network_name(cluster);
        // Docker before API 1.44 lets two networks share a name: create one at a time in
        // this process, and should another process have made a twin meanwhile, every
        // process uses the one with the lowest id and the others are removed.
        let _creating = NETWORK_LOCK.lock().await;
        let mut ids = self.networks_named(&name).await?;
        if ids.is_empty() {
            let request = NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".to_owned()),
                attachable: Some(true),
                labels: Some(HashMap::from([
                    (labels::MANAGED.to_owned(), "true".to_owned()),
                    (labels::CLUSTER.to_owned(), cluster.to_owned()),
                ])),
                ipam: Some(Ipam::default()),
                ..Default::default()
            };
            self.docker
                .create_network(request)
                .await
                .map_err(server_error)?;
            tracing::info!(network = %name, "created the cluster network");
            ids = self.networks_named(&name).await?;
        }
        let Some(id) = ids.first().cloned() else {
            return Err(RuntimeError::Refused(format!("network {name} vanished")));
        };
        for twin in &ids[1..] {
            // In use by someone's containers: it stays, unused by Flotilla from now on.
            let _ = self.docker.remove_network(twin).await;
        }
        let inspected = self
            .docker
            .inspect_network(&id, None::<InspectNetworkOptions>)
            .await
            .map_err(server_error)?;
        let config = inspected
            .ipam
            .and_then(|i| i.config)
            .and_then(|c| {
                c.into_iter()
                    .find(|c| c.subnet.as_deref().is_some_and(|s| s.contains('.')))
            })
            .ok_or_else(|| RuntimeError::Refused(format!("network {name} has no IPv4 subnet")))?;
        let network = ClusterNetwork {
            name,
            id,
            subnet_cidr: config.subnet.unwrap_or_default(),
            gateway: config.gateway.unwrap_or_default(),
        };
        NETWORKS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cluster.to_owned(), network.clone());
        Ok(network)
    }

    pub(crate) async fn sandbox(&self, spec: &SandboxSpec) -> Result<TaskNetwork, RuntimeError> {
        let network = self.cluster_network(&spec.cluster).await?;
        self.ensure_pause_image().await?;
        let body = ContainerCreateBody {
            image: Some(PAUSE_IMAGE.to_owned()),
            cmd: Some(vec![PAUSE_PATH.to_owned()]),
            labels: Some(spec.labels.clone().into_iter().collect()),
            host_config: Some(HostConfig {
                network_mode: Some(network.id.clone()),
                runtime: spec.oci_runtime.clone(),
                // The sandbox does nothing: it needs no privileges and hardly any memory.
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
                memory: Some(16 * 1024 * 1024),
                pids_limit: Some(8),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = match self.docker.create_container(Some(options), body).await {
            Ok(_) => true,
            // Made before (an earlier attempt or agent): use it.
            Err(error) => match server_error(error) {
                RuntimeError::Conflict(_) => false,
                RuntimeError::NotFound(message) => {
                    // The image or the network went away (docker rmi, docker network rm):
                    // look again, and make them again, next time.
                    PAUSE_IMAGE_PRESENT.store(false, std::sync::atomic::Ordering::Relaxed);
                    NETWORKS
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&spec.cluster);
                    return Err(RuntimeError::Unavailable(message));
                }
                other => return Err(other),
            },
        };
        let running = !created
            && self
                .docker
                .inspect_container(&spec.name, None::<InspectContainerOptions>)
                .await
                .map_err(server_error)?
                .state
                .and_then(|s| s.running)
                .unwrap_or(false);
        if !running {
            self.docker
                .start_container(&spec.name, None::<StartContainerOptions>)
                .await
                .map_err(server_error)?;
        }
        let inspect = self
            .docker
            .inspect_container(&spec.name, None::<InspectContainerOptions>)
            .await
            .map_err(server_error)?;
        let endpoint = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&network.name))
            .ok_or_else(|| {
                RuntimeError::Refused(format!(
                    "the sandbox {} is not on network {}",
                    spec.name, network.name
                ))
            })?;
        Ok(TaskNetwork {
            private_ipv4_address: endpoint.ip_address.unwrap_or_default(),
            mac_address: endpoint.mac_address.unwrap_or_default(),
            subnet_cidr: network.subnet_cidr,
            gateway_ipv4_address: network.gateway,
        })
    }

    pub(crate) async fn one_stats(&self, id: &str) -> Result<serde_json::Value, RuntimeError> {
        let options = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let mut samples = self.docker.stats(id, Some(options));
        match samples.next().await {
            Some(Ok(sample)) => serde_json::to_value(sample)
                .map_err(|e| RuntimeError::Refused(format!("stats of {id}: {e}"))),
            Some(Err(error)) => Err(server_error(error)),
            None => Err(RuntimeError::NotFound(format!("no stats of {id}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_is_a_small_static_elf() {
        let elf = pause_elf();
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf.len(), 64 + 56 + PAUSE_CODE.len());
        let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
        assert_eq!(entry, LOAD_ADDRESS + 120);
    }

    /// The program runs on this host, waits, and exits 0 on SIGTERM.
    #[test]
    fn pause_waits_for_sigterm_and_exits_cleanly() {
        use std::os::unix::fs::PermissionsExt;
        if std::env::consts::ARCH != "x86_64" {
            return;
        }
        let dir = tempfile_dir();
        let path = dir.join("pause");
        std::fs::write(&path, pause_elf()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = std::process::Command::new(&path).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            child.try_wait().unwrap().is_none(),
            "pause must keep running"
        );
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("flotilla-pause-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn tar_headers_are_ustar_with_a_valid_checksum() {
        let tar = tar_of_one_file("pause", 0o755, b"abc");
        assert_eq!(tar.len(), 512 + 512 + 1024);
        assert_eq!(&tar[257..263], b"ustar\0");
        let mut header = tar[..512].to_vec();
        let stored =
            u32::from_str_radix(std::str::from_utf8(&header[148..154]).unwrap(), 8).unwrap();
        header[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, header.iter().map(|b| u32::from(*b)).sum::<u32>());
    }
}
