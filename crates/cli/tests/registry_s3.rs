//! The registry on an S3-compatible object store (moto's S3 server, `pip install
//! 'moto[server]'`): `docker push` lands encrypted objects in the bucket, and `docker pull`
//! reads them back, across a restart of Flotilla.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Process, RemoveImage, docker, spawn};

const BUCKET: &str = "flotilla-registry";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// moto's S3 server on a free port, with a bucket.
fn start_s3() -> (Process, String) {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server is installed (pip install 'moto[server]')");
    let process = Process(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (ok, text) = s3(&endpoint, &["s3api", "create-bucket", "--bucket", BUCKET]);
            assert!(ok, "create-bucket: {text}");
            return (process, endpoint);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto_server did not start");
}

/// The AWS CLI against the S3 server, with moto's fixed test keys.
fn s3(endpoint: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new("aws")
        .arg("--endpoint-url")
        .arg(endpoint)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn flotilla(data: &Path, listen: &str, s3_endpoint: &str) -> (Process, String) {
    spawn(
        &[
            "server",
            "--listen",
            listen,
            "--data-dir",
            data.to_str().unwrap(),
            "--registry-storage",
            &format!("s3://{BUCKET}/blobs"),
        ],
        &[
            ("AWS_ENDPOINT_URL_S3", s3_endpoint),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    )
}

#[test]
fn images_pushed_to_an_s3_backed_registry_are_stored_encrypted_and_pulled_back() {
    let base = flotilla_docker::testing::ensure_test_image().expect("test image");
    let (_s3_server, s3_endpoint) = start_s3();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let docker_config = dir.path().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    let (server, endpoint) = flotilla(&data, "127.0.0.1:0", &s3_endpoint);
    let host = endpoint.trim_start_matches("http://").to_owned();
    let exports = common::env_exports(&data);
    let aws = |args: &[&str]| {
        let output = Command::new("aws")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .envs(exports.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AWS_ENDPOINT_URL", &endpoint)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    aws(&["ecr", "create-repository", "--repository-name", "s3/app"]);
    let password = aws(&["ecr", "get-login-password"]);
    let image = format!("{host}/s3/app:1");
    let _remove = RemoveImage(image.clone());
    let (ok, text) = docker(
        &docker_config,
        &["login", "--username", "AWS", "--password-stdin", &host],
        Some(password.trim()),
    );
    assert!(ok, "{text}");
    assert!(docker(&docker_config, &["tag", base, &image], None).0);
    let (ok, text) = docker(&docker_config, &["push", &image], None);
    assert!(ok, "push: {text}");

    // Config, layer and manifest are objects in the bucket, under the prefix.
    let (ok, listing) = s3(
        &s3_endpoint,
        &["s3", "ls", "--recursive", &format!("s3://{BUCKET}/blobs/")],
    );
    assert!(ok, "{listing}");
    assert!(
        listing.lines().count() >= 3,
        "config, layer and manifest objects: {listing}"
    );
    let copies = dir.path().join("objects");
    let (ok, text) = s3(
        &s3_endpoint,
        &[
            "s3",
            "cp",
            "--recursive",
            &format!("s3://{BUCKET}/blobs/"),
            copies.to_str().unwrap(),
        ],
    );
    assert!(ok, "{text}");
    // The manifest and the image config are JSON in the clear; stored, they must not be.
    for entry in walk(&copies) {
        let bytes = std::fs::read(&entry).unwrap();
        for marker in [&b"schemaVersion"[..], b"architecture", b"rootfs"] {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker),
                "{} holds plain JSON",
                entry.display()
            );
        }
    }
    assert!(
        !data.join("registry").exists(),
        "nothing went to the local disk"
    );

    // A restart: the image comes back from the bucket.
    let port = host.rsplit(':').next().unwrap().to_owned();
    drop(server);
    let (_server, _) = flotilla(&data, &format!("127.0.0.1:{port}"), &s3_endpoint);
    assert!(docker(&docker_config, &["rmi", &image], None).0);
    let (ok, text) = docker(&docker_config, &["pull", &image], None);
    assert!(ok, "pull after a restart: {text}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
