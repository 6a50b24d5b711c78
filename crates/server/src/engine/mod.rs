//! The control plane's request engine: executes one parsed ECS [`Action`] against the state
//! store and returns the encoded response. Reads, decides, then commits with compare-and-swap
//! so that concurrent requests (and several control-plane replicas) never lose an update.

mod applier;
mod attributes;
mod capacity_providers;
mod clusters;
mod explain;
mod instances;
mod services;
mod settings;
mod tags;
mod task_definitions;
mod tasks;

use std::sync::Arc;

use base64::Engine as _;
use flotilla_api::Action;
use flotilla_api::responses::encode;
use flotilla_model::{Cluster, ClusterStatus, EcsError, Scope, Timestamp};

use crate::db::{Db, Keys, TxnBuilder, Versioned};

pub(crate) use applier::PlacementJob;
pub use instances::InstanceRegistration;
pub(crate) use tasks::{Launch, RunTaskToken};
pub use tasks::{apply_task_state_change, release_on_stop, request_stop};

/// Who is calling, where, and when. Built by the HTTP shell from the verified signature.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub scope: Scope,
    /// `arn:aws:iam::ACCOUNT:root` for the account's key; recorded as `registeredBy`.
    pub principal_arn: String,
    pub now: Timestamp,
}

impl RequestContext {
    pub fn keys(&self) -> Keys {
        Keys::new(&self.scope)
    }
}

/// Settings of the engine that callers may tune.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How long STOPPED tasks stay visible (ECS: at least an hour).
    pub stopped_task_retention_ms: i64,
    /// How long a RunTask clientToken is remembered.
    pub client_token_retention_ms: i64,
    /// The first gap of a service's restart throttle (doubled per failed start, capped at
    /// 15 minutes). ECS: one second.
    pub restart_delay_base_ms: u64,
    /// How long a service task without container health checks must be RUNNING before it
    /// counts healthy (for the rolling floor, completion and the breaker). ECS: 40 s.
    pub healthy_after_running_ms: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            stopped_task_retention_ms: 3_600_000,
            client_token_retention_ms: 8 * 3_600_000,
            restart_delay_base_ms: flotilla_reconcile::THROTTLE_DELAY_BASE_MS,
            healthy_after_running_ms: flotilla_reconcile::HEALTHY_AFTER_RUNNING_MS,
        }
    }
}

/// Executes actions. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) db: Db,
    pub config: Arc<EngineConfig>,
    pub(crate) cache: Arc<crate::cache::StateCache>,
    /// One placement at a time per cluster in this process (the plan applier): concurrent
    /// RunTasks queue here instead of colliding on the same hosts' revisions.
    placement_locks:
        Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// The plan applier of each cluster (see `applier`).
    pub(crate) appliers: Arc<
        std::sync::Mutex<
            std::collections::HashMap<String, tokio::sync::mpsc::Sender<applier::PlacementJob>>,
        >,
    >,
    /// Cancelled when the server stops: the appliers end with it.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    /// The appliers' batch counters, served on `/metrics`.
    pub(crate) placement_counters: crate::metrics::PlacementCounters,
}

/// The cluster every call that names none uses, created on first use as in ECS.
pub const DEFAULT_CLUSTER: &str = "default";
/// `maxResults` bounds of the List actions.
pub const LIST_RESULTS_MAX: usize = 100;

impl Engine {
    pub fn new(db: Db, config: EngineConfig, cache: Arc<crate::cache::StateCache>) -> Self {
        Self {
            db,
            config: Arc::new(config),
            cache,
            placement_locks: Default::default(),
            appliers: Default::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            placement_counters: Default::default(),
        }
    }

    /// The same engine, whose background work ends when `shutdown` is cancelled.
    pub fn with_shutdown(mut self, shutdown: tokio_util::sync::CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The placement lock of one cluster.
    pub(crate) fn placement_lock(&self, cluster_key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .placement_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        locks.entry(cluster_key.to_owned()).or_default().clone()
    }

    /// A snapshot of a cluster that includes every write committed before this call.
    pub(crate) async fn snapshot(
        &self,
        ctx: &RequestContext,
        cluster: &str,
    ) -> Result<Arc<crate::cache::ClusterState>, EcsError> {
        self.snapshot_in(ctx.keys().root(), cluster).await
    }

    /// [`Engine::snapshot`] of the cluster named `cluster` under key root `root`.
    pub(crate) async fn snapshot_in(
        &self,
        root: &str,
        cluster: &str,
    ) -> Result<Arc<crate::cache::ClusterState>, EcsError> {
        let revision = self
            .db
            .store
            .revision()
            .await
            .map_err(crate::db::store_error)?;
        if !self.cache.wait_for(revision).await {
            return Err(EcsError::Server(
                "The control plane's state cache is catching up with the store; retry.".into(),
            ));
        }
        Ok(self.cache.cluster(root, cluster))
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Runs one action and encodes its response body.
    pub async fn execute(&self, ctx: &RequestContext, action: Action) -> Result<Vec<u8>, EcsError> {
        use Action as A;
        Ok(match action {
            A::CreateCluster(r) => encode(&self.create_cluster(ctx, r).await?),
            A::DescribeClusters(r) => encode(&self.describe_clusters(ctx, r).await?),
            A::ListClusters(r) => encode(&self.list_clusters(ctx, r).await?),
            A::DeleteCluster(r) => encode(&self.delete_cluster(ctx, r).await?),
            A::UpdateCluster(r) => encode(&self.update_cluster(ctx, r).await?),
            A::UpdateClusterSettings(r) => encode(&self.update_cluster_settings(ctx, r).await?),
            A::PutClusterCapacityProviders(r) => {
                encode(&self.put_cluster_capacity_providers(ctx, r).await?)
            }
            A::DescribeCapacityProviders(r) => {
                encode(&self.describe_capacity_providers(ctx, r).await?)
            }
            A::CreateCapacityProvider(r) => encode(&self.create_capacity_provider(ctx, r).await?),
            A::UpdateCapacityProvider(r) => encode(&self.update_capacity_provider(ctx, r).await?),
            A::DeleteCapacityProvider(r) => encode(&self.delete_capacity_provider(ctx, r).await?),
            A::RegisterTaskDefinition(r) => encode(&self.register_task_definition(ctx, r).await?),
            A::DescribeTaskDefinition(r) => encode(&self.describe_task_definition(ctx, r).await?),
            A::ListTaskDefinitions(r) => encode(&self.list_task_definitions(ctx, r).await?),
            A::ListTaskDefinitionFamilies(r) => {
                encode(&self.list_task_definition_families(ctx, r).await?)
            }
            A::DeregisterTaskDefinition(r) => {
                encode(&self.deregister_task_definition(ctx, r).await?)
            }
            A::DeleteTaskDefinitions(r) => encode(&self.delete_task_definitions(ctx, r).await?),
            A::RegisterContainerInstance(r) => {
                encode(&self.register_container_instance_api(ctx, r).await?)
            }
            A::DescribeContainerInstances(r) => {
                encode(&self.describe_container_instances(ctx, r).await?)
            }
            A::ListContainerInstances(r) => encode(&self.list_container_instances(ctx, r).await?),
            A::UpdateContainerInstancesState(r) => {
                encode(&self.update_container_instances_state(ctx, r).await?)
            }
            A::DeregisterContainerInstance(r) => {
                encode(&self.deregister_container_instance(ctx, r).await?)
            }
            A::RunTask(r) => encode(&self.run_task(ctx, r).await?),
            A::StartTask(r) => encode(&self.start_task(ctx, r).await?),
            A::StopTask(r) => encode(&self.stop_task(ctx, r).await?),
            A::DescribeTasks(r) => encode(&self.describe_tasks(ctx, r).await?),
            A::ListTasks(r) => encode(&self.list_tasks(ctx, r).await?),
            A::PutAttributes(r) => encode(&self.put_attributes(ctx, r).await?),
            A::DeleteAttributes(r) => encode(&self.delete_attributes(ctx, r).await?),
            A::ListAttributes(r) => encode(&self.list_attributes(ctx, r).await?),
            A::TagResource(r) => encode(&self.tag_resource(ctx, r).await?),
            A::UntagResource(r) => encode(&self.untag_resource(ctx, r).await?),
            A::ListTagsForResource(r) => encode(&self.list_tags_for_resource(ctx, r).await?),
            A::ListAccountSettings(r) => encode(&self.list_account_settings(ctx, r).await?),
            A::PutAccountSetting(r) => encode(&self.put_account_setting(ctx, r, false).await?),
            A::PutAccountSettingDefault(r) => {
                encode(&self.put_account_setting(ctx, r, true).await?)
            }
            A::DeleteAccountSetting(r) => encode(&self.delete_account_setting(ctx, r).await?),
            A::CreateService(r) => encode(&self.create_service(ctx, r).await?),
            A::UpdateService(r) => encode(&self.update_service(ctx, r).await?),
            A::DeleteService(r) => encode(&self.delete_service(ctx, r).await?),
            A::DescribeServices(r) => encode(&self.describe_services(ctx, r).await?),
            A::ListServices(r) => encode(&self.list_services(ctx, r).await?),
        })
    }

    /// Resolves a `cluster` member (name, ARN or absent) to an ACTIVE cluster record.
    /// An absent member means `default`, which is created on first use.
    pub(crate) async fn active_cluster(
        &self,
        ctx: &RequestContext,
        reference: Option<&str>,
    ) -> Result<Versioned<Cluster>, EcsError> {
        let name = match reference {
            None | Some("") => return self.default_cluster(ctx).await,
            Some(reference) => cluster_name(ctx, reference)?,
        };
        // `default` comes into being on first use, whether named or implied (as in ECS).
        if name == DEFAULT_CLUSTER {
            return self.default_cluster(ctx).await;
        }
        match self.db.get::<Cluster>(&ctx.keys().cluster(&name)).await? {
            Some(cluster) if cluster.value.status == ClusterStatus::Active => Ok(cluster),
            _ => Err(EcsError::ClusterNotFound),
        }
    }

    async fn default_cluster(&self, ctx: &RequestContext) -> Result<Versioned<Cluster>, EcsError> {
        let key = ctx.keys().cluster(DEFAULT_CLUSTER);
        for _ in 0..crate::db::CAS_RETRIES_MAX {
            let existing = self.db.get::<Cluster>(&key).await?;
            if let Some(cluster) = &existing
                && cluster.value.status == ClusterStatus::Active
            {
                return Ok(cluster.clone());
            }
            let cluster = clusters::new_cluster(ctx, DEFAULT_CLUSTER);
            let mut txn = TxnBuilder::new();
            txn.expect(&key, existing.as_ref().map_or(0, |c| c.mod_revision))
                .put(&key, &cluster);
            if let Some(revision) = self.db.commit(txn.build()).await? {
                return Ok(Versioned {
                    key,
                    value: cluster,
                    mod_revision: revision,
                });
            }
        }
        Err(contention())
    }
}

/// The error when compare-and-swap keeps losing (heavy contention on one record).
pub(crate) fn contention() -> EcsError {
    EcsError::Server(
        "The request conflicted with concurrent updates too many times; retry it.".to_owned(),
    )
}

/// Extracts a cluster name from a name or a cluster ARN of this account and region.
pub(crate) fn cluster_name(ctx: &RequestContext, reference: &str) -> Result<String, EcsError> {
    if reference.starts_with("arn:") {
        let arn =
            flotilla_model::Arn::parse(reference).map_err(|e| EcsError::invalid(e.to_string()))?;
        match arn.resource {
            flotilla_model::ArnResource::Cluster { cluster_name }
                if arn.region == ctx.scope.region && arn.account_id == ctx.scope.account_id =>
            {
                Ok(cluster_name)
            }
            flotilla_model::ArnResource::Cluster { .. } => Err(EcsError::ClusterNotFound),
            _ => Err(EcsError::invalid(format!(
                "'{reference}' is not a cluster ARN."
            ))),
        }
    } else {
        Ok(reference.to_owned())
    }
}

/// Validates `maxResults` (1..=limit, default limit).
pub(crate) fn max_results(value: Option<i64>, limit: usize) -> Result<usize, EcsError> {
    match value {
        None => Ok(limit),
        Some(n) if n >= 1 && n as usize <= limit => Ok(n as usize),
        Some(n) => Err(EcsError::invalid(format!(
            "maxResults must be between 1 and {limit}; got {n}."
        ))),
    }
}

/// Opaque pagination tokens: the last key returned, bound to the listing's prefix.
pub(crate) fn encode_token(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last.as_bytes())
}

pub(crate) fn decode_token(token: Option<&str>, prefix: &str) -> Result<Option<String>, EcsError> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let invalid = || EcsError::invalid("The nextToken is not valid for this request.");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let key = String::from_utf8(bytes).map_err(|_| invalid())?;
    if key.starts_with(prefix) {
        Ok(Some(key))
    } else {
        Err(invalid())
    }
}

/// Paginates an in-memory sorted list by its item text (for listings that are filtered or
/// sorted after reading). The token is the last item returned.
pub(crate) fn paginate(
    items: Vec<String>,
    token: Option<&str>,
    limit: usize,
    scope_tag: &str,
) -> Result<(Vec<String>, Option<String>), EcsError> {
    let start = match decode_token(token, scope_tag)? {
        None => 0,
        Some(last) => {
            let last = &last[scope_tag.len()..];
            items
                .iter()
                .position(|item| item.as_str() == last)
                .map(|i| i + 1)
                .ok_or_else(|| EcsError::invalid("The nextToken is not valid for this request."))?
        }
    };
    let page: Vec<String> = items.iter().skip(start).take(limit).cloned().collect();
    let next = if start + page.len() < items.len() {
        page.last()
            .map(|last| encode_token(&format!("{scope_tag}{last}")))
    } else {
        None
    };
    Ok((page, next))
}

/// Tag rules shared by every taggable resource.
pub(crate) fn validate_tags(tags: &[flotilla_model::Tag]) -> Result<(), EcsError> {
    const TAGS_PER_RESOURCE_MAX: usize = 50;
    if tags.len() > TAGS_PER_RESOURCE_MAX {
        return Err(EcsError::invalid(format!(
            "A resource can have at most {TAGS_PER_RESOURCE_MAX} tags."
        )));
    }
    for tag in tags {
        if tag.key.is_empty() || tag.key.chars().count() > 128 {
            return Err(EcsError::invalid(
                "Tag keys must be 1 to 128 characters long.",
            ));
        }
        if tag.value.chars().count() > 256 {
            return Err(EcsError::invalid(format!(
                "The value of tag '{}' is longer than 256 characters.",
                tag.key
            )));
        }
        if tag.key.to_ascii_lowercase().starts_with("aws:") {
            return Err(EcsError::invalid(format!(
                "Tag key '{}' uses the reserved prefix 'aws:'.",
                tag.key
            )));
        }
    }
    Ok(())
}

/// A new random resource id as ECS makes them (32 lowercase hex digits).
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// An id that sorts by creation time (32 hex digits, as ECS's task ids look). Records keyed
/// by it land at the end of the store's B-tree instead of on a random page each, so a batch
/// of new tasks dirties a few pages rather than one per task.
pub(crate) fn new_time_ordered_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
