//! Service actions: CreateService, UpdateService, DeleteService, DescribeServices and
//! ListServices. They validate, then write the service record (with its first or next
//! deployment) in one compare-and-swap; the service controller (`crate::services`) does
//! everything that follows from the record: starting, replacing and stopping tasks.

use flotilla_api::requests::*;
use flotilla_api::responses::{
    CircuitBreakerView, DeploymentConfigurationView, DeploymentControllerView, DeploymentView,
    DescribeServicesResponse, Failure, ListItems, ListResponse, ServiceEventView, ServiceResponse,
    ServiceView,
};
use flotilla_model::task_definition::TaskDefinitionStatus;
use flotilla_model::{EcsError, LaunchType, TaskDefinition, arn::last_segment};
use flotilla_reconcile::{
    CircuitBreaker, DeploymentConfiguration, PlacementConstraint, PlacementStrategy,
    SchedulingStrategy, Service, ServiceStatus, new_deployment_id,
};

use super::task_definitions::parse_tags_include;
use super::{Engine, RequestContext, contention, max_results, paginate, validate_tags};
use crate::db::{CAS_RETRIES_MAX, TxnBuilder, Versioned};

/// ECS: DescribeServices takes at most 10 services.
const SERVICES_PER_DESCRIBE_MAX: usize = 10;
/// ECS: ListServices returns 10 by default, at most 100.
const LIST_SERVICES_DEFAULT: usize = 10;
const CONSTRAINTS_PER_SERVICE_MAX: usize = 10;
const STRATEGIES_PER_SERVICE_MAX: usize = 5;
/// ECS's quota of tasks per service.
const TASKS_PER_SERVICE_MAX: i64 = 5000;

impl Engine {
    pub(crate) async fn create_service(
        &self,
        ctx: &RequestContext,
        request: CreateServiceRequest,
    ) -> Result<ServiceResponse, EcsError> {
        let name = required(&request.service_name, "serviceName")?.to_owned();
        validate_service_name(&name)?;
        refuse_service_features(
            &request.load_balancers,
            &request.service_registries,
            &request.service_connect_configuration,
            &request.volume_configurations,
            &request.vpc_lattice_configurations,
        )?;
        let launch_type = validate_launch_type(
            request.launch_type.as_deref(),
            &request.capacity_provider_strategy,
            request.platform_version.as_deref(),
        )?;
        validate_controller(request.deployment_controller.as_ref())?;
        let scheduling_strategy = match request.scheduling_strategy.as_deref() {
            None | Some("REPLICA") => SchedulingStrategy::Replica,
            Some("DAEMON") => SchedulingStrategy::Daemon,
            Some(other) => {
                return Err(EcsError::invalid(format!(
                    "Invalid schedulingStrategy '{other}'; accepted: REPLICA, DAEMON."
                )));
            }
        };
        let reference = required(&request.task_definition, "taskDefinition")?.to_owned();
        let desired_count = match scheduling_strategy {
            SchedulingStrategy::Replica => {
                let Some(count) = request.desired_count else {
                    return Err(EcsError::invalid(
                        "desiredCount is required for services using the REPLICA scheduling strategy.",
                    ));
                };
                validate_desired_count(count)?
            }
            SchedulingStrategy::Daemon => 0,
        };
        let deployment_configuration = deployment_configuration(
            DeploymentConfiguration::default_for(scheduling_strategy),
            request.deployment_configuration.as_ref(),
            scheduling_strategy,
        )?;
        if launch_type == LaunchType::Fargate {
            if let Some(problem) = flotilla_model::validate::fargate_service_problem(
                request.scheduling_strategy.as_deref().unwrap_or("REPLICA"),
            ) {
                return Err(EcsError::invalid(problem));
            }
            if !request.placement_constraints.is_empty() || !request.placement_strategy.is_empty() {
                return Err(EcsError::invalid(
                    "Placement constraints and strategies are not supported with the FARGATE launch type.",
                ));
            }
        }
        let placement_constraints = placement_constraints(&request.placement_constraints)?;
        let placement_strategy =
            placement_strategies(&request.placement_strategy, scheduling_strategy)?;
        let grace = health_check_grace_period(request.health_check_grace_period_seconds)?;
        let propagate_tags = validate_propagate_tags(request.propagate_tags.as_deref())?;
        validate_tags(&request.tags)?;
        if let Some(token) = &request.client_token
            && (token.is_empty() || token.len() > 36)
        {
            return Err(EcsError::invalid("clientToken must be 1 to 36 characters."));
        }
        if let Some(zone_rebalancing) = request.availability_zone_rebalancing.as_deref()
            && !matches!(zone_rebalancing, "ENABLED" | "DISABLED")
        {
            return Err(EcsError::invalid(format!(
                "Invalid availabilityZoneRebalancing '{zone_rebalancing}'; accepted: ENABLED, DISABLED."
            )));
        }

        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let cluster_name = cluster.value.name.clone();
        let td = self.task_definition_or_error(ctx, &reference).await?;
        check_task_definition_runnable(&td.value)?;
        validate_service_network(
            &td.value,
            launch_type,
            request.network_configuration.as_ref(),
        )?;

        let mut service = Service::new(
            &name,
            &ctx.scope.service_arn(&cluster_name, &name),
            &cluster.value.arn,
            scheduling_strategy,
            &td.value.task_definition_arn,
            desired_count,
            ctx.now,
        );
        service.deployment_configuration = deployment_configuration;
        service.placement_constraints = placement_constraints;
        service.launch_type = launch_type;
        service.network_configuration = request.network_configuration.clone();
        // Fargate places by itself; ECS shows no strategy for such services.
        service.placement_strategy = if launch_type == LaunchType::Fargate {
            Vec::new()
        } else {
            placement_strategy
        };
        service.health_check_grace_period_seconds = grace.unwrap_or(0);
        service.tags = request.tags.clone();
        service.propagate_tags = propagate_tags;
        service.enable_ecs_managed_tags = request.enable_ecs_managed_tags.unwrap_or(false);
        service.enable_execute_command = request.enable_execute_command.unwrap_or(false);
        service.client_token = request.client_token.clone();
        service.created_by = Some(ctx.principal_arn.clone());
        service.start_deployment(new_deployment_id(rand::random()), ctx.now);

        let key = ctx.keys().service(&cluster_name, &name);
        for _ in 0..CAS_RETRIES_MAX {
            let existing = self.db.get::<Service>(&key).await?;
            if let Some(existing) = &existing
                && existing.value.status != ServiceStatus::Inactive
            {
                // A retried create (same clientToken) answers with the service it made.
                let same_token = request.client_token.is_some()
                    && existing.value.client_token == request.client_token;
                if same_token {
                    return Ok(ServiceResponse {
                        service: service_view(&existing.value, true),
                    });
                }
                return Err(EcsError::invalid("Creation of service was not idempotent."));
            }
            let mut txn = TxnBuilder::new();
            txn.expect(&key, existing.as_ref().map_or(0, |e| e.mod_revision))
                .put(&key, &service);
            if self.db.commit(txn.build()).await?.is_some() {
                return Ok(ServiceResponse {
                    service: service_view(&service, true),
                });
            }
        }
        Err(contention())
    }

    pub(crate) async fn update_service(
        &self,
        ctx: &RequestContext,
        request: UpdateServiceRequest,
    ) -> Result<ServiceResponse, EcsError> {
        let reference = required(&request.service, "service")?.to_owned();
        refuse_service_features(
            &request.load_balancers,
            &request.service_registries,
            &request.service_connect_configuration,
            &request.volume_configurations,
            &request.vpc_lattice_configurations,
        )?;
        validate_launch_type(
            None,
            &request.capacity_provider_strategy,
            request.platform_version.as_deref(),
        )?;
        validate_controller(request.deployment_controller.as_ref())?;
        let desired_count = request
            .desired_count
            .map(validate_desired_count)
            .transpose()?;
        let constraints = request
            .placement_constraints
            .as_deref()
            .map(placement_constraints)
            .transpose()?;
        let grace = health_check_grace_period(request.health_check_grace_period_seconds)?;
        let propagate_tags = request
            .propagate_tags
            .as_deref()
            .map(|p| validate_propagate_tags(Some(p)))
            .transpose()?;

        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let cluster_name = cluster.value.name.clone();
        let task_definition = match request.task_definition.as_deref() {
            None | Some("") => None,
            Some(reference) => {
                let td = self.task_definition_or_error(ctx, reference).await?;
                check_task_definition_runnable(&td.value)?;
                Some(td.value)
            }
        };
        let key = ctx.keys().service(&cluster_name, last_segment(&reference));
        for _ in 0..CAS_RETRIES_MAX {
            let Some(read) = self.db.get::<Service>(&key).await? else {
                return Err(EcsError::ServiceNotFound);
            };
            if read.value.status != ServiceStatus::Active {
                return Err(EcsError::ServiceNotActive);
            }
            let mut service = read.value.clone();
            let strategy = service.scheduling_strategy;
            let mut new_deployment = request.force_new_deployment.unwrap_or(false);
            if let Some(count) = desired_count {
                if strategy == SchedulingStrategy::Daemon {
                    return Err(EcsError::invalid(
                        "The desiredCount parameter is not valid for services using the DAEMON scheduling strategy.",
                    ));
                }
                service.desired_count = count;
                if let Some(primary) = service.primary_mut() {
                    primary.desired_count = count;
                }
            }
            if let Some(network) = &request.network_configuration
                && service.network_configuration.as_ref() != Some(network)
            {
                service.network_configuration = Some(network.clone());
                new_deployment = true;
            }
            if let Some(td) = &task_definition
                && td.task_definition_arn != service.task_definition_arn
            {
                service.task_definition_arn = td.task_definition_arn.clone();
                new_deployment = true;
            }
            if task_definition.is_some() || request.network_configuration.is_some() {
                let td = match &task_definition {
                    Some(td) => td.clone(),
                    None => {
                        self.task_definition_or_error(ctx, &service.task_definition_arn)
                            .await?
                            .value
                    }
                };
                validate_service_network(
                    &td,
                    service.launch_type,
                    service.network_configuration.as_ref(),
                )?;
            }
            if let Some(config) = &request.deployment_configuration {
                service.deployment_configuration = deployment_configuration(
                    service.deployment_configuration,
                    Some(config),
                    strategy,
                )?;
            }
            let placing = constraints.as_ref().is_some_and(|c| !c.is_empty())
                || request
                    .placement_strategy
                    .as_ref()
                    .is_some_and(|s| !s.is_empty());
            if service.launch_type == LaunchType::Fargate && placing {
                return Err(EcsError::invalid(
                    "Placement constraints and strategies are not supported with the FARGATE launch type.",
                ));
            }
            if let Some(constraints) = &constraints
                && *constraints != service.placement_constraints
            {
                service.placement_constraints = constraints.clone();
                new_deployment = true;
            }
            if let Some(strategies) = &request.placement_strategy {
                let strategies = placement_strategies(strategies, strategy)?;
                if strategies != service.placement_strategy {
                    service.placement_strategy = strategies;
                    new_deployment = true;
                }
            }
            if let Some(grace) = grace {
                service.health_check_grace_period_seconds = grace;
            }
            if let Some(propagate) = &propagate_tags {
                service.propagate_tags = propagate.clone();
            }
            if let Some(managed) = request.enable_ecs_managed_tags {
                service.enable_ecs_managed_tags = managed;
            }
            if let Some(execute) = request.enable_execute_command {
                service.enable_execute_command = execute;
            }
            if new_deployment {
                service.start_deployment(new_deployment_id(rand::random()), ctx.now);
            }
            if self.db.replace_one(&read, &service).await? {
                return Ok(ServiceResponse {
                    service: service_view(&service, false),
                });
            }
        }
        Err(contention())
    }

    pub(crate) async fn delete_service(
        &self,
        ctx: &RequestContext,
        request: DeleteServiceRequest,
    ) -> Result<ServiceResponse, EcsError> {
        let reference = required(&request.service, "service")?.to_owned();
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let key = ctx
            .keys()
            .service(&cluster.value.name, last_segment(&reference));
        for _ in 0..CAS_RETRIES_MAX {
            let Some(read) = self.db.get::<Service>(&key).await? else {
                return Err(EcsError::ServiceNotFound);
            };
            match read.value.status {
                ServiceStatus::Active => {}
                // Deleting again while it drains answers with the draining service.
                ServiceStatus::Draining => {
                    return Ok(ServiceResponse {
                        service: service_view(&read.value, false),
                    });
                }
                ServiceStatus::Inactive => return Err(EcsError::ServiceNotActive),
            }
            if read.value.scheduling_strategy == SchedulingStrategy::Replica
                && read.value.desired_count > 0
                && !request.force.unwrap_or(false)
            {
                return Err(EcsError::invalid(
                    "The service cannot be stopped while it is scaled above 0.",
                ));
            }
            let mut service = read.value.clone();
            service.status = ServiceStatus::Draining;
            service.desired_count = 0;
            if self.db.replace_one(&read, &service).await? {
                return Ok(ServiceResponse {
                    service: service_view(&service, false),
                });
            }
        }
        Err(contention())
    }

    pub(crate) async fn describe_services(
        &self,
        ctx: &RequestContext,
        request: DescribeServicesRequest,
    ) -> Result<DescribeServicesResponse, EcsError> {
        if request.services.is_empty() || request.services.len() > SERVICES_PER_DESCRIBE_MAX {
            return Err(EcsError::invalid(format!(
                "services must name 1 to {SERVICES_PER_DESCRIBE_MAX} services."
            )));
        }
        let include_tags = parse_tags_include(&request.include)?;
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let keys = ctx.keys();
        let mut services = Vec::new();
        let mut failures = Vec::new();
        for reference in &request.services {
            let name = last_segment(reference);
            match self
                .db
                .get::<Service>(&keys.service(&cluster.value.name, name))
                .await?
            {
                Some(service) => services.push(service_view(&service.value, include_tags)),
                None => failures.push(Failure::missing(
                    ctx.scope.service_arn(&cluster.value.name, name),
                )),
            }
        }
        Ok(DescribeServicesResponse { services, failures })
    }

    pub(crate) async fn list_services(
        &self,
        ctx: &RequestContext,
        request: ListServicesRequest,
    ) -> Result<ListResponse<String>, EcsError> {
        let limit = match request.max_results {
            None => LIST_SERVICES_DEFAULT,
            value => max_results(value, super::LIST_RESULTS_MAX)?,
        };
        let launch_type = match request.launch_type.as_deref() {
            None => None,
            Some(s) => Some(LaunchType::parse(s).ok_or_else(|| {
                EcsError::invalid(format!(
                    "Invalid launchType '{s}'; accepted: EC2, FARGATE, EXTERNAL, MANAGED_INSTANCES."
                ))
            })?),
        };
        let scheduling = match request.scheduling_strategy.as_deref() {
            None => None,
            Some("REPLICA") => Some(SchedulingStrategy::Replica),
            Some("DAEMON") => Some(SchedulingStrategy::Daemon),
            Some(other) => {
                return Err(EcsError::invalid(format!(
                    "Invalid schedulingStrategy '{other}'; accepted: REPLICA, DAEMON."
                )));
            }
        };
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let cluster_name = cluster.value.name.clone();
        let services = self
            .db
            .list::<Service>(&ctx.keys().services(&cluster_name))
            .await?;
        let arns: Vec<String> = services
            .into_iter()
            .map(|s| s.value)
            .filter(|s| s.status != ServiceStatus::Inactive)
            .filter(|s| launch_type.is_none_or(|l| s.launch_type == l))
            .filter(|s| scheduling.is_none_or(|st| s.scheduling_strategy == st))
            .map(|s| s.arn)
            .collect();
        let (arns, next_token) = paginate(
            arns,
            request.next_token.as_deref(),
            limit,
            &format!("services:{cluster_name}:"),
        )?;
        Ok(ListResponse {
            items: ListItems::ServiceArns(arns),
            next_token,
        })
    }

    /// A service record read for the controller and tests.
    pub async fn service(
        &self,
        ctx: &RequestContext,
        cluster: &str,
        name: &str,
    ) -> Result<Option<Versioned<Service>>, EcsError> {
        self.db.get(&ctx.keys().service(cluster, name)).await
    }
}

/// ECS: up to 255 letters (upper and lowercase), numbers, underscores, and hyphens.
fn validate_service_name(name: &str) -> Result<(), EcsError> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(EcsError::invalid(
            "serviceName must be 1 to 255 letters, numbers, hyphens and underscores.",
        ))
    }
}

fn refuse_service_features(
    load_balancers: &flotilla_model::task_definition::Unsupported,
    service_registries: &flotilla_model::task_definition::Unsupported,
    service_connect: &flotilla_model::task_definition::Unsupported,
    volumes: &flotilla_model::task_definition::Unsupported,
    lattice: &flotilla_model::task_definition::Unsupported,
) -> Result<(), EcsError> {
    refuse_unsupported(load_balancers, "loadBalancers")?;
    refuse_unsupported(service_registries, "serviceRegistries")?;
    refuse_unsupported(service_connect, "serviceConnectConfiguration")?;
    refuse_unsupported(volumes, "volumeConfigurations")?;
    refuse_unsupported(lattice, "vpcLatticeConfigurations")
}

fn validate_launch_type(
    launch_type: Option<&str>,
    capacity_provider_strategy: &[flotilla_model::cluster::CapacityProviderStrategyItem],
    platform_version: Option<&str>,
) -> Result<LaunchType, EcsError> {
    if launch_type.is_some() && !capacity_provider_strategy.is_empty() {
        return Err(EcsError::invalid(
            "Specifying both a launchType and capacityProviderStrategy is not supported.",
        ));
    }
    let parsed = match launch_type {
        None | Some("EC2") => LaunchType::Ec2,
        Some("FARGATE") => LaunchType::Fargate,
        Some(other @ ("EXTERNAL" | "MANAGED_INSTANCES")) => {
            return Err(EcsError::UnsupportedFeature(format!(
                "Flotilla does not support services of the {other} launch type yet; use EC2 or FARGATE."
            )));
        }
        Some(other) => {
            return Err(EcsError::invalid(format!(
                "Invalid launchType '{other}'; accepted: EC2, FARGATE, EXTERNAL, MANAGED_INSTANCES."
            )));
        }
    };
    if !capacity_provider_strategy.is_empty() {
        return Err(EcsError::UnsupportedFeature(
            "Flotilla does not support capacityProviderStrategy on services yet; use launchType EC2 or FARGATE."
                .to_owned(),
        ));
    }
    if platform_version.is_some() && parsed != LaunchType::Fargate {
        return Err(EcsError::invalid(
            "platformVersion applies only to services using the FARGATE launch type.",
        ));
    }
    Ok(parsed)
}

/// Checks a service's task definition and network configuration against its launch type:
/// FARGATE needs a definition from the Fargate table in awsvpc mode, and awsvpc (either
/// launch type) needs a network configuration, which other modes refuse.
fn validate_service_network(
    task_definition: &flotilla_model::TaskDefinition,
    launch_type: LaunchType,
    network_configuration: Option<&flotilla_model::task::NetworkConfiguration>,
) -> Result<(), EcsError> {
    let fargate = launch_type == LaunchType::Fargate;
    if fargate
        && let Some(problem) = flotilla_model::validate::fargate_launch_problem(
            task_definition,
            &flotilla_model::task::TaskOverride::default(),
        )
    {
        return Err(EcsError::invalid(problem));
    }
    flotilla_model::validate::validate_network_configuration(
        task_definition.spec.network_mode,
        fargate,
        network_configuration,
    )?;
    Ok(())
}

fn validate_controller(controller: Option<&DeploymentControllerInput>) -> Result<(), EcsError> {
    match controller.and_then(|c| c.kind.as_deref()) {
        None | Some("ECS") => Ok(()),
        Some(kind @ ("CODE_DEPLOY" | "EXTERNAL")) => Err(EcsError::UnsupportedFeature(format!(
            "Flotilla does not support the {kind} deployment controller; use ECS."
        ))),
        Some(other) => Err(EcsError::invalid(format!(
            "Invalid deploymentController type '{other}'; accepted: ECS, CODE_DEPLOY, EXTERNAL."
        ))),
    }
}

fn validate_desired_count(count: i64) -> Result<u32, EcsError> {
    if !(0..=TASKS_PER_SERVICE_MAX).contains(&count) {
        return Err(EcsError::invalid(format!(
            "desiredCount must be between 0 and {TASKS_PER_SERVICE_MAX}; got {count}."
        )));
    }
    Ok(count as u32)
}

fn health_check_grace_period(value: Option<i64>) -> Result<Option<u32>, EcsError> {
    match value {
        None => Ok(None),
        Some(seconds) if (0..=i64::from(i32::MAX)).contains(&seconds) => Ok(Some(seconds as u32)),
        Some(seconds) => Err(EcsError::invalid(format!(
            "healthCheckGracePeriodSeconds must be between 0 and 2147483647; got {seconds}."
        ))),
    }
}

fn validate_propagate_tags(value: Option<&str>) -> Result<Option<String>, EcsError> {
    match value {
        None => Ok(None),
        Some(v @ ("SERVICE" | "TASK_DEFINITION" | "NONE")) => Ok(Some(v.to_owned())),
        Some(other) => Err(EcsError::invalid(format!(
            "Invalid propagateTags '{other}'; accepted: SERVICE, TASK_DEFINITION, NONE."
        ))),
    }
}

/// Merges the given members over `base` and checks the result as ECS does.
fn deployment_configuration(
    base: DeploymentConfiguration,
    input: Option<&DeploymentConfigurationInput>,
    strategy: SchedulingStrategy,
) -> Result<DeploymentConfiguration, EcsError> {
    let Some(input) = input else {
        return Ok(base);
    };
    refuse_unsupported(&input.alarms, "deploymentConfiguration.alarms")?;
    refuse_unsupported(
        &input.bake_time_in_minutes,
        "deploymentConfiguration.bakeTimeInMinutes",
    )?;
    refuse_unsupported(
        &input.lifecycle_hooks,
        "deploymentConfiguration.lifecycleHooks",
    )?;
    refuse_unsupported(
        &input.linear_configuration,
        "deploymentConfiguration.linearConfiguration",
    )?;
    refuse_unsupported(
        &input.canary_configuration,
        "deploymentConfiguration.canaryConfiguration",
    )?;
    match input.strategy.as_deref() {
        None | Some("ROLLING") => {}
        Some(other @ ("BLUE_GREEN" | "LINEAR" | "CANARY")) => {
            return Err(EcsError::UnsupportedFeature(format!(
                "Flotilla does not support the {other} deployment strategy; use ROLLING."
            )));
        }
        Some(other) => {
            return Err(EcsError::invalid(format!(
                "Invalid deployment strategy '{other}'; accepted: ROLLING, BLUE_GREEN, LINEAR, CANARY."
            )));
        }
    }
    let mut config = base;
    if let Some(max) = input.maximum_percent {
        config.maximum_percent = u32::try_from(max).map_err(|_| {
            EcsError::invalid(format!("maximumPercent must not be negative; got {max}."))
        })?;
    }
    if let Some(min) = input.minimum_healthy_percent {
        config.minimum_healthy_percent = u32::try_from(min).map_err(|_| {
            EcsError::invalid(format!(
                "minimumHealthyPercent must not be negative; got {min}."
            ))
        })?;
    }
    if let Some(breaker) = &input.deployment_circuit_breaker {
        let (Some(enable), Some(rollback)) = (breaker.enable, breaker.rollback) else {
            return Err(EcsError::invalid(
                "deploymentCircuitBreaker requires both enable and rollback.",
            ));
        };
        config.circuit_breaker = Some(CircuitBreaker { enable, rollback });
    }
    if config.minimum_healthy_percent > 100 {
        return Err(EcsError::invalid(format!(
            "minimumHealthyPercent must be between 0 and 100; got {}.",
            config.minimum_healthy_percent
        )));
    }
    if config.maximum_percent < 100 || config.maximum_percent > 10_000 {
        return Err(EcsError::invalid(format!(
            "maximumPercent must be between 100 and 10000; got {}.",
            config.maximum_percent
        )));
    }
    if strategy == SchedulingStrategy::Daemon && config.maximum_percent != 100 {
        return Err(EcsError::invalid(
            "The maximumPercent parameter must be 100 for services using the DAEMON scheduling strategy.",
        ));
    }
    Ok(config)
}

fn placement_constraints(
    given: &[flotilla_model::task_definition::PlacementConstraint],
) -> Result<Vec<PlacementConstraint>, EcsError> {
    if given.len() > CONSTRAINTS_PER_SERVICE_MAX {
        return Err(EcsError::invalid(format!(
            "At most {CONSTRAINTS_PER_SERVICE_MAX} placement constraints are allowed."
        )));
    }
    given
        .iter()
        .map(|c| {
            let kind = c.kind.clone().unwrap_or_default();
            flotilla_scheduler::parse_constraint(&kind, c.expression.as_deref())
                .map_err(|e| EcsError::invalid(e.to_string()))?;
            Ok(PlacementConstraint {
                kind,
                expression: c.expression.clone(),
            })
        })
        .collect()
}

fn placement_strategies(
    given: &[flotilla_model::task_definition::PlacementStrategy],
    strategy: SchedulingStrategy,
) -> Result<Vec<PlacementStrategy>, EcsError> {
    if given.len() > STRATEGIES_PER_SERVICE_MAX {
        return Err(EcsError::invalid(format!(
            "At most {STRATEGIES_PER_SERVICE_MAX} placement strategies are allowed."
        )));
    }
    if strategy == SchedulingStrategy::Daemon && !given.is_empty() {
        return Err(EcsError::invalid(
            "Placement strategies are not supported with the DAEMON scheduling strategy.",
        ));
    }
    given
        .iter()
        .map(|s| {
            let kind = s.kind.clone().unwrap_or_default();
            flotilla_scheduler::parse_strategy(&kind, s.field.as_deref())
                .map_err(|e| EcsError::invalid(e.to_string()))?;
            Ok(PlacementStrategy {
                kind,
                field: s.field.clone(),
            })
        })
        .collect()
}

fn check_task_definition_runnable(td: &TaskDefinition) -> Result<(), EcsError> {
    if td.status != TaskDefinitionStatus::Active {
        return Err(EcsError::client(format!(
            "TaskDefinition is inactive: {} can no longer start new tasks.",
            td.task_definition_arn
        )));
    }
    Ok(())
}

/// ECS shows `LATEST` as the platform version of FARGATE services.
fn platform_version(service: &Service) -> Option<&'static str> {
    (service.launch_type == LaunchType::Fargate).then_some("LATEST")
}

/// The service as ECS shows it.
pub(crate) fn service_view(service: &Service, include_tags: bool) -> ServiceView {
    let config = &service.deployment_configuration;
    let breaker = config.circuit_breaker.unwrap_or_default();
    let deployments = service
        .deployments
        .iter()
        .map(|d| DeploymentView {
            id: d.id.clone(),
            status: d.status.as_str(),
            task_definition: d.task_definition_arn.clone(),
            desired_count: d.desired_count,
            pending_count: d.pending_count,
            running_count: d.running_count,
            failed_tasks: d.failed_tasks,
            created_at: d.created_at,
            updated_at: d.updated_at,
            launch_type: service.launch_type.as_str(),
            platform_version: platform_version(service),
            network_configuration: service.network_configuration.clone(),
            rollout_state: d.rollout_state.as_str(),
            rollout_state_reason: d.rollout_state_reason.clone(),
        })
        .collect();
    ServiceView {
        service_arn: service.arn.clone(),
        service_name: service.name.clone(),
        cluster_arn: service.cluster_arn.clone(),
        load_balancers: Vec::new(),
        service_registries: Vec::new(),
        status: service.status.as_str(),
        desired_count: service.desired_count,
        running_count: service.running_count,
        pending_count: service.pending_count,
        launch_type: service.launch_type.as_str(),
        platform_version: platform_version(service),
        network_configuration: service.network_configuration.clone(),
        task_definition: service.task_definition_arn.clone(),
        deployment_configuration: DeploymentConfigurationView {
            deployment_circuit_breaker: CircuitBreakerView {
                enable: breaker.enable,
                rollback: breaker.rollback,
            },
            maximum_percent: config.maximum_percent,
            minimum_healthy_percent: config.minimum_healthy_percent,
            strategy: "ROLLING",
        },
        deployments,
        events: service
            .events
            .iter()
            .map(|e| ServiceEventView {
                id: e.id.clone(),
                created_at: e.created_at,
                message: e.message.clone(),
            })
            .collect(),
        created_at: service.created_at,
        placement_constraints: service
            .placement_constraints
            .iter()
            .map(|c| flotilla_model::task_definition::PlacementConstraint {
                kind: Some(c.kind.clone()),
                expression: c.expression.clone(),
            })
            .collect(),
        placement_strategy: service
            .placement_strategy
            .iter()
            .map(|s| flotilla_model::task_definition::PlacementStrategy {
                kind: Some(s.kind.clone()),
                field: s.field.clone(),
            })
            .collect(),
        health_check_grace_period_seconds: Some(service.health_check_grace_period_seconds),
        scheduling_strategy: service.scheduling_strategy.as_str(),
        deployment_controller: DeploymentControllerView { kind: "ECS" },
        tags: include_tags.then(|| service.tags.clone()),
        created_by: service.created_by.clone(),
        enable_ecs_managed_tags: service.enable_ecs_managed_tags,
        propagate_tags: service
            .propagate_tags
            .clone()
            .unwrap_or_else(|| "NONE".to_owned()),
        enable_execute_command: service.enable_execute_command,
        availability_zone_rebalancing: "DISABLED",
    }
}
