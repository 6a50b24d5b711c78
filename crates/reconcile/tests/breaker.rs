//! Tasks that keep failing: the restart throttle (growing gaps, reset by an update) and the
//! deployment circuit breaker (FAILED at the threshold, optionally rolling back).

mod common;

use common::*;
use flotilla_model::{TaskStatus, TaskStopCode};
use flotilla_reconcile::{
    BREAKER_FAILED_REASON, Change, CircuitBreaker, DeploymentStatus, Observed, RolloutState,
    Service, reconcile,
};

fn with_breaker(mut service: Service, rollback: bool) -> Service {
    service.deployment_configuration.circuit_breaker = Some(CircuitBreaker {
        enable: true,
        rollback,
    });
    service
}

/// Steps the simulator, moving time on to whenever the plan asks to be looked at again (at
/// least `tick_ms`), until `done` holds; panics after `steps_max` steps.
fn run_until(sim: &mut Sim, tick_ms: i64, steps_max: usize, done: impl Fn(&Sim) -> bool) {
    for _ in 0..steps_max {
        if done(sim) {
            return;
        }
        let plan = sim.step(tick_ms);
        if let Some(wait) = plan.requeue_after_ms {
            sim.tick(i64::try_from(wait).unwrap().min(3_600_000));
        }
    }
    panic!(
        "not done after {steps_max} steps: {:#?}",
        sim.service.deployments
    );
}

fn update_to(sim: &mut Sim, definition: &str, deployment: u64) {
    sim.service.task_definition_arn = definition.to_owned();
    sim.service
        .start_deployment(deployment_id(deployment), sim.now);
}

struct Case {
    name: &'static str,
    desired: u32,
    rollback: bool,
    /// How rev 2's tasks fail.
    outcome: Outcome,
}

/// Rev 1 runs; rev 2 fails to start (or runs a moment, then exits). The breaker trips at its threshold (10 here); with
/// rollback a new PRIMARY of rev 1 converges and the failed deployment is drained; without,
/// the failed deployment stays PRIMARY, FAILED, and nothing more is started.
fn check(cases: &[Case]) {
    for case in cases {
        let mut sim = Sim::new(with_breaker(service(case.desired), case.rollback), hosts(3));
        sim.run_until_quiet(1_000, 20);
        sim.outcomes.insert(REV2.to_owned(), case.outcome);
        update_to(&mut sim, REV2, 2);

        let failed = |sim: &Sim| {
            sim.service
                .deployments
                .iter()
                .any(|d| d.id == deployment_id(2) && d.rollout_state == RolloutState::Failed)
        };
        run_until(&mut sim, 1_000, 200, failed);
        let d2 = sim
            .service
            .deployments
            .iter()
            .find(|d| d.id == deployment_id(2))
            .unwrap();
        // Failures arrive in batches of up to D (one per start), so the count can pass 10.
        let threshold = flotilla_reconcile::breaker_threshold(case.desired);
        assert!(
            (threshold..threshold + case.desired).contains(&d2.failed_tasks),
            "{}: {}",
            case.name,
            d2.failed_tasks
        );
        assert_eq!(
            d2.rollout_state_reason.as_deref(),
            Some(BREAKER_FAILED_REASON)
        );
        let messages = sim.messages();
        let failed_event = format!(
            "(service web) ({}) deployment failed: tasks failed to start.",
            deployment_id(2)
        );
        assert!(messages.contains(&failed_event.as_str()), "{messages:?}");
        // The old tasks were never given up: the new ones never became healthy.
        let d1 = deployment_id(1);
        let old = sim
            .live()
            .filter(|t| t.started_by.as_ref() == Some(&d1))
            .count();
        assert_eq!(old, case.desired as usize, "{}", case.name);

        if case.rollback {
            assert_eq!(d2.status, DeploymentStatus::Active, "{}", case.name);
            let primary = sim.service.primary().unwrap();
            assert_eq!(primary.task_definition_arn, REV1);
            assert!(![deployment_id(1), deployment_id(2)].contains(&primary.id));
            assert_eq!(
                primary.rollout_state_reason.as_deref(),
                Some(&*format!(
                    "ECS deployment circuit breaker: rolling back to deploymentId {}.",
                    deployment_id(1)
                ))
            );
            let rolling_back = format!(
                "(service web) rolling back to deployment {}.",
                deployment_id(1)
            );
            let position = |m: &str| sim.messages().iter().position(|x| *x == m);
            assert!(
                position(&rolling_back) < position(&failed_event),
                "{}: newest first: {:?}",
                case.name,
                sim.messages()
            );
            assert!(position(&rolling_back).is_some());
            assert_eq!(sim.service.task_definition_arn, REV1);

            sim.run_until_quiet(1_000, 50);
            let primary = &sim.service.deployments[0];
            assert_eq!(sim.service.deployments.len(), 1, "{}", case.name);
            assert_eq!(primary.rollout_state, RolloutState::Completed);
            assert!(sim.live().all(|t| t.task_definition_arn == REV1));
            assert_eq!(sim.live().count(), case.desired as usize);
        } else {
            assert_eq!(d2.status, DeploymentStatus::Primary, "{}", case.name);
            assert_eq!(sim.service.deployments.len(), 2);
            for _ in 0..10 {
                let plan = sim.step(60_000);
                assert_eq!(
                    task_changes(&plan),
                    Vec::<String>::new(),
                    "{}: frozen",
                    case.name
                );
            }
            assert_eq!(sim.live().count(), case.desired as usize);
        }
    }
}

#[test]
fn the_circuit_breaker_fails_the_deployment_at_its_threshold() {
    check(&[
        Case {
            name: "rolls back",
            desired: 2,
            rollback: true,
            outcome: Outcome::FailsToStart,
        },
        Case {
            name: "rolls back, 4 tasks",
            desired: 4,
            rollback: true,
            outcome: Outcome::FailsToStart,
        },
        Case {
            name: "without rollback the deployment is frozen",
            desired: 2,
            rollback: false,
            outcome: Outcome::FailsToStart,
        },
        Case {
            // Seen RUNNING for a moment, it must not count healthy: it neither completes the
            // deployment nor lets the old revision's tasks be stopped.
            name: "a revision that exits right after RUNNING rolls back",
            desired: 3,
            rollback: true,
            outcome: Outcome::ExitsAfterRunning,
        },
    ]);
}

fn failed_start(id: &str, seconds: i64) -> flotilla_model::Task {
    let mut t = task(id, &deployment_id(2), REV2, "host-0", TaskStatus::Pending);
    t.created_at = T0.plus_seconds(seconds - 1);
    stopped(t, TaskStopCode::TaskFailedToStart, T0.plus_seconds(seconds))
}

/// A service mid-rollout from rev 1 (`t-old`, COMPLETED) to rev 2 with the breaker on.
fn mid_rollout(extra: Vec<flotilla_model::Task>) -> (Service, Vec<flotilla_model::Task>) {
    let mut service = with_breaker(service(1), true);
    service.deployments[0].rollout_state = RolloutState::Completed;
    service.task_definition_arn = REV2.to_owned();
    service.start_deployment(deployment_id(2), T0);
    let mut tasks = vec![task(
        "t-old",
        &deployment_id(1),
        REV1,
        "host-1",
        TaskStatus::Running,
    )];
    tasks.extend(extra);
    (service, tasks)
}

fn evaluate(
    service: &Service,
    tasks: &[flotilla_model::Task],
    seconds: i64,
) -> flotilla_reconcile::Plan {
    let hosts = hosts(2);
    reconcile(
        &Observed {
            service,
            tasks,
            hosts: &hosts,
            now: T0.plus_seconds(seconds),
            restart_delay_base_ms: flotilla_reconcile::THROTTLE_DELAY_BASE_MS,
            healthy_after_running_ms: flotilla_reconcile::HEALTHY_AFTER_RUNNING_MS,
        },
        7,
    )
}

#[test]
fn the_breaker_counts_only_failures_before_a_task_proved_itself() {
    let failures: Vec<_> = (0..12)
        .map(|i| failed_start(&format!("f{i}"), 10 + i))
        .collect();

    // Twelve failed starts and nothing proven: FAILED and rolled back in one evaluation.
    let (service, tasks) = mid_rollout(failures.clone());
    let plan = evaluate(&service, &tasks, 100);
    let next = updated(&plan).unwrap();
    let d2 = next
        .deployments
        .iter()
        .find(|d| d.id == deployment_id(2))
        .unwrap();
    assert_eq!(
        (d2.rollout_state, d2.failed_tasks),
        (RolloutState::Failed, 12)
    );
    assert_eq!(next.primary().unwrap().task_definition_arn, REV1);

    // The same failures with a rev 2 task running for a minute: the breaker stays quiet.
    let mut proven = task(
        "t-new",
        &deployment_id(2),
        REV2,
        "host-0",
        TaskStatus::Running,
    );
    proven.started_at = Some(T0.plus_seconds(40));
    let mut with_proven = failures.clone();
    with_proven.push(proven);
    let (service, tasks) = mid_rollout(with_proven);
    let plan = evaluate(&service, &tasks, 100);
    let next = updated(&plan).unwrap();
    let d2 = next.primary().unwrap();
    assert_eq!(d2.id, deployment_id(2));
    assert_eq!(
        (d2.rollout_state, d2.failed_tasks),
        (RolloutState::InProgress, 0)
    );
    assert!(d2.proven);

    // Counted once however often observed: evaluating the written record again adds nothing.
    let (service, tasks) = mid_rollout(failures[..5].to_vec());
    let first = updated(&evaluate(&service, &tasks, 100)).unwrap().clone();
    assert_eq!(first.primary().unwrap().failed_tasks, 5);
    let second = evaluate(&first, &tasks, 101);
    let again = updated(&second).map_or(5, |s| s.primary().unwrap().failed_tasks);
    assert_eq!(again, 5);
}

#[test]
fn a_failed_rollback_does_not_roll_back_to_itself() {
    let mut sim = Sim::new(with_breaker(service(1), true), hosts(2));
    sim.run_until_quiet(1_000, 20);
    sim.outcomes.insert(REV1.to_owned(), Outcome::FailsToStart);
    sim.outcomes.insert(REV2.to_owned(), Outcome::FailsToStart);
    // Rev 1's running task keeps running; only new starts of either revision fail.
    update_to(&mut sim, REV2, 2);
    let rolled_back = |sim: &Sim| sim.service.deployments.len() == 3;
    run_until(&mut sim, 1_000, 200, rolled_back);
    let rollback_id = sim.service.primary().unwrap().id.clone();
    let rollback_failed =
        |sim: &Sim| sim.service.primary().unwrap().rollout_state == RolloutState::Failed;
    run_until(&mut sim, 1_000, 200, rollback_failed);
    assert_eq!(sim.service.primary().unwrap().id, rollback_id);
    assert_eq!(sim.service.deployments.len(), 3, "no second rollback");
}

/// The gaps between start attempts of a task that keeps failing: they grow to 15 minutes,
/// and an update (a new deployment) starts at once.
#[test]
fn restarts_are_throttled_and_an_update_resets_the_throttle() {
    let mut sim = Sim::new(service(1), hosts(1));
    sim.outcomes.insert(REV1.to_owned(), Outcome::FailsToStart);
    let mut starts = Vec::new();
    for _ in 0..200 {
        let plan = sim.reconcile();
        sim.apply(&plan);
        if plan
            .changes
            .iter()
            .any(|c| matches!(c, Change::StartTasks { .. }))
        {
            starts.push(sim.now);
        }
        sim.tick(1);
        if let Some(wait) = plan.requeue_after_ms.filter(|_| plan.changes.is_empty()) {
            sim.tick(i64::try_from(wait).unwrap());
        }
        if starts.len() == 14 {
            break;
        }
    }
    let gaps_s: Vec<i64> = starts
        .windows(2)
        .map(|w| w[1].millis_since(w[0]) / 1_000)
        .collect();
    assert_eq!(
        gaps_s,
        [2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900, 900],
        "{starts:?}"
    );

    // An update starts the new revision at once, however long the old one was throttled.
    update_to(&mut sim, REV2, 2);
    let plan = sim.step(1_000);
    assert_eq!(task_changes(&plan), ["start 1 D2"]);
    sim.run_until_quiet(1_000, 20);
    assert!(sim.live().all(|t| t.task_definition_arn == REV2));
}

#[test]
fn a_task_that_proves_itself_resets_the_throttle() {
    let mut sim = Sim::new(service(1), hosts(1));
    sim.outcomes.insert(REV1.to_owned(), Outcome::FailsToStart);
    for _ in 0..5 {
        let plan = sim.step(1);
        if let Some(wait) = plan.requeue_after_ms.filter(|_| plan.changes.is_empty()) {
            sim.tick(i64::try_from(wait).unwrap());
        }
    }
    assert!(sim.service.deployments[0].consecutive_failures >= 2);
    // The cause goes away: the next task runs, and once it has run 40 s the run of
    // failures is over.
    sim.outcomes.clear();
    run_until(&mut sim, 1_000, 100, |sim| sim.healthy() == 1);
    sim.tick(41_000);
    sim.step(1_000);
    let deployment = &sim.service.deployments[0];
    assert_eq!(
        (deployment.consecutive_failures, deployment.next_start_at),
        (0, None)
    );
}

#[test]
fn tasks_failing_their_health_checks_trip_the_breaker_too() {
    let mut sim = Sim::new(with_breaker(service(2), true), hosts(3));
    sim.health_checks = true;
    sim.run_until_quiet(1_000, 20);
    sim.outcomes
        .insert(REV2.to_owned(), Outcome::TurnsUnhealthy);
    update_to(&mut sim, REV2, 2);
    let rolled_back = |sim: &Sim| sim.service.task_definition_arn == REV1;
    run_until(&mut sim, 1_000, 300, rolled_back);
    let reasons: Vec<&str> = sim
        .tasks
        .iter()
        .filter(|t| t.task_definition_arn == REV2)
        .filter_map(|t| t.stopped_reason.as_deref())
        .collect();
    assert!(reasons.len() >= 10, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| *r == "Task failed container health checks")
    );
    sim.run_until_quiet(1_000, 50);
    assert!(sim.live().all(|t| t.task_definition_arn == REV1));
    assert_eq!(sim.healthy(), 2, "the old tasks kept serving throughout");
}
