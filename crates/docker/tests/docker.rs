//! The agent's task runner on the real Docker Engine, without a control plane: reports go
//! to a recorder the tests await. Images are built locally (`flotilla-test/busybox`); every
//! test labels its task uniquely and removes its containers and volumes on drop.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::runtime::{ListFilter, Runtime, labels};
use flotilla_agent::task_engine::{EngineSettings, REASON_ESSENTIAL_EXITED, REASON_OUT_OF_MEMORY};
use flotilla_agent::task_runner::{
    RecordingReporter, RunnerContext, TaskHandle, TaskUpdate, Wakers, route_events, spawn_task,
};
use flotilla_docker::DockerRuntime;
use flotilla_docker::testing::{DockerCleanup, ensure_test_image};
use flotilla_model::task::{HealthStatus, TaskOverride, TaskStatus, TaskStopCode};
use flotilla_model::{DesiredStatus, TaskDefinition, Timestamp};
use flotilla_protocol::{AssignedContainer, AssignedTask, ContainerStateChange, TaskStateChange};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A safety net against hangs, never a measure of speed.
const WAIT_MAX: Duration = Duration::from_secs(120);
const CLUSTER: &str = "flotilla-test";

fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{test}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// A host directory the test shares with its containers.
struct HostDir(PathBuf);

impl HostDir {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("flotilla-{}", unique(test)));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Harness {
    runtime: Arc<DockerRuntime>,
    reporter: Arc<RecordingReporter>,
    context: Arc<RunnerContext>,
    wakers: Arc<Wakers>,
    shutdown: CancellationToken,
    task_arn: String,
    _cleanup: DockerCleanup,
}

impl Harness {
    async fn new(test: &str) -> Self {
        let task_arn = format!(
            "arn:aws:ecs:us-east-1:000000000000:task/{CLUSTER}/{}",
            unique(test)
        );
        Self::for_task(task_arn).await
    }

    async fn for_task(task_arn: String) -> Self {
        // `RUST_LOG=flotilla_agent=debug cargo test ...` shows what the runner does.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        ensure_test_image().unwrap_or_else(|e| panic!("{e}"));
        let cleanup = DockerCleanup::new(labels::TASK_ARN, &task_arn);
        let runtime = Arc::new(
            DockerRuntime::connect()
                .await
                .expect("a Docker Engine on the local socket"),
        );
        let reporter = Arc::new(RecordingReporter::new());
        // Retention 0: a stopped task is removed as soon as its STOPPED report is accepted.
        let settings = EngineSettings {
            stop_timeout_default: Duration::from_secs(5),
            retention: Duration::ZERO,
        };
        let context = Arc::new(RunnerContext::new(
            runtime.clone(),
            reporter.clone(),
            CLUSTER,
            settings,
        ));
        let wakers = Arc::new(Wakers::default());
        let shutdown = CancellationToken::new();
        tokio::spawn(route_events(
            runtime.clone(),
            wakers.clone(),
            shutdown.clone(),
        ));
        Self {
            runtime,
            reporter,
            context,
            wakers,
            shutdown,
            task_arn,
            _cleanup: cleanup,
        }
    }

    fn update(&self, spec: Value) -> TaskUpdate {
        let mut definition = json!({
            "taskDefinitionArn": "arn:aws:ecs:us-east-1:000000000000:task-definition/test:1",
            "family": "test",
            "revision": 1,
            "status": "ACTIVE",
            "networkMode": "bridge",
            "compatibilities": ["EC2"],
            "registeredAt": 0.0,
        });
        for (key, value) in spec.as_object().cloned().unwrap_or_default() {
            definition[key] = value;
        }
        for container in definition["containerDefinitions"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if container.get("image").is_none() {
                container["image"] = json!(flotilla_docker::testing::TEST_IMAGE);
            }
        }
        let definition: TaskDefinition =
            serde_json::from_value(definition).expect("a valid task definition");
        let task = AssignedTask {
            task_arn: self.task_arn.clone(),
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
            launch: Default::default(),
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

    async fn containers(&self) -> Vec<flotilla_agent::runtime::ObservedContainer> {
        self.runtime
            .list(&ListFilter::task(&self.task_arn))
            .await
            .expect("list")
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
    update.task.stopped_reason = Some("Task stopped by user".to_owned());
    handle.update(update);
}

fn container<'a>(change: &'a TaskStateChange, name: &str) -> &'a ContainerStateChange {
    change
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name} in {change:#?}"))
}

async fn join(handle: TaskHandle) {
    tokio::time::timeout(WAIT_MAX, handle.join())
        .await
        .expect("the runner ends once the task is removed");
}

const SLEEP_FOREVER: &str = "trap 'exit 0' TERM; sleep 1000 & wait";

#[tokio::test]
async fn dependencies_start_in_order_and_share_a_task_volume() {
    let h = Harness::new("depends").await;
    let update = h.update(json!({
        "volumes": [{"name": "shared", "dockerVolumeConfiguration": {"scope": "task"}}],
        "containerDefinitions": [
            {"name": "init", "essential": false,
             "command": ["sh", "-c", "echo hello-from-init > /shared/greeting"],
             "mountPoints": [{"sourceVolume": "shared", "containerPath": "/shared"}]},
            {"name": "app", "command": ["sh", "-c", format!("cat /shared/greeting; {SLEEP_FOREVER}")],
             "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}],
             "mountPoints": [{"sourceVolume": "shared", "containerPath": "/shared"}]},
        ],
    }));
    let handle = h.start(update);

    let pending = h
        .wait_for("PENDING", |c| c.status == TaskStatus::Pending)
        .await;
    assert!(pending.pull_started_at.is_some());
    let running = h
        .wait_for("RUNNING", |c| c.status == TaskStatus::Running)
        .await;
    assert!(running.pull_stopped_at.is_some() && running.started_at.is_some());
    let init = container(&running, "init");
    assert_eq!(
        (init.status, init.exit_code),
        (TaskStatus::Stopped, Some(0))
    );
    assert_eq!(container(&running, "app").status, TaskStatus::Running);

    // The app read what init wrote: it started after init succeeded.
    let mut logs = flotilla_agent::logs(&*h.runtime, &h.task_arn, Some("app"), true)
        .await
        .expect("logs");
    let mut output = String::new();
    while !output.contains("hello-from-init") {
        let chunk = tokio::time::timeout(WAIT_MAX, logs.next())
            .await
            .expect("log output")
            .expect("open stream");
        output.push_str(&String::from_utf8_lossy(&chunk.expect("a chunk").bytes));
    }
    drop(logs);

    stop(&handle);
    let stopped = h
        .wait_for("STOPPED", |c| c.status == TaskStatus::Stopped)
        .await;
    assert_eq!(stopped.stop_code, Some(TaskStopCode::UserInitiated));
    assert_eq!(
        container(&stopped, "app").exit_code,
        Some(0),
        "the app's TERM trap ran"
    );
    assert!(stopped.execution_stopped_at.is_some());
    join(handle).await;
    assert!(
        h.containers().await.is_empty(),
        "containers are removed after the retention period"
    );
    let volumes = h
        .runtime
        .list_volumes(&ListFilter::task(&h.task_arn))
        .await
        .unwrap();
    assert!(
        volumes.is_empty(),
        "task volumes are removed with the task: {volumes:?}"
    );
}

#[tokio::test]
async fn a_dynamic_host_port_serves_http() {
    let h = Harness::new("http").await;
    let update = h.update(json!({"containerDefinitions": [{
        "name": "web",
        "command": ["sh", "-c", "echo hello-flotilla > /www/index.html && exec httpd -f -p 80 -h /www"],
        "portMappings": [{"containerPort": 80}],
        "linuxParameters": {"initProcessEnabled": true},
        "healthCheck": {"command": ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:80/"],
                        "interval": 1, "timeout": 2, "retries": 3},
    }]}));
    let handle = h.start(update);
    let healthy = h
        .wait_for("a healthy web server", |c| {
            c.status == TaskStatus::Running && c.health_status == Some(HealthStatus::Healthy)
        })
        .await;
    let bindings = container(&healthy, "web").network_bindings.clone();
    let binding = bindings
        .iter()
        .find(|b| b.container_port == Some(80) && b.bind_ip.as_deref() == Some("0.0.0.0"))
        .cloned()
        .expect("a host port for port 80");
    let port = binding.host_port.expect("a host port") as u16;
    assert_ne!(port, 80, "the host port is picked by Docker");

    let response = tokio::task::spawn_blocking(move || {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the host port");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("hello-flotilla"), "{response}");

    stop(&handle);
    let stopped = h
        .wait_for("STOPPED", |c| c.status == TaskStatus::Stopped)
        .await;
    assert_eq!(
        container(&stopped, "web").network_bindings,
        bindings,
        "bindings outlive the container"
    );
    join(handle).await;
}

#[tokio::test]
async fn essential_exits_stop_the_task_and_non_essential_ones_do_not() {
    let h = Harness::new("essential").await;
    let flag = HostDir::new("essential");
    let update = h.update(json!({
        "volumes": [{"name": "flag", "host": {"sourcePath": flag.path()}}],
        "containerDefinitions": [
            {"name": "side", "essential": false, "command": ["sh", "-c", "exit 3"]},
            {"name": "peer", "command": ["sh", "-c", SLEEP_FOREVER], "stopTimeout": 20},
            {"name": "main", "command": ["sh", "-c", "until [ -f /flag/exit ]; do sleep 1; done; exit 7"],
             "mountPoints": [{"sourceVolume": "flag", "containerPath": "/flag", "readOnly": true}]},
        ],
    }));
    let handle = h.start(update);
    let running = h
        .wait_for("RUNNING after the non-essential exit", |c| {
            c.status == TaskStatus::Running
                && c.containers
                    .iter()
                    .any(|s| s.name == "side" && s.status == TaskStatus::Stopped)
        })
        .await;
    assert_eq!(container(&running, "side").exit_code, Some(3));
    assert_eq!(container(&running, "main").status, TaskStatus::Running);

    std::fs::write(flag.0.join("exit"), b"").unwrap();
    let stopped = h
        .wait_for("STOPPED", |c| c.status == TaskStatus::Stopped)
        .await;
    assert_eq!(
        stopped.stop_code,
        Some(TaskStopCode::EssentialContainerExited)
    );
    assert_eq!(stopped.reason.as_deref(), Some(REASON_ESSENTIAL_EXITED));
    assert_eq!(container(&stopped, "main").exit_code, Some(7));
    assert_eq!(
        container(&stopped, "peer").exit_code,
        Some(0),
        "the peer was stopped with SIGTERM"
    );
    assert_eq!(container(&stopped, "side").exit_code, Some(3));
    join(handle).await;
}

#[tokio::test]
async fn health_checks_turn_healthy_and_unhealthy() {
    let h = Harness::new("health").await;
    let flag = HostDir::new("health");
    let update = h.update(json!({
        "volumes": [{"name": "flag", "host": {"sourcePath": flag.path()}}],
        "containerDefinitions": [{
            "name": "app", "command": ["sh", "-c", SLEEP_FOREVER],
            "mountPoints": [{"sourceVolume": "flag", "containerPath": "/flag"}],
            "healthCheck": {"command": ["CMD-SHELL", "test -f /flag/healthy"], "interval": 1, "timeout": 1, "retries": 1},
        }],
    }));
    let handle = h.start(update);
    let running = h
        .wait_for("RUNNING", |c| c.status == TaskStatus::Running)
        .await;
    assert_ne!(running.health_status, Some(HealthStatus::Healthy));

    std::fs::write(flag.0.join("healthy"), b"").unwrap();
    let healthy = h
        .wait_for("HEALTHY", |c| {
            c.health_status == Some(HealthStatus::Healthy)
        })
        .await;
    assert_eq!(
        container(&healthy, "app").health_status,
        Some(HealthStatus::Healthy)
    );

    std::fs::remove_file(flag.0.join("healthy")).unwrap();
    let unhealthy = h
        .wait_for("UNHEALTHY", |c| {
            c.health_status == Some(HealthStatus::Unhealthy)
        })
        .await;
    assert_eq!(
        container(&unhealthy, "app").health_status,
        Some(HealthStatus::Unhealthy)
    );
    assert_eq!(
        unhealthy.status,
        TaskStatus::Running,
        "an unhealthy task keeps running; schedulers replace it"
    );

    stop(&handle);
    h.wait_for("STOPPED", |c| c.status == TaskStatus::Stopped)
        .await;
    join(handle).await;
}

#[tokio::test]
async fn stop_kills_a_container_that_ignores_sigterm_after_its_stop_timeout() {
    let h = Harness::new("stoptimeout").await;
    let update = h.update(json!({"containerDefinitions": [{
        "name": "stubborn", "command": ["sh", "-c", "trap '' TERM; sleep 1000"], "stopTimeout": 2,
    }]}));
    let handle = h.start(update);
    h.wait_for("RUNNING", |c| c.status == TaskStatus::Running)
        .await;

    let asked = Instant::now();
    stop(&handle);
    let stopping = h
        .wait_for("STOPPING", |c| c.status == TaskStatus::Stopping)
        .await;
    assert_eq!(stopping.stop_code, Some(TaskStopCode::UserInitiated));
    let stopped = h
        .wait_for("STOPPED", |c| c.status == TaskStatus::Stopped)
        .await;
    assert_eq!(
        container(&stopped, "stubborn").exit_code,
        Some(137),
        "killed with SIGKILL"
    );
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "SIGKILL came only after the stop timeout"
    );
    join(handle).await;
}

#[tokio::test]
async fn the_memory_limit_is_enforced_and_an_oom_kill_reported() {
    let h = Harness::new("oom").await;
    // The hog is a child of the shell, which lingers a second after the kill: when the
    // killed process is the container's last one, Docker can miss the kernel's OOM
    // notification (the cgroup is gone before it is read) and not flag the container.
    let update = h.update(json!({"containerDefinitions": [{
        "name": "hog", "memory": 16,
        "command": ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1; code=$?; sleep 1; exit $code"],
    }]}));
    let handle = h.start(update);
    let stopped = h
        .wait_for("STOPPED", |c| c.status == TaskStatus::Stopped)
        .await;
    assert_eq!(
        stopped.stop_code,
        Some(TaskStopCode::EssentialContainerExited)
    );
    let hog = container(&stopped, "hog");
    assert_eq!(hog.exit_code, Some(137));
    assert_eq!(hog.reason.as_deref(), Some(REASON_OUT_OF_MEMORY));
    join(handle).await;
}

#[tokio::test]
async fn a_new_runtime_and_runner_adopt_running_containers() {
    let first = Harness::new("adopt").await;
    let update = first.update(json!({"containerDefinitions": [
        {"name": "db", "command": ["sh", "-c", SLEEP_FOREVER]},
        {"name": "app", "command": ["sh", "-c", SLEEP_FOREVER],
         "dependsOn": [{"containerName": "db", "condition": "START"}]},
    ]}));
    let handle = first.start(update.clone());
    let running = first
        .wait_for("RUNNING", |c| c.status == TaskStatus::Running)
        .await;
    let before: Vec<String> = first.containers().await.into_iter().map(|c| c.id).collect();
    assert_eq!(before.len(), 2);

    // The agent goes away; its containers keep running.
    first.shutdown.cancel();
    join(handle).await;

    // A new agent (new Docker client, empty memory) is told the task runs, as the control
    // plane would after a restart.
    let second = Harness::for_task(first.task_arn.clone()).await;
    let mut update = update;
    update.task.last_status = TaskStatus::Running;
    for assigned in &mut update.task.containers {
        assigned.runtime_id = container(&running, &assigned.name).runtime_id.clone();
    }
    let handle = second.start(update);
    let adopted = second
        .wait_for("RUNNING", |c| c.status == TaskStatus::Running)
        .await;
    let mut after: Vec<String> = second
        .containers()
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut expected = before.clone();
    after.sort();
    expected.sort();
    assert_eq!(after, expected, "the same containers, no duplicates");
    for name in ["db", "app"] {
        assert_eq!(
            container(&adopted, name).runtime_id,
            container(&running, name).runtime_id
        );
    }
    assert_eq!(adopted.pull_started_at, None, "nothing was pulled again");

    // The control plane forgets the task: it is stopped and removed, without reports.
    let reports = second.reporter.changes().len();
    let mut forgotten = handle.current();
    forgotten.listed = false;
    handle.update(forgotten);
    join(handle).await;
    assert!(second.containers().await.is_empty());
    assert_eq!(second.reporter.changes().len(), reports);
    drop(first);
}

#[tokio::test]
async fn container_definition_settings_reach_docker() {
    let h = Harness::new("settings").await;
    let update = h.update(json!({"containerDefinitions": [{
        "name": "app", "command": ["sh", "-c", SLEEP_FOREVER],
        "environment": [{"name": "GREETING", "value": "hi"}],
        "workingDirectory": "/tmp", "user": "nobody", "hostname": "app-host",
        "cpu": 128, "memory": 64, "memoryReservation": 32,
        "ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 2048}],
        "dockerLabels": {"team": "a"},
        "extraHosts": [{"hostname": "db.local", "ipAddress": "10.1.2.3"}],
        "readonlyRootFilesystem": true,
        "linuxParameters": {
            "initProcessEnabled": true, "sharedMemorySize": 32,
            "tmpfs": [{"containerPath": "/scratch", "size": 8}],
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["MKNOD"]},
        },
        "dnsServers": ["10.0.0.2"], "dnsSearchDomains": ["corp.local"],
        "dockerSecurityOptions": ["no-new-privileges"],
        "systemControls": [{"namespace": "net.core.somaxconn", "value": "512"}],
        "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/app"}},
        "stopTimeout": 3,
    }]}));
    let handle = h.start(update);
    let running = h
        .wait_for("RUNNING", |c| c.status == TaskStatus::Running)
        .await;
    let id = container(&running, "app")
        .runtime_id
        .clone()
        .expect("a container id");
    let inspect = h
        .runtime
        .client()
        .inspect_container(
            &id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    let config = inspect.config.unwrap();
    assert!(config.env.unwrap().contains(&"GREETING=hi".to_owned()));
    assert_eq!(config.working_dir.as_deref(), Some("/tmp"));
    assert_eq!(config.user.as_deref(), Some("nobody"));
    assert_eq!(config.hostname.as_deref(), Some("app-host"));
    assert_eq!(config.stop_timeout, Some(3));
    let container_labels = config.labels.unwrap();
    assert_eq!(container_labels["team"], "a");
    assert_eq!(container_labels[labels::TASK_ARN], h.task_arn);
    assert_eq!(container_labels[labels::CONTAINER_NAME], "app");
    assert_eq!(container_labels["com.flotilla.log.driver"], "awslogs");
    assert_eq!(
        container_labels["com.flotilla.log.awslogs-group"],
        "/ecs/app"
    );
    let host = inspect.host_config.unwrap();
    const MIB: i64 = 1024 * 1024;
    assert_eq!(host.cpu_shares, Some(128));
    assert_eq!(host.memory, Some(64 * MIB));
    assert_eq!(host.memory_reservation, Some(32 * MIB));
    let ulimit = &host.ulimits.unwrap()[0];
    assert_eq!(
        (ulimit.name.as_deref(), ulimit.soft, ulimit.hard),
        (Some("nofile"), Some(1024), Some(2048))
    );
    assert_eq!(
        host.extra_hosts.unwrap(),
        vec!["db.local:10.1.2.3".to_owned()]
    );
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.init, Some(true));
    assert_eq!(host.shm_size, Some(32 * MIB));
    assert_eq!(host.tmpfs.unwrap()["/scratch"], "size=8m");
    assert_eq!(host.cap_add.unwrap(), vec!["NET_ADMIN".to_owned()]);
    assert_eq!(host.cap_drop.unwrap(), vec!["MKNOD".to_owned()]);
    assert_eq!(host.dns.unwrap(), vec!["10.0.0.2".to_owned()]);
    assert_eq!(host.dns_search.unwrap(), vec!["corp.local".to_owned()]);
    assert_eq!(
        host.security_opt.unwrap(),
        vec!["no-new-privileges".to_owned()]
    );
    assert_eq!(host.sysctls.unwrap()["net.core.somaxconn"], "512");
    assert_eq!(host.log_config.unwrap().typ.as_deref(), Some("json-file"));

    stop(&handle);
    h.wait_for("STOPPED", |c| c.status == TaskStatus::Stopped)
        .await;
    join(handle).await;
}
