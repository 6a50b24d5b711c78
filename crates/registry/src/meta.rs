//! The registry's metadata in the state store: records, key layout and typed helpers.
//!
//! Keys live under their own top-level `ecr/` prefix, not the control plane's `r/`, so the
//! ECS cache (which tells the agents' long-polls of host changes) and janitor never see them:
//!
//! ```text
//! ecr/repo/{account}/{region}/{name}                         RepositoryRecord
//! ecr/image/{account}/{region}/{repo}#{digest}               ImageRecord
//! ecr/tag/{account}/{region}/{repo}#{tag}                    TagRecord
//! ecr/link/{account}/{region}/{repo}#{digest}                LinkRecord: blob usable in repo
//! ecr/referrer/{account}/{region}/{repo}#{subject}#{digest}  Descriptor (referrers index)
//! ecr/upload/{id}                                            UploadRecord
//! ecr/blob/{digest}                                          BlobRecord (shared by all repos)
//! ```
//!
//! `#` cannot occur in repository names, tags or digests, so `{repo}#` is a prefix of exactly
//! one repository's keys.

use std::sync::Arc;

use flotilla_store::{Compare, Op, RangeRequest, Revision, Store, Txn, TxnOutcome};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::blobs::PartRef;
use crate::error::RegistryError;

/// Keys read per store call when listing.
const LIST_PAGE: usize = 1000;

/// Which account and region a request acts in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub account_id: String,
    pub region: String,
}

impl Scope {
    pub fn new(account_id: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            account_id: account_id.into(),
            region: region.into(),
        }
    }

    fn part(&self) -> String {
        format!("{}/{}", self.account_id, self.region)
    }

    pub fn repositories(&self) -> String {
        format!("ecr/repo/{}/", self.part())
    }
    pub fn repository(&self, name: &str) -> String {
        format!("ecr/repo/{}/{name}", self.part())
    }
    pub fn images(&self, repo: &str) -> String {
        format!("ecr/image/{}/{repo}#", self.part())
    }
    pub fn image(&self, repo: &str, digest: &str) -> String {
        format!("ecr/image/{}/{repo}#{digest}", self.part())
    }
    pub fn tags(&self, repo: &str) -> String {
        format!("ecr/tag/{}/{repo}#", self.part())
    }
    pub fn tag(&self, repo: &str, tag: &str) -> String {
        format!("ecr/tag/{}/{repo}#{tag}", self.part())
    }
    pub fn links(&self, repo: &str) -> String {
        format!("ecr/link/{}/{repo}#", self.part())
    }
    pub fn link(&self, repo: &str, digest: &str) -> String {
        format!("ecr/link/{}/{repo}#{digest}", self.part())
    }
    pub fn referrers_prefix(&self, repo: &str) -> String {
        format!("ecr/referrer/{}/{repo}#", self.part())
    }
    pub fn referrers(&self, repo: &str, subject: &str) -> String {
        format!("ecr/referrer/{}/{repo}#{subject}#", self.part())
    }
    pub fn referrer(&self, repo: &str, subject: &str, digest: &str) -> String {
        format!("ecr/referrer/{}/{repo}#{subject}#{digest}", self.part())
    }
}

pub const UPLOADS: &str = "ecr/upload/";
pub const BLOBS: &str = "ecr/blob/";
pub const IMAGES_ALL: &str = "ecr/image/";
pub const LINKS_ALL: &str = "ecr/link/";

pub fn upload_key(id: &str) -> String {
    format!("{UPLOADS}{id}")
}
pub fn blob_key(digest: &str) -> String {
    format!("{BLOBS}{digest}")
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceTag {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryRecord {
    pub name: String,
    pub created_at_ms: i64,
    /// `MUTABLE` or `IMMUTABLE`.
    pub image_tag_mutability: String,
    pub scan_on_push: bool,
    pub encryption_type: String,
    #[serde(default)]
    pub kms_key: Option<String>,
    #[serde(default)]
    pub tags: Vec<ResourceTag>,
    #[serde(default)]
    pub policy_text: Option<String>,
    #[serde(default)]
    pub lifecycle_policy_text: Option<String>,
    #[serde(default)]
    pub lifecycle_evaluated_at_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    pub digest: String,
    pub media_type: String,
    #[serde(default)]
    pub artifact_type: Option<String>,
    pub manifest: PartRef,
    /// ECR's imageSizeInBytes: the layers' and config's sizes plus the manifest's.
    pub size_bytes: u64,
    pub pushed_at_ms: i64,
    /// Blobs the manifest names (config and layers); they stay stored while it exists.
    #[serde(default)]
    pub blobs: Vec<String>,
    /// Manifests an index names.
    #[serde(default)]
    pub children: Vec<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub annotations: Option<serde_json::Value>,
    #[serde(default)]
    pub last_pulled_at_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkRecord {}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadRecord {
    pub id: String,
    pub scope: (String, String),
    pub repo: String,
    pub parts: Vec<PartRef>,
    pub size: u64,
    pub started_at_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobRecord {
    pub size: u64,
    pub parts: Vec<PartRef>,
    pub created_at_ms: i64,
    /// Last time a manifest naming this blob was stored; rewriting it is what makes garbage
    /// collection's delete of the record conflict with a concurrent manifest push.
    #[serde(default)]
    pub referenced_at_ms: i64,
}

/// A record with the revision to write it back with.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub key: String,
    pub value: T,
    pub mod_revision: Revision,
}

/// Typed access to the state store.
#[derive(Clone)]
pub struct Meta {
    pub store: Arc<dyn Store>,
}

fn store_error(error: flotilla_store::StoreError) -> RegistryError {
    RegistryError::Internal(format!("state store: {error}"))
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

impl Meta {
    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, RegistryError> {
        let Some(kv) = self.store.get(key).await.map_err(store_error)? else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&kv.value)
            .map_err(|e| RegistryError::Internal(format!("unreadable record {key}: {e}")))?;
        Ok(Some(Versioned {
            key: kv.key,
            value,
            mod_revision: kv.mod_revision,
        }))
    }

    /// One page of records under `prefix` after `start_after`, and whether more follow.
    pub async fn page<T: DeserializeOwned>(
        &self,
        prefix: &str,
        start_after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<Versioned<T>>, bool), RegistryError> {
        let response = self
            .store
            .range(RangeRequest {
                prefix: prefix.to_owned(),
                start_after,
                limit,
            })
            .await
            .map_err(store_error)?;
        let mut out = Vec::with_capacity(response.kvs.len());
        for kv in response.kvs {
            let value = serde_json::from_slice(&kv.value).map_err(|e| {
                RegistryError::Internal(format!("unreadable record {}: {e}", kv.key))
            })?;
            out.push(Versioned {
                key: kv.key,
                value,
                mod_revision: kv.mod_revision,
            });
        }
        Ok((out, response.more))
    }

    /// Every record under `prefix`, read a page at a time.
    pub async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<Versioned<T>>, RegistryError> {
        let mut all = Vec::new();
        let mut start_after = None;
        loop {
            let (page, more) = self.page::<T>(prefix, start_after, LIST_PAGE).await?;
            start_after = page.last().map(|v| v.key.clone());
            all.extend(page);
            if !more || start_after.is_none() {
                return Ok(all);
            }
        }
    }

    /// Commits `ops` if every compare holds; `Ok(false)` on a conflict.
    pub async fn commit(
        &self,
        compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> Result<bool, RegistryError> {
        let outcome = self
            .store
            .txn(Txn { compares, ops })
            .await
            .map_err(store_error)?;
        Ok(matches!(outcome, TxnOutcome::Committed { .. }))
    }
}

pub fn put<T: Serialize>(key: impl Into<String>, value: &T) -> Op {
    Op::Put {
        key: key.into(),
        value: encode(value),
    }
}

pub fn delete(key: impl Into<String>) -> Op {
    Op::Delete { key: key.into() }
}

pub fn unchanged(key: impl Into<String>, mod_revision: Revision) -> Compare {
    Compare::ModRevision {
        key: key.into(),
        mod_revision,
    }
}

/// The last segment of a `{repo}#{rest}` key.
pub fn key_suffix<'a>(key: &'a str, prefix: &str) -> &'a str {
    key.strip_prefix(prefix).unwrap_or(key)
}
