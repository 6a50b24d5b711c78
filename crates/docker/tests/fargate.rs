//! Fargate tasks (awsvpc, hard limits, the metadata endpoint) run by the agent's task
//! runner on the real Docker Engine, without a control plane: reports go to a recorder.

use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::metadata::serve_metadata;
use flotilla_agent::runtime::{Runtime, labels};
use flotilla_agent::task_engine::{EngineSettings, REASON_OUT_OF_MEMORY};
use flotilla_agent::task_runner::{
    RecordingReporter, RunnerContext, TaskHandle, TaskUpdate, Wakers, route_events, spawn_task,
};
use flotilla_docker::DockerRuntime;
use flotilla_docker::testing::{DockerCleanup, TEST_IMAGE, ensure_test_image, http_get};
use flotilla_model::task::{TaskNetwork, TaskOverride, TaskStatus, TaskStopCode};
use flotilla_model::{DesiredStatus, LaunchType, TaskDefinition, Timestamp};
use flotilla_protocol::{AssignedContainer, AssignedTask, TaskLaunch, TaskStateChange};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A safety net against hangs, never a measure of speed.
const WAIT_MAX: Duration = Duration::from_secs(60);
const CLUSTER: &str = "flotilla-fargate-test";

fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{test}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

struct Harness {
    reporter: Arc<RecordingReporter>,
    context: Arc<RunnerContext>,
    wakers: Arc<Wakers>,
    shutdown: CancellationToken,
    prefix: String,
    cleanup: std::sync::Mutex<DockerCleanup>,
}

impl Harness {
    /// A runner context with the metadata endpoint served on the cluster network.
    async fn new(test: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        ensure_test_image().unwrap_or_else(|e| panic!("{e}"));
        let prefix = unique(test);
        // Every task of the test carries its id prefix in the task-id label.
        let cleanup = DockerCleanup::new("com.flotilla.test", &prefix);
        let runtime = Arc::new(DockerRuntime::connect().await.expect("a Docker Engine"));
        let reporter = Arc::new(RecordingReporter::new());
        let settings = EngineSettings {
            stop_timeout_default: Duration::from_secs(2),
            retention: Duration::ZERO,
        };
        let mut context = RunnerContext::new(runtime.clone(), reporter.clone(), CLUSTER, settings);
        let network = runtime
            .ensure_cluster_network(CLUSTER)
            .await
            .expect("the cluster network");
        let gateway: std::net::IpAddr = network.gateway.parse().expect("a gateway address");
        let listener = tokio::net::TcpListener::bind((gateway, 0))
            .await
            .expect("listen on the gateway");
        context.metadata_endpoint = Some(format!("http://{}", listener.local_addr().unwrap()));
        let shutdown = CancellationToken::new();
        tokio::spawn(serve_metadata(
            listener,
            runtime.clone(),
            context.directory.clone(),
            shutdown.clone(),
        ));
        let wakers = Arc::new(Wakers::default());
        tokio::spawn(route_events(
            runtime.clone(),
            wakers.clone(),
            shutdown.clone(),
        ));
        Self {
            reporter,
            context: Arc::new(context),
            wakers,
            shutdown,
            prefix,
            cleanup: std::sync::Mutex::new(cleanup),
        }
    }

    /// A FARGATE task of 256 CPU units and 512 MiB with these containers.
    fn task(&self, name: &str, containers: Value) -> TaskUpdate {
        let task_arn = format!(
            "arn:aws:ecs:us-east-1:000000000000:task/{CLUSTER}/{}-{name}",
            self.prefix
        );
        self.cleanup
            .lock()
            .unwrap()
            .also(labels::TASK_ARN, &task_arn);
        let mut containers = containers;
        for container in containers.as_array_mut().into_iter().flatten() {
            container["image"] = json!(TEST_IMAGE);
            container["dockerLabels"] = json!({ "com.flotilla.test": self.prefix });
        }
        let definition: TaskDefinition = serde_json::from_value(json!({
            "taskDefinitionArn": "arn:aws:ecs:us-east-1:000000000000:task-definition/fargate:1",
            "family": "fargate",
            "revision": 1,
            "status": "ACTIVE",
            "networkMode": "awsvpc",
            "requiresCompatibilities": ["FARGATE"],
            "compatibilities": ["EC2", "FARGATE"],
            "cpu": "256",
            "memory": "512",
            "registeredAt": 0.0,
            "containerDefinitions": containers,
        }))
        .expect("a valid task definition");
        let task = AssignedTask {
            task_arn,
            cluster_arn: format!("arn:aws:ecs:us-east-1:000000000000:cluster/{CLUSTER}"),
            task_definition_arn: definition.task_definition_arn.clone(),
            desired_status: DesiredStatus::Running,
            last_status: TaskStatus::Provisioning,
            overrides: TaskOverride::default(),
            containers: definition
                .spec
                .container_definitions
                .iter()
                .map(|c| AssignedContainer {
                    name: c.name().to_owned(),
                    container_arn: String::new(),
                    runtime_id: None,
                })
                .collect(),
            gpu_ids: Vec::new(),
            stop_code: None,
            stopped_reason: None,
            version: 1,
            created_at: Timestamp::from_millis(0),
            launch: TaskLaunch {
                launch_type: LaunchType::Fargate,
                capacity_provider_name: Some("FARGATE".to_owned()),
                availability_zone: Some("us-east-1a".to_owned()),
                cpu: Some("256".to_owned()),
                memory: Some("512".to_owned()),
            },
        };
        TaskUpdate {
            task,
            definition: Some(definition),
            listed: true,
        }
    }

    fn start(&self, update: TaskUpdate) -> TaskHandle {
        spawn_task(
            self.context.clone(),
            self.wakers.clone(),
            update,
            self.shutdown.child_token(),
        )
    }

    async fn wait_for(
        &self,
        what: &str,
        predicate: impl FnMut(&TaskStateChange) -> bool,
    ) -> TaskStateChange {
        match tokio::time::timeout(WAIT_MAX, self.reporter.wait_for(predicate)).await {
            Ok(change) => change,
            Err(_) => panic!(
                "no report of {what}; reports so far: {:#?}",
                self.reporter.changes()
            ),
        }
    }

    /// The network of a task once it runs.
    async fn running(&self, task_arn: &str) -> TaskNetwork {
        let change = self
            .wait_for(&format!("{task_arn} RUNNING"), |c| {
                c.task_arn == task_arn && c.status == TaskStatus::Running
            })
            .await;
        change
            .network
            .expect("a RUNNING awsvpc task reports its network")
    }

    async fn stopped(&self, task_arn: &str) -> TaskStateChange {
        self.wait_for(&format!("{task_arn} STOPPED"), |c| {
            c.task_arn == task_arn && c.status == TaskStatus::Stopped
        })
        .await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn stop(handle: &TaskHandle) {
    let mut update = handle.current();
    update.task.desired_status = DesiredStatus::Stopped;
    update.task.stop_code = Some(TaskStopCode::UserInitiated);
    handle.update(update);
}

/// A web server answering with `body` on `port`, on all of the task's addresses.
fn web(name: &str, port: u16, body: &str) -> Value {
    json!({
        "name": name,
        "command": ["sh", "-c", format!(
            "mkdir -p /tmp/www && echo {body} > /tmp/www/index.html && exec httpd -f -p {port} -h /tmp/www"
        )],
        "portMappings": [{"containerPort": port}],
    })
}

/// Two Fargate tasks get their own addresses from the cluster's subnet, answer on them,
/// reach each other by address, and the containers of one task share localhost.
#[tokio::test]
async fn fargate_tasks_get_their_own_addresses_and_share_localhost_within_a_task() {
    let h = Harness::new("awsvpc").await;
    let a = h.task("a", json!([web("web", 8080, "hello-from-a")]));
    let b = h.task(
        "b",
        json!([
            web("web", 8080, "hello-from-b"),
            // Same task: the web server is on this container's localhost.
            {"name": "local", "essential": false,
             "command": ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://127.0.0.1:8080/ && exit 0; sleep 0.2; done; exit 1"]},
        ]),
    );
    let (arn_a, arn_b) = (a.task.task_arn.clone(), b.task.task_arn.clone());
    let handle_a = h.start(a);
    let handle_b = h.start(b);
    let network_a = h.running(&arn_a).await;
    let network_b = h.running(&arn_b).await;
    assert_ne!(
        network_a.private_ipv4_address,
        network_b.private_ipv4_address
    );
    assert_eq!(network_a.subnet_cidr, network_b.subnet_cidr);
    assert!(!network_a.mac_address.is_empty());
    assert!(http_get(&network_a.private_ipv4_address, 8080).contains("hello-from-a"));
    assert!(http_get(&network_b.private_ipv4_address, 8080).contains("hello-from-b"));

    let local = h
        .wait_for("the localhost client to finish", |c| {
            c.task_arn == arn_b
                && c.containers
                    .iter()
                    .any(|c| c.name == "local" && c.exit_code.is_some())
        })
        .await;
    let local = local.containers.iter().find(|c| c.name == "local").unwrap();
    assert_eq!(
        local.exit_code,
        Some(0),
        "localhost within a task: {local:?}"
    );

    // A third task reaches task A by its address.
    let c = h.task(
        "c",
        json!([{"name": "client", "command": ["sh", "-c", format!(
            "wget -q -O - http://{}:8080/ | grep -q hello-from-a", network_a.private_ipv4_address
        )]}]),
    );
    let arn_c = c.task.task_arn.clone();
    let handle_c = h.start(c);
    let stopped = h.stopped(&arn_c).await;
    assert_eq!(
        stopped.containers[0].exit_code,
        Some(0),
        "task to task by address: {stopped:?}"
    );

    for handle in [&handle_a, &handle_b] {
        stop(handle);
    }
    h.stopped(&arn_a).await;
    h.stopped(&arn_b).await;
    for handle in [handle_a, handle_b, handle_c] {
        tokio::time::timeout(WAIT_MAX, handle.join())
            .await
            .expect("runners end once their tasks are removed");
    }
    // The sandboxes went with the tasks.
    let docker = DockerRuntime::connect().await.unwrap();
    for arn in [&arn_a, &arn_b, &arn_c] {
        let sandbox = flotilla_agent::spec::sandbox_name(arn);
        assert!(docker.inspect(&sandbox).await.is_err(), "{sandbox} is gone");
    }
}

/// A Fargate task is held to its size: it is killed when it needs more memory, runs with
/// a CPU quota, a pids limit and no-new-privileges; and the task metadata endpoint answers
/// inside its containers.
#[tokio::test]
async fn fargate_tasks_are_held_to_their_size_and_read_their_metadata() {
    let h = Harness::new("limits").await;
    let hog = h.task(
        "hog",
        // `tail` keeps the last line of an endless line of zeros: it grows until stopped.
        json!([{"name": "hog", "command": ["sh", "-c", "tail /dev/zero"]}]),
    );
    let meta = h.task(
        "meta",
        json!([{"name": "reader", "command": ["sh", "-c",
            "wget -q -O /tmp/c \"$ECS_CONTAINER_METADATA_URI_V4\" && wget -q -O /tmp/t \"$ECS_CONTAINER_METADATA_URI_V4/task\" && wget -q -O /tmp/s \"$ECS_CONTAINER_METADATA_URI_V4/stats\" && grep -q '\"Name\":\"reader\"' /tmp/c && grep -q '\"LaunchType\":\"FARGATE\"' /tmp/t && grep -q '\"IPv4Addresses\"' /tmp/t && grep -q memory_stats /tmp/s && sleep 1000"]}]),
    );
    let (arn_hog, arn_meta) = (hog.task.task_arn.clone(), meta.task.task_arn.clone());
    let handle_hog = h.start(hog);
    let handle_meta = h.start(meta);

    let stopped = h.stopped(&arn_hog).await;
    let hog = &stopped.containers[0];
    assert_eq!(
        hog.reason.as_deref(),
        Some(REASON_OUT_OF_MEMORY),
        "{stopped:?}"
    );

    // The metadata reader keeps running only if every document answered as expected.
    h.running(&arn_meta).await;
    let docker = DockerRuntime::connect().await.unwrap();
    let name = flotilla_agent::spec::runtime_name(&arn_meta, "reader");
    let inspect = docker
        .client()
        .inspect_container(
            &name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    let host = inspect.host_config.unwrap();
    assert_eq!(host.memory, Some(512 * 1024 * 1024));
    assert_eq!(host.memory_swap, Some(512 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(256 * (1_000_000_000 / 1024)));
    assert_eq!(
        host.pids_limit,
        Some(flotilla_agent::spec::FARGATE_PIDS_MAX)
    );
    assert!(
        host.security_opt
            .unwrap_or_default()
            .iter()
            .any(|o| o.starts_with("no-new-privileges"))
    );
    assert!(
        host.network_mode
            .unwrap_or_default()
            .starts_with("container:")
    );
    // Give the reader time to fail, if it is going to.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let observed = docker.inspect(&name).await.unwrap();
    assert!(
        observed.is_running(),
        "the metadata reader exited: {:?}",
        observed.exit_code
    );
    assert_eq!(observed.label(labels::CONTAINER_NAME), Some("reader"));

    stop(&handle_meta);
    h.stopped(&arn_meta).await;
    for handle in [handle_hog, handle_meta] {
        tokio::time::timeout(WAIT_MAX, handle.join())
            .await
            .expect("runners end once their tasks are removed");
    }
}
