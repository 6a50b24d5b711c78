//! HTTPS on the API and registry listener, with the certificate `flotilla server` generates:
//! the AWS CLI and Docker reach it once told to trust the data dir's CA, refuse it before,
//! and the trust survives a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Process, RemoveImage, spawn};

/// A non-loopback IPv4 address of this machine: Docker treats loopback registries as
/// insecure and would skip the certificate check this test is about.
fn host_address() -> String {
    let output = Command::new("hostname").arg("-I").output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .expect("this machine has a non-loopback IPv4 address")
        .to_owned()
}

/// Docker's per-registry trust directory, removed again when the test ends.
struct TrustedByDocker(PathBuf);

impl Drop for TrustedByDocker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().expect("the command runs");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn aws(data_dir: &Path, endpoint: &str, ca: Option<&Path>, args: &[&str]) -> (bool, String) {
    let (access_key_id, secret_access_key) = common::credentials(data_dir);
    let mut command = Command::new("aws");
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", secret_access_key)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1");
    if let Some(ca) = ca {
        command.env("AWS_CA_BUNDLE", ca);
    }
    run(&mut command)
}

fn docker(config: &Path, args: &[&str]) -> (bool, String) {
    run(Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(args))
}

fn start(data_dir: &Path, listen: &str) -> (Process, u16) {
    let (process, endpoint) = spawn(
        &[
            "server",
            "--listen",
            listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        &[],
    );
    let port = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    (process, port)
}

#[test]
fn clients_trust_the_generated_certificate_and_refuse_before_they_do() {
    let base = flotilla_docker::testing::ensure_test_image().expect("test image");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let docker_config = dir.path().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    let address = host_address();
    let (server, port) = start(&data, "0.0.0.0:0");
    let host = format!("{address}:{port}");
    let https = format!("https://{host}");
    let ca = data.join("tls").join("ca.pem");

    // The AWS CLI over HTTPS: refused until it trusts the CA, then served.
    let (ok, text) = aws(&data, &https, None, &["ecr", "describe-repositories"]);
    assert!(
        !ok && text.contains("SSL"),
        "untrusted HTTPS was accepted: {text}"
    );
    let (ok, text) = aws(
        &data,
        &https,
        Some(&ca),
        &["ecr", "create-repository", "--repository-name", "tls/app"],
    );
    assert!(ok, "{text}");
    assert!(text.contains(&format!("\"{host}/tls/app\"")), "{text}");
    let (ok, text) = aws(
        &data,
        &https,
        Some(&ca),
        &["ecr", "get-authorization-token"],
    );
    assert!(
        ok && text.contains(&format!("\"https://{host}\"")),
        "{text}"
    );
    // Plain HTTP still answers on the same port.
    let (ok, text) = aws(
        &data,
        &format!("http://{host}"),
        None,
        &["ecs", "list-clusters"],
    );
    assert!(ok, "{text}");

    // Docker: an untrusted certificate is refused (this address is not an insecure registry).
    let image = format!("{host}/tls/app:1");
    let _remove = RemoveImage(image.clone());
    let (ok, text) = docker(&docker_config, &["pull", &image]);
    assert!(
        !ok && text.contains("x509"),
        "Docker accepted an untrusted certificate: {text}"
    );

    // The documented way to trust it: the CA in /etc/docker/certs.d/HOST:PORT/ca.crt.
    let certs_dir = PathBuf::from("/etc/docker/certs.d").join(&host);
    std::fs::create_dir_all(&certs_dir).expect("write access to /etc/docker/certs.d");
    let _trusted = TrustedByDocker(certs_dir.clone());
    std::fs::copy(&ca, certs_dir.join("ca.crt")).unwrap();
    let (_, password) = aws(&data, &https, Some(&ca), &["ecr", "get-login-password"]);
    let (ok, text) = run(Command::new("docker")
        .arg("--config")
        .arg(&docker_config)
        .args([
            "login",
            "--username",
            "AWS",
            "--password",
            password.trim(),
            &host,
        ]));
    assert!(ok, "docker login over HTTPS: {text}");
    assert!(docker(&docker_config, &["tag", base, &image]).0);
    let (ok, text) = docker(&docker_config, &["push", &image]);
    assert!(ok, "docker push over HTTPS: {text}");

    // A restart on the same port keeps the certificate, so the trust Docker was given holds.
    let certificate = std::fs::read(data.join("tls").join("cert.pem")).unwrap();
    drop(server);
    let (_server, _) = start(&data, &format!("0.0.0.0:{port}"));
    assert_eq!(
        std::fs::read(data.join("tls").join("cert.pem")).unwrap(),
        certificate
    );
    assert!(docker(&docker_config, &["rmi", &image]).0);
    let (ok, text) = docker(&docker_config, &["pull", &image]);
    assert!(ok, "docker pull over HTTPS after a restart: {text}");
}
