//! `flotilla bench api`: signed API calls against an in-process server on loopback with the
//! embedded store and fake agents; prints throughput and latency percentiles per action.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use flotilla_agent::ServerClient;
use flotilla_testkit::{
    FakeAgent, FakeHost, FakeMode, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY, test_identity,
};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// RunTask, DescribeTasks and ListTasks throughput and latency.
    Api {
        /// Calls per action.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Fake container instances registered before the run.
        #[arg(long, default_value_t = 20)]
        hosts: usize,
    },
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Api {
            requests,
            concurrency,
            hosts,
        } => bench_api(requests, concurrency, hosts).await,
    }
}

const TARGET: &str = "AmazonEC2ContainerServiceV20141113";

async fn call(client: &ServerClient, action: &str, body: Value) -> anyhow::Result<Value> {
    Ok(client
        .call::<Value, Value>(&format!("{TARGET}.{action}"), &body)
        .await?)
}

/// Runs `total` calls from `concurrency` workers; returns per-call latencies and wall time.
async fn phase<F, Fut>(
    total: usize,
    concurrency: usize,
    make: F,
) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let make = Arc::new(make);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let make = make.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let at = Instant::now();
                make(i).await?;
                latencies.push(at.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(total);
    for worker in workers {
        all.extend(worker.await??);
    }
    Ok((all, started.elapsed()))
}

fn report(action: &str, mut latencies: Vec<Duration>, wall: Duration) {
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{action:<14} {:>6} calls  {:>8.0} calls/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        latencies.len(),
        latencies.len() as f64 / wall.as_secs_f64(),
        pick(0.50).as_secs_f64() * 1000.0,
        pick(0.99).as_secs_f64() * 1000.0,
    );
}

async fn bench_api(requests: usize, concurrency: usize, hosts: usize) -> anyhow::Result<()> {
    let data_dir = tempfile_dir()?;
    let store: Arc<dyn flotilla_store::Store> = Arc::new(flotilla_store::RedbStore::open(
        &data_dir.join("state.redb"),
    )?);
    let credentials = flotilla_api::sigv4::Credentials {
        access_key_id: TEST_ACCESS_KEY_ID.to_owned(),
        secret_access_key: TEST_SECRET_ACCESS_KEY.to_owned(),
    };
    let server = flotilla_server::start(
        flotilla_server::ServerConfig::new("127.0.0.1:0".parse()?, credentials),
        store,
    )
    .await?;
    let endpoint = server.endpoint();
    let client = ServerClient::new(&endpoint, test_identity());
    call(&client, "CreateCluster", json!({"clusterName": "bench"})).await?;
    let mut agents = Vec::new();
    for _ in 0..hosts {
        agents.push(
            FakeAgent::start(
                &endpoint,
                FakeHost::new("bench", 1_000_000, 100_000_000),
                FakeMode::AutoRun,
            )
            .await?,
        );
    }
    call(
        &client,
        "RegisterTaskDefinition",
        json!({"family": "bench", "containerDefinitions": [{"name": "app", "image": "busybox", "cpu": 1, "memory": 8}]}),
    )
    .await?;
    println!(
        "flotilla bench api: {requests} calls per action, {concurrency} concurrent clients, {hosts} fake hosts, embedded store on disk, SigV4 on every call"
    );

    let run_client = client.clone();
    let (latencies, wall) = phase(requests, concurrency, move |_| {
        let client = run_client.clone();
        async move {
            let answer = call(
                &client,
                "RunTask",
                json!({"cluster": "bench", "taskDefinition": "bench"}),
            )
            .await?;
            anyhow::ensure!(
                answer["tasks"].as_array().is_some_and(|t| t.len() == 1),
                "RunTask placed nothing: {answer}"
            );
            Ok(())
        }
    })
    .await?;
    report("RunTask", latencies, wall);

    let listed = call(
        &client,
        "ListTasks",
        json!({"cluster": "bench", "maxResults": 100}),
    )
    .await?;
    let arns: Vec<String> = listed["taskArns"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let arns = Arc::new(arns);
    let describe_client = client.clone();
    let (latencies, wall) = phase(requests, concurrency, move |i| {
        let client = describe_client.clone();
        let arns = arns.clone();
        async move {
            let task = &arns[i % arns.len()];
            call(
                &client,
                "DescribeTasks",
                json!({"cluster": "bench", "tasks": [task]}),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    report("DescribeTasks", latencies, wall);

    let list_client = client.clone();
    let (latencies, wall) = phase(requests, concurrency, move |_| {
        let client = list_client.clone();
        async move {
            call(
                &client,
                "ListTasks",
                json!({"cluster": "bench", "maxResults": 100}),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    report("ListTasks", latencies, wall);
    for agent in agents {
        agent.kill().await;
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("flotilla-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
