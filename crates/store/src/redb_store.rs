//! The embedded backend: redb on one file plus its write-ahead log (`<file>.wal`, see
//! [`crate::wal`]), read directly by callers, written by one group-committing writer thread
//! (see [`crate::writer`]).
//!
//! Opening recovers: redb comes back at its last durable commit (the last checkpoint), and
//! every logged batch after it is replayed into redb, committed durably, and the log reset,
//! before the first caller is served. A store that was shut down cleanly checkpointed on the
//! way out, so its log is empty and opening replays nothing.
//!
//! Reads are redb read transactions (MVCC snapshots): they never block on the writer and never
//! see part of a batch. They run inline on the caller's task because a lookup in redb's page
//! cache takes microseconds, less than a hop to the blocking pool; the cache (redb's default,
//! 1 GiB) holds a control plane's whole state, so reads do not wait on the disk.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use crate::record::{self, FORMAT, HEADER_BYTES, KV, META, META_FORMAT, META_REVISION, redb_error};
use crate::wal::{Change, Wal};
use crate::watch::WatchHub;
use crate::writer::{self, Log, Pending, Request, Shared, TXN_QUEUE_MAX};
use crate::{
    BoxFuture, KeyValue, RangeRequest, RangeResponse, Revision, Store, StoreError, Txn, TxnOutcome,
    Watcher,
};

/// The smallest and largest log size that may trigger a checkpoint: below, checkpoints come
/// so often that the log saves little; above, recovery and redb's buffered pages grow.
pub const CHECKPOINT_LOG_BYTES_MIN: u64 = 1024 * 1024;
pub const CHECKPOINT_LOG_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// How the embedded store makes its commits durable. The defaults are what the server runs;
/// the fields exist so benchmarks and tests can compare and provoke.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Make each batch durable in the write-ahead log and checkpoint redb now and then
    /// (true), or commit every batch durably in redb itself (false: no log file, but a
    /// scattered multi-page sync per batch).
    pub write_ahead_log: bool,
    /// Overwrite a preallocated log in place (true), so a sync flushes data but no
    /// file-system metadata, or append and truncate (false).
    pub preallocate_log: bool,
    /// Checkpoint once the log holds this many bytes; clamped to
    /// [`CHECKPOINT_LOG_BYTES_MIN`]..=[`CHECKPOINT_LOG_BYTES_MAX`]. It bounds the log file,
    /// the work of a recovery, and the pages redb holds in memory between checkpoints.
    pub checkpoint_log_bytes: u64,
    /// Checkpoint once the oldest batch not yet checkpointed is this old (checked after each
    /// batch), so a store that writes little still reaches a durable redb file, and a crash
    /// replays at most this much of a quiet store's history.
    pub checkpoint_interval: Duration,
    /// The memory redb may hold of the file's pages (read cache and write buffer). The
    /// server's hot reads come from its own state cache, and redb's writes touch the B-tree's
    /// newest pages, so a small cache costs no speed; redb's default of 1 GiB grew with the
    /// file (260 MiB after 100,000 placements) and doubled the process.
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            write_ahead_log: true,
            preallocate_log: true,
            // About 130 placement batches of 0.5 MB: one checkpoint per ~1-2 s under full
            // load, and a recovery that reads and replays 64 MiB, well under a second.
            checkpoint_log_bytes: 64 * 1024 * 1024,
            checkpoint_interval: Duration::from_secs(30),
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The write-ahead log beside the state file at `path`.
pub fn log_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".wal");
    path.with_file_name(name)
}

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
    /// Opens the store file at `path` with the default [`StoreOptions`], creating it (and its
    /// directory) if missing, and recovers every logged batch. A reopened store keeps all
    /// data and its revision; its watch history starts empty.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &StoreOptions::default())
    }

    /// [`RedbStore::open`] with explicit options.
    pub fn open_with(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Storage(format!(
                    "creating the data directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
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
        let mut revision = prepare(&db)?;
        let log = if options.write_ahead_log {
            let mut wal = Wal::open(&log_path(path), options.preallocate_log)?;
            revision = recover(&db, &mut wal, revision)?;
            Some(Log::new(
                wal,
                options
                    .checkpoint_log_bytes
                    .clamp(CHECKPOINT_LOG_BYTES_MIN, CHECKPOINT_LOG_BYTES_MAX),
                options.checkpoint_interval,
            ))
        } else {
            // A log left by an earlier open with the log on must not be forgotten.
            let mut wal = Wal::open(&log_path(path), false)?;
            revision = recover(&db, &mut wal, revision)?;
            None
        };
        let store = Self::start(db, revision, log)?;
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
        let revision = prepare(&db)?;
        Self::start(db, revision, None)
    }

    fn start(db: Database, revision: Revision, log: Option<Log>) -> Result<Self, StoreError> {
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
                .spawn(move || writer::run(shared, requests, log))
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
    /// Blocks for at most one batch and the closing checkpoint (which leaves the log empty,
    /// so the next open replays nothing; up to about a second after heavy writing), so call
    /// it from async code only where that stall is acceptable; idempotent.
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

/// Replays the logged batches redb lacks (those after its durable revision `durable`),
/// commits them durably, and resets the log. Returns the store's revision. Idempotent: a
/// crash part way leaves the log as it was, and the next open replays the same frames.
fn recover(db: &Database, wal: &mut Wal, durable: Revision) -> Result<Revision, StoreError> {
    let write = db
        .begin_write()
        .map_err(redb_error("starting the recovery transaction"))?;
    let mut frames = 0usize;
    let revision = {
        let mut table = write
            .open_table(KV)
            .map_err(table_error("opening the kv table"))?;
        let revision = wal.recover(durable, |frame| {
            for change in frame.changes()? {
                match change {
                    Change::Put { key, header, value } => {
                        let mut slot = table
                            .insert_reserve(key, HEADER_BYTES + value.len())
                            .map_err(redb_error("replaying a record"))?;
                        record::encode_into(header, value, slot.as_mut());
                    }
                    Change::Delete { key } => {
                        table
                            .remove(key)
                            .map_err(redb_error("replaying a delete"))?;
                    }
                }
            }
            frames += 1;
            Ok(())
        })?;
        if revision > durable {
            write
                .open_table(META)
                .map_err(table_error("opening the meta table"))?
                .insert(META_REVISION, revision)
                .map_err(redb_error("recording the recovered revision"))?;
        }
        revision
    };
    if revision > durable {
        // The default durability: the replayed batches are in redb's durable state before
        // the log that held them is reset.
        write
            .commit()
            .map_err(redb_error("committing the recovered batches"))?;
        tracing::info!(
            frames,
            from = durable,
            to = revision,
            "replayed the state store's write-ahead log"
        );
    } else {
        write
            .abort()
            .map_err(redb_error("aborting an empty recovery"))?;
    }
    wal.reset()?;
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
        // Queued now, before the future is first polled, so transactions one caller issues
        // one after another are evaluated in that order even if it awaits none of them yet
        // (the plan applier's pipeline). Only a full queue defers it to the future.
        let queued = (|| {
            let bytes = crate::validate_txn(&txn)?;
            if self.shared.closing.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            let (reply, answer) = oneshot::channel();
            match self
                .queue
                .try_send(Request::Txn(Pending { txn, bytes, reply }))
            {
                Ok(()) => Ok((None, answer)),
                Err(mpsc::error::TrySendError::Full(request)) => Ok((Some(request), answer)),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Closed),
            }
        })();
        Box::pin(async move {
            let (deferred, answer) = queued?;
            if let Some(request) = deferred {
                // Waits for room: backpressure on the callers.
                self.queue
                    .send(request)
                    .await
                    .map_err(|_| StoreError::Closed)?;
            }
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
