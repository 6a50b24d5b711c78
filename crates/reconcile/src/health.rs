//! How the reconciler judges one task: whether it still counts, whether it is healthy, due
//! to be stopped for failing its health checks, proven, and whether a stopped task was a
//! failed start.
//!
//! Healthy (for the rolling floor and for a deployment to complete): RUNNING, with desired
//! status RUNNING, and, when an essential container has a health check, the task's health
//! HEALTHY; without checks, RUNNING for the healthy-after window ([`HEALTHY_AFTER_RUNNING_MS`],
//! ECS's 40 s, unless the operator shortens it). Without that window a container that
//! exits a second after starting would look healthy whenever an evaluation happened to see
//! it RUNNING: a crash-looping revision would complete its deployment, stop the old
//! revision's good tasks and never trip the breaker.
//!
//! Proven (for the circuit breaker and the restart throttle): healthy, or a stopped task
//! that was healthy by its checks or ran for the window before it stopped.

use flotilla_model::{DesiredStatus, HealthStatus, Task, TaskStatus, TaskStopCode, Timestamp};

/// How long a task without health checks must have run before it counts healthy and proves
/// its deployment works: ECS's 40 s. [`crate::Observed::healthy_after_running_ms`] carries
/// the value in force.
pub const HEALTHY_AFTER_RUNNING_MS: i64 = 40_000;

/// The stop reason of a task stopped for failing its container health checks (ECS's words).
pub const UNHEALTHY_STOP_REASON: &str = "Task failed container health checks";

/// Whether any essential container has a health check (the agent reports a health status,
/// UNKNOWN at first, exactly for containers that have one).
pub(crate) fn has_health_checks(task: &Task) -> bool {
    task.containers
        .iter()
        .any(|c| c.essential && c.health_status.is_some())
}

/// Desired RUNNING and not yet past RUNNING: a task the service can count on (PENDING or
/// RUNNING). A task told to stop, or whose agent is already stopping it, is not.
pub(crate) fn is_wanted(task: &Task) -> bool {
    task.last_status != TaskStatus::Stopped
        && task.desired_status != DesiredStatus::Stopped
        && task.last_status <= TaskStatus::Running
}

pub(crate) fn is_running(task: &Task) -> bool {
    is_wanted(task) && task.last_status == TaskStatus::Running
}

pub(crate) fn is_healthy(task: &Task, now: Timestamp, healthy_after_ms: i64) -> bool {
    if !is_running(task) {
        return false;
    }
    if has_health_checks(task) {
        return task.health_status == HealthStatus::Healthy;
    }
    healthy_without_checks_at(task, healthy_after_ms).is_some_and(|at| now >= at)
}

/// When a task without health checks counts healthy: the window after it started.
pub(crate) fn healthy_without_checks_at(task: &Task, healthy_after_ms: i64) -> Option<Timestamp> {
    task.started_at.map(|at| at.plus_millis(healthy_after_ms))
}

/// The end of the health-check grace period, during which UNHEALTHY is not acted on.
pub(crate) fn grace_ends_at(task: &Task, grace_period_seconds: u32) -> Option<Timestamp> {
    task.started_at
        .map(|at| at.plus_seconds(i64::from(grace_period_seconds)))
}

/// RUNNING, UNHEALTHY by its checks, and past the grace period: to be stopped and replaced.
pub(crate) fn is_unhealthy(task: &Task, grace_period_seconds: u32, now: Timestamp) -> bool {
    is_running(task)
        && has_health_checks(task)
        && task.health_status == HealthStatus::Unhealthy
        && grace_ends_at(task, grace_period_seconds).is_some_and(|end| now >= end)
}

/// Whether a task (live or stopped) shows its deployment can run: healthy by its checks, or
/// without checks RUNNING (or having run) for `healthy_after_ms`.
pub(crate) fn is_proven(task: &Task, now: Timestamp, healthy_after_ms: i64) -> bool {
    let Some(started_at) = task.started_at else {
        return false;
    };
    if task.last_status == TaskStatus::Stopped {
        if has_health_checks(task) {
            return task.health_status == HealthStatus::Healthy;
        }
        let ended_at = task.execution_stopped_at.or(task.stopped_at).unwrap_or(now);
        return ended_at.millis_since(started_at) >= healthy_after_ms;
    }
    if !is_running(task) {
        return false;
    }
    if has_health_checks(task) {
        task.health_status == HealthStatus::Healthy
    } else {
        now.millis_since(started_at) >= healthy_after_ms
    }
}

/// Whether a STOPPED task failed to start: it could not start, its essential container
/// exited, or the scheduler stopped it for failing its health checks. Stops by users, by
/// the scheduler for other reasons, and by the infrastructure are not failures.
pub(crate) fn is_start_failure(task: &Task) -> bool {
    match task.stop_code {
        Some(TaskStopCode::TaskFailedToStart | TaskStopCode::EssentialContainerExited) => true,
        Some(TaskStopCode::ServiceSchedulerInitiated) | None => {
            task.stopped_reason.as_deref() == Some(UNHEALTHY_STOP_REASON)
        }
        Some(_) => false,
    }
}
