//! Test helpers: an in-process control plane on port 0 and a fake agent that speaks the
//! real agent protocol but runs nothing, reporting tasks RUNNING or STOPPED when told.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_agent::{ServerClient, SigningIdentity};
use flotilla_model::resources::Resources;
use flotilla_model::task::TaskStatus;
use flotilla_model::{Attribute, DesiredStatus, TaskStopCode, Timestamp, VersionInfo};
use flotilla_protocol::*;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TEST_ACCESS_KEY_ID: &str = "FLOTILLATESTKEY00001";
pub const TEST_SECRET_ACCESS_KEY: &str = "flotilla/test/secret/key/0000000000000000";
pub const TEST_REGION: &str = "us-east-1";

pub fn test_identity() -> SigningIdentity {
    SigningIdentity {
        access_key_id: TEST_ACCESS_KEY_ID.to_owned(),
        secret_access_key: TEST_SECRET_ACCESS_KEY.to_owned(),
        region: TEST_REGION.to_owned(),
    }
}

fn now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp::from_millis(millis)
}

/// How the fake agent answers new tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeMode {
    /// Report PENDING then RUNNING as soon as a task arrives.
    AutoRun,
    /// Report PENDING only; the test calls [`FakeAgent::report`] for the rest.
    Manual,
}

/// A fake host: registers, polls, and reports as told.
pub struct FakeAgent {
    pub container_instance_arn: String,
    client: ServerClient,
    seen: Arc<Mutex<BTreeSet<String>>>,
    stop: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

/// What a fake host offers.
#[derive(Clone, Debug)]
pub struct FakeHost {
    pub cluster: String,
    pub cpu: i64,
    pub memory_mib: i64,
    pub zone: String,
    pub ec2_instance_id: String,
    pub attributes: Vec<(String, String)>,
    /// Offer Fargate capacity (hidden from instance lists, runs FARGATE tasks only).
    pub fargate_capacity: bool,
}

impl FakeHost {
    pub fn new(cluster: &str, cpu: i64, memory_mib: i64) -> Self {
        Self {
            cluster: cluster.to_owned(),
            cpu,
            memory_mib,
            zone: "zone-a".to_owned(),
            ec2_instance_id: format!("i-{}", &uuid_like()[..17]),
            attributes: Vec::new(),
            fargate_capacity: false,
        }
    }
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for _ in 0..2 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(now().millis() as u64);
        out.push_str(&format!("{:016x}", hasher.finish()));
    }
    out
}

impl FakeAgent {
    pub async fn start(
        endpoint: &str,
        host: FakeHost,
        mode: FakeMode,
    ) -> Result<Self, flotilla_agent::ClientError> {
        let client = ServerClient::new(endpoint, test_identity());
        let mut attributes = vec![
            Attribute {
                name: "ecs.os-type".into(),
                value: Some("linux".into()),
                target_type: None,
                target_id: None,
            },
            Attribute {
                name: "ecs.availability-zone".into(),
                value: Some(host.zone.clone()),
                target_type: None,
                target_id: None,
            },
        ];
        for (name, value) in &host.attributes {
            attributes.push(Attribute {
                name: name.clone(),
                value: Some(value.clone()),
                target_type: None,
                target_id: None,
            });
        }
        let registered: RegisterResponse = client
            .agent(
                AgentCall::Register,
                &RegisterRequest {
                    protocol_version: PROTOCOL_VERSION,
                    cluster: host.cluster.clone(),
                    container_instance_arn: None,
                    ec2_instance_id: host.ec2_instance_id.clone(),
                    hostname: Some("fake-host".into()),
                    resources: Resources {
                        cpu: host.cpu,
                        memory_mib: host.memory_mib,
                        ports_tcp: [22].into(),
                        ..Default::default()
                    },
                    attributes,
                    version_info: VersionInfo {
                        agent_version: Some("fake-1.0.0".into()),
                        ..Default::default()
                    },
                    agent_endpoint: None,
                    fargate_capacity: host.fargate_capacity,
                },
            )
            .await?;
        let arn = registered.container_instance_arn.clone();
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = CancellationToken::new();
        let handle = tokio::spawn(poll_loop(
            client.clone(),
            arn.clone(),
            mode,
            seen.clone(),
            stop.clone(),
        ));
        Ok(Self {
            container_instance_arn: arn,
            client,
            seen,
            stop,
            handle: Some(handle),
        })
    }

    /// Tells the server a task reached `status` (containers follow; exit code for STOPPED).
    pub async fn report(
        &self,
        task_arn: &str,
        status: TaskStatus,
    ) -> Result<(), flotilla_agent::ClientError> {
        report(
            &self.client,
            &self.container_instance_arn,
            task_arn,
            status,
            None,
        )
        .await
    }

    /// Like [`FakeAgent::report`], with the task's network (an awsvpc task).
    pub async fn report_network(
        &self,
        task_arn: &str,
        status: TaskStatus,
        network: flotilla_model::task::TaskNetwork,
    ) -> Result<(), flotilla_agent::ClientError> {
        report(
            &self.client,
            &self.container_instance_arn,
            task_arn,
            status,
            Some(network),
        )
        .await
    }

    /// Task ARNs this agent has been handed so far.
    pub fn seen_tasks(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Stops polling, as if the host died.
    pub async fn kill(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn report(
    client: &ServerClient,
    instance_arn: &str,
    task_arn: &str,
    status: TaskStatus,
    network: Option<flotilla_model::task::TaskNetwork>,
) -> Result<(), flotilla_agent::ClientError> {
    let at = now();
    let change = TaskStateChange {
        task_arn: task_arn.to_owned(),
        status,
        reason: (status == TaskStatus::Stopped)
            .then(|| "Essential container in task exited".to_owned()),
        stop_code: (status == TaskStatus::Stopped)
            .then_some(TaskStopCode::EssentialContainerExited),
        health_status: None,
        containers: Vec::new(),
        pull_started_at: Some(at),
        pull_stopped_at: Some(at),
        started_at: (status == TaskStatus::Running).then_some(at),
        execution_stopped_at: (status == TaskStatus::Stopped).then_some(at),
        network,
        at,
    };
    let _: ReportResponse = client
        .agent(
            AgentCall::Report,
            &ReportRequest {
                container_instance_arn: instance_arn.to_owned(),
                tasks: vec![change],
            },
        )
        .await?;
    Ok(())
}

async fn poll_loop(
    client: ServerClient,
    arn: String,
    mode: FakeMode,
    seen: Arc<Mutex<BTreeSet<String>>>,
    stop: CancellationToken,
) {
    let mut since = 0;
    loop {
        let request = PollRequest {
            container_instance_arn: arn.clone(),
            since_revision: since,
            wait_ms: 2_000,
        };
        let polled = tokio::select! {
            _ = stop.cancelled() => return,
            polled = client.agent::<_, PollResponse>(AgentCall::Poll, &request) => polled,
        };
        let response = match polled {
            Ok(response) => response,
            Err(_) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
        };
        since = response.revision;
        for task in response.tasks {
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(task.task_arn.clone());
            let next = match (task.desired_status, task.last_status, mode) {
                (DesiredStatus::Stopped, status, _) if status < TaskStatus::Stopped => {
                    Some(TaskStatus::Stopped)
                }
                (DesiredStatus::Running, TaskStatus::Provisioning, _) => Some(TaskStatus::Pending),
                (DesiredStatus::Running, TaskStatus::Pending, FakeMode::AutoRun) => {
                    Some(TaskStatus::Running)
                }
                _ => None,
            };
            if let Some(status) = next {
                let _ = report(&client, &arn, &task.task_arn, status, None).await;
            }
        }
    }
}
