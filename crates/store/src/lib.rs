//! The control plane's state store: a key-value store with etcd's semantics (global
//! revisions, compare-and-swap transactions, prefix watches) behind the [`Store`] trait, and
//! its embedded, crash-safe backend on redb ([`RedbStore`]).

pub mod conformance;
mod redb_store;

use std::future::Future;
use std::pin::Pin;

pub use redb_store::RedbStore;

/// A global, strictly increasing counter: each committed transaction gets the next one.
pub type Revision = u64;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The largest value one key may hold.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// The most operations one transaction may carry.
pub const OPS_PER_TXN_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// 1 when created, +1 on every put.
    pub version: u64,
}

#[derive(Clone, Debug)]
pub struct RangeRequest {
    pub prefix: String,
    /// Exclusive lower bound within the prefix.
    pub start_after: Option<String>,
    /// 0 means no limit.
    pub limit: usize,
}

#[derive(Clone, Debug)]
pub struct RangeResponse {
    /// In ascending key order.
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    /// The store revision the read saw.
    pub revision: Revision,
}

#[derive(Clone, Debug)]
pub enum Compare {
    /// The key's mod_revision must equal this; 0 means "the key must not exist".
    ModRevision { key: String, mod_revision: Revision },
}

#[derive(Clone, Debug)]
pub enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed {
        revision: Revision,
    },
    /// The first compare that failed; nothing was written.
    Conflict {
        key: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For a delete: the key and its last value, with `mod_revision` the delete's revision.
    pub kv: KeyValue,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (disk full, I/O error, ...). The operation did not happen.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Stored bytes could not be decoded: the file is damaged or from an incompatible version.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A watch asked for history the store no longer keeps; re-list, then watch from now.
    #[error("revision {requested} is compacted; the oldest watchable revision is {oldest}")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    /// The watcher fell too far behind and was dropped; re-list, then watch again.
    #[error("the watcher fell behind and was dropped")]
    WatchLagged,
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
    /// A value or transaction exceeds the store's limits; nothing was written.
    #[error("{0}")]
    TooLarge(String),
}

/// A bounded stream of committed events under a prefix, one transaction at a time.
pub struct Watcher {
    receiver: tokio::sync::mpsc::Receiver<Vec<WatchEvent>>,
    lagged: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watcher {
    /// The events of the next matching transaction, in revision order.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError> {
        match self.receiver.recv().await {
            Some(events) => Ok(events),
            None if self.lagged.load(std::sync::atomic::Ordering::Acquire) => {
                Err(StoreError::WatchLagged)
            }
            None => Err(StoreError::Closed),
        }
    }
}

/// The state store. Backends: [`RedbStore`] (embedded); etcd later, behind the same trait
/// and the same [`conformance`] suite.
pub trait Store: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>>;
    fn range(&self, request: RangeRequest) -> BoxFuture<'_, Result<RangeResponse, StoreError>>;
    /// Atomically: if every compare holds, apply every op and commit durably before
    /// answering Committed.
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, StoreError>>;
    /// Events for keys under `prefix` with revision >= `start_revision` (0: only future ones).
    fn watch(&self, prefix: &str, start_revision: Revision) -> Result<Watcher, StoreError>;
    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>>;
}
