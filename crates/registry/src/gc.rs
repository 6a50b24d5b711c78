//! Garbage collection: removes blobs no manifest names any more, uploads abandoned for a
//! day, and stored objects no record names (the leftovers of a crash mid-write).
//!
//! Safe against concurrent pushes: the blob records are read *before* the images, and a
//! manifest push rewrites the records of the blobs it names, so a blob that a manifest
//! started naming after the scan fails its delete's compare-and-swap. Anything younger than
//! the grace period is never touched, which covers blobs uploaded but not yet named by a
//! manifest and objects written but not yet recorded.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;

use crate::blobs::DATA_PREFIX;
use crate::engine::Engine;
use crate::error::RegistryError;
use crate::meta::{self, BlobRecord, ImageRecord, LinkRecord, UploadRecord, delete, unchanged};

/// How long an upload may stay unfinished before it is discarded.
pub const UPLOAD_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// Deletions per sweep, so one sweep never holds the store for long.
pub const DELETIONS_PER_SWEEP_MAX: usize = 10_000;

/// What a sweep removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_deleted: usize,
    pub uploads_expired: usize,
    pub objects_deleted: usize,
}

/// One sweep at `now_ms`; nothing changed less than `grace_ms` ago is removed.
pub async fn sweep(engine: &Engine, now_ms: i64, grace_ms: i64) -> Result<GcReport, RegistryError> {
    let mut report = GcReport::default();
    let cutoff = now_ms - grace_ms;
    let blobs = engine.meta.list::<BlobRecord>(meta::BLOBS).await?;
    let images = engine.meta.list::<ImageRecord>(meta::IMAGES_ALL).await?;
    let referenced: BTreeSet<&str> = images
        .iter()
        .flat_map(|i| i.value.blobs.iter().map(String::as_str))
        .collect();
    let links = engine.meta.list::<LinkRecord>(meta::LINKS_ALL).await?;
    let mut links_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for link in &links {
        if let Some((_, digest)) = link.key.rsplit_once('#') {
            links_of.entry(digest).or_default().push(&link.key);
        }
    }
    for blob in &blobs {
        if report.blobs_deleted >= DELETIONS_PER_SWEEP_MAX {
            break;
        }
        let digest = meta::key_suffix(&blob.key, meta::BLOBS);
        if referenced.contains(digest)
            || blob.value.created_at_ms > cutoff
            || blob.value.referenced_at_ms > cutoff
        {
            continue;
        }
        let mut ops = vec![delete(&blob.key)];
        let link_keys = links_of.get(digest).cloned().unwrap_or_default();
        // The first batch carries the compare; later batches only remove links.
        let (first, rest) = link_keys.split_at(link_keys.len().min(500));
        ops.extend(first.iter().map(|k| delete(*k)));
        if !engine
            .meta
            .commit(vec![unchanged(&blob.key, blob.mod_revision)], ops)
            .await?
        {
            continue;
        }
        for batch in rest.chunks(500) {
            engine
                .meta
                .commit(vec![], batch.iter().map(|k| delete(*k)).collect())
                .await?;
        }
        for part in &blob.value.parts {
            let _ = engine.blobs.delete(&part.path).await;
        }
        report.blobs_deleted += 1;
    }
    let uploads = engine.meta.list::<UploadRecord>(meta::UPLOADS).await?;
    for upload in &uploads {
        if upload.value.started_at_ms > now_ms - UPLOAD_TTL_MS {
            continue;
        }
        if engine
            .meta
            .commit(
                vec![unchanged(&upload.key, upload.mod_revision)],
                vec![delete(&upload.key)],
            )
            .await?
        {
            for part in &upload.value.parts {
                let _ = engine.blobs.delete(&part.path).await;
            }
            report.uploads_expired += 1;
        }
    }
    // Objects no record names. Read the records again: they may have changed meanwhile.
    let mut live: BTreeSet<String> = BTreeSet::new();
    for blob in engine.meta.list::<BlobRecord>(meta::BLOBS).await? {
        live.extend(blob.value.parts.into_iter().map(|p| p.path));
    }
    for image in engine.meta.list::<ImageRecord>(meta::IMAGES_ALL).await? {
        live.insert(image.value.manifest.path);
    }
    for upload in engine.meta.list::<UploadRecord>(meta::UPLOADS).await? {
        live.extend(upload.value.parts.into_iter().map(|p| p.path));
    }
    let prefix = object_store::path::Path::from(DATA_PREFIX);
    let mut listing = engine.blobs.object_store().list(Some(&prefix));
    let mut orphans = Vec::new();
    while let Some(object) = listing.next().await {
        let Ok(object) = object else { continue };
        let path = object.location.to_string();
        if !live.contains(&path) && object.last_modified.timestamp_millis() <= cutoff {
            orphans.push(path);
        }
        if orphans.len() >= DELETIONS_PER_SWEEP_MAX {
            break;
        }
    }
    for path in orphans {
        engine.blobs.delete(&path).await?;
        report.objects_deleted += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::blobs::Blobs;
    use crate::crypto::DataKey;
    use crate::digest::Digest;
    use crate::meta::{Meta, RepositoryRecord, Scope};

    fn engine() -> Engine {
        let store = Arc::new(flotilla_store::RedbStore::in_memory().unwrap());
        let objects = Arc::new(object_store::memory::InMemory::new());
        Engine::new(
            Meta { store },
            Blobs::new(objects, DataKey::random().unwrap()),
        )
    }

    async fn object_count(engine: &Engine) -> usize {
        engine
            .blobs
            .object_store()
            .list(None)
            .collect::<Vec<_>>()
            .await
            .len()
    }

    #[tokio::test]
    async fn unreferenced_blobs_and_orphans_go_referenced_ones_stay() {
        let engine = engine();
        let scope = Scope::new("000000000000", "us-east-1");
        engine
            .create_repository(
                &scope,
                RepositoryRecord {
                    name: "app".into(),
                    created_at_ms: 0,
                    image_tag_mutability: "MUTABLE".into(),
                    scan_on_push: false,
                    encryption_type: "AES256".into(),
                    kms_key: None,
                    tags: vec![],
                    policy_text: None,
                    lifecycle_policy_text: None,
                    lifecycle_evaluated_at_ms: None,
                },
            )
            .await
            .unwrap();
        let mut digests = Vec::new();
        for content in [b"config".as_slice(), b"layer"] {
            let digest = Digest::of(content).to_string();
            let body = futures::stream::iter([Ok::<_, std::io::Error>(
                bytes::Bytes::copy_from_slice(content),
            )]);
            engine
                .put_blob(&scope, "app", &digest, body, 0)
                .await
                .unwrap();
            digests.push(digest);
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": crate::engine::MEDIA_OCI_MANIFEST,
            "config": {"mediaType": "x", "digest": digests[0], "size": 6},
            "layers": [{"mediaType": "y", "digest": digests[1], "size": 5}]
        }))
        .unwrap();
        let image = engine
            .put_manifest(&scope, "app", "v1", None, &manifest, 0)
            .await
            .unwrap();
        // An object no record names (a crash between writing and recording).
        engine.blobs.write_bytes(b"orphan").await.unwrap();
        assert_eq!(object_count(&engine).await, 4);

        // Within the grace period nothing goes; after it, only the orphan.
        let report = sweep(&engine, 1_000, 10_000).await.unwrap();
        assert_eq!(report, GcReport::default());
        let now = chrono_free_now();
        let report = sweep(&engine, now, 0).await.unwrap();
        assert_eq!(report.blobs_deleted, 0);
        assert_eq!(report.objects_deleted, 1);
        assert!(engine.blob(&scope, "app", &digests[1]).await.is_ok());

        // Once the image is deleted its blobs and manifest bytes go too.
        engine.delete_images(&scope, "app", &[image]).await.unwrap();
        let report = sweep(&engine, now, 0).await.unwrap();
        assert_eq!(report.blobs_deleted, 2);
        assert_eq!(report.objects_deleted, 1, "the manifest's object");
        assert_eq!(object_count(&engine).await, 0);
        assert!(engine.blob(&scope, "app", &digests[1]).await.is_err());
    }

    fn chrono_free_now() -> i64 {
        crate::oci::now_ms() + 1_000
    }
}
