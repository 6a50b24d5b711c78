//! The REPLICA scheduler: keep `desired_count` tasks of the PRIMARY deployment, replacing
//! older deployments' tasks and tasks on DRAINING hosts within the deployment
//! configuration's bounds.
//!
//! Each evaluation, with D the desired count:
//! 1. Stop what must go anyway (deregistered hosts, failed health checks).
//! 2. Scale-in: PRIMARY tasks beyond D, those not healthy yet first (PENDING, then RUNNING),
//!    then healthy ones as the strategies say.
//! 3. Outgoing tasks (older deployments, PRIMARY tasks on DRAINING hosts): those not healthy
//!    and not maturing (RUNNING, on their way to healthy) go at once; healthy ones only while the healthy count stays at or above
//!    `ceil(D × minimumHealthyPercent / 100)`, oldest deployment first.
//! 4. Start PRIMARY tasks up to D, while all tasks holding a host (dying ones included)
//!    stay at or below `floor(D × maximumPercent / 100)`, unless the restart throttle says
//!    wait.
//!
//! When the bounds leave no room at all (e.g. 100/100) and nothing is in flight, one healthy
//! outgoing task is stopped anyway: the rollout moves one task at a time rather than
//! deadlocking. This is the only case in which the healthy floor is crossed.

use crate::Change;
use crate::evaluation::{DRAINING_STOP_REASON, Evaluation, LiveTask, Place};
use crate::service::RolloutState;

pub(crate) fn plan(ev: &mut Evaluation<'_>) {
    let Some(primary_index) = ev.primary_index() else {
        return;
    };
    let desired = ev.next.desired_count;
    let configuration = ev.next.deployment_configuration;
    let strategies = ev.next.strategies();
    let primary = &ev.next.deployments[primary_index];
    let primary_id = primary.id.clone();
    let task_definition_arn = primary.task_definition_arn.clone();
    // A FAILED PRIMARY (breaker without rollback) is frozen until the next deployment:
    // no new tasks, and the older deployments keep theirs.
    let frozen = primary.rollout_state == RolloutState::Failed;
    let next_start_at = primary.next_start_at;
    let scale_reason = format!("Scaling activity initiated by (deployment {primary_id})");

    ev.stop_forced();

    if !frozen {
        let cap = configuration.task_cap(desired);
        let floor = configuration.healthy_floor(desired);
        let counted = ev.count(|t| t.counted());
        let mut healthy = ev.count(|t| t.active_healthy());

        // Scale-in of the PRIMARY.
        let kept: Vec<usize> = ev.indexes(|t| t.kept());
        let surplus = kept.len().saturating_sub(desired as usize);
        for index in ev.stop_order(&kept, &strategies).into_iter().take(surplus) {
            healthy -= u32::from(ev.live[index].healthy);
            ev.stop(index, &scale_reason);
        }

        // Outgoing tasks that are not healthy (and not about to be) cost the floor nothing.
        let outgoing: Vec<usize> = ev.indexes(|t| t.active() && !t.kept());
        for &index in &outgoing {
            if !ev.live[index].healthy && !ev.live[index].maturing {
                let reason = outgoing_reason(ev, index, &scale_reason);
                ev.stop(index, &reason);
            }
        }
        // Healthy ones: oldest deployment first (tasks of dropped deployments oldest of all),
        // PRIMARY tasks on DRAINING hosts last; the strategies order each group.
        let age = |t: &LiveTask<'_>| match (t.primary, t.deployment) {
            (true, _) => 0,
            (false, Some(position)) => position + 1,
            (false, None) => usize::MAX,
        };
        let mut ages: Vec<usize> = outgoing
            .iter()
            .filter(|&&i| ev.live[i].active_healthy())
            .map(|&i| age(&ev.live[i]))
            .collect();
        ages.sort_unstable_by(|a, b| b.cmp(a));
        ages.dedup();
        let mut ordered = Vec::new();
        for group in ages {
            let members: Vec<usize> = outgoing
                .iter()
                .copied()
                .filter(|&i| ev.live[i].active_healthy() && age(&ev.live[i]) == group)
                .collect();
            ordered.extend(ev.stop_order(&members, &strategies));
        }
        let budget = healthy.saturating_sub(floor) as usize;
        for &index in ordered.iter().take(budget) {
            let reason = outgoing_reason(ev, index, &scale_reason);
            ev.stop(index, &reason);
        }

        let kept_now = ev.count(|t| t.kept());
        let missing = desired.saturating_sub(kept_now);
        let room = cap.saturating_sub(counted);
        let mut starts = missing.min(room);

        // No room to start and no healthy task to spare: stop one outgoing task, once
        // nothing is in flight, so the rollout cannot deadlock.
        let settled = ev
            .live
            .iter()
            .filter(|t| t.counted())
            .all(|t| t.active_healthy());
        if missing > 0
            && room == 0
            && !ev.changes_tasks()
            && settled
            && let Some(&index) = ordered.first()
        {
            let reason = outgoing_reason(ev, index, &scale_reason);
            ev.stop(index, &reason);
        }

        if starts > 0
            && let Some(at) = next_start_at.filter(|at| *at > ev.now)
        {
            // Throttled: tasks of this deployment keep failing to start.
            ev.requeue_at(at);
            starts = 0;
        }
        if starts > 0 {
            ev.start(Change::StartTasks {
                deployment_id: primary_id,
                task_definition_arn,
                count: starts,
            });
        }
    }

    ev.record_stops_event();
    ev.refresh_counts();
    let complete = !frozen
        && ev.count(|t| t.kept() && t.healthy) == desired
        && ev.count(|t| t.kept()) == desired
        // Older deployments' tasks, dying ones included, must be gone (lost hosts excepted).
        && !ev
            .live
            .iter()
            .any(|t| t.counted() && !t.primary && t.deployment.is_some());
    let quiet = ev.live.iter().filter(|t| t.counted()).all(|t| t.kept());
    ev.settle(complete, quiet);
}

fn outgoing_reason(ev: &Evaluation<'_>, index: usize, scale_reason: &str) -> String {
    if ev.live[index].place == Place::Draining {
        DRAINING_STOP_REASON.to_owned()
    } else {
        scale_reason.to_owned()
    }
}
