//! The embedded backend: redb on one file, read directly by callers, written by one
//! group-committing writer thread (see [`crate::writer`]).
//!
//! Reads are redb read transactions (MVCC snapshots): they never block on the writer and never
//! see part of a batch. They run inline on the caller's task because a lookup in redb's page
//! cache takes microseconds, less than a hop to the blocking pool; the cache (redb's default,
//! 1 GiB) holds a control plane's whole state, so reads do not wait on the disk.

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use crate::record::{self, FORMAT, KV, META, META_FORMAT, META_REVISION, redb_error};
use crate::watch::WatchHub;
use crate::writer::{self, Pending, Request, Shared, TXN_QUEUE_MAX};
use crate::{
    BoxFuture, KeyValue, RangeRequest, RangeResponse, Revision, Store, StoreError, Txn, TxnOutcome,
    Watcher,
};

/// The embedded store. Dropping it (or [`RedbStore::shutdown`]) lets the writer finish the
/// queued transactions, stops it, and ends every watcher with [`StoreError::Closed`].
pub struct RedbStore {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Request>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("revision", &self.shared.revision.load(Ordering::Acquire))
            .field("closing", &self.shared.closing.load(Ordering::Acquire))
            .finish()
    }
}

/// Opening a table fails this way only for I/O, or for a file that is not ours (a table of
/// the same name with other types).
fn table_error(doing: &str) -> impl Fn(redb::TableError) -> StoreError + '_ {
    move |error| match error {
        redb::TableError::Storage(storage) => redb_error(doing)(storage),
        other => StoreError::Corrupt(format!(
            "{doing}: {other}; the file is not a flotilla state file"
        )),
    }
}

impl RedbStore {
    /// Opens the store file at `path`, creating it (and its directory) if missing. A reopened
    /// store keeps all data and its revision; its watch history starts empty.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Storage(format!(
                    "creating the data directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let db = Database::builder()
            .create(path)
            .map_err(|error| match error {
                DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                    path: path.to_owned(),
                },
                DatabaseError::UpgradeRequired(version) => StoreError::Corrupt(format!(
                    "{} is in redb file format {version}, which this build cannot read",
                    path.display()
                )),
                DatabaseError::Storage(redb::StorageError::Corrupted(message)) => {
                    StoreError::Corrupt(format!("{}: {message}", path.display()))
                }
                other => StoreError::Storage(format!("opening {}: {other}", path.display())),
            })?;
        let store = Self::start(db)?;
        tracing::info!(
            path = %path.display(),
            revision = store.shared.revision.load(Ordering::Acquire),
            "opened the state store"
        );
        Ok(store)
    }

    /// A store that lives in memory only (redb's in-memory backend), for tests and benchmarks.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Storage(format!("creating an in-memory store: {e}")))?;
        Self::start(db)
    }

    fn start(db: Database) -> Result<Self, StoreError> {
        let revision = prepare(&db)?;
        let shared = Arc::new(Shared {
            db,
            revision: AtomicU64::new(revision),
            hub: WatchHub::new(revision),
            closing: AtomicBool::new(false),
        });
        let (queue, requests) = mpsc::channel(TXN_QUEUE_MAX);
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("flotilla-store-writer".into())
                .spawn(move || writer::run(shared, requests))
                .map_err(|e| StoreError::Storage(format!("starting the writer thread: {e}")))?
        };
        Ok(Self {
            shared,
            queue,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Lets the writer commit the transactions already queued, stops it, and closes every
    /// watcher. Later transactions fail with [`StoreError::Closed`]; reads keep working.
    /// Blocks for at most one commit, so it is safe to call from async code; idempotent.
    pub fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::Release);
        // If the queue is full the writer is busy, will finish the batch at hand, and see
        // `closing`; if it is already gone there is nothing to stop.
        let _ = self.queue.try_send(Request::Stop);
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = writer.take()
            && handle.join().is_err()
        {
            tracing::error!("the state store writer thread panicked");
        }
        self.shared.hub.close();
    }

    fn get_now(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let read = self
            .shared
            .db
            .begin_read()
            .map_err(redb_error("starting a read"))?;
        let table = read
            .open_table(KV)
            .map_err(table_error("opening the kv table"))?;
        match table.get(key).map_err(redb_error("reading a record"))? {
            Some(bytes) => Ok(Some(
                record::decode(key, bytes.value())?.into_key_value(key.to_owned()),
            )),
            None => Ok(None),
        }
    }

    fn range_now(&self, request: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let read = self
            .shared
            .db
            .begin_read()
            .map_err(redb_error("starting a read"))?;
        // The revision of this very snapshot, so list-then-watch from revision + 1 has
        // neither a gap nor a duplicate.
        let revision = read
            .open_table(META)
            .map_err(table_error("opening the meta table"))?
            .get(META_REVISION)
            .map_err(redb_error("reading the revision"))?
            .map_or(0, |v| v.value());
        let table = read
            .open_table(KV)
            .map_err(table_error("opening the kv table"))?;
        // Keys sort byte-wise, so everything under the prefix is contiguous from the prefix.
        let lower = match &request.start_after {
            Some(after) if after.as_str() >= request.prefix.as_str() => {
                Bound::Excluded(after.as_str())
            }
            _ => Bound::Included(request.prefix.as_str()),
        };
        let mut kvs = Vec::new();
        let mut more = false;
        for entry in table
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(redb_error("listing records"))?
        {
            let (key, value) = entry.map_err(redb_error("listing records"))?;
            let key = key.value();
            if !key.starts_with(request.prefix.as_str()) {
                break;
            }
            if request.limit > 0 && kvs.len() == request.limit {
                more = true;
                break;
            }
            kvs.push(record::decode(key, value.value())?.into_key_value(key.to_owned()));
        }
        Ok(RangeResponse {
            kvs,
            more,
            revision,
        })
    }
}

/// Creates the tables if missing (so reads can always open them), checks the file format,
/// and returns the last committed revision.
fn prepare(db: &Database) -> Result<Revision, StoreError> {
    let write = db
        .begin_write()
        .map_err(redb_error("starting the opening transaction"))?;
    let revision = {
        write
            .open_table(KV)
            .map_err(table_error("opening the kv table"))?;
        let mut meta = write
            .open_table(META)
            .map_err(table_error("opening the meta table"))?;
        let format = meta
            .get(META_FORMAT)
            .map_err(redb_error("reading the file format"))?
            .map(|v| v.value());
        match format {
            Some(FORMAT) => {}
            // Files from before the marker have the same layout.
            None => {
                meta.insert(META_FORMAT, FORMAT)
                    .map_err(redb_error("recording the file format"))?;
            }
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "the state file has format {other}; this build reads format {FORMAT} \
                     (was it written by a newer flotilla?)"
                )));
            }
        }
        meta.get(META_REVISION)
            .map_err(redb_error("reading the revision"))?
            .map_or(0, |v| v.value())
    };
    write
        .commit()
        .map_err(redb_error("committing the opening transaction"))?;
    Ok(revision)
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Store for RedbStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        Box::pin(async move { self.get_now(key) })
    }

    fn range(&self, request: RangeRequest) -> BoxFuture<'_, Result<RangeResponse, StoreError>> {
        Box::pin(async move { self.range_now(&request) })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, StoreError>> {
        Box::pin(async move {
            let bytes = crate::validate_txn(&txn)?;
            if self.shared.closing.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            let (reply, answer) = oneshot::channel();
            // Waits for room when the queue is full: backpressure on the callers.
            self.queue
                .send(Request::Txn(Pending { txn, bytes, reply }))
                .await
                .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn watch(&self, prefix: &str, start_revision: Revision) -> Result<Watcher, StoreError> {
        self.shared.hub.subscribe(prefix, start_revision, || {
            self.shared.revision.load(Ordering::Acquire)
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(async move { Ok(self.shared.revision.load(Ordering::Acquire)) })
    }
}
