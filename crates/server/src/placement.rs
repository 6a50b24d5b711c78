//! Builds the scheduler's read-only host views from stored instance and task records.

use std::collections::BTreeMap;

use flotilla_model::{ContainerInstance, ContainerInstanceStatus, TaskStatus};
use flotilla_scheduler::Host;

use crate::cache::TaskSummary;

/// One `Host` per instance, in the same order, with task groups and running counts.
pub fn hosts<'a, 'b>(
    instances: impl IntoIterator<Item = &'b ContainerInstance>,
    tasks: impl IntoIterator<Item = &'a TaskSummary>,
) -> Vec<Host> {
    let mut groups: BTreeMap<&str, BTreeMap<String, u32>> = BTreeMap::new();
    let mut running: BTreeMap<&str, u32> = BTreeMap::new();
    for task in tasks {
        if task.last_status == TaskStatus::Stopped {
            continue;
        }
        if let Some(instance_id) = task.instance_id.as_deref() {
            if let Some(group) = &task.group {
                *groups
                    .entry(instance_id)
                    .or_default()
                    .entry(group.clone())
                    .or_default() += 1;
            }
            if task.last_status == TaskStatus::Running {
                *running.entry(instance_id).or_default() += 1;
            }
        }
    }
    instances
        .into_iter()
        .map(|instance| Host {
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
            running_tasks_count: running.get(instance.id.as_str()).copied().unwrap_or(0),
            task_groups: groups.remove(instance.id.as_str()).unwrap_or_default(),
        })
        .collect()
}
