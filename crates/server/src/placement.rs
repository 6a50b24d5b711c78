//! Builds the scheduler's read-only host views from stored instance records and the
//! cache's per-host task counts.

use flotilla_model::{ContainerInstance, ContainerInstanceStatus};
use flotilla_scheduler::Host;
use std::sync::Arc;

use imbl::OrdMap;

use crate::cache::HostTasks;

/// One `Host` per instance, in the same order, with task groups and running counts.
pub fn hosts<'b>(
    instances: impl IntoIterator<Item = &'b ContainerInstance>,
    host_tasks: &OrdMap<String, Arc<HostTasks>>,
) -> Vec<Host> {
    instances
        .into_iter()
        .map(|instance| host(instance, host_tasks.get(&instance.id).map(|t| &**t)))
        .collect()
}

/// The scheduler's view of one instance and its non-stopped tasks.
pub fn host(instance: &ContainerInstance, tasks: Option<&HostTasks>) -> Host {
    Host {
        id: instance.id.clone(),
        arn: instance.arn.clone(),
        ec2_instance_id: instance.ec2_instance_id.clone(),
        active: instance.status == ContainerInstanceStatus::Active,
        agent_connected: instance.agent_connected,
        remaining: instance.remaining.clone(),
        registered: instance.registered.clone(),
        attributes: instance
            .attributes
            .iter()
            .map(|a| (a.name.clone(), a.value.clone()))
            .collect(),
        agent_version: instance.version_info.agent_version.clone(),
        registered_at: instance.registered_at,
        running_tasks_count: tasks.map_or(0, |t| t.running),
        task_groups: tasks.map(|t| t.groups.clone()).unwrap_or_default(),
    }
}
