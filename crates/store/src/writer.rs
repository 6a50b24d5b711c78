//! The redb backend's single writer thread and its group commit.
//!
//! Callers queue transactions on a bounded channel. The writer takes every queued one (up to
//! [`TXNS_PER_COMMIT_MAX`] / [`BATCH_BYTES_MAX`]), evaluates them in queue order against the
//! state as left by the earlier ones of the same batch (an overlay in front of the table), so
//! every outcome is exactly what one-at-a-time execution would give, writes the winners in
//! one redb write transaction, commits it durably once, publishes the events, and only then
//! answers the callers. One fsync thus covers a whole batch, which is what lets the API reach
//! thousands of writes per second on one disk while never acknowledging a write a crash could
//! lose. There is no timer: under light load a batch is one transaction, under heavy load the
//! queue fills while the previous commit is syncing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redb::{Database, Durability, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use crate::record::{self, Header, KV, META, META_REVISION, Record, redb_error};
use crate::watch::{Committed, WatchHub};
use crate::{Compare, EventKind, Op, Revision, StoreError, Txn, TxnOutcome, WatchEvent};

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

/// Runs the writer until shutdown; to be called on its own thread.
pub(crate) fn run(shared: Arc<Shared>, mut queue: mpsc::Receiver<Request>) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut revision = shared.revision.load(Ordering::Acquire);
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
            if !batch.is_empty() {
                revision = commit_batch(&shared, revision, batch);
            }
            if stop || shared.closing.load(Ordering::Acquire) {
                queue.close();
            }
        }
    }));
    if result.is_err() {
        // Dropping the queue (when this function returns) fails every queued caller with
        // Closed; flag it so new ones fail fast instead of queueing into nothing.
        shared.closing.store(true, Ordering::Release);
        tracing::error!("the state store writer panicked; the store is closed");
    }
}

/// Commits one batch and answers its callers. Returns the new last revision.
fn commit_batch(shared: &Shared, base: Revision, batch: Vec<Pending>) -> Revision {
    let txns: Vec<&Txn> = batch.iter().map(|p| &p.txn).collect();
    match apply_batch(&shared.db, base, &txns) {
        Ok(applied) => {
            if applied.last != base {
                shared.revision.store(applied.last, Ordering::Release);
                shared.hub.publish(applied.committed, applied.last);
            }
            for (pending, outcome) in batch.into_iter().zip(applied.outcomes) {
                // A caller that stopped waiting is not an error.
                let _ = pending.reply.send(outcome);
            }
            applied.last
        }
        Err(error) => {
            tracing::error!(%error, transactions = batch.len(), "a state store commit failed");
            for pending in batch {
                let _ = pending.reply.send(Err(error.clone()));
            }
            base
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

/// What evaluating one transaction against the batch's state decided.
enum Evaluated {
    Conflict(String),
    /// Compares held and there is nothing to write.
    Check,
    Write {
        changes: Vec<(String, Option<Record>)>,
        events: Vec<WatchEvent>,
    },
}

/// Evaluates `txns` in order, each seeing the effects of the earlier ones, and commits the
/// writes of all that succeed in one durable redb transaction. If nothing was written the
/// redb transaction is aborted instead: conflicts and checks cost no fsync.
pub(crate) fn apply_batch(
    db: &Database,
    base: Revision,
    txns: &[&Txn],
) -> Result<Applied, StoreError> {
    let mut write = db
        .begin_write()
        .map_err(redb_error("starting a write transaction"))?;
    write
        .set_durability(Durability::Immediate)
        .map_err(|e| StoreError::Storage(format!("requesting a durable commit: {e}")))?;
    let mut outcomes = Vec::with_capacity(txns.len());
    let mut committed = Vec::new();
    let mut revision = base;
    {
        let mut table = write
            .open_table(KV)
            .map_err(redb_error("opening the kv table"))?;
        // The batch's writes so far, by key (None: deleted). Sorted, so the final inserts hit
        // the B-tree in order.
        let mut overlay: BTreeMap<String, Option<Record>> = BTreeMap::new();
        for txn in txns {
            let outcome = match evaluate(&table, &overlay, txn, revision + 1) {
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
        for (key, state) in overlay {
            match state {
                Some(record) => {
                    table
                        .insert(
                            key.as_str(),
                            record::encode(record.header, &record.value).as_slice(),
                        )
                        .map_err(redb_error("writing a record"))?;
                }
                None => {
                    table
                        .remove(key.as_str())
                        .map_err(redb_error("deleting a record"))?;
                }
            }
        }
        let mut meta = write
            .open_table(META)
            .map_err(redb_error("opening the meta table"))?;
        meta.insert(META_REVISION, revision)
            .map_err(redb_error("recording the revision"))?;
    }
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
/// earlier ops, then earlier transactions of the batch, then the table.
struct View<'a, T> {
    table: &'a T,
    overlay: &'a BTreeMap<String, Option<Record>>,
    local: &'a [(String, Option<Record>)],
}

impl<T: ReadableTable<&'static str, &'static [u8]>> View<'_, T> {
    fn staged(&self, key: &str) -> Option<&Option<Record>> {
        self.local
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, state)| state)
            .or_else(|| self.overlay.get(key))
    }

    fn header(&self, key: &str) -> Result<Option<Header>, StoreError> {
        if let Some(state) = self.staged(key) {
            return Ok(state.as_ref().map(|r| r.header));
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

    fn record(&self, key: &str) -> Result<Option<Record>, StoreError> {
        if let Some(state) = self.staged(key) {
            return Ok(state.clone());
        }
        match self
            .table
            .get(key)
            .map_err(redb_error("reading a record"))?
        {
            Some(bytes) => record::decode(key, bytes.value()).map(Some),
            None => Ok(None),
        }
    }
}

/// Decides one transaction without touching the table, so a failure part way (a corrupt
/// record) leaves nothing behind and affects no other transaction.
fn evaluate<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    overlay: &BTreeMap<String, Option<Record>>,
    txn: &Txn,
    revision: Revision,
) -> Result<Evaluated, StoreError> {
    let mut changes: Vec<(String, Option<Record>)> = Vec::new();
    for compare in &txn.compares {
        let Compare::ModRevision { key, mod_revision } = compare;
        let view = View {
            table,
            overlay,
            local: &changes,
        };
        let actual = view.header(key)?.map_or(0, |h| h.mod_revision);
        if actual != *mod_revision {
            return Ok(Evaluated::Conflict(key.clone()));
        }
    }
    if txn.ops.is_empty() {
        return Ok(Evaluated::Check);
    }
    let mut events = Vec::with_capacity(txn.ops.len());
    for op in &txn.ops {
        let view = View {
            table,
            overlay,
            local: &changes,
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
                let record = Record {
                    header,
                    value: value.clone(),
                };
                events.push(WatchEvent {
                    kind: EventKind::Put,
                    kv: record.clone().into_key_value(key.clone()),
                });
                changes.push((key.clone(), Some(record)));
            }
            Op::Delete { key } => {
                if let Some(mut previous) = view.record(key)? {
                    previous.header.mod_revision = revision;
                    events.push(WatchEvent {
                        kind: EventKind::Delete,
                        kv: previous.into_key_value(key.clone()),
                    });
                    changes.push((key.clone(), None));
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
        let txns = [
            cas("k", 0, vec![put("k", b"1")]),                 // creates k at 1
            cas("k", 0, vec![put("k", b"x")]),                 // conflict: k exists now
            cas("k", 1, vec![put("k", b"2")]),                 // 2
            cas("k", 2, vec![Op::Delete { key: "k".into() }]), // 3
            cas("k", 0, vec![put("k", b"3"), put("j", b"j")]), // 4, k re-created
            cas("k", 3, vec![]),                               // conflict: k was re-created at 4
            cas("k", 4, vec![]),                               // check only: revision 4
        ];
        let refs: Vec<&Txn> = txns.iter().collect();
        let applied = apply_batch(&db, 0, &refs).unwrap();
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
        let txns = [cas("k", 5, vec![put("k", b"1")]), cas("k", 0, vec![])];
        let refs: Vec<&Txn> = txns.iter().collect();
        let applied = apply_batch(&db, 0, &refs).unwrap();
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
        let txns = [
            cas("a", 0, vec![put("a", b"1")]),
            cas("bad", 0, vec![put("b", b"never")]),
            cas("a", 1, vec![put("a", b"2")]),
        ];
        let refs: Vec<&Txn> = txns.iter().collect();
        let applied = apply_batch(&db, 0, &refs).unwrap();
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
            let applied = apply_batch(&serial, revision, &[txn]).unwrap();
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
            let refs: Vec<&Txn> = rest[..size].iter().collect();
            rest = &rest[size..];
            let applied = apply_batch(&batched, revision, &refs).unwrap();
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
