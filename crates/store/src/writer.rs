//! The redb backend's single writer thread and its group commit.
//!
//! Callers queue transactions on a bounded channel. The writer takes every queued one (up to
//! [`TXNS_PER_COMMIT_MAX`] / [`BATCH_BYTES_MAX`]), evaluates them in queue order against the
//! state as left by the earlier ones of the same batch (an overlay in front of the table), so
//! every outcome is exactly what one-at-a-time execution would give, and makes the winners
//! durable once for the whole batch before it publishes the events and answers the callers.
//! One sync thus covers a whole batch, which is what lets the API reach thousands of writes
//! per second on one disk while never acknowledging a write a crash could lose. There is no
//! timer: under light load a batch is one transaction, under heavy load the queue fills while
//! the previous batch is syncing.
//!
//! On disk (see [`crate::wal`] for the log's own invariants):
//!
//! ```text
//! batch:       evaluate -> frame of final key states -> WAL write + fdatasync
//!                       -> redb commit, Durability::None -> publish -> answer
//! checkpoint:  redb commit, Durability::Immediate -> WAL reset
//!              (after a batch once the log holds CHECKPOINT_LOG_BYTES or its oldest frame
//!               is CHECKPOINT_INTERVAL old, and at shutdown)
//! ```
//! A durable redb commit rewrites and syncs every B-tree page the batch touched, scattered
//! over the file (20-30 ms for a 500-op placement batch); the log's one sequential write is
//! a few milliseconds, and a checkpoint pays redb's cost once for many batches, whose pages
//! overlap. Without a log (the in-memory store, or [`crate::StoreOptions`] turning it off)
//! every batch commits with `Durability::Immediate` instead.
//!
//! After a storage failure the writer refuses every later batch: once a sync has failed the
//! kernel may have dropped the unsynced data, and once a frame is logged but redb refused
//! the batch, memory and disk disagree. Reopening the store recovers from the disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use crate::record::{self, HEADER_BYTES, Header, KV, META, META_REVISION, redb_error};
use crate::wal::Wal;
use crate::watch::{Committed, WatchHub};
use crate::{Compare, EventKind, KeyValue, Op, Revision, StoreError, Txn, TxnOutcome, WatchEvent};

/// Batches writing at least this many keys sync the log on a helper thread while the writer
/// inserts into redb.
const OVERLAPPED_INSERTS_MIN: usize = 64;

/// Transactions that may wait for the writer; callers beyond it wait for room (backpressure
/// instead of unbounded memory).
pub const TXN_QUEUE_MAX: usize = 1024;
/// Transactions folded into one durable commit. Bounds the latency one commit adds to the
/// first caller of its batch.
pub const TXNS_PER_COMMIT_MAX: usize = 256;
/// A batch stops taking transactions once it holds this many key and value bytes, bounding
/// the writer's memory and the size of one commit.
pub const BATCH_BYTES_MAX: usize = 32 * 1024 * 1024;

pub(crate) struct Pending {
    pub txn: Txn,
    /// Key and value bytes, from [`crate::validate_txn`].
    pub bytes: usize,
    pub reply: oneshot::Sender<Result<TxnOutcome, StoreError>>,
}

pub(crate) enum Request {
    Txn(Pending),
    /// Finish what is queued, then exit. Sent by shutdown; if the queue is full the writer
    /// notices `closing` after its current batch instead.
    Stop,
}

/// State the store and its writer share.
pub(crate) struct Shared {
    pub db: Database,
    /// The last committed revision; advanced by the writer after each durable commit.
    pub revision: AtomicU64,
    pub hub: WatchHub,
    /// Set by shutdown (or by a writer that died) so new transactions fail fast.
    pub closing: AtomicBool,
}

/// The write-ahead log and when to checkpoint it.
pub(crate) struct Log {
    pub wal: Wal,
    /// Checkpoint once the log holds this many bytes.
    pub checkpoint_bytes: u64,
    /// Checkpoint once the oldest frame not yet checkpointed is this old.
    pub checkpoint_interval: Duration,
    /// When the oldest frame not yet checkpointed was written; None while the log is empty.
    oldest_frame: Option<Instant>,
}

impl Log {
    pub fn new(wal: Wal, checkpoint_bytes: u64, checkpoint_interval: Duration) -> Self {
        let oldest_frame = (wal.bytes() > 0).then(Instant::now);
        Self {
            wal,
            checkpoint_bytes,
            checkpoint_interval,
            oldest_frame,
        }
    }

    fn checkpoint_due(&self, now: Instant) -> bool {
        self.wal.bytes() >= self.checkpoint_bytes
            || self
                .oldest_frame
                .is_some_and(|oldest| now.duration_since(oldest) >= self.checkpoint_interval)
    }

    /// Makes redb durable up to its last commit (`revision`), then resets the log, whose
    /// frames redb now holds.
    pub fn checkpoint(&mut self, db: &Database, revision: Revision) -> Result<(), StoreError> {
        let mut write = db
            .begin_write()
            .map_err(redb_error("starting a checkpoint"))?;
        write
            .set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Storage(format!("requesting a durable checkpoint: {e}")))?;
        // Rewriting the revision (unchanged) gives the commit something to write, so it is
        // a real durable commit whatever redb does with empty ones.
        record_revision(&write, revision)?;
        write
            .commit()
            .map_err(redb_error("committing a checkpoint"))?;
        self.wal.reset()?;
        self.oldest_frame = None;
        Ok(())
    }
}

/// Records `revision` as the store's last in the transaction `write`.
fn record_revision(write: &redb::WriteTransaction, revision: Revision) -> Result<(), StoreError> {
    let mut meta = write
        .open_table(META)
        .map_err(redb_error("opening the meta table"))?;
    meta.insert(META_REVISION, revision)
        .map_err(redb_error("recording the revision"))?;
    Ok(())
}

/// Runs the writer until shutdown; to be called on its own thread. With a `log`, batches go
/// to the log and redb commits without syncing; a checkpoint at the end leaves nothing to
/// replay at the next open.
pub(crate) fn run(shared: Arc<Shared>, mut queue: mpsc::Receiver<Request>, mut log: Option<Log>) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut revision = shared.revision.load(Ordering::Acquire);
        // The failure that stopped the writer from writing; every later batch gets it.
        let mut failed: Option<StoreError> = None;
        // Once closed, the queue still yields what was already in it, then None.
        while let Some(first) = queue.blocking_recv() {
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut stop = false;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Txn(pending) => {
                        bytes += pending.bytes;
                        batch.push(pending);
                    }
                    Request::Stop => stop = true,
                }
                if batch.len() < TXNS_PER_COMMIT_MAX && bytes < BATCH_BYTES_MAX {
                    next = queue.try_recv().ok();
                }
            }
            if let Some(error) = &failed {
                for pending in batch {
                    let _ = pending.reply.send(Err(error.clone()));
                }
            } else if !batch.is_empty() {
                match commit_batch(&shared, revision, batch, log.as_mut()) {
                    Ok(last) => revision = last,
                    Err(error) => failed = Some(stopped(error)),
                }
            }
            if failed.is_none()
                && let Some(log) = log.as_mut()
                && log.checkpoint_due(Instant::now())
                && let Err(error) = log.checkpoint(&shared.db, revision)
            {
                tracing::error!(%error, "a state store checkpoint failed");
                failed = Some(stopped(error));
            }
            if stop || shared.closing.load(Ordering::Acquire) {
                queue.close();
            }
        }
        if failed.is_none()
            && let Some(log) = log.as_mut()
            && log.wal.bytes() > 0
            && let Err(error) = log.checkpoint(&shared.db, revision)
        {
            // Nothing is lost: the log still holds every batch and the next open replays it.
            tracing::error!(%error, "the shutdown checkpoint of the state store failed");
        }
    }));
    if result.is_err() {
        // Dropping the queue (when this function returns) fails every queued caller with
        // Closed; flag it so new ones fail fast instead of queueing into nothing.
        shared.closing.store(true, Ordering::Release);
        tracing::error!("the state store writer panicked; the store is closed");
    }
}

/// The error later batches get once the writer has stopped writing because of `cause`.
fn stopped(cause: StoreError) -> StoreError {
    match cause {
        StoreError::Storage(message) => StoreError::Storage(format!(
            "{message}; the store refuses writes until it is reopened (restart the server once \
             the disk is fixed)"
        )),
        other => other,
    }
}

/// Commits one batch and answers its callers. Returns the new last revision, or the storage
/// failure every caller of the batch was answered with.
fn commit_batch(
    shared: &Shared,
    base: Revision,
    mut batch: Vec<Pending>,
    log: Option<&mut Log>,
) -> Result<Revision, StoreError> {
    // The writer owns the transactions, so their values move into the events instead of
    // being copied.
    let mut txns: Vec<Txn> = batch
        .iter_mut()
        .map(|pending| std::mem::take(&mut pending.txn))
        .collect();
    match apply_batch(&shared.db, base, &mut txns, log) {
        Ok(applied) => {
            if applied.last != base {
                shared.revision.store(applied.last, Ordering::Release);
                shared.hub.publish(applied.committed, applied.last);
            }
            for (pending, outcome) in batch.into_iter().zip(applied.outcomes) {
                // A caller that stopped waiting is not an error.
                let _ = pending.reply.send(outcome);
            }
            Ok(applied.last)
        }
        Err(error) => {
            tracing::error!(%error, transactions = batch.len(), "a state store commit failed");
            for pending in batch {
                let _ = pending.reply.send(Err(error.clone()));
            }
            Err(error)
        }
    }
}

pub(crate) struct Applied {
    /// One per transaction, in order. An `Err` is that transaction's own failure (a corrupt
    /// record it read); the others are unaffected.
    pub outcomes: Vec<Result<TxnOutcome, StoreError>>,
    pub committed: Vec<Committed>,
    pub last: Revision,
}

/// A key's state staged by the batch: its header, and where its value is, which is the
/// put event that wrote it (`(transaction, event)`: an index into the batch's committed
/// transactions, or the transaction being evaluated when it is `committed.len()`).
#[derive(Clone, Copy, Debug)]
struct Staged {
    header: Header,
    event: (usize, usize),
}

/// A key's state in the batch so far; None: deleted.
type Overlay<'t> = BTreeMap<&'t str, Option<Staged>>;

/// What evaluating one transaction against the batch's state decided.
enum Evaluated<'t> {
    Conflict(String),
    /// Compares held and there is nothing to write.
    Check,
    Write {
        /// The final state of each key the transaction wrote.
        changes: HashMap<&'t str, Option<Staged>>,
        events: Vec<WatchEvent>,
    },
}

/// Evaluates `txns` in order, each seeing the effects of the earlier ones, and commits the
/// writes of all that succeed in one redb transaction: after logging them (`log`) and without
/// a sync, or (no log) durably. If nothing was written the redb transaction is aborted
/// instead: conflicts and checks cost no sync. The values of the transactions' puts are
/// moved out of `txns` into the events.
pub(crate) fn apply_batch(
    db: &Database,
    base: Revision,
    txns: &mut [Txn],
    log: Option<&mut Log>,
) -> Result<Applied, StoreError> {
    let mut write = db
        .begin_write()
        .map_err(redb_error("starting a write transaction"))?;
    let durability = match log {
        Some(_) => Durability::None,
        None => Durability::Immediate,
    };
    write
        .set_durability(durability)
        .map_err(|e| StoreError::Storage(format!("setting the commit's durability: {e}")))?;
    let mut outcomes = Vec::with_capacity(txns.len());
    let mut committed: Vec<Committed> = Vec::new();
    let mut revision = base;
    {
        let mut table = write
            .open_table(KV)
            .map_err(redb_error("opening the kv table"))?;
        // Sorted, so the log lists keys in order and the inserts hit the B-tree in order.
        let mut overlay: Overlay<'_> = BTreeMap::new();
        for txn in txns.iter_mut() {
            let outcome = match evaluate(&table, &overlay, &committed, txn, revision + 1) {
                Ok(Evaluated::Conflict(key)) => Ok(TxnOutcome::Conflict { key }),
                Ok(Evaluated::Check) => Ok(TxnOutcome::Committed { revision }),
                Ok(Evaluated::Write { changes, events }) => {
                    revision += 1;
                    overlay.extend(changes);
                    committed.push(Committed { revision, events });
                    Ok(TxnOutcome::Committed { revision })
                }
                Err(error) => Err(error),
            };
            outcomes.push(outcome);
        }
        if revision == base {
            drop(table);
            write
                .abort()
                .map_err(redb_error("aborting an empty write transaction"))?;
            return Ok(Applied {
                outcomes,
                committed,
                last: base,
            });
        }
        let value = |event: (usize, usize)| committed[event.0].events[event.1].kv.value.as_slice();
        let insert_all = |table: &mut redb::Table<&str, &[u8]>| -> Result<(), StoreError> {
            for (key, state) in &overlay {
                match state {
                    Some(staged) => {
                        let value = value(staged.event);
                        // The value goes straight into the page: one copy, no buffer.
                        let mut slot = table
                            .insert_reserve(*key, HEADER_BYTES + value.len())
                            .map_err(redb_error("writing a record"))?;
                        record::encode_into(staged.header, value, slot.as_mut());
                    }
                    None => {
                        table
                            .remove(*key)
                            .map_err(redb_error("deleting a record"))?;
                    }
                }
            }
            Ok(())
        };
        match log {
            None => insert_all(&mut table)?,
            Some(log) => {
                let mut frame = log.wal.frame();
                for (key, state) in &overlay {
                    match state {
                        Some(staged) => frame.put(key, staged.header, value(staged.event)),
                        None => frame.delete(key),
                    }
                }
                // redb may commit only once the frame is synced; until then the inserts are
                // invisible, so they can overlap the log's write and sync. A thread costs tens
                // of microseconds, worth it only when there are many inserts to overlap.
                if overlay.len() >= OVERLAPPED_INSERTS_MIN {
                    std::thread::scope(|scope| {
                        let logging = scope.spawn(|| log.wal.append(base + 1, revision));
                        let inserted = insert_all(&mut table);
                        let logged = logging.join().unwrap_or_else(|_| {
                            Err(StoreError::Storage(
                                "the write-ahead log thread panicked".into(),
                            ))
                        });
                        logged.and(inserted)
                    })?;
                } else {
                    log.wal.append(base + 1, revision)?;
                    insert_all(&mut table)?;
                }
                log.oldest_frame.get_or_insert_with(Instant::now);
            }
        }
    }
    record_revision(&write, revision)?;
    write
        .commit()
        .map_err(redb_error("committing a write batch"))?;
    Ok(Applied {
        outcomes,
        committed,
        last: revision,
    })
}

/// Where a key's current state comes from while a transaction is being evaluated: its own
/// earlier ops, then earlier transactions of the batch, then the table. Both staged layers
/// are maps, so a transaction of hundreds of ops costs one lookup per op, not a scan.
struct View<'a, 't, T> {
    table: &'a T,
    overlay: &'a Overlay<'t>,
    committed: &'a [Committed],
    changes: &'a HashMap<&'t str, Option<Staged>>,
    events: &'a [WatchEvent],
}

impl<T: ReadableTable<&'static str, &'static [u8]>> View<'_, '_, T> {
    fn staged(&self, key: &str) -> Option<Option<Staged>> {
        self.changes
            .get(key)
            .or_else(|| self.overlay.get(key))
            .copied()
    }

    fn header(&self, key: &str) -> Result<Option<Header>, StoreError> {
        if let Some(state) = self.staged(key) {
            return Ok(state.map(|s| s.header));
        }
        match self
            .table
            .get(key)
            .map_err(redb_error("reading a record"))?
        {
            Some(bytes) => record::decode_header(key, bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The key's current header and value (a copy: a delete's event carries it).
    fn record(&self, key: &str) -> Result<Option<(Header, Vec<u8>)>, StoreError> {
        if let Some(state) = self.staged(key) {
            return Ok(state.map(|staged| {
                let (txn, event) = staged.event;
                let events = match self.committed.get(txn) {
                    Some(committed) => &committed.events,
                    None => self.events,
                };
                (staged.header, events[event].kv.value.clone())
            }));
        }
        match self
            .table
            .get(key)
            .map_err(redb_error("reading a record"))?
        {
            Some(bytes) => {
                let record = record::decode(key, bytes.value())?;
                Ok(Some((record.header, record.value)))
            }
            None => Ok(None),
        }
    }
}

/// Decides one transaction without touching the table, so a failure part way (a corrupt
/// record) leaves nothing behind and affects no other transaction. Takes the values of the
/// puts out of `txn` once the compares hold.
fn evaluate<'t, T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    overlay: &Overlay<'t>,
    committed: &[Committed],
    txn: &'t mut Txn,
    revision: Revision,
) -> Result<Evaluated<'t>, StoreError> {
    let this_txn = committed.len();
    let mut changes: HashMap<&'t str, Option<Staged>> = HashMap::new();
    let mut events: Vec<WatchEvent> = Vec::new();
    for compare in &txn.compares {
        let view = View {
            table,
            overlay,
            committed,
            changes: &changes,
            events: &events,
        };
        let holds = match compare {
            Compare::ModRevision { key, mod_revision } => {
                view.header(key)?.map_or(0, |h| h.mod_revision) == *mod_revision
            }
            Compare::Value { key, value } => view
                .record(key)?
                .is_some_and(|(_, actual)| actual == *value),
        };
        if !holds {
            return Ok(Evaluated::Conflict(compare.key().to_owned()));
        }
    }
    if txn.ops.is_empty() {
        return Ok(Evaluated::Check);
    }
    changes.reserve(txn.ops.len());
    events.reserve(txn.ops.len());
    for op in txn.ops.iter_mut() {
        let view = View {
            table,
            overlay,
            committed,
            changes: &changes,
            events: &events,
        };
        match op {
            Op::Put { key, value } => {
                let header = match view.header(key)? {
                    Some(previous) => Header {
                        create_revision: previous.create_revision,
                        mod_revision: revision,
                        version: previous.version + 1,
                    },
                    None => Header {
                        create_revision: revision,
                        mod_revision: revision,
                        version: 1,
                    },
                };
                let key: &'t str = key;
                changes.insert(
                    key,
                    Some(Staged {
                        header,
                        event: (this_txn, events.len()),
                    }),
                );
                events.push(WatchEvent {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: key.to_owned(),
                        value: std::mem::take(value),
                        create_revision: header.create_revision,
                        mod_revision: header.mod_revision,
                        version: header.version,
                    },
                });
            }
            Op::Delete { key } => {
                if let Some((previous, value)) = view.record(key)? {
                    events.push(WatchEvent {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: key.clone(),
                            value,
                            create_revision: previous.create_revision,
                            mod_revision: revision,
                            version: previous.version,
                        },
                    });
                    changes.insert(key, None);
                }
            }
        }
    }
    Ok(Evaluated::Write { changes, events })
}

#[cfg(test)]
mod tests {
    //! The batch must be indistinguishable from one-at-a-time execution; these tests drive
    //! [`apply_batch`] directly so the batch boundaries are chosen, not left to timing.

    use redb::ReadableDatabase;

    use super::*;

    fn memory_db() -> Database {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let write = db.begin_write().unwrap();
        write.open_table(KV).unwrap();
        write.open_table(META).unwrap();
        write.commit().unwrap();
        db
    }

    fn dump(db: &Database) -> Vec<(String, Vec<u8>)> {
        let read = db.begin_read().unwrap();
        let table = read.open_table(KV).unwrap();
        table
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().to_owned(), v.value().to_vec())
            })
            .collect()
    }

    fn cas(key: &str, expected: Revision, ops: Vec<Op>) -> Txn {
        Txn {
            compares: vec![Compare::ModRevision {
                key: key.into(),
                mod_revision: expected,
            }],
            ops,
        }
    }

    fn put(key: &str, value: &[u8]) -> Op {
        Op::Put {
            key: key.into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn a_batch_sees_its_own_earlier_writes() {
        let db = memory_db();
        let mut txns = [
            cas("k", 0, vec![put("k", b"1")]),                 // creates k at 1
            cas("k", 0, vec![put("k", b"x")]),                 // conflict: k exists now
            cas("k", 1, vec![put("k", b"2")]),                 // 2
            cas("k", 2, vec![Op::Delete { key: "k".into() }]), // 3
            cas("k", 0, vec![put("k", b"3"), put("j", b"j")]), // 4, k re-created
            cas("k", 3, vec![]),                               // conflict: k was re-created at 4
            cas("k", 4, vec![]),                               // check only: revision 4
        ];
        let applied = apply_batch(&db, 0, &mut txns, None).unwrap();
        let outcomes: Vec<TxnOutcome> = applied.outcomes.into_iter().map(Result::unwrap).collect();
        use TxnOutcome::*;
        assert_eq!(
            outcomes,
            [
                Committed { revision: 1 },
                Conflict { key: "k".into() },
                Committed { revision: 2 },
                Committed { revision: 3 },
                Committed { revision: 4 },
                Conflict { key: "k".into() },
                Committed { revision: 4 },
            ]
        );
        assert_eq!(applied.last, 4);
        let revisions: Vec<Revision> = applied.committed.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, [1, 2, 3, 4]);
        let delete = &applied.committed[2].events[0];
        assert_eq!(
            (delete.kind, delete.kv.value.as_slice(), delete.kv.version),
            (EventKind::Delete, &b"2"[..], 2)
        );
        let k = &applied.committed[3].events[0].kv;
        assert_eq!((k.create_revision, k.version), (4, 1));
    }

    #[test]
    fn a_batch_without_writes_commits_nothing() {
        let db = memory_db();
        let mut txns = [cas("k", 5, vec![put("k", b"1")]), cas("k", 0, vec![])];
        let applied = apply_batch(&db, 0, &mut txns, None).unwrap();
        assert_eq!(applied.last, 0);
        assert!(dump(&db).is_empty());
    }

    #[test]
    fn a_corrupt_record_fails_only_the_transaction_that_reads_it() {
        let db = memory_db();
        let write = db.begin_write().unwrap();
        write
            .open_table(KV)
            .unwrap()
            .insert("bad", &b"xx"[..])
            .unwrap();
        write.commit().unwrap();
        let mut txns = [
            cas("a", 0, vec![put("a", b"1")]),
            cas("bad", 0, vec![put("b", b"never")]),
            cas("a", 1, vec![put("a", b"2")]),
        ];
        let applied = apply_batch(&db, 0, &mut txns, None).unwrap();
        assert!(matches!(
            applied.outcomes[0],
            Ok(TxnOutcome::Committed { revision: 1 })
        ));
        assert!(matches!(applied.outcomes[1], Err(StoreError::Corrupt(_))));
        assert!(matches!(
            applied.outcomes[2],
            Ok(TxnOutcome::Committed { revision: 2 })
        ));
        let keys: Vec<String> = dump(&db).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "bad"]);
    }

    /// Random transactions over a few keys give identical outcomes and final state whether
    /// they run in batches of random sizes or one at a time.
    #[test]
    fn batches_equal_one_at_a_time() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let keys = ["a", "b", "c", "d"];
        let txns: Vec<Txn> = (0..600)
            .map(|i| {
                let compares = (0..next(3))
                    .map(|_| Compare::ModRevision {
                        key: keys[next(4) as usize].into(),
                        // Small expected revisions hit both matches and conflicts.
                        mod_revision: next(i as u64 / 3 + 2),
                    })
                    .collect();
                let ops = (0..next(4))
                    .map(|_| {
                        let key = keys[next(4) as usize].to_owned();
                        if next(4) == 0 {
                            Op::Delete { key }
                        } else {
                            Op::Put {
                                key,
                                value: i.to_string().into_bytes(),
                            }
                        }
                    })
                    .collect();
                Txn { compares, ops }
            })
            .collect();

        let serial = memory_db();
        let mut serial_outcomes = Vec::new();
        let mut serial_events = Vec::new();
        let mut revision = 0;
        for txn in &txns {
            let applied = apply_batch(&serial, revision, &mut [txn.clone()], None).unwrap();
            revision = applied.last;
            serial_outcomes.extend(applied.outcomes.into_iter().map(Result::unwrap));
            serial_events.extend(
                applied
                    .committed
                    .into_iter()
                    .map(|c| (c.revision, c.events)),
            );
        }

        let batched = memory_db();
        let mut batched_outcomes = Vec::new();
        let mut batched_events = Vec::new();
        let mut revision = 0;
        let mut rest: &[Txn] = &txns;
        while !rest.is_empty() {
            let size = (next(40) as usize + 1).min(rest.len());
            let mut chunk = rest[..size].to_vec();
            rest = &rest[size..];
            let applied = apply_batch(&batched, revision, &mut chunk, None).unwrap();
            revision = applied.last;
            batched_outcomes.extend(applied.outcomes.into_iter().map(Result::unwrap));
            batched_events.extend(
                applied
                    .committed
                    .into_iter()
                    .map(|c| (c.revision, c.events)),
            );
        }

        assert_eq!(serial_outcomes, batched_outcomes);
        assert_eq!(serial_events, batched_events);
        assert_eq!(dump(&serial), dump(&batched));
        let conflicts = serial_outcomes
            .iter()
            .filter(|o| matches!(o, TxnOutcome::Conflict { .. }))
            .count();
        assert!(
            conflicts > 50 && conflicts < 550,
            "the mix exercises both paths"
        );
    }
}
