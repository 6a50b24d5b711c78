//! The `flotilla` binary as users run it: `flotilla server`, `flotilla env` and the AWS CLI,
//! and a `kill -9` in the middle of writes that loses nothing acknowledged.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{FLOTILLA, aws, env_exports};
use flotilla_agent::{ServerClient, SigningIdentity};
use serde_json::{Value, json};

struct ServerProcess {
    child: Child,
    endpoint: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `flotilla server` on a free port and waits for its "listening" line.
fn start_server(data_dir: &Path) -> ServerProcess {
    let mut child = Command::new(FLOTILLA)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("FLOTILLA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("flotilla starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("a first line");
    // Keep draining what it prints, so it never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let endpoint = line.trim().rsplit(' ').next().expect("endpoint").to_owned();
    assert!(
        endpoint.starts_with("http://127.0.0.1:"),
        "unexpected first line: {line}"
    );
    ServerProcess { child, endpoint }
}

#[test]
fn aws_cli_works_with_flotilla_env() {
    let dir = tempfile::tempdir().unwrap();
    let _server = start_server(dir.path());
    let exports = env_exports(dir.path());
    assert!(exports.iter().any(|(k, _)| k == "AWS_ENDPOINT_URL"));
    assert!(exports.iter().any(|(k, _)| k == "AWS_DEFAULT_REGION"));

    let (ok, out) = aws(&exports, &["create-cluster", "--cluster-name", "cli"]);
    assert!(ok, "{out}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        created["cluster"]["clusterArn"],
        "arn:aws:ecs:us-east-1:000000000000:cluster/cli"
    );

    let (ok, out) = aws(&exports, &["list-clusters"]);
    assert!(ok, "{out}");
    assert!(out.contains("cluster/cli"));

    let containers =
        r#"[{"name":"app","image":"busybox","memory":64,"portMappings":[{"containerPort":80}]}]"#;
    let (ok, out) = aws(
        &exports,
        &[
            "register-task-definition",
            "--family",
            "cli",
            "--container-definitions",
            containers,
        ],
    );
    assert!(ok, "{out}");
    let registered: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(registered["taskDefinition"]["revision"], 1);
    assert_eq!(
        registered["taskDefinition"]["containerDefinitions"][0]["portMappings"][0]["hostPort"],
        0
    );

    let (ok, out) = aws(
        &exports,
        &["describe-task-definition", "--task-definition", "nope"],
    );
    assert!(!ok);
    assert!(out.contains("ClientException"), "{out}");

    let (ok, out) = aws(
        &exports,
        &[
            "describe-clusters",
            "--clusters",
            "cli",
            "ghost",
            "--include",
            "STATISTICS",
        ],
    );
    assert!(ok, "{out}");
    let described: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(described["failures"][0]["reason"], "MISSING");

    // A wrong secret is refused by signature verification.
    let mut wrong = exports.clone();
    for (k, v) in &mut wrong {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = "wrong".into();
        }
    }
    let (ok, out) = aws(&wrong, &["list-clusters"]);
    assert!(!ok);
    assert!(out.contains("InvalidSignatureException"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path());
    let exports = env_exports(dir.path());
    let get = |name: &str| {
        exports
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let identity = SigningIdentity {
        access_key_id: get("AWS_ACCESS_KEY_ID"),
        secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
        region: get("AWS_DEFAULT_REGION"),
    };
    let client = ServerClient::new(&server.endpoint, identity.clone());
    let target = |action: &str| format!("AmazonEC2ContainerServiceV20141113.{action}");

    // Writers run until the server dies; every acknowledged write is remembered.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let client = client.clone();
        let acknowledged = acknowledged.clone();
        let target = target("CreateCluster");
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{writer}-{i}");
                match client
                    .call::<_, Value>(&target, &json!({"clusterName": name}))
                    .await
                {
                    Ok(_) => acknowledged.lock().unwrap().push(name),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good number of writes were acknowledged, without waiting on a timer.
    loop {
        if acknowledged.lock().unwrap().len() >= 200 {
            break;
        }
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let server = start_server(dir.path());
    let client = ServerClient::new(&server.endpoint, identity);
    let mut present = std::collections::BTreeSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut request = json!({"maxResults": 100});
        if let Some(t) = &token {
            request["nextToken"] = json!(t);
        }
        let page: Value = client
            .call(&target("ListClusters"), &request)
            .await
            .unwrap();
        for arn in page["clusterArns"].as_array().unwrap() {
            present.insert(arn.as_str().unwrap().rsplit('/').next().unwrap().to_owned());
        }
        match page["nextToken"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|name| !present.contains(*name))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged clusters lost after kill -9: {lost:?}",
        lost.len()
    );
    assert!(acknowledged.len() >= 200);
}
