//! Container instance actions: register (API and agent), describe, list, drain, deregister.

use std::collections::BTreeMap;

use flotilla_api::requests::*;
use flotilla_api::responses::{
    self, ContainerInstanceResponse, ContainerInstancesResponse, Failure, ListItems, ListResponse,
};
use flotilla_model::resources::Resources;
use flotilla_model::{
    Attribute, ContainerInstance, ContainerInstanceStatus, DesiredStatus, EcsError, Tag, Task,
    TaskStatus, VersionInfo, arn::last_segment,
};

use super::{Engine, RequestContext, contention, max_results, new_id, paginate, validate_tags};
use crate::db::{CAS_RETRIES_MAX, TxnBuilder, Versioned};

const INSTANCES_PER_CALL_MAX: usize = 100;

/// What a host says about itself when it (re)registers.
#[derive(Clone, Debug, Default)]
pub struct InstanceRegistration {
    pub cluster: Option<String>,
    pub container_instance_arn: Option<String>,
    pub ec2_instance_id: Option<String>,
    pub hostname: Option<String>,
    pub resources: Resources,
    pub attributes: Vec<Attribute>,
    pub version_info: VersionInfo,
    pub tags: Vec<Tag>,
    pub agent_endpoint: Option<String>,
    /// The host offers Fargate capacity (hidden from the user's instance lists).
    pub fargate_capacity: bool,
}

/// Parses RegisterContainerInstance's `totalResources`.
fn resources_from(inputs: &[ResourceInput]) -> Result<Resources, EcsError> {
    let mut resources = Resources::default();
    for input in inputs {
        let integer = || {
            input
                .integer_value
                .or(input.long_value)
                .or(input.double_value.map(|d| d as i64))
                .unwrap_or(0)
        };
        let ports = || -> Result<std::collections::BTreeSet<u16>, EcsError> {
            input
                .string_set_value
                .iter()
                .map(|p| {
                    p.parse::<u16>().map_err(|_| {
                        EcsError::invalid(format!("Invalid port '{p}' in totalResources."))
                    })
                })
                .collect()
        };
        match input.name.as_deref() {
            Some("CPU") => resources.cpu = integer(),
            Some("MEMORY") => resources.memory_mib = integer(),
            Some("PORTS") => resources.ports_tcp = ports()?,
            Some("PORTS_UDP") => resources.ports_udp = ports()?,
            Some("GPU") => resources.gpu_ids = input.string_set_value.iter().cloned().collect(),
            other => {
                return Err(EcsError::invalid(format!(
                    "Unknown resource {other:?} in totalResources; accepted: CPU, MEMORY, PORTS, PORTS_UDP, GPU."
                )));
            }
        }
    }
    if resources.cpu < 0 || resources.memory_mib < 0 {
        return Err(EcsError::invalid(
            "CPU and MEMORY in totalResources must not be negative.",
        ));
    }
    Ok(resources)
}

/// `i-` and 17 hex digits, like an EC2 instance id.
fn new_ec2_instance_id() -> String {
    format!("i-{}", &new_id()[..17])
}

impl Engine {
    /// Registers a host, or re-registers it (same ARN, or same ec2InstanceId in the
    /// cluster) keeping its tasks. What is left of it is recomputed from its live tasks.
    pub(crate) async fn register_instance(
        &self,
        ctx: &RequestContext,
        registration: InstanceRegistration,
    ) -> Result<ContainerInstance, EcsError> {
        validate_tags(&registration.tags)?;
        for attribute in &registration.attributes {
            super::attributes::validate_attribute(attribute)?;
        }
        let keys = ctx.keys();
        for _ in 0..CAS_RETRIES_MAX {
            let cluster = self
                .active_cluster(ctx, registration.cluster.as_deref())
                .await?;
            let cluster_name = cluster.value.name.clone();
            // The cache finds a re-registering host without decoding every instance record;
            // the commit below compares revisions, so a stale answer only means a retry.
            let snapshot = self.snapshot(ctx, &cluster_name).await?;
            let wanted_id = registration
                .container_instance_arn
                .as_deref()
                .map(last_segment);
            let by_id = wanted_id.and_then(|id| snapshot.instances.get(id));
            let by_ec2_instance_id = registration
                .ec2_instance_id
                .as_deref()
                .and_then(|ec2| snapshot.by_ec2_instance_id.get(ec2))
                .and_then(|id| snapshot.instances.get(id));
            let existing = by_id
                .filter(|i| i.value.status != ContainerInstanceStatus::Inactive)
                .or(by_ec2_instance_id);
            let existing = existing.cloned();
            let mut instance = match &existing {
                Some(found) => found.value.clone(),
                None => {
                    let id = new_id();
                    ContainerInstance {
                        arn: ctx.scope.container_instance_arn(&cluster_name, &id),
                        id,
                        cluster_name: cluster_name.clone(),
                        ec2_instance_id: registration
                            .ec2_instance_id
                            .clone()
                            .unwrap_or_else(new_ec2_instance_id),
                        hostname: None,
                        capacity_provider_name: None,
                        version: 0,
                        version_info: VersionInfo::default(),
                        registered: Resources::default(),
                        remaining: Resources::default(),
                        status: ContainerInstanceStatus::Active,
                        status_reason: None,
                        agent_connected: true,
                        running_tasks_count: 0,
                        pending_tasks_count: 0,
                        attributes: Vec::new(),
                        registered_at: ctx.now,
                        tags: Vec::new(),
                        agent_endpoint: None,
                    }
                }
            };
            instance.version += 1;
            instance.hostname = registration.hostname.clone().or(instance.hostname);
            instance.version_info = registration.version_info.clone();
            instance.registered = registration.resources.clone();
            instance.agent_connected = true;
            instance.agent_endpoint = registration.agent_endpoint.clone();
            for attribute in &registration.attributes {
                instance.put_attribute(&attribute.name, attribute.value.clone());
            }
            flotilla_model::merge_tags(&mut instance.tags, &registration.tags);
            {
                use flotilla_model::container_instance::{CAPACITY_ATTRIBUTE, FARGATE_CAPACITY};
                if registration.fargate_capacity {
                    instance.capacity_provider_name = Some(FARGATE_CAPACITY.to_owned());
                    instance.put_attribute(CAPACITY_ATTRIBUTE, Some(FARGATE_CAPACITY.to_owned()));
                } else if instance.is_fargate_capacity() {
                    instance.capacity_provider_name = None;
                    instance.attributes.retain(|a| a.name != CAPACITY_ATTRIBUTE);
                }
            }
            // What is left = capacity minus what live tasks hold.
            let mut remaining = instance.registered.clone();
            if existing.is_some() {
                for task in self
                    .instance_tasks(ctx, &cluster_name, &instance.id)
                    .await?
                {
                    if !task.value.released {
                        remaining.apply(&task.value.reservation);
                    }
                }
            }
            instance.remaining = remaining;
            let key = keys.instance(&cluster_name, &instance.id);
            let mut txn = TxnBuilder::new();
            txn.expect(&cluster.key, cluster.mod_revision)
                .expect(&key, existing.as_ref().map_or(0, |e| e.mod_revision))
                .put(&key, &instance);
            if self.db.commit(txn.build()).await?.is_some() {
                return Ok(instance);
            }
        }
        Err(contention())
    }

    /// The tasks on one instance that were not STOPPED when this was called (found through
    /// the state cache, once it holds every write committed before the call), as stored now.
    pub(crate) async fn instance_tasks(
        &self,
        ctx: &RequestContext,
        cluster: &str,
        instance_id: &str,
    ) -> Result<Vec<Versioned<Task>>, EcsError> {
        let keys = ctx.keys();
        let ids = self.snapshot(ctx, cluster).await?.task_ids_on(instance_id);
        let mut tasks = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(task) = self.db.get::<Task>(&keys.task(cluster, &id)).await? {
                tasks.push(task);
            }
        }
        Ok(tasks)
    }

    pub(crate) async fn register_container_instance_api(
        &self,
        ctx: &RequestContext,
        request: RegisterContainerInstanceRequest,
    ) -> Result<ContainerInstanceResponse, EcsError> {
        flotilla_api::requests::refuse_unsupported(&request.platform_devices, "platformDevices")?;
        let ec2_instance_id = request
            .instance_identity_document
            .as_deref()
            .and_then(|doc| serde_json::from_str::<serde_json::Value>(doc).ok())
            .and_then(|doc| {
                doc.get("instanceId")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            });
        let registration = InstanceRegistration {
            cluster: request.cluster,
            container_instance_arn: request.container_instance_arn,
            ec2_instance_id,
            hostname: None,
            resources: resources_from(&request.total_resources)?,
            attributes: request.attributes,
            version_info: request.version_info.unwrap_or_default(),
            tags: request.tags,
            agent_endpoint: None,
            fargate_capacity: false,
        };
        let instance = self.register_instance(ctx, registration).await?;
        Ok(ContainerInstanceResponse {
            container_instance: responses::container_instance(&instance, true),
        })
    }

    /// Fills the running/pending counts (derived from tasks, never stored).
    async fn with_counts(
        &self,
        ctx: &RequestContext,
        cluster: &str,
        instances: Vec<ContainerInstance>,
    ) -> Result<Vec<ContainerInstance>, EcsError> {
        let snapshot = self.snapshot(ctx, cluster).await?;
        let mut counts: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        for task in snapshot.tasks.values() {
            if let Some(id) = task.instance_id.as_deref() {
                let entry = counts.entry(id).or_default();
                match task.last_status {
                    TaskStatus::Running => entry.0 += 1,
                    status if status.is_pending() => entry.1 += 1,
                    _ => {}
                }
            }
        }
        Ok(instances
            .into_iter()
            .map(|mut instance| {
                let (running, pending) = counts
                    .get(instance.id.as_str())
                    .copied()
                    .unwrap_or_default();
                instance.running_tasks_count = running;
                instance.pending_tasks_count = pending;
                instance
            })
            .collect())
    }

    pub(crate) async fn describe_container_instances(
        &self,
        ctx: &RequestContext,
        request: DescribeContainerInstancesRequest,
    ) -> Result<ContainerInstancesResponse, EcsError> {
        if request.container_instances.is_empty()
            || request.container_instances.len() > INSTANCES_PER_CALL_MAX
        {
            return Err(EcsError::invalid(format!(
                "containerInstances must name 1 to {INSTANCES_PER_CALL_MAX} container instances."
            )));
        }
        let mut include_tags = false;
        for include in &request.include {
            match include.as_str() {
                "TAGS" => include_tags = true,
                "CONTAINER_INSTANCE_HEALTH" => {}
                other => {
                    return Err(EcsError::invalid(format!(
                        "Invalid include value '{other}'; accepted: TAGS, CONTAINER_INSTANCE_HEALTH."
                    )));
                }
            }
        }
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let keys = ctx.keys();
        let mut found = Vec::new();
        let mut failures = Vec::new();
        for reference in &request.container_instances {
            let id = last_segment(reference);
            match self
                .db
                .get::<ContainerInstance>(&keys.instance(&cluster.value.name, id))
                .await?
            {
                // Fargate capacity is Flotilla's, not the user's: it is not shown.
                Some(instance) if !instance.value.is_fargate_capacity() => {
                    found.push(instance.value)
                }
                _ => failures.push(Failure::missing(
                    ctx.scope.container_instance_arn(&cluster.value.name, id),
                )),
            }
        }
        let found = self.with_counts(ctx, &cluster.value.name, found).await?;
        Ok(ContainerInstancesResponse {
            container_instances: found
                .iter()
                .map(|i| responses::container_instance(i, include_tags))
                .collect(),
            failures,
        })
    }

    pub(crate) async fn list_container_instances(
        &self,
        ctx: &RequestContext,
        request: ListContainerInstancesRequest,
    ) -> Result<ListResponse<String>, EcsError> {
        let limit = max_results(request.max_results, super::LIST_RESULTS_MAX)?;
        let status = match request.status.as_deref() {
            None => None,
            Some(s) => match ContainerInstanceStatus::parse(s) {
                Some(ContainerInstanceStatus::Inactive) | None => {
                    return Err(EcsError::invalid(format!(
                        "Invalid status '{s}'; accepted: ACTIVE, DRAINING, REGISTERING, DEREGISTERING, REGISTRATION_FAILED."
                    )));
                }
                parsed => parsed,
            },
        };
        let filter = match request.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            Some(expression) => Some(
                flotilla_scheduler::query::parse(expression)
                    .map_err(|e| EcsError::invalid(e.to_string()))?,
            ),
            None => None,
        };
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let instances = self
            .db
            .list::<ContainerInstance>(&ctx.keys().instances(&cluster.value.name))
            .await?;
        let instances: Vec<ContainerInstance> = instances
            .into_iter()
            .map(|i| i.value)
            .filter(|i| !i.is_fargate_capacity())
            .filter(|i| match status {
                Some(wanted) => i.status == wanted,
                None => i.status != ContainerInstanceStatus::Inactive,
            })
            .collect();
        let instances = match &filter {
            Some(expression) => {
                let instances = self
                    .with_counts(ctx, &cluster.value.name, instances)
                    .await?;
                let snapshot = self.snapshot(ctx, &cluster.value.name).await?;
                let hosts = crate::placement::hosts(&instances, &snapshot.host_tasks);
                instances
                    .into_iter()
                    .zip(hosts)
                    .filter(|(_, host)| expression.matches(host))
                    .map(|(i, _)| i)
                    .collect()
            }
            None => instances,
        };
        let arns = instances.into_iter().map(|i| i.arn).collect();
        let (arns, next_token) =
            paginate(arns, request.next_token.as_deref(), limit, "instances:")?;
        Ok(ListResponse {
            items: ListItems::ContainerInstanceArns(arns),
            next_token,
        })
    }

    pub(crate) async fn update_container_instances_state(
        &self,
        ctx: &RequestContext,
        request: UpdateContainerInstancesStateRequest,
    ) -> Result<ContainerInstancesResponse, EcsError> {
        let status = match required(&request.status, "status")? {
            "ACTIVE" => ContainerInstanceStatus::Active,
            "DRAINING" => ContainerInstanceStatus::Draining,
            other => {
                return Err(EcsError::invalid(format!(
                    "Invalid status '{other}'; a container instance can be set to ACTIVE or DRAINING."
                )));
            }
        };
        if request.container_instances.is_empty() || request.container_instances.len() > 10 {
            return Err(EcsError::invalid(
                "containerInstances must name 1 to 10 container instances.",
            ));
        }
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let keys = ctx.keys();
        let mut updated = Vec::new();
        let mut failures = Vec::new();
        for reference in &request.container_instances {
            let id = last_segment(reference);
            let key = keys.instance(&cluster.value.name, id);
            let mut done = false;
            for _ in 0..CAS_RETRIES_MAX {
                let Some(instance) = self.db.get::<ContainerInstance>(&key).await? else {
                    failures.push(Failure::missing(
                        ctx.scope.container_instance_arn(&cluster.value.name, id),
                    ));
                    done = true;
                    break;
                };
                if instance.value.status == ContainerInstanceStatus::Inactive {
                    failures.push(Failure::new(instance.value.arn.clone(), "INACTIVE"));
                    done = true;
                    break;
                }
                if instance.value.status == status {
                    updated.push(instance.value);
                    done = true;
                    break;
                }
                let mut changed = instance.value.clone();
                changed.status = status;
                changed.version += 1;
                if self.db.replace_one(&instance, &changed).await? {
                    updated.push(changed);
                    done = true;
                    break;
                }
            }
            if !done {
                return Err(contention());
            }
        }
        let updated = self.with_counts(ctx, &cluster.value.name, updated).await?;
        Ok(ContainerInstancesResponse {
            container_instances: updated
                .iter()
                .map(|i| responses::container_instance(i, false))
                .collect(),
            failures,
        })
    }

    pub(crate) async fn deregister_container_instance(
        &self,
        ctx: &RequestContext,
        request: DeregisterContainerInstanceRequest,
    ) -> Result<ContainerInstanceResponse, EcsError> {
        let reference = required(&request.container_instance, "containerInstance")?;
        let force = request.force.unwrap_or(false);
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let cluster_name = cluster.value.name.clone();
        let keys = ctx.keys();
        let id = last_segment(reference);
        for _ in 0..CAS_RETRIES_MAX {
            let Some(instance) = self
                .db
                .get::<ContainerInstance>(&keys.instance(&cluster_name, id))
                .await?
            else {
                return Err(EcsError::invalid(format!(
                    "Container instance '{reference}' was not found in cluster '{cluster_name}'."
                )));
            };
            if instance.value.status == ContainerInstanceStatus::Inactive {
                return Ok(ContainerInstanceResponse {
                    container_instance: responses::container_instance(&instance.value, false),
                });
            }
            let tasks = self.instance_tasks(ctx, &cluster_name, id).await?;
            let live: Vec<&Versioned<Task>> = tasks
                .iter()
                .filter(|t| t.value.last_status != TaskStatus::Stopped)
                .collect();
            if !live.is_empty() && !force {
                return Err(EcsError::invalid(format!(
                    "Found {} task(s) still running on container instance '{}'. Stop them first, or deregister with force.",
                    live.len(),
                    instance.value.arn
                )));
            }
            let mut txn = TxnBuilder::new();
            let mut changed = instance.value.clone();
            // Tasks left on a forcibly deregistered host are orphaned: record them as
            // stopped so their fate is visible and nothing waits on them forever.
            for task in live {
                let mut stopped = task.value.clone();
                stopped.desired_status = DesiredStatus::Stopped;
                stopped.last_status = TaskStatus::Stopped;
                stopped.stopped_at = Some(ctx.now);
                stopped.execution_stopped_at.get_or_insert(ctx.now);
                stopped.stopping_at.get_or_insert(ctx.now);
                stopped
                    .stop_code
                    .get_or_insert(flotilla_model::TaskStopCode::TerminationNotice);
                stopped
                    .stopped_reason
                    .get_or_insert_with(|| "Container instance deregistered".to_owned());
                for container in &mut stopped.containers {
                    container.last_status = TaskStatus::Stopped;
                }
                super::release_on_stop(&mut stopped, &mut changed);
                stopped.version += 1;
                txn.replace(task, &stopped);
            }
            changed.status = ContainerInstanceStatus::Inactive;
            changed.agent_connected = false;
            changed.version += 1;
            txn.replace(&instance, &changed);
            if self.db.commit(txn.build()).await?.is_some() {
                return Ok(ContainerInstanceResponse {
                    container_instance: responses::container_instance(&changed, false),
                });
            }
        }
        Err(contention())
    }
}
