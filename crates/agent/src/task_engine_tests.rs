//! Table tests of the task engine: one row per rule.

use flotilla_model::DesiredStatus;
use serde_json::{Value, json};

use super::*;
use crate::runtime::ContainerStatus;
use crate::spec::runtime_name;
use crate::spec::tests::{TASK_ARN, definition, task};

const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn at(seconds: i64) -> Timestamp {
    T0.plus_seconds(seconds)
}

fn settings() -> EngineSettings {
    EngineSettings {
        stop_timeout_default: Duration::from_secs(30),
        retention: Duration::from_secs(600),
    }
}

fn observed(name: &str, status: ContainerStatus) -> ObservedContainer {
    ObservedContainer {
        id: format!("id-{name}"),
        runtime_name: runtime_name(TASK_ARN, name),
        labels: [(labels::CONTAINER_NAME.to_owned(), name.to_owned())].into(),
        status,
        exit_code: None,
        oom_killed: false,
        error: None,
        health: None,
        started_at: (status != ContainerStatus::Created).then_some(T0),
        finished_at: None,
        image: "busybox".to_owned(),
        image_digest: Some("sha256:feed".to_owned()),
        network_bindings: Vec::new(),
    }
}

fn created(name: &str) -> ObservedContainer {
    observed(name, ContainerStatus::Created)
}

fn running(name: &str) -> ObservedContainer {
    observed(name, ContainerStatus::Running)
}

fn exited(name: &str, code: i32) -> ObservedContainer {
    let mut o = observed(name, ContainerStatus::Exited);
    o.exit_code = Some(code);
    o.finished_at = Some(at(10));
    o
}

fn with(
    mut o: ObservedContainer,
    change: impl FnOnce(&mut ObservedContainer),
) -> ObservedContainer {
    change(&mut o);
    o
}

/// A record whose images are all present (pull done at T0).
fn pulled(names: &[&str]) -> TaskRecord {
    TaskRecord {
        images_ready: names.iter().map(|n| (*n).to_owned()).collect(),
        pull_started_at: Some(T0),
        pull_stopped_at: Some(T0),
        ..Default::default()
    }
}

/// A record of a task that has been running since T0.
fn started(names: &[&str]) -> TaskRecord {
    TaskRecord {
        started_at: Some(T0),
        ..pulled(names)
    }
}

fn two_containers() -> Value {
    json!({"containerDefinitions": [
        {"name": "db", "image": "busybox", "stopTimeout": 5},
        {"name": "app", "image": "busybox", "dependsOn": [{"containerName": "db", "condition": "START"}]},
    ]})
}

fn pull(name: &str) -> Action {
    Action::Pull {
        container: name.to_owned(),
        image: "busybox".to_owned(),
    }
}
fn create(name: &str) -> Action {
    Action::Create {
        container: name.to_owned(),
    }
}
fn start(name: &str) -> Action {
    Action::Start {
        container: name.to_owned(),
    }
}
fn stop(name: &str, seconds: u64) -> Action {
    Action::Stop {
        container: name.to_owned(),
        timeout: Duration::from_secs(seconds),
    }
}

struct Case {
    name: &'static str,
    definition: Value,
    desired: DesiredStatus,
    observed: Vec<ObservedContainer>,
    record: TaskRecord,
    now: Timestamp,
    actions: Vec<Action>,
    /// The reported status; `None` when no report is expected.
    status: Option<TaskStatus>,
    stop_code: Option<TaskStopCode>,
    reason: Option<&'static str>,
}

impl Default for Case {
    fn default() -> Self {
        Self {
            name: "",
            definition: two_containers(),
            desired: DesiredStatus::Running,
            observed: Vec::new(),
            record: TaskRecord::default(),
            now: at(60),
            actions: Vec::new(),
            status: None,
            stop_code: None,
            reason: None,
        }
    }
}

fn run(case: &Case) -> (Plan, TaskRecord) {
    let definition = definition(case.definition.clone());
    let mut task = task();
    task.desired_status = case.desired;
    if case.desired == DesiredStatus::Stopped {
        task.stop_code = Some(TaskStopCode::UserInitiated);
        task.stopped_reason = Some("Task stopped by user".to_owned());
    }
    let observed: BTreeMap<String, ObservedContainer> = case
        .observed
        .iter()
        .map(|o| (o.container_name().unwrap_or_default().to_owned(), o.clone()))
        .collect();
    let settings = settings();
    let input = TaskInput {
        task: &task,
        definition: Some(&definition),
        listed: true,
        observed: &observed,
        settings: &settings,
    };
    let mut record = case.record.clone();
    let plan = decide(&input, &mut record, case.now);
    (plan, record)
}

#[test]
fn rules() {
    let cases = vec![
        Case {
            name: "awsvpc: the task's network comes before its containers",
            definition: json!({"networkMode": "awsvpc", "containerDefinitions": [{"name": "app", "image": "busybox"}]}),
            record: pulled(&["app"]),
            actions: vec![Action::SetUpNetwork],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "awsvpc with its network up: create the containers",
            definition: json!({"networkMode": "awsvpc", "containerDefinitions": [{"name": "app", "image": "busybox"}]}),
            record: TaskRecord {
                network: Some(TaskNetwork {
                    private_ipv4_address: "172.18.0.2".into(),
                    mac_address: "02:42:ac:12:00:02".into(),
                    subnet_cidr: "172.18.0.0/16".into(),
                    gateway_ipv4_address: "172.18.0.1".into(),
                }),
                ..pulled(&["app"])
            },
            actions: vec![create("app")],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "awsvpc: a network that cannot be set up fails the task",
            definition: json!({"networkMode": "awsvpc", "containerDefinitions": [{"name": "app", "image": "busybox"}]}),
            record: TaskRecord {
                network_failure: Some("no such network".into()),
                ..pulled(&["app"])
            },
            status: Some(TaskStatus::Stopped),
            stop_code: Some(TaskStopCode::TaskFailedToStart),
            reason: Some(
                "ResourceInitializationError: failed to set up the task's network: no such network",
            ),
            ..Default::default()
        },
        Case {
            name: "a new task pulls every image and reports PENDING",
            actions: vec![pull("db"), pull("app")],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "pulled images: create every container",
            record: TaskRecord {
                pull_stopped_at: None,
                ..pulled(&["db", "app"])
            },
            actions: vec![create("db"), create("app")],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "task volumes are created before containers",
            definition: json!({"volumes": [{"name": "v"}], "containerDefinitions": [
                {"name": "app", "image": "busybox", "mountPoints": [{"sourceVolume": "v", "containerPath": "/v"}]}]}),
            record: pulled(&["app"]),
            actions: vec![Action::CreateVolumes],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "host volumes need no creation",
            definition: json!({"volumes": [{"name": "v", "host": {"sourcePath": "/tmp"}}], "containerDefinitions": [
                {"name": "app", "image": "busybox", "mountPoints": [{"sourceVolume": "v", "containerPath": "/v"}]}]}),
            record: pulled(&["app"]),
            actions: vec![create("app")],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "volumesFrom waits for its source to exist",
            definition: json!({"containerDefinitions": [
                {"name": "data", "image": "busybox", "essential": false},
                {"name": "app", "image": "busybox", "volumesFrom": [{"sourceContainer": "data"}]}]}),
            record: pulled(&["data", "app"]),
            actions: vec![create("data")],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "dependsOn START: the dependency starts first",
            observed: vec![created("db"), created("app")],
            record: pulled(&["db", "app"]),
            actions: vec![start("db")],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "dependsOn START met: the dependent starts",
            observed: vec![running("db"), created("app")],
            record: pulled(&["db", "app"]),
            actions: vec![start("app")],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "links wait for a running target",
            definition: json!({"containerDefinitions": [
                {"name": "db", "image": "busybox"},
                {"name": "app", "image": "busybox", "links": ["db:database"]}]}),
            observed: vec![created("db"), created("app")],
            record: pulled(&["db", "app"]),
            actions: vec![start("db")],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "dependsOn COMPLETE: any exit code will do",
            definition: json!({"containerDefinitions": [
                {"name": "init", "image": "busybox", "essential": false},
                {"name": "app", "image": "busybox", "dependsOn": [{"containerName": "init", "condition": "COMPLETE"}]}]}),
            observed: vec![exited("init", 3), created("app")],
            record: pulled(&["init", "app"]),
            actions: vec![start("app")],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "dependsOn SUCCESS waits while the dependency runs",
            definition: json!({"containerDefinitions": [
                {"name": "init", "image": "busybox", "essential": false},
                {"name": "app", "image": "busybox", "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}]}]}),
            observed: vec![running("init"), created("app")],
            record: pulled(&["init", "app"]),
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "dependsOn SUCCESS met by exit code 0",
            definition: json!({"containerDefinitions": [
                {"name": "init", "image": "busybox", "essential": false},
                {"name": "app", "image": "busybox", "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}]}]}),
            observed: vec![exited("init", 0), created("app")],
            record: pulled(&["init", "app"]),
            actions: vec![start("app")],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "dependsOn SUCCESS never met: the task fails to start",
            definition: json!({"containerDefinitions": [
                {"name": "init", "image": "busybox", "essential": false},
                {"name": "app", "image": "busybox", "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}]}]}),
            observed: vec![exited("init", 1), created("app")],
            record: pulled(&["init", "app"]),
            status: Some(TaskStatus::Stopped),
            stop_code: Some(TaskStopCode::TaskFailedToStart),
            reason: Some(
                "DependencyNeverMet: container app depends on init reaching SUCCESS, but it exited with code 1",
            ),
            ..Default::default()
        },
        Case {
            name: "dependsOn HEALTHY waits while the health is unknown",
            definition: json!({"containerDefinitions": [
                {"name": "db", "image": "busybox", "healthCheck": {"command": ["CMD", "true"]}},
                {"name": "app", "image": "busybox", "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}]}]}),
            observed: vec![
                with(running("db"), |o| o.health = Some(HealthStatus::Unknown)),
                created("app"),
            ],
            record: pulled(&["db", "app"]),
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "dependsOn HEALTHY met",
            definition: json!({"containerDefinitions": [
                {"name": "db", "image": "busybox", "healthCheck": {"command": ["CMD", "true"]}},
                {"name": "app", "image": "busybox", "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}]}]}),
            observed: vec![
                with(running("db"), |o| o.health = Some(HealthStatus::Healthy)),
                created("app"),
            ],
            record: pulled(&["db", "app"]),
            actions: vec![start("app")],
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "dependsOn HEALTHY on an unhealthy dependency fails the task and stops the dependency",
            definition: json!({"containerDefinitions": [
                {"name": "db", "image": "busybox", "healthCheck": {"command": ["CMD", "true"]}},
                {"name": "app", "image": "busybox", "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}]}]}),
            observed: vec![
                with(running("db"), |o| o.health = Some(HealthStatus::Unhealthy)),
                created("app"),
            ],
            record: pulled(&["db", "app"]),
            actions: vec![stop("db", 30)],
            status: Some(TaskStatus::Stopping),
            stop_code: Some(TaskStopCode::TaskFailedToStart),
            reason: Some(
                "DependencyNeverMet: container app depends on db reaching HEALTHY, but it is unhealthy",
            ),
            ..Default::default()
        },
        Case {
            name: "dependsOn HEALTHY without a health check can never be met",
            definition: json!({"containerDefinitions": [
                {"name": "db", "image": "busybox"},
                {"name": "app", "image": "busybox", "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}]}]}),
            observed: vec![running("db"), created("app")],
            record: pulled(&["db", "app"]),
            actions: vec![stop("db", 30)],
            status: Some(TaskStatus::Stopping),
            stop_code: Some(TaskStopCode::TaskFailedToStart),
            reason: Some(
                "DependencyNeverMet: container app depends on db reaching HEALTHY, but it has no health check",
            ),
            ..Default::default()
        },
        Case {
            name: "startTimeout of the dependency not yet reached: wait",
            definition: json!({"containerDefinitions": [
                {"name": "init", "image": "busybox", "essential": false, "startTimeout": 120},
                {"name": "app", "image": "busybox", "dependsOn": [{"containerName": "init", "condition": "COMPLETE"}]}]}),
            observed: vec![running("init"), created("app")],
            record: pulled(&["init", "app"]),
            status: Some(TaskStatus::Pending),
            ..Default::default()
        },
        Case {
            name: "startTimeout of the dependency passed: the task fails to start",
            definition: json!({"containerDefinitions": [
                {"name": "init", "image": "busybox", "essential": false, "startTimeout": 30},
                {"name": "app", "image": "busybox", "dependsOn": [{"containerName": "init", "condition": "COMPLETE"}]}]}),
            observed: vec![running("init"), created("app")],
            record: pulled(&["init", "app"]),
            actions: vec![stop("init", 30)],
            status: Some(TaskStatus::Stopping),
            stop_code: Some(TaskStopCode::TaskFailedToStart),
            reason: Some(
                "DependencyNeverMet: container app depends on init reaching COMPLETE, but it did not reach COMPLETE within 30s",
            ),
            ..Default::default()
        },
        Case {
            name: "every container started: RUNNING",
            observed: vec![running("db"), running("app")],
            record: pulled(&["db", "app"]),
            status: Some(TaskStatus::Running),
            ..Default::default()
        },
        Case {
            name: "a non-essential container's exit does not stop the task",
            definition: json!({"containerDefinitions": [
                {"name": "side", "image": "busybox", "essential": false},
                {"name": "app", "image": "busybox"}]}),
            observed: vec![exited("side", 2), running("app")],
            record: started(&["side", "app"]),
            status: Some(TaskStatus::Running),
            ..Default::default()
        },
        Case {
            name: "an essential container's exit stops the task, others get their stopTimeout",
            observed: vec![running("db"), exited("app", 1)],
            record: started(&["db", "app"]),
            actions: vec![stop("db", 5)],
            status: Some(TaskStatus::Stopping),
            stop_code: Some(TaskStopCode::EssentialContainerExited),
            reason: Some(REASON_ESSENTIAL_EXITED),
            ..Default::default()
        },
        Case {
            name: "an essential container killed for memory stops the task",
            observed: vec![
                with(exited("db", 137), |o| o.oom_killed = true),
                with(exited("app", 143), |o| o.finished_at = Some(at(20))),
            ],
            record: started(&["db", "app"]),
            status: Some(TaskStatus::Stopped),
            stop_code: Some(TaskStopCode::EssentialContainerExited),
            reason: Some(REASON_ESSENTIAL_EXITED),
            ..Default::default()
        },
        Case {
            name: "restartPolicy: a container that ran long enough restarts in place",
            definition: json!({"containerDefinitions": [{"name": "app", "image": "busybox",
                "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60}}]}),
            observed: vec![with(exited("app", 1), |o| o.finished_at = Some(at(61)))],
            record: started(&["app"]),
            now: at(62),
            actions: vec![Action::Restart {
                container: "app".to_owned(),
            }],
            status: Some(TaskStatus::Running),
            ..Default::default()
        },
        Case {
            name: "restartPolicy: a container that exits within the attempt period stays down",
            definition: json!({"containerDefinitions": [{"name": "app", "image": "busybox",
                "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60}}]}),
            observed: vec![exited("app", 1)],
            record: started(&["app"]),
            status: Some(TaskStatus::Stopped),
            stop_code: Some(TaskStopCode::EssentialContainerExited),
            reason: Some(REASON_ESSENTIAL_EXITED),
            ..Default::default()
        },
        Case {
            name: "restartPolicy: an ignored exit code is not restarted",
            definition: json!({"containerDefinitions": [{"name": "app", "image": "busybox",
                "restartPolicy": {"enabled": true, "ignoredExitCodes": [0], "restartAttemptPeriod": 60}}]}),
            observed: vec![with(exited("app", 0), |o| o.finished_at = Some(at(100)))],
            record: started(&["app"]),
            now: at(100),
            status: Some(TaskStatus::Stopped),
            stop_code: Some(TaskStopCode::EssentialContainerExited),
            reason: Some(REASON_ESSENTIAL_EXITED),
            ..Default::default()
        },
        Case {
            name: "a pull failure stops the task: CannotPullContainerError",
            record: TaskRecord {
                failures: [(
                    "app".to_owned(),
                    Failure {
                        kind: FailureKind::Pull,
                        message: "busybox: not found".into(),
                    },
                )]
                .into(),
                images_ready: ["db".to_owned()].into(),
                pull_started_at: Some(T0),
                ..Default::default()
            },
            status: Some(TaskStatus::Stopped),
            stop_code: Some(TaskStopCode::TaskFailedToStart),
            reason: Some("CannotPullContainerError: busybox: not found"),
            ..Default::default()
        },
        Case {
            name: "a start failure stops the task: CannotStartContainerError",
            observed: vec![running("db"), created("app")],
            record: TaskRecord {
                failures: [(
                    "app".to_owned(),
                    Failure {
                        kind: FailureKind::Start,
                        message: "bad".into(),
                    },
                )]
                .into(),
                ..pulled(&["db", "app"])
            },
            actions: vec![stop("db", 5)],
            status: Some(TaskStatus::Stopping),
            stop_code: Some(TaskStopCode::TaskFailedToStart),
            reason: Some("CannotStartContainerError: bad"),
            ..Default::default()
        },
        Case {
            name: "desired STOPPED: dependents stop before their dependencies",
            desired: DesiredStatus::Stopped,
            observed: vec![running("db"), running("app")],
            record: started(&["db", "app"]),
            actions: vec![stop("app", 30)],
            status: Some(TaskStatus::Stopping),
            stop_code: Some(TaskStopCode::UserInitiated),
            reason: Some("Task stopped by user"),
            ..Default::default()
        },
        Case {
            name: "desired STOPPED: the dependency stops once its dependents did",
            desired: DesiredStatus::Stopped,
            observed: vec![running("db"), exited("app", 143)],
            record: started(&["db", "app"]),
            actions: vec![stop("db", 5)],
            status: Some(TaskStatus::Stopping),
            stop_code: Some(TaskStopCode::UserInitiated),
            reason: Some("Task stopped by user"),
            ..Default::default()
        },
        Case {
            name: "desired STOPPED before anything ran: STOPPED at once",
            desired: DesiredStatus::Stopped,
            status: Some(TaskStatus::Stopped),
            stop_code: Some(TaskStopCode::UserInitiated),
            reason: Some("Task stopped by user"),
            ..Default::default()
        },
        Case {
            name: "a container that vanished counts as an exit",
            observed: vec![running("db")],
            record: TaskRecord {
                seen: ["db".to_owned(), "app".to_owned()].into(),
                ..started(&["db", "app"])
            },
            actions: vec![stop("db", 5)],
            status: Some(TaskStatus::Stopping),
            stop_code: Some(TaskStopCode::EssentialContainerExited),
            reason: Some(REASON_ESSENTIAL_EXITED),
            ..Default::default()
        },
    ];
    for case in &cases {
        let (plan, _) = run(case);
        assert_eq!(plan.actions, case.actions, "{}: actions", case.name);
        let report = plan.report.as_ref();
        assert_eq!(
            report.map(|r| r.status),
            case.status,
            "{}: status",
            case.name
        );
        assert_eq!(
            report.and_then(|r| r.stop_code),
            case.stop_code,
            "{}: stop code",
            case.name
        );
        assert_eq!(
            report.and_then(|r| r.reason.as_deref()),
            case.reason,
            "{}: reason",
            case.name
        );
    }
}

#[test]
fn pull_times_are_reported_as_pending_then_set_once() {
    let case = Case::default();
    let (plan, mut record) = run(&case);
    let report = plan.report.unwrap();
    assert_eq!(report.pull_started_at, Some(at(60)));
    assert_eq!(report.pull_stopped_at, None);
    record.images_ready = ["db".to_owned(), "app".to_owned()].into();
    record.reported = Some(report);
    let case = Case {
        record,
        now: at(70),
        ..Default::default()
    };
    let (plan, record) = run(&case);
    let report = plan.report.unwrap();
    assert_eq!(report.pull_started_at, Some(at(60)));
    assert_eq!(report.pull_stopped_at, Some(at(70)));
    assert_eq!(record.pull_stopped_at, Some(at(70)));
}

#[test]
fn running_report_carries_start_time_bindings_and_digests() {
    let binding = NetworkBinding {
        bind_ip: Some("0.0.0.0".into()),
        container_port: Some(80),
        host_port: Some(32768),
        protocol: Some(Default::default()),
    };
    let case = Case {
        observed: vec![
            with(running("db"), |o| o.started_at = Some(at(5))),
            with(running("app"), |o| {
                o.started_at = Some(at(7));
                o.network_bindings = vec![binding.clone()];
            }),
        ],
        record: pulled(&["db", "app"]),
        ..Default::default()
    };
    let (plan, record) = run(&case);
    let report = plan.report.unwrap();
    assert_eq!(report.status, TaskStatus::Running);
    assert_eq!(report.started_at, Some(at(7)));
    assert_eq!(report.execution_stopped_at, None);
    let app = report.containers.iter().find(|c| c.name == "app").unwrap();
    assert_eq!(app.status, TaskStatus::Running);
    assert_eq!(app.runtime_id.as_deref(), Some("id-app"));
    assert_eq!(app.image_digest.as_deref(), Some("sha256:feed"));
    assert_eq!(app.network_bindings, vec![binding.clone()]);
    assert_eq!(record.bindings["app"], vec![binding.clone()]);

    // Once exited, the container has no ports in the runtime; the report keeps them.
    let case = Case {
        desired: DesiredStatus::Stopped,
        observed: vec![exited("db", 0), exited("app", 143)],
        record: TaskRecord {
            reported: Some(report),
            ..record
        },
        now: at(80),
        ..Default::default()
    };
    let (plan, _) = run(&case);
    let report = plan.report.unwrap();
    assert_eq!(report.status, TaskStatus::Stopped);
    assert_eq!(report.started_at, Some(at(7)));
    assert_eq!(
        report.execution_stopped_at,
        Some(at(80)),
        "not before the stop began"
    );
    let app = report.containers.iter().find(|c| c.name == "app").unwrap();
    assert_eq!(
        (app.status, app.exit_code),
        (TaskStatus::Stopped, Some(143))
    );
    assert_eq!(app.network_bindings, vec![binding]);
}

#[test]
fn out_of_memory_is_the_container_reason() {
    let case = Case {
        observed: vec![
            with(exited("db", 137), |o| o.oom_killed = true),
            exited("app", 143),
        ],
        record: started(&["db", "app"]),
        ..Default::default()
    };
    let (plan, _) = run(&case);
    let report = plan.report.unwrap();
    let db = report.containers.iter().find(|c| c.name == "db").unwrap();
    assert_eq!(db.reason.as_deref(), Some(REASON_OUT_OF_MEMORY));
    assert_eq!(db.exit_code, Some(137));
}

#[test]
fn host_mode_reports_container_ports_as_host_ports() {
    let case = Case {
        definition: json!({"networkMode": "host", "containerDefinitions": [
            {"name": "app", "image": "busybox", "portMappings": [{"containerPort": 8080}]}]}),
        observed: vec![running("app")],
        record: pulled(&["app"]),
        ..Default::default()
    };
    let (plan, _) = run(&case);
    let bindings = &plan.report.unwrap().containers[0].network_bindings;
    assert_eq!(bindings[0].host_port, Some(8080));
}

#[test]
fn task_health_follows_essential_containers_with_checks() {
    let definition = json!({"containerDefinitions": [
        {"name": "a", "image": "busybox", "healthCheck": {"command": ["CMD", "true"]}},
        {"name": "b", "image": "busybox", "healthCheck": {"command": ["CMD", "true"]}},
        {"name": "side", "image": "busybox", "essential": false, "healthCheck": {"command": ["CMD", "true"]}},
        {"name": "plain", "image": "busybox"},
    ]});
    use HealthStatus::{Healthy, Unhealthy, Unknown};
    // (a, b, side) -> task health
    let rows = [
        ((Healthy, Healthy, Unhealthy), Healthy),
        ((Healthy, Unknown, Healthy), Unknown),
        ((Unhealthy, Healthy, Healthy), Unhealthy),
        ((Unhealthy, Unknown, Healthy), Unhealthy),
    ];
    for ((a, b, side), expected) in rows {
        let health = |o: ObservedContainer, h| with(o, |o| o.health = Some(h));
        let case = Case {
            definition: definition.clone(),
            observed: vec![
                health(running("a"), a),
                health(running("b"), b),
                health(running("side"), side),
                running("plain"),
            ],
            record: started(&["a", "b", "side", "plain"]),
            ..Default::default()
        };
        let (plan, _) = run(&case);
        let report = plan.report.unwrap();
        assert_eq!(report.health_status, Some(expected), "{a:?} {b:?} {side:?}");
        let plain = report
            .containers
            .iter()
            .find(|c| c.name == "plain")
            .unwrap();
        assert_eq!(plain.health_status, None);
        let a_report = report.containers.iter().find(|c| c.name == "a").unwrap();
        assert_eq!(a_report.health_status, Some(a));
    }
    // No essential container has a check: UNKNOWN.
    let case = Case {
        observed: vec![running("db"), running("app")],
        record: started(&["db", "app"]),
        ..Default::default()
    };
    assert_eq!(run(&case).0.report.unwrap().health_status, Some(Unknown));
}

#[test]
fn an_unchanged_state_is_not_reported_again() {
    let case = Case {
        observed: vec![running("db"), running("app")],
        record: pulled(&["db", "app"]),
        ..Default::default()
    };
    let (plan, mut record) = run(&case);
    record.reported = plan.report;
    let case = Case {
        observed: case.observed.clone(),
        record,
        now: at(90),
        ..Default::default()
    };
    let (plan, _) = run(&case);
    assert_eq!(plan, Plan::default());
}

#[test]
fn stopped_tasks_are_removed_after_the_retention_period() {
    let observed = vec![exited("db", 0), exited("app", 0)];
    let (plan, mut record) = run(&Case {
        desired: DesiredStatus::Stopped,
        observed: observed.clone(),
        record: started(&["db", "app"]),
        ..Default::default()
    });
    assert_eq!(
        plan.report.as_ref().map(|r| r.status),
        Some(TaskStatus::Stopped)
    );
    assert_eq!(
        plan.wake_at, None,
        "nothing to wait for until STOPPED is accepted"
    );
    record.reported = plan.report;

    let stopped_at = record.stopped_at.unwrap();
    let retention_end = stopped_at.plus_seconds(600);
    let (plan, record) = run(&Case {
        desired: DesiredStatus::Stopped,
        observed: observed.clone(),
        record,
        now: at(100),
        ..Default::default()
    });
    assert_eq!(plan.actions, vec![]);
    assert_eq!(plan.report, None);
    assert_eq!(plan.wake_at, Some(retention_end));

    let now = retention_end;
    let (plan, record) = run(&Case {
        desired: DesiredStatus::Stopped,
        observed,
        record,
        now,
        ..Default::default()
    });
    assert_eq!(
        plan.actions,
        vec![
            Action::Remove {
                container: "app".into()
            },
            Action::Remove {
                container: "db".into()
            }
        ]
    );
    let (plan, mut record) = run(&Case {
        desired: DesiredStatus::Stopped,
        record,
        now,
        ..Default::default()
    });
    assert_eq!(plan.actions, vec![Action::RemoveVolumes]);
    record.volumes_removed = true;
    let (plan, _) = run(&Case {
        desired: DesiredStatus::Stopped,
        record,
        now,
        ..Default::default()
    });
    assert!(plan.done);
}

#[test]
fn a_task_the_control_plane_forgot_is_stopped_quietly_and_removed() {
    let definition = definition(two_containers());
    let task = task();
    let settings = EngineSettings {
        retention: Duration::ZERO,
        ..settings()
    };
    let observed: BTreeMap<String, ObservedContainer> = [
        ("db".to_owned(), running("db")),
        ("app".to_owned(), exited("app", 0)),
    ]
    .into();
    let input = TaskInput {
        task: &task,
        definition: Some(&definition),
        listed: false,
        observed: &observed,
        settings: &settings,
    };
    let mut record = started(&["db", "app"]);
    let plan = decide(&input, &mut record, at(60));
    assert_eq!(plan.actions, vec![stop("db", 5)]);
    assert_eq!(plan.report, None);

    let observed: BTreeMap<String, ObservedContainer> = [
        ("db".to_owned(), exited("db", 0)),
        ("app".to_owned(), exited("app", 0)),
    ]
    .into();
    let input = TaskInput {
        observed: &observed,
        ..input
    };
    let plan = decide(&input, &mut record, at(61));
    assert_eq!(plan.actions.len(), 2, "{plan:?}");
    assert!(
        plan.actions
            .iter()
            .all(|a| matches!(a, Action::Remove { .. }))
    );
}

#[test]
fn orphans_without_a_definition_are_stopped_with_their_labelled_timeout() {
    let task = task();
    let settings = settings();
    let orphan = with(running("old"), |o| {
        o.labels
            .insert(labels::STOP_TIMEOUT.to_owned(), "7".to_owned());
    });
    let observed: BTreeMap<String, ObservedContainer> = [("old".to_owned(), orphan)].into();
    let input = TaskInput {
        task: &task,
        definition: None,
        listed: false,
        observed: &observed,
        settings: &settings,
    };
    let plan = decide(&input, &mut TaskRecord::default(), at(60));
    assert_eq!(plan.actions, vec![stop("old", 7)]);
}

#[test]
fn an_adopted_running_task_needs_no_action() {
    let mut task = task();
    task.last_status = TaskStatus::Running;
    let definition = definition(two_containers());
    let settings = settings();
    let observed: BTreeMap<String, ObservedContainer> = [
        ("db".to_owned(), running("db")),
        ("app".to_owned(), running("app")),
    ]
    .into();
    let input = TaskInput {
        task: &task,
        definition: Some(&definition),
        listed: true,
        observed: &observed,
        settings: &settings,
    };
    let plan = decide(&input, &mut TaskRecord::default(), at(60));
    assert_eq!(plan.actions, vec![]);
    let report = plan.report.unwrap();
    assert_eq!(report.status, TaskStatus::Running);
    assert_eq!(report.pull_started_at, None);
}

#[test]
fn a_task_without_its_definition_fails_to_start() {
    let task = task();
    let settings = settings();
    let observed = BTreeMap::new();
    let input = TaskInput {
        task: &task,
        definition: None,
        listed: true,
        observed: &observed,
        settings: &settings,
    };
    let report = decide(&input, &mut TaskRecord::default(), at(60))
        .report
        .unwrap();
    assert_eq!(report.status, TaskStatus::Stopped);
    assert_eq!(report.stop_code, Some(TaskStopCode::TaskFailedToStart));
}

#[test]
fn a_task_that_never_ran_is_forgotten_without_waiting_for_the_retention() {
    let case = Case {
        desired: DesiredStatus::Stopped,
        ..Default::default()
    };
    let (plan, mut record) = run(&case);
    record.reported = plan.report;
    let (plan, mut record) = run(&Case {
        desired: DesiredStatus::Stopped,
        record,
        ..Default::default()
    });
    assert_eq!(plan.actions, vec![Action::RemoveVolumes]);
    assert_eq!(plan.wake_at, None);
    record.volumes_removed = true;
    let (plan, _) = run(&Case {
        desired: DesiredStatus::Stopped,
        record,
        ..Default::default()
    });
    assert!(plan.done);
}
