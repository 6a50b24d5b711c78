//! The registry as clients use it, against an in-process server on port 0 with its blobs on
//! disk: the AWS CLI (`aws ecr ...`), the Docker CLI (login, push, pull), skopeo (an OCI
//! index both ways) and raw OCI requests (chunked and corrupt uploads, ranges, mounts,
//! referrers, tag pagination).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use flotilla_api::sigv4::Credentials;
use flotilla_registry::digest::Digest;
use flotilla_server::{RunningServer, ServerConfig};
use serde_json::{Value, json};

const ACCESS_KEY_ID: &str = "FLOTREGISTRYTEST0001";
const SECRET: &str = "registry-test-secret-key-0000000000000000";

struct Server {
    server: Option<RunningServer>,
    host: String,
}

async fn start(dir: &Path) -> Server {
    start_on(dir, "127.0.0.1:0").await
}

async fn start_on(dir: &Path, listen: &str) -> Server {
    let store: Arc<dyn flotilla_store::Store> =
        Arc::new(flotilla_store::RedbStore::open(&dir.join("state.redb")).expect("store"));
    let mut config = ServerConfig::new(
        listen.parse().unwrap(),
        Credentials::new(ACCESS_KEY_ID, SECRET),
    );
    config.registry = flotilla_registry::RegistryConfig::on_disk(dir);
    let server = flotilla_server::start(config, store)
        .await
        .expect("server starts");
    Server {
        host: server.local_addr.to_string(),
        server: Some(server),
    }
}

impl Server {
    fn endpoint(&self) -> String {
        format!("http://{}", self.host)
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Runs the AWS CLI against this server; the parsed JSON output, or the error text.
    fn aws(&self, args: &[&str]) -> Result<Value, String> {
        let output = Command::new("aws")
            .args(args)
            .args(["--output", "json"])
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_MAX_ATTEMPTS", "1")
            .output()
            .expect("the AWS CLI runs (pip install awscli)");
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text.into_owned()))
        })
    }

    fn password(&self) -> String {
        let output = Command::new("aws")
            .args(["ecr", "get-login-password"])
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .output()
            .expect("aws runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn auth(&self) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("AWS:{}", self.password()))
        )
    }
}

/// `docker` with its own config dir (logins stay out of the user's).
fn docker(config: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker CLI runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "docker {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Builds a three-layer image (the test busybox plus two layers of our own, one holding
/// `marker`) tagged `tag`.
fn build_image(tag: &str, marker: &str) {
    let base = flotilla_docker::testing::ensure_test_image().expect("test image");
    let context = tempfile::tempdir().unwrap();
    let mut random = vec![0u8; 300_000];
    rand_fill(&mut random, marker);
    std::fs::write(context.path().join("noise.bin"), &random).unwrap();
    std::fs::write(context.path().join("marker.txt"), marker.repeat(50)).unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY noise.bin /noise.bin\nCOPY marker.txt /marker.txt\nCMD [\"cat\", \"/marker.txt\"]\n"),
    )
    .unwrap();
    let output = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(context.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn rand_fill(buffer: &mut [u8], seed: &str) {
    // Incompressible bytes derived from the seed (a hash chain).
    let mut state = Digest::of(seed.as_bytes()).to_string().into_bytes();
    for chunk in buffer.chunks_mut(32) {
        state = sha2_bytes(&state);
        chunk.copy_from_slice(&state[..chunk.len()]);
    }
}

fn sha2_bytes(input: &[u8]) -> Vec<u8> {
    hex_decode(Digest::of(input).hex())
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

struct RemoveImages(Vec<String>);
impl Drop for RemoveImages {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_login_push_pull_survive_a_restart_and_nothing_is_stored_in_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path()).await;
    let host = server.host.clone();
    let docker_config = tempfile::tempdir().unwrap();
    let config = docker_config.path();

    // Anonymous access is refused, with the challenge Docker needs.
    let anonymous = reqwest::get(format!("{}/v2/", server.endpoint()))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );

    let created = server
        .aws(&["ecr", "create-repository", "--repository-name", "team/app"])
        .unwrap();
    assert_eq!(
        created["repository"]["repositoryUri"],
        format!("{host}/team/app")
    );
    let password = server.password();
    docker(
        config,
        &["login", "--username", "AWS", "--password-stdin", &host],
        Some(&password),
    )
    .expect("docker login");

    let marker = format!("flotilla-secret-marker-{}", uuid::Uuid::new_v4().simple());
    let image = format!("{host}/team/app:v1");
    let _cleanup = RemoveImages(vec![image.clone()]);
    build_image(&image, &marker);
    let local_id = docker(config, &["image", "inspect", "-f", "{{.Id}}", &image], None).unwrap();
    docker(config, &["push", &image], None).expect("docker push");

    let described = server
        .aws(&["ecr", "describe-images", "--repository-name", "team/app"])
        .unwrap();
    let detail = &described["imageDetails"][0];
    assert_eq!(detail["imageTags"], json!(["v1"]));
    assert!(detail["imageSizeInBytes"].as_u64().unwrap() > 300_000);

    // No stored file contains the image's bytes in plain text.
    for file in files(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{} holds plain text",
            file.display()
        );
    }

    // Restart on the same data dir and port: the image is still there and pulls.
    server.stop().await;
    let server = start_on(dir.path(), &host).await;
    docker(config, &["rmi", "-f", &image], None).unwrap();
    docker(config, &["pull", &image], None).expect("docker pull after restart");
    let pulled_id = docker(config, &["image", "inspect", "-f", "{{.Id}}", &image], None).unwrap();
    assert_eq!(pulled_id, local_id);
    let ran = docker(config, &["run", "--rm", &image], None).unwrap();
    assert!(ran.starts_with(&marker));
    drop(server);
}

// ---- raw OCI helpers ----

struct Oci {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Oci {
    fn new(server: &Server) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: server.endpoint(),
            auth: server.auth(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        self.http
            .request(method, url)
            .header("authorization", &self.auth)
    }

    /// Monolithic POST+PUT upload; returns the digest.
    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = Digest::of(bytes).to_string();
        let started = self
            .request(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), 202);
        let location = started.headers()["location"].to_str().unwrap().to_owned();
        let done = self
            .request(reqwest::Method::PUT, &format!("{location}?digest={digest}"))
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 201, "{}", done.text().await.unwrap());
        digest
    }

    /// Pushes a one-layer image manifest (config `config`) under `reference`.
    async fn push_image(
        &self,
        repo: &str,
        reference: &str,
        config: &str,
        layer: &[u8],
    ) -> (String, Vec<u8>) {
        let config_digest = self.push_blob(repo, config.as_bytes()).await;
        let layer_digest = self.push_blob(repo, layer).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
        }))
        .unwrap();
        let digest = self
            .put_manifest(repo, reference, &manifest)
            .await
            .expect("manifest stored");
        (digest, manifest)
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &[u8],
    ) -> Result<String, (u16, String)> {
        let response = self
            .request(
                reqwest::Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
            )
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.to_vec())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status == 201 {
            Ok(response.headers()["docker-content-digest"]
                .to_str()
                .unwrap()
                .to_owned())
        } else {
            Err((status, response.text().await.unwrap()))
        }
    }
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["errors"][0]["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_uploads_ranges_mounts_referrers_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    server
        .aws(&["ecr", "create-repository", "--repository-name", "one"])
        .unwrap();
    server
        .aws(&["ecr", "create-repository", "--repository-name", "two"])
        .unwrap();
    let oci = Oci::new(&server);

    // A chunked upload in three PATCHes, then a ranged read across segment boundaries.
    let mut data = vec![0u8; 700_000];
    rand_fill(&mut data, "chunked");
    let digest = Digest::of(&data).to_string();
    let started = oci
        .request(reqwest::Method::POST, "/v2/one/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let mut location = started.headers()["location"].to_str().unwrap().to_owned();
    let mut offset = 0;
    for chunk in data.chunks(300_000) {
        let response = oci
            .request(reqwest::Method::PATCH, &location)
            .header(
                "content-range",
                format!("{offset}-{}", offset + chunk.len() - 1),
            )
            .header("content-type", "application/octet-stream")
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        offset += chunk.len();
        assert_eq!(
            response.headers()["range"],
            format!("0-{}", offset - 1).as_str()
        );
        location = response.headers()["location"].to_str().unwrap().to_owned();
    }
    // Resumable: the status call reports the offset; a chunk at the wrong offset is refused.
    let status = oci
        .request(reqwest::Method::GET, &location)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 204);
    assert_eq!(
        status.headers()["range"],
        format!("0-{}", data.len() - 1).as_str()
    );
    let wrong = oci
        .request(reqwest::Method::PATCH, &location)
        .header("content-range", "5-9")
        .body(vec![0u8; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 416);
    let done = oci
        .request(reqwest::Method::PUT, &format!("{location}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 201);
    let ranged = oci
        .request(reqwest::Method::GET, &format!("/v2/one/blobs/{digest}"))
        .header("range", "bytes=262000-530000")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        ranged.headers()["content-range"],
        format!("bytes 262000-530000/{}", data.len()).as_str()
    );
    assert_eq!(&ranged.bytes().await.unwrap()[..], &data[262_000..=530_000]);
    let whole = oci
        .request(reqwest::Method::GET, &format!("/v2/one/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(&whole.bytes().await.unwrap()[..], &data[..]);

    // A corrupt upload (bytes that do not match the digest) is refused and nothing is stored.
    let fake_digest = Digest::of(b"something else").to_string();
    let started = oci
        .request(reqwest::Method::POST, "/v2/one/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let refused = oci
        .request(
            reqwest::Method::PUT,
            &format!("{location}?digest={fake_digest}"),
        )
        .body(b"corrupted bytes".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(error_code(&refused.text().await.unwrap()), "DIGEST_INVALID");
    for digest in [
        fake_digest.clone(),
        Digest::of(b"corrupted bytes").to_string(),
    ] {
        let head = oci
            .request(reqwest::Method::HEAD, &format!("/v2/one/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 404);
    }
    let gone = oci
        .request(reqwest::Method::GET, &location)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);

    // Cross-repository mount: no bytes sent, the blob appears in `two`.
    let mount = oci
        .request(
            reqwest::Method::POST,
            &format!("/v2/two/blobs/uploads/?mount={digest}&from=one"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(mount.status(), 201);
    let head = oci
        .request(reqwest::Method::HEAD, &format!("/v2/two/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        data.len().to_string().as_str()
    );

    // A manifest naming a blob the repository lacks is refused.
    let missing = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": fake_digest, "size": 3},
        "layers": []
    }))
    .unwrap();
    let (status, body) = oci.put_manifest("one", "bad", &missing).await.unwrap_err();
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN")
    );

    // An image, an artifact that refers to it, and the referrers API.
    let (subject, manifest) = oci.push_image("one", "v1", "{\"a\":1}", b"layer one").await;
    let empty = oci.push_blob("one", b"{}").await;
    let artifact = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": manifest.len()}
    }))
    .unwrap();
    let artifact_digest = Digest::of(&artifact).to_string();
    let response = oci
        .request(
            reqwest::Method::PUT,
            &format!("/v2/one/manifests/{artifact_digest}"),
        )
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(artifact.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["oci-subject"], subject.as_str());
    let referrers: Value = oci
        .request(
            reqwest::Method::GET,
            &format!("/v2/one/referrers/{subject}?artifactType=application/vnd.example.sbom"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        referrers["manifests"][0]["digest"],
        artifact_digest.as_str()
    );
    assert_eq!(
        referrers["manifests"][0]["artifactType"],
        "application/vnd.example.sbom"
    );

    // Tags, paginated.
    for tag in ["v2", "v3"] {
        oci.push_image("one", tag, "{\"a\":1}", b"layer one").await;
    }
    let page = oci
        .request(reqwest::Method::GET, "/v2/one/tags/list?n=2")
        .send()
        .await
        .unwrap();
    let link = page.headers()["link"].to_str().unwrap().to_owned();
    let page: Value = page.json().await.unwrap();
    assert_eq!(page["tags"], json!(["v1", "v2"]));
    assert!(link.contains("last=v2"), "{link}");
    let next: Value = oci
        .request(reqwest::Method::GET, "/v2/one/tags/list?n=2&last=v2")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(next["tags"], json!(["v3"]));

    // Deleting a manifest by digest removes it and its tags.
    let deleted = oci
        .request(
            reqwest::Method::DELETE,
            &format!("/v2/one/manifests/{artifact_digest}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 202);
    let head = oci
        .request(
            reqwest::Method::HEAD,
            &format!("/v2/one/manifests/{artifact_digest}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecr_api_immutable_tags_lifecycle_and_layer_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let created = server
        .aws(&[
            "ecr",
            "create-repository",
            "--repository-name",
            "svc",
            "--image-tag-mutability",
            "IMMUTABLE",
            "--image-scanning-configuration",
            "scanOnPush=true",
            "--encryption-configuration",
            "encryptionType=AES256",
            "--tags",
            "Key=team,Value=core",
        ])
        .unwrap();
    assert_eq!(created["repository"]["imageTagMutability"], "IMMUTABLE");
    let error = server
        .aws(&["ecr", "create-repository", "--repository-name", "svc"])
        .unwrap_err();
    assert!(
        error.contains("RepositoryAlreadyExistsException"),
        "{error}"
    );
    let oci = Oci::new(&server);

    let (first, _) = oci.push_image("svc", "v1", "{\"n\":1}", b"one").await;
    // The same tag on another image is refused, by OCI and by PutImage.
    let config = oci.push_blob("svc", b"{\"n\":2}").await;
    let layer = oci.push_blob("svc", b"two").await;
    let other = serde_json::to_string(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 7},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 3}]
    }))
    .unwrap();
    let (status, body) = oci
        .put_manifest("svc", "v1", other.as_bytes())
        .await
        .unwrap_err();
    assert_eq!((status, error_code(&body).as_str()), (400, "TAG_INVALID"));
    let error = server
        .aws(&[
            "ecr",
            "put-image",
            "--repository-name",
            "svc",
            "--image-tag",
            "v1",
            "--image-manifest",
            &other,
        ])
        .unwrap_err();
    assert!(error.contains("ImageTagAlreadyExistsException"), "{error}");
    // Under a new tag it is fine; then the repository becomes MUTABLE and v1 can move.
    let put = server
        .aws(&[
            "ecr",
            "put-image",
            "--repository-name",
            "svc",
            "--image-tag",
            "v2",
            "--image-manifest",
            &other,
        ])
        .unwrap();
    let second = put["image"]["imageId"]["imageDigest"]
        .as_str()
        .unwrap()
        .to_owned();
    server
        .aws(&[
            "ecr",
            "put-image-tag-mutability",
            "--repository-name",
            "svc",
            "--image-tag-mutability",
            "MUTABLE",
        ])
        .unwrap();
    oci.put_manifest("svc", "v1", other.as_bytes())
        .await
        .expect("mutable tag moves");

    // Listing and getting images.
    let listed = server
        .aws(&["ecr", "list-images", "--repository-name", "svc"])
        .unwrap();
    assert_eq!(listed["imageIds"].as_array().unwrap().len(), 3, "{listed}");
    let untagged = server
        .aws(&[
            "ecr",
            "describe-images",
            "--repository-name",
            "svc",
            "--filter",
            "tagStatus=UNTAGGED",
        ])
        .unwrap();
    assert_eq!(untagged["imageDetails"][0]["imageDigest"], first.as_str());
    let got = server
        .aws(&[
            "ecr",
            "batch-get-image",
            "--repository-name",
            "svc",
            "--image-ids",
            "imageTag=v2",
            "imageTag=nope",
        ])
        .unwrap();
    assert_eq!(got["images"][0]["imageManifest"], other.as_str());
    assert_eq!(got["failures"][0]["failureCode"], "ImageNotFound");
    let tags = server
        .aws(&[
            "ecr",
            "list-tags-for-resource",
            "--resource-arn",
            created["repository"]["repositoryArn"].as_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(tags["tags"], json!([{"Key": "team", "Value": "core"}]));

    // The layer API: initiate, upload a part, complete, check, put an image, download.
    let upload = server
        .aws(&["ecr", "initiate-layer-upload", "--repository-name", "svc"])
        .unwrap();
    let upload_id = upload["uploadId"].as_str().unwrap();
    let part = dir.path().join("part.bin");
    std::fs::write(&part, b"layer via the ECR API").unwrap();
    let part_arg = format!("fileb://{}", part.display());
    server
        .aws(&[
            "ecr",
            "upload-layer-part",
            "--repository-name",
            "svc",
            "--upload-id",
            upload_id,
            "--part-first-byte",
            "0",
            "--part-last-byte",
            "20",
            "--layer-part-blob",
            &part_arg,
        ])
        .unwrap();
    let layer_digest = Digest::of(b"layer via the ECR API").to_string();
    server
        .aws(&[
            "ecr",
            "complete-layer-upload",
            "--repository-name",
            "svc",
            "--upload-id",
            upload_id,
            "--layer-digests",
            &layer_digest,
        ])
        .unwrap();
    let check = server
        .aws(&[
            "ecr",
            "batch-check-layer-availability",
            "--repository-name",
            "svc",
            "--layer-digests",
            &layer_digest,
        ])
        .unwrap();
    assert_eq!(check["layers"][0]["layerAvailability"], "AVAILABLE");
    assert_eq!(check["layers"][0]["layerSize"], 21);
    let url = server
        .aws(&[
            "ecr",
            "get-download-url-for-layer",
            "--repository-name",
            "svc",
            "--layer-digest",
            &layer_digest,
        ])
        .unwrap();
    let downloaded = reqwest::get(url["downloadUrl"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        &downloaded.bytes().await.unwrap()[..],
        b"layer via the ECR API"
    );

    // A lifecycle policy keeping one image expires the older ones at once.
    let policy = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#;
    server
        .aws(&[
            "ecr",
            "put-lifecycle-policy",
            "--repository-name",
            "svc",
            "--lifecycle-policy-text",
            policy,
        ])
        .unwrap();
    let left = server
        .aws(&["ecr", "describe-images", "--repository-name", "svc"])
        .unwrap();
    let left = left["imageDetails"].as_array().unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["imageDigest"], second.as_str());
    let got = server
        .aws(&["ecr", "get-lifecycle-policy", "--repository-name", "svc"])
        .unwrap();
    assert_eq!(got["lifecyclePolicyText"], policy);

    // Repository policies.
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"ecr:*"}]}"#;
    server
        .aws(&[
            "ecr",
            "set-repository-policy",
            "--repository-name",
            "svc",
            "--policy-text",
            policy,
        ])
        .unwrap();
    assert_eq!(
        server
            .aws(&["ecr", "get-repository-policy", "--repository-name", "svc"])
            .unwrap()["policyText"],
        policy
    );
    server
        .aws(&[
            "ecr",
            "delete-repository-policy",
            "--repository-name",
            "svc",
        ])
        .unwrap();
    let error = server
        .aws(&["ecr", "get-repository-policy", "--repository-name", "svc"])
        .unwrap_err();
    assert!(
        error.contains("RepositoryPolicyNotFoundException"),
        "{error}"
    );

    // Deleting: refused while images remain, unless forced.
    let error = server
        .aws(&["ecr", "delete-repository", "--repository-name", "svc"])
        .unwrap_err();
    assert!(error.contains("RepositoryNotEmptyException"), "{error}");
    server
        .aws(&[
            "ecr",
            "delete-repository",
            "--repository-name",
            "svc",
            "--force",
        ])
        .unwrap();
    let error = server
        .aws(&["ecr", "describe-repositories", "--repository-names", "svc"])
        .unwrap_err();
    assert!(error.contains("RepositoryNotFoundException"), "{error}");
}

/// Writes an OCI layout holding an image index of two platform images; its digest.
fn write_oci_index(layout: &Path) -> String {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = Digest::of(bytes);
        std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
        (digest.to_string(), bytes.len())
    };
    let mut manifests = Vec::new();
    for arch in ["amd64", "arm64"] {
        let mut layer = vec![0u8; 50_000];
        rand_fill(&mut layer, arch);
        let (layer_digest, layer_size) = put(&layer);
        let config = serde_json::to_vec(&json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer_digest]}})).unwrap();
        let (config_digest, config_size) = put(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}]
        }))
        .unwrap();
        let (digest, size) = put(&manifest);
        manifests.push(json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size, "platform": {"architecture": arch, "os": "linux"}}));
    }
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})).unwrap();
    let (index_digest, index_size) = put(&index);
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest, "size": index_size,
            "annotations": {"org.opencontainers.image.ref.name": "v1"}
        }]}))
        .unwrap(),
    )
    .unwrap();
    index_digest
}

fn skopeo(args: &[&str]) {
    let output = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo runs (apt-get install skopeo)");
    assert!(
        output.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_an_oci_index_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    server
        .aws(&["ecr", "create-repository", "--repository-name", "multi"])
        .unwrap();
    let layouts = tempfile::tempdir().unwrap();
    let source = layouts.path().join("source");
    let index_digest = write_oci_index(&source);
    let creds = format!("AWS:{}", server.password());
    let remote = format!("docker://{}/multi:v1", server.host);
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &format!("oci:{}:v1", source.display()),
        &remote,
    ]);
    let detail = server
        .aws(&[
            "ecr",
            "describe-images",
            "--repository-name",
            "multi",
            "--image-ids",
            "imageTag=v1",
        ])
        .unwrap();
    assert_eq!(
        detail["imageDetails"][0]["imageDigest"],
        index_digest.as_str()
    );
    assert_eq!(
        detail["imageDetails"][0]["imageManifestMediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let back = layouts.path().join("back");
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &remote,
        &format!("oci:{}:v1", back.display()),
    ]);
    let index: Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], index_digest.as_str());
    for file in files(&source.join("blobs")) {
        let copied = back.join("blobs/sha256").join(file.file_name().unwrap());
        assert_eq!(
            std::fs::read(&file).unwrap(),
            std::fs::read(&copied).unwrap()
        );
    }
}
