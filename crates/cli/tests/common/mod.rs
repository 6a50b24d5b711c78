//! Shared set-up for the tests that run the `flotilla` binary: child processes killed on
//! drop, container clean-up by cluster label, signed calls with the data dir's key.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flotilla_agent::{ServerClient, SigningIdentity};
use serde_json::{Value, json};

pub const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");
pub const ECS: &str = "AmazonEC2ContainerServiceV20141113";

/// A child process that is killed (SIGKILL) when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes every container a test's cluster left behind, and the cluster's Docker network
/// (agents make one per cluster; Docker has address pools for only about 30), even when the
/// test fails.
pub struct Containers(pub String);

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
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("flotilla-{}", self.0)])
            .output();
    }
}

/// Removes a Docker image when dropped, even when the test fails.
pub struct RemoveImage(pub String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// `docker --config CONFIG ARGS...` with `stdin` fed in; returns (success, stdout+stderr).
pub fn docker(config: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the Docker CLI is installed");
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let output = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Starts `flotilla up` for `cluster` with its state in `data_dir`, on a free port.
pub fn spawn_up(data_dir: &Path, cluster: &str) -> (Process, String) {
    spawn(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--cluster",
            cluster,
        ],
        &[],
    )
}

/// Starts `flotilla ARGS` and returns it with the endpoint from its first line.
pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> (Process, String) {
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

pub fn credentials(data_dir: &Path) -> (String, String) {
    let stored: Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("credentials.json")).unwrap()).unwrap();
    (
        stored["access_key_id"].as_str().unwrap().to_owned(),
        stored["secret_access_key"].as_str().unwrap().to_owned(),
    )
}

pub fn client(endpoint: &str, data_dir: &Path) -> ServerClient {
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

pub async fn ecs(client: &ServerClient, action: &str, body: Value) -> Value {
    client
        .call::<Value, Value>(&format!("{ECS}.{action}"), &body)
        .await
        .unwrap_or_else(|e| panic!("{action}: {e}"))
}

pub async fn describe_task(client: &ServerClient, cluster: &str, task: &str) -> Value {
    let answer = ecs(
        client,
        "DescribeTasks",
        json!({"cluster": cluster, "tasks": [task]}),
    )
    .await;
    answer["tasks"][0].clone()
}

/// Polls (bounded) until the task's lastStatus is `status`.
pub async fn wait_status(client: &ServerClient, cluster: &str, task: &str, status: &str) -> Value {
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

pub fn containers_of(task_arn: &str) -> Vec<String> {
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

/// `flotilla env` parsed into (name, value) pairs.
pub fn env_exports(data_dir: &Path) -> Vec<(String, String)> {
    let output = Command::new(FLOTILLA)
        .args(["env", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("flotilla env runs");
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Runs `aws ecs ARGS...`, which must succeed, and parses what it printed.
pub fn aws_json(exports: &[(String, String)], args: &[&str]) -> Value {
    let (ok, text) = aws(exports, args);
    assert!(ok, "aws ecs {args:?}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Runs `aws ecs ARGS...` with the exports; returns (success, stdout JSON or stderr text).
pub fn aws(exports: &[(String, String)], args: &[&str]) -> (bool, String) {
    let output = Command::new("aws")
        .arg("ecs")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .envs(exports.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("the AWS CLI is installed (pip install awscli)");
    let text = if output.status.success() {
        output.stdout
    } else {
        output.stderr
    };
    (
        output.status.success(),
        String::from_utf8_lossy(&text).into_owned(),
    )
}
