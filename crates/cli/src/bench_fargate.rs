//! `flotilla bench fargate`: RunTask to RUNNING for a FARGATE task (awsvpc: a sandbox, an
//! address on the cluster network, hard limits) against the same task on the EC2 launch
//! type (bridge), in one run on the local Docker Engine, launches interleaved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::ServerClient;
use flotilla_testkit::test_identity;
use serde_json::json;

use super::{call, percentile, start_server};

/// One task from RunTask to RUNNING, then stopped and waited for.
async fn launch(
    client: &ServerClient,
    cluster: &str,
    request: serde_json::Value,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let run = call(client, "RunTask", request).await?;
    let task = run["tasks"][0]["taskArn"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(!task.is_empty(), "RunTask placed nothing: {run}");
    loop {
        let described = call(
            client,
            "DescribeTasks",
            json!({"cluster": cluster, "tasks": [task]}),
        )
        .await?;
        match described["tasks"][0]["lastStatus"].as_str() {
            Some("RUNNING") => break,
            Some("STOPPED") => anyhow::bail!("the task stopped: {described}"),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the task did not run within a minute"
        );
    }
    let elapsed = started.elapsed();
    call(
        client,
        "StopTask",
        json!({"cluster": cluster, "task": task}),
    )
    .await?;
    loop {
        let described = call(
            client,
            "DescribeTasks",
            json!({"cluster": cluster, "tasks": [task]}),
        )
        .await?;
        if described["tasks"][0]["lastStatus"] == "STOPPED" {
            return Ok(elapsed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) async fn bench_fargate(iterations: usize) -> anyhow::Result<()> {
    let image = flotilla_docker::testing::ensure_test_image().map_err(|e| anyhow::anyhow!(e))?;
    let (server, data_dir) = start_server(|_| {}).await?;
    let endpoint = server.endpoint();
    let client = ServerClient::new(&endpoint, test_identity());
    let cluster = format!("bench-fargate-{}", std::process::id());
    call(&client, "CreateCluster", json!({"clusterName": cluster})).await?;
    let runtime: Arc<dyn flotilla_agent::Runtime> =
        Arc::new(flotilla_docker::DockerRuntime::connect().await?);
    let agent_stop = tokio_util::sync::CancellationToken::new();
    let mut agents = Vec::new();
    for fargate in [false, true] {
        let mut config = flotilla_agent::AgentConfig::new(
            &endpoint,
            &cluster,
            test_identity(),
            data_dir.join(if fargate { "agent-fargate" } else { "agent" }),
        );
        config.stopped_container_retention = Duration::ZERO;
        config.fargate_capacity = fargate;
        agents.push(tokio::spawn(flotilla_agent::run(
            config,
            runtime.clone(),
            agent_stop.clone(),
        )));
    }
    let container =
        json!({"name": "main", "image": image, "command": ["sleep", "3600"], "stopTimeout": 2});
    let mut ec2_container = container.clone();
    ec2_container["memory"] = json!(512);
    call(
        &client,
        "RegisterTaskDefinition",
        json!({"family": "launch-ec2", "cpu": "256", "containerDefinitions": [ec2_container]}),
    )
    .await?;
    call(
        &client,
        "RegisterTaskDefinition",
        json!({"family": "launch-fargate", "requiresCompatibilities": ["FARGATE"],
               "networkMode": "awsvpc", "cpu": "256", "memory": "512",
               "containerDefinitions": [container]}),
    )
    .await?;
    let ec2_request =
        json!({"cluster": cluster, "taskDefinition": "launch-ec2", "launchType": "EC2"});
    let fargate_request = json!({"cluster": cluster, "taskDefinition": "launch-fargate",
        "launchType": "FARGATE",
        "networkConfiguration": {"awsvpcConfiguration": {"subnets": ["subnet-0bench"]}}});
    // Both agents registered: the EC2 one shows in the list, the Fargate one takes a task.
    let mut ready = false;
    for _ in 0..400 {
        let listed = call(
            &client,
            "ListContainerInstances",
            json!({"cluster": cluster}),
        )
        .await?;
        if listed["containerInstanceArns"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::ensure!(ready, "the EC2 agent did not register");
    // A warm-up of each kind (the sandbox image is made on first use), retried until the
    // Fargate agent has registered.
    launch(&client, &cluster, ec2_request.clone()).await?;
    let mut warmed = false;
    for _ in 0..100 {
        let run = call(&client, "RunTask", fargate_request.clone()).await?;
        if let Some(task) = run["tasks"][0]["taskArn"].as_str() {
            call(
                &client,
                "StopTask",
                json!({"cluster": cluster, "task": task}),
            )
            .await?;
            warmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(warmed, "the Fargate agent did not register");
    launch(&client, &cluster, fargate_request.clone()).await?;
    println!(
        "flotilla bench fargate: {iterations} launches each of `{image}` (sleep), EC2 (bridge) and FARGATE (awsvpc) interleaved, one at a time"
    );
    let mut ec2 = Vec::with_capacity(iterations);
    let mut fargate = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        ec2.push(launch(&client, &cluster, ec2_request.clone()).await?);
        fargate.push(launch(&client, &cluster, fargate_request.clone()).await?);
    }
    ec2.sort();
    fargate.sort();
    println!(
        "EC2     RunTask -> RUNNING  p50 {:>7.1} ms  p99 {:>7.1} ms",
        percentile(&ec2, 0.5),
        percentile(&ec2, 0.99)
    );
    println!(
        "FARGATE RunTask -> RUNNING  p50 {:>7.1} ms  p99 {:>7.1} ms",
        percentile(&fargate, 0.5),
        percentile(&fargate, 0.99)
    );
    println!(
        "awsvpc adds                 p50 {:>7.1} ms  (goal: at most 100 ms)",
        percentile(&fargate, 0.5) - percentile(&ec2, 0.5)
    );
    agent_stop.cancel();
    for agent in agents {
        let _ = agent.await;
    }
    server.shutdown().await;
    super::remove_cluster_containers(&cluster).await?;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}
