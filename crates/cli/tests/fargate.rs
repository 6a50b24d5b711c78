//! Fargate end to end: `flotilla up` on the real Docker Engine, driven by the AWS CLI. A
//! FARGATE task runs with no registered instance, gets its own address (shown in its ENI
//! attachment) and answers on it; a FARGATE_SPOT task placed by a capacity provider
//! strategy is reclaimed by `flotilla reclaim-spot` and stops with SpotInterruption; a
//! FARGATE service becomes stable for `aws ecs wait services-stable`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Containers, FLOTILLA, aws, aws_json, env_exports, spawn_up};
use flotilla_docker::testing::http_get;
use serde_json::Value;

/// Polls (bounded) the task's web server on its ENI address until it answers.
fn assert_answers(address: &str) {
    let mut answer = String::new();
    for _ in 0..50 {
        answer = http_get(address, 8080);
        if answer.contains("fargate-ok") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the task at {address} never answered: {answer}");
}

/// Polls describe-tasks (bounded) until the task's lastStatus is `status`.
fn wait_status(exports: &[(String, String)], cluster: &str, task: &str, status: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        last = aws_json(
            exports,
            &["describe-tasks", "--cluster", cluster, "--tasks", task],
        )["tasks"][0]
            .clone();
        if last["lastStatus"] == status {
            return last;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("task never reached {status}: {last}");
}

fn detail<'a>(attachment: &'a Value, name: &str) -> &'a str {
    attachment["details"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .and_then(|d| d["value"].as_str())
        .unwrap_or_else(|| panic!("no {name} in {attachment}"))
}

#[test]
fn fargate_and_fargate_spot_tasks_run_under_flotilla_up() {
    let image = flotilla_docker::testing::ensure_test_image().expect("test image");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cluster = format!("fg{}", std::process::id());
    let _cleanup = Containers(cluster.clone());
    let (_up, _endpoint) = spawn_up(&data, &cluster);
    let exports = env_exports(&data);
    let definition = serde_json::json!([{
        "name": "web", "image": image, "essential": true,
        "command": ["sh", "-c", "trap 'exit 0' TERM; mkdir -p /tmp/www && echo fargate-ok > /tmp/www/index.html && httpd -f -p 8080 -h /tmp/www & wait"],
        "portMappings": [{"containerPort": 8080}]
    }])
    .to_string();
    let (ok, text) = aws(
        &exports,
        &[
            "register-task-definition",
            "--family",
            "fg-web",
            "--requires-compatibilities",
            "FARGATE",
            "--network-mode",
            "awsvpc",
            "--cpu",
            "256",
            "--memory",
            "512",
            "--container-definitions",
            &definition,
        ],
    );
    assert!(ok, "{text}");
    let network = "awsvpcConfiguration={subnets=[subnet-0abc],securityGroups=[sg-0abc]}";

    // A size outside the Fargate table is refused with ECS's error.
    let (ok, text) = aws(
        &exports,
        &[
            "register-task-definition",
            "--family",
            "fg-bad",
            "--requires-compatibilities",
            "FARGATE",
            "--network-mode",
            "awsvpc",
            "--cpu",
            "256",
            "--memory",
            "4096",
            "--container-definitions",
            &definition,
        ],
    );
    assert!(!ok && text.contains("ClientException"), "{text}");

    // FARGATE: no instance registered by the user, yet it runs, with its own address.
    let listed = aws_json(
        &exports,
        &["list-container-instances", "--cluster", &cluster],
    )["containerInstanceArns"]
        .as_array()
        .map_or(0, Vec::len);
    let task = aws_json(
        &exports,
        &[
            "run-task",
            "--cluster",
            &cluster,
            "--launch-type",
            "FARGATE",
            "--task-definition",
            "fg-web",
            "--network-configuration",
            network,
        ],
    )["tasks"][0]["taskArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let running = wait_status(&exports, &cluster, &task, "RUNNING");
    assert_eq!(running["launchType"], "FARGATE");
    assert!(running.get("containerInstanceArn").is_none(), "{running}");
    let attachment = &running["attachments"][0];
    assert_eq!(attachment["type"], "ElasticNetworkInterface", "{running}");
    assert_eq!(attachment["status"], "ATTACHED", "{running}");
    assert_eq!(detail(attachment, "subnetId"), "subnet-0abc");
    let address = detail(attachment, "privateIPv4Address").to_owned();
    assert_answers(&address);
    assert_eq!(
        aws_json(
            &exports,
            &["list-container-instances", "--cluster", &cluster],
        )["containerInstanceArns"]
            .as_array()
            .map_or(0, Vec::len),
        listed,
        "Fargate capacity is hidden from the instance list"
    );

    // FARGATE_SPOT through a capacity provider strategy, then reclaimed by the operator.
    let (ok, text) = aws(
        &exports,
        &[
            "put-cluster-capacity-providers",
            "--cluster",
            &cluster,
            "--capacity-providers",
            "FARGATE",
            "FARGATE_SPOT",
            "--default-capacity-provider-strategy",
            "capacityProvider=FARGATE_SPOT,weight=1",
        ],
    );
    assert!(ok, "{text}");
    let spot = aws_json(
        &exports,
        &[
            "run-task",
            "--cluster",
            &cluster,
            "--task-definition",
            "fg-web",
            "--network-configuration",
            network,
        ],
    )["tasks"][0]["taskArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let described = wait_status(&exports, &cluster, &spot, "RUNNING");
    assert_eq!(
        described["capacityProviderName"], "FARGATE_SPOT",
        "{described}"
    );
    let output = Command::new(FLOTILLA)
        .args([
            "reclaim-spot",
            "--cluster",
            &cluster,
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(&spot));
    let stopped = wait_status(&exports, &cluster, &spot, "STOPPED");
    assert_eq!(stopped["stopCode"], "SpotInterruption", "{stopped}");
    // A FARGATE service: stable by the AWS CLI's waiter, its tasks answering on their ENIs.
    let (ok, text) = aws(
        &exports,
        &[
            "create-service",
            "--cluster",
            &cluster,
            "--service-name",
            "fg-svc",
            "--task-definition",
            "fg-web",
            "--desired-count",
            "2",
            "--launch-type",
            "FARGATE",
            "--network-configuration",
            network,
        ],
    );
    assert!(ok, "{text}");
    let (ok, text) = aws(
        &exports,
        &[
            "wait",
            "services-stable",
            "--cluster",
            &cluster,
            "--services",
            "fg-svc",
        ],
    );
    assert!(ok, "services-stable: {text}");
    let service_tasks: Vec<String> = aws_json(
        &exports,
        &[
            "list-tasks",
            "--cluster",
            &cluster,
            "--service-name",
            "fg-svc",
        ],
    )["taskArns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(service_tasks.len(), 2, "{service_tasks:?}");
    for arn in &service_tasks {
        let described = wait_status(&exports, &cluster, arn, "RUNNING");
        let address = detail(&described["attachments"][0], "privateIPv4Address").to_owned();
        assert_answers(&address);
    }

    // The on-demand FARGATE task was left alone.
    let described = aws_json(
        &exports,
        &["describe-tasks", "--cluster", &cluster, "--tasks", &task],
    );
    assert_eq!(
        described["tasks"][0]["lastStatus"], "RUNNING",
        "{described}"
    );
}
