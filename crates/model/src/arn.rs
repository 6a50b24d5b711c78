//! Amazon Resource Names in ECS's long format, and the identifiers inside them.
//!
//! `arn:aws:ecs:REGION:ACCOUNT:cluster/NAME`, `task/CLUSTER/ID`,
//! `container-instance/CLUSTER/ID`, `service/CLUSTER/NAME`, `task-definition/FAMILY:REV`,
//! `container/CLUSTER/TASK_ID/CONTAINER_ID`, `capacity-provider/NAME`.

use std::fmt;

/// The account and region a resource lives in: every resource is scoped by both.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub partition: String,
    pub region: String,
    pub account_id: String,
}

impl Scope {
    pub fn new(region: impl Into<String>, account_id: impl Into<String>) -> Self {
        Self {
            partition: "aws".to_owned(),
            region: region.into(),
            account_id: account_id.into(),
        }
    }

    fn arn(&self, resource: &str) -> String {
        format!(
            "arn:{}:ecs:{}:{}:{resource}",
            self.partition, self.region, self.account_id
        )
    }

    pub fn cluster_arn(&self, cluster_name: &str) -> String {
        self.arn(&format!("cluster/{cluster_name}"))
    }
    pub fn task_arn(&self, cluster_name: &str, task_id: &str) -> String {
        self.arn(&format!("task/{cluster_name}/{task_id}"))
    }
    pub fn container_instance_arn(&self, cluster_name: &str, instance_id: &str) -> String {
        self.arn(&format!("container-instance/{cluster_name}/{instance_id}"))
    }
    pub fn container_arn(&self, cluster_name: &str, task_id: &str, container_id: &str) -> String {
        self.arn(&format!(
            "container/{cluster_name}/{task_id}/{container_id}"
        ))
    }
    pub fn service_arn(&self, cluster_name: &str, service_name: &str) -> String {
        self.arn(&format!("service/{cluster_name}/{service_name}"))
    }
    pub fn task_definition_arn(&self, family: &str, revision: u32) -> String {
        self.arn(&format!("task-definition/{family}:{revision}"))
    }
    pub fn capacity_provider_arn(&self, name: &str) -> String {
        self.arn(&format!("capacity-provider/{name}"))
    }
}

/// A parsed ECS ARN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arn {
    pub partition: String,
    pub region: String,
    pub account_id: String,
    pub resource: ArnResource,
}

/// What an ECS ARN points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArnResource {
    Cluster {
        cluster_name: String,
    },
    Task {
        cluster_name: Option<String>,
        task_id: String,
    },
    ContainerInstance {
        cluster_name: Option<String>,
        instance_id: String,
    },
    Service {
        cluster_name: Option<String>,
        service_name: String,
    },
    TaskDefinition {
        family: String,
        revision: u32,
    },
    Container {
        cluster_name: Option<String>,
        task_id: Option<String>,
        container_id: String,
    },
    CapacityProvider {
        name: String,
    },
}

impl ArnResource {
    /// The resource-type word used in ARNs and in error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Cluster { .. } => "cluster",
            Self::Task { .. } => "task",
            Self::ContainerInstance { .. } => "container-instance",
            Self::Service { .. } => "service",
            Self::TaskDefinition { .. } => "task-definition",
            Self::Container { .. } => "container",
            Self::CapacityProvider { .. } => "capacity-provider",
        }
    }
}

/// Why a string is not an ECS ARN.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Invalid ARN '{arn}': {reason}")]
pub struct ArnError {
    pub arn: String,
    pub reason: &'static str,
}

impl Arn {
    pub fn parse(arn: &str) -> Result<Self, ArnError> {
        let fail = |reason| ArnError {
            arn: arn.to_owned(),
            reason,
        };
        let mut parts = arn.splitn(6, ':');
        let (
            Some("arn"),
            Some(partition),
            Some(service),
            Some(region),
            Some(account_id),
            Some(rest),
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return Err(fail("expected arn:PARTITION:ecs:REGION:ACCOUNT:RESOURCE"));
        };
        if service != "ecs" {
            return Err(fail("not an ecs ARN"));
        }
        let (kind, path) = rest
            .split_once('/')
            .ok_or_else(|| fail("missing resource path"))?;
        let segments: Vec<&str> = path.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(fail("empty resource path segment"));
        }
        let owned = |s: &str| s.to_owned();
        let resource = match (kind, segments.as_slice()) {
            ("cluster", [name]) => ArnResource::Cluster {
                cluster_name: owned(name),
            },
            ("task", [id]) => ArnResource::Task {
                cluster_name: None,
                task_id: owned(id),
            },
            ("task", [cluster, id]) => ArnResource::Task {
                cluster_name: Some(owned(cluster)),
                task_id: owned(id),
            },
            ("container-instance", [id]) => ArnResource::ContainerInstance {
                cluster_name: None,
                instance_id: owned(id),
            },
            ("container-instance", [cluster, id]) => ArnResource::ContainerInstance {
                cluster_name: Some(owned(cluster)),
                instance_id: owned(id),
            },
            ("service", [name]) => ArnResource::Service {
                cluster_name: None,
                service_name: owned(name),
            },
            ("service", [cluster, name]) => ArnResource::Service {
                cluster_name: Some(owned(cluster)),
                service_name: owned(name),
            },
            ("task-definition", [family_revision]) => {
                let (family, revision) = family_revision
                    .rsplit_once(':')
                    .ok_or_else(|| fail("expected FAMILY:REVISION"))?;
                let revision = revision
                    .parse()
                    .map_err(|_| fail("revision is not a number"))?;
                ArnResource::TaskDefinition {
                    family: owned(family),
                    revision,
                }
            }
            ("container", [id]) => ArnResource::Container {
                cluster_name: None,
                task_id: None,
                container_id: owned(id),
            },
            ("container", [cluster, task, id]) => ArnResource::Container {
                cluster_name: Some(owned(cluster)),
                task_id: Some(owned(task)),
                container_id: owned(id),
            },
            ("capacity-provider", [name]) => ArnResource::CapacityProvider { name: owned(name) },
            _ => return Err(fail("unknown ECS resource type")),
        };
        Ok(Arn {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account_id: account_id.to_owned(),
            resource,
        })
    }
}

impl fmt::Display for Arn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = Scope {
            partition: self.partition.clone(),
            region: self.region.clone(),
            account_id: self.account_id.clone(),
        };
        let text = match &self.resource {
            ArnResource::Cluster { cluster_name } => scope.cluster_arn(cluster_name),
            ArnResource::Task {
                cluster_name: Some(c),
                task_id,
            } => scope.task_arn(c, task_id),
            ArnResource::Task {
                cluster_name: None,
                task_id,
            } => scope.arn(&format!("task/{task_id}")),
            ArnResource::ContainerInstance {
                cluster_name: Some(c),
                instance_id,
            } => scope.container_instance_arn(c, instance_id),
            ArnResource::ContainerInstance {
                cluster_name: None,
                instance_id,
            } => scope.arn(&format!("container-instance/{instance_id}")),
            ArnResource::Service {
                cluster_name: Some(c),
                service_name,
            } => scope.service_arn(c, service_name),
            ArnResource::Service {
                cluster_name: None,
                service_name,
            } => scope.arn(&format!("service/{service_name}")),
            ArnResource::TaskDefinition { family, revision } => {
                scope.task_definition_arn(family, *revision)
            }
            ArnResource::Container {
                cluster_name: Some(c),
                task_id: Some(t),
                container_id,
            } => scope.container_arn(c, t, container_id),
            ArnResource::Container { container_id, .. } => {
                scope.arn(&format!("container/{container_id}"))
            }
            ArnResource::CapacityProvider { name } => scope.capacity_provider_arn(name),
        };
        f.write_str(&text)
    }
}

/// The last path segment of an ARN, or the string itself if it is not an ARN.
/// ECS accepts either an ID/name or a full ARN wherever it takes a reference.
pub fn last_segment(reference: &str) -> &str {
    if reference.starts_with("arn:") {
        reference.rsplit('/').next().unwrap_or(reference)
    } else {
        reference
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_long_format_arns() {
        let scope = Scope::new("eu-west-1", "123456789012");
        let task = scope.task_arn("prod", "0f1e2d");
        assert_eq!(task, "arn:aws:ecs:eu-west-1:123456789012:task/prod/0f1e2d");
        let parsed = Arn::parse(&task).unwrap();
        assert_eq!(
            parsed.resource,
            ArnResource::Task {
                cluster_name: Some("prod".into()),
                task_id: "0f1e2d".into()
            }
        );
        assert_eq!(parsed.to_string(), task);
        let td = Arn::parse(&scope.task_definition_arn("web", 7)).unwrap();
        assert_eq!(
            td.resource,
            ArnResource::TaskDefinition {
                family: "web".into(),
                revision: 7
            }
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(Arn::parse("arn:aws:s3:::bucket").is_err());
        assert!(Arn::parse("cluster/x").is_err());
        assert!(Arn::parse("arn:aws:ecs:r:a:task/").is_err());
        assert!(Arn::parse("arn:aws:ecs:r:a:task-definition/web:x").is_err());
    }
}
