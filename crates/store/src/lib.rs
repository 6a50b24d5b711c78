//! The control plane's state store: a key-value store with etcd's semantics (global
//! revisions, compare-and-swap transactions, prefix watches) behind the [`Store`] trait, and
//! its embedded, crash-safe backend on redb ([`RedbStore`]).
//!
//! Callers only ever see the trait, so another backend (etcd) can be added without touching
//! them; every backend runs the same behaviour suite, `conformance`.
//!
//! Things a caller must know:
//! - A [`Txn`] is all-or-nothing. Compares are checked first; if one fails nothing is written
//!   and the outcome names the key. Ops are applied in order.
//! - Every committed transaction with at least one op gets the next [`Revision`]; a transaction
//!   with compares but no ops is a consistent check: it reports the current revision and
//!   writes nothing.
//! - A txn future that is dropped after it was queued may still commit.
//! - List then watch without gaps or duplicates by watching from `range().revision + 1`.
//! - A [`Watcher`] is bounded: a consumer that falls [`WATCH_BUFFER_MAX`] transactions behind
//!   gets [`StoreError::WatchLagged`] and must re-list.
//!
//! How the embedded backend keeps its promises (the modules hold the details):
//! - Durability: a transaction is answered Committed only once its effects are synced to
//!   disk: in the write-ahead log (`<state file>.wal`, one `fdatasync` per batch of
//!   transactions), from which every open replays what redb's own file lacks. redb commits
//!   each batch without syncing and is made durable by a checkpoint every 64 MiB of log or
//!   30 s, and at shutdown, after which the log starts over.
//! - Atomicity across a crash: a batch is one log frame with a checksum; a frame torn by a
//!   crash fails its checksum and is ignored with everything after it, and it was never
//!   acknowledged.
//! - Revisions survive a crash: recovery restores the revision of the last logged batch,
//!   and new transactions continue from it.

#[doc(hidden)]
pub mod conformance;
mod record;
mod redb_store;
mod wal;
mod watch;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use redb_store::{
    CHECKPOINT_LOG_BYTES_MAX, CHECKPOINT_LOG_BYTES_MIN, RedbStore, StoreOptions, log_path,
};
pub use watch::{HISTORY_BYTES_MAX, HISTORY_EVENTS_MAX};
pub use writer::{BATCH_BYTES_MAX, TXN_QUEUE_MAX, TXNS_PER_COMMIT_MAX};

/// A global, strictly increasing counter: each committed write transaction gets the next one.
/// An empty store is at revision 0.
pub type Revision = u64;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The largest value one key may hold. Records are small JSON documents; anything bigger is a
/// bug upstream and would bloat every watcher's buffer and the history ring.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// The longest key. Keys are paths built from names the API already bounds.
pub const KEY_BYTES_MAX: usize = 4096;
/// The most operations (and, separately, the most compares) one transaction may carry.
pub const OPS_PER_TXN_MAX: usize = 1024;
/// The most key and value bytes one transaction may carry in total; it bounds the writer's
/// memory, since the writer holds a whole batch of transactions at once.
pub const TXN_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Transactions a watcher may have buffered before it is dropped as lagging.
pub const WATCH_BUFFER_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that created this incarnation of the key (a deleted then re-created key
    /// starts over).
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
    /// 1 when created, +1 on every put.
    pub version: u64,
}

#[derive(Clone, Debug)]
pub struct RangeRequest {
    pub prefix: String,
    /// Exclusive lower bound within the prefix: pass the last key of the previous page.
    pub start_after: Option<String>,
    /// 0 means no limit.
    pub limit: usize,
}

#[derive(Clone, Debug)]
pub struct RangeResponse {
    /// In ascending (byte-wise) key order.
    pub kvs: Vec<KeyValue>,
    /// More keys under the prefix follow the last one returned.
    pub more: bool,
    /// The store revision the read saw; watch from `revision + 1` to continue without a gap.
    pub revision: Revision,
}

#[derive(Clone, Debug)]
pub enum Compare {
    /// The key's mod_revision must equal this; 0 means "the key must not exist".
    ModRevision { key: String, mod_revision: Revision },
    /// The key must exist and hold exactly these bytes. A writer that bumps a version inside
    /// every value it writes can compare against a value it has sent but whose revision it
    /// does not know yet (a commit still in flight), which a `ModRevision` compare cannot.
    Value { key: String, value: Vec<u8> },
}

impl Compare {
    /// The key this compare reads.
    pub fn key(&self) -> &str {
        match self {
            Compare::ModRevision { key, .. } | Compare::Value { key, .. } => key,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// Deleting a missing key is not an error and produces no event.
    Delete {
        key: String,
    },
}

#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every compare held and every op is durable. For a transaction without ops this is the
    /// revision the compares were checked at.
    Committed { revision: Revision },
    /// The first compare that failed; nothing was written.
    Conflict { key: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For a put: the new state. For a delete: the key and its last value, create_revision
    /// and version, with `mod_revision` the delete's revision.
    pub kv: KeyValue,
}

/// Why a store call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk or the storage engine failed (disk full, I/O error, ...). A write that failed
    /// this way was not acknowledged; after an I/O error the embedded store refuses further
    /// writes until it is reopened (restart the server once the disk is fixed).
    #[error("state store failure: {0}")]
    Storage(String),
    /// The state file is locked by another process: two servers cannot share a data directory.
    #[error(
        "the state file {path} is in use by another process; stop the other flotilla server \
         or give this one its own data directory"
    )]
    InUse { path: std::path::PathBuf },
    /// Stored bytes could not be decoded: the file is damaged or from an incompatible version.
    #[error("the state file is corrupt: {0}")]
    Corrupt(String),
    /// A watch asked for history the store no longer keeps; re-list, then watch from the
    /// list's revision + 1.
    #[error(
        "revision {requested} is compacted; the oldest watchable revision is {oldest}; \
         re-list and watch from the list's revision"
    )]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    /// The watcher fell more than [`WATCH_BUFFER_MAX`] transactions behind and was dropped;
    /// re-list, then watch again.
    #[error("the watcher fell behind and was dropped; re-list and watch again")]
    WatchLagged,
    /// The store is shutting down or has shut down.
    #[error("the state store is closed")]
    Closed,
    /// A key, value or transaction exceeds the store's limits; nothing was written.
    #[error("{what} is {size} bytes or items; the limit is {limit}")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    /// The request is malformed (for example an empty key); nothing was written.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Checks a transaction against the store's limits before it is queued, so an oversized
/// request is refused without costing the writer anything. Returns its size in bytes.
/// Backends call this; it is public so every backend enforces the same contract.
pub fn validate_txn(txn: &Txn) -> Result<usize, StoreError> {
    if txn.ops.len() > OPS_PER_TXN_MAX {
        return Err(StoreError::TooLarge {
            what: "the transaction's operation count".into(),
            size: txn.ops.len(),
            limit: OPS_PER_TXN_MAX,
        });
    }
    if txn.compares.len() > OPS_PER_TXN_MAX {
        return Err(StoreError::TooLarge {
            what: "the transaction's compare count".into(),
            size: txn.compares.len(),
            limit: OPS_PER_TXN_MAX,
        });
    }
    let mut bytes = 0usize;
    for compare in &txn.compares {
        let key = compare.key();
        validate_key(key)?;
        bytes += key.len();
        if let Compare::Value { value, .. } = compare {
            bytes += value.len();
        }
    }
    for op in &txn.ops {
        match op {
            Op::Put { key, value } => {
                validate_key(key)?;
                if value.len() > VALUE_BYTES_MAX {
                    return Err(StoreError::TooLarge {
                        what: format!("the value for '{}'", truncated(key)),
                        size: value.len(),
                        limit: VALUE_BYTES_MAX,
                    });
                }
                bytes += key.len() + value.len();
            }
            Op::Delete { key } => {
                validate_key(key)?;
                bytes += key.len();
            }
        }
    }
    if bytes > TXN_BYTES_MAX {
        return Err(StoreError::TooLarge {
            what: "the transaction's keys and values".into(),
            size: bytes,
            limit: TXN_BYTES_MAX,
        });
    }
    Ok(bytes)
}

fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid("a key must not be empty".into()));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(StoreError::TooLarge {
            what: format!("the key '{}...'", truncated(key)),
            size: key.len(),
            limit: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// The start of a key, for error messages that must stay readable.
fn truncated(key: &str) -> &str {
    let mut end = key.len().min(64);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

/// One transaction's events as a watcher receives them: shared between the watchers that
/// receive the same ones, so fanning out a write copies no keys or values.
pub type WatchEvents = Arc<[WatchEvent]>;

/// A bounded stream of committed events under a prefix, one transaction at a time, in
/// revision order.
pub struct Watcher {
    receiver: tokio::sync::mpsc::Receiver<WatchEvents>,
    /// Set by the publisher before it drops the sender of a watcher that overflowed, so the
    /// end of the stream can be told apart from a shutdown.
    lagged: Arc<AtomicBool>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("buffered", &self.receiver.len())
            .finish()
    }
}

impl Watcher {
    /// The receiving half of a watch; the backend keeps the sender and `lagged`.
    pub(crate) fn new(
        receiver: tokio::sync::mpsc::Receiver<WatchEvents>,
        lagged: Arc<AtomicBool>,
    ) -> Self {
        Self { receiver, lagged }
    }

    /// The events of the next matching transaction (never empty, all with the same
    /// `mod_revision`). Events buffered before a lag or a shutdown are still delivered first.
    pub async fn next(&mut self) -> Result<WatchEvents, StoreError> {
        match self.receiver.recv().await {
            Some(events) => Ok(events),
            None if self.lagged.load(Ordering::Acquire) => Err(StoreError::WatchLagged),
            None => Err(StoreError::Closed),
        }
    }
}

/// The state store. Backends: [`RedbStore`] (embedded); etcd later, behind the same trait
/// and the same `conformance` suite.
pub trait Store: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>>;
    fn range(&self, request: RangeRequest) -> BoxFuture<'_, Result<RangeResponse, StoreError>>;
    /// Atomically: if every compare holds, apply every op and commit durably (fsync) before
    /// answering Committed. A backend should evaluate the transactions one caller issues in
    /// the order of the calls, even before their futures are polled (the embedded one does
    /// while its queue has room); callers may count on that for speed, never correctness.
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, StoreError>>;
    /// Events for keys starting with `prefix` with revision >= `start_revision` (0 or
    /// current + 1: only future events). If `start_revision` is older than the retained
    /// history: [`StoreError::Compacted`].
    fn watch(&self, prefix: &str, start_revision: Revision) -> Result<Watcher, StoreError>;
    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>>;
}
