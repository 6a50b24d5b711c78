//! The conformance suite on the redb backend, plus what only the embedded backend has:
//! reopen, shutdown, file locking, corruption reporting and a kill -9 test.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flotilla_store::{
    Compare, KeyValue, Op, RangeRequest, RedbStore, Store, StoreError, StoreOptions, Txn,
    TxnOutcome, conformance, log_path,
};

fn put(key: &str, value: &[u8]) -> Txn {
    Txn {
        compares: vec![],
        ops: vec![Op::Put {
            key: key.into(),
            value: value.to_vec(),
        }],
    }
}

#[tokio::test]
async fn conformance_in_memory() {
    conformance::run_all(|| Arc::new(RedbStore::in_memory().unwrap()) as Arc<dyn Store>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let counter = AtomicUsize::new(0);
    conformance::run_all(|| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        Arc::new(RedbStore::open(&dir.path().join(format!("s{n}.redb"))).unwrap()) as Arc<dyn Store>
    })
    .await;
}

#[tokio::test]
async fn reopen_keeps_data_and_revision_and_starts_history_empty() {
    let dir = tempfile::tempdir().unwrap();
    // Missing directories are created.
    let path = dir.path().join("data").join("state.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        for i in 0..5u8 {
            store.txn(put(&format!("k{i}"), &[i])).await.unwrap();
        }
        store.txn(put("k1", b"again")).await.unwrap();
        // Dropped here without an explicit shutdown.
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.revision().await.unwrap(), 6);
    assert_eq!(store.get("k3").await.unwrap().unwrap().value, vec![3]);
    let k1 = store.get("k1").await.unwrap().unwrap();
    assert_eq!((k1.create_revision, k1.mod_revision, k1.version), (2, 6, 2));
    let listed = store
        .range(RangeRequest {
            prefix: "k".into(),
            start_after: None,
            limit: 0,
        })
        .await
        .unwrap();
    assert_eq!((listed.kvs.len(), listed.revision), (5, 6));
    assert!(matches!(
        store.watch("k", 2),
        Err(StoreError::Compacted {
            requested: 2,
            oldest: 7
        })
    ));
    let mut watcher = store.watch("k", 7).unwrap();
    assert_eq!(
        store.txn(put("k9", b"")).await.unwrap(),
        TxnOutcome::Committed { revision: 7 }
    );
    assert_eq!(watcher.next().await.unwrap()[0].kv.key, "k9");
}

#[tokio::test]
async fn shutdown_finishes_queued_writes_then_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let mut watcher = store.watch("", 0).unwrap();
    let writers: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.txn(put(&format!("q/{i}"), b"v")).await })
        })
        .collect();
    // Let every writer queue its txn before shutting down.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    store.shutdown();
    let mut acknowledged = Vec::new();
    for (i, writer) in writers.into_iter().enumerate() {
        match writer.await.unwrap() {
            Ok(TxnOutcome::Committed { .. }) => acknowledged.push(format!("q/{i}")),
            Err(StoreError::Closed) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(matches!(
        store.txn(put("late", b"v")).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.watch("", 0), Err(StoreError::Closed)));
    // Watchers get the committed events, then Closed.
    let mut watched = 0;
    loop {
        match watcher.next().await {
            Ok(events) => watched += events.len(),
            Err(StoreError::Closed) => break,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(watched, acknowledged.len());
    // Reads still work; shutdown is idempotent.
    for key in &acknowledged {
        assert!(store.get(key).await.unwrap().is_some());
    }
    store.shutdown();
    drop(store);
    let reopened = RedbStore::open(&path).unwrap();
    assert_eq!(
        reopened.revision().await.unwrap() as usize,
        acknowledged.len()
    );
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let _first = RedbStore::open(&path).unwrap();
    match RedbStore::open(&path) {
        Err(error @ StoreError::InUse { .. }) => {
            assert!(error.to_string().contains("state.redb"), "{error}")
        }
        other => panic!("expected InUse, got {other:?}"),
    }
}

#[tokio::test]
async fn a_damaged_record_is_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        // Write a record shorter than its header behind the store's back.
        let db = redb::Database::create(&path).unwrap();
        let write = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv");
            let mut table = write.open_table(table).unwrap();
            table.insert("bad", &b"short"[..]).unwrap();
            table
                .insert("good", &[[1u8; 8], [1; 8], [1; 8]].concat()[..])
                .unwrap();
        }
        write.commit().unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    assert!(matches!(
        store.get("bad").await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(store.get("good").await.unwrap().is_some());
    let touches_bad = Txn {
        compares: vec![Compare::ModRevision {
            key: "bad".into(),
            mod_revision: 0,
        }],
        ops: vec![],
    };
    assert!(matches!(
        store.txn(touches_bad).await,
        Err(StoreError::Corrupt(_))
    ));
    // Other writes are unaffected.
    assert_eq!(
        store.txn(put("new", b"v")).await.unwrap(),
        TxnOutcome::Committed { revision: 1 }
    );
}

#[test]
fn a_file_that_is_not_a_state_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    std::fs::write(&path, vec![0xAB; 8192]).unwrap();
    let error = RedbStore::open(&path).unwrap_err();
    assert!(
        matches!(error, StoreError::Storage(_) | StoreError::Corrupt(_)),
        "{error:?}"
    );
}

const WRITER_ENV: &str = "FLOTILLA_STORE_CRASH_WRITER";
/// Optional, for the child: `checkpoint_bytes,value_bytes,preallocate(0|1)`.
const WRITER_OPTIONS_ENV: &str = "FLOTILLA_STORE_CRASH_OPTIONS";
const WORKERS: usize = 4;

/// In the child process only (the parent re-executes this binary): write forever and print
/// each acknowledged write. Every txn creates a fresh key and bumps the worker's counter by
/// CAS; a line is printed only after the store answered Committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_writer_child() {
    let Ok(path) = std::env::var(WRITER_ENV) else {
        return;
    };
    let mut options = StoreOptions::default();
    let mut value_bytes = 8;
    if let Ok(spec) = std::env::var(WRITER_OPTIONS_ENV) {
        let fields: Vec<u64> = spec.split(',').map(|f| f.parse().unwrap()).collect();
        options.checkpoint_log_bytes = fields[0];
        value_bytes = fields[1] as usize;
        options.preallocate_log = fields[2] == 1;
    }
    let store =
        Arc::new(RedbStore::open_with(Path::new(&path), &options).expect("open in the child"));
    let handles: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let store = store.clone();
            tokio::spawn(async move {
                let counter = format!("c/{worker}");
                let mut counter_revision = 0;
                for i in 1u64.. {
                    let key = format!("w/{worker}/{i}");
                    let outcome = store
                        .txn(Txn {
                            compares: vec![
                                Compare::ModRevision {
                                    key: key.clone(),
                                    mod_revision: 0,
                                },
                                Compare::ModRevision {
                                    key: counter.clone(),
                                    mod_revision: counter_revision,
                                },
                            ],
                            ops: vec![
                                Op::Put {
                                    key: key.clone(),
                                    value: padded(i, value_bytes),
                                },
                                Op::Put {
                                    key: counter.clone(),
                                    value: i.to_le_bytes().to_vec(),
                                },
                            ],
                        })
                        .await
                        .expect("txn in the child");
                    let TxnOutcome::Committed { revision } = outcome else {
                        panic!("the child's own keys cannot conflict: {outcome:?}");
                    };
                    counter_revision = revision;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {worker} {i} {revision}").expect("stdout");
                    out.flush().expect("stdout");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
}

/// `i` as 8 bytes, padded with a pattern to `value_bytes`.
fn padded(i: u64, value_bytes: usize) -> Vec<u8> {
    let mut value = i.to_le_bytes().to_vec();
    value.resize(value_bytes.max(8), b'p');
    value
}

/// Runs the crash child on `path` until it has acknowledged `kill_after` txns, then SIGKILLs
/// it. Returns (worker, i, revision) per acknowledged txn.
fn run_and_kill(path: &Path, options: Option<&str>, kill_after: usize) -> Vec<(usize, u64, u64)> {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "crash_writer_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_ENV, path)
        .stdout(std::process::Stdio::piped());
    if let Some(options) = options {
        command.env(WRITER_OPTIONS_ENV, options);
    }
    let mut child = command.spawn().unwrap();
    let mut acknowledged: Vec<(usize, u64, u64)> = Vec::new();
    let reader = BufReader::new(child.stdout.take().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let fields: Vec<u64> = rest.split(' ').map(|f| f.parse().unwrap()).collect();
        acknowledged.push((fields[0] as usize, fields[1], fields[2]));
        if acknowledged.len() == kill_after {
            // SIGKILL while the child is still writing: mid-batch, mid-fsync, anywhere.
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap();
    assert_eq!(
        acknowledged.len(),
        kill_after,
        "the child stopped early; its stderr above says why"
    );
    acknowledged
}

/// Every acknowledged txn is in `store` with the revision it was acknowledged at.
async fn assert_acknowledged(
    store: &RedbStore,
    acknowledged: &[(usize, u64, u64)],
    value_bytes: usize,
) {
    let revision = store.revision().await.unwrap();
    let mut last_per_worker = [0u64; WORKERS];
    for &(worker, i, acked_revision) in acknowledged {
        let kv = store
            .get(&format!("w/{worker}/{i}"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged w/{worker}/{i} was lost"));
        assert_eq!(kv.value, padded(i, value_bytes));
        assert_eq!(kv.create_revision, acked_revision);
        assert!(revision >= acked_revision);
        last_per_worker[worker] = last_per_worker[worker].max(i);
    }
    for (worker, last) in last_per_worker.iter().enumerate() {
        let counter = store.get(&format!("c/{worker}")).await.unwrap().unwrap();
        let value = u64::from_le_bytes(counter.value[..8].try_into().unwrap());
        assert!(value >= *last, "counter {worker} went back to {value}");
    }
}

async fn dump(store: &RedbStore) -> (u64, Vec<KeyValue>) {
    let listed = store
        .range(RangeRequest {
            prefix: String::new(),
            start_after: None,
            limit: 0,
        })
        .await
        .unwrap();
    (listed.revision, listed.kvs)
}

fn copy_store(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    std::fs::copy(log_path(from), log_path(to)).unwrap();
}

/// A child that checkpoints every MiB (so the kill lands after some checkpoints, with
/// batches in the log that redb's file lacks) and appends to its log. Recovery brings back
/// every acknowledged txn at its revision; a garbage tail on the log changes nothing; a
/// second recovery over the same log (a reset lost in a crash) changes nothing; and the
/// revision counter and watches continue from the recovered revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_checkpoints_replays_the_log_idempotently() {
    const VALUE_BYTES: usize = 8 * 1024;
    // The child's options.
    let options = StoreOptions {
        checkpoint_log_bytes: 1 << 20,
        preallocate_log: false,
        ..StoreOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let acknowledged = run_and_kill(&path, Some(&format!("{},{VALUE_BYTES},0", 1 << 20)), 600);
    // ~600 txns of 8 KiB crossed several 1 MiB checkpoints.
    let logged = std::fs::metadata(log_path(&path)).unwrap().len();
    assert!(logged > 0, "the kill left batches only the log holds");
    let crashed = dir.path().join("crashed.redb");
    copy_store(&path, &crashed);
    let torn = dir.path().join("torn.redb");
    copy_store(&path, &torn);
    {
        // A frame header whose body never made it, then garbage.
        let mut tail = b"FLWL".to_vec();
        tail.extend_from_slice(&100_000u32.to_le_bytes());
        tail.extend_from_slice(&[0xA5; 3000]);
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(log_path(&torn))
            .unwrap();
        log.write_all(&tail).unwrap();
    }

    let (revision, kvs) = {
        let store = RedbStore::open_with(&path, &options).unwrap();
        assert_acknowledged(&store, &acknowledged, VALUE_BYTES).await;
        dump(&store).await
    };
    let max_acknowledged = acknowledged.iter().map(|a| a.2).max().unwrap();
    assert!(revision >= max_acknowledged);
    {
        let store = RedbStore::open_with(&torn, &options).unwrap();
        assert_eq!(
            dump(&store).await,
            (revision, kvs.clone()),
            "the torn tail changed the state"
        );
    }
    // The recovered file, cleanly shut down, with the log as the crash left it: every frame
    // is already in redb.
    std::fs::copy(log_path(&crashed), log_path(&path)).unwrap();
    let store = RedbStore::open_with(&path, &options).unwrap();
    assert_eq!(
        dump(&store).await,
        (revision, kvs),
        "a second recovery changed the state"
    );
    let mut watcher = store.watch("w/", revision + 1).unwrap();
    assert_eq!(
        store.txn(put("w/after", b"v")).await.unwrap(),
        TxnOutcome::Committed {
            revision: revision + 1
        }
    );
    let events = watcher.next().await.unwrap();
    assert_eq!(
        (events[0].kv.key.as_str(), events[0].kv.create_revision),
        ("w/after", revision + 1)
    );
    drop(watcher);
    drop(store);
    // A clean shutdown checkpointed and reset the log: the next open replays nothing.
    assert_eq!(std::fs::metadata(log_path(&path)).unwrap().len(), 0);
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_write() {
    const KILL_AFTER: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    // The default options: the log never reaches a checkpoint, so everything after the
    // first open comes back from the log.
    let acknowledged = run_and_kill(&path, None, KILL_AFTER);
    let store = RedbStore::open(&path).unwrap();
    let revision = store.revision().await.unwrap();
    assert_acknowledged(&store, &acknowledged, 8).await;
    // The reopened store keeps working from where it was.
    assert_eq!(
        store.txn(put("after", b"v")).await.unwrap(),
        TxnOutcome::Committed {
            revision: revision + 1
        }
    );
}

/// Transactions issued one after another are evaluated in call order even when the caller
/// polls the later one first: each expects what the one before writes, and all commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_queued_in_call_order_before_they_are_polled() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
    let chained = |step: u8| Txn {
        compares: if step == 0 {
            vec![Compare::ModRevision {
                key: "chain".into(),
                mod_revision: 0,
            }]
        } else {
            vec![Compare::Value {
                key: "chain".into(),
                value: vec![step - 1],
            }]
        },
        ops: vec![Op::Put {
            key: "chain".into(),
            value: vec![step],
        }],
    };
    let futures: Vec<_> = (0..16).map(|step| store.txn(chained(step))).collect();
    // Polled newest first: only the call order can make every compare hold.
    for future in futures.into_iter().rev() {
        let outcome = future.await.unwrap();
        assert!(
            matches!(outcome, TxnOutcome::Committed { .. }),
            "{outcome:?}"
        );
    }
    let value = store.get("chain").await.unwrap().unwrap().value;
    assert_eq!(value, vec![15]);
}
