//! `flotilla up` runs a task whose image was pushed to its own registry: the agent pulls it
//! with a registry token it gets itself, with nothing configured.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{Containers, ECS, RemoveImage, client, spawn_up};
use flotilla_agent::ServerClient;
use serde_json::{Value, json};

const ECR: &str = "AmazonEC2ContainerRegistry_V20150921";

async fn call(client: &ServerClient, target: &str, body: Value) -> Value {
    client
        .call::<Value, Value>(target, &body)
        .await
        .unwrap_or_else(|e| panic!("{target}: {e}"))
}

fn docker(config: &std::path::Path, args: &[&str], stdin: Option<&str>) {
    let (ok, text) = common::docker(config, args, stdin);
    assert!(ok, "docker {args:?}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_from_an_image_pushed_to_the_registry() {
    let base = flotilla_docker::testing::ensure_test_image().expect("test image");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cluster = format!("reg{}", std::process::id());
    let _containers = Containers(cluster.clone());
    let (_up, endpoint) = spawn_up(&data, &cluster);
    let host = endpoint.trim_start_matches("http://").to_owned();
    let image = format!("{host}/apps/hello:1");
    let _image = RemoveImage(image.clone());
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
