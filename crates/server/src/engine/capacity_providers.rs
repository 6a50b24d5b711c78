//! Capacity provider actions: Create/Describe/Update/DeleteCapacityProvider for the
//! providers users make (type `EC2_AUTOSCALING`) beside the built-in FARGATE and
//! FARGATE_SPOT; and `FlotillaV1.ReclaimSpotCapacity`, the operator's way to take
//! FARGATE_SPOT capacity back (the task gets ECS's two-minute warning).

use std::collections::BTreeSet;

use flotilla_api::requests::*;
use flotilla_api::responses::{
    self, CapacityProviderResponse, CapacityProviderView, DescribeCapacityProvidersResponse,
    Failure,
};
use flotilla_model::capacity::{self, CapacityProvider};
use flotilla_model::{
    Cluster, ClusterStatus, DesiredStatus, EcsError, Task, TaskStatus, TaskStopCode,
};
use flotilla_protocol::{ReclaimSpotCapacityRequest, ReclaimSpotCapacityResponse};

use super::tasks::request_stop;
use super::{Engine, RequestContext, contention, validate_tags};
use crate::db::{CAS_RETRIES_MAX, Keys, TxnBuilder};

/// ECS: a capacity provider name is 1 to 255 letters, numbers, underscores and hyphens, and
/// does not start with `aws`, `ecs` or `fargate`.
const NAME_LENGTH_MAX: usize = 255;
const RESERVED_PREFIXES: [&str; 3] = ["aws", "ecs", "fargate"];
/// Spot tasks one reclaim call may interrupt.
const RECLAIM_COUNT_MAX: u32 = 100;
/// ECS's words on an interrupted Fargate Spot task.
pub(crate) const SPOT_INTERRUPTED_REASON: &str = "Your Spot Task was interrupted.";

fn provider_key(keys: &Keys, name: &str) -> String {
    format!("{}capacityprovider/{name}", keys.root())
}

fn providers_prefix(keys: &Keys) -> String {
    format!("{}capacityprovider/", keys.root())
}

fn validate_name(name: &str) -> Result<(), EcsError> {
    let well_formed = !name.is_empty()
        && name.len() <= NAME_LENGTH_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !well_formed {
        return Err(EcsError::invalid(format!(
            "Invalid capacity provider name '{name}'. Up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed."
        )));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p)) {
        return Err(EcsError::invalid(
            "The capacity provider name cannot start with 'aws', 'ecs', or 'fargate'.",
        ));
    }
    Ok(())
}

/// `autoScalingGroupProvider` must name its group; its managed settings use ECS's values.
fn validate_group_provider(value: &serde_json::Value, creating: bool) -> Result<(), EcsError> {
    let Some(object) = value.as_object() else {
        return Err(EcsError::invalid(
            "autoScalingGroupProvider must be an object.",
        ));
    };
    let named = object
        .get("autoScalingGroupArn")
        .and_then(|v| v.as_str())
        .is_some_and(|arn| !arn.is_empty());
    if creating && !named {
        return Err(EcsError::invalid(
            "autoScalingGroupProvider.autoScalingGroupArn is required.",
        ));
    }
    for (field, accepted) in [
        ("managedTerminationProtection", ["ENABLED", "DISABLED"]),
        ("managedDraining", ["ENABLED", "DISABLED"]),
    ] {
        if let Some(value) = object.get(field)
            && !value.as_str().is_some_and(|v| accepted.contains(&v))
        {
            return Err(EcsError::invalid(format!(
                "Invalid autoScalingGroupProvider.{field} {value}; accepted: ENABLED, DISABLED."
            )));
        }
    }
    Ok(())
}

fn built_in_view(ctx: &RequestContext, name: &str) -> CapacityProviderView {
    CapacityProviderView {
        capacity_provider_arn: ctx.scope.capacity_provider_arn(name),
        name: name.to_owned(),
        status: "ACTIVE",
        tags: Vec::new(),
        kind: if name == capacity::FARGATE {
            "FARGATE"
        } else {
            "FARGATE_SPOT"
        },
        auto_scaling_group_provider: None,
        update_status: None,
    }
}

impl Engine {
    /// Names of the ACTIVE capacity providers the user created.
    pub(crate) async fn capacity_provider_names(
        &self,
        ctx: &RequestContext,
    ) -> Result<BTreeSet<String>, EcsError> {
        let providers = self
            .db
            .list::<CapacityProvider>(&providers_prefix(&ctx.keys()))
            .await?;
        Ok(providers
            .into_iter()
            .filter(|p| p.value.status == "ACTIVE")
            .map(|p| p.value.name)
            .collect())
    }

    pub(crate) async fn create_capacity_provider(
        &self,
        ctx: &RequestContext,
        request: CreateCapacityProviderRequest,
    ) -> Result<CapacityProviderResponse, EcsError> {
        let name = required(&request.name, "name")?.to_owned();
        validate_name(&name)?;
        refuse_unsupported(
            &request.managed_instances_provider,
            "managedInstancesProvider",
        )?;
        let Some(group) = request.auto_scaling_group_provider.clone() else {
            return Err(EcsError::invalid("autoScalingGroupProvider is required."));
        };
        validate_group_provider(&group, true)?;
        validate_tags(&request.tags)?;
        let key = provider_key(&ctx.keys(), &name);
        for _ in 0..CAS_RETRIES_MAX {
            let existing = self.db.get::<CapacityProvider>(&key).await?;
            if existing
                .as_ref()
                .is_some_and(|p| p.value.status == "ACTIVE")
            {
                return Err(EcsError::client(
                    "The specified capacity provider already exists. To change the configuration of an existing capacity provider, update the capacity provider.",
                ));
            }
            let provider = CapacityProvider {
                arn: ctx.scope.capacity_provider_arn(&name),
                name: name.clone(),
                status: "ACTIVE".to_owned(),
                auto_scaling_group_provider: group.clone(),
                update_status: None,
                tags: request.tags.clone(),
                created_at: ctx.now,
            };
            let mut txn = TxnBuilder::new();
            txn.expect(&key, existing.map_or(0, |p| p.mod_revision))
                .put(&key, &provider);
            if self.db.commit(txn.build()).await?.is_some() {
                return Ok(CapacityProviderResponse {
                    capacity_provider: responses::capacity_provider(&provider, true),
                });
            }
        }
        Err(contention())
    }

    pub(crate) async fn describe_capacity_providers(
        &self,
        ctx: &RequestContext,
        request: DescribeCapacityProvidersRequest,
    ) -> Result<DescribeCapacityProvidersResponse, EcsError> {
        let mut include_tags = false;
        for include in &request.include {
            if include != "TAGS" {
                return Err(EcsError::invalid(format!(
                    "Invalid include value '{include}'; accepted: TAGS."
                )));
            }
            include_tags = true;
        }
        let keys = ctx.keys();
        let mut providers = Vec::new();
        let mut failures = Vec::new();
        if request.capacity_providers.is_empty() {
            providers.extend(
                capacity::BUILT_IN
                    .iter()
                    .map(|name| built_in_view(ctx, name)),
            );
            for provider in self
                .db
                .list::<CapacityProvider>(&providers_prefix(&keys))
                .await?
            {
                if provider.value.status == "ACTIVE" {
                    providers.push(responses::capacity_provider(&provider.value, include_tags));
                }
            }
        }
        for reference in &request.capacity_providers {
            let name = flotilla_model::arn::last_segment(reference);
            if capacity::is_fargate(name) {
                providers.push(built_in_view(ctx, name));
                continue;
            }
            match self
                .db
                .get::<CapacityProvider>(&provider_key(&keys, name))
                .await?
            {
                Some(provider) => {
                    providers.push(responses::capacity_provider(&provider.value, include_tags))
                }
                None => failures.push(Failure::missing(reference.clone())),
            }
        }
        Ok(DescribeCapacityProvidersResponse {
            capacity_providers: providers,
            failures,
            next_token: None,
        })
    }

    pub(crate) async fn update_capacity_provider(
        &self,
        ctx: &RequestContext,
        request: UpdateCapacityProviderRequest,
    ) -> Result<CapacityProviderResponse, EcsError> {
        let reference = required(&request.name, "name")?;
        let name = flotilla_model::arn::last_segment(reference).to_owned();
        refuse_unsupported(
            &request.managed_instances_provider,
            "managedInstancesProvider",
        )?;
        if capacity::is_fargate(&name) {
            return Err(EcsError::invalid(format!(
                "The {name} capacity provider is managed by Flotilla and cannot be updated."
            )));
        }
        let Some(changes) = request.auto_scaling_group_provider.clone() else {
            return Err(EcsError::invalid("autoScalingGroupProvider is required."));
        };
        validate_group_provider(&changes, false)?;
        let key = provider_key(&ctx.keys(), &name);
        for _ in 0..CAS_RETRIES_MAX {
            let Some(read) = self
                .db
                .get::<CapacityProvider>(&key)
                .await?
                .filter(|p| p.value.status == "ACTIVE")
            else {
                return Err(EcsError::invalid(format!(
                    "The specified capacity provider '{name}' does not exist."
                )));
            };
            let mut provider = read.value.clone();
            if let (Some(current), Some(changes)) = (
                provider.auto_scaling_group_provider.as_object_mut(),
                changes.as_object(),
            ) {
                for (field, value) in changes {
                    // The group itself cannot change.
                    if field != "autoScalingGroupArn" {
                        current.insert(field.clone(), value.clone());
                    }
                }
            }
            provider.update_status = Some("UPDATE_COMPLETE".to_owned());
            if self.db.replace_one(&read, &provider).await? {
                return Ok(CapacityProviderResponse {
                    capacity_provider: responses::capacity_provider(&provider, true),
                });
            }
        }
        Err(contention())
    }

    pub(crate) async fn delete_capacity_provider(
        &self,
        ctx: &RequestContext,
        request: DeleteCapacityProviderRequest,
    ) -> Result<CapacityProviderResponse, EcsError> {
        let reference = required(&request.capacity_provider, "capacityProvider")?;
        let name = flotilla_model::arn::last_segment(reference).to_owned();
        if capacity::is_fargate(&name) {
            return Err(EcsError::invalid(format!(
                "The {name} capacity provider is managed by Flotilla and cannot be deleted."
            )));
        }
        let keys = ctx.keys();
        let key = provider_key(&keys, &name);
        for _ in 0..CAS_RETRIES_MAX {
            let Some(read) = self
                .db
                .get::<CapacityProvider>(&key)
                .await?
                .filter(|p| p.value.status == "ACTIVE")
            else {
                return Err(EcsError::invalid(format!(
                    "The specified capacity provider '{name}' does not exist."
                )));
            };
            let clusters = self.db.list::<Cluster>(&keys.clusters()).await?;
            if let Some(cluster) = clusters.iter().find(|c| {
                c.value.status == ClusterStatus::Active
                    && c.value.capacity_providers.contains(&name)
            }) {
                return Err(EcsError::ResourceInUse(format!(
                    "The specified capacity provider is in use and cannot be removed: cluster '{}' uses it. Remove it with PutClusterCapacityProviders first.",
                    cluster.value.name
                )));
            }
            let mut provider = read.value.clone();
            provider.status = "INACTIVE".to_owned();
            provider.update_status = Some("DELETE_COMPLETE".to_owned());
            if self.db.replace_one(&read, &provider).await? {
                return Ok(CapacityProviderResponse {
                    capacity_provider: responses::capacity_provider(&provider, true),
                });
            }
        }
        Err(contention())
    }

    /// `FlotillaV1.ReclaimSpotCapacity`: interrupts up to `count` FARGATE_SPOT tasks that
    /// are not stopping yet, oldest first. Their agents give them the two-minute warning.
    pub async fn reclaim_spot_capacity(
        &self,
        ctx: &RequestContext,
        request: ReclaimSpotCapacityRequest,
    ) -> Result<ReclaimSpotCapacityResponse, EcsError> {
        let count = request.count.unwrap_or(1);
        if !(1..=RECLAIM_COUNT_MAX).contains(&count) {
            return Err(EcsError::invalid(format!(
                "count must be between 1 and {RECLAIM_COUNT_MAX}; got {count}."
            )));
        }
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let keys = ctx.keys();
        let mut tasks: Vec<_> = self
            .db
            .list::<Task>(&keys.tasks(&cluster.value.name))
            .await?
            .into_iter()
            .filter(|t| {
                t.value.capacity_provider_name.as_deref() == Some(capacity::FARGATE_SPOT)
                    && t.value.desired_status != DesiredStatus::Stopped
                    && t.value.last_status < TaskStatus::Stopping
            })
            .collect();
        tasks.sort_by_key(|t| (t.value.created_at, t.value.id.clone()));
        let mut interrupted = Vec::new();
        for read in tasks.into_iter().take(count as usize) {
            let mut task = read.value.clone();
            request_stop(
                &mut task,
                TaskStopCode::SpotInterruption,
                Some(SPOT_INTERRUPTED_REASON.to_owned()),
                ctx.now,
            );
            let mut txn = TxnBuilder::new();
            txn.replace(&read, &task);
            // A task that changed meanwhile (stopped, reported) is left alone.
            if self.db.commit(txn.build()).await?.is_some() {
                interrupted.push(task.arn);
            }
        }
        Ok(ReclaimSpotCapacityResponse {
            task_arns: interrupted,
        })
    }
}
