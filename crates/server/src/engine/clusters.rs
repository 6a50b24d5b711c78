//! Cluster actions: create, describe, list, update, delete, capacity providers.

use flotilla_api::requests::*;
use flotilla_api::responses::{
    self, ClusterCounts, ClusterInclude, ClusterResponse, DescribeClustersResponse, Failure,
    ListItems, ListResponse,
};
use flotilla_model::cluster::{CapacityProviderStrategyItem, ClusterSetting};
use flotilla_model::{
    Cluster, ClusterStatus, ContainerInstance, ContainerInstanceStatus, EcsError, LaunchType, Task,
    TaskStatus,
};

use super::{
    Engine, RequestContext, cluster_name, contention, max_results, paginate, validate_tags,
};
use crate::db::{CAS_RETRIES_MAX, TxnBuilder, Versioned};

/// Capacity providers every account has.
pub(crate) const BUILT_IN_CAPACITY_PROVIDERS: [&str; 2] = ["FARGATE", "FARGATE_SPOT"];
const CLUSTERS_PER_DESCRIBE_MAX: usize = 100;

pub(crate) fn new_cluster(ctx: &RequestContext, name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        arn: ctx.scope.cluster_arn(name),
        status: ClusterStatus::Active,
        settings: vec![ClusterSetting {
            name: Some("containerInsights".into()),
            value: Some("disabled".into()),
        }],
        configuration: None,
        service_connect_defaults: None,
        capacity_providers: Vec::new(),
        default_capacity_provider_strategy: Vec::new(),
        tags: Vec::new(),
        created_at: ctx.now,
    }
}

fn validate_cluster_name(name: &str) -> Result<(), EcsError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(EcsError::invalid(format!(
            "Invalid cluster name '{name}'. Up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed."
        )))
    }
}

fn validate_settings(settings: &[ClusterSetting]) -> Result<(), EcsError> {
    for setting in settings {
        match (setting.name.as_deref(), setting.value.as_deref()) {
            (Some("containerInsights"), Some("enabled" | "disabled" | "enhanced")) => {}
            (Some("containerInsights"), value) => {
                return Err(EcsError::invalid(format!(
                    "Invalid value {value:?} for cluster setting containerInsights; accepted: enabled, disabled, enhanced."
                )));
            }
            (name, _) => {
                return Err(EcsError::invalid(format!(
                    "Unknown cluster setting {name:?}; the only cluster setting is containerInsights."
                )));
            }
        }
    }
    Ok(())
}

fn merge_settings(existing: &mut Vec<ClusterSetting>, incoming: &[ClusterSetting]) {
    for setting in incoming {
        match existing.iter_mut().find(|s| s.name == setting.name) {
            Some(current) => current.value = setting.value.clone(),
            None => existing.push(setting.clone()),
        }
    }
}

/// Checks capacity providers to associate with a cluster (built-in or created by the user,
/// `custom`) and a default strategy over them.
fn validate_capacity_providers(
    providers: &[String],
    strategy: &[CapacityProviderStrategyItem],
    custom: &std::collections::BTreeSet<String>,
) -> Result<(), EcsError> {
    for provider in providers {
        if !BUILT_IN_CAPACITY_PROVIDERS.contains(&provider.as_str()) && !custom.contains(provider) {
            return Err(EcsError::invalid(format!(
                "The capacity provider '{provider}' does not exist. Available: FARGATE, FARGATE_SPOT and those made with CreateCapacityProvider."
            )));
        }
    }
    for item in strategy {
        if !providers.contains(&item.capacity_provider) {
            return Err(EcsError::invalid(format!(
                "The capacity provider strategy names '{}', which is not associated with the cluster.",
                item.capacity_provider
            )));
        }
    }
    validate_strategy_items(strategy)
}

/// The rules every capacity provider strategy follows: weights 0 to 1000, one base of 0 to
/// 100000, at most 20 items, and Fargate and Auto Scaling group providers not mixed.
pub(crate) fn validate_strategy_items(
    strategy: &[CapacityProviderStrategyItem],
) -> Result<(), EcsError> {
    let mut with_base = 0;
    for item in strategy {
        if !(0..=1000).contains(&item.weight) {
            return Err(EcsError::invalid(
                "A capacity provider strategy weight must be between 0 and 1000.",
            ));
        }
        if !(0..=100_000).contains(&item.base) {
            return Err(EcsError::invalid(
                "A capacity provider strategy base must be between 0 and 100000.",
            ));
        }
        if item.base > 0 {
            with_base += 1;
        }
    }
    if with_base > 1 {
        return Err(EcsError::invalid(
            "Only one capacity provider in a strategy can have a base defined.",
        ));
    }
    if strategy.len() > 20 {
        return Err(EcsError::invalid(
            "A capacity provider strategy can have at most 20 entries.",
        ));
    }
    let fargate = strategy
        .iter()
        .filter(|i| BUILT_IN_CAPACITY_PROVIDERS.contains(&i.capacity_provider.as_str()))
        .count();
    if fargate > 0 && fargate < strategy.len() {
        return Err(EcsError::invalid(
            "A capacity provider strategy cannot contain a mix of capacity providers using Auto Scaling groups and Fargate providers. Specify one or the other and try again.",
        ));
    }
    Ok(())
}

fn parse_include(include: &[String]) -> Result<ClusterInclude, EcsError> {
    let mut out = ClusterInclude::default();
    for item in include {
        match item.as_str() {
            "ATTACHMENTS" => out.attachments = true,
            "CONFIGURATIONS" => out.configurations = true,
            "SETTINGS" => out.settings = true,
            "STATISTICS" => out.statistics = true,
            "TAGS" => out.tags = true,
            other => {
                return Err(EcsError::invalid(format!(
                    "Invalid include value '{other}'; accepted: ATTACHMENTS, CONFIGURATIONS, SETTINGS, STATISTICS, TAGS."
                )));
            }
        }
    }
    Ok(out)
}

impl Engine {
    /// Counts shown by DescribeClusters, derived from the cluster's instances and tasks.
    pub(crate) async fn cluster_counts(
        &self,
        ctx: &RequestContext,
        cluster: &str,
    ) -> Result<ClusterCounts, EcsError> {
        let snapshot = self.snapshot(ctx, cluster).await?;
        let mut counts = ClusterCounts {
            registered_container_instances: snapshot
                .instances
                .values()
                .filter(|i| {
                    !i.value.is_fargate_capacity()
                        && matches!(
                            i.value.status,
                            ContainerInstanceStatus::Active | ContainerInstanceStatus::Draining
                        )
                })
                .count() as u64,
            ..Default::default()
        };
        // The snapshot waited for the store's revision, so the service list is as fresh.
        for service in self.cache.services(ctx.keys().root(), cluster).values() {
            match service.status {
                flotilla_reconcile::ServiceStatus::Active => counts.active_ec2_services += 1,
                flotilla_reconcile::ServiceStatus::Draining => counts.draining_ec2_services += 1,
                flotilla_reconcile::ServiceStatus::Inactive => {}
            }
        }
        for task in snapshot.tasks.values() {
            let fargate = task.launch_type == LaunchType::Fargate;
            match task.last_status {
                TaskStatus::Running => {
                    if fargate {
                        counts.running_fargate_tasks += 1
                    } else {
                        counts.running_ec2_tasks += 1
                    }
                }
                status if status.is_pending() => {
                    if fargate {
                        counts.pending_fargate_tasks += 1
                    } else {
                        counts.pending_ec2_tasks += 1
                    }
                }
                _ => {}
            }
        }
        Ok(counts)
    }

    async fn render_cluster(
        &self,
        ctx: &RequestContext,
        cluster: &Cluster,
        include: ClusterInclude,
    ) -> Result<responses::ClusterView, EcsError> {
        let counts = if cluster.status == ClusterStatus::Active {
            self.cluster_counts(ctx, &cluster.name).await?
        } else {
            ClusterCounts::default()
        };
        Ok(responses::cluster(cluster, &counts, include))
    }

    pub(crate) async fn create_cluster(
        &self,
        ctx: &RequestContext,
        request: CreateClusterRequest,
    ) -> Result<ClusterResponse, EcsError> {
        let name = request
            .cluster_name
            .clone()
            .unwrap_or_else(|| super::DEFAULT_CLUSTER.to_owned());
        validate_cluster_name(&name)?;
        validate_tags(&request.tags)?;
        validate_settings(&request.settings)?;
        validate_capacity_providers(
            &request.capacity_providers,
            &request.default_capacity_provider_strategy,
            &self.capacity_provider_names(ctx).await?,
        )?;
        let key = ctx.keys().cluster(&name);
        for _ in 0..CAS_RETRIES_MAX {
            let existing = self.db.get::<Cluster>(&key).await?;
            if let Some(cluster) = &existing
                && cluster.value.status == ClusterStatus::Active
            {
                // ECS answers a repeated CreateCluster with the existing cluster.
                let view = self
                    .render_cluster(ctx, &cluster.value, ClusterInclude::ALL)
                    .await?;
                return Ok(ClusterResponse { cluster: view });
            }
            let mut cluster = new_cluster(ctx, &name);
            merge_settings(&mut cluster.settings, &request.settings);
            cluster.tags = request.tags.clone();
            cluster.configuration = request.configuration.clone();
            cluster.service_connect_defaults = request.service_connect_defaults.clone();
            cluster.capacity_providers = request.capacity_providers.clone();
            cluster.default_capacity_provider_strategy =
                request.default_capacity_provider_strategy.clone();
            let mut txn = TxnBuilder::new();
            txn.expect(&key, existing.map_or(0, |c| c.mod_revision))
                .put(&key, &cluster);
            if self.db.commit(txn.build()).await?.is_some() {
                let view =
                    responses::cluster(&cluster, &ClusterCounts::default(), ClusterInclude::ALL);
                return Ok(ClusterResponse { cluster: view });
            }
        }
        Err(contention())
    }

    pub(crate) async fn describe_clusters(
        &self,
        ctx: &RequestContext,
        request: DescribeClustersRequest,
    ) -> Result<DescribeClustersResponse, EcsError> {
        let include = parse_include(&request.include)?;
        if request.clusters.len() > CLUSTERS_PER_DESCRIBE_MAX {
            return Err(EcsError::invalid(format!(
                "clusters can name at most {CLUSTERS_PER_DESCRIBE_MAX} clusters."
            )));
        }
        let references = if request.clusters.is_empty() {
            vec![super::DEFAULT_CLUSTER.to_owned()]
        } else {
            request.clusters
        };
        let mut clusters = Vec::new();
        let mut failures = Vec::new();
        for reference in references {
            let name = match cluster_name(ctx, &reference) {
                Ok(name) => name,
                Err(_) => {
                    failures.push(Failure::missing(reference));
                    continue;
                }
            };
            match self.db.get::<Cluster>(&ctx.keys().cluster(&name)).await? {
                Some(cluster) => {
                    clusters.push(self.render_cluster(ctx, &cluster.value, include).await?)
                }
                None => failures.push(Failure::missing(ctx.scope.cluster_arn(&name))),
            }
        }
        Ok(DescribeClustersResponse { clusters, failures })
    }

    pub(crate) async fn list_clusters(
        &self,
        ctx: &RequestContext,
        request: ListRequest,
    ) -> Result<ListResponse<String>, EcsError> {
        let limit = max_results(request.max_results, super::LIST_RESULTS_MAX)?;
        let clusters = self.db.list::<Cluster>(&ctx.keys().clusters()).await?;
        let arns: Vec<String> = clusters
            .into_iter()
            .filter(|c| c.value.status != ClusterStatus::Inactive)
            .map(|c| c.value.arn)
            .collect();
        let (arns, next_token) = paginate(arns, request.next_token.as_deref(), limit, "clusters:")?;
        Ok(ListResponse {
            items: ListItems::ClusterArns(arns),
            next_token,
        })
    }

    pub(crate) async fn delete_cluster(
        &self,
        ctx: &RequestContext,
        request: ClusterRequest,
    ) -> Result<ClusterResponse, EcsError> {
        let reference = required(&request.cluster, "cluster")?;
        let name = cluster_name(ctx, reference)?;
        let keys = ctx.keys();
        for _ in 0..CAS_RETRIES_MAX {
            let Some(cluster) = self.db.get::<Cluster>(&keys.cluster(&name)).await? else {
                return Err(EcsError::ClusterNotFound);
            };
            if cluster.value.status == ClusterStatus::Inactive {
                return Err(EcsError::ClusterNotFound);
            }
            let services = self
                .db
                .list::<flotilla_reconcile::Service>(&keys.services(&name))
                .await?;
            if services
                .iter()
                .any(|s| s.value.status != flotilla_reconcile::ServiceStatus::Inactive)
            {
                return Err(EcsError::ClusterContainsServices);
            }
            let instances = self
                .db
                .list::<ContainerInstance>(&keys.instances(&name))
                .await?;
            if instances.iter().any(|i| {
                !i.value.is_fargate_capacity()
                    && matches!(
                        i.value.status,
                        ContainerInstanceStatus::Active | ContainerInstanceStatus::Draining
                    )
            }) {
                return Err(EcsError::ClusterContainsContainerInstances);
            }
            let tasks = self.db.list::<Task>(&keys.tasks(&name)).await?;
            if tasks
                .iter()
                .any(|t| t.value.last_status != TaskStatus::Stopped)
            {
                return Err(EcsError::ClusterContainsTasks);
            }
            let mut updated = cluster.value.clone();
            updated.status = ClusterStatus::Inactive;
            if self.db.replace_one(&cluster, &updated).await? {
                let view =
                    responses::cluster(&updated, &ClusterCounts::default(), ClusterInclude::ALL);
                return Ok(ClusterResponse { cluster: view });
            }
        }
        Err(contention())
    }

    /// Read-modify-write of an ACTIVE cluster with retries.
    async fn modify_cluster(
        &self,
        ctx: &RequestContext,
        reference: &str,
        change: impl Fn(&mut Cluster),
    ) -> Result<ClusterResponse, EcsError> {
        for _ in 0..CAS_RETRIES_MAX {
            let cluster: Versioned<Cluster> = self.active_cluster(ctx, Some(reference)).await?;
            let mut updated = cluster.value.clone();
            change(&mut updated);
            if self.db.replace_one(&cluster, &updated).await? {
                let view = self
                    .render_cluster(ctx, &updated, ClusterInclude::ALL)
                    .await?;
                return Ok(ClusterResponse { cluster: view });
            }
        }
        Err(contention())
    }

    pub(crate) async fn update_cluster(
        &self,
        ctx: &RequestContext,
        request: UpdateClusterRequest,
    ) -> Result<ClusterResponse, EcsError> {
        let reference = required(&request.cluster, "cluster")?.to_owned();
        let settings = request.settings.unwrap_or_default();
        validate_settings(&settings)?;
        self.modify_cluster(ctx, &reference, |cluster| {
            merge_settings(&mut cluster.settings, &settings);
            if let Some(configuration) = &request.configuration {
                cluster.configuration = Some(configuration.clone());
            }
            if let Some(defaults) = &request.service_connect_defaults {
                cluster.service_connect_defaults = Some(defaults.clone());
            }
        })
        .await
    }

    pub(crate) async fn update_cluster_settings(
        &self,
        ctx: &RequestContext,
        request: UpdateClusterSettingsRequest,
    ) -> Result<ClusterResponse, EcsError> {
        let reference = required(&request.cluster, "cluster")?.to_owned();
        let Some(settings) = request.settings else {
            return Err(EcsError::invalid("settings is required."));
        };
        validate_settings(&settings)?;
        self.modify_cluster(ctx, &reference, |cluster| {
            merge_settings(&mut cluster.settings, &settings)
        })
        .await
    }

    pub(crate) async fn put_cluster_capacity_providers(
        &self,
        ctx: &RequestContext,
        request: PutClusterCapacityProvidersRequest,
    ) -> Result<ClusterResponse, EcsError> {
        let reference = required(&request.cluster, "cluster")?.to_owned();
        let Some(providers) = request.capacity_providers else {
            return Err(EcsError::invalid("capacityProviders is required."));
        };
        let Some(strategy) = request.default_capacity_provider_strategy else {
            return Err(EcsError::invalid(
                "defaultCapacityProviderStrategy is required.",
            ));
        };
        validate_capacity_providers(
            &providers,
            &strategy,
            &self.capacity_provider_names(ctx).await?,
        )?;
        self.modify_cluster(ctx, &reference, |cluster| {
            cluster.capacity_providers = providers.clone();
            cluster.default_capacity_provider_strategy = strategy.clone();
        })
        .await
    }
}
