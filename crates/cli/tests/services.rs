//! Services on the real Docker Engine, driven with the AWS CLI (`flotilla env`) against
//! `flotilla server` and `flotilla agent` processes: `aws ecs wait services-stable`, a killed
//! container replaced, a rolling update that never drops below the healthy minimum, a
//! revision that exits at once tripping the circuit breaker and being rolled back,
//! DeleteService draining, and a DAEMON service following three hosts.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use flotilla_agent::ServerClient;
use serde_json::{Value, json};

/// Starts `flotilla agent` for `cluster` in `zone`, with the server's key.
fn start_agent(endpoint: &str, data: &Path, cluster: &str, zone: &str, dir: &Path) -> Process {
    let (access_key_id, secret_access_key) = credentials(data);
    let child = Command::new(FLOTILLA)
        .args([
            "agent",
            "--server",
            endpoint,
            "--cluster",
            cluster,
            "--zone",
            zone,
            "--data-dir",
        ])
        .arg(dir.join(zone))
        .env("FLOTILLA_ACCESS_KEY_ID", access_key_id)
        .env("FLOTILLA_SECRET_ACCESS_KEY", secret_access_key)
        .env("FLOTILLA_LOG", "warn")
        .spawn()
        .unwrap();
    Process(child)
}

async fn wait_instances(c: &ServerClient, cluster: &str, count: usize) -> Vec<String> {
    for _ in 0..300 {
        let listed = ecs(c, "ListContainerInstances", json!({"cluster": cluster})).await;
        let arns: Vec<String> = listed["containerInstanceArns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        if arns.len() == count {
            return arns;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{count} container instances never registered");
}

async fn describe_service(c: &ServerClient, cluster: &str, service: &str) -> Value {
    ecs(
        c,
        "DescribeServices",
        json!({"cluster": cluster, "services": [service]}),
    )
    .await["services"][0]
        .clone()
}

/// The service's tasks that are wanted RUNNING, described.
async fn service_tasks(c: &ServerClient, cluster: &str, service: &str) -> Vec<Value> {
    let listed = ecs(
        c,
        "ListTasks",
        json!({"cluster": cluster, "serviceName": service}),
    )
    .await;
    let arns = listed["taskArns"].as_array().cloned().unwrap_or_default();
    if arns.is_empty() {
        return Vec::new();
    }
    ecs(
        c,
        "DescribeTasks",
        json!({"cluster": cluster, "tasks": arns}),
    )
    .await["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn running(tasks: &[Value]) -> usize {
    tasks
        .iter()
        .filter(|t| t["lastStatus"] == "RUNNING")
        .count()
}

/// Polls (bounded) until `check` holds for the described service.
async fn wait_service<F: Fn(&Value) -> bool>(
    c: &ServerClient,
    cluster: &str,
    service: &str,
    what: &str,
    check: F,
) -> Value {
    for _ in 0..1200 {
        let described = describe_service(c, cluster, service).await;
        if check(&described) {
            return described;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what} never happened: {}",
        describe_service(c, cluster, service).await
    );
}

fn stable(service: &Value) -> bool {
    service["deployments"]
        .as_array()
        .is_some_and(|d| d.len() == 1)
        && service["runningCount"] == service["desiredCount"]
}

fn running_containers(cluster: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.flotilla.cluster={cluster}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_service_heals_rolls_out_rolls_back_and_drains() {
    let image = flotilla_docker::testing::ensure_test_image().expect("test image");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let cluster = format!("svc{}", std::process::id());
    let _cleanup = Containers(cluster.clone());
    // Restart gaps of 1 ms (doubling) so the circuit breaker's ten failures come quickly;
    // tasks count healthy 2 s after RUNNING (ECS: 40 s) so the rollouts take test time, and
    // a container that exits at once is never taken for a healthy one.
    let (_server, endpoint) = spawn(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--service-restart-delay-ms",
            "1",
            "--service-healthy-after-ms",
            "2000",
        ],
        &[],
    );
    let c = client(&endpoint, &data);
    let exports = env_exports(&data);
    let cli = |args: &[&str]| {
        let (ok, out) = aws(&exports, args);
        assert!(ok, "aws ecs {args:?}: {out}");
        out
    };
    cli(&["create-cluster", "--cluster-name", &cluster]);
    let _agent = start_agent(&endpoint, &data, &cluster, "zone-a", dir.path());
    wait_instances(&c, &cluster, 1).await;
    for (revision, command) in [
        (
            "1",
            json!(["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]),
        ),
        (
            "2",
            json!(["sh", "-c", "trap 'exit 0' TERM; sleep 3601 & wait"]),
        ),
        ("3", json!(["sh", "-c", "exit 3"])),
    ] {
        let definition = json!([{"name": "main", "image": image, "memory": 16,
            "command": command, "stopTimeout": 2,
            "environment": [{"name": "REVISION", "value": revision}]}]);
        cli(&[
            "register-task-definition",
            "--family",
            "web",
            "--container-definitions",
            &definition.to_string(),
        ]);
    }

    // Create, then `aws ecs wait services-stable`.
    let created: Value = serde_json::from_str(&cli(&[
        "create-service",
        "--cluster",
        &cluster,
        "--service-name",
        "web",
        "--task-definition",
        "web:1",
        "--desired-count",
        "3",
        "--deployment-configuration",
        "deploymentCircuitBreaker={enable=true,rollback=true},maximumPercent=200,minimumHealthyPercent=100",
    ]))
    .unwrap();
    assert_eq!(created["service"]["status"], "ACTIVE");
    cli(&[
        "wait",
        "services-stable",
        "--cluster",
        &cluster,
        "--services",
        "web",
    ]);
    let tasks = service_tasks(&c, &cluster, "web").await;
    assert_eq!(running(&tasks), 3);
    assert_eq!(running_containers(&cluster).len(), 3);

    // A killed container is replaced.
    let victim = tasks[0]["taskArn"].as_str().unwrap().to_owned();
    let containers = containers_of(&victim);
    assert_eq!(containers.len(), 1);
    let killed_at = Instant::now();
    Command::new("docker")
        .args(["kill", &containers[0]])
        .output()
        .unwrap();
    loop {
        let now = service_tasks(&c, &cluster, "web").await;
        if running(&now) == 3 && now.iter().all(|t| t["taskArn"] != victim.as_str()) {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the killed task was never replaced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "replacement RUNNING {:?} after the kill",
        killed_at.elapsed()
    );
    let described = describe_task(&c, &cluster, &victim).await;
    assert_eq!(described["lastStatus"], "STOPPED");

    // A rolling update to revision 2 never has fewer than 3 healthy (RUNNING) tasks.
    cli(&[
        "update-service",
        "--cluster",
        &cluster,
        "--service",
        "web",
        "--task-definition",
        "web:2",
    ]);
    let mut lowest = usize::MAX;
    let started = Instant::now();
    loop {
        let tasks = service_tasks(&c, &cluster, "web").await;
        lowest = lowest.min(running(&tasks));
        let service = describe_service(&c, &cluster, "web").await;
        let on_two = tasks
            .iter()
            .filter(|t| t["lastStatus"] == "RUNNING")
            .all(|t| t["taskDefinitionArn"].as_str().unwrap().ends_with(":2"));
        if stable(&service) && on_two && running(&tasks) == 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the rollout never finished: {service}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lowest >= 3,
        "healthy tasks dropped to {lowest} during the rollout"
    );
    cli(&[
        "wait",
        "services-stable",
        "--cluster",
        &cluster,
        "--services",
        "web",
    ]);

    // Revision 3 exits at once: the breaker trips and rolls back to revision 2.
    cli(&[
        "update-service",
        "--cluster",
        &cluster,
        "--service",
        "web",
        "--task-definition",
        "web:3",
    ]);
    let rolled_back = wait_service(&c, &cluster, "web", "the rollback", |s| {
        s["taskDefinition"]
            .as_str()
            .is_some_and(|t| t.ends_with(":2"))
            && stable(s)
            && s["events"].as_array().is_some_and(|events| {
                events.iter().any(|e| {
                    e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("rolling back to deployment"))
                })
            })
    })
    .await;
    assert_eq!(rolled_back["runningCount"], 3, "{rolled_back}");

    // DeleteService (force) drains every task and its containers.
    cli(&[
        "delete-service",
        "--cluster",
        &cluster,
        "--service",
        "web",
        "--force",
    ]);
    wait_service(&c, &cluster, "web", "the drain", |s| {
        s["status"] == "INACTIVE"
    })
    .await;
    for _ in 0..100 {
        if running_containers(&cluster).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running_containers(&cluster).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_service_follows_three_agents() {
    let image = flotilla_docker::testing::ensure_test_image().expect("test image");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let cluster = format!("daemon{}", std::process::id());
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
    let _a = start_agent(&endpoint, &data, &cluster, "zone-a", dir.path());
    let _b = start_agent(&endpoint, &data, &cluster, "zone-b", dir.path());
    wait_instances(&c, &cluster, 2).await;
    ecs(&c, "RegisterTaskDefinition", json!({
        "family": "node-agent",
        "containerDefinitions": [{"name": "main", "image": image, "memory": 8, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"], "stopTimeout": 2}]
    }))
    .await;
    ecs(
        &c,
        "CreateService",
        json!({"cluster": cluster, "serviceName": "node-agent", "taskDefinition": "node-agent", "schedulingStrategy": "DAEMON"}),
    )
    .await;
    wait_service(&c, &cluster, "node-agent", "two daemon tasks", |s| {
        s["desiredCount"] == 2 && stable(s)
    })
    .await;

    // A third host joins and gets one.
    let _c3 = start_agent(&endpoint, &data, &cluster, "zone-c", dir.path());
    let instances = wait_instances(&c, &cluster, 3).await;
    wait_service(&c, &cluster, "node-agent", "three daemon tasks", |s| {
        s["desiredCount"] == 3 && stable(s)
    })
    .await;
    assert_eq!(running_containers(&cluster).len(), 3);

    // A host starts draining and loses its daemon task.
    let draining = &instances[0];
    ecs(
        &c,
        "UpdateContainerInstancesState",
        json!({"cluster": cluster, "containerInstances": [draining], "status": "DRAINING"}),
    )
    .await;
    wait_service(&c, &cluster, "node-agent", "the drain", |s| {
        s["desiredCount"] == 2 && stable(s)
    })
    .await;
    for _ in 0..100 {
        let on_host = ecs(
            &c,
            "ListTasks",
            json!({"cluster": cluster, "containerInstance": draining}),
        )
        .await;
        if on_host["taskArns"].as_array().is_some_and(|a| a.is_empty())
            && running_containers(&cluster).len() == 2
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the draining host kept its daemon task");
}
