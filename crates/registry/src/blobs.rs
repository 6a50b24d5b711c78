//! Blob bytes in an `object_store`: every stored object ("part") is encrypted with
//! [`crate::crypto`]'s segment format and written once, under a fresh random name, then
//! never changed. A blob is a list of parts (one per upload chunk), so a chunked upload is
//! completed without copying; what makes a blob visible is its metadata record in the state
//! store, written after its parts are complete, so a crash mid-upload leaves only unnamed
//! objects that garbage collection removes.
//!
//! Uploads are pipelined so that receiving, hashing and sealing, and writing overlap: the
//! request task copies the body straight into batches laid out as they are stored (room
//! left for each segment's tag), a blocking thread hashes and seals the previous batch in
//! place, and the object store writes the batches before it, several parts at once. Each
//! plaintext byte is copied once on the way in; reads decrypt in place and hand out slices.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStore, PutPayload, PutPayloadMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::task::{JoinHandle, JoinSet};

use crate::crypto::{self, CryptoError, DataKey, HEADER_BYTES, SEGMENT_BYTES, TAG_BYTES};

const SEGMENT: usize = SEGMENT_BYTES as usize;
const TAG: usize = TAG_BYTES as usize;
/// A full segment as stored: ciphertext, then its tag.
const STRIDE: usize = SEGMENT + TAG;
/// Segments hashed and sealed per blocking job (4 MiB): large enough to make handing work
/// to a thread cheap, small enough that the next batch arrives while this one is sealed.
const SEAL_BATCH_SEGMENTS: usize = 16;
const SEAL_BATCH_BYTES: usize = SEAL_BATCH_SEGMENTS * STRIDE;
/// Stored bytes per object-store part. Parts are cut to exactly this size but the last,
/// as S3 (at least 5 MiB) and R2 (equal sizes) require.
const WRITE_PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts being written at once per upload; bounds an upload's buffered bytes.
const WRITES_IN_FLIGHT: usize = 3;
/// Segments read and decrypted per object-store call when streaming a blob out.
const READ_BATCH_SEGMENTS: u64 = 32;
/// Batches fetched and decrypted ahead of the one being sent.
const READS_IN_FLIGHT: usize = 2;
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
    /// A sealing, decrypting or writing task panicked or was cancelled.
    #[error("a blob task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
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

fn body_error(error: impl std::fmt::Display) -> BlobError {
    BlobError::Body(error.to_string())
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
        let sealed = self.key.seal_all(plaintext)?;
        self.store
            .put(&ObjectPath::from(path.as_str()), PutPayload::from(sealed))
            .await?;
        Ok(PartRef {
            path,
            len: plaintext.len() as u64,
        })
    }

    /// Streams `body` into a new part, feeding every plaintext byte to `hasher`. At most
    /// `limit` bytes are accepted. An empty body stores nothing and gives `None`. The part
    /// becomes readable only once complete; on any error nothing is left under its name
    /// (and `hasher` is in no useful state).
    pub async fn write_stream<S, E>(
        &self,
        mut body: S,
        hasher: &mut Sha256,
        limit: u64,
    ) -> Result<Option<PartRef>, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        // Nothing is created before the first byte: the PUT that closes a chunked upload
        // usually has an empty body, and an object per such request would be pure overhead.
        let first = loop {
            match body.next().await {
                None => return Ok(None),
                Some(chunk) => {
                    let chunk = chunk.map_err(body_error)?;
                    if !chunk.is_empty() {
                        break chunk;
                    }
                }
            }
        };
        let path = new_part_path();
        let upload = self
            .store
            .put_multipart(&ObjectPath::from(path.as_str()))
            .await?;
        let mut writer = PartWriter::new(upload);
        let header = DataKey::new_header();
        let mut sealer = Sealer {
            key: self.key.clone(),
            prefix: DataKey::nonce_prefix(&header)?,
            next_index: 0,
            hasher: std::mem::take(hasher),
            job: None,
        };
        let result = async {
            writer.put(Bytes::copy_from_slice(&header)).await?;
            let mut batch = Vec::with_capacity(SEAL_BATCH_BYTES);
            let mut total = 0u64;
            let mut next = Some(first);
            while let Some(chunk) = next {
                total += chunk.len() as u64;
                if total > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    if batch.len() == SEAL_BATCH_BYTES {
                        // More bytes follow, so the batch does not hold the last segment.
                        let full =
                            std::mem::replace(&mut batch, Vec::with_capacity(SEAL_BATCH_BYTES));
                        if let Some(sealed) = sealer.submit(full, false).await? {
                            writer.put(sealed).await?;
                        }
                    }
                    let in_segment = batch.len() % STRIDE;
                    let take = rest.len().min(SEGMENT - in_segment);
                    batch.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if in_segment + take == SEGMENT {
                        // Room for the tag, so the segment is sealed where it lies.
                        batch.resize(batch.len() + TAG, 0);
                    }
                }
                next = body.next().await.transpose().map_err(body_error)?;
            }
            if let Some(sealed) = sealer.submit(batch, true).await? {
                writer.put(sealed).await?;
            }
            if let Some(sealed) = sealer.finish_job().await? {
                writer.put(sealed).await?;
            }
            Ok(total)
        }
        .await;
        match result {
            Ok(len) => {
                writer.finish().await?;
                *hasher = sealer.hasher;
                Ok(Some(PartRef { path, len }))
            }
            Err(error) => {
                writer.abort().await;
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

/// Hashes and seals an upload's batches on blocking threads, one batch at a time and in
/// order (the hash must see the plaintext in order), while the caller fills the next one.
struct Sealer {
    key: DataKey,
    prefix: [u8; 8],
    /// The index of the next batch's first segment.
    next_index: u64,
    /// The running hash; a job holds it (and this is a placeholder) while one runs.
    hasher: Sha256,
    job: Option<JoinHandle<Sealed>>,
}

/// What a sealing job hands back: the hash so far and the sealed batch.
type Sealed = Result<(Sha256, Vec<u8>), CryptoError>;

impl Sealer {
    /// Starts sealing `batch` (see [`seal_batch`]); returns the batch sealed before it, which
    /// must be written first.
    async fn submit(
        &mut self,
        batch: Vec<u8>,
        ends_object: bool,
    ) -> Result<Option<Bytes>, BlobError> {
        let previous = self.finish_job().await?;
        if batch.is_empty() {
            return Ok(previous);
        }
        let first = self.next_index;
        self.next_index += batch.len().div_ceil(STRIDE) as u64;
        let (key, prefix, hasher) = (
            self.key.clone(),
            self.prefix,
            std::mem::take(&mut self.hasher),
        );
        self.job = Some(tokio::task::spawn_blocking(move || {
            seal_batch(&key, &prefix, first, ends_object, hasher, batch)
        }));
        Ok(previous)
    }

    /// Waits for the running job; returns its sealed batch.
    async fn finish_job(&mut self) -> Result<Option<Bytes>, BlobError> {
        let Some(job) = self.job.take() else {
            return Ok(None);
        };
        let (hasher, sealed) = job.await??;
        self.hasher = hasher;
        Ok(Some(Bytes::from(sealed)))
    }
}

/// Hashes, then seals in place, consecutive segments from index `first`, laid out as they
/// are stored: each full segment followed by room for its tag. When the batch ends the
/// object, its final segment is sealed as the last one; it may be short, with no room, and
/// its tag is then appended.
fn seal_batch(
    key: &DataKey,
    prefix: &[u8; 8],
    first: u64,
    ends_object: bool,
    mut hasher: Sha256,
    mut batch: Vec<u8>,
) -> Sealed {
    let mut offset = 0;
    let mut index = first;
    while offset < batch.len() {
        let remaining = batch.len() - offset;
        let plain = remaining.min(SEGMENT);
        let has_room = remaining >= plain + TAG;
        debug_assert!(
            has_room || ends_object,
            "only the last segment lacks tag room"
        );
        let last = ends_object && remaining <= plain + TAG;
        let segment = &mut batch[offset..offset + plain];
        hasher.update(&*segment);
        let tag = key.seal_in_place(prefix, index, last, segment)?;
        if has_room {
            batch[offset + plain..offset + plain + TAG].copy_from_slice(&tag);
        } else {
            batch.extend_from_slice(&tag);
        }
        offset += plain + TAG;
        index += 1;
    }
    Ok((hasher, batch))
}

/// Writes one object as a multipart upload: parts of [`WRITE_PART_BYTES`], several at once.
/// Each part's place in the object is fixed when it is started, so they may finish in any
/// order.
struct PartWriter {
    upload: Box<dyn MultipartUpload>,
    buffer: PutPayloadMut,
    writes: JoinSet<Result<(), object_store::Error>>,
}

impl PartWriter {
    fn new(upload: Box<dyn MultipartUpload>) -> Self {
        Self {
            upload,
            buffer: PutPayloadMut::default(),
            writes: JoinSet::new(),
        }
    }

    /// Appends `bytes` to the object (without copying them).
    async fn put(&mut self, mut bytes: Bytes) -> Result<(), BlobError> {
        while !bytes.is_empty() {
            let room = WRITE_PART_BYTES - self.buffer.content_length();
            if bytes.len() < room {
                self.buffer.push(bytes);
                return Ok(());
            }
            self.buffer.push(bytes.split_to(room));
            self.start_part().await?;
        }
        Ok(())
    }

    async fn start_part(&mut self) -> Result<(), BlobError> {
        while self.writes.len() >= WRITES_IN_FLIGHT {
            self.join_one().await?;
        }
        let part = std::mem::take(&mut self.buffer).freeze();
        // Spawned, so the write proceeds while this task receives and seals.
        self.writes.spawn(self.upload.put_part(part));
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), BlobError> {
        match self.writes.join_next().await {
            Some(done) => Ok(done??),
            None => Ok(()),
        }
    }

    /// Writes what is buffered, waits for every part and completes the object; on failure
    /// aborts it, so nothing appears under its name.
    async fn finish(mut self) -> Result<(), BlobError> {
        let result = async {
            if self.buffer.content_length() > 0 {
                self.start_part().await?;
            }
            while !self.writes.is_empty() {
                self.join_one().await?;
            }
            self.upload.complete().await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    async fn abort(&mut self) {
        self.writes.shutdown().await;
        let _ = self.upload.abort().await;
    }
}

/// Streams a plaintext range of one part: batches of segments are fetched and decrypted a
/// few ahead of the one being sent.
fn read_part(
    store: Arc<dyn ObjectStore>,
    key: DataKey,
    part: PartRef,
    within: Range<u64>,
) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + 'static {
    let location = ObjectPath::from(part.path.as_str());
    let len = part.len;
    let segments = crypto::segment_span(within.clone(), len).segments;
    let batches: Vec<Range<u64>> = (segments.start..segments.end)
        .step_by(READ_BATCH_SEGMENTS as usize)
        .map(|start| start..(start + READ_BATCH_SEGMENTS).min(segments.end))
        .collect();
    futures::stream::once(async move {
        let header = store.get_range(&location, 0..HEADER_BYTES).await?;
        let prefix = DataKey::nonce_prefix(&header)?;
        let batch = ReadBatch {
            store,
            key,
            location,
            prefix,
            len,
            within,
        };
        Ok::<_, BlobError>(
            futures::stream::iter(batches)
                .map(move |segments| batch.clone().read(segments))
                .buffered(READS_IN_FLIGHT)
                .map_ok(|pieces| futures::stream::iter(pieces.into_iter().map(Ok)))
                .try_flatten(),
        )
    })
    .try_flatten()
}

/// What reading any batch of one part needs.
#[derive(Clone)]
struct ReadBatch {
    store: Arc<dyn ObjectStore>,
    key: DataKey,
    location: ObjectPath,
    prefix: [u8; 8],
    /// The part's plaintext length.
    len: u64,
    /// The plaintext range of the part being read.
    within: Range<u64>,
}

impl ReadBatch {
    /// Fetches and decrypts `segments`; returns their plaintext within `within`, as slices
    /// of the fetched buffer.
    async fn read(self, segments: Range<u64>) -> Result<Vec<Bytes>, BlobError> {
        let first_byte = segments.start * SEGMENT_BYTES;
        let last_byte = (segments.end * SEGMENT_BYTES).min(self.len);
        let stored = crypto::segment_span(first_byte..last_byte, self.len).stored;
        let sealed = self.store.get_range(&self.location, stored).await?;
        let pieces = tokio::task::spawn_blocking(move || {
            // No copy when the store handed over the only reference (the local store does).
            let mut buffer = Vec::from(sealed);
            let count = crypto::segment_count(self.len);
            let mut plain = Vec::with_capacity((segments.end - segments.start) as usize);
            let mut offset = 0usize;
            for index in segments {
                let size = crypto::sealed_segment_len(index, self.len) as usize;
                let piece = buffer
                    .get_mut(offset..offset + size)
                    .ok_or(CryptoError::Authentication { segment: index })?;
                let opened =
                    self.key
                        .open_in_place(&self.prefix, index, index + 1 == count, piece)?
                        as u64;
                let start = index * SEGMENT_BYTES;
                let from = self.within.start.max(start);
                let to = self.within.end.min(start + opened);
                if from < to {
                    plain.push(offset + (from - start) as usize..offset + (to - start) as usize);
                }
                offset += size;
            }
            let buffer = Bytes::from(buffer);
            Ok::<_, CryptoError>(plain.into_iter().map(|r| buffer.slice(r)).collect())
        })
        .await??;
        Ok(pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn chunked_parts_read_back_by_range() {
        let blobs = Blobs::new(Arc::new(InMemory::new()), DataKey::random().unwrap());
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
                    .unwrap()
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
    async fn pipelined_uploads_match_the_stored_layout() {
        let memory = Arc::new(InMemory::new());
        let blobs = Blobs::new(memory.clone(), DataKey::random().unwrap());
        let batch = (SEGMENT_BYTES as usize) * SEAL_BATCH_SEGMENTS;
        // A whole batch, one byte past it, and several write parts with a short tail.
        for len in [batch, batch + 1, batch * 3 + 12_345] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let stream = futures::stream::iter(
                data.chunks(100_003)
                    .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c))),
            );
            let mut hasher = Sha256::new();
            let part = blobs
                .write_stream(stream, &mut hasher, u64::MAX)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(part.len, len as u64);
            assert_eq!(
                crate::digest::Digest::from_hasher(hasher),
                crate::digest::Digest::of(&data)
            );
            let stored = memory
                .get(&ObjectPath::from(part.path.as_str()))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(stored.len() as u64, crypto::encrypted_len(len as u64));
            assert!(
                !stored
                    .windows(64)
                    .any(|w| w == &data[SEGMENT..SEGMENT + 64])
            );
            assert_eq!(
                blobs.read_all(std::slice::from_ref(&part)).await.unwrap(),
                data
            );
            let edge = (READ_BATCH_SEGMENTS * SEGMENT_BYTES) as usize;
            for range in [
                len - 1..len,
                SEGMENT - 3..(edge + 5).min(len),
                1..len.min(edge * 2 + 9),
            ] {
                let mut out = Vec::new();
                let mut read =
                    Box::pin(blobs.read(vec![part.clone()], range.start as u64..range.end as u64));
                while let Some(chunk) = read.next().await {
                    out.extend_from_slice(&chunk.unwrap());
                }
                assert_eq!(out, &data[range]);
            }
        }
    }

    #[tokio::test]
    async fn empty_body_stores_nothing() {
        let memory = Arc::new(InMemory::new());
        let blobs = Blobs::new(memory.clone(), DataKey::random().unwrap());
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::new())]);
        let part = blobs
            .write_stream(stream, &mut Sha256::new(), u64::MAX)
            .await
            .unwrap();
        assert!(part.is_none());
        let listed: Vec<_> = memory.list(None).collect().await;
        assert!(listed.is_empty());
    }

    #[tokio::test]
    async fn oversized_upload_leaves_nothing() {
        let memory = Arc::new(InMemory::new());
        let blobs = Blobs::new(memory.clone(), DataKey::random().unwrap());
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
