//! `flotilla bench registry`: push and pull throughput of a several-layer image (1 GiB by
//! default) to Flotilla's registry and to the CNCF distribution registry (Debian's
//! `docker-registry`) on the same machine, with skopeo copying an OCI layout both ways, and
//! the raw disk write rate for scale.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest as _, Sha256};

const MIB: f64 = 1024.0 * 1024.0;

/// Writes an OCI layout of `layers` random layers of `layer_mib` MiB; returns bytes written.
fn write_layout(dir: &Path, layers: usize, layer_mib: usize) -> anyhow::Result<u64> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let mut total = 0u64;
    let mut put = |bytes: &[u8]| -> anyhow::Result<(String, usize)> {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes)?;
        total += bytes.len() as u64;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let mut descriptors = Vec::new();
    let mut rng = rand::rng();
    let mut layer = vec![0u8; layer_mib * 1024 * 1024];
    for _ in 0..layers {
        rng.fill_bytes(&mut layer);
        let (digest, size) = put(&layer)?;
        descriptors.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size}));
    }
    let config = serde_json::to_vec(
        &json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": descriptors.iter().map(|d| d["digest"].clone()).collect::<Vec<_>>()}}),
    )?;
    let (config_digest, config_size) = put(&config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descriptors
    }))?;
    let (manifest_digest, manifest_size) = put(&manifest)?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))?,
    )?;
    Ok(total)
}

/// The disk's sequential write rate: 1 GiB in 8 MiB writes, then fsync.
fn disk_write_mib_per_s(dir: &Path, bytes: u64) -> anyhow::Result<f64> {
    let path = dir.join("disk-probe");
    let mut buffer = vec![0u8; 8 * 1024 * 1024];
    rand::rng().fill_bytes(&mut buffer);
    let started = Instant::now();
    let mut file = std::fs::File::create(&path)?;
    let mut written = 0u64;
    while written < bytes {
        file.write_all(&buffer)?;
        written += buffer.len() as u64;
    }
    file.sync_all()?;
    let elapsed = started.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(written as f64 / MIB / elapsed)
}

fn skopeo_copy(from: &str, to: &str, creds: Option<&str>, push: bool) -> anyhow::Result<Duration> {
    let mut command = Command::new("skopeo");
    // Without `--preserve-digests` skopeo gzips the uncompressed layers on the way to a
    // registry (and to an OCI layout), so the figures would measure its compressor on random
    // data, not the registry; with it, the layer bytes go over the wire unchanged both ways.
    command.arg("copy").arg("--quiet").arg("--preserve-digests");
    if push {
        command.arg("--dest-tls-verify=false");
        if let Some(creds) = creds {
            command.args(["--dest-creds", creds]);
        }
    } else {
        command.arg("--src-tls-verify=false");
        if let Some(creds) = creds {
            command.args(["--src-creds", creds]);
        }
    }
    let started = Instant::now();
    let output = command
        .arg(from)
        .arg(to)
        .output()
        .context("cannot run skopeo (apt-get install skopeo)")?;
    if !output.status.success() {
        bail!(
            "skopeo copy {from} {to}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(started.elapsed())
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_listening(address: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nothing listens on {address}")
}

pub async fn bench_registry(layers: usize, layer_mib: usize) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let layout = work.path().join("layout");
    println!(
        "writing a {layers}-layer image of {} MiB ...",
        layers * layer_mib
    );
    let bytes = write_layout(&layout, layers, layer_mib)?;
    let mib = bytes as f64 / MIB;
    let disk = disk_write_mib_per_s(work.path(), bytes)?;
    let source = format!("oci:{}:bench", layout.display());
    let mut rows = Vec::new();

    // Flotilla: an in-process server with its registry on disk.
    let data = work.path().join("flotilla");
    std::fs::create_dir_all(&data)?;
    let store: Arc<dyn flotilla_store::Store> =
        Arc::new(flotilla_store::RedbStore::open(&data.join("state.redb"))?);
    let credentials = flotilla_api::sigv4::Credentials::new(
        "FLOTBENCHREGISTRY001",
        "bench-secret-bench-secret-bench-secret00",
    );
    let mut config =
        flotilla_server::ServerConfig::new("127.0.0.1:0".parse()?, credentials.clone());
    config.registry = flotilla_registry::RegistryConfig::on_disk(&data);
    let server = flotilla_server::start(config, store).await?;
    let endpoint = server.endpoint();
    let client = flotilla_agent::ServerClient::new(
        &endpoint,
        flotilla_agent::SigningIdentity {
            access_key_id: credentials.access_key_id.clone(),
            secret_access_key: credentials.secret_access_key.clone(),
            region: flotilla_server::DEFAULT_REGION.into(),
        },
    );
    let ecr = flotilla_api::ecr::ECR_TARGET_PREFIX;
    client
        .call::<_, serde_json::Value>(
            &format!("{ecr}.CreateRepository"),
            &json!({"repositoryName": "bench"}),
        )
        .await?;
    let token: serde_json::Value = client
        .call(&format!("{ecr}.GetAuthorizationToken"), &json!({}))
        .await?;
    let creds = String::from_utf8(
        base64::engine::general_purpose::STANDARD.decode(
            token["authorizationData"][0]["authorizationToken"]
                .as_str()
                .unwrap_or_default(),
        )?,
    )?;
    let remote = format!("docker://{}/bench:v1", server.local_addr);
    let push = skopeo_copy(&source, &remote, Some(&creds), true)?;
    let pull = skopeo_copy(
        &remote,
        &format!(
            "oci:{}:bench",
            work.path().join("pulled-flotilla").display()
        ),
        Some(&creds),
        false,
    )?;
    rows.push(("flotilla (AES-256-GCM at rest)", push, pull));
    server.shutdown().await;

    // The CNCF distribution registry, plain filesystem storage.
    let cncf_root = work.path().join("cncf");
    std::fs::create_dir_all(&cncf_root)?;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    let address = format!("127.0.0.1:{port}");
    let config_path = work.path().join("cncf.yml");
    std::fs::write(
        &config_path,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
            cncf_root.display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run docker-registry (apt-get install docker-registry)")?;
    let _cncf = Child(child);
    wait_listening(&address).await?;
    let remote = format!("docker://{address}/bench:v1");
    let push = skopeo_copy(&source, &remote, None, true)?;
    let pull = skopeo_copy(
        &remote,
        &format!("oci:{}:bench", work.path().join("pulled-cncf").display()),
        None,
        false,
    )?;
    rows.push(("CNCF distribution (docker-registry)", push, pull));

    println!(
        "image: {mib:.0} MiB in {layers} layers; copies by skopeo from/to an OCI layout on the same disk"
    );
    println!("disk sequential write (fsync'd): {disk:.0} MiB/s");
    println!(
        "{:<38} {:>10} {:>12} {:>10} {:>12}",
        "registry", "push s", "push MiB/s", "pull s", "pull MiB/s"
    );
    for (name, push, pull) in &rows {
        println!(
            "{name:<38} {:>10.2} {:>12.0} {:>10.2} {:>12.0}",
            push.as_secs_f64(),
            mib / push.as_secs_f64(),
            pull.as_secs_f64(),
            mib / pull.as_secs_f64()
        );
    }
    let (_, flotilla_push, flotilla_pull) = rows[0];
    let (_, cncf_push, cncf_pull) = rows[1];
    println!(
        "flotilla vs CNCF: push {:.2}x, pull {:.2}x; flotilla push vs disk: {:.2}x",
        cncf_push.as_secs_f64() / flotilla_push.as_secs_f64(),
        cncf_pull.as_secs_f64() / flotilla_pull.as_secs_f64(),
        (mib / flotilla_push.as_secs_f64()) / disk
    );
    Ok(())
}
