//! The registry's core operations, shared by the OCI handlers and the ECR API: repositories,
//! blob uploads (chunked, resumable, mounted), manifests and tags, referrers, deletes,
//! lifecycle policies and garbage collection. Every metadata write is a compare-and-swap
//! transaction on the state store; blob bytes are written to the object store before the
//! record that makes them visible.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flotilla_store::Op;
use futures::{Stream, StreamExt};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::blobs::{BlobError, Blobs, PartRef};
use crate::digest::Digest;
use crate::error::RegistryError;
use crate::lifecycle;
use crate::meta::{
    self, BlobRecord, ImageRecord, LinkRecord, Meta, RepositoryRecord, Scope, TagRecord,
    UploadRecord, Versioned, delete, put, unchanged,
};

/// The largest blob accepted.
pub const BLOB_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;
/// The largest manifest accepted (as distribution's default).
pub const MANIFEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How many times a read-modify-write is retried when another writer got there first.
pub const CAS_RETRIES_MAX: usize = 16;
/// Store operations per transaction when deleting many keys.
const DELETE_BATCH: usize = 500;

pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A stored manifest as read back.
#[derive(Debug)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// An image with its tags, for listings.
#[derive(Clone, Debug)]
pub struct ImageView {
    pub record: ImageRecord,
    pub tags: Vec<String>,
}

/// Per-upload state kept in memory: a lock that serialises an upload's chunks, and the
/// running hash of its bytes (lost on restart; then the parts are hashed again at the end).
#[derive(Default)]
struct UploadState {
    hasher: Option<(u64, Sha256)>,
}

/// The registry core.
#[derive(Clone)]
pub struct Engine {
    pub meta: Meta,
    pub blobs: Blobs,
    uploads: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<UploadState>>>>>,
}

fn conflict() -> RegistryError {
    RegistryError::Internal("too many concurrent writers; try again".into())
}

/// Validates a repository name as ECR does (`[a-z0-9]` components joined by `._-`, `/`).
pub fn validate_repository_name(name: &str) -> Result<(), RegistryError> {
    let pattern = regex_repo();
    if name.len() < 2 || name.len() > 256 || !pattern.is_match(name) {
        return Err(RegistryError::NameInvalid(format!(
            "Invalid repository name '{name}': it must be 2 to 256 characters of lowercase letters, digits and ._-/ , each path component starting and ending with a letter or digit."
        )));
    }
    Ok(())
}

fn regex_repo() -> &'static regex::Regex {
    static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        regex::Regex::new(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")
            .expect("valid regex")
    })
}

/// Validates a tag (OCI's grammar).
pub fn validate_tag(tag: &str) -> Result<(), RegistryError> {
    static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let pattern = PATTERN.get_or_init(|| {
        regex::Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").expect("valid regex")
    });
    if pattern.is_match(tag) {
        Ok(())
    } else {
        Err(RegistryError::TagInvalid(format!("invalid tag '{tag}'")))
    }
}

fn descriptor_digests(value: &Value, field: &str) -> Result<Vec<String>, RegistryError> {
    let Some(list) = value.get(field) else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| RegistryError::ManifestInvalid(format!("'{field}' must be an array")))?;
    list.iter().map(|d| descriptor_digest(d, field)).collect()
}

fn descriptor_digest(descriptor: &Value, field: &str) -> Result<String, RegistryError> {
    descriptor
        .get("digest")
        .and_then(Value::as_str)
        .and_then(Digest::parse)
        .map(String::from)
        .ok_or_else(|| {
            RegistryError::ManifestInvalid(format!("a descriptor in '{field}' has no valid digest"))
        })
}

fn descriptor_size(descriptor: &Value) -> u64 {
    descriptor.get("size").and_then(Value::as_u64).unwrap_or(0)
}

impl Engine {
    pub fn new(meta: Meta, blobs: Blobs) -> Self {
        Self {
            meta,
            blobs,
            uploads: Arc::default(),
        }
    }

    // ---- repositories ----

    pub async fn repository(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<Versioned<RepositoryRecord>, RegistryError> {
        self.meta
            .get(&scope.repository(name))
            .await?
            .ok_or_else(|| RegistryError::RepositoryNotFound(name.to_owned()))
    }

    pub async fn create_repository(
        &self,
        scope: &Scope,
        record: RepositoryRecord,
    ) -> Result<RepositoryRecord, RegistryError> {
        validate_repository_name(&record.name)?;
        let key = scope.repository(&record.name);
        if self
            .meta
            .commit(vec![unchanged(&key, 0)], vec![put(&key, &record)])
            .await?
        {
            Ok(record)
        } else {
            Err(RegistryError::RepositoryAlreadyExists(record.name))
        }
    }

    pub async fn repositories(
        &self,
        scope: &Scope,
    ) -> Result<Vec<RepositoryRecord>, RegistryError> {
        Ok(self
            .meta
            .list::<RepositoryRecord>(&scope.repositories())
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    /// Read-modify-write of a repository record.
    pub async fn update_repository(
        &self,
        scope: &Scope,
        name: &str,
        mut change: impl FnMut(&mut RepositoryRecord) -> Result<(), RegistryError>,
    ) -> Result<RepositoryRecord, RegistryError> {
        for _ in 0..CAS_RETRIES_MAX {
            let mut current = self.repository(scope, name).await?;
            change(&mut current.value)?;
            if self
                .meta
                .commit(
                    vec![unchanged(&current.key, current.mod_revision)],
                    vec![put(&current.key, &current.value)],
                )
                .await?
            {
                return Ok(current.value);
            }
        }
        Err(conflict())
    }

    /// Deletes a repository; with `force` its images too, else it must have none.
    pub async fn delete_repository(
        &self,
        scope: &Scope,
        name: &str,
        force: bool,
    ) -> Result<RepositoryRecord, RegistryError> {
        let record = self.repository(scope, name).await?;
        let images = self
            .meta
            .page::<Value>(&scope.images(name), None, 1)
            .await?
            .0;
        if !images.is_empty() && !force {
            return Err(RegistryError::RepositoryNotEmpty(name.to_owned()));
        }
        // Children first, the repository record last: a crash in between leaves a repository
        // with fewer images, never orphaned images under a deleted name.
        for prefix in [
            scope.tags(name),
            scope.images(name),
            scope.referrers_prefix(name),
            scope.links(name),
        ] {
            let keys: Vec<String> = self
                .meta
                .list::<Value>(&prefix)
                .await?
                .into_iter()
                .map(|v| v.key)
                .collect();
            for batch in keys.chunks(DELETE_BATCH) {
                self.meta
                    .commit(vec![], batch.iter().map(delete).collect())
                    .await?;
            }
        }
        self.meta
            .commit(
                vec![unchanged(&record.key, record.mod_revision)],
                vec![delete(&record.key)],
            )
            .await?;
        Ok(record.value)
    }

    // ---- blobs ----

    /// The stored blob `digest`, if the repository may read it.
    pub async fn blob(
        &self,
        scope: &Scope,
        repo: &str,
        digest: &str,
    ) -> Result<BlobRecord, RegistryError> {
        let unknown = || RegistryError::BlobUnknown(digest.to_owned());
        if self
            .meta
            .get::<LinkRecord>(&scope.link(repo, digest))
            .await?
            .is_none()
        {
            return Err(unknown());
        }
        Ok(self
            .meta
            .get::<BlobRecord>(&meta::blob_key(digest))
            .await?
            .ok_or_else(unknown)?
            .value)
    }

    pub fn read_blob(
        &self,
        blob: &BlobRecord,
        range: std::ops::Range<u64>,
    ) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + 'static {
        self.blobs.read(blob.parts.clone(), range)
    }

    /// Makes blob `digest` of repository `from` usable in `repo` too. `false` if `from`
    /// does not have it.
    pub async fn mount_blob(
        &self,
        scope: &Scope,
        repo: &str,
        from: &str,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        if self.blob(scope, from, digest).await.is_err() {
            return Ok(false);
        }
        self.meta
            .commit(vec![], vec![put(scope.link(repo, digest), &LinkRecord {})])
            .await?;
        Ok(true)
    }

    /// Removes a blob from a repository (the bytes go when nothing references them).
    pub async fn unlink_blob(
        &self,
        scope: &Scope,
        repo: &str,
        digest: &str,
    ) -> Result<(), RegistryError> {
        self.blob(scope, repo, digest).await?;
        self.meta
            .commit(vec![], vec![delete(scope.link(repo, digest))])
            .await?;
        Ok(())
    }

    pub async fn start_upload(
        &self,
        scope: &Scope,
        repo: &str,
        now_ms: i64,
    ) -> Result<UploadRecord, RegistryError> {
        self.repository(scope, repo).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let record = UploadRecord {
            id: id.clone(),
            scope: (scope.account_id.clone(), scope.region.clone()),
            repo: repo.to_owned(),
            parts: Vec::new(),
            size: 0,
            started_at_ms: now_ms,
        };
        self.meta
            .commit(vec![], vec![put(meta::upload_key(&id), &record)])
            .await?;
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Arc::new(tokio::sync::Mutex::new(UploadState {
                    hasher: Some((0, Sha256::new())),
                })),
            );
        Ok(record)
    }

    fn upload_state(&self, id: &str) -> Arc<tokio::sync::Mutex<UploadState>> {
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    pub async fn upload(
        &self,
        scope: &Scope,
        repo: &str,
        id: &str,
    ) -> Result<Versioned<UploadRecord>, RegistryError> {
        let record = self
            .meta
            .get::<UploadRecord>(&meta::upload_key(id))
            .await?
            .ok_or(RegistryError::UploadUnknown)?;
        if record.value.repo != repo
            || record.value.scope != (scope.account_id.clone(), scope.region.clone())
        {
            return Err(RegistryError::UploadUnknown);
        }
        Ok(record)
    }

    /// Appends a chunk to an upload. `start`, when the client gave one, must be the
    /// upload's current size. Returns the new size.
    pub async fn append_upload<S, E>(
        &self,
        scope: &Scope,
        repo: &str,
        id: &str,
        start: Option<u64>,
        body: S,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let state = self.upload_state(id);
        let mut state = state.lock().await;
        let record = self.upload(scope, repo, id).await?;
        if let Some(start) = start
            && start != record.value.size
        {
            return Err(RegistryError::RangeInvalid {
                start,
                size: record.value.size,
            });
        }
        let size = record.value.size;
        let mut hasher = match state.hasher.take() {
            Some((offset, hasher)) if offset == size => Some(hasher),
            _ => None,
        };
        let mut scratch = Sha256::new();
        let Some(part) = self
            .blobs
            .write_stream(
                body,
                hasher.as_mut().unwrap_or(&mut scratch),
                BLOB_BYTES_MAX.saturating_sub(size),
            )
            .await?
        else {
            // An empty chunk (typically the closing PUT's body) stores nothing.
            state.hasher = hasher.map(|h| (size, h));
            return Ok(size);
        };
        let mut updated = record.value.clone();
        updated.size += part.len;
        updated.parts.push(part.clone());
        if !self
            .meta
            .commit(
                vec![unchanged(&record.key, record.mod_revision)],
                vec![put(&record.key, &updated)],
            )
            .await?
        {
            let _ = self.blobs.delete(&part.path).await;
            return Err(RegistryError::UploadUnknown);
        }
        state.hasher = hasher.map(|h| (updated.size, h));
        Ok(updated.size)
    }

    /// Finishes an upload as blob `digest` (after appending `last_chunk`). A digest that
    /// does not match the bytes fails the upload and discards them.
    pub async fn complete_upload<S, E>(
        &self,
        scope: &Scope,
        repo: &str,
        id: &str,
        digest: &str,
        last_chunk: Option<S>,
        now_ms: i64,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let expected = Digest::parse(digest).ok_or_else(|| {
            RegistryError::DigestInvalid(format!("invalid or unsupported digest '{digest}'"))
        })?;
        if let Some(chunk) = last_chunk {
            self.append_upload(scope, repo, id, None, chunk).await?;
        }
        let state = self.upload_state(id);
        let mut state = state.lock().await;
        let record = self.upload(scope, repo, id).await?;
        let actual = match state.hasher.take() {
            Some((offset, hasher)) if offset == record.value.size => Digest::from_hasher(hasher),
            _ => {
                // The running hash was lost (a restart): hash the stored parts again.
                let mut hasher = Sha256::new();
                let mut stream = Box::pin(if record.value.size == 0 {
                    futures::stream::empty().boxed()
                } else {
                    self.blobs
                        .read(record.value.parts.clone(), 0..record.value.size)
                        .boxed()
                });
                while let Some(chunk) = stream.next().await {
                    hasher.update(&chunk?);
                }
                Digest::from_hasher(hasher)
            }
        };
        if actual != expected {
            self.discard_upload(&record).await?;
            return Err(RegistryError::DigestMismatch {
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        let size = record.value.size;
        let link = scope.link(repo, digest);
        for _ in 0..CAS_RETRIES_MAX {
            let existing = self.meta.get::<BlobRecord>(&meta::blob_key(digest)).await?;
            let mut ops = vec![delete(&record.key), put(&link, &LinkRecord {})];
            let mut compares = vec![unchanged(&record.key, record.mod_revision)];
            match &existing {
                Some(blob) => {
                    // Same content is already stored: keep that copy, touch it so a
                    // concurrent garbage collection cannot remove it from under the link.
                    let mut value = blob.value.clone();
                    value.referenced_at_ms = now_ms;
                    compares.push(unchanged(&blob.key, blob.mod_revision));
                    ops.push(put(&blob.key, &value));
                }
                None => {
                    compares.push(unchanged(meta::blob_key(digest), 0));
                    ops.push(put(
                        meta::blob_key(digest),
                        &BlobRecord {
                            size,
                            parts: record.value.parts.clone(),
                            created_at_ms: now_ms,
                            referenced_at_ms: now_ms,
                        },
                    ));
                }
            }
            if self.meta.commit(compares, ops).await? {
                if existing.is_some() {
                    for part in &record.value.parts {
                        let _ = self.blobs.delete(&part.path).await;
                    }
                }
                self.uploads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
                return Ok(size);
            }
            if self
                .meta
                .get::<UploadRecord>(&record.key)
                .await?
                .is_none_or(|r| r.mod_revision != record.mod_revision)
            {
                return Err(RegistryError::UploadUnknown);
            }
        }
        Err(conflict())
    }

    async fn discard_upload(&self, record: &Versioned<UploadRecord>) -> Result<(), RegistryError> {
        self.meta.commit(vec![], vec![delete(&record.key)]).await?;
        for part in &record.value.parts {
            let _ = self.blobs.delete(&part.path).await;
        }
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&record.value.id);
        Ok(())
    }

    pub async fn cancel_upload(
        &self,
        scope: &Scope,
        repo: &str,
        id: &str,
    ) -> Result<(), RegistryError> {
        let state = self.upload_state(id);
        let _guard = state.lock().await;
        let record = self.upload(scope, repo, id).await?;
        self.discard_upload(&record).await
    }

    /// Stores a whole blob given in one piece (monolithic upload, ECR's layer parts).
    pub async fn put_blob<S, E>(
        &self,
        scope: &Scope,
        repo: &str,
        digest: &str,
        body: S,
        now_ms: i64,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let upload = self.start_upload(scope, repo, now_ms).await?;
        self.complete_upload(scope, repo, &upload.id, digest, Some(body), now_ms)
            .await
    }

    // ---- manifests ----

    /// Resolves a tag or digest to a digest.
    pub async fn resolve(
        &self,
        scope: &Scope,
        repo: &str,
        reference: &str,
    ) -> Result<String, RegistryError> {
        if reference.starts_with("sha256:") {
            return Ok(reference.to_owned());
        }
        if Digest::parse(reference).is_none() && reference.contains(':') {
            return Err(RegistryError::ManifestUnknown(reference.to_owned()));
        }
        self.meta
            .get::<TagRecord>(&scope.tag(repo, reference))
            .await?
            .map(|t| t.value.digest)
            .ok_or_else(|| RegistryError::ManifestUnknown(reference.to_owned()))
    }

    pub async fn image(
        &self,
        scope: &Scope,
        repo: &str,
        reference: &str,
    ) -> Result<ImageRecord, RegistryError> {
        let digest = self.resolve(scope, repo, reference).await?;
        self.meta
            .get::<ImageRecord>(&scope.image(repo, &digest))
            .await?
            .map(|v| v.value)
            .ok_or_else(|| RegistryError::ManifestUnknown(reference.to_owned()))
    }

    pub async fn manifest(
        &self,
        scope: &Scope,
        repo: &str,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        self.repository(scope, repo).await?;
        let image = self.image(scope, repo, reference).await?;
        let bytes = self
            .blobs
            .read_all(std::slice::from_ref(&image.manifest))
            .await?;
        Ok(Manifest {
            digest: image.digest,
            media_type: image.media_type,
            bytes,
        })
    }

    /// Stores a manifest under `reference` (a tag, or its own digest). `content_type` is the
    /// request's; when absent the manifest's `mediaType` decides. Returns the digest.
    pub async fn put_manifest(
        &self,
        scope: &Scope,
        repo: &str,
        reference: &str,
        content_type: Option<&str>,
        bytes: &[u8],
        now_ms: i64,
    ) -> Result<String, RegistryError> {
        if bytes.len() > MANIFEST_BYTES_MAX {
            return Err(RegistryError::TooLarge(format!(
                "manifests are limited to {MANIFEST_BYTES_MAX} bytes"
            )));
        }
        let digest = Digest::of(bytes).to_string();
        let tag = if reference.starts_with("sha256:") {
            if Digest::parse(reference).is_none() {
                return Err(RegistryError::DigestInvalid(format!(
                    "invalid digest '{reference}'"
                )));
            }
            if reference != digest {
                return Err(RegistryError::DigestMismatch {
                    expected: reference.to_owned(),
                    actual: digest,
                });
            }
            None
        } else {
            validate_tag(reference)?;
            Some(reference.to_owned())
        };
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| RegistryError::ManifestInvalid(format!("manifest is not JSON: {e}")))?;
        let declared = value.get("mediaType").and_then(Value::as_str);
        let media_type = content_type
            .filter(|c| !c.is_empty() && *c != "application/octet-stream")
            .map(|c| c.split(';').next().unwrap_or(c).trim())
            .or(declared)
            .unwrap_or(MEDIA_OCI_MANIFEST)
            .to_owned();
        if let Some(declared) = declared
            && declared != media_type
        {
            return Err(RegistryError::ManifestInvalid(format!(
                "the manifest's mediaType '{declared}' differs from Content-Type '{media_type}'"
            )));
        }
        let is_index = match media_type.as_str() {
            MEDIA_DOCKER_MANIFEST | MEDIA_OCI_MANIFEST => false,
            MEDIA_DOCKER_LIST | MEDIA_OCI_INDEX => true,
            other => {
                return Err(RegistryError::ManifestInvalid(format!(
                    "unsupported manifest media type '{other}'"
                )));
            }
        };
        if value.get("schemaVersion").and_then(Value::as_i64) != Some(2) {
            return Err(RegistryError::ManifestInvalid(
                "schemaVersion must be 2".into(),
            ));
        }
        let (blobs, children, size_bytes) = if is_index {
            let children = descriptor_digests(&value, "manifests")?;
            (Vec::new(), children, bytes.len() as u64)
        } else {
            let config = value.get("config").ok_or_else(|| {
                RegistryError::ManifestInvalid("an image manifest needs a config".into())
            })?;
            let mut blobs = vec![descriptor_digest(config, "config")?];
            let mut size = bytes.len() as u64 + descriptor_size(config);
            if let Some(layers) = value.get("layers").and_then(Value::as_array) {
                for layer in layers {
                    // Foreign layers (with urls) are not stored here.
                    if layer.get("urls").is_some() {
                        continue;
                    }
                    blobs.push(descriptor_digest(layer, "layers")?);
                    size += descriptor_size(layer);
                }
            } else if value.get("layers").is_some() {
                return Err(RegistryError::ManifestInvalid(
                    "'layers' must be an array".into(),
                ));
            }
            (blobs, Vec::new(), size)
        };
        let subject = match value.get("subject") {
            Some(subject) => Some(descriptor_digest(subject, "subject")?),
            None => None,
        };
        let artifact_type = value
            .get("artifactType")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                (!is_index)
                    .then(|| value.pointer("/config/mediaType").and_then(Value::as_str))
                    .flatten()
                    .map(str::to_owned)
            });
        let annotations = value.get("annotations").cloned();

        let mut manifest_part: Option<PartRef> = None;
        for _ in 0..CAS_RETRIES_MAX {
            let repository = self.repository(scope, repo).await?;
            let mut compares = vec![unchanged(&repository.key, repository.mod_revision)];
            let mut ops: Vec<Op> = Vec::new();
            // Every referenced blob must be in the repository; touching its record makes a
            // concurrent garbage collection of it conflict with this commit.
            let unique: BTreeSet<&String> = blobs.iter().collect();
            for blob in unique {
                if self
                    .meta
                    .get::<LinkRecord>(&scope.link(repo, blob))
                    .await?
                    .is_none()
                {
                    return Err(RegistryError::ManifestBlobUnknown(blob.clone()));
                }
                let record = self
                    .meta
                    .get::<BlobRecord>(&meta::blob_key(blob))
                    .await?
                    .ok_or_else(|| RegistryError::ManifestBlobUnknown(blob.clone()))?;
                let mut touched = record.value.clone();
                touched.referenced_at_ms = now_ms;
                compares.push(unchanged(&record.key, record.mod_revision));
                ops.push(put(&record.key, &touched));
            }
            for child in &children {
                let key = scope.image(repo, child);
                let record = self
                    .meta
                    .get::<ImageRecord>(&key)
                    .await?
                    .ok_or_else(|| RegistryError::ManifestBlobUnknown(child.clone()))?;
                compares.push(unchanged(&key, record.mod_revision));
            }
            let image_key = scope.image(repo, &digest);
            let existing = self.meta.get::<ImageRecord>(&image_key).await?;
            match &existing {
                Some(image) => compares.push(unchanged(&image_key, image.mod_revision)),
                None => {
                    let part = match &manifest_part {
                        Some(part) => part.clone(),
                        None => {
                            let part = self.blobs.write_bytes(bytes).await?;
                            manifest_part = Some(part.clone());
                            part
                        }
                    };
                    compares.push(unchanged(&image_key, 0));
                    ops.push(put(
                        &image_key,
                        &ImageRecord {
                            digest: digest.clone(),
                            media_type: media_type.clone(),
                            artifact_type: artifact_type.clone(),
                            manifest: part,
                            size_bytes,
                            pushed_at_ms: now_ms,
                            blobs: blobs.clone(),
                            children: children.clone(),
                            subject: subject.clone(),
                            annotations: annotations.clone(),
                            last_pulled_at_ms: None,
                        },
                    ));
                    if let Some(subject) = &subject {
                        let mut descriptor = serde_json::json!({
                            "mediaType": media_type,
                            "digest": digest,
                            "size": bytes.len(),
                        });
                        if let Some(kind) = &artifact_type {
                            descriptor["artifactType"] = Value::from(kind.clone());
                        }
                        if let Some(annotations) = &annotations {
                            descriptor["annotations"] = annotations.clone();
                        }
                        ops.push(put(scope.referrer(repo, subject, &digest), &descriptor));
                    }
                }
            }
            if let Some(tag) = &tag {
                let tag_key = scope.tag(repo, tag);
                let current = self.meta.get::<TagRecord>(&tag_key).await?;
                match &current {
                    Some(current) if current.value.digest == digest => {}
                    Some(current) => {
                        if repository.value.image_tag_mutability == "IMMUTABLE" {
                            if let Some(part) = &manifest_part {
                                let _ = self.blobs.delete(&part.path).await;
                            }
                            return Err(RegistryError::TagImmutable {
                                tag: tag.clone(),
                                repository: repo.to_owned(),
                            });
                        }
                        compares.push(unchanged(&tag_key, current.mod_revision));
                        ops.push(put(
                            &tag_key,
                            &TagRecord {
                                digest: digest.clone(),
                            },
                        ));
                    }
                    None => {
                        compares.push(unchanged(&tag_key, 0));
                        ops.push(put(
                            &tag_key,
                            &TagRecord {
                                digest: digest.clone(),
                            },
                        ));
                    }
                }
            }
            let changed = ops.iter().any(|op| {
                matches!(op, Op::Put { key, .. } if key.starts_with("ecr/image/") || key.starts_with("ecr/tag/"))
            });
            if !changed {
                // The same manifest under the same tag (or by digest) again: nothing to do.
                return Ok(digest);
            }
            if self.meta.commit(compares, ops).await? {
                if existing.is_some()
                    && let Some(part) = manifest_part.take()
                {
                    let _ = self.blobs.delete(&part.path).await;
                }
                return Ok(digest);
            }
        }
        Err(conflict())
    }

    /// Deletes images by digest (with their tags and referrer entries); returns the images
    /// deleted with the tags they had.
    pub async fn delete_images(
        &self,
        scope: &Scope,
        repo: &str,
        digests: &[String],
    ) -> Result<Vec<ImageView>, RegistryError> {
        let tags = self.meta.list::<TagRecord>(&scope.tags(repo)).await?;
        let mut deleted = Vec::new();
        for digest in digests {
            let key = scope.image(repo, digest);
            let Some(image) = self.meta.get::<ImageRecord>(&key).await? else {
                continue;
            };
            let mut ops = vec![delete(&key)];
            let mut image_tags = Vec::new();
            for tag in tags.iter().filter(|t| &t.value.digest == digest) {
                ops.push(delete(&tag.key));
                image_tags.push(meta::key_suffix(&tag.key, &scope.tags(repo)).to_owned());
            }
            if let Some(subject) = &image.value.subject {
                ops.push(delete(scope.referrer(repo, subject, digest)));
            }
            if self
                .meta
                .commit(vec![unchanged(&key, image.mod_revision)], ops)
                .await?
            {
                deleted.push(ImageView {
                    record: image.value,
                    tags: image_tags,
                });
            }
        }
        Ok(deleted)
    }

    /// Removes a tag (the image stays).
    pub async fn delete_tag(
        &self,
        scope: &Scope,
        repo: &str,
        tag: &str,
    ) -> Result<(), RegistryError> {
        let key = scope.tag(repo, tag);
        let Some(current) = self.meta.get::<TagRecord>(&key).await? else {
            return Err(RegistryError::ManifestUnknown(tag.to_owned()));
        };
        self.meta
            .commit(
                vec![unchanged(&key, current.mod_revision)],
                vec![delete(&key)],
            )
            .await?;
        Ok(())
    }

    /// Tags of a repository in lexical order, `limit` after `last`; and whether more follow.
    pub async fn tags(
        &self,
        scope: &Scope,
        repo: &str,
        last: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), RegistryError> {
        self.repository(scope, repo).await?;
        let prefix = scope.tags(repo);
        let (page, more) = self
            .meta
            .page::<TagRecord>(&prefix, last.map(|l| format!("{prefix}{l}")), limit)
            .await?;
        Ok((
            page.iter()
                .map(|v| meta::key_suffix(&v.key, &prefix).to_owned())
                .collect(),
            more,
        ))
    }

    /// Images of a repository with their tags, by digest.
    pub async fn images(&self, scope: &Scope, repo: &str) -> Result<Vec<ImageView>, RegistryError> {
        self.repository(scope, repo).await?;
        let tags = self.meta.list::<TagRecord>(&scope.tags(repo)).await?;
        let mut by_digest: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let tag_prefix = scope.tags(repo);
        for tag in tags {
            by_digest
                .entry(tag.value.digest)
                .or_default()
                .push(meta::key_suffix(&tag.key, &tag_prefix).to_owned());
        }
        Ok(self
            .meta
            .list::<ImageRecord>(&scope.images(repo))
            .await?
            .into_iter()
            .map(|v| ImageView {
                tags: by_digest.remove(&v.value.digest).unwrap_or_default(),
                record: v.value,
            })
            .collect())
    }

    /// Descriptors of the manifests whose subject is `digest`.
    pub async fn referrers(
        &self,
        scope: &Scope,
        repo: &str,
        digest: &str,
    ) -> Result<Vec<Value>, RegistryError> {
        self.repository(scope, repo).await?;
        Ok(self
            .meta
            .list::<Value>(&scope.referrers(repo, digest))
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    // ---- lifecycle ----

    /// Applies the repository's lifecycle policy now; returns the expired images.
    pub async fn apply_lifecycle(
        &self,
        scope: &Scope,
        repo: &str,
        now_ms: i64,
    ) -> Result<Vec<ImageView>, RegistryError> {
        let record = self.repository(scope, repo).await?;
        let Some(text) = &record.value.lifecycle_policy_text else {
            return Ok(Vec::new());
        };
        let Ok(policy) = lifecycle::parse(text) else {
            return Ok(Vec::new());
        };
        let images = self.images(scope, repo).await?;
        let facts: Vec<lifecycle::ImageFacts> = images
            .iter()
            .map(|i| lifecycle::ImageFacts {
                digest: i.record.digest.clone(),
                tags: i.tags.clone(),
                pushed_at_ms: i.record.pushed_at_ms,
            })
            .collect();
        let expired = lifecycle::expired(&policy, &facts, now_ms);
        let deleted = self.delete_images(scope, repo, &expired).await?;
        if !deleted.is_empty() {
            tracing::info!(
                repository = repo,
                expired = deleted.len(),
                "lifecycle policy expired images"
            );
        }
        let _ = self
            .update_repository(scope, repo, |r| {
                r.lifecycle_evaluated_at_ms = Some(now_ms);
                Ok(())
            })
            .await;
        Ok(deleted)
    }

    /// Applies every repository's lifecycle policy (all accounts and regions).
    pub async fn apply_all_lifecycles(&self, now_ms: i64) -> Result<usize, RegistryError> {
        let repositories = self.meta.list::<RepositoryRecord>("ecr/repo/").await?;
        let mut expired = 0;
        for repository in repositories {
            if repository.value.lifecycle_policy_text.is_none() {
                continue;
            }
            let rest = meta::key_suffix(&repository.key, "ecr/repo/");
            let mut pieces = rest.splitn(3, '/');
            let (Some(account), Some(region)) = (pieces.next(), pieces.next()) else {
                continue;
            };
            let scope = Scope::new(account, region);
            expired += self
                .apply_lifecycle(&scope, &repository.value.name, now_ms)
                .await?
                .len();
        }
        Ok(expired)
    }
}
