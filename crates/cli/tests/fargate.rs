//! Fargate end to end: `flotilla up` on the real Docker Engine, driven by the AWS CLI. A
//! FARGATE task runs with no registered instance, gets its own address (shown in its ENI
//! attachment) and answers on it; a FARGATE_SPOT task placed by a capacity provider
//! strategy is reclaimed by `flotilla reclaim-spot` and stops with SpotInterruption; a
//! FARGATE service becomes stable for `aws ecs wait services-stable`.

mod common;

use std::io::{Read as _, Write as _};
use std::process::Command;
use std::time::Duration;

use common::{Containers, FLOTILLA, aws, env_exports, spawn};
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn http_get(address: &str, port: u16) -> String {
    let mut stream = std::net::TcpStream::connect_timeout(
        &format!("{address}:{port}").parse().unwrap(),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("connect to {address}:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET / HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// Polls describe-tasks (bounded) until the task's lastStatus is `status`.
fn wait_status(exports: &[(String, String)], cluster: &str, task: &str, status: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (ok, text) = aws(
            exports,
            &["describe-tasks", "--cluster", cluster, "--tasks", task],
        );
        assert!(ok, "{text}");
        last = json(&text)["tasks"][0].clone();
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
    let (_up, _endpoint) = spawn(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--cluster",
            &cluster,
        ],
        &[],
    );
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
    let (ok, text) = aws(
        &exports,
        &["list-container-instances", "--cluster", &cluster],
    );
    assert!(ok, "{text}");
    let listed = json(&text)["containerInstanceArns"]
        .as_array()
        .map_or(0, Vec::len);
    let (ok, text) = aws(
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
    );
    assert!(ok, "{text}");
    let task = json(&text)["tasks"][0]["taskArn"]
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
    let mut answer = String::new();
    for _ in 0..50 {
        answer = http_get(&address, 8080);
        if answer.contains("fargate-ok") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answer.contains("fargate-ok"), "{answer}");
    let (ok, text) = aws(
        &exports,
        &["list-container-instances", "--cluster", &cluster],
    );
    assert!(ok, "{text}");
    assert_eq!(
        json(&text)["containerInstanceArns"]
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
    let (ok, text) = aws(
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
    );
    assert!(ok, "{text}");
    let spot = json(&text)["tasks"][0]["taskArn"]
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
    let (ok, text) = aws(
        &exports,
        &[
            "list-tasks",
            "--cluster",
            &cluster,
            "--service-name",
            "fg-svc",
        ],
    );
    assert!(ok, "{text}");
    let service_tasks: Vec<String> = json(&text)["taskArns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(service_tasks.len(), 2, "{text}");
    for arn in &service_tasks {
        let described = wait_status(&exports, &cluster, arn, "RUNNING");
        let address = detail(&described["attachments"][0], "privateIPv4Address").to_owned();
        let mut answer = String::new();
        for _ in 0..50 {
            answer = http_get(&address, 8080);
            if answer.contains("fargate-ok") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(answer.contains("fargate-ok"), "{answer}");
    }

    // The on-demand FARGATE task was left alone.
    let (ok, text) = aws(
        &exports,
        &["describe-tasks", "--cluster", &cluster, "--tasks", &task],
    );
    assert!(
        ok && json(&text)["tasks"][0]["lastStatus"] == "RUNNING",
        "{text}"
    );
}
