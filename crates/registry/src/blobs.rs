//! Blob bytes in an `object_store`: every stored object ("part") is encrypted with
//! [`crate::crypto`]'s segment format and written once, under a fresh random name, then
//! never changed. A blob is a list of parts (one per upload chunk), so a chunked upload is
//! completed without copying; what makes a blob visible is its metadata record in the state
//! store, written after its parts are complete, so a crash mid-upload leaves only unnamed
//! objects that garbage collection removes.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::crypto::{self, DataKey, SEGMENT_BYTES};

/// Stored bytes handed to the object store per write call.
const WRITE_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Segments read per object-store call when streaming a blob out.
const READ_BATCH_SEGMENTS: u64 = 32;
/// Where parts live inside the object store.
pub const DATA_PREFIX: &str = "data";

/// One encrypted object and the plaintext bytes it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    pub path: String,
    pub len: u64,
}

/// Why storing or reading blob bytes failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    /// The request body broke off or could not be read.
    #[error("reading the upload failed: {0}")]
    Body(String),
    /// The upload is larger than allowed.
    #[error("the upload exceeds {limit} bytes")]
    TooLarge { limit: u64 },
}

/// Encrypted blob bytes.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    key: DataKey,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blobs({})", self.store)
    }
}

fn new_part_path() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{DATA_PREFIX}/{}/{id}", &id[..2])
}

impl Blobs {
    pub fn new(store: Arc<dyn ObjectStore>, key: DataKey) -> Self {
        Self { store, key }
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Writes a small object in one call.
    pub async fn write_bytes(&self, plaintext: &[u8]) -> Result<PartRef, BlobError> {
        let path = new_part_path();
        let sealed = self.key.seal_all(plaintext);
        self.store
            .put(&ObjectPath::from(path.as_str()), PutPayload::from(sealed))
            .await?;
        Ok(PartRef {
            path,
            len: plaintext.len() as u64,
        })
    }

    /// Streams `body` into a new part, feeding every plaintext byte to `hasher`. At most
    /// `limit` bytes are accepted. The part becomes readable only once complete; on any
    /// error nothing is left under its name.
    pub async fn write_stream<S, E>(
        &self,
        mut body: S,
        hasher: &mut Sha256,
        limit: u64,
    ) -> Result<PartRef, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = new_part_path();
        let location = ObjectPath::from(path.as_str());
        let mut upload = self.store.put_multipart(&location).await?;
        let result = async {
            let header = DataKey::new_header();
            let prefix = DataKey::nonce_prefix(&header)?;
            let mut out = Vec::with_capacity(WRITE_BATCH_BYTES + SEGMENT_BYTES as usize * 2);
            out.extend_from_slice(&header);
            let mut pending = BytesMut::with_capacity(SEGMENT_BYTES as usize * 2);
            let mut index = 0u64;
            let mut total = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
                total += chunk.len() as u64;
                if total > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                hasher.update(&chunk);
                pending.extend_from_slice(&chunk);
                // Keep the last full segment back: only the end of the stream tells whether it
                // is the last one.
                while pending.len() as u64 > SEGMENT_BYTES {
                    let segment = pending.split_to(SEGMENT_BYTES as usize);
                    self.key
                        .seal_segment(&prefix, index, false, &segment, &mut out);
                    index += 1;
                    if out.len() >= WRITE_BATCH_BYTES {
                        let batch = std::mem::replace(
                            &mut out,
                            Vec::with_capacity(WRITE_BATCH_BYTES + SEGMENT_BYTES as usize * 2),
                        );
                        upload.put_part(PutPayload::from(batch)).await?;
                    }
                }
            }
            if !pending.is_empty() {
                self.key
                    .seal_segment(&prefix, index, true, &pending, &mut out);
            }
            upload.put_part(PutPayload::from(out)).await?;
            upload.complete().await?;
            Ok(total)
        }
        .await;
        match result {
            Ok(len) => Ok(PartRef { path, len }),
            Err(error) => {
                let _ = upload.abort().await;
                Err(error)
            }
        }
    }

    /// Reads one whole blob into memory (manifests; callers bound the size).
    pub async fn read_all(&self, parts: &[PartRef]) -> Result<Vec<u8>, BlobError> {
        let size: u64 = parts.iter().map(|p| p.len).sum();
        let mut out = Vec::with_capacity(size as usize);
        if size == 0 {
            return Ok(out);
        }
        let mut stream = Box::pin(self.read(parts.to_vec(), 0..size));
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// Streams the plaintext `range` of the blob made of `parts`; the range must be within
    /// the blob and non-empty. Only the segments covering the range are read.
    pub fn read(
        &self,
        parts: Vec<PartRef>,
        range: Range<u64>,
    ) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + 'static {
        let store = self.store.clone();
        let key = self.key.clone();
        // (part, plaintext range within the part) for every part the range touches.
        let mut pieces = Vec::new();
        let mut offset = 0u64;
        for part in parts {
            let part_range = offset..offset + part.len;
            offset += part.len;
            let start = range.start.max(part_range.start);
            let end = range.end.min(part_range.end);
            if start < end {
                pieces.push((part, start - part_range.start..end - part_range.start));
            }
        }
        futures::stream::iter(pieces)
            .map(move |(part, within)| read_part(store.clone(), key.clone(), part, within))
            .flatten()
    }

    pub async fn delete(&self, path: &str) -> Result<(), BlobError> {
        match self.store.delete(&ObjectPath::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// Streams a plaintext range of one part, a batch of segments per object-store read.
fn read_part(
    store: Arc<dyn ObjectStore>,
    key: DataKey,
    part: PartRef,
    within: Range<u64>,
) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + 'static {
    let location = ObjectPath::from(part.path.as_str());
    let count = crypto::segment_count(part.len);
    let span = crypto::segment_span(within.clone(), part.len);
    let state = (
        store,
        key,
        location,
        None::<[u8; 8]>,
        span.segments.start,
        0u64,
    );
    futures::stream::try_unfold(state, move |(store, key, location, prefix, next, sent)| {
        let span = span.clone();
        async move {
            if next >= span.segments.end {
                return Ok(None);
            }
            let prefix = match prefix {
                Some(prefix) => prefix,
                None => {
                    let header = store.get_range(&location, 0..crypto::HEADER_BYTES).await?;
                    DataKey::nonce_prefix(&header)?
                }
            };
            let batch_end = (next + READ_BATCH_SEGMENTS).min(span.segments.end);
            let first_byte = next * SEGMENT_BYTES;
            let last_byte = (batch_end * SEGMENT_BYTES).min(part.len);
            let stored = crypto::segment_span(first_byte..last_byte, part.len).stored;
            let key2 = key.clone();
            let sealed = store.get_range(&location, stored).await?;
            let len = part.len;
            let plain = tokio::task::spawn_blocking(move || {
                let mut out = Vec::with_capacity((last_byte - first_byte) as usize);
                let mut offset = 0usize;
                for index in next..batch_end {
                    let size = crypto::sealed_segment_len(index, len) as usize;
                    let piece = sealed
                        .get(offset..offset + size)
                        .ok_or(crypto::CryptoError::Authentication { segment: index })?;
                    out.extend_from_slice(&key2.open_segment(
                        &prefix,
                        index,
                        index + 1 == count,
                        piece,
                    )?);
                    offset += size;
                }
                Ok::<_, crypto::CryptoError>(out)
            })
            .await
            .map_err(|e| BlobError::Body(e.to_string()))??;
            let mut plain = Bytes::from(plain);
            if next == span.segments.start {
                plain = plain.slice(span.skip as usize..);
            }
            let remaining = span.take - sent;
            if plain.len() as u64 > remaining {
                plain.truncate(remaining as usize);
            }
            let sent = sent + plain.len() as u64;
            Ok(Some((
                plain,
                (store, key, location, Some(prefix), batch_end, sent),
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn chunked_parts_read_back_by_range() {
        let blobs = Blobs::new(Arc::new(InMemory::new()), DataKey::random());
        let data: Vec<u8> = (0..(SEGMENT_BYTES * 3 + 17))
            .map(|i| (i % 253) as u8)
            .collect();
        let mut hasher = Sha256::new();
        let split = (SEGMENT_BYTES + 5) as usize;
        let mut parts = Vec::new();
        for chunk in [&data[..split], &data[split..]] {
            let stream = futures::stream::iter(
                chunk
                    .chunks(10_000)
                    .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c))),
            );
            parts.push(
                blobs
                    .write_stream(stream, &mut hasher, u64::MAX)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(
            crate::digest::Digest::from_hasher(hasher),
            crate::digest::Digest::of(&data)
        );
        assert_eq!(blobs.read_all(&parts).await.unwrap(), data);
        for range in [
            0..1,
            5..(SEGMENT_BYTES * 2),
            (split as u64 - 1)..(split as u64 + 1),
        ] {
            let mut out = Vec::new();
            let mut stream = Box::pin(blobs.read(parts.clone(), range.clone()));
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk.unwrap());
            }
            assert_eq!(out, &data[range.start as usize..range.end as usize]);
        }
    }

    #[tokio::test]
    async fn oversized_upload_leaves_nothing() {
        let memory = Arc::new(InMemory::new());
        let blobs = Blobs::new(memory.clone(), DataKey::random());
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 100]))]);
        let error = blobs
            .write_stream(stream, &mut Sha256::new(), 10)
            .await
            .unwrap_err();
        assert!(matches!(error, BlobError::TooLarge { .. }));
        let listed: Vec<_> = memory.list(None).collect().await;
        assert!(listed.is_empty());
    }
}
