//! The whole agent (`run`) against a scripted control plane that speaks the agent protocol,
//! with the in-memory runtime: registration, polling, reporting, restart adoption, orphans,
//! retries.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flotilla_agent::fake::FakeRuntime;
use flotilla_agent::logs::serve_logs;
use flotilla_agent::runtime::{ContainerStatus, LogStream, Runtime, RuntimeEvent};
use flotilla_agent::spec::{SpecContext, container_spec};
use flotilla_agent::{AgentConfig, AgentError, SigningIdentity, fetch_logs, run};
use flotilla_model::task::{TaskOverride, TaskStatus, TaskStopCode};
use flotilla_model::{DesiredStatus, TaskDefinition, Timestamp};
use flotilla_protocol::*;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A safety net against hangs, never a measure of speed.
const WAIT_MAX: Duration = Duration::from_secs(30);
const CLUSTER_ARN: &str = "arn:aws:ecs:us-east-1:000000000000:cluster/default";
const INSTANCE_ARN: &str = "arn:aws:ecs:us-east-1:000000000000:container-instance/default/1";

#[derive(Default)]
struct PlaneState {
    registrations: Vec<RegisterRequest>,
    polls: u64,
    tasks: BTreeMap<String, AssignedTask>,
    definitions: BTreeMap<String, TaskDefinition>,
    reports: Vec<TaskStateChange>,
    revision: u64,
    failing_polls: u32,
}

/// A control plane that keeps the desired state of one instance and records what it hears.
#[derive(Clone)]
struct Plane {
    state: Arc<Mutex<PlaneState>>,
    changes: watch::Sender<u64>,
}

impl Plane {
    async fn start() -> (Self, String) {
        let plane = Plane {
            state: Arc::default(),
            changes: watch::channel(0).0,
        };
        let app = axum::Router::new()
            .route("/", axum::routing::post(handle))
            .with_state(plane.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (plane, endpoint)
    }

    fn change(&self, f: impl FnOnce(&mut PlaneState)) {
        let revision = {
            let mut state = self.state.lock().unwrap();
            f(&mut state);
            state.revision += 1;
            state.revision
        };
        self.changes.send_replace(revision);
    }

    fn read<T>(&self, f: impl FnOnce(&PlaneState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    async fn wait_until(&self, what: &str, mut predicate: impl FnMut(&PlaneState) -> bool) {
        let mut changes = self.changes.subscribe();
        let waited = tokio::time::timeout(WAIT_MAX, async {
            loop {
                if self.read(&mut predicate) {
                    return;
                }
                changes.changed().await.unwrap();
            }
        });
        if waited.await.is_err() {
            panic!(
                "timed out waiting for {what}; reports: {:#?}",
                self.read(|s| s.reports.clone())
            );
        }
    }

    fn add_task(&self, task_arn: &str, spec: serde_json::Value) {
        let definition = definition(spec);
        let task = AssignedTask {
            task_arn: task_arn.to_owned(),
            cluster_arn: CLUSTER_ARN.to_owned(),
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
        self.change(|s| {
            s.definitions
                .insert(definition.task_definition_arn.clone(), definition);
            s.tasks.insert(task_arn.to_owned(), task);
        });
    }

    fn stop_task(&self, task_arn: &str) {
        self.change(|s| {
            if let Some(task) = s.tasks.get_mut(task_arn) {
                task.desired_status = DesiredStatus::Stopped;
                task.stop_code = Some(TaskStopCode::UserInitiated);
                task.stopped_reason = Some("Task stopped by user".to_owned());
            }
        });
    }
}

impl PlaneState {
    fn has_report(&self, task_arn: &str, status: TaskStatus) -> bool {
        self.reports
            .iter()
            .any(|r| r.task_arn == task_arn && r.status == status)
    }
}

fn definition(spec: serde_json::Value) -> TaskDefinition {
    let mut value = json!({
        "taskDefinitionArn": "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1",
        "family": "web", "revision": 1, "status": "ACTIVE", "networkMode": "bridge",
        "compatibilities": ["EC2"], "registeredAt": 0.0,
    });
    for (k, v) in spec.as_object().cloned().unwrap_or_default() {
        value[k] = v;
    }
    serde_json::from_value(value).unwrap()
}

fn two_containers() -> serde_json::Value {
    json!({"containerDefinitions": [
        {"name": "db", "image": "busybox"},
        {"name": "app", "image": "busybox", "dependsOn": [{"containerName": "db", "condition": "START"}]},
    ]})
}

async fn handle(State(plane): State<Plane>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let call = target
        .strip_prefix("FlotillaAgentV1.")
        .and_then(AgentCall::parse);
    match call {
        Some(AgentCall::Register) => {
            let request: RegisterRequest = serde_json::from_slice(&body).unwrap();
            plane.change(|s| s.registrations.push(request));
            axum::Json(RegisterResponse {
                container_instance_arn: INSTANCE_ARN.to_owned(),
                cluster_arn: CLUSTER_ARN.to_owned(),
                heartbeat_interval_ms: 5_000,
                disconnect_timeout_ms: 30_000,
            })
            .into_response()
        }
        Some(AgentCall::Poll) => {
            let request: PollRequest = serde_json::from_slice(&body).unwrap();
            let fail = {
                let mut state = plane.state.lock().unwrap();
                state.polls += 1;
                let fail = state.failing_polls > 0;
                state.failing_polls = state.failing_polls.saturating_sub(1);
                fail
            };
            if fail {
                let error = json!({"__type": "ServerException", "message": "try again"});
                return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(error)).into_response();
            }
            let mut changes = plane.changes.subscribe();
            if *changes.borrow_and_update() <= request.since_revision {
                let _ = tokio::time::timeout(
                    Duration::from_millis(request.wait_ms.min(30_000)),
                    changes.changed(),
                )
                .await;
            }
            let response = plane.read(|s| PollResponse {
                revision: s.revision,
                instance_status: "ACTIVE".to_owned(),
                tasks: s
                    .tasks
                    .values()
                    .filter(|t| t.last_status < TaskStatus::Stopped)
                    .cloned()
                    .collect(),
                task_definitions: s.definitions.clone(),
            });
            axum::Json(response).into_response()
        }
        Some(AgentCall::Report) => {
            let request: ReportRequest = serde_json::from_slice(&body).unwrap();
            let mut accepted = Vec::new();
            plane.change(|s| {
                for change in request.tasks {
                    if let Some(task) = s.tasks.get_mut(&change.task_arn) {
                        task.last_status = task.last_status.max(change.status);
                        for reported in &change.containers {
                            if let Some(c) =
                                task.containers.iter_mut().find(|c| c.name == reported.name)
                                && reported.runtime_id.is_some()
                            {
                                c.runtime_id = reported.runtime_id.clone();
                            }
                        }
                        accepted.push(change.task_arn.clone());
                    }
                    s.reports.push(change);
                }
            });
            axum::Json(ReportResponse { accepted }).into_response()
        }
        None => (StatusCode::BAD_REQUEST, "unknown target").into_response(),
    }
}

struct DataDir(PathBuf);

impl DataDir {
    fn new(test: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self(std::env::temp_dir().join(format!(
            "flotilla-agent-{test}-{}-{nanos}",
            std::process::id()
        )))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(endpoint: &str, data_dir: &DataDir) -> AgentConfig {
    let identity = SigningIdentity {
        access_key_id: "FLOTILLATESTKEY00001".to_owned(),
        secret_access_key: "secret".to_owned(),
        region: "us-east-1".to_owned(),
    };
    let mut config = AgentConfig::new(endpoint, "default", identity, data_dir.0.clone());
    config.zone = Some("zone-a".to_owned());
    config.attributes = vec![("stack".to_owned(), "blue".to_owned())];
    config.stopped_container_retention = Duration::ZERO;
    config.pull_attempts_max = 1;
    config
}

struct Agent {
    token: CancellationToken,
    join: tokio::task::JoinHandle<Result<(), AgentError>>,
}

impl Agent {
    fn start(config: AgentConfig, runtime: &FakeRuntime) -> Self {
        let token = CancellationToken::new();
        let runtime: Arc<dyn Runtime> = Arc::new(runtime.clone());
        let join = tokio::spawn(run(config, runtime, token.clone()));
        Self { token, join }
    }

    async fn stop(self) {
        self.token.cancel();
        let result = tokio::time::timeout(WAIT_MAX, self.join)
            .await
            .expect("the agent stops")
            .unwrap();
        result.expect("a clean shutdown");
    }
}

/// Waits until `condition` holds for the fake runtime, re-checking on each of its events.
async fn wait_runtime(
    runtime: &FakeRuntime,
    what: &str,
    mut condition: impl FnMut(&FakeRuntime) -> bool,
) {
    let mut events = runtime.events();
    let waited = tokio::time::timeout(WAIT_MAX, async {
        while !condition(runtime) {
            let _: Option<Result<RuntimeEvent, _>> = events.next().await;
        }
    });
    if waited.await.is_err() {
        panic!(
            "timed out waiting for {what}; calls: {:#?}",
            runtime.calls()
        );
    }
}

#[tokio::test]
async fn registers_runs_reports_and_cleans_up_a_task() {
    let (plane, endpoint) = Plane::start().await;
    let runtime = FakeRuntime::new();
    let data_dir = DataDir::new("lifecycle");
    let agent = Agent::start(config(&endpoint, &data_dir), &runtime);

    plane
        .wait_until("a registration", |s| !s.registrations.is_empty())
        .await;
    let registration = plane.read(|s| s.registrations[0].clone());
    assert_eq!(registration.protocol_version, PROTOCOL_VERSION);
    assert_eq!(registration.cluster, "default");
    assert!(
        registration.ec2_instance_id.starts_with("i-") && registration.ec2_instance_id.len() == 19
    );
    let cores = std::thread::available_parallelism().unwrap().get() as i64;
    assert_eq!(registration.resources.cpu, cores * 1024);
    assert!(registration.resources.memory_mib > 0);
    assert!(registration.resources.ports_tcp.contains(&22));
    let attribute = |name: &str| {
        registration
            .attributes
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.value.clone())
    };
    assert_eq!(attribute("ecs.os-type").as_deref(), Some("linux"));
    assert_eq!(
        attribute("ecs.availability-zone").as_deref(),
        Some("zone-a")
    );
    assert_eq!(attribute("stack").as_deref(), Some("blue"));
    assert_eq!(
        registration.version_info.docker_version.as_deref(),
        Some("Fake 1.0")
    );

    let task_arn = "arn:aws:ecs:us-east-1:000000000000:task/default/lifecycle";
    plane.add_task(task_arn, two_containers());
    plane
        .wait_until("RUNNING", |s| s.has_report(task_arn, TaskStatus::Running))
        .await;
    let running: Vec<_> = runtime
        .containers()
        .into_iter()
        .filter(|c| c.observed.is_running())
        .collect();
    assert_eq!(running.len(), 2);
    let statuses: Vec<TaskStatus> = plane.read(|s| s.reports.iter().map(|r| r.status).collect());
    assert_eq!(statuses.first(), Some(&TaskStatus::Pending));
    assert!(
        statuses.windows(2).all(|w| w[0] <= w[1]),
        "reports never go backwards: {statuses:?}"
    );

    plane.stop_task(task_arn);
    plane
        .wait_until("STOPPED", |s| s.has_report(task_arn, TaskStatus::Stopped))
        .await;
    let stopped = plane.read(|s| {
        s.reports
            .iter()
            .rfind(|r| r.status == TaskStatus::Stopped)
            .cloned()
            .unwrap()
    });
    assert_eq!(stopped.stop_code, Some(TaskStopCode::UserInitiated));
    wait_runtime(&runtime, "the containers' removal", |r| {
        r.containers().is_empty()
    })
    .await;
    let calls = runtime.calls();
    let stop_app = calls
        .iter()
        .position(|c| c == "stop app 30s")
        .expect("app stopped");
    let stop_db = calls
        .iter()
        .position(|c| c == "stop db 30s")
        .expect("db stopped");
    assert!(stop_app < stop_db, "the dependent stops first: {calls:?}");
    agent.stop().await;
}

#[tokio::test]
async fn a_restarted_agent_keeps_its_identity_and_adopts_its_containers() {
    let (plane, endpoint) = Plane::start().await;
    let runtime = FakeRuntime::new();
    let data_dir = DataDir::new("adopt");

    // Containers of a task the control plane does not know: the agent must clean them up.
    let orphan_arn = "arn:aws:ecs:us-east-1:000000000000:task/default/orphan";
    let orphan_definition =
        definition(json!({"containerDefinitions": [{"name": "old", "image": "busybox"}]}));
    let mut orphan_task = AssignedTask {
        task_arn: orphan_arn.to_owned(),
        cluster_arn: CLUSTER_ARN.to_owned(),
        task_definition_arn: orphan_definition.task_definition_arn.clone(),
        desired_status: DesiredStatus::Running,
        last_status: TaskStatus::Running,
        overrides: TaskOverride::default(),
        containers: Vec::new(),
        gpu_ids: Vec::new(),
        stop_code: None,
        stopped_reason: None,
        version: 1,
        created_at: Timestamp::from_millis(0),
        launch: Default::default(),
    };
    orphan_task.containers.clear();
    // The orphan was left by this host's agent before: it carries this host's id.
    std::fs::create_dir_all(&data_dir.0).unwrap();
    flotilla_agent::host::save_state(
        &data_dir.0,
        &flotilla_agent::host::AgentState {
            ec2_instance_id: "i-0a1b2c3d4e5f60718".to_owned(),
            cluster: None,
            container_instance_arn: None,
        },
    )
    .unwrap();
    let spec = container_spec(
        &orphan_task,
        &orphan_definition,
        &orphan_definition.spec.container_definitions[0],
        &SpecContext {
            instance_id: Some("i-0a1b2c3d4e5f60718"),
            cluster: "default",
            stop_timeout_default: Duration::from_secs(30),
            ..Default::default()
        },
    );
    runtime.ensure_image("busybox", None).await.unwrap();
    let orphan_id = runtime.create(&spec).await.unwrap();
    runtime.start(&orphan_id).await.unwrap();

    let first = Agent::start(config(&endpoint, &data_dir), &runtime);
    let task_arn = "arn:aws:ecs:us-east-1:000000000000:task/default/adopted";
    plane.add_task(task_arn, two_containers());
    plane
        .wait_until("RUNNING", |s| s.has_report(task_arn, TaskStatus::Running))
        .await;
    wait_runtime(&runtime, "the orphan's removal", |r| {
        r.container(orphan_arn, "old").is_none()
    })
    .await;
    assert!(
        runtime.calls().contains(&"stop old 30s".to_owned()),
        "{:?}",
        runtime.calls()
    );
    first.stop().await;
    let running_after_shutdown = runtime
        .containers()
        .iter()
        .filter(|c| c.observed.status == ContainerStatus::Running)
        .count();
    assert_eq!(running_after_shutdown, 2, "containers outlive the agent");
    let creates_before = runtime
        .calls()
        .iter()
        .filter(|c| c.starts_with("create "))
        .count();
    let running_reports = plane.read(|s| {
        s.reports
            .iter()
            .filter(|r| r.status == TaskStatus::Running)
            .count()
    });

    let second = Agent::start(config(&endpoint, &data_dir), &runtime);
    plane
        .wait_until("a second registration", |s| s.registrations.len() == 2)
        .await;
    let (first_registration, second_registration) =
        plane.read(|s| (s.registrations[0].clone(), s.registrations[1].clone()));
    assert_eq!(first_registration.container_instance_arn, None);
    assert_eq!(
        second_registration.container_instance_arn.as_deref(),
        Some(INSTANCE_ARN)
    );
    assert_eq!(
        second_registration.ec2_instance_id,
        first_registration.ec2_instance_id
    );

    // The new agent looks at the task, reports it RUNNING again and creates nothing.
    plane
        .wait_until("the adopted task's report", |s| {
            s.reports
                .iter()
                .filter(|r| r.status == TaskStatus::Running)
                .count()
                > running_reports
        })
        .await;
    assert_eq!(
        runtime
            .calls()
            .iter()
            .filter(|c| c.starts_with("create "))
            .count(),
        creates_before
    );
    assert_eq!(runtime.containers().len(), 2, "no duplicates");

    plane.stop_task(task_arn);
    plane
        .wait_until("STOPPED", |s| s.has_report(task_arn, TaskStatus::Stopped))
        .await;
    wait_runtime(&runtime, "the containers' removal", |r| {
        r.containers().is_empty()
    })
    .await;
    second.stop().await;
}

#[tokio::test]
async fn poll_errors_are_retried() {
    let (plane, endpoint) = Plane::start().await;
    plane.change(|s| s.failing_polls = 2);
    let runtime = FakeRuntime::new();
    let data_dir = DataDir::new("retry");
    let agent = Agent::start(config(&endpoint, &data_dir), &runtime);
    let task_arn = "arn:aws:ecs:us-east-1:000000000000:task/default/retry";
    plane.add_task(
        task_arn,
        json!({"containerDefinitions": [{"name": "app", "image": "busybox"}]}),
    );
    plane
        .wait_until("RUNNING", |s| s.has_report(task_arn, TaskStatus::Running))
        .await;
    assert!(plane.read(|s| s.polls) >= 3);
    agent.stop().await;
}

#[tokio::test]
async fn an_essential_exit_and_a_failed_pull_are_reported() {
    let (plane, endpoint) = Plane::start().await;
    let runtime = FakeRuntime::new();
    runtime.fail_pull("missing:1", "manifest unknown");
    let data_dir = DataDir::new("failures");
    let agent = Agent::start(config(&endpoint, &data_dir), &runtime);

    let exits = "arn:aws:ecs:us-east-1:000000000000:task/default/exits";
    plane.add_task(exits, two_containers());
    plane
        .wait_until("RUNNING", |s| s.has_report(exits, TaskStatus::Running))
        .await;
    runtime.exit(exits, "app", 2);
    plane
        .wait_until("STOPPED", |s| s.has_report(exits, TaskStatus::Stopped))
        .await;
    let stopped = plane.read(|s| {
        s.reports
            .iter()
            .rfind(|r| r.task_arn == exits)
            .cloned()
            .unwrap()
    });
    assert_eq!(
        stopped.stop_code,
        Some(TaskStopCode::EssentialContainerExited)
    );
    assert_eq!(
        stopped.reason.as_deref(),
        Some("Essential container in task exited")
    );
    let app = stopped.containers.iter().find(|c| c.name == "app").unwrap();
    assert_eq!(app.exit_code, Some(2));

    let pulls = "arn:aws:ecs:us-east-1:000000000000:task/default/pulls";
    plane.change(|s| {
        s.definitions.clear();
    });
    plane.add_task(
        pulls,
        json!({"containerDefinitions": [{"name": "app", "image": "missing:1"}]}),
    );
    plane
        .wait_until("STOPPED", |s| s.has_report(pulls, TaskStatus::Stopped))
        .await;
    let stopped = plane.read(|s| {
        s.reports
            .iter()
            .rfind(|r| r.task_arn == pulls)
            .cloned()
            .unwrap()
    });
    assert_eq!(stopped.stop_code, Some(TaskStopCode::TaskFailedToStart));
    let reason = stopped.reason.unwrap_or_default();
    assert!(
        reason.starts_with("CannotPullContainerError:") && reason.contains("manifest unknown"),
        "{reason}"
    );
    agent.stop().await;
}

async fn read_all(
    mut stream: flotilla_agent::runtime::BoxStream<
        'static,
        Result<Bytes, flotilla_agent::LogsError>,
    >,
) -> String {
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("a chunk")));
    }
    text
}

#[tokio::test]
async fn logs_are_served_over_http() {
    let runtime = FakeRuntime::new();
    let task_arn = "arn:aws:ecs:us-east-1:000000000000:task/default/0123abcd";
    let definition = definition(json!({"containerDefinitions": [
        {"name": "app", "image": "busybox"}, {"name": "side", "image": "busybox"}]}));
    let task = AssignedTask {
        task_arn: task_arn.to_owned(),
        cluster_arn: CLUSTER_ARN.to_owned(),
        task_definition_arn: definition.task_definition_arn.clone(),
        desired_status: DesiredStatus::Running,
        last_status: TaskStatus::Running,
        overrides: TaskOverride::default(),
        containers: Vec::new(),
        gpu_ids: Vec::new(),
        stop_code: None,
        stopped_reason: None,
        version: 1,
        created_at: Timestamp::from_millis(0),
        launch: Default::default(),
    };
    runtime.ensure_image("busybox", None).await.unwrap();
    let context = SpecContext {
        instance_id: None,
        cluster: "default",
        stop_timeout_default: Duration::from_secs(30),
        ..Default::default()
    };
    for container in &definition.spec.container_definitions {
        runtime
            .create(&container_spec(&task, &definition, container, &context))
            .await
            .unwrap();
    }
    runtime.write_log(task_arn, "app", LogStream::Stdout, "hello\n");
    runtime.write_log(task_arn, "side", LogStream::Stderr, "oops\n");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let token = CancellationToken::new();
    let server = tokio::spawn(serve_logs(
        listener,
        Arc::new(runtime.clone()),
        token.clone(),
    ));

    let app = fetch_logs(&endpoint, task_arn, Some("app"), false)
        .await
        .unwrap();
    assert_eq!(read_all(app).await, "hello\n");
    let all = read_all(
        fetch_logs(&endpoint, "0123abcd", None, false)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        all.lines().collect::<std::collections::BTreeSet<_>>(),
        ["app | hello", "side | oops"].into()
    );
    let missing = fetch_logs(&endpoint, task_arn, Some("nope"), false)
        .await
        .err()
        .expect("an unknown container");
    assert!(
        missing.to_string().contains("404") && missing.to_string().contains("app, side"),
        "{missing}"
    );

    token.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_restart_policy_restarts_the_same_container_in_place() {
    use flotilla_agent::task_engine::EngineSettings;
    use flotilla_agent::task_runner::{
        RecordingReporter, RunnerContext, TaskUpdate, Wakers, route_events, spawn_task,
    };

    let runtime = FakeRuntime::new();
    let reporter = Arc::new(RecordingReporter::new());
    let settings = EngineSettings {
        stop_timeout_default: Duration::from_secs(30),
        retention: Duration::ZERO,
    };
    let context = Arc::new(RunnerContext::new(
        Arc::new(runtime.clone()),
        reporter.clone(),
        "default",
        settings,
    ));
    let wakers = Arc::new(Wakers::default());
    let token = CancellationToken::new();
    tokio::spawn(route_events(
        Arc::new(runtime.clone()),
        wakers.clone(),
        token.clone(),
    ));

    let task_arn = "arn:aws:ecs:us-east-1:000000000000:task/default/restarts";
    let definition = definition(
        json!({"containerDefinitions": [{"name": "app", "image": "busybox",
        "restartPolicy": {"enabled": true, "ignoredExitCodes": [0], "restartAttemptPeriod": 0}}]}),
    );
    let task = AssignedTask {
        task_arn: task_arn.to_owned(),
        cluster_arn: CLUSTER_ARN.to_owned(),
        task_definition_arn: definition.task_definition_arn.clone(),
        desired_status: DesiredStatus::Running,
        last_status: TaskStatus::Provisioning,
        overrides: TaskOverride::default(),
        containers: Vec::new(),
        gpu_ids: Vec::new(),
        stop_code: None,
        stopped_reason: None,
        version: 1,
        created_at: Timestamp::from_millis(0),
        launch: Default::default(),
    };
    let handle = spawn_task(
        context,
        wakers,
        TaskUpdate {
            task,
            definition: Some(definition),
            listed: true,
        },
        token.child_token(),
    );
    let running = tokio::time::timeout(
        WAIT_MAX,
        reporter.wait_for(|c| c.status == TaskStatus::Running),
    )
    .await
    .unwrap();
    let id = running.containers[0].runtime_id.clone().unwrap();

    runtime.exit(task_arn, "app", 1);
    wait_runtime(&runtime, "the restart", |r| {
        r.calls().iter().filter(|c| *c == "start app").count() == 2
    })
    .await;
    wait_runtime(&runtime, "the container running again", |r| {
        r.container(task_arn, "app")
            .is_some_and(|c| c.observed.is_running())
    })
    .await;
    assert_eq!(runtime.containers().len(), 1);
    assert_eq!(
        runtime.container(task_arn, "app").unwrap().observed.id,
        id,
        "restarted in place"
    );

    // An ignored exit code is a real exit: the essential container stops the task.
    runtime.exit(task_arn, "app", 0);
    let stopped = tokio::time::timeout(
        WAIT_MAX,
        reporter.wait_for(|c| c.status == TaskStatus::Stopped),
    )
    .await
    .unwrap();
    assert_eq!(
        stopped.stop_code,
        Some(TaskStopCode::EssentialContainerExited)
    );
    assert!(
        reporter
            .changes()
            .iter()
            .all(|c| c.containers[0].status != TaskStatus::Stopped
                || c.status == TaskStatus::Stopped)
    );
    tokio::time::timeout(WAIT_MAX, handle.join()).await.unwrap();
    token.cancel();
}
