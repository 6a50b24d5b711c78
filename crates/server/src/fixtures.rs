//! Records for unit tests of code that reads stored records in part.

use flotilla_model::{ContainerInstance, Task};

/// A task record with every optional field that a partial read looks at set.
pub fn task() -> Task {
    serde_json::from_value(serde_json::json!({
        "id": "t-1", "arn": "arn:aws:ecs:us-east-1:000000000000:task/c/t-1",
        "cluster_name": "c", "cluster_arn": "arn:aws:ecs:us-east-1:000000000000:cluster/c",
        "task_definition_arn": "arn:aws:ecs:us-east-1:000000000000:task-definition/f:1",
        "family": "f", "revision": 1,
        "container_instance_id": "i-1",
        "container_instance_arn": "arn:aws:ecs:us-east-1:000000000000:container-instance/c/i-1",
        "launch_type": "EC2", "last_status": "RUNNING", "desired_status": "STOPPED",
        "containers": [{"id": "c-1", "arn": "arn:c-1", "name": "app", "image": "busybox",
                        "last_status": "RUNNING", "cpu": 16, "essential": true}],
        "overrides": {}, "group": "service:web", "started_by": "ecs-svc/1",
        "enable_execute_command": false, "health_status": "HEALTHY",
        "created_at": 1, "version": 3, "reservation": {"cpu": 16, "memory_mib": 32},
        "released": false
    }))
    .expect("a valid task record")
}

/// A container instance record.
pub fn container_instance() -> ContainerInstance {
    serde_json::from_value(serde_json::json!({
        "id": "i-1",
        "arn": "arn:aws:ecs:us-east-1:000000000000:container-instance/c/i-1",
        "cluster_name": "c", "ec2_instance_id": "i-0000000000000001", "version": 1,
        "version_info": {}, "registered": {"cpu": 1024, "memory_mib": 2048},
        "remaining": {"cpu": 1024, "memory_mib": 2048}, "status": "ACTIVE",
        "agent_connected": true, "running_tasks_count": 0, "pending_tasks_count": 0,
        "registered_at": 1
    }))
    .expect("a valid container instance record")
}
