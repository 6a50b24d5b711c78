//! Tag actions on every taggable resource, addressed by ARN.

use flotilla_api::requests::*;
use flotilla_api::responses::{Empty, TagsResponse};
use flotilla_model::{
    Arn, ArnResource, Cluster, ClusterStatus, ContainerInstance, EcsError, Tag, Task,
    TaskDefinition,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Engine, RequestContext, contention, validate_tags};
use crate::db::CAS_RETRIES_MAX;

/// Records that carry tags.
trait Tagged: Serialize + DeserializeOwned + Clone {
    fn tags_mut(&mut self) -> &mut Vec<Tag>;
}

impl Tagged for Cluster {
    fn tags_mut(&mut self) -> &mut Vec<Tag> {
        &mut self.tags
    }
}
impl Tagged for Task {
    fn tags_mut(&mut self) -> &mut Vec<Tag> {
        &mut self.tags
    }
}
impl Tagged for ContainerInstance {
    fn tags_mut(&mut self) -> &mut Vec<Tag> {
        &mut self.tags
    }
}
impl Tagged for flotilla_reconcile::Service {
    fn tags_mut(&mut self) -> &mut Vec<Tag> {
        &mut self.tags
    }
}
impl Tagged for TaskDefinition {
    fn tags_mut(&mut self) -> &mut Vec<Tag> {
        &mut self.tags
    }
}

enum Target {
    Cluster(String),
    Task(String),
    Instance(String),
    TaskDefinition(String),
    Service(String),
}

fn not_found(arn: &str) -> EcsError {
    EcsError::ResourceNotFound(format!(
        "The specified resource '{arn}' could not be found."
    ))
}

fn target(ctx: &RequestContext, arn_text: &str) -> Result<Target, EcsError> {
    let arn = Arn::parse(arn_text).map_err(|e| EcsError::invalid(e.to_string()))?;
    if arn.region != ctx.scope.region || arn.account_id != ctx.scope.account_id {
        return Err(not_found(arn_text));
    }
    let keys = ctx.keys();
    match arn.resource {
        ArnResource::Cluster { cluster_name } => Ok(Target::Cluster(keys.cluster(&cluster_name))),
        ArnResource::Task {
            cluster_name: Some(cluster),
            task_id,
        } => Ok(Target::Task(keys.task(&cluster, &task_id))),
        ArnResource::ContainerInstance {
            cluster_name: Some(cluster),
            instance_id,
        } => Ok(Target::Instance(keys.instance(&cluster, &instance_id))),
        ArnResource::TaskDefinition { family, revision } => Ok(Target::TaskDefinition(
            keys.task_definition(&family, revision),
        )),
        ArnResource::Service {
            cluster_name: Some(cluster),
            service_name,
        } => Ok(Target::Service(keys.service(&cluster, &service_name))),
        ArnResource::Service { .. } => Err(EcsError::ServiceNotFound),
        _ => Err(EcsError::invalid(format!(
            "Resources of type '{arn_text}' cannot be tagged."
        ))),
    }
}

impl Engine {
    async fn modify_tags<T: Tagged>(
        &self,
        key: &str,
        arn: &str,
        is_cluster: bool,
        change: &(dyn Fn(&mut Vec<Tag>) -> Result<(), EcsError> + Sync),
    ) -> Result<(), EcsError> {
        for _ in 0..CAS_RETRIES_MAX {
            let Some(record) = self.db.get::<T>(key).await? else {
                return Err(if is_cluster {
                    EcsError::ClusterNotFound
                } else {
                    not_found(arn)
                });
            };
            let mut changed = record.value.clone();
            change(changed.tags_mut())?;
            if self.db.replace_one(&record, &changed).await? {
                return Ok(());
            }
        }
        Err(contention())
    }

    async fn modify_target(
        &self,
        ctx: &RequestContext,
        arn: &str,
        change: &(dyn Fn(&mut Vec<Tag>) -> Result<(), EcsError> + Sync),
    ) -> Result<(), EcsError> {
        match target(ctx, arn)? {
            Target::Cluster(key) => {
                if let Some(cluster) = self.db.get::<Cluster>(&key).await?
                    && cluster.value.status == ClusterStatus::Inactive
                {
                    return Err(EcsError::ClusterNotFound);
                }
                self.modify_tags::<Cluster>(&key, arn, true, change).await
            }
            Target::Task(key) => self.modify_tags::<Task>(&key, arn, false, change).await,
            Target::Instance(key) => {
                self.modify_tags::<ContainerInstance>(&key, arn, false, change)
                    .await
            }
            Target::TaskDefinition(key) => {
                self.modify_tags::<TaskDefinition>(&key, arn, false, change)
                    .await
            }
            Target::Service(key) => {
                match self.db.get::<flotilla_reconcile::Service>(&key).await? {
                    Some(s) if s.value.status != flotilla_reconcile::ServiceStatus::Inactive => {}
                    _ => return Err(EcsError::ServiceNotFound),
                }
                self.modify_tags::<flotilla_reconcile::Service>(&key, arn, false, change)
                    .await
            }
        }
    }

    pub(crate) async fn tag_resource(
        &self,
        ctx: &RequestContext,
        request: TagResourceRequest,
    ) -> Result<Empty, EcsError> {
        let arn = required(&request.resource_arn, "resourceArn")?;
        let Some(tags) = request.tags.filter(|t| !t.is_empty()) else {
            return Err(EcsError::invalid(
                "tags is required and must hold at least one tag.",
            ));
        };
        validate_tags(&tags)?;
        self.modify_target(ctx, arn, &|existing| {
            flotilla_model::merge_tags(existing, &tags);
            validate_tags(existing)
        })
        .await?;
        Ok(Empty {})
    }

    pub(crate) async fn untag_resource(
        &self,
        ctx: &RequestContext,
        request: UntagResourceRequest,
    ) -> Result<Empty, EcsError> {
        let arn = required(&request.resource_arn, "resourceArn")?;
        let Some(keys) = request.tag_keys.filter(|k| !k.is_empty()) else {
            return Err(EcsError::invalid(
                "tagKeys is required and must hold at least one key.",
            ));
        };
        self.modify_target(ctx, arn, &|existing| {
            existing.retain(|t| !keys.contains(&t.key));
            Ok(())
        })
        .await?;
        Ok(Empty {})
    }

    pub(crate) async fn list_tags_for_resource(
        &self,
        ctx: &RequestContext,
        request: ListTagsForResourceRequest,
    ) -> Result<TagsResponse, EcsError> {
        let arn = required(&request.resource_arn, "resourceArn")?;
        let tags = match target(ctx, arn)? {
            Target::Cluster(key) => match self.db.get::<Cluster>(&key).await? {
                Some(c) if c.value.status != ClusterStatus::Inactive => c.value.tags,
                _ => return Err(EcsError::ClusterNotFound),
            },
            Target::Task(key) => {
                self.db
                    .get::<Task>(&key)
                    .await?
                    .ok_or_else(|| not_found(arn))?
                    .value
                    .tags
            }
            Target::Instance(key) => {
                self.db
                    .get::<ContainerInstance>(&key)
                    .await?
                    .ok_or_else(|| not_found(arn))?
                    .value
                    .tags
            }
            Target::TaskDefinition(key) => {
                self.db
                    .get::<TaskDefinition>(&key)
                    .await?
                    .ok_or_else(|| not_found(arn))?
                    .value
                    .tags
            }
            Target::Service(key) => {
                self.db
                    .get::<flotilla_reconcile::Service>(&key)
                    .await?
                    .ok_or(EcsError::ServiceNotFound)?
                    .value
                    .tags
            }
        };
        Ok(TagsResponse { tags })
    }
}
