//! The embedded backend: redb on one file, with a single writer thread that group-commits.
//!
//! Callers send transactions over a bounded queue; the writer drains up to
//! [`TXNS_PER_COMMIT_MAX`] of them, checks each one's compares against the state as left by
//! the ones before it (so the outcome equals one-at-a-time execution), applies the winners in
//! one redb write transaction, commits it durably once, and only then answers every caller.
//! One fsync thus covers many requests, which is what lets the API reach thousands of writes
//! per second on one disk while still never acknowledging a write a crash could lose.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::*;

/// key -> header (create_revision, mod_revision, version; 8 bytes each, little-endian) + value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// "revision" -> the last committed revision.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const HEADER_BYTES: usize = 24;

/// Transactions that may wait for the writer before callers block.
pub const TXN_QUEUE_MAX: usize = 4096;
/// Transactions folded into one durable commit.
pub const TXNS_PER_COMMIT_MAX: usize = 256;
/// Recent events kept so a watch can start slightly in the past.
pub const HISTORY_EVENTS_MAX: usize = 10_000;
/// Transactions a watcher may have pending before it is dropped as lagging.
pub const WATCH_BUFFER_MAX: usize = 1024;

fn storage(error: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(error.to_string())
}

fn encode(
    create_revision: Revision,
    mod_revision: Revision,
    version: u64,
    value: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + value.len());
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&mod_revision.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(key: &str, bytes: &[u8]) -> Result<KeyValue, StoreError> {
    if bytes.len() < HEADER_BYTES {
        return Err(StoreError::Corrupt(format!(
            "record '{key}' is {} bytes, shorter than its header",
            bytes.len()
        )));
    }
    let word = |i: usize| {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_le_bytes(buf)
    };
    Ok(KeyValue {
        key: key.to_owned(),
        create_revision: word(0),
        mod_revision: word(1),
        version: word(2),
        value: bytes[HEADER_BYTES..].to_vec(),
    })
}

struct Pending {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnOutcome, StoreError>>,
}

struct Subscriber {
    prefix: String,
    sender: tokio::sync::mpsc::Sender<Vec<WatchEvent>>,
    lagged: Arc<AtomicBool>,
}

/// Watch bookkeeping, under one lock so a new watcher never misses or repeats an event.
struct WatchState {
    /// Committed transactions' events, oldest first.
    history: VecDeque<(Revision, Vec<WatchEvent>)>,
    history_event_count: usize,
    /// Every revision >= this is in `history` (or not yet committed).
    oldest_watchable: Revision,
    subscribers: Vec<Subscriber>,
}

pub struct RedbStore {
    db: Arc<Database>,
    queue: Mutex<Option<std::sync::mpsc::SyncSender<Pending>>>,
    revision: Arc<AtomicU64>,
    watch: Arc<Mutex<WatchState>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("revision", &self.revision.load(Ordering::Acquire))
            .finish()
    }
}

impl RedbStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(storage)?;
        Self::start(db)
    }

    /// A store that lives in memory only, for tests and benchmarks.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(storage)?;
        Self::start(db)
    }

    fn start(db: Database) -> Result<Self, StoreError> {
        // Make sure both tables exist so read transactions can always open them.
        let txn = db.begin_write().map_err(storage)?;
        let revision = {
            txn.open_table(KV).map_err(storage)?;
            let meta = txn.open_table(META).map_err(storage)?;

            meta.get("revision")
                .map_err(storage)?
                .map(|v| v.value())
                .unwrap_or(0)
        };
        txn.commit().map_err(storage)?;
        let db = Arc::new(db);
        let revision = Arc::new(AtomicU64::new(revision));
        let watch = Arc::new(Mutex::new(WatchState {
            history: VecDeque::new(),
            history_event_count: 0,
            oldest_watchable: revision.load(Ordering::Acquire) + 1,
            subscribers: Vec::new(),
        }));
        let (sender, receiver) = std::sync::mpsc::sync_channel(TXN_QUEUE_MAX);
        let writer = Writer {
            db: db.clone(),
            revision: revision.clone(),
            watch: watch.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("flotilla-store-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(storage)?;
        Ok(Self {
            db,
            queue: Mutex::new(Some(sender)),
            revision,
            watch,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Stops the writer after it has finished the transactions already queued.
    pub fn shutdown(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }

    fn read(&self) -> Result<(redb::ReadTransaction, Revision), StoreError> {
        // Read the revision first: the snapshot is at least this new.
        let revision = self.revision.load(Ordering::Acquire);
        let txn = self.db.begin_read().map_err(storage)?;
        Ok((txn, revision))
    }

    fn get_blocking(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let (txn, _) = self.read()?;
        let table = txn.open_table(KV).map_err(storage)?;
        match table.get(key).map_err(storage)? {
            Some(bytes) => decode(key, bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    fn range_blocking(&self, request: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let (txn, revision) = self.read()?;
        let table = txn.open_table(KV).map_err(storage)?;
        let start = match &request.start_after {
            Some(after) if after.as_str() >= request.prefix.as_str() => after.clone(),
            _ => request.prefix.clone(),
        };
        let mut kvs = Vec::new();
        let mut more = false;
        for entry in table.range::<&str>(start.as_str()..).map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let key = key.value();
            if !key.starts_with(request.prefix.as_str()) {
                break;
            }
            if request.start_after.as_deref() == Some(key) {
                continue;
            }
            if request.limit > 0 && kvs.len() == request.limit {
                more = true;
                break;
            }
            kvs.push(decode(key, value.value())?);
        }
        Ok(RangeResponse {
            kvs,
            more,
            revision,
        })
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn check_limits(txn: &Txn) -> Result<(), StoreError> {
    if txn.ops.len() > OPS_PER_TXN_MAX {
        return Err(StoreError::TooLarge(format!(
            "a transaction may carry at most {OPS_PER_TXN_MAX} operations; this one has {}",
            txn.ops.len()
        )));
    }
    for op in &txn.ops {
        if let Op::Put { key, value } = op
            && value.len() > VALUE_BYTES_MAX
        {
            return Err(StoreError::TooLarge(format!(
                "the value for '{key}' is {} bytes; the limit is {VALUE_BYTES_MAX}",
                value.len()
            )));
        }
    }
    Ok(())
}

impl Store for RedbStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        // redb reads are in-memory page lookups; running them inline is cheaper than a
        // thread hop.
        Box::pin(async move { self.get_blocking(key) })
    }

    fn range(&self, request: RangeRequest) -> BoxFuture<'_, Result<RangeResponse, StoreError>> {
        Box::pin(async move { self.range_blocking(&request) })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, StoreError>> {
        Box::pin(async move {
            check_limits(&txn)?;
            let (reply, answer) = oneshot::channel();
            let sender = self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or(StoreError::Closed)?;
            // A full queue blocks this caller only; the writer keeps draining it.
            let pending = Pending { txn, reply };
            match sender.try_send(pending) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(pending)) => {
                    tokio::task::spawn_blocking(move || sender.send(pending))
                        .await
                        .map_err(storage)?
                        .map_err(|_| StoreError::Closed)?;
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    return Err(StoreError::Closed);
                }
            }
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn watch(&self, prefix: &str, start_revision: Revision) -> Result<Watcher, StoreError> {
        let mut state = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.revision.load(Ordering::Acquire);
        let (sender, receiver) = tokio::sync::mpsc::channel(WATCH_BUFFER_MAX);
        let lagged = Arc::new(AtomicBool::new(false));
        if start_revision != 0 && start_revision <= current {
            if start_revision < state.oldest_watchable {
                return Err(StoreError::Compacted {
                    requested: start_revision,
                    oldest: state.oldest_watchable,
                });
            }
            for (revision, events) in &state.history {
                if *revision < start_revision {
                    continue;
                }
                let matching: Vec<WatchEvent> = events
                    .iter()
                    .filter(|e| e.kv.key.starts_with(prefix))
                    .cloned()
                    .collect();
                if !matching.is_empty() && sender.try_send(matching).is_err() {
                    return Err(StoreError::Compacted {
                        requested: start_revision,
                        oldest: *revision,
                    });
                }
            }
        }
        state.subscribers.push(Subscriber {
            prefix: prefix.to_owned(),
            sender,
            lagged: lagged.clone(),
        });
        Ok(Watcher { receiver, lagged })
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(async move { Ok(self.revision.load(Ordering::Acquire)) })
    }
}

struct Writer {
    db: Arc<Database>,
    revision: Arc<AtomicU64>,
    watch: Arc<Mutex<WatchState>>,
}

impl Writer {
    fn run(self, receiver: std::sync::mpsc::Receiver<Pending>) {
        // Ends when every sender is gone (the store was shut down or dropped).
        while let Ok(first) = receiver.recv() {
            let mut batch = vec![first];
            while batch.len() < TXNS_PER_COMMIT_MAX {
                match receiver.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    fn commit_batch(&self, batch: Vec<Pending>) {
        let base = self.revision.load(Ordering::Acquire);
        match self.apply(&batch, base) {
            Ok((outcomes, committed, last)) => {
                self.revision.store(last, Ordering::Release);
                self.publish(committed);
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                let message = error.to_string();
                for pending in batch {
                    let _ = pending
                        .reply
                        .send(Err(StoreError::Storage(message.clone())));
                }
            }
        }
    }

    /// Applies the batch in one durable redb transaction.
    #[allow(clippy::type_complexity)]
    fn apply(
        &self,
        batch: &[Pending],
        base: Revision,
    ) -> Result<(Vec<TxnOutcome>, Vec<(Revision, Vec<WatchEvent>)>, Revision), StoreError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        let mut revision = base;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut committed = Vec::new();
        {
            let mut table = txn.open_table(KV).map_err(storage)?;
            'txns: for pending in batch {
                for compare in &pending.txn.compares {
                    let Compare::ModRevision { key, mod_revision } = compare;
                    let actual = match table.get(key.as_str()).map_err(storage)? {
                        Some(bytes) => decode(key, bytes.value())?.mod_revision,
                        None => 0,
                    };
                    if actual != *mod_revision {
                        outcomes.push(TxnOutcome::Conflict { key: key.clone() });
                        continue 'txns;
                    }
                }
                if pending.txn.ops.is_empty() {
                    outcomes.push(TxnOutcome::Committed { revision });
                    continue;
                }
                revision += 1;
                let mut events = Vec::with_capacity(pending.txn.ops.len());
                for op in &pending.txn.ops {
                    match op {
                        Op::Put { key, value } => {
                            let previous = match table.get(key.as_str()).map_err(storage)? {
                                Some(bytes) => Some(decode(key, bytes.value())?),
                                None => None,
                            };
                            let (create_revision, version) = match &previous {
                                Some(kv) => (kv.create_revision, kv.version + 1),
                                None => (revision, 1),
                            };
                            table
                                .insert(
                                    key.as_str(),
                                    encode(create_revision, revision, version, value).as_slice(),
                                )
                                .map_err(storage)?;
                            events.push(WatchEvent {
                                kind: EventKind::Put,
                                kv: KeyValue {
                                    key: key.clone(),
                                    value: value.clone(),
                                    create_revision,
                                    mod_revision: revision,
                                    version,
                                },
                            });
                        }
                        Op::Delete { key } => {
                            let removed = match table.remove(key.as_str()).map_err(storage)? {
                                Some(bytes) => Some(decode(key, bytes.value())?),
                                None => None,
                            };
                            if let Some(mut kv) = removed {
                                kv.mod_revision = revision;
                                events.push(WatchEvent {
                                    kind: EventKind::Delete,
                                    kv,
                                });
                            }
                        }
                    }
                }
                outcomes.push(TxnOutcome::Committed { revision });
                committed.push((revision, events));
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert("revision", revision).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok((outcomes, committed, revision))
    }

    fn publish(&self, committed: Vec<(Revision, Vec<WatchEvent>)>) {
        if committed.is_empty() {
            return;
        }
        let mut state = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        for (revision, events) in committed {
            state.subscribers.retain(|subscriber| {
                let matching: Vec<WatchEvent> = events
                    .iter()
                    .filter(|e| e.kv.key.starts_with(&subscriber.prefix))
                    .cloned()
                    .collect();
                if matching.is_empty() {
                    return !subscriber.sender.is_closed();
                }
                match subscriber.sender.try_send(matching) {
                    Ok(()) => true,
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        subscriber.lagged.store(true, Ordering::Release);
                        false
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            state.history_event_count += events.len();
            state.history.push_back((revision, events));
            while state.history_event_count > HISTORY_EVENTS_MAX {
                match state.history.pop_front() {
                    Some((dropped, events)) => {
                        state.history_event_count -= events.len();
                        state.oldest_watchable = dropped + 1;
                    }
                    None => break,
                }
            }
        }
    }
}
