//! `flotilla up` and `flotilla agent` as users run them, on the real Docker Engine: tasks run
//! as containers, logs are readable, a killed and restarted agent adopts its containers, and
//! three agents share one cluster.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_tasks_serves_logs_and_adopts_after_kill_9() {
    flotilla_docker::testing::ensure_test_image().expect("test image");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let cluster = format!("up{}", std::process::id());
    let _cleanup = Containers(cluster.clone());
    let (up, endpoint) = spawn_up(&data, &cluster);
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

    let (_up, endpoint) = spawn_up(&data, &cluster);
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
