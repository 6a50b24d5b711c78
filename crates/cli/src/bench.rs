//! Benchmarks that print figures. `api`: signed API calls against an in-process server on
//! loopback with the embedded store and fake agents. `launch`: RunTask to RUNNING on the
//! local Docker Engine against a bare `docker run -d` of the same image.

use std::collections::BTreeMap;
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
    /// Push and pull throughput of a several-layer image: Flotilla's registry vs the CNCF
    /// registry (Debian's docker-registry) vs the disk's write rate.
    Registry {
        #[arg(long, default_value_t = 4)]
        layers: usize,
        /// MiB per layer.
        #[arg(long, default_value_t = 256)]
        layer_mib: usize,
    },
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
    /// Placement through the API, the plan applier and the embedded store at scale.
    Scheduler {
        #[arg(long, default_value_t = 10_000)]
        hosts: usize,
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Concurrent RunTask clients (each asks for 10 tasks per call).
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// A service on the local Docker Engine: time from a container's death to its
    /// replacement RUNNING, and the duration of a rolling update.
    Service {
        /// Tasks in the service (and in the rolling update).
        #[arg(long, default_value_t = 20)]
        tasks: u32,
        /// Containers killed one after another, each waited for until replaced.
        #[arg(long, default_value_t = 10)]
        kills: usize,
    },
    /// RunTask to RUNNING of a FARGATE (awsvpc) task against the same task on EC2.
    Fargate {
        /// Launches of each kind.
        #[arg(long, default_value_t = 20)]
        iterations: usize,
    },
    /// RunTask to RUNNING for a local image, against `docker run -d`, in the same run.
    Launch {
        /// Launches of each kind.
        #[arg(long, default_value_t = 20)]
        iterations: usize,
    },
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Registry { layers, layer_mib } => {
            crate::registry_bench::bench_registry(layers, layer_mib).await
        }
        BenchCommand::Api {
            requests,
            concurrency,
            hosts,
        } => bench_api(requests, concurrency, hosts).await,
        BenchCommand::Launch { iterations } => bench_launch(iterations).await,
        BenchCommand::Fargate { iterations } => fargate::bench_fargate(iterations).await,
        BenchCommand::Service { tasks, kills } => bench_service(tasks, kills).await,
        BenchCommand::Scheduler {
            hosts,
            tasks,
            concurrency,
        } => bench_scheduler(hosts, tasks, concurrency).await,
    }
}

#[path = "bench_fargate.rs"]
mod fargate;

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

/// An in-process server on loopback with an on-disk store in a fresh temporary dir.
async fn start_server(
    tune: impl FnOnce(&mut flotilla_server::ServerConfig),
) -> anyhow::Result<(flotilla_server::RunningServer, std::path::PathBuf)> {
    let data_dir = tempfile_dir()?;
    let store: Arc<dyn flotilla_store::Store> = Arc::new(flotilla_store::RedbStore::open(
        &data_dir.join("state.redb"),
    )?);
    let credentials = flotilla_api::sigv4::Credentials {
        access_key_id: TEST_ACCESS_KEY_ID.to_owned(),
        secret_access_key: TEST_SECRET_ACCESS_KEY.to_owned(),
    };
    let mut config = flotilla_server::ServerConfig::new("127.0.0.1:0".parse()?, credentials);
    tune(&mut config);
    Ok((flotilla_server::start(config, store).await?, data_dir))
}

async fn bench_api(requests: usize, concurrency: usize, hosts: usize) -> anyhow::Result<()> {
    let (server, data_dir) = start_server(|_| {}).await?;
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

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

async fn bench_launch(iterations: usize) -> anyhow::Result<()> {
    let image = flotilla_docker::testing::ensure_test_image().map_err(|e| anyhow::anyhow!(e))?;
    let bench = DockerBench::start("bench-launch").await?;
    let (client, cluster) = (bench.client.clone(), bench.cluster.clone());
    call(
        &client,
        "RegisterTaskDefinition",
        json!({"family": "launch", "containerDefinitions": [{"name": "main", "image": image, "memory": 16, "command": ["sleep", "3600"], "stopTimeout": 2}]}),
    )
    .await?;
    bench.wait_for_agent().await?;
    println!(
        "flotilla bench launch: {iterations} launches each of `{image}` (sleep), one at a time"
    );
    let mut flotilla = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let run = call(
            &client,
            "RunTask",
            json!({"cluster": cluster, "taskDefinition": "launch"}),
        )
        .await?;
        let task = run["tasks"][0]["taskArn"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        anyhow::ensure!(!task.is_empty(), "RunTask placed nothing: {run}");
        loop {
            let described = call(
                &client,
                "DescribeTasks",
                json!({"cluster": cluster, "tasks": [task]}),
            )
            .await?;
            match described["tasks"][0]["lastStatus"].as_str() {
                Some("RUNNING") => break,
                Some("STOPPED") => anyhow::bail!("the task stopped: {described}"),
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
        flotilla.push(started.elapsed());
        call(
            &client,
            "StopTask",
            json!({"cluster": cluster, "task": task}),
        )
        .await?;
        loop {
            let described = call(
                &client,
                "DescribeTasks",
                json!({"cluster": cluster, "tasks": [task]}),
            )
            .await?;
            if described["tasks"][0]["lastStatus"] == "STOPPED" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut docker = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let output = tokio::process::Command::new("docker")
            .args([
                "run",
                "-d",
                "--label",
                &format!("com.flotilla.bench={cluster}"),
                "-m",
                "16m",
                image,
                "sleep",
                "3600",
            ])
            .output()
            .await?;
        docker.push(started.elapsed());
        anyhow::ensure!(
            output.status.success(),
            "docker run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        tokio::process::Command::new("docker")
            .args(["rm", "-f", &id])
            .output()
            .await?;
    }
    flotilla.sort();
    docker.sort();
    println!(
        "flotilla RunTask -> RUNNING   p50 {:>7.1} ms  p99 {:>7.1} ms",
        percentile(&flotilla, 0.5),
        percentile(&flotilla, 0.99)
    );
    println!(
        "docker run -d                  p50 {:>7.1} ms  p99 {:>7.1} ms",
        percentile(&docker, 0.5),
        percentile(&docker, 0.99)
    );
    println!(
        "flotilla adds                  p50 {:>7.1} ms",
        percentile(&flotilla, 0.5) - percentile(&docker, 0.5)
    );
    bench.finish().await
}

/// The service's RUNNING tasks (desired RUNNING, last status RUNNING) with their task
/// definitions.
/// A RUNNING task of a service: its ARN, task definition ARN, and whether it has proven
/// itself (up for 40 s: its death is a crash, not a failed start the throttle holds back).
type RunningTask = (String, String, bool);

/// How long a task without health checks must run before its death counts as a crash
/// rather than a failed start (the reconciler's `HEALTHY_AFTER_RUNNING_MS`), plus a margin.
const PROVEN_AFTER_SECONDS: f64 = 41.0;

fn unix_now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn running_service_tasks(
    client: &ServerClient,
    cluster: &str,
    service: &str,
) -> anyhow::Result<Vec<RunningTask>> {
    let listed = call(
        client,
        "ListTasks",
        json!({"cluster": cluster, "serviceName": service, "maxResults": 100}),
    )
    .await?;
    let arns: Vec<Value> = listed["taskArns"].as_array().cloned().unwrap_or_default();
    let mut running = Vec::new();
    for chunk in arns.chunks(100) {
        let described = call(
            client,
            "DescribeTasks",
            json!({"cluster": cluster, "tasks": chunk}),
        )
        .await?;
        for task in described["tasks"].as_array().into_iter().flatten() {
            if task["lastStatus"] == "RUNNING" {
                running.push((
                    task["taskArn"].as_str().unwrap_or_default().to_owned(),
                    task["taskDefinitionArn"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    task["startedAt"]
                        .as_f64()
                        .is_some_and(|at| unix_now_seconds() - at > PROVEN_AFTER_SECONDS),
                ));
            }
        }
    }
    Ok(running)
}

/// Waits until the service has one deployment and `desired` RUNNING tasks of `revision`.
async fn wait_service_stable(
    client: &ServerClient,
    cluster: &str,
    service: &str,
    desired: usize,
    revision: &str,
) -> anyhow::Result<()> {
    for _ in 0..12_000 {
        let described = call(
            client,
            "DescribeServices",
            json!({"cluster": cluster, "services": [service]}),
        )
        .await?;
        let one = described["services"][0]["deployments"]
            .as_array()
            .is_some_and(|d| d.len() == 1);
        if one {
            let running = running_service_tasks(client, cluster, service).await?;
            if running.len() == desired && running.iter().all(|(_, td, _)| td.ends_with(revision)) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("the service never became stable")
}

async fn bench_service(tasks: u32, kills: usize) -> anyhow::Result<()> {
    let image = flotilla_docker::testing::ensure_test_image().map_err(|e| anyhow::anyhow!(e))?;
    let bench = DockerBench::start("bench-service").await?;
    let (client, cluster) = (bench.client.clone(), bench.cluster.clone());
    for revision in ["1", "2"] {
        call(
            &client,
            "RegisterTaskDefinition",
            json!({"family": "svc", "containerDefinitions": [{"name": "main", "image": image, "memory": 8, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"], "stopTimeout": 2, "environment": [{"name": "REVISION", "value": revision}]}]}),
        )
        .await?;
    }
    bench.wait_for_agent().await?;
    let result = async {
        println!("flotilla bench service: {tasks} tasks of `{image}` (sleep), one agent");
        let started = Instant::now();
        call(
            &client,
            "CreateService",
            json!({"cluster": cluster, "serviceName": "bench", "taskDefinition": "svc:1", "desiredCount": tasks}),
        )
        .await?;
        wait_service_stable(&client, &cluster, "bench", tasks as usize, ":1").await?;
        println!(
            "create -> stable ({tasks} tasks)        {:>8.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        println!("waiting until the tasks have been up for 40 s (a death before is a failed start)");
        let mut replacements = Vec::with_capacity(kills);
        for _ in 0..kills {
            // The victim is a task that proved itself (up for 40 s), as a long-running task
            // that crashes would have: its replacement is not held back by the throttle.
            let waited = Instant::now();
            let (before, victim) = loop {
                let before = running_service_tasks(&client, &cluster, "bench").await?;
                if let Some((victim, _, _)) = before.iter().find(|(_, _, healthy)| *healthy) {
                    let victim = victim.clone();
                    break (before, victim);
                }
                anyhow::ensure!(
                    waited.elapsed() < Duration::from_secs(90),
                    "no task of the service has been up for 40 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let ids = tokio::process::Command::new("docker")
                .args(["ps", "-q", "--filter", &format!("label=com.flotilla.task-arn={victim}")])
                .output()
                .await?;
            let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            anyhow::ensure!(!ids.is_empty(), "no container for {victim}");
            let killed_at = Instant::now();
            tokio::process::Command::new("docker")
                .arg("kill")
                .args(&ids)
                .output()
                .await?;
            loop {
                let now = running_service_tasks(&client, &cluster, "bench").await?;
                let fresh = now
                    .iter()
                    .any(|(arn, _, _)| !before.iter().any(|(b, _, _)| b == arn));
                if fresh && now.len() == tasks as usize {
                    break;
                }
                anyhow::ensure!(
                    killed_at.elapsed() < Duration::from_secs(120),
                    "the killed task was never replaced"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            replacements.push(killed_at.elapsed());
        }
        replacements.sort();
        println!(
            "container death -> replacement RUNNING  p50 {:>7.1} ms  max {:>7.1} ms  ({kills} kills)",
            percentile(&replacements, 0.5),
            percentile(&replacements, 1.0)
        );
        let started = Instant::now();
        call(
            &client,
            "UpdateService",
            json!({"cluster": cluster, "service": "bench", "taskDefinition": "svc:2"}),
        )
        .await?;
        wait_service_stable(&client, &cluster, "bench", tasks as usize, ":2").await?;
        println!(
            "rolling update 1 -> 2 ({tasks} tasks, 100%/200%, healthy 40 s after RUNNING)  {:>8.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        call(
            &client,
            "DeleteService",
            json!({"cluster": cluster, "service": "bench", "force": true}),
        )
        .await?;
        for _ in 0..3000 {
            if running_service_tasks(&client, &cluster, "bench").await?.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    bench.finish().await?;
    result
}

/// An in-process server with one agent on the local Docker Engine, in a cluster of its own.
struct DockerBench {
    server: flotilla_server::RunningServer,
    data_dir: std::path::PathBuf,
    client: ServerClient,
    cluster: String,
    agent_stop: tokio_util::sync::CancellationToken,
    agent: tokio::task::JoinHandle<Result<(), flotilla_agent::AgentError>>,
}

impl DockerBench {
    async fn start(prefix: &str) -> anyhow::Result<Self> {
        let (server, data_dir) = start_server(|_| {}).await?;
        let endpoint = server.endpoint();
        let client = ServerClient::new(&endpoint, test_identity());
        let cluster = format!("{prefix}-{}", std::process::id());
        call(&client, "CreateCluster", json!({"clusterName": cluster})).await?;
        let runtime: Arc<dyn flotilla_agent::Runtime> =
            Arc::new(flotilla_docker::DockerRuntime::connect().await?);
        let agent_stop = tokio_util::sync::CancellationToken::new();
        let mut agent_config = flotilla_agent::AgentConfig::new(
            &endpoint,
            &cluster,
            test_identity(),
            data_dir.join("agent"),
        );
        // Stopped bench containers are of no use to anyone: remove them at once.
        agent_config.stopped_container_retention = Duration::ZERO;
        let agent = tokio::spawn(flotilla_agent::run(
            agent_config,
            runtime,
            agent_stop.clone(),
        ));
        Ok(Self {
            server,
            data_dir,
            client,
            cluster,
            agent_stop,
            agent,
        })
    }

    /// Waits (bounded, 10 s) until the agent has registered.
    async fn wait_for_agent(&self) -> anyhow::Result<()> {
        for _ in 0..400 {
            let listed = call(
                &self.client,
                "ListContainerInstances",
                json!({"cluster": self.cluster}),
            )
            .await?;
            if listed["containerInstanceArns"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("the agent never registered")
    }

    /// Stops the agent and the server and removes the cluster's containers and data.
    async fn finish(self) -> anyhow::Result<()> {
        self.agent_stop.cancel();
        let _ = self.agent.await;
        self.server.shutdown().await;
        remove_cluster_containers(&self.cluster).await?;
        let _ = std::fs::remove_dir_all(&self.data_dir);
        Ok(())
    }
}

/// Removes every container a bench's cluster left on the local Docker Engine, then the
/// cluster's network (Docker has address pools for only about 30 networks).
pub(crate) async fn remove_cluster_containers(cluster: &str) -> anyhow::Result<()> {
    let leftovers = tokio::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.flotilla.cluster={cluster}"),
        ])
        .output()
        .await?;
    let ids: Vec<String> = String::from_utf8_lossy(&leftovers.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        tokio::process::Command::new("docker")
            .arg("rm")
            .arg("-f")
            .args(&ids)
            .output()
            .await?;
    }
    tokio::process::Command::new("docker")
        .args(["network", "rm", &format!("flotilla-{cluster}")])
        .output()
        .await?;
    Ok(())
}

/// CPU time this process has used (user + system), from /proc/self/stat: what a placement
/// costs, whatever else the machine is doing (wall-clock rates move with noisy neighbours).
fn process_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// User plus system CPU of a `/proc/.../stat` line, in seconds.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may hold spaces: count fields after it.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    Some(ticks / 100.0)
}

/// CPU seconds of this process's live threads, summed by thread name (as the kernel keeps
/// it: at most 15 bytes). Empty where `/proc` is not there.
fn thread_cpu_seconds() -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    let Ok(threads) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for thread in threads.flatten() {
        let Ok(stat) = std::fs::read_to_string(thread.path().join("stat")) else {
            continue; // it ended meanwhile
        };
        let name = stat
            .find('(')
            .zip(stat.rfind(')'))
            .map_or("?", |(open, close)| &stat[open + 1..close]);
        if let Some(seconds) = stat_cpu_seconds(&stat) {
            *by_name.entry(name.to_owned()).or_insert(0.0) += seconds;
        }
    }
    by_name
}

/// Where a phase's CPU went, as cores busy per thread name, busiest first. What threads
/// that ended during the phase used (the store's short-lived log threads) is `other`.
fn cpu_by_thread(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    process_seconds: f64,
    wall: Duration,
) -> String {
    let mut used: Vec<(String, f64)> = after
        .iter()
        .map(|(name, seconds)| {
            let start = before.get(name).copied().unwrap_or(0.0);
            (name.clone(), (seconds - start).max(0.0))
        })
        .filter(|(_, seconds)| *seconds > 0.0)
        .collect();
    let counted: f64 = used.iter().map(|(_, seconds)| seconds).sum();
    used.push(("other".into(), (process_seconds - counted).max(0.0)));
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used.iter()
        .map(|(name, seconds)| format!("{name} {:.2}", seconds / wall.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Peak resident memory of this process, from /proc (Linux).
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The bench's `i`-th RunTask of `count` tasks: one of 10 groups, spread by zone then
/// instance, production hosts only.
fn run_task(count: usize, i: usize) -> serde_json::Value {
    json!({
        "cluster": "sched", "taskDefinition": "sched", "count": count,
        "group": format!("service:s{}", i % 10),
        "placementConstraints": [{"type": "memberOf", "expression": "attribute:stack == prod"}],
        "placementStrategy": [
            {"type": "spread", "field": "attribute:ecs.availability-zone"},
            {"type": "spread", "field": "instanceId"}
        ]
    })
}

/// Calls RunTask and counts the tasks placed, skipping over the tasks' contents rather than
/// building a JSON tree of them: the client's share of the bench's CPU is not the server's.
async fn run_task_count(client: &ServerClient, body: Value) -> anyhow::Result<usize> {
    #[derive(serde::Deserialize)]
    struct Placed {
        #[serde(default)]
        tasks: Vec<serde::de::IgnoredAny>,
    }
    let placed: Placed = client
        .call::<Value, Placed>(&format!("{TARGET}.RunTask"), &body)
        .await?;
    Ok(placed.tasks.len())
}

async fn bench_scheduler(hosts: usize, tasks: usize, concurrency: usize) -> anyhow::Result<()> {
    const TASKS_PER_CALL: usize = 10;
    const SINGLE_PLACEMENTS: usize = 500;
    // The simulated hosts never poll; keep them connected for the whole run.
    let (server, data_dir) =
        start_server(|config| config.disconnect_timeout = Duration::from_secs(24 * 3600)).await?;
    let client = ServerClient::new(server.endpoint(), test_identity());
    call(&client, "CreateCluster", json!({"clusterName": "sched"})).await?;
    println!(
        "flotilla bench scheduler: {hosts} simulated hosts, {tasks} tasks in RunTask calls of {TASKS_PER_CALL}, {concurrency} concurrent clients, spread(zone) + spread(instanceId) + memberOf(attribute:stack == prod), embedded store on disk"
    );
    let registering = Instant::now();
    let register_client = client.clone();
    phase(hosts, concurrency, move |i| {
        let client = register_client.clone();
        async move {
            let zone = ["zone-a", "zone-b", "zone-c"][i % 3];
            let stack = if i % 4 == 3 { "dev" } else { "prod" };
            call(
                &client,
                "RegisterContainerInstance",
                json!({
                    "cluster": "sched",
                    "instanceIdentityDocument": format!("{{\"instanceId\": \"i-{i:017x}\"}}"),
                    "totalResources": [
                        {"name": "CPU", "type": "INTEGER", "integerValue": 16384},
                        {"name": "MEMORY", "type": "INTEGER", "integerValue": 65536}
                    ],
                    "attributes": [
                        {"name": "ecs.availability-zone", "value": zone},
                        {"name": "stack", "value": stack}
                    ]
                }),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    println!(
        "registered {hosts} hosts in {:.1} s",
        registering.elapsed().as_secs_f64()
    );
    call(
        &client,
        "RegisterTaskDefinition",
        json!({"family": "sched", "containerDefinitions": [{"name": "app", "image": "busybox", "cpu": 16, "memory": 32}]}),
    )
    .await?;
    let calls = tasks.div_ceil(TASKS_PER_CALL);
    let placed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let run_client = client.clone();
    let counter = placed.clone();
    let cpu_before = process_cpu_seconds();
    let threads_before = thread_cpu_seconds();
    let (mut latencies, wall) = phase(calls, concurrency, move |i| {
        let client = run_client.clone();
        let counter = counter.clone();
        async move {
            let n = run_task_count(&client, run_task(TASKS_PER_CALL, i)).await?;
            counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    })
    .await?;
    let cpu_used = cpu_before
        .zip(process_cpu_seconds())
        .map_or(0.0, |(before, after)| after - before);
    let threads_after = thread_cpu_seconds();
    latencies.sort();
    let placed = placed.load(std::sync::atomic::Ordering::Relaxed);
    // A single placement's latency, one call at a time on the now full cluster: what one
    // RunTask of one task costs end to end (HTTP, SigV4, the applier, a durable commit)
    // when it does not queue behind 31 other clients.
    let mut single = Vec::with_capacity(SINGLE_PLACEMENTS);
    for i in 0..SINGLE_PLACEMENTS {
        let started = Instant::now();
        let answer = call(&client, "RunTask", run_task(1, i)).await?;
        anyhow::ensure!(
            answer["tasks"].as_array().map_or(0, Vec::len) == 1,
            "a single RunTask placed nothing: {answer}"
        );
        single.push(started.elapsed());
    }
    single.sort();
    // Conflicts make the applier drop its index and rebuild it (costly at 100,000 hosts);
    // with nothing else writing the hosts there should be none.
    let metrics = reqwest::get(format!("{}/metrics", server.endpoint()))
        .await?
        .text()
        .await?;
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    println!(
        "plan applier: {:.0} batches committed, {:.0} conflicted",
        counter("flotilla_placement_batches_committed_total"),
        counter("flotilla_placement_batch_conflicts_total")
    );
    println!(
        "placed {placed} tasks in {:.1} s: {:.0} placements/s ({:.0} µs of CPU each, client included, {:.2} of {} cores busy); RunTask of {TASKS_PER_CALL} under load p50 {:.2} ms, p99 {:.2} ms; single placement (RunTask of 1, one at a time) p50 {:.2} ms, p99 {:.2} ms; peak memory {:.0} MiB",
        wall.as_secs_f64(),
        placed as f64 / wall.as_secs_f64(),
        cpu_used * 1e6 / placed.max(1) as f64,
        cpu_used / wall.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&single, 0.5),
        percentile(&single, 0.99),
        peak_memory_mib().unwrap_or(0.0)
    );
    // The applier and the store writer each run one batch at a time: a stage near one core
    // busy is the one that sets the pace.
    println!(
        "cores busy by thread while placing: {}",
        cpu_by_thread(&threads_before, &threads_after, cpu_used, wall)
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name may hold spaces and parentheses; the times are counted after its last `)`.
    #[test]
    fn reads_user_and_system_time_after_an_odd_thread_name() {
        let stat = "42 (a (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(stat_cpu_seconds(stat), Some(3.0));
        assert_eq!(stat_cpu_seconds("42 (short) S 1"), None);
    }

    /// Threads are charged what they used during the phase; what ended threads used, and
    /// threads that stayed idle, do not show by name.
    #[test]
    fn charges_each_thread_its_share_and_the_rest_to_other() {
        let before = BTreeMap::from([("tokio-rt-worker".to_owned(), 3.0)]);
        let after = BTreeMap::from([
            ("tokio-rt-worker".to_owned(), 4.0),
            ("flotilla-applie".to_owned(), 1.5),
            ("idle".to_owned(), 0.0),
        ]);
        assert_eq!(
            cpu_by_thread(&before, &after, 3.0, Duration::from_secs(2)),
            "flotilla-applie 0.75, tokio-rt-worker 0.50, other 0.25"
        );
    }
}
