//! Attribute actions: custom (and built-in) attributes of container instances.

use std::collections::BTreeMap;

use flotilla_api::requests::*;
use flotilla_api::responses::{AttributesResponse, ListItems, ListResponse};
use flotilla_model::{
    Attribute, ContainerInstance, ContainerInstanceStatus, EcsError, arn::last_segment,
};

use super::{Engine, RequestContext, contention, max_results, paginate};
use crate::db::{CAS_RETRIES_MAX, TxnBuilder};

/// ECS: up to 10 custom attributes per resource, and per call.
const CUSTOM_ATTRIBUTES_MAX: usize = 10;
const TARGET_TYPE: &str = "container-instance";

pub(crate) fn validate_attribute(attribute: &Attribute) -> Result<(), EcsError> {
    let name_ok = !attribute.name.is_empty()
        && attribute.name.len() <= 128
        && attribute
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_/.@".contains(c));
    if !name_ok {
        return Err(EcsError::invalid(format!(
            "Invalid attribute name '{}'. Names are 1 to 128 letters, numbers, hyphens, underscores, periods, at signs or forward slashes.",
            attribute.name
        )));
    }
    if let Some(value) = &attribute.value {
        let value_ok = !value.is_empty()
            && value.len() <= 128
            && value.trim() == value
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_/.@:$#!+%&*()[]{}<>=~|' ,".contains(c));
        if !value_ok {
            return Err(EcsError::invalid(format!(
                "Invalid value for attribute '{}'. Values are 1 to 128 characters without leading or trailing whitespace.",
                attribute.name
            )));
        }
    }
    if let Some(kind) = &attribute.target_type
        && kind != TARGET_TYPE
    {
        return Err(EcsError::invalid(format!(
            "Invalid targetType '{kind}'; accepted: container-instance."
        )));
    }
    Ok(())
}

/// Built-in attributes (`ecs.*`, and the agent's `com.amazonaws.ecs.capability.*`) do not
/// count against the custom attribute limit, as in ECS.
fn is_custom(name: &str) -> bool {
    !name.starts_with("ecs.") && !name.starts_with("com.amazonaws.ecs.")
}

impl Engine {
    /// Applies `change` to every targeted instance in one transaction: all or nothing.
    async fn change_attributes(
        &self,
        ctx: &RequestContext,
        request: AttributesRequest,
        put: bool,
    ) -> Result<AttributesResponse, EcsError> {
        if request.attributes.is_empty() || request.attributes.len() > CUSTOM_ATTRIBUTES_MAX {
            return Err(EcsError::invalid(format!(
                "attributes must hold 1 to {CUSTOM_ATTRIBUTES_MAX} attributes."
            )));
        }
        for attribute in &request.attributes {
            validate_attribute(attribute)?;
            if attribute.target_id.as_deref().is_none_or(str::is_empty) {
                return Err(EcsError::invalid(format!(
                    "targetId is required for attribute '{}' (a container instance ID or ARN).",
                    attribute.name
                )));
            }
        }
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let keys = ctx.keys();
        let mut by_target: BTreeMap<String, Vec<&Attribute>> = BTreeMap::new();
        for attribute in &request.attributes {
            let id = last_segment(attribute.target_id.as_deref().unwrap_or_default()).to_owned();
            by_target.entry(id).or_default().push(attribute);
        }
        for _ in 0..CAS_RETRIES_MAX {
            let mut txn = TxnBuilder::new();
            let mut echoed = Vec::new();
            for (id, attributes) in &by_target {
                let instance = self
                    .db
                    .get::<ContainerInstance>(&keys.instance(&cluster.value.name, id))
                    .await?
                    .filter(|i| i.value.status != ContainerInstanceStatus::Inactive)
                    .ok_or_else(|| {
                        EcsError::TargetNotFound(format!(
                            "Could not find container instance '{id}' in cluster '{}'.",
                            cluster.value.name
                        ))
                    })?;
                let mut changed = instance.value.clone();
                for attribute in attributes {
                    if put {
                        changed.put_attribute(&attribute.name, attribute.value.clone());
                    } else {
                        changed.attributes.retain(|a| a.name != attribute.name);
                    }
                    echoed.push(Attribute {
                        name: attribute.name.clone(),
                        value: attribute.value.clone(),
                        target_type: Some(TARGET_TYPE.to_owned()),
                        target_id: Some(changed.arn.clone()),
                    });
                }
                let custom = changed
                    .attributes
                    .iter()
                    .filter(|a| is_custom(&a.name))
                    .count();
                if put && custom > CUSTOM_ATTRIBUTES_MAX {
                    return Err(EcsError::AttributeLimitExceeded(format!(
                        "Container instance '{}' would have {custom} custom attributes; the limit is {CUSTOM_ATTRIBUTES_MAX}.",
                        changed.arn
                    )));
                }
                changed.version += 1;
                txn.replace(&instance, &changed);
            }
            if self.db.commit(txn.build()).await?.is_some() {
                return Ok(AttributesResponse { attributes: echoed });
            }
        }
        Err(contention())
    }

    pub(crate) async fn put_attributes(
        &self,
        ctx: &RequestContext,
        request: AttributesRequest,
    ) -> Result<AttributesResponse, EcsError> {
        self.change_attributes(ctx, request, true).await
    }

    pub(crate) async fn delete_attributes(
        &self,
        ctx: &RequestContext,
        request: AttributesRequest,
    ) -> Result<AttributesResponse, EcsError> {
        self.change_attributes(ctx, request, false).await
    }

    pub(crate) async fn list_attributes(
        &self,
        ctx: &RequestContext,
        request: ListAttributesRequest,
    ) -> Result<ListResponse<Attribute>, EcsError> {
        match required(&request.target_type, "targetType")? {
            TARGET_TYPE => {}
            other => {
                return Err(EcsError::invalid(format!(
                    "Invalid targetType '{other}'; accepted: container-instance."
                )));
            }
        }
        if request.attribute_value.is_some() && request.attribute_name.is_none() {
            return Err(EcsError::invalid(
                "attributeValue can only be used together with attributeName.",
            ));
        }
        let limit = max_results(request.max_results, 100)?;
        let cluster = self.active_cluster(ctx, request.cluster.as_deref()).await?;
        let instances = self
            .db
            .list::<ContainerInstance>(&ctx.keys().instances(&cluster.value.name))
            .await?;
        let mut all = Vec::new();
        for instance in instances
            .iter()
            .filter(|i| i.value.status != ContainerInstanceStatus::Inactive)
        {
            for attribute in &instance.value.attributes {
                if request
                    .attribute_name
                    .as_ref()
                    .is_some_and(|n| n != &attribute.name)
                {
                    continue;
                }
                if request.attribute_value.is_some() && request.attribute_value != attribute.value {
                    continue;
                }
                all.push(Attribute {
                    name: attribute.name.clone(),
                    value: attribute.value.clone(),
                    target_type: Some(TARGET_TYPE.to_owned()),
                    target_id: Some(instance.value.arn.clone()),
                });
            }
        }
        // Paginate by a stable text form of each entry.
        let texts: Vec<String> = all
            .iter()
            .map(|a| format!("{}|{}", a.target_id.as_deref().unwrap_or(""), a.name))
            .collect();
        let (page, next_token) =
            paginate(texts, request.next_token.as_deref(), limit, "attributes:")?;
        let attributes = all
            .into_iter()
            .filter(|a| {
                page.contains(&format!(
                    "{}|{}",
                    a.target_id.as_deref().unwrap_or(""),
                    a.name
                ))
            })
            .collect();
        Ok(ListResponse {
            items: ListItems::Attributes(attributes),
            next_token,
        })
    }
}
