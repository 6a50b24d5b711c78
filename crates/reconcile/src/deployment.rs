//! A deployment's memory of its tasks' failures: the restart throttle (growing gaps between
//! start attempts of tasks that keep failing) and the circuit breaker (FAILED after too many
//! failed starts, optionally rolling back to the last COMPLETED task definition).
//!
//! ```text
//!  task of deployment D observed STOPPED
//!        |
//!        +-- start failure (not proven before it stopped), not yet in
//!        |   D.accounted_task_ids? --no--> nothing
//!        |
//!        yes: remember its id, consecutive_failures += 1,
//!        |    next_start_at = stopped_at + backoff
//!        |    (reset to 0 when a task created after the failure proves itself)
//!        |
//!        +-- D IN_PROGRESS and no task of D proven yet? --> failed_tasks += 1
//!                 |
//!                 failed_tasks >= clamp(ceil(desired / 2), 10, 200), breaker enabled
//!                 v
//!            D FAILED --rollback--> new PRIMARY of the last COMPLETED task definition,
//!                                   D becomes ACTIVE and is drained
//! ```

use flotilla_model::{Task, TaskStatus, Timestamp};

use crate::health;
use crate::service::{Deployment, DeploymentStatus, RolloutState, Service};

/// The first gap after a failed start; each further consecutive failure doubles it.
pub const THROTTLE_DELAY_BASE_MS: u64 = 1_000;
/// ECS's ceiling on the gap between restart attempts.
pub const THROTTLE_DELAY_MAX_MS: u64 = 15 * 60 * 1_000;
/// ECS's bounds on the circuit breaker's threshold.
pub const BREAKER_THRESHOLD_MIN: u32 = 10;
pub const BREAKER_THRESHOLD_MAX: u32 = 200;

pub const BREAKER_FAILED_REASON: &str = "ECS deployment circuit breaker: tasks failed to start.";

/// The gap before the next start after `consecutive_failures` failures in a row.
pub fn throttle_delay_ms(consecutive_failures: u32) -> u64 {
    throttle_delay_with_base_ms(THROTTLE_DELAY_BASE_MS, consecutive_failures)
}

/// [`throttle_delay_ms`] with another base than ECS's one second (an operator setting,
/// which tests use to make failing deployments fail fast).
pub fn throttle_delay_with_base_ms(base_ms: u64, consecutive_failures: u32) -> u64 {
    if consecutive_failures == 0 {
        return 0;
    }
    // 2^20 s is far past the ceiling already; capping the shift keeps it from overflowing.
    let doublings = consecutive_failures.min(20);
    (base_ms << doublings).min(THROTTLE_DELAY_MAX_MS)
}

/// Failed tasks that trip the breaker: `clamp(ceil(desired / 2), 10, 200)`.
pub fn breaker_threshold(desired_count: u32) -> u32 {
    desired_count
        .div_ceil(2)
        .clamp(BREAKER_THRESHOLD_MIN, BREAKER_THRESHOLD_MAX)
}

/// Counts `failures` more failed starts at `at` and pushes the next start out accordingly.
pub(crate) fn throttle(deployment: &mut Deployment, failures: u32, at: Timestamp, base_ms: u64) {
    deployment.consecutive_failures = deployment.consecutive_failures.saturating_add(failures);
    deployment.last_failure_at = Some(deployment.last_failure_at.map_or(at, |last| last.max(at)));
    let delay_ms = throttle_delay_with_base_ms(base_ms, deployment.consecutive_failures);
    let next = at.plus_millis(i64::try_from(delay_ms).unwrap_or(i64::MAX));
    deployment.next_start_at = Some(deployment.next_start_at.map_or(next, |n| n.max(next)));
    deployment.updated_at = deployment.updated_at.max(at);
}

/// Folds what the observed tasks say into each deployment's memory: STOPPED tasks that
/// failed to start are counted once (throttle, breaker), proven tasks disarm the breaker and
/// reset the throttle.
pub(crate) fn account(
    service: &mut Service,
    tasks: &[Task],
    now: Timestamp,
    base_ms: u64,
    healthy_after_ms: i64,
) {
    for deployment in &mut service.deployments {
        let id = deployment.id.clone();
        let own = || {
            tasks
                .iter()
                .filter(|t| t.started_by.as_deref() == Some(id.as_str()))
        };
        // Forget ids the store no longer holds; they cannot be observed again.
        let observed: std::collections::BTreeSet<&str> = own().map(|t| t.id.as_str()).collect();
        deployment
            .accounted_task_ids
            .retain(|id| observed.contains(id.as_str()));

        let mut newly_stopped: Vec<&Task> = own()
            .filter(|t| t.last_status == TaskStatus::Stopped)
            .filter(|t| !deployment.accounted_task_ids.contains(&t.id))
            .collect();
        newly_stopped.sort_by_key(|t| (t.stopped_at, t.id.as_str()));

        // ECS stops evaluating the breaker once the deployment has a successful task, so a
        // proven task observed in the same evaluation as failures wins. Only a rollout in
        // progress needs to know (the breaker judges nothing else), which keeps a steady
        // service's record unchanged.
        if deployment.rollout_state == RolloutState::InProgress
            && !deployment.proven
            && own().any(|t| health::is_proven(t, now, healthy_after_ms))
        {
            deployment.proven = true;
            deployment.failed_tasks = 0;
            deployment.updated_at = now;
        }

        for task in &newly_stopped {
            // Only failures act, so only they need remembering. A task that had proven
            // itself (healthy, or up for 40 s) and then died is not a failed start: it is
            // replaced at once, as ECS replaces a task that crashes after running for hours.
            if !health::is_start_failure(task) || health::is_proven(task, now, healthy_after_ms) {
                continue;
            }
            deployment.accounted_task_ids.insert(task.id.clone());
            throttle(deployment, 1, task.stopped_at.unwrap_or(now), base_ms);
            let counts_for_breaker =
                deployment.rollout_state == RolloutState::InProgress && !deployment.proven;
            if counts_for_breaker {
                deployment.failed_tasks = deployment.failed_tasks.saturating_add(1);
            }
        }

        // A task made after the latest failure that proves itself ends the run of failures.
        if let Some(last_failure_at) = deployment.last_failure_at {
            let recovered = deployment.consecutive_failures > 0
                && own().any(|t| {
                    t.created_at > last_failure_at && health::is_proven(t, now, healthy_after_ms)
                });
            if recovered {
                deployment.consecutive_failures = 0;
                deployment.next_start_at = None;
                deployment.updated_at = now;
            }
        }
    }
}

/// What [`trip_breaker`] did, for the events.
pub(crate) enum Tripped {
    /// The PRIMARY failed; no rollback (disabled, or nothing COMPLETED to go back to).
    Failed { deployment_id: String },
    /// The PRIMARY failed and a new PRIMARY of `to_deployment_id`'s task definition started.
    RolledBack {
        deployment_id: String,
        to_deployment_id: String,
    },
}

/// Fails the PRIMARY when the breaker's threshold is reached and, with rollback, starts a
/// new PRIMARY (`new_deployment_id`) of the latest COMPLETED deployment's task definition.
/// A rollback never goes back to the task definition that just failed, so a failed rollback
/// stays FAILED instead of rolling back to itself forever.
pub(crate) fn trip_breaker(
    service: &mut Service,
    desired_count: u32,
    new_deployment_id: impl FnOnce() -> String,
    now: Timestamp,
) -> Option<Tripped> {
    let configuration = service.deployment_configuration;
    if !configuration.breaker_enabled() {
        return None;
    }
    let primary = service.primary_mut()?;
    if primary.rollout_state != RolloutState::InProgress
        || primary.proven
        || primary.failed_tasks < breaker_threshold(desired_count)
    {
        return None;
    }
    primary.rollout_state = RolloutState::Failed;
    primary.rollout_state_reason = Some(BREAKER_FAILED_REASON.to_owned());
    primary.updated_at = now;
    let failed_id = primary.id.clone();
    let failed_task_definition = primary.task_definition_arn.clone();

    let restore = service
        .deployments
        .iter()
        .filter(|d| d.status == DeploymentStatus::Active)
        .filter(|d| d.rollout_state == RolloutState::Completed)
        .find(|d| d.task_definition_arn != failed_task_definition)
        .map(|d| (d.id.clone(), d.task_definition_arn.clone()));
    let Some((to_deployment_id, task_definition_arn)) =
        restore.filter(|_| configuration.breaker_rolls_back())
    else {
        return Some(Tripped::Failed {
            deployment_id: failed_id,
        });
    };

    let mut rollback = Deployment::new(
        new_deployment_id(),
        task_definition_arn.clone(),
        desired_count,
        now,
    );
    rollback.rollout_state_reason = Some(format!(
        "ECS deployment circuit breaker: rolling back to deploymentId {to_deployment_id}."
    ));
    for deployment in &mut service.deployments {
        if deployment.status == DeploymentStatus::Primary {
            deployment.status = DeploymentStatus::Active;
        }
    }
    service.deployments.insert(0, rollback);
    service.task_definition_arn = task_definition_arn;
    service.steady_state_event_at = None;
    Some(Tripped::RolledBack {
        deployment_id: failed_id,
        to_deployment_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_grows_to_fifteen_minutes() {
        let delays: Vec<u64> = [0, 1, 2, 3, 9, 10, 11, 50, u32::MAX]
            .into_iter()
            .map(throttle_delay_ms)
            .collect();
        assert_eq!(
            delays,
            [
                0, 2_000, 4_000, 8_000, 512_000, 900_000, 900_000, 900_000, 900_000
            ]
        );
    }

    #[test]
    fn breaker_threshold_is_half_the_desired_count_within_ecs_bounds() {
        let thresholds: Vec<u32> = [0, 1, 19, 21, 22, 399, 400, 5000]
            .into_iter()
            .map(breaker_threshold)
            .collect();
        assert_eq!(thresholds, [10, 10, 10, 11, 11, 200, 200, 200]);
    }
}
