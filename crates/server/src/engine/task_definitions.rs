//! Task definition actions: register (families and revisions), describe, list, deregister, delete.

use flotilla_api::requests::*;
use flotilla_api::responses::{
    DeleteTaskDefinitionsResponse, Failure, ListItems, ListResponse, TaskDefinitionResponse,
    TaskDefinitionView,
};
use flotilla_model::task_definition::TaskDefinitionStatus;
use flotilla_model::validate::normalize_task_definition;
use flotilla_model::{Arn, ArnResource, EcsError, TaskDefinition};
use serde::{Deserialize, Serialize};

use super::{Engine, RequestContext, contention, max_results, paginate, validate_tags};
use crate::db::{CAS_RETRIES_MAX, TxnBuilder, Versioned};

/// Per-family bookkeeping: the last revision handed out (revisions are never reused).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Family {
    pub latest_revision: u32,
}

const TASK_DEFINITIONS_PER_DELETE_MAX: usize = 10;

/// A parsed task definition reference: `family`, `family:revision` or an ARN.
enum Reference {
    Family(String),
    Revision(String, u32),
}

fn parse_reference(reference: &str) -> Result<Reference, EcsError> {
    if reference.starts_with("arn:") {
        let arn = Arn::parse(reference).map_err(|e| EcsError::client(e.to_string()))?;
        return match arn.resource {
            ArnResource::TaskDefinition { family, revision } => {
                Ok(Reference::Revision(family, revision))
            }
            _ => Err(EcsError::client(format!(
                "'{reference}' is not a task definition ARN."
            ))),
        };
    }
    match reference.rsplit_once(':') {
        Some((family, revision)) => {
            let revision = revision.parse::<u32>().map_err(|_| {
                EcsError::client(format!(
                    "Invalid revision in '{reference}'. Use family, family:revision or a task definition ARN."
                ))
            })?;
            Ok(Reference::Revision(family.to_owned(), revision))
        }
        None => Ok(Reference::Family(reference.to_owned())),
    }
}

impl Engine {
    /// Resolves a reference to a stored revision. A bare family means its latest ACTIVE revision.
    pub(crate) async fn find_task_definition(
        &self,
        ctx: &RequestContext,
        reference: &str,
    ) -> Result<Option<Versioned<TaskDefinition>>, EcsError> {
        let keys = ctx.keys();
        match parse_reference(reference)? {
            Reference::Revision(family, revision) => {
                self.db.get(&keys.task_definition(&family, revision)).await
            }
            Reference::Family(family) => {
                let revisions = self
                    .db
                    .list::<TaskDefinition>(&keys.task_definitions_of(&family))
                    .await?;
                Ok(revisions
                    .into_iter()
                    .rev()
                    .find(|td| td.value.status == TaskDefinitionStatus::Active))
            }
        }
    }

    pub(crate) async fn task_definition_or_error(
        &self,
        ctx: &RequestContext,
        reference: &str,
    ) -> Result<Versioned<TaskDefinition>, EcsError> {
        self.find_task_definition(ctx, reference)
            .await?
            .ok_or_else(|| EcsError::client("Unable to describe task definition."))
    }

    pub(crate) async fn register_task_definition(
        &self,
        ctx: &RequestContext,
        request: RegisterTaskDefinitionRequest,
    ) -> Result<TaskDefinitionResponse, EcsError> {
        validate_tags(&request.tags)?;
        let family_name = request.task_definition.family.clone();
        let normalized = normalize_task_definition(request.task_definition)?;
        let keys = ctx.keys();
        let family_key = keys.family(&family_name);
        for _ in 0..CAS_RETRIES_MAX {
            let family = self.db.get::<Family>(&family_key).await?;
            let revision = family.as_ref().map_or(0, |f| f.value.latest_revision) + 1;
            let task_definition = TaskDefinition {
                task_definition_arn: ctx.scope.task_definition_arn(&family_name, revision),
                family: family_name.clone(),
                revision,
                status: TaskDefinitionStatus::Active,
                spec: normalized.spec.clone(),
                compatibilities: normalized.compatibilities.clone(),
                requires_attributes: Vec::new(),
                registered_at: ctx.now,
                registered_by: Some(ctx.principal_arn.clone()),
                deregistered_at: None,
                delete_requested_at: None,
                tags: request.tags.clone(),
            };
            let td_key = keys.task_definition(&family_name, revision);
            let mut txn = TxnBuilder::new();
            txn.expect(&family_key, family.as_ref().map_or(0, |f| f.mod_revision))
                .put(
                    &family_key,
                    &Family {
                        latest_revision: revision,
                    },
                )
                .expect(&td_key, 0)
                .put(&td_key, &task_definition);
            if self.db.commit(txn.build()).await?.is_some() {
                let tags = Some(task_definition.tags.clone());
                return Ok(TaskDefinitionResponse {
                    task_definition: TaskDefinitionView(task_definition),
                    tags,
                });
            }
        }
        Err(contention())
    }

    pub(crate) async fn describe_task_definition(
        &self,
        ctx: &RequestContext,
        request: DescribeTaskDefinitionRequest,
    ) -> Result<TaskDefinitionResponse, EcsError> {
        let reference = required(&request.task_definition, "taskDefinition")?;
        let include_tags = parse_tags_include(&request.include)?;
        let td = self.task_definition_or_error(ctx, reference).await?;
        let tags = include_tags.then(|| td.value.tags.clone());
        Ok(TaskDefinitionResponse {
            task_definition: TaskDefinitionView(td.value),
            tags,
        })
    }

    pub(crate) async fn list_task_definitions(
        &self,
        ctx: &RequestContext,
        request: ListTaskDefinitionsRequest,
    ) -> Result<ListResponse<String>, EcsError> {
        let limit = max_results(request.max_results, super::LIST_RESULTS_MAX)?;
        let status = parse_status(request.status.as_deref())?;
        let descending = match request.sort.as_deref() {
            None | Some("ASC") => false,
            Some("DESC") => true,
            Some(other) => {
                return Err(EcsError::invalid(format!(
                    "Invalid sort '{other}'; accepted: ASC, DESC."
                )));
            }
        };
        let keys = ctx.keys();
        let prefix = match request.family_prefix.as_deref() {
            Some(family) if !family.is_empty() => keys.task_definitions_of(family),
            _ => keys.task_definitions(),
        };
        let all = self.db.list::<TaskDefinition>(&prefix).await?;
        // Keys sort by family then zero-padded revision, which is ECS's order.
        let mut arns: Vec<String> = all
            .into_iter()
            .filter(|td| td.value.status == status)
            .map(|td| td.value.task_definition_arn)
            .collect();
        if descending {
            arns.reverse();
        }
        let (arns, next_token) = paginate(arns, request.next_token.as_deref(), limit, "taskdefs:")?;
        Ok(ListResponse {
            items: ListItems::TaskDefinitionArns(arns),
            next_token,
        })
    }

    pub(crate) async fn list_task_definition_families(
        &self,
        ctx: &RequestContext,
        request: ListTaskDefinitionFamiliesRequest,
    ) -> Result<ListResponse<String>, EcsError> {
        let limit = max_results(request.max_results, super::LIST_RESULTS_MAX)?;
        let wanted = match request.status.as_deref() {
            None | Some("ACTIVE") => Some(true),
            Some("INACTIVE") => Some(false),
            Some("ALL") => None,
            Some(other) => {
                return Err(EcsError::invalid(format!(
                    "Invalid status '{other}'; accepted: ACTIVE, INACTIVE, ALL."
                )));
            }
        };
        let prefix = request.family_prefix.unwrap_or_default();
        let all = self
            .db
            .list::<TaskDefinition>(&ctx.keys().task_definitions())
            .await?;
        let mut families: std::collections::BTreeMap<String, bool> =
            std::collections::BTreeMap::new();
        for td in all {
            if td.value.family.starts_with(&prefix) {
                let active = families.entry(td.value.family.clone()).or_insert(false);
                *active |= td.value.status == TaskDefinitionStatus::Active;
            }
        }
        let names: Vec<String> = families
            .into_iter()
            .filter(|(_, active)| wanted.is_none_or(|w| w == *active))
            .map(|(name, _)| name)
            .collect();
        let (names, next_token) =
            paginate(names, request.next_token.as_deref(), limit, "families:")?;
        Ok(ListResponse {
            items: ListItems::Families(names),
            next_token,
        })
    }

    pub(crate) async fn deregister_task_definition(
        &self,
        ctx: &RequestContext,
        request: DeregisterTaskDefinitionRequest,
    ) -> Result<TaskDefinitionResponse, EcsError> {
        let reference = required(&request.task_definition, "taskDefinition")?;
        if matches!(parse_reference(reference)?, Reference::Family(_)) {
            return Err(EcsError::client(
                "A revision is required: use family:revision or the full task definition ARN.",
            ));
        }
        for _ in 0..CAS_RETRIES_MAX {
            let td = self.task_definition_or_error(ctx, reference).await?;
            if td.value.status != TaskDefinitionStatus::Active {
                return Ok(TaskDefinitionResponse {
                    task_definition: TaskDefinitionView(td.value),
                    tags: None,
                });
            }
            let mut updated = td.value.clone();
            updated.status = TaskDefinitionStatus::Inactive;
            updated.deregistered_at = Some(ctx.now);
            if self.db.replace_one(&td, &updated).await? {
                return Ok(TaskDefinitionResponse {
                    task_definition: TaskDefinitionView(updated),
                    tags: None,
                });
            }
        }
        Err(contention())
    }

    pub(crate) async fn delete_task_definitions(
        &self,
        ctx: &RequestContext,
        request: DeleteTaskDefinitionsRequest,
    ) -> Result<DeleteTaskDefinitionsResponse, EcsError> {
        if request.task_definitions.is_empty()
            || request.task_definitions.len() > TASK_DEFINITIONS_PER_DELETE_MAX
        {
            return Err(EcsError::invalid(format!(
                "taskDefinitions must name 1 to {TASK_DEFINITIONS_PER_DELETE_MAX} task definition revisions."
            )));
        }
        let mut deleted = Vec::new();
        let mut failures = Vec::new();
        for reference in &request.task_definitions {
            if !matches!(parse_reference(reference), Ok(Reference::Revision(..))) {
                failures.push(Failure {
                    arn: Some(reference.clone()),
                    reason: "The specified task definition identifier is invalid. Specify a valid name or ARN and try again.".into(),
                    detail: None,
                });
                continue;
            }
            let mut done = false;
            for _ in 0..CAS_RETRIES_MAX {
                let Some(td) = self.find_task_definition(ctx, reference).await? else {
                    failures.push(Failure::new(reference.clone(), "The specified task definition does not exist. Specify a valid account, family, revision and try again."));
                    done = true;
                    break;
                };
                match td.value.status {
                    TaskDefinitionStatus::Active => {
                        failures.push(Failure::new(
                            td.value.task_definition_arn.clone(),
                            "The specified task definition is still in ACTIVE status. Please deregister the target and try again.",
                        ));
                        done = true;
                        break;
                    }
                    TaskDefinitionStatus::DeleteInProgress => {
                        deleted.push(TaskDefinitionView(td.value));
                        done = true;
                        break;
                    }
                    TaskDefinitionStatus::Inactive => {}
                }
                let mut updated = td.value.clone();
                updated.status = TaskDefinitionStatus::DeleteInProgress;
                updated.delete_requested_at = Some(ctx.now);
                if self.db.replace_one(&td, &updated).await? {
                    deleted.push(TaskDefinitionView(updated));
                    done = true;
                    break;
                }
            }
            if !done {
                return Err(contention());
            }
        }
        Ok(DeleteTaskDefinitionsResponse {
            task_definitions: deleted,
            failures,
        })
    }
}

fn parse_status(status: Option<&str>) -> Result<TaskDefinitionStatus, EcsError> {
    match status {
        None | Some("ACTIVE") => Ok(TaskDefinitionStatus::Active),
        Some("INACTIVE") => Ok(TaskDefinitionStatus::Inactive),
        Some("DELETE_IN_PROGRESS") => Ok(TaskDefinitionStatus::DeleteInProgress),
        Some(other) => Err(EcsError::invalid(format!(
            "Invalid status '{other}'; accepted: ACTIVE, INACTIVE, DELETE_IN_PROGRESS."
        ))),
    }
}

/// `include` for task definitions and tasks: only TAGS exists.
pub(crate) fn parse_tags_include(include: &[String]) -> Result<bool, EcsError> {
    let mut tags = false;
    for item in include {
        if item == "TAGS" {
            tags = true;
        } else {
            return Err(EcsError::invalid(format!(
                "Invalid include value '{item}'; accepted: TAGS."
            )));
        }
    }
    Ok(tags)
}
