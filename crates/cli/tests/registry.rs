//! `flotilla up` runs a task whose image was pushed to its own registry: the agent pulls it
//! with a registry token it gets itself, with nothing configured.

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use flotilla_agent::{ServerClient, SigningIdentity};
use serde_json::{Value, json};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");
const ECS: &str = "AmazonEC2ContainerServiceV20141113";
const ECR: &str = "AmazonEC2ContainerRegistry_V20150921";

struct Cleanup {
    child: Child,
    cluster: String,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.flotilla.cluster={}", self.cluster),
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
        for image in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

fn client(endpoint: &str, data_dir: &Path) -> ServerClient {
    let stored: Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("credentials.json")).unwrap()).unwrap();
    ServerClient::new(
        endpoint,
        SigningIdentity {
            access_key_id: stored["access_key_id"].as_str().unwrap().to_owned(),
            secret_access_key: stored["secret_access_key"].as_str().unwrap().to_owned(),
            region: "us-east-1".into(),
        },
    )
}

async fn call(client: &ServerClient, target: &str, body: Value) -> Value {
    client
        .call::<Value, Value>(target, &body)
        .await
        .unwrap_or_else(|e| panic!("{target}: {e}"))
}

fn docker(config: &Path, args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_from_an_image_pushed_to_the_registry() {
    let base = flotilla_docker::testing::ensure_test_image().expect("test image");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cluster = format!("reg{}", std::process::id());
    let mut child = Command::new(FLOTILLA)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--cluster",
            &cluster,
        ])
        .env("FLOTILLA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let endpoint = line.trim().rsplit(' ').next().unwrap().to_owned();
    let host = endpoint.trim_start_matches("http://").to_owned();
    let image = format!("{host}/apps/hello:1");
    let _cleanup = Cleanup {
        child,
        cluster: cluster.clone(),
        images: vec![image.clone()],
    };
    let c = client(&endpoint, &data);

    // Push an image built on the test image, then forget it locally so the agent must pull.
    call(
        &c,
        &format!("{ECR}.CreateRepository"),
        json!({"repositoryName": "apps/hello"}),
    )
    .await;
    let token = call(&c, &format!("{ECR}.GetAuthorizationToken"), json!({})).await;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(
            token["authorizationData"][0]["authorizationToken"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let password = String::from_utf8(decoded)
        .unwrap()
        .split_once(':')
        .unwrap()
        .1
        .to_owned();
    let docker_config = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("hello.txt"),
        "hello from the registry\n",
    )
    .unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY hello.txt /hello.txt\nCMD [\"cat\", \"/hello.txt\"]\n"),
    )
    .unwrap();
    docker(
        docker_config.path(),
        &[
            "build",
            "-q",
            "-t",
            &image,
            context.path().to_str().unwrap(),
        ],
        None,
    );
    docker(
        docker_config.path(),
        &["login", "--username", "AWS", "--password-stdin", &host],
        Some(&password),
    );
    docker(docker_config.path(), &["push", &image], None);
    docker(docker_config.path(), &["rmi", "-f", &image], None);

    for _ in 0..100 {
        let listed = call(
            &c,
            &format!("{ECS}.ListContainerInstances"),
            json!({"cluster": cluster}),
        )
        .await;
        if listed["containerInstanceArns"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    call(&c, &format!("{ECS}.RegisterTaskDefinition"), json!({
        "family": "from-registry",
        "containerDefinitions": [{"name": "main", "image": image, "memory": 16, "essential": true}]
    }))
    .await;
    let run = call(
        &c,
        &format!("{ECS}.RunTask"),
        json!({"cluster": cluster, "taskDefinition": "from-registry"}),
    )
    .await;
    let task = run["tasks"][0]["taskArn"]
        .as_str()
        .unwrap_or_else(|| panic!("{run}"))
        .to_owned();
    let mut last = Value::Null;
    for _ in 0..300 {
        let described = call(
            &c,
            &format!("{ECS}.DescribeTasks"),
            json!({"cluster": cluster, "tasks": [task]}),
        )
        .await;
        last = described["tasks"][0].clone();
        if last["lastStatus"] == "STOPPED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["lastStatus"], "STOPPED", "{last}");
    assert_eq!(
        last["containers"][0]["exitCode"], 0,
        "the image was pulled and ran: {last}"
    );
}
