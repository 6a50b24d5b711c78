//! Rolling deployments: from one task definition to the next within maximumPercent and
//! minimumHealthyPercent, ending with exactly one PRIMARY deployment, COMPLETED.

mod common;

use common::*;
use flotilla_model::TaskStatus;
use flotilla_reconcile::{DeploymentStatus, RolloutState};

struct Rollout {
    name: &'static str,
    desired: u32,
    minimum_healthy_percent: u32,
    maximum_percent: u32,
    health_checks: bool,
    /// The floor may be crossed by one task: the bounds leave no room to move otherwise.
    no_room: bool,
}

const fn rollout(name: &'static str, desired: u32, minimum: u32, maximum: u32) -> Rollout {
    Rollout {
        name,
        desired,
        minimum_healthy_percent: minimum,
        maximum_percent: maximum,
        health_checks: false,
        no_room: false,
    }
}

/// Runs rev 1 to steady state, updates to rev 2, and applies plans step by step; after
/// every plan, tasks holding a host stay within the cap and healthy tasks at or above the
/// floor; at the end one PRIMARY deployment of rev 2 remains, COMPLETED, with D tasks.
fn check(rollouts: &[Rollout]) {
    for case in rollouts {
        let mut sim = Sim::new(service(case.desired), hosts(4));
        sim.health_checks = case.health_checks;
        let configuration = &mut sim.service.deployment_configuration;
        configuration.minimum_healthy_percent = case.minimum_healthy_percent;
        configuration.maximum_percent = case.maximum_percent;
        sim.run_until_quiet(1_000, 20);
        assert_eq!(sim.healthy(), case.desired as usize, "{}", case.name);

        sim.service.task_definition_arn = REV2.to_owned();
        sim.service.start_deployment(deployment_id(2), sim.now);
        let cap = sim.service.deployment_configuration.task_cap(case.desired) as usize;
        let floor = sim
            .service
            .deployment_configuration
            .healthy_floor(case.desired) as usize;
        let floor = if case.no_room { floor - 1 } else { floor };
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 100, "{}: no end", case.name);
            let plan = sim.reconcile();
            sim.apply(&plan);
            sim.plans.push(plan.clone());
            let holding = sim.live().count();
            assert!(holding <= cap, "{}: {holding} tasks > cap {cap}", case.name);
            let healthy = sim.healthy();
            assert!(
                healthy >= floor,
                "{}: {healthy} healthy < {floor}",
                case.name
            );
            if plan.changes.is_empty() && sim.stable() {
                break;
            }
            sim.tick(1_000);
            if let Some(wait) = plan.requeue_after_ms.filter(|_| plan.changes.is_empty()) {
                // Waiting for new tasks to turn healthy.
                sim.tick(i64::try_from(wait).unwrap());
            }
        }

        let service = &sim.service;
        assert_eq!(service.deployments.len(), 1, "{}", case.name);
        let primary = &service.deployments[0];
        assert_eq!(primary.id, deployment_id(2), "{}", case.name);
        assert_eq!(primary.status, DeploymentStatus::Primary, "{}", case.name);
        assert_eq!(
            primary.rollout_state,
            RolloutState::Completed,
            "{}",
            case.name
        );
        assert_eq!(
            (primary.running_count, service.running_count),
            (case.desired, case.desired),
            "{}",
            case.name
        );
        let live: Vec<&str> = sim.live().map(|t| t.task_definition_arn.as_str()).collect();
        assert_eq!(live, vec![REV2; case.desired as usize], "{}", case.name);
        assert!(
            sim.live().all(|t| t.last_status == TaskStatus::Running),
            "{}",
            case.name
        );
        let messages = sim.messages();
        let completed = format!(
            "(service web) (deployment {}) deployment completed.",
            deployment_id(2)
        );
        assert_eq!(
            messages[..2],
            [
                "(service web) has reached a steady state.",
                completed.as_str()
            ],
            "{}",
            case.name
        );
        let steady = messages
            .iter()
            .filter(|m| m.ends_with("has reached a steady state."))
            .count();
        assert_eq!(steady, 2, "{}: once per steady period", case.name);
    }
}

#[test]
fn rolling_updates_stay_within_their_bounds() {
    check(&[
        rollout("defaults 100/200", 4, 100, 200),
        rollout("50/100: stop half, then start", 4, 50, 100),
        rollout("50/200", 3, 50, 200),
        rollout("0/100: stop everything first", 2, 0, 100),
        rollout("100/150", 5, 100, 150),
        rollout("one task, 100/200", 1, 100, 200),
        Rollout {
            health_checks: true,
            ..rollout("health checks, 100/200", 3, 100, 200)
        },
        Rollout {
            no_room: true,
            ..rollout("100/100 leaves no room: one task at a time", 3, 100, 100)
        },
        Rollout {
            no_room: true,
            ..rollout("one task, 50/100 rounds the floor up to 1", 1, 50, 100)
        },
    ]);
}

#[test]
fn a_second_update_mid_rollout_replaces_both_older_deployments() {
    let mut sim = Sim::new(service(3), hosts(3));
    sim.run_until_quiet(1_000, 20);
    sim.service.task_definition_arn = REV2.to_owned();
    sim.service.start_deployment(deployment_id(2), sim.now);
    sim.step(1_000);
    assert_eq!(sim.service.deployments.len(), 2);

    sim.service.task_definition_arn = REV3.to_owned();
    sim.service.start_deployment(deployment_id(3), sim.now);
    sim.run_until_quiet(1_000, 50);
    let live: Vec<&str> = sim.live().map(|t| t.task_definition_arn.as_str()).collect();
    assert_eq!(live, [REV3; 3]);
    assert_eq!(sim.service.deployments.len(), 1);
    assert_eq!(sim.service.deployments[0].id, deployment_id(3));
}

#[test]
fn scaling_mid_rollout_converges() {
    let mut sim = Sim::new(service(2), hosts(3));
    sim.run_until_quiet(1_000, 20);
    sim.service.task_definition_arn = REV2.to_owned();
    sim.service.start_deployment(deployment_id(2), sim.now);
    sim.step(1_000);
    sim.service.desired_count = 5;
    sim.run_until_quiet(1_000, 50);
    assert_eq!(sim.live().count(), 5);
    assert!(sim.live().all(|t| t.task_definition_arn == REV2));
}
