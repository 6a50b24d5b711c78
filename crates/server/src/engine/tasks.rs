//! Task actions: RunTask and StartTask (placement committed with compare-and-swap against
//! the hosts it reserves on), StopTask, DescribeTasks, ListTasks; and the pure rules that
//! apply an agent's state report to a task.

use flotilla_api::requests::*;
use flotilla_api::responses::{
    self, Failure, ListItems, ListResponse, TaskResponse, TasksResponse,
};
use flotilla_model::resources::Reservation;
use flotilla_model::task::Container;
use flotilla_model::task_definition::TaskDefinitionStatus;
use flotilla_model::validate::{task_demand, validate_overrides};
use flotilla_model::{
    ContainerInstance, ContainerInstanceStatus, DesiredStatus, EcsError, HealthStatus, LaunchType,
    Tag, Task, TaskDefinition, TaskOverride, TaskStatus, TaskStopCode, Timestamp,
    arn::last_segment,
};
use flotilla_protocol::TaskStateChange;
use flotilla_scheduler::{Constraint, PlacementRequest};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::task_definitions::parse_tags_include;
use super::{Engine, RequestContext, contention, max_results, new_id, validate_tags};
use crate::cache::TaskSummary;
use crate::db::{CAS_RETRIES_MAX, TxnBuilder, Versioned};

/// ECS: RunTask starts at most 10 tasks per call.
pub const TASKS_PER_RUN_TASK_MAX: i64 = 10;
const TASKS_PER_DESCRIBE_MAX: usize = 100;
const CONSTRAINTS_PER_REQUEST_MAX: usize = 10;
const STRATEGIES_PER_REQUEST_MAX: usize = 5;

/// What a RunTask clientToken remembers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RunTaskToken {
    pub fingerprint: String,
    pub task_ids: Vec<String>,
    pub expires_at: Timestamp,
}

/// A validated placement request shared by RunTask and StartTask.
#[derive(Clone)]
pub(crate) struct Launch {
    pub(crate) task_definition: TaskDefinition,
    pub(crate) overrides: TaskOverride,
    pub(crate) group: String,
    pub(crate) started_by: Option<String>,
    pub(crate) tags: Vec<Tag>,
    pub(crate) enable_execute_command: bool,
    /// Which capacity the tasks run on (EC2 instances by default) and their network.
    pub(crate) capacity: LaunchCapacity,
}

/// Where a launch's tasks run: the launch type, the capacity provider that was chosen, and
/// the subnet of an awsvpc task's network interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LaunchCapacity {
    pub(crate) launch_type: LaunchType,
    pub(crate) capacity_provider_name: Option<String>,
    /// `Some` for awsvpc tasks: the subnet their interface is in.
    pub(crate) subnet_id: Option<String>,
}

/// ECS's answer when no Fargate capacity can take a task.
pub(crate) const FARGATE_CAPACITY_UNAVAILABLE: &str = "Capacity is unavailable at this time. Please try again later or in a different availability zone";

/// The placement constraint that keeps each launch type on its own capacity: FARGATE tasks
/// only on Fargate-capacity hosts, every other task only on the user's instances.
pub(crate) fn capacity_constraint(launch_type: LaunchType) -> Constraint {
    use flotilla_model::container_instance::{CAPACITY_ATTRIBUTE, FARGATE_CAPACITY};
    let operator = if launch_type == LaunchType::Fargate {
        "=="
    } else {
        "!="
    };
    let expression = format!("attribute:{CAPACITY_ATTRIBUTE} {operator} {FARGATE_CAPACITY}");
    parse_constraint(Some("memberOf"), Some(&expression))
        .expect("the capacity constraint is a valid expression")
}

/// One part of a RunTask: `count` tasks of one launch type and capacity provider.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LaunchPart {
    launch_type: LaunchType,
    capacity_provider_name: Option<String>,
    count: u32,
}

/// Splits a RunTask over launch types and capacity providers: the launchType given, else
/// the strategy given, else the cluster's default strategy, else EC2.
fn launch_parts(
    launch_type: Option<&str>,
    strategy: &[flotilla_model::CapacityProviderStrategyItem],
    cluster: &flotilla_model::Cluster,
    count: u32,
) -> Result<Vec<LaunchPart>, EcsError> {
    use flotilla_model::capacity;
    match launch_type {
        Some("FARGATE") => {
            return Ok(vec![LaunchPart {
                launch_type: LaunchType::Fargate,
                capacity_provider_name: None,
                count,
            }]);
        }
        Some(_) => {
            return Ok(vec![LaunchPart {
                launch_type: LaunchType::Ec2,
                capacity_provider_name: None,
                count,
            }]);
        }
        None => {}
    }
    let strategy = if strategy.is_empty() {
        &cluster.default_capacity_provider_strategy[..]
    } else {
        super::clusters::validate_strategy_items(strategy)?;
        for item in strategy {
            if !cluster.capacity_providers.contains(&item.capacity_provider) {
                return Err(EcsError::invalid(format!(
                    "The specified capacity provider strategy cannot contain a capacity provider that is not associated with the cluster: '{}'. Associate it with PutClusterCapacityProviders first.",
                    item.capacity_provider
                )));
            }
        }
        strategy
    };
    if strategy.is_empty() {
        return Ok(vec![LaunchPart {
            launch_type: LaunchType::Ec2,
            capacity_provider_name: None,
            count,
        }]);
    }
    if let Some(item) = strategy
        .iter()
        .find(|i| !capacity::is_fargate(&i.capacity_provider))
    {
        return Err(EcsError::UnsupportedFeature(format!(
            "Flotilla does not place tasks on Auto Scaling group capacity providers ('{}') yet; use FARGATE, FARGATE_SPOT or launchType EC2.",
            item.capacity_provider
        )));
    }
    let split = capacity::split_by_strategy(strategy, &vec![0; strategy.len()], count);
    if split.iter().sum::<u32>() < count {
        return Err(EcsError::invalid(
            "The capacity provider strategy places no tasks beyond its base: give at least one capacity provider a weight greater than 0.",
        ));
    }
    Ok(strategy
        .iter()
        .zip(split)
        .filter(|(_, n)| *n > 0)
        .map(|(item, n)| LaunchPart {
            launch_type: LaunchType::Fargate,
            capacity_provider_name: Some(item.capacity_provider.clone()),
            count: n,
        })
        .collect())
}

/// The members RunTask and StartTask share.
struct LaunchInput<'a> {
    overrides: Option<TaskOverride>,
    group: Option<String>,
    started_by: Option<String>,
    tags: Vec<Tag>,
    propagate_tags: Option<&'a str>,
    enable_execute_command: Option<bool>,
    /// `enableECSManagedTags`: tag the task with `aws:ecs:clusterName`.
    managed_tags_cluster: Option<&'a str>,
}

impl Engine {
    fn validate_launch_common(
        td: &Versioned<TaskDefinition>,
        input: LaunchInput<'_>,
    ) -> Result<Launch, EcsError> {
        let LaunchInput {
            overrides,
            group,
            started_by,
            tags,
            propagate_tags,
            enable_execute_command,
            managed_tags_cluster,
        } = input;
        if td.value.status != TaskDefinitionStatus::Active {
            return Err(EcsError::client(format!(
                "TaskDefinition is inactive: {} can no longer start new tasks.",
                td.value.task_definition_arn
            )));
        }
        let overrides = overrides.unwrap_or_default();
        validate_overrides(&td.value, &overrides)?;
        if let Some(group) = &group
            && (group.is_empty() || group.len() > 255)
        {
            return Err(EcsError::invalid("group must be 1 to 255 characters."));
        }
        if started_by.as_ref().is_some_and(|s| s.len() > 128) {
            return Err(EcsError::invalid(
                "startedBy must be at most 128 characters.",
            ));
        }
        validate_tags(&tags)?;
        let mut tags = tags;
        match propagate_tags {
            None | Some("NONE") => {}
            Some("TASK_DEFINITION") => flotilla_model::merge_tags(&mut tags, &td.value.tags),
            Some(other) => {
                return Err(EcsError::invalid(format!(
                    "Invalid propagateTags '{other}'; for standalone tasks use TASK_DEFINITION or NONE."
                )));
            }
        }
        if let Some(cluster) = managed_tags_cluster {
            flotilla_model::merge_tags(
                &mut tags,
                &[Tag {
                    key: "aws:ecs:clusterName".into(),
                    value: cluster.into(),
                }],
            );
        }
        Ok(Launch {
            task_definition: td.value.clone(),
            overrides,
            group: group.unwrap_or_else(|| format!("family:{}", td.value.family)),
            started_by,
            tags,
            enable_execute_command: enable_execute_command.unwrap_or(false),
            capacity: LaunchCapacity::default(),
        })
    }

    /// Fills in a launch's capacity: checks the definition runs on Fargate when asked to,
    /// and the network configuration against its network mode.
    pub(crate) fn with_capacity(
        mut launch: Launch,
        launch_type: LaunchType,
        capacity_provider_name: Option<String>,
        network_configuration: Option<&flotilla_model::NetworkConfiguration>,
    ) -> Result<Launch, EcsError> {
        let fargate = launch_type == LaunchType::Fargate;
        if fargate
            && let Some(problem) = flotilla_model::validate::fargate_launch_problem(
                &launch.task_definition,
                &launch.overrides,
            )
        {
            return Err(EcsError::invalid(problem));
        }
        let awsvpc = flotilla_model::validate::validate_network_configuration(
            launch.task_definition.spec.network_mode,
            fargate,
            network_configuration,
        )?;
        launch.capacity = LaunchCapacity {
            launch_type,
            capacity_provider_name,
            subnet_id: awsvpc.and_then(|a| a.subnets.first().cloned()),
        };
        Ok(launch)
    }

    pub(crate) async fn run_task(
        &self,
        ctx: &RequestContext,
        request: RunTaskRequest,
    ) -> Result<TasksResponse, EcsError> {
        let reference = required(&request.task_definition, "taskDefinition")?.to_owned();
        let count = request.count.unwrap_or(1);
        if !(1..=TASKS_PER_RUN_TASK_MAX).contains(&count) {
            return Err(EcsError::invalid(format!(
                "count must be between 1 and {TASKS_PER_RUN_TASK_MAX}; got {count}."
            )));
        }
        refuse_unsupported(&request.volume_configurations, "volumeConfigurations")?;
        if request.launch_type.is_some() && !request.capacity_provider_strategy.is_empty() {
            return Err(EcsError::invalid(
                "Specifying both a launchType and capacityProviderStrategy is not supported.",
            ));
        }
        match request.launch_type.as_deref() {
            None | Some("EC2" | "FARGATE") => {}
            Some("EXTERNAL" | "MANAGED_INSTANCES") => {
                return Err(EcsError::UnsupportedFeature(format!(
                    "Flotilla does not support the {} launch type yet; use EC2 or FARGATE.",
                    request.launch_type.as_deref().unwrap_or_default()
                )));
            }
            Some(other) => {
                return Err(EcsError::invalid(format!(
                    "Invalid launchType '{other}'; accepted: EC2, FARGATE, EXTERNAL, MANAGED_INSTANCES."
                )));
            }
        }
        if let Some(token) = &request.client_token
            && (token.is_empty() || token.len() > 64)
        {
            return Err(EcsError::invalid("clientToken must be 1 to 64 characters."));
        }
        if request.placement_constraints.len() > CONSTRAINTS_PER_REQUEST_MAX {
            return Err(EcsError::invalid(format!(
                "At most {CONSTRAINTS_PER_REQUEST_MAX} placement constraints are allowed."
            )));
        }
        if request.placement_strategy.len() > STRATEGIES_PER_REQUEST_MAX {
            return Err(EcsError::invalid(format!(
                "At most {STRATEGIES_PER_REQUEST_MAX} placement strategies are allowed."
            )));
        }
        let mut constraints = Vec::new();
        for constraint in &request.placement_constraints {
            constraints.push(parse_constraint(
                constraint.kind.as_deref(),
                constraint.expression.as_deref(),
            )?);
        }
        let mut strategies = Vec::new();
        for strategy in &request.placement_strategy {
            let kind = strategy.kind.as_deref().unwrap_or_default();
            strategies.push(
                flotilla_scheduler::parse_strategy(kind, strategy.field.as_deref())
                    .map_err(|e| EcsError::invalid(e.to_string()))?,
            );
        }
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let cluster_name = cluster.value.name.clone();
        let td = self.task_definition_or_error(ctx, &reference).await?;
        for constraint in &td.value.spec.placement_constraints {
            constraints.push(parse_constraint(
                constraint.kind.as_deref(),
                constraint.expression.as_deref(),
            )?);
        }
        let parts = launch_parts(
            request.launch_type.as_deref(),
            &request.capacity_provider_strategy,
            &cluster.value,
            count as u32,
        )?;
        let fargate = parts.iter().any(|p| p.launch_type == LaunchType::Fargate);
        if fargate && (!constraints.is_empty() || !strategies.is_empty()) {
            return Err(EcsError::invalid(
                "Task placement constraints and strategies are not supported for tasks using the FARGATE launch type or Fargate capacity providers.",
            ));
        }
        if !fargate && request.platform_version.is_some() {
            return Err(EcsError::invalid(
                "platformVersion applies only to tasks using the FARGATE launch type.",
            ));
        }
        let launch = Self::validate_launch_common(
            &td,
            LaunchInput {
                overrides: request.overrides.clone(),
                group: request.group.clone(),
                started_by: request.started_by.clone(),
                tags: request.tags.clone(),
                propagate_tags: request.propagate_tags.as_deref(),
                enable_execute_command: request.enable_execute_command,
                managed_tags_cluster: request
                    .enable_ecs_managed_tags
                    .unwrap_or(false)
                    .then_some(cluster_name.as_str()),
            },
        )?;
        // Validate every part before placing any.
        let mut launches = Vec::with_capacity(parts.len());
        for part in &parts {
            launches.push(Self::with_capacity(
                launch.clone(),
                part.launch_type,
                part.capacity_provider_name.clone(),
                request.network_configuration.as_ref(),
            )?);
        }
        let keys = ctx.keys();
        let wants_ec2 = parts.iter().any(|p| p.launch_type != LaunchType::Fargate);
        let wants_fargate = parts.iter().any(|p| p.launch_type == LaunchType::Fargate);
        // The cache as it is answers at once when the capacity is there; only an answer
        // of "none" waits for the cache to catch up with the store (an instance may have
        // registered a moment ago).
        let mut capacity = {
            let state = self.cache.cluster(keys.root(), &cluster_name);
            (state.active_ec2_instances, state.active_fargate_instances)
        };
        if (wants_ec2 && capacity.0 == 0) || (wants_fargate && capacity.1 == 0) {
            let state = self.snapshot(ctx, &cluster_name).await?;
            capacity = (state.active_ec2_instances, state.active_fargate_instances);
        }
        if wants_ec2 && capacity.0 == 0 {
            return Err(EcsError::invalid(
                "No Container Instances were found in your cluster.",
            ));
        }
        let fargate_available = capacity.1 > 0;
        let fingerprint = format!(
            "{reference}|{count}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            request.group,
            request.started_by,
            request.tags,
            request.overrides,
            request.placement_constraints,
            request.placement_strategy,
            request.launch_type,
            request.capacity_provider_strategy,
            request.network_configuration,
        );
        let mut answer = TasksResponse {
            tasks: Vec::new(),
            failures: Vec::new(),
        };
        for (index, (part, launch)) in parts.iter().zip(launches).enumerate() {
            let fargate = part.launch_type == LaunchType::Fargate;
            if fargate && !fargate_available {
                answer.failures.push(Failure::new(
                    cluster.value.arn.clone(),
                    FARGATE_CAPACITY_UNAVAILABLE,
                ));
                continue;
            }
            // Each part remembers the token under its own key.
            let token_key = request.client_token.as_deref().map(|t| {
                let t = if index == 0 {
                    t.to_owned()
                } else {
                    format!("{t}#{index}")
                };
                keys.run_task_token(&cluster_name, &t)
            });
            let placement_request = PlacementRequest {
                demand: task_demand(&launch.task_definition, &launch.overrides),
                count: part.count as usize,
                group: launch.group.clone(),
                constraints: constraints.clone(),
                strategies: strategies.clone(),
            };
            let placed = self
                .apply_placement(super::applier::PlacementJob {
                    ctx: ctx.clone(),
                    cluster_arn: cluster.value.arn.clone(),
                    cluster_name: cluster_name.clone(),
                    launch,
                    request: placement_request,
                    token: token_key.map(|key| super::applier::TokenSpec {
                        key,
                        fingerprint: fingerprint.clone(),
                    }),
                    service_name: None,
                    reply: tokio::sync::oneshot::channel().0,
                })
                .await?;
            let unplaced = placed.tasks.len() < part.count as usize;
            answer
                .tasks
                .extend(placed.tasks.iter().map(|t| responses::task(t, true)));
            if fargate {
                if unplaced {
                    answer.failures.push(Failure::new(
                        cluster.value.arn.clone(),
                        FARGATE_CAPACITY_UNAVAILABLE,
                    ));
                }
            } else if !placed.failures.is_empty() {
                // Fargate capacity is not the user's to see.
                let state = self.cache.cluster(keys.root(), &cluster_name);
                let hidden = |arn: &str| {
                    state
                        .instances
                        .get(last_segment(arn))
                        .is_some_and(|i| i.value.arn == arn && i.value.is_fargate_capacity())
                };
                answer.failures.extend(
                    placed
                        .failures
                        .into_iter()
                        .filter(|f| f.arn.as_deref().is_none_or(|arn| !hidden(arn))),
                );
            }
        }
        Ok(answer)
    }

    /// The transaction that creates tasks at their placements, reserving on each host only
    /// if that host is unchanged since it was read (the plan applier's re-check).
    fn build_launch(
        &self,
        ctx: &RequestContext,
        cluster_arn: &str,
        cluster_name: &str,
        launch: &Launch,
        instances: &[Versioned<ContainerInstance>],
        placements: Vec<(usize, Reservation)>,
    ) -> (TxnBuilder, Vec<Task>, Vec<(String, ContainerInstance)>) {
        let keys = ctx.keys();
        let mut txn = TxnBuilder::new();
        let mut touched: std::collections::BTreeMap<usize, ContainerInstance> =
            std::collections::BTreeMap::new();
        let mut created = Vec::new();
        for (host_index, reservation) in placements {
            let instance = touched
                .entry(host_index)
                .or_insert_with(|| instances[host_index].value.clone());
            instance.remaining.apply(&reservation);
            let task = new_task(
                ctx,
                cluster_arn,
                cluster_name,
                launch,
                instance,
                reservation,
            );
            txn.expect(&keys.task(cluster_name, &task.id), 0)
                .put(&keys.task(cluster_name, &task.id), &task);
            created.push(task);
        }
        let mut updated = Vec::with_capacity(touched.len());
        for (host_index, mut instance) in touched {
            instance.version += 1;
            txn.replace(&instances[host_index], &instance);
            updated.push((instances[host_index].key.clone(), instance));
        }
        (txn, created, updated)
    }

    pub(crate) async fn start_task(
        &self,
        ctx: &RequestContext,
        request: StartTaskRequest,
    ) -> Result<TasksResponse, EcsError> {
        let reference = required(&request.task_definition, "taskDefinition")?.to_owned();
        refuse_unsupported(&request.volume_configurations, "volumeConfigurations")?;
        if request.container_instances.is_empty() || request.container_instances.len() > 10 {
            return Err(EcsError::invalid(
                "containerInstances must name 1 to 10 container instances.",
            ));
        }
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let cluster_name = cluster.value.name.clone();
        let td = self.task_definition_or_error(ctx, &reference).await?;
        let launch = Self::validate_launch_common(
            &td,
            LaunchInput {
                overrides: request.overrides.clone(),
                group: request.group.clone(),
                started_by: request.started_by.clone(),
                tags: request.tags.clone(),
                propagate_tags: request.propagate_tags.as_deref(),
                enable_execute_command: request.enable_execute_command,
                managed_tags_cluster: request
                    .enable_ecs_managed_tags
                    .unwrap_or(false)
                    .then_some(cluster_name.as_str()),
            },
        )?;
        let launch = Self::with_capacity(
            launch,
            LaunchType::Ec2,
            None,
            request.network_configuration.as_ref(),
        )?;
        let keys = ctx.keys();
        let demand = task_demand(&launch.task_definition, &launch.overrides);
        // One placement per cluster at a time in this process (see `Engine::placement_lock`).
        let placing = self.placement_lock(&keys.cluster(&cluster_name));
        let _placing = placing.lock().await;
        for _ in 0..CAS_RETRIES_MAX {
            let mut instances = Vec::new();
            let mut failures = Vec::new();
            let mut placements = Vec::new();
            let mut wanted: Vec<(usize, String)> = Vec::new();
            for reference in &request.container_instances {
                let id = last_segment(reference);
                // The same instance may be named twice: read it once, place on it twice.
                if let Some(index) = instances
                    .iter()
                    .position(|i: &Versioned<ContainerInstance>| i.value.id == id)
                {
                    wanted.push((index, instances[index].value.arn.clone()));
                    continue;
                }
                match self
                    .db
                    .get::<ContainerInstance>(&keys.instance(&cluster_name, id))
                    .await?
                {
                    Some(instance)
                        if instance.value.status != ContainerInstanceStatus::Inactive
                            && !instance.value.is_fargate_capacity() =>
                    {
                        wanted.push((instances.len(), instance.value.arn.clone()));
                        instances.push(instance);
                    }
                    _ => failures.push(Failure::missing(
                        ctx.scope.container_instance_arn(&cluster_name, id),
                    )),
                }
            }
            // StartTask names its hosts: only what is left on each matters (no strategies,
            // no groups), read from the records themselves.
            let mut remaining: Vec<(bool, flotilla_model::Resources)> = instances
                .iter()
                .map(|i| {
                    (
                        i.value.status == ContainerInstanceStatus::Active,
                        i.value.remaining.clone(),
                    )
                })
                .collect();
            for (index, arn) in &wanted {
                let (active, left) = &mut remaining[*index];
                if !*active {
                    failures.push(Failure::new(arn.clone(), "INACTIVE"));
                    continue;
                }
                match left.reserve(&demand) {
                    Ok(reservation) => placements.push((*index, reservation)),
                    Err(shortfall) => failures.push(Failure::new(arn.clone(), shortfall.reason())),
                }
            }
            if placements.is_empty() {
                return Ok(TasksResponse {
                    tasks: Vec::new(),
                    failures,
                });
            }
            let (txn, created, updated) = self.build_launch(
                ctx,
                &cluster.value.arn,
                &cluster_name,
                &launch,
                &instances,
                placements,
            );
            if let Some(revision) = self.db.commit(txn.build()).await? {
                self.cache.committed(
                    updated.into_iter().map(|(key, value)| {
                        Arc::new(Versioned {
                            key,
                            value,
                            mod_revision: revision,
                        })
                    }),
                    created.iter().map(|t| TaskSummary::of(t, revision)),
                    keys.root(),
                    &cluster_name,
                    revision,
                );
                return Ok(TasksResponse {
                    tasks: created.iter().map(|t| responses::task(t, true)).collect(),
                    failures,
                });
            }
        }
        Err(contention())
    }

    pub(crate) async fn stop_task(
        &self,
        ctx: &RequestContext,
        request: StopTaskRequest,
    ) -> Result<TaskResponse, EcsError> {
        let reference = required(&request.task, "task")?;
        if request.reason.as_ref().is_some_and(|r| r.len() > 255) {
            return Err(EcsError::invalid("reason must be at most 255 characters."));
        }
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let keys = ctx.keys();
        let key = keys.task(&cluster.value.name, last_segment(reference));
        for _ in 0..CAS_RETRIES_MAX {
            let Some(task) = self.db.get::<Task>(&key).await? else {
                return Err(EcsError::invalid("The referenced task was not found."));
            };
            if task.value.desired_status == DesiredStatus::Stopped {
                return Ok(TaskResponse {
                    task: responses::task(&task.value, true),
                });
            }
            let mut stopped = task.value.clone();
            request_stop(
                &mut stopped,
                TaskStopCode::UserInitiated,
                request.reason.clone(),
                ctx.now,
            );
            if self.db.replace_one(&task, &stopped).await? {
                return Ok(TaskResponse {
                    task: responses::task(&stopped, true),
                });
            }
        }
        Err(contention())
    }

    pub(crate) async fn describe_tasks(
        &self,
        ctx: &RequestContext,
        request: DescribeTasksRequest,
    ) -> Result<TasksResponse, EcsError> {
        if request.tasks.is_empty() || request.tasks.len() > TASKS_PER_DESCRIBE_MAX {
            return Err(EcsError::invalid(format!(
                "tasks must name 1 to {TASKS_PER_DESCRIBE_MAX} tasks."
            )));
        }
        let include_tags = parse_tags_include(&request.include)?;
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let keys = ctx.keys();
        let mut tasks = Vec::new();
        let mut failures = Vec::new();
        for reference in &request.tasks {
            let id = last_segment(reference);
            match self
                .db
                .get::<Task>(&keys.task(&cluster.value.name, id))
                .await?
            {
                Some(task) => tasks.push(responses::task(&task.value, include_tags)),
                None => failures.push(Failure::missing(
                    ctx.scope.task_arn(&cluster.value.name, id),
                )),
            }
        }
        Ok(TasksResponse { tasks, failures })
    }

    pub(crate) async fn list_tasks(
        &self,
        ctx: &RequestContext,
        request: ListTasksRequest,
    ) -> Result<ListResponse<String>, EcsError> {
        let limit = max_results(request.max_results, super::LIST_RESULTS_MAX)?;
        let desired = match request.desired_status.as_deref() {
            None => DesiredStatus::Running,
            Some(s) => DesiredStatus::parse(s).ok_or_else(|| {
                EcsError::invalid(format!(
                    "Invalid desiredStatus '{s}'; accepted: RUNNING, PENDING, STOPPED."
                ))
            })?,
        };
        let launch_type = match request.launch_type.as_deref() {
            None => None,
            Some(s) => Some(LaunchType::parse(s).ok_or_else(|| {
                EcsError::invalid(format!(
                    "Invalid launchType '{s}'; accepted: EC2, FARGATE, EXTERNAL, MANAGED_INSTANCES."
                ))
            })?),
        };
        if request.daemon_name.is_some() {
            return Err(EcsError::UnsupportedFeature(
                "Flotilla does not support daemons (daemonName) yet.".into(),
            ));
        }
        if request.service_name.is_some() && request.family.is_some() {
            return Err(EcsError::invalid(
                "serviceName and family cannot be used together.",
            ));
        }
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let cluster_name = cluster.value.name.clone();
        let snapshot = self.snapshot(ctx, &cluster_name).await?;
        let instance_id = request.container_instance.as_deref().map(last_segment);
        // Tasks are kept in id order, so a page starts right after the last id returned.
        let token_prefix = format!("tasks:{cluster_name}:");
        let after = super::decode_token(request.next_token.as_deref(), &token_prefix)?
            .map(|key| key[token_prefix.len()..].to_owned());
        let range = match &after {
            Some(id) => snapshot.tasks.range::<_, String>((
                std::ops::Bound::Excluded(id.clone()),
                std::ops::Bound::Unbounded,
            )),
            None => snapshot.tasks.range::<_, String>(..),
        };
        let tasks = range
            .map(|(_, t)| t)
            .filter(|t| instance_id.is_none_or(|id| t.instance_id.as_deref() == Some(id)));
        let service_group = request
            .service_name
            .as_deref()
            .map(|s| format!("service:{}", last_segment(s)));
        let arns: Vec<(String, String)> = tasks
            .filter(|t| match desired {
                // ECS lists PENDING-desired tasks under RUNNING too.
                DesiredStatus::Running => t.desired_status != DesiredStatus::Stopped,
                other => t.desired_status == other,
            })
            .filter(|t| request.family.as_ref().is_none_or(|f| &t.family == f))
            .filter(|t| {
                request
                    .started_by
                    .as_ref()
                    .is_none_or(|s| t.started_by.as_ref() == Some(s))
            })
            .filter(|t| {
                service_group
                    .as_ref()
                    .is_none_or(|g| t.group.as_ref() == Some(g))
            })
            .filter(|t| launch_type.is_none_or(|l| t.launch_type == l))
            .take(limit + 1)
            .map(|t| (t.id.clone(), t.arn.clone()))
            .collect();
        let next_token = (arns.len() > limit)
            .then(|| super::encode_token(&format!("{token_prefix}{}", arns[limit - 1].0)));
        let arns: Vec<String> = arns.into_iter().take(limit).map(|(_, arn)| arn).collect();
        Ok(ListResponse {
            items: ListItems::TaskArns(arns),
            next_token,
        })
    }
}

fn parse_constraint(kind: Option<&str>, expression: Option<&str>) -> Result<Constraint, EcsError> {
    flotilla_scheduler::parse_constraint(kind.unwrap_or_default(), expression)
        .map_err(|e| EcsError::invalid(e.to_string()))
}

pub(crate) fn new_task(
    ctx: &RequestContext,
    cluster_arn: &str,
    cluster_name: &str,
    launch: &Launch,
    instance: &ContainerInstance,
    reservation: Reservation,
) -> Task {
    let id = super::new_time_ordered_id();
    let td = &launch.task_definition;
    let mut gpu_ids = reservation.gpu_ids.iter().cloned();
    let containers = td
        .spec
        .container_definitions
        .iter()
        .map(|definition| {
            let name = definition.name().to_owned();
            let override_ = launch.overrides.container(&name);
            let container_id = new_id();
            Container {
                arn: ctx.scope.container_arn(cluster_name, &id, &container_id),
                id: container_id,
                image: definition.image.clone().unwrap_or_default(),
                image_digest: None,
                runtime_id: None,
                last_status: TaskStatus::Pending,
                exit_code: None,
                reason: None,
                network_bindings: Vec::new(),
                health_status: definition
                    .health_check
                    .as_ref()
                    .map(|_| HealthStatus::Unknown),
                cpu: override_.and_then(|o| o.cpu).unwrap_or(definition.cpu),
                memory: override_.and_then(|o| o.memory).or(definition.memory),
                memory_reservation: override_
                    .and_then(|o| o.memory_reservation)
                    .or(definition.memory_reservation),
                gpu_ids: gpu_ids
                    .by_ref()
                    .take(definition.gpu_count() as usize)
                    .collect(),
                essential: definition.is_essential(),
                name,
            }
        })
        .collect();
    let zone = instance
        .attribute("ecs.availability-zone")
        .and_then(|a| a.value.clone());
    Task {
        arn: ctx.scope.task_arn(cluster_name, &id),
        id,
        cluster_name: cluster_name.to_owned(),
        cluster_arn: cluster_arn.to_owned(),
        task_definition_arn: td.task_definition_arn.clone(),
        family: td.family.clone(),
        revision: td.revision,
        container_instance_id: Some(instance.id.clone()),
        container_instance_arn: Some(instance.arn.clone()),
        launch_type: launch.capacity.launch_type,
        capacity_provider_name: launch.capacity.capacity_provider_name.clone(),
        availability_zone: zone,
        last_status: TaskStatus::Provisioning,
        desired_status: DesiredStatus::Running,
        containers,
        // Shown as plain CPU units and MiB, like the definition's normalised values
        // ("1 vCPU" in an override reads "1024").
        cpu: launch
            .overrides
            .cpu
            .as_deref()
            .and_then(|v| flotilla_model::validate::parse_cpu_units("cpu", v).ok())
            .map(|units| units.to_string())
            .or_else(|| td.spec.cpu.clone()),
        memory: launch
            .overrides
            .memory
            .as_deref()
            .and_then(|v| flotilla_model::validate::parse_memory_mib("memory", v).ok())
            .map(|mib| mib.to_string())
            .or_else(|| td.spec.memory.clone()),
        overrides: launch.overrides.clone(),
        group: Some(launch.group.clone()),
        started_by: launch.started_by.clone(),
        tags: launch.tags.clone(),
        attributes: Vec::new(),
        enable_execute_command: launch.enable_execute_command,
        health_status: HealthStatus::Unknown,
        connectivity: None,
        connectivity_at: None,
        created_at: ctx.now,
        pull_started_at: None,
        pull_stopped_at: None,
        started_at: None,
        stopping_at: None,
        execution_stopped_at: None,
        stopped_at: None,
        stop_code: None,
        stopped_reason: None,
        version: 1,
        reservation,
        released: false,
        extra: Default::default(),
        attachments: launch
            .capacity
            .subnet_id
            .as_deref()
            .map(|subnet| vec![flotilla_model::Attachment::eni(attachment_id(), subnet)])
            .unwrap_or_default(),
    }
}

/// An attachment id, as ECS gives them (a UUID with dashes).
fn attachment_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Marks a task as wanted STOPPED (the agent does the stopping). Idempotent.
pub fn request_stop(task: &mut Task, code: TaskStopCode, reason: Option<String>, now: Timestamp) {
    if task.desired_status == DesiredStatus::Stopped {
        return;
    }
    task.desired_status = DesiredStatus::Stopped;
    task.stop_code = Some(code);
    task.stopped_reason = reason.or_else(|| match code {
        TaskStopCode::UserInitiated => Some("Task stopped by user".to_owned()),
        _ => None,
    });
    if task.last_status < TaskStatus::Stopped {
        task.stopping_at.get_or_insert(now);
    }
    task.version += 1;
}

/// Gives a STOPPED task's reservation back to its instance, exactly once.
pub fn release_on_stop(task: &mut Task, instance: &mut ContainerInstance) {
    if task.last_status == TaskStatus::Stopped && !task.released {
        let registered = instance.registered.clone();
        instance.remaining.release(&task.reservation, &registered);
        instance.version += 1;
        task.released = true;
    }
}

/// Applies an agent's report to a task. `lastStatus` only moves forward; timestamps are
/// set once; a task that stops on its own also gets desiredStatus STOPPED, as in ECS.
/// Returns whether anything changed.
pub fn apply_task_state_change(task: &mut Task, change: &TaskStateChange) -> bool {
    let before = task.clone();
    for reported in &change.containers {
        if let Some(container) = task.container_mut(&reported.name) {
            if reported.status >= container.last_status {
                container.last_status = reported.status;
            }
            if reported.runtime_id.is_some() {
                container.runtime_id = reported.runtime_id.clone();
            }
            if reported.image_digest.is_some() {
                container.image_digest = reported.image_digest.clone();
            }
            if reported.exit_code.is_some() {
                container.exit_code = reported.exit_code;
            }
            if reported.reason.is_some() {
                container.reason = reported.reason.clone();
            }
            if !reported.network_bindings.is_empty() {
                container.network_bindings = reported.network_bindings.clone();
            }
            if reported.health_status.is_some() {
                container.health_status = reported.health_status;
            }
        }
    }
    if let Some(health) = change.health_status {
        task.health_status = health;
    }
    task.pull_started_at = task.pull_started_at.or(change.pull_started_at);
    task.pull_stopped_at = task.pull_stopped_at.or(change.pull_stopped_at);
    if change.status > task.last_status {
        task.last_status = change.status;
        if change.status >= TaskStatus::Running && task.connectivity.is_none() {
            task.connectivity = Some("CONNECTED".to_owned());
            task.connectivity_at = Some(change.at);
        }
        if change.status == TaskStatus::Running {
            task.started_at
                .get_or_insert(change.started_at.unwrap_or(change.at));
        }
        if change.status >= TaskStatus::Stopping {
            task.stopping_at.get_or_insert(change.at);
        }
        if change.status == TaskStatus::Stopped {
            task.stopped_at = Some(change.at);
            task.execution_stopped_at
                .get_or_insert(change.execution_stopped_at.unwrap_or(change.at));
            task.desired_status = DesiredStatus::Stopped;
            if task.stop_code.is_none() {
                task.stop_code = change.stop_code;
            }
            if task.stopped_reason.is_none() {
                task.stopped_reason = change.reason.clone();
            }
            for container in &mut task.containers {
                container.last_status = TaskStatus::Stopped;
            }
        }
    }
    if task.started_at.is_none() {
        task.started_at = change.started_at;
    }
    if let Some(network) = &change.network {
        for attachment in &mut task.attachments {
            if attachment.kind == flotilla_model::task::ENI_ATTACHMENT
                && attachment.status == "PRECREATED"
            {
                attachment.attach(network);
            }
        }
    }
    if task.last_status == TaskStatus::Stopped {
        // The interface goes with the task.
        for attachment in &mut task.attachments {
            attachment.status = "DELETED".to_owned();
        }
    }
    let changed = *task != before;
    if changed {
        task.version = before.version + 1;
    }
    changed
}
