//! Properties over random histories of a REPLICA service: tasks crash, hosts drain, come
//! back, lose and regain their agents, the service is updated and scaled. Whatever happens:
//! * a plan that starts tasks never takes the tasks holding a host past maximumPercent;
//! * a plan's stops never take the healthy count below the minimumHealthyPercent floor
//!   (or below where it already was), unless the bounds leave no room at all;
//! * applying a plan and reconciling again starts and stops nothing more;
//! * once the trouble stops, the service converges: one COMPLETED deployment, D tasks.
//!
//! And of a DAEMON service, with hosts joining as well: no host ever holds two of its
//! tasks (maximumPercent 100), and it converges to one task per host.

mod common;

use common::*;
use flotilla_model::{
    ContainerInstanceStatus, DesiredStatus, HealthStatus, TaskStatus, TaskStopCode,
};
use flotilla_reconcile::{Change, RolloutState};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Reconcile, apply, then move time on.
    Step {
        tick_s: u8,
    },
    /// A RUNNING task's essential container exits.
    Crash {
        pick: usize,
    },
    /// A RUNNING task's health check starts failing (when the tasks have one).
    Sicken {
        pick: usize,
    },
    Drain {
        host: usize,
    },
    Activate {
        host: usize,
    },
    Disconnect {
        host: usize,
    },
    Reconnect {
        host: usize,
    },
    /// UpdateService with a new task definition revision.
    Update,
    Scale {
        desired: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..40).prop_map(|tick_s| Op::Step { tick_s }),
        2 => any::<usize>().prop_map(|pick| Op::Crash { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Sicken { pick }),
        1 => (0usize..5).prop_map(|host| Op::Drain { host }),
        1 => (0usize..5).prop_map(|host| Op::Activate { host }),
        1 => (0usize..5).prop_map(|host| Op::Disconnect { host }),
        1 => (0usize..5).prop_map(|host| Op::Reconnect { host }),
        1 => Just(Op::Update),
        1 => (0u32..7).prop_map(|desired| Op::Scale { desired }),
    ]
}

const BOUNDS: [(u32, u32); 7] = [
    (100, 200),
    (50, 100),
    (50, 200),
    (0, 100),
    (100, 150),
    (75, 125),
    (100, 100),
];

/// Tasks holding a host the reconciler can see (ACTIVE or DRAINING, agent connected).
fn holding(sim: &Sim) -> usize {
    sim.live().filter(|t| reachable(sim, t)).count()
}

fn healthy(sim: &Sim) -> usize {
    sim.live()
        .filter(|t| reachable(sim, t))
        .filter(|t| t.desired_status == DesiredStatus::Running)
        .filter(|t| sim.is_healthy(t))
        .count()
}

fn running(sim: &Sim) -> Vec<usize> {
    (0..sim.tasks.len())
        .filter(|&i| sim.tasks[i].last_status == TaskStatus::Running)
        .collect()
}

fn reachable(sim: &Sim, task: &flotilla_model::Task) -> bool {
    sim.hosts.iter().any(|h| {
        Some(h.host.id.as_str()) == task.container_instance_id.as_deref()
            && h.host.agent_connected
            && matches!(
                h.status,
                ContainerInstanceStatus::Active | ContainerInstanceStatus::Draining
            )
    })
}

fn starts(plan: &flotilla_reconcile::Plan) -> bool {
    plan.changes
        .iter()
        .any(|c| matches!(c, Change::StartTasks { .. } | Change::StartTaskOn { .. }))
}

fn crash(sim: &mut Sim, pick: usize) {
    let now = sim.now;
    let running = running(sim);
    if !running.is_empty() {
        let task = &mut sim.tasks[running[pick % running.len()]];
        *task = stopped(task.clone(), TaskStopCode::EssentialContainerExited, now);
    }
}

fn sicken(sim: &mut Sim, pick: usize) {
    let running = running(sim);
    if sim.health_checks && !running.is_empty() {
        let task = &mut sim.tasks[running[pick % running.len()]];
        *task = with_health(task.clone(), HealthStatus::Unhealthy);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_histories_stay_within_bounds_and_converge(
        desired in 0u32..7,
        bounds in 0usize..BOUNDS.len(),
        host_count in 2usize..6,
        health_checks in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let (minimum, maximum) = BOUNDS[bounds];
        let mut sim = Sim::new(service(desired), hosts(host_count));
        sim.health_checks = health_checks;
        sim.service.deployment_configuration.minimum_healthy_percent = minimum;
        sim.service.deployment_configuration.maximum_percent = maximum;
        let mut revision = 1;

        for op in ops {
            match op {
                Op::Step { tick_s } => {
                    let configuration = sim.service.deployment_configuration;
                    let cap = configuration.task_cap(sim.service.desired_count) as usize;
                    let floor = configuration.healthy_floor(sim.service.desired_count) as usize;
                    let healthy_before = healthy(&sim);

                    let plan = sim.reconcile();
                    sim.apply(&plan);
                    if starts(&plan) {
                        prop_assert!(holding(&sim) <= cap, "{} > cap {cap}", holding(&sim));
                    }
                    if cap > floor {
                        let healthy_after = healthy(&sim);
                        prop_assert!(
                            healthy_after >= healthy_before.min(floor),
                            "healthy {healthy_before} -> {healthy_after}, floor {floor}"
                        );
                    }
                    let again = sim.reconcile();
                    prop_assert_eq!(task_changes(&again), Vec::<String>::new(), "idempotent");
                    sim.tick(i64::from(tick_s) * 1_000);
                }
                Op::Crash { pick } => crash(&mut sim, pick),
                Op::Sicken { pick } => sicken(&mut sim, pick),
                Op::Drain { host } => {
                    let index = host % sim.hosts.len();
                    set_status(&mut sim.hosts[index], ContainerInstanceStatus::Draining);
                }
                Op::Activate { host } => {
                    let index = host % sim.hosts.len();
                    set_status(&mut sim.hosts[index], ContainerInstanceStatus::Active);
                }
                Op::Disconnect { host } => {
                    let index = host % sim.hosts.len();
                    sim.hosts[index].host.agent_connected = false;
                }
                Op::Reconnect { host } => {
                    let index = host % sim.hosts.len();
                    sim.hosts[index].host.agent_connected = true;
                }
                Op::Update => {
                    revision += 1;
                    sim.service.task_definition_arn =
                        format!("arn:aws:ecs:us-east-1:000000000000:task-definition/web:{revision}");
                    sim.service.start_deployment(deployment_id(revision), sim.now);
                }
                Op::Scale { desired } => sim.service.desired_count = desired,
            }
        }

        // The trouble stops: every host back and ACTIVE, nothing crashes any more.
        for host in &mut sim.hosts {
            set_status(host, ContainerInstanceStatus::Active);
            host.host.agent_connected = true;
        }
        sim.run_until_quiet(30_000, 200);
        let service = &sim.service;
        prop_assert_eq!(service.deployments.len(), 1);
        prop_assert_eq!(service.deployments[0].rollout_state, RolloutState::Completed);
        prop_assert_eq!(sim.live().count(), service.desired_count as usize);
        prop_assert!(sim.live().all(|t| t.task_definition_arn == service.task_definition_arn));
    }
}

#[derive(Clone, Debug)]
enum DaemonOp {
    Step { tick_s: u8 },
    Crash { pick: usize },
    Drain { host: usize },
    Activate { host: usize },
    Disconnect { host: usize },
    Reconnect { host: usize },
    Join,
    Update,
}

fn daemon_op() -> impl Strategy<Value = DaemonOp> {
    prop_oneof![
        6 => (1u8..40).prop_map(|tick_s| DaemonOp::Step { tick_s }),
        2 => any::<usize>().prop_map(|pick| DaemonOp::Crash { pick }),
        1 => (0usize..8).prop_map(|host| DaemonOp::Drain { host }),
        1 => (0usize..8).prop_map(|host| DaemonOp::Activate { host }),
        1 => (0usize..8).prop_map(|host| DaemonOp::Disconnect { host }),
        1 => (0usize..8).prop_map(|host| DaemonOp::Reconnect { host }),
        1 => Just(DaemonOp::Join),
        1 => Just(DaemonOp::Update),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_daemon_histories_keep_one_task_per_host(
        host_count in 1usize..5,
        minimum in prop_oneof![Just(0u32), Just(50), Just(100)],
        ops in proptest::collection::vec(daemon_op(), 1..60),
    ) {
        let mut sim = Sim::new(daemon_service(), hosts(host_count));
        sim.service.deployment_configuration.minimum_healthy_percent = minimum;
        let mut revision = 1;
        for op in ops {
            match op {
                DaemonOp::Step { tick_s } => {
                    let plan = sim.reconcile();
                    sim.apply(&plan);
                    for host in &sim.hosts {
                        let here = sim
                            .live()
                            .filter(|t| t.container_instance_id.as_deref() == Some(&*host.host.id))
                            .filter(|_| host.host.agent_connected)
                            .count();
                        prop_assert!(here <= 1, "{here} tasks on {}", host.host.id);
                    }
                    let again = sim.reconcile();
                    prop_assert_eq!(task_changes(&again), Vec::<String>::new(), "idempotent");
                    sim.tick(i64::from(tick_s) * 1_000);
                }
                DaemonOp::Crash { pick } => crash(&mut sim, pick),
                DaemonOp::Drain { host } => {
                    let index = host % sim.hosts.len();
                    set_status(&mut sim.hosts[index], ContainerInstanceStatus::Draining);
                }
                DaemonOp::Activate { host } => {
                    let index = host % sim.hosts.len();
                    set_status(&mut sim.hosts[index], ContainerInstanceStatus::Active);
                }
                DaemonOp::Disconnect { host } => {
                    let index = host % sim.hosts.len();
                    sim.hosts[index].host.agent_connected = false;
                }
                DaemonOp::Reconnect { host } => {
                    let index = host % sim.hosts.len();
                    sim.hosts[index].host.agent_connected = true;
                }
                DaemonOp::Join => {
                    let next = sim.hosts.len();
                    sim.hosts.push(host(next));
                }
                DaemonOp::Update => {
                    revision += 1;
                    sim.service.task_definition_arn =
                        format!("arn:aws:ecs:us-east-1:000000000000:task-definition/web:{revision}");
                    sim.service.start_deployment(deployment_id(revision), sim.now);
                }
            }
        }

        for host in &mut sim.hosts {
            set_status(host, ContainerInstanceStatus::Active);
            host.host.agent_connected = true;
        }
        sim.run_until_quiet(30_000, 200);
        prop_assert_eq!(sim.service.deployments.len(), 1);
        prop_assert_eq!(sim.service.desired_count as usize, sim.hosts.len());
        for host in &sim.hosts {
            let here: Vec<&str> = sim
                .live()
                .filter(|t| t.container_instance_id.as_deref() == Some(&*host.host.id))
                .map(|t| t.task_definition_arn.as_str())
                .collect();
            prop_assert_eq!(here, vec![sim.service.task_definition_arn.as_str()]);
        }
    }
}
