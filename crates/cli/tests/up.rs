//! `flotilla up` and `flotilla agent` as users run them, on the real Docker Engine: tasks run
//! as containers, logs are readable, a killed and restarted agent adopts its containers, and
//! three agents share one cluster.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flotilla_agent::{ServerClient, SigningIdentity};
use serde_json::{Value, json};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");
const ECS: &str = "AmazonEC2ContainerServiceV20141113";

/// A child process that is killed (SIGKILL) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes every container a test's cluster left behind, even when the test fails.
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.flotilla.cluster={}", self.0),
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
    }
}

/// Starts `flotilla ARGS` and returns it with the endpoint from its first line.
fn spawn(args: &[&str], envs: &[(&str, &str)]) -> (Process, String) {
    let mut child = Command::new(FLOTILLA)
        .args(args)
        .envs(envs.iter().copied())
        .env("FLOTILLA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("flotilla starts");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    // Keep draining what it prints, so it never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let endpoint = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        endpoint.starts_with("http://"),
        "unexpected first line: {line}"
    );
    (Process(child), endpoint)
}

fn credentials(data_dir: &Path) -> (String, String) {
    let stored: Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("credentials.json")).unwrap()).unwrap();
    (
        stored["access_key_id"].as_str().unwrap().to_owned(),
        stored["secret_access_key"].as_str().unwrap().to_owned(),
    )
}

fn client(endpoint: &str, data_dir: &Path) -> ServerClient {
    let (access_key_id, secret_access_key) = credentials(data_dir);
    ServerClient::new(
        endpoint,
        SigningIdentity {
            access_key_id,
            secret_access_key,
            region: "us-east-1".into(),
        },
    )
}

async fn ecs(client: &ServerClient, action: &str, body: Value) -> Value {
    client
        .call::<Value, Value>(&format!("{ECS}.{action}"), &body)
        .await
        .unwrap_or_else(|e| panic!("{action}: {e}"))
}

async fn describe_task(client: &ServerClient, cluster: &str, task: &str) -> Value {
    let answer = ecs(
        client,
        "DescribeTasks",
        json!({"cluster": cluster, "tasks": [task]}),
    )
    .await;
    answer["tasks"][0].clone()
}

/// Polls (bounded) until the task's lastStatus is `status`.
async fn wait_status(client: &ServerClient, cluster: &str, task: &str, status: &str) -> Value {
    for _ in 0..600 {
        let described = describe_task(client, cluster, task).await;
        if described["lastStatus"] == status {
            return described;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "task {task} never reached {status}: {}",
        describe_task(client, cluster, task).await
    );
}

fn containers_of(task_arn: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.flotilla.task-arn={task_arn}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_tasks_serves_logs_and_adopts_after_kill_9() {
    flotilla_docker::testing::ensure_test_image().expect("test image");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let cluster = format!("up{}", std::process::id());
    let _cleanup = Containers(cluster.clone());
    let (up, endpoint) = spawn(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_arg,
            "--cluster",
            &cluster,
        ],
        &[],
    );
    let c = client(&endpoint, &data);
    ecs(&c, "CreateCluster", json!({"clusterName": cluster})).await;
    // The agent registers on its own.
    for _ in 0..100 {
        let listed = ecs(&c, "ListContainerInstances", json!({"cluster": cluster})).await;
        if listed["containerInstanceArns"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A task whose essential container prints and exits.
    ecs(
        &c,
        "RegisterTaskDefinition",
        json!({
            "family": "echo",
            "containerDefinitions": [{
                "name": "main", "image": flotilla_docker::testing::TEST_IMAGE, "memory": 32,
                "command": ["sh", "-c", "echo hello-from-flotilla; exit 3"]
            }]
        }),
    )
    .await;
    let run = ecs(
        &c,
        "RunTask",
        json!({"cluster": cluster, "taskDefinition": "echo"}),
    )
    .await;
    let echo = run["tasks"][0]["taskArn"].as_str().unwrap().to_owned();
    let stopped = wait_status(&c, &cluster, &echo, "STOPPED").await;
    assert_eq!(stopped["stopCode"], "EssentialContainerExited", "{stopped}");
    assert_eq!(stopped["containers"][0]["exitCode"], 3);
    assert!(
        stopped["stoppedReason"]
            .as_str()
            .unwrap()
            .contains("Essential container in task exited")
    );
    let logs = Command::new(FLOTILLA)
        .args(["logs", &echo, "--cluster", &cluster, "--data-dir", data_arg])
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("hello-from-flotilla"),
        "{logs:?}"
    );

    // A long-running task survives a kill -9 of the whole process and is adopted.
    ecs(
        &c,
        "RegisterTaskDefinition",
        json!({
            "family": "long",
            "containerDefinitions": [{
                "name": "main", "image": flotilla_docker::testing::TEST_IMAGE, "memory": 32,
                "command": ["sleep", "1000"], "stopTimeout": 2
            }]
        }),
    )
    .await;
    let run = ecs(
        &c,
        "RunTask",
        json!({"cluster": cluster, "taskDefinition": "long"}),
    )
    .await;
    let long = run["tasks"][0]["taskArn"].as_str().unwrap().to_owned();
    wait_status(&c, &cluster, &long, "RUNNING").await;
    assert_eq!(containers_of(&long).len(), 1);
    drop(up); // SIGKILL
    assert_eq!(
        containers_of(&long).len(),
        1,
        "containers outlive the agent"
    );

    let (_up, endpoint) = spawn(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_arg,
            "--cluster",
            &cluster,
        ],
        &[],
    );
    let c = client(&endpoint, &data);
    let instances = ecs(&c, "ListContainerInstances", json!({"cluster": cluster})).await;
    assert_eq!(
        instances["containerInstanceArns"].as_array().unwrap().len(),
        1,
        "the same instance came back"
    );
    let running = describe_task(&c, &cluster, &long).await;
    assert_eq!(running["lastStatus"], "RUNNING");
    // Give the restarted agent a moment to reconcile; it must not start a duplicate.
    for _ in 0..20 {
        assert!(
            containers_of(&long).len() <= 1,
            "a duplicate container was started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(containers_of(&long).len(), 1);
    ecs(&c, "StopTask", json!({"cluster": cluster, "task": long})).await;
    let stopped = wait_status(&c, &cluster, &long, "STOPPED").await;
    assert_eq!(stopped["stopCode"], "UserInitiated");
    assert!(containers_of(&long).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_share_one_cluster() {
    flotilla_docker::testing::ensure_test_image().expect("test image");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let cluster = format!("three{}", std::process::id());
    let _cleanup = Containers(cluster.clone());
    let (_server, endpoint) = spawn(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let c = client(&endpoint, &data);
    ecs(&c, "CreateCluster", json!({"clusterName": cluster})).await;
    let (access_key_id, secret_access_key) = credentials(&data);
    let mut agents = Vec::new();
    for zone in ["zone-a", "zone-b", "zone-c"] {
        let agent_dir = dir.path().join(zone);
        let child = Command::new(FLOTILLA)
            .args([
                "agent",
                "--server",
                &endpoint,
                "--cluster",
                &cluster,
                "--zone",
                zone,
                "--data-dir",
            ])
            .arg(&agent_dir)
            .env("FLOTILLA_ACCESS_KEY_ID", &access_key_id)
            .env("FLOTILLA_SECRET_ACCESS_KEY", &secret_access_key)
            .env("FLOTILLA_LOG", "warn")
            .spawn()
            .unwrap();
        agents.push(Process(child));
    }
    for _ in 0..200 {
        let listed = ecs(&c, "ListContainerInstances", json!({"cluster": cluster})).await;
        if listed["containerInstanceArns"]
            .as_array()
            .is_some_and(|a| a.len() == 3)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ecs(&c, "RegisterTaskDefinition", json!({
        "family": "spread",
        "containerDefinitions": [{"name": "main", "image": flotilla_docker::testing::TEST_IMAGE, "memory": 16, "command": ["sleep", "1000"], "stopTimeout": 2}]
    }))
    .await;
    let run = ecs(
        &c,
        "RunTask",
        json!({
            "cluster": cluster, "taskDefinition": "spread", "count": 6,
            "placementStrategy": [{"type": "spread", "field": "attribute:ecs.availability-zone"}]
        }),
    )
    .await;
    let tasks = run["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 6, "{run}");
    let mut per_instance = std::collections::BTreeMap::new();
    for task in &tasks {
        *per_instance
            .entry(task["containerInstanceArn"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(
        per_instance.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "tasks land across all three"
    );
    for task in &tasks {
        let arn = task["taskArn"].as_str().unwrap();
        wait_status(&c, &cluster, arn, "RUNNING").await;
    }
    for task in &tasks {
        ecs(
            &c,
            "StopTask",
            json!({"cluster": cluster, "task": task["taskArn"]}),
        )
        .await;
    }
    for task in &tasks {
        wait_status(&c, &cluster, task["taskArn"].as_str().unwrap(), "STOPPED").await;
    }
}
