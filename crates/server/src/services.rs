//! The service controller: the shell around the pure service reconciler
//! (`flotilla_reconcile::reconcile`).
//!
//! It keeps a queue of services to evaluate, fed by the state cache's changes (a service
//! record, one of its tasks, or a host of its cluster changed), by the plans' own
//! `requeue_after_ms`, and by a periodic resync that makes it level-triggered. For one
//! service it reads the record, the service's tasks and the cluster's hosts, asks for a plan
//! and applies it: the service record and the task stops in one compare-and-swap
//! transaction that also checks the record is the one observed (else it evaluates again),
//! then the starts through the plan applier, the placement path RunTask uses, and finally
//! the events only the shell can word (tasks started, placement failures).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_model::validate::task_demand;
use flotilla_model::{
    ContainerInstanceStatus, EcsError, Scope, Tag, Task, TaskOverride, TaskStatus, TaskStopCode,
    Timestamp,
};
use flotilla_reconcile::{
    Change, Observed, ObservedHost, SchedulingStrategy, Service, ServiceEvent, ServiceStatus,
    new_event_id, reconcile, started_tasks_event,
};
use flotilla_scheduler::{Constraint, PlacementRequest};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheChange, TaskSummary};
use crate::db::{CAS_RETRIES_MAX, TxnBuilder, Versioned};
use crate::engine::{Engine, Launch, PlacementJob, RequestContext, request_stop};

/// Services evaluated at once.
const WORKERS_MAX: usize = 8;
/// Every service is evaluated at least this often, whatever the change feed said.
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed evaluation (store error, contention), try again after this long.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);
/// The longest a plan may ask to wait (the reconciler's longest is six hours).
const REQUEUE_MAX: Duration = Duration::from_secs(6 * 3600);

/// One service: `r/{account}/{region}/`, cluster and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ServiceKey {
    root: String,
    cluster: String,
    name: String,
}

#[derive(Default)]
struct Queue {
    /// Services waiting, with the time each is due.
    due: HashMap<ServiceKey, Instant>,
    /// Services being evaluated now: never two evaluations of one service at once.
    running: HashSet<ServiceKey>,
}

struct Controller {
    engine: Engine,
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Controller {
    /// Queues `key` to be evaluated at `at`, or earlier if it already is.
    fn enqueue(&self, key: ServiceKey, at: Instant) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let entry = queue.due.entry(key).or_insert(at);
        if at < *entry {
            *entry = at;
        }
        drop(queue);
        self.wake.notify_one();
    }

    fn enqueue_all(&self) {
        let now = Instant::now();
        for (root, cluster, name) in self.engine.cache.all_services() {
            self.enqueue(
                ServiceKey {
                    root,
                    cluster,
                    name,
                },
                now,
            );
        }
    }

    fn on_change(&self, change: CacheChange) {
        let now = Instant::now();
        match change {
            CacheChange::Service {
                root,
                cluster,
                name,
            }
            | CacheChange::ServiceTask {
                root,
                cluster,
                name,
            } => self.enqueue(
                ServiceKey {
                    root,
                    cluster,
                    name,
                },
                now,
            ),
            CacheChange::Instance { root, cluster } => {
                for (name, summary) in self.engine.cache.services(&root, &cluster) {
                    if summary.status != ServiceStatus::Inactive {
                        self.enqueue(
                            ServiceKey {
                                root: root.clone(),
                                cluster: cluster.clone(),
                                name,
                            },
                            now,
                        );
                    }
                }
            }
        }
    }

    /// Takes the services that are due and not running; else when the next one is due.
    fn take_due(&self, limit: usize) -> (Vec<ServiceKey>, Option<Instant>) {
        let now = Instant::now();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let ready: Vec<ServiceKey> = queue
            .due
            .iter()
            .filter(|(key, at)| **at <= now && !queue.running.contains(*key))
            .map(|(key, _)| key.clone())
            .take(limit)
            .collect();
        for key in &ready {
            queue.due.remove(key);
            queue.running.insert(key.clone());
        }
        let next = queue
            .due
            .iter()
            .filter(|(key, _)| !queue.running.contains(*key))
            .map(|(_, at)| *at)
            .min();
        (ready, next)
    }

    fn finished(&self, key: &ServiceKey) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.running.remove(key);
        drop(queue);
        self.wake.notify_one();
    }
}

/// Runs the service controller until `shutdown`; `changes` is the state cache's feed
/// (subscribed before the cache loads, so no stored service is missed).
pub async fn run(
    engine: Engine,
    mut changes: broadcast::Receiver<CacheChange>,
    shutdown: CancellationToken,
) {
    let controller = Arc::new(Controller {
        engine: engine.clone(),
        queue: Mutex::default(),
        wake: Notify::new(),
    });
    let feeder = {
        let controller = controller.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut resync = tokio::time::interval(RESYNC_INTERVAL);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = resync.tick() => controller.enqueue_all(),
                    change = changes.recv() => match change {
                        Ok(change) => controller.on_change(change),
                        // Fell behind the feed: evaluate everything instead.
                        Err(broadcast::error::RecvError::Lagged(_)) => controller.enqueue_all(),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        })
    };
    let mut workers: JoinSet<()> = JoinSet::new();
    loop {
        while workers.try_join_next().is_some() {}
        let (ready, next) = controller.take_due(WORKERS_MAX.saturating_sub(workers.len()));
        for key in ready {
            let controller = controller.clone();
            workers.spawn(async move {
                let requeue = match evaluate(&controller.engine, &key).await {
                    Ok(requeue) => requeue,
                    Err(error) => {
                        tracing::warn!(service = %key.name, cluster = %key.cluster, %error, "service evaluation failed");
                        Some(RETRY_AFTER_ERROR)
                    }
                };
                if let Some(delay) = requeue {
                    controller.enqueue(key.clone(), Instant::now() + delay.min(REQUEUE_MAX));
                }
                controller.finished(&key);
            });
        }
        let sleep_until = next.unwrap_or_else(|| Instant::now() + RESYNC_INTERVAL);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = controller.wake.notified() => {}
            _ = tokio::time::sleep_until(sleep_until) => {}
            Some(_) = workers.join_next(), if !workers.is_empty() => {}
        }
    }
    workers.shutdown().await;
    let _ = feeder.await;
}

fn now() -> Timestamp {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp::from_millis(millis)
}

/// `r/{account}/{region}/` back to its scope.
fn scope_of(root: &str) -> Option<Scope> {
    let mut parts = root.strip_prefix("r/")?.split('/');
    let account = parts.next()?;
    let region = parts.next()?;
    Some(Scope::new(region, account))
}

/// One event the shell records after the starts.
enum ShellEvent {
    Started(String),
    PlacementFailed {
        deployment_id: String,
        message: String,
    },
}

/// Evaluates one service and applies the plan; returns when to evaluate it again.
async fn evaluate(engine: &Engine, key: &ServiceKey) -> Result<Option<Duration>, EcsError> {
    let Some(scope) = scope_of(&key.root) else {
        return Ok(None);
    };
    let ctx = RequestContext {
        principal_arn: format!("arn:aws:iam::{}:root", scope.account_id),
        scope,
        now: now(),
    };
    let keys = ctx.keys();
    let Some(service) = engine
        .db
        .get::<Service>(&keys.service(&key.cluster, &key.name))
        .await?
    else {
        return Ok(None);
    };
    if service.value.status == ServiceStatus::Inactive {
        return Ok(None);
    }
    let snapshot = engine.snapshot(&ctx, &key.cluster).await?;
    let group = service.value.group();
    let mut tasks: Vec<Versioned<Task>> = Vec::new();
    for summary in snapshot
        .tasks
        .values()
        .filter(|t| t.group.as_deref() == Some(group.as_str()))
    {
        if let Some(task) = engine
            .db
            .get::<Task>(&keys.task(&key.cluster, &summary.id))
            .await?
        {
            tasks.push(task);
        }
    }
    let task_values: Vec<Task> = tasks.iter().map(|t| t.value.clone()).collect();

    // The service's hosts are those of its capacity: Fargate capacity for a FARGATE
    // service, the user's instances otherwise (a DAEMON service never counts the hidden
    // Fargate hosts, where its tasks could not go).
    let fargate = service.value.launch_type == flotilla_model::LaunchType::Fargate;
    let instances: Vec<_> = snapshot
        .instances
        .values()
        .filter(|i| {
            i.value.status != ContainerInstanceStatus::Inactive
                && i.value.is_fargate_capacity() == fargate
        })
        .collect();
    let daemon_groups: HashSet<String> = engine
        .cache
        .services(&key.root, &key.cluster)
        .into_iter()
        .filter(|(name, s)| {
            s.scheduling_strategy == SchedulingStrategy::Daemon
                && s.status != ServiceStatus::Inactive
                && *name != key.name
        })
        .map(|(name, _)| format!("service:{name}"))
        .collect();
    let hosts: Vec<ObservedHost> =
        crate::placement::hosts(instances.iter().map(|i| &i.value), &snapshot.host_tasks)
            .into_iter()
            .zip(&instances)
            .map(|(host, instance)| {
                let other_daemon_tasks = host
                    .task_groups
                    .iter()
                    .filter(|(group, _)| daemon_groups.contains(*group))
                    .map(|(_, count)| *count)
                    .sum();
                ObservedHost {
                    host,
                    status: instance.value.status,
                    other_daemon_tasks,
                }
            })
            .collect();

    let plan = reconcile(
        &Observed {
            service: &service.value,
            tasks: &task_values,
            hosts: &hosts,
            now: ctx.now,
            restart_delay_base_ms: engine.config.restart_delay_base_ms,
            healthy_after_running_ms: engine.config.healthy_after_running_ms,
        },
        rand::random(),
    );
    let requeue = plan.requeue_after_ms.map(Duration::from_millis);
    if plan.changes.is_empty() {
        return Ok(requeue);
    }

    // The record and the stops, in one transaction checked against what was observed.
    let mut txn = TxnBuilder::new();
    let mut current = service.value.clone();
    let mut wrote_service = false;
    let mut stopped = Vec::new();
    for change in &plan.changes {
        match change {
            Change::UpdateService(next) => {
                txn.replace(&service, next.as_ref());
                current = (**next).clone();
                wrote_service = true;
            }
            Change::StopTask { task_arn, reason } => {
                let Some(read) = tasks.iter().find(|t| &t.value.arn == task_arn) else {
                    continue;
                };
                let mut task = read.value.clone();
                request_stop(
                    &mut task,
                    TaskStopCode::ServiceSchedulerInitiated,
                    Some(reason.clone()),
                    ctx.now,
                );
                let host_alive = task.container_instance_id.as_ref().is_some_and(|id| {
                    snapshot
                        .instances
                        .get(id)
                        .is_some_and(|i| i.value.status != ContainerInstanceStatus::Inactive)
                });
                if !host_alive {
                    // No agent will report it: the host is gone, and its reservation with it.
                    stop_at_once(&mut task, ctx.now);
                }
                if task != read.value {
                    txn.replace(read, &task);
                    stopped.push(task);
                }
            }
            Change::StartTasks { .. } | Change::StartTaskOn { .. } => {}
        }
    }
    if !wrote_service {
        txn.expect(&service.key, service.mod_revision);
    }
    if wrote_service || !stopped.is_empty() {
        match engine.db.commit(txn.build()).await? {
            Some(revision) => engine.cache.committed(
                [],
                stopped.iter().map(|t| TaskSummary::of(t, revision)),
                keys.root(),
                &key.cluster,
                revision,
            ),
            // The service or a task changed meanwhile: look again at once.
            None => return Ok(Some(Duration::ZERO)),
        }
    }

    // The starts, through the plan applier.
    let mut events = Vec::new();
    for change in &plan.changes {
        let (deployment_id, task_definition_arn, count, host_id) = match change {
            Change::StartTasks {
                deployment_id,
                task_definition_arn,
                count,
            } => (deployment_id, task_definition_arn, *count, None),
            Change::StartTaskOn {
                deployment_id,
                task_definition_arn,
                host_id,
            } => (
                deployment_id,
                task_definition_arn,
                1,
                Some(host_id.as_str()),
            ),
            _ => continue,
        };
        let host_ec2_id = host_id.and_then(|id| {
            snapshot
                .instances
                .get(id)
                .map(|i| i.value.ec2_instance_id.clone())
        });
        if host_id.is_some() && host_ec2_id.is_none() {
            continue;
        }
        events.extend(
            start_tasks(
                engine,
                &ctx,
                &current,
                deployment_id,
                task_definition_arn,
                count,
                host_ec2_id.as_deref(),
            )
            .await?,
        );
    }
    if !events.is_empty() {
        record_events(engine, &ctx, &service.key, events).await?;
    }
    Ok(requeue)
}

/// Records STOPPED for a task no agent will report on (its host is deregistered).
fn stop_at_once(task: &mut Task, now: Timestamp) {
    if task.last_status == TaskStatus::Stopped {
        return;
    }
    task.last_status = TaskStatus::Stopped;
    task.stopped_at = Some(now);
    task.execution_stopped_at.get_or_insert(now);
    task.stopping_at.get_or_insert(now);
    for container in &mut task.containers {
        container.last_status = TaskStatus::Stopped;
    }
    // The reservation was on a host that no longer exists: nothing to give back.
    task.released = true;
}

/// Places `count` tasks of one deployment (on one host for a daemon) and says which events
/// to record.
async fn start_tasks(
    engine: &Engine,
    ctx: &RequestContext,
    service: &Service,
    deployment_id: &str,
    task_definition_arn: &str,
    count: u32,
    host_ec2_id: Option<&str>,
) -> Result<Vec<ShellEvent>, EcsError> {
    let td = engine
        .task_definition_or_error(ctx, task_definition_arn)
        .await?;
    let cluster_name = flotilla_model::arn::last_segment(&service.cluster_arn).to_owned();
    let mut constraints = service.constraints();
    for constraint in &td.value.spec.placement_constraints {
        constraints.push(
            flotilla_scheduler::parse_constraint(
                constraint.kind.as_deref().unwrap_or_default(),
                constraint.expression.as_deref(),
            )
            .map_err(|e| EcsError::invalid(e.to_string()))?,
        );
    }
    if let Some(ec2_id) = host_ec2_id {
        let expression = flotilla_scheduler::query::parse(&format!("ec2InstanceId == {ec2_id}"))
            .map_err(|e| EcsError::Server(e.to_string()))?;
        constraints.push(Constraint::MemberOf(expression));
    }
    let mut tags: Vec<Tag> = Vec::new();
    match service.propagate_tags.as_deref() {
        Some("SERVICE") => flotilla_model::merge_tags(&mut tags, &service.tags),
        Some("TASK_DEFINITION") => flotilla_model::merge_tags(&mut tags, &td.value.tags),
        _ => {}
    }
    if service.enable_ecs_managed_tags {
        flotilla_model::merge_tags(
            &mut tags,
            &[
                Tag {
                    key: "aws:ecs:clusterName".into(),
                    value: cluster_name.clone(),
                },
                Tag {
                    key: "aws:ecs:serviceName".into(),
                    value: service.name.clone(),
                },
            ],
        );
    }
    let overrides = TaskOverride::default();
    let request = PlacementRequest {
        demand: task_demand(&td.value, &overrides),
        count: count as usize,
        group: service.group(),
        constraints,
        strategies: service.strategies(),
    };
    let launch = Launch {
        task_definition: td.value,
        overrides,
        group: service.group(),
        started_by: Some(deployment_id.to_owned()),
        tags,
        enable_execute_command: service.enable_execute_command,
        capacity: Default::default(),
    };
    // FARGATE services run on Fargate capacity, in the service's awsvpc network.
    let placed = match Engine::with_capacity(
        launch,
        service.launch_type,
        None,
        service.network_configuration.as_ref(),
    ) {
        Ok(launch) => {
            engine
                .apply_placement(PlacementJob {
                    ctx: ctx.clone(),
                    cluster_arn: service.cluster_arn.clone(),
                    cluster_name,
                    launch,
                    request,
                    token: None,
                    service_name: Some(service.name.clone()),
                    reply: tokio::sync::oneshot::channel().0,
                })
                .await
        }
        Err(error) => Err(error),
    };
    let mut events = Vec::new();
    match placed {
        Ok(placed) => {
            if !placed.tasks.is_empty() {
                let ids: Vec<&str> = placed.tasks.iter().map(|t| t.id.as_str()).collect();
                events.push(ShellEvent::Started(started_tasks_event(&service.name, &ids)));
            }
            if let Some(message) = placed.unplaced_event {
                events.push(ShellEvent::PlacementFailed {
                    deployment_id: deployment_id.to_owned(),
                    message,
                });
            }
        }
        // The applier refuses a cluster with no instance at all.
        Err(EcsError::InvalidParameter(reason)) => events.push(ShellEvent::PlacementFailed {
            deployment_id: deployment_id.to_owned(),
            message: format!(
                "(service {}) was unable to place a task because no container instance met all of its requirements. Reason: {reason}",
                service.name
            ),
        }),
        Err(error) => return Err(error),
    }
    Ok(events)
}

/// Writes the shell's events into the service record (compare-and-swap, retried).
async fn record_events(
    engine: &Engine,
    ctx: &RequestContext,
    key: &str,
    events: Vec<ShellEvent>,
) -> Result<(), EcsError> {
    for _ in 0..CAS_RETRIES_MAX {
        let Some(read) = engine.db.get::<Service>(key).await? else {
            return Ok(());
        };
        let mut service = read.value.clone();
        for event in &events {
            let id = new_event_id(rand::random());
            match event {
                ShellEvent::Started(message) => service.record_event(ServiceEvent {
                    id,
                    created_at: ctx.now,
                    message: message.clone(),
                }),
                ShellEvent::PlacementFailed {
                    deployment_id,
                    message,
                } => service.record_placement_failure(
                    deployment_id,
                    message.clone(),
                    id,
                    ctx.now,
                    engine.config.restart_delay_base_ms,
                ),
            }
        }
        let mut txn = TxnBuilder::new();
        txn.replace(&read, &service);
        if engine.db.commit(txn.build()).await?.is_some() {
            return Ok(());
        }
    }
    Err(crate::engine::contention())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_comes_back_from_the_key_root() {
        let scope = scope_of("r/123456789012/eu-west-1/").unwrap();
        assert_eq!(scope.account_id, "123456789012");
        assert_eq!(scope.region, "eu-west-1");
        assert!(scope_of("x/1/2/").is_none());
    }
}
