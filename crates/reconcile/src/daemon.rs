//! The DAEMON scheduler: one task of the PRIMARY deployment on every ACTIVE host with a
//! connected agent that meets the placement constraints (ECS ignores desiredCount and the
//! strategies; the desired count becomes the number of such hosts).
//!
//! Per host, in host order:
//! * no task: start one (unless the restart throttle says wait, or, with
//!   maximumPercent ≤ 100, a task there is still stopping);
//! * an older deployment's task: with maximumPercent > 100 start the new one beside it and
//!   stop the old once the new is healthy; otherwise stop the old first (while the count of
//!   hosts with a healthy task stays at or above `ceil(D × minimumHealthyPercent / 100)`,
//!   or, when that floor leaves no room at all, one host at a time once nothing is in
//!   flight) and start the new one once the old has STOPPED;
//! * more than one PRIMARY task: keep one (healthy and oldest first), stop the rest.
//!
//! Hosts that stop matching lose their task at once. A DRAINING host keeps its daemon task
//! until no other task is left there, so the daemon is the last to stop (a PENDING one goes
//! at once, as ECS stops PENDING service tasks on draining hosts). The reconciler sees only
//! this service's tasks; "other tasks" are read from the host's task groups (every group but
//! this service's) less [`crate::ObservedHost::other_daemon_tasks`], which the shell fills
//! in so that two daemon services on one draining host do not wait for each other. When it
//! is 0, every other group counts, which errs on the side of stopping the daemon late.

use flotilla_model::ContainerInstanceStatus;
use flotilla_scheduler::Constraint;

use crate::Change;
use crate::evaluation::{DRAINING_STOP_REASON, Evaluation, Place};
use crate::service::RolloutState;

/// How often a daemon task waiting for its DRAINING host to empty is looked at again.
pub const DRAINING_RECHECK_MS: i64 = 10_000;

pub const CONSTRAINT_STOP_REASON: &str = "Task stopped because its container instance no longer meets the service's placement constraints";

/// Which observed hosts should run the daemon (by index into `Observed::hosts`).
pub(crate) fn eligible_hosts(ev: &Evaluation<'_>) -> Vec<bool> {
    let constraints = ev.next.constraints();
    ev.observed
        .hosts
        .iter()
        .map(|observed| {
            observed.status == ContainerInstanceStatus::Active
                && observed.host.agent_connected
                && constraints.iter().all(|constraint| match constraint {
                    Constraint::MemberOf(expression) => expression.matches(&observed.host),
                    // One task per host is what a daemon is anyway.
                    Constraint::DistinctInstance => true,
                })
        })
        .collect()
}

pub(crate) fn plan(ev: &mut Evaluation<'_>, eligible: &[bool]) {
    let Some(primary_index) = ev.primary_index() else {
        return;
    };
    let desired = ev.next.desired_count;
    let configuration = ev.next.deployment_configuration;
    let primary = &ev.next.deployments[primary_index];
    let primary_id = primary.id.clone();
    let task_definition_arn = primary.task_definition_arn.clone();
    let frozen = primary.rollout_state == RolloutState::Failed;
    let throttled_until = primary.next_start_at.filter(|at| *at > ev.now);
    let surge = configuration.maximum_percent > 100;
    let floor = configuration.healthy_floor(desired);
    let scale_reason = format!("Scaling activity initiated by (deployment {primary_id})");
    let group = ev.next.group();

    ev.stop_forced();

    // Tasks on hosts that should not run the daemon.
    for index in 0..ev.live.len() {
        let live = &ev.live[index];
        if !live.counted() {
            continue;
        }
        match live.host {
            Some(host) if eligible[host] => {}
            Some(host) if live.place == Place::Draining => {
                let observed = &ev.observed.hosts[host];
                let others: u32 = observed
                    .host
                    .task_groups
                    .iter()
                    .filter(|(name, _)| **name != group)
                    .map(|(_, n)| *n)
                    .sum();
                let others = others.saturating_sub(observed.other_daemon_tasks);
                if others == 0 || !live.healthy {
                    ev.stop(index, DRAINING_STOP_REASON);
                } else {
                    ev.requeue_at(ev.now.plus_millis(DRAINING_RECHECK_MS));
                }
            }
            // Not matching the constraints any more, or a task with no host at all.
            _ => ev.stop(index, CONSTRAINT_STOP_REASON),
        }
    }

    // Hosts already covered by a healthy task, for the floor.
    let mut covered = u32::try_from(
        (0..eligible.len())
            .filter(|&host| eligible[host])
            .filter(|&host| {
                ev.live
                    .iter()
                    .any(|t| t.host == Some(host) && t.active_healthy())
            })
            .count(),
    )
    .unwrap_or(u32::MAX);

    let mut throttled = false;
    // Hosts whose old task the floor holds back (maximumPercent 100 leaves no other way).
    let mut blocked: Vec<Vec<usize>> = Vec::new();
    for host in (0..eligible.len()).filter(|&host| eligible[host]) {
        let here = ev.indexes(|t| t.host == Some(host) && t.counted());
        let mut primaries: Vec<usize> = here
            .iter()
            .copied()
            .filter(|&i| ev.live[i].active() && ev.live[i].primary)
            .collect();
        primaries.sort_by_key(|&i| {
            let t = &ev.live[i];
            (!t.healthy, t.task.created_at, t.task.id.as_str())
        });
        for &extra in primaries.iter().skip(1) {
            ev.stop(extra, &scale_reason);
        }
        if frozen {
            continue;
        }
        let old: Vec<usize> = here
            .iter()
            .copied()
            .filter(|&i| ev.live[i].active() && !ev.live[i].primary)
            .collect();
        // Older tasks that are not healthy cost the floor nothing. (A maturing one goes too:
        // with one task per host there is no room to keep it while the new one starts.)
        for &index in &old {
            if !ev.live[index].healthy {
                ev.stop(index, &scale_reason);
            }
        }
        let healthy_old: Vec<usize> = old
            .iter()
            .copied()
            .filter(|&i| ev.live[i].active_healthy())
            .collect();
        match primaries.first() {
            Some(&keeper) => {
                // The new task covers the host once healthy; the old ones can go then.
                if ev.live[keeper].active_healthy() {
                    for &index in &healthy_old {
                        ev.stop(index, &scale_reason);
                    }
                }
            }
            None if !healthy_old.is_empty() && !surge => {
                // Stop first, start once it has STOPPED: the host never runs two.
                if covered > floor {
                    covered -= 1;
                    for &index in &healthy_old {
                        ev.stop(index, &scale_reason);
                    }
                } else {
                    blocked.push(healthy_old);
                }
            }
            None => {
                let stopping_here = here.iter().any(|&i| !ev.live[i].active());
                if stopping_here && !surge {
                    continue;
                }
                if throttled_until.is_some() {
                    throttled = true;
                    continue;
                }
                ev.start(Change::StartTaskOn {
                    deployment_id: primary_id.clone(),
                    task_definition_arn: task_definition_arn.clone(),
                    host_id: ev.observed.hosts[host].host.id.clone(),
                });
            }
        }
    }
    // As for REPLICA: when the bounds leave no room at all (e.g. minimumHealthyPercent 100
    // with maximumPercent 100), replace one host at a time once nothing is in flight,
    // rather than never.
    let settled = ev
        .live
        .iter()
        .filter(|t| t.counted())
        .all(|t| t.active_healthy());
    if !ev.changes_tasks()
        && settled
        && let Some(first) = blocked.first()
    {
        for &index in first {
            ev.stop(index, &scale_reason);
        }
    }
    if throttled && let Some(at) = throttled_until {
        ev.requeue_at(at);
    }

    ev.record_stops_event();
    ev.refresh_counts();
    let on_eligible = |t: &crate::evaluation::LiveTask<'_>| t.host.is_some_and(|h| eligible[h]);
    let each_host_done = (0..eligible.len())
        .filter(|&host| eligible[host])
        .all(|host| {
            let active: Vec<_> = ev
                .live
                .iter()
                .filter(|t| t.host == Some(host) && t.active())
                .collect();
            active.len() == 1 && active[0].primary && active[0].healthy
        });
    // Older deployments' tasks must be gone, except on DRAINING hosts, where they wait to
    // be the last to stop and do not hold the rollout up.
    let old_left = ev
        .live
        .iter()
        .any(|t| t.counted() && !t.primary && t.deployment.is_some() && t.place != Place::Draining);
    let complete = !frozen && each_host_done && !old_left;
    let quiet = ev
        .live
        .iter()
        .filter(|t| t.counted())
        .all(|t| t.active() && t.primary && on_eligible(t));
    ev.settle(complete, quiet);
}
