//! Service event messages in ECS's wording, and the ids of events and rollback deployments,
//! made from the evaluation's seed so that the same input always gives the same plan.

use flotilla_model::resources::Shortfall;
use flotilla_scheduler::{Host, RejectReason, Rejection};

/// "(service NAME) has started 2 tasks: (task ID) (task ID)." The shell records it after
/// creating the tasks of a StartTasks or StartTaskOn, since only it knows their ids.
pub fn started_tasks_event(service_name: &str, task_ids: &[&str]) -> String {
    format!(
        "(service {service_name}) has started {} tasks: {}.",
        task_ids.len(),
        task_list(task_ids)
    )
}

/// "(service NAME) has stopped 1 running tasks: (task ID)." ECS says "running" whatever
/// state the stopped tasks were in.
pub fn stopped_tasks_event(service_name: &str, task_ids: &[&str]) -> String {
    format!(
        "(service {service_name}) has stopped {} running tasks: {}.",
        task_ids.len(),
        task_list(task_ids)
    )
}

pub fn steady_state_event(service_name: &str) -> String {
    format!("(service {service_name}) has reached a steady state.")
}

pub fn deployment_completed_event(service_name: &str, deployment_id: &str) -> String {
    format!("(service {service_name}) (deployment {deployment_id}) deployment completed.")
}

pub fn deployment_failed_event(service_name: &str, deployment_id: &str) -> String {
    format!("(service {service_name}) ({deployment_id}) deployment failed: tasks failed to start.")
}

/// `deployment_id` is the COMPLETED deployment whose task definition is restored.
pub fn rolling_back_event(service_name: &str, deployment_id: &str) -> String {
    format!("(service {service_name}) rolling back to deployment {deployment_id}.")
}

/// The event for tasks no host could take, naming the host that came closest: the one that
/// failed the latest of the scheduler's checks (agent, then CPU, memory, ports, GPU, then
/// the constraints), the first such in host order. `rejections` are the scheduler's, one
/// per host (`PlacementResult::rejections`), indexing `hosts`.
pub fn placement_failure_event(
    service_name: &str,
    hosts: &[Host],
    rejections: &[Rejection],
) -> String {
    let prefix = format!(
        "(service {service_name}) was unable to place a task because no container instance \
         met all of its requirements."
    );
    let closest = rejections
        .iter()
        .filter_map(|r| Some((check_stage(&r.reason)?, r)))
        .filter(|(_, r)| r.host_index < hosts.len())
        // max_by_key keeps the last of equals; reversing keeps the first in host order.
        .rev()
        .max_by_key(|(stage, _)| *stage);
    let Some((_, rejection)) = closest else {
        return format!("{prefix} Reason: No Container Instances were found in your cluster.");
    };
    let id = &hosts[rejection.host_index].id;
    let problem = match rejection.reason {
        RejectReason::Resource(Shortfall::Cpu) => {
            "has insufficient CPU units available.".to_owned()
        }
        RejectReason::Resource(Shortfall::Memory) => {
            "has insufficient memory available.".to_owned()
        }
        RejectReason::Resource(Shortfall::Ports) => {
            "is already using a port required by your task.".to_owned()
        }
        RejectReason::Resource(Shortfall::Gpu) => {
            "has insufficient GPU units available.".to_owned()
        }
        ref other => format!(
            "encountered error \"{}\".",
            other.ecs_reason().trim_end_matches('.')
        ),
    };
    format!("{prefix} The closest matching (container-instance {id}) {problem}")
}

/// How far a host got through the checks; `None` for hosts that are not candidates at all
/// (not ACTIVE, agent disconnected), which ECS never names as closest.
fn check_stage(reason: &RejectReason) -> Option<u8> {
    Some(match reason {
        RejectReason::Inactive | RejectReason::AgentDisconnected => return None,
        RejectReason::Resource(Shortfall::Cpu) => 1,
        RejectReason::Resource(Shortfall::Memory) => 2,
        RejectReason::Resource(Shortfall::Ports) => 3,
        RejectReason::Resource(Shortfall::Gpu) => 4,
        RejectReason::DistinctInstance => 5,
        RejectReason::MemberOf => 6,
    })
}

fn task_list(task_ids: &[&str]) -> String {
    task_ids
        .iter()
        .map(|id| format!("(task {id})"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Ids for one evaluation, drawn from its seed (splitmix64), so a replayed evaluation makes
/// the same ids and two evaluations with different seeds practically never collide.
/// A new deployment id (`ecs-svc/` and 19 digits) from a seed, for the shell's
/// CreateService and UpdateService.
pub fn new_deployment_id(seed: u64) -> String {
    Ids::new(seed).deployment_id()
}

/// A new event id (a UUID) from a seed, for the events the shell records.
pub fn new_event_id(seed: u64) -> String {
    Ids::new(seed).event_id()
}

#[derive(Clone, Debug)]
pub(crate) struct Ids {
    state: u64,
}

impl Ids {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A version-4 UUID, the form of ECS's event ids.
    pub(crate) fn event_id(&mut self) -> String {
        // Version nibble 4 (hex digit 12) and variant bits 10 (top of `low`).
        let high = self.next_u64() & !0xF000 | 0x4000;
        let low = self.next_u64() >> 2 | 1 << 63;
        let hex = format!("{high:016x}{low:016x}");
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// `ecs-svc/` and 19 digits, the form of ECS's deployment ids.
    pub(crate) fn deployment_id(&mut self) -> String {
        const LOWEST: u64 = 1_000_000_000_000_000_000;
        let digits = LOWEST + self.next_u64() % (9 * LOWEST);
        format!("ecs-svc/{digits}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_ecs_shapes_and_follow_the_seed() {
        let mut ids = Ids::new(7);
        let event = ids.event_id();
        assert_eq!(event.len(), 36);
        assert_eq!(&event[14..15], "4", "{event}");
        assert!(matches!(&event[19..20], "8" | "9" | "a" | "b"), "{event}");
        let deployment = ids.deployment_id();
        assert_eq!(deployment.len(), "ecs-svc/".len() + 19, "{deployment}");
        let mut again = Ids::new(7);
        assert_eq!(again.event_id(), event);
        assert_eq!(again.deployment_id(), deployment);
        assert_ne!(Ids::new(8).event_id(), event);
    }
}
