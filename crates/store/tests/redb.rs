//! The conformance suite on the redb backend, plus reopen and crash tests.

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;

use flotilla_store::{Compare, Op, RedbStore, Store, StoreError, Txn, TxnOutcome, conformance};

#[tokio::test]
async fn conformance_in_memory() {
    conformance::run_all(|| Arc::new(RedbStore::in_memory().unwrap()) as Arc<dyn Store>).await;
}

#[tokio::test]
async fn conformance_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Arc::new(RedbStore::open(&dir.path().join(format!("s{n}.redb"))).unwrap()) as Arc<dyn Store>
    })
    .await;
}

#[tokio::test]
async fn reopen_keeps_data_and_revision_and_compacts_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        for i in 0..5 {
            store
                .txn(Txn {
                    compares: vec![],
                    ops: vec![Op::Put {
                        key: format!("k{i}"),
                        value: vec![i],
                    }],
                })
                .await
                .unwrap();
        }
        store.shutdown();
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.revision().await.unwrap(), 5);
    assert_eq!(store.get("k3").await.unwrap().unwrap().value, vec![3]);
    assert!(matches!(
        store.watch("k", 2),
        Err(StoreError::Compacted { .. })
    ));
    let outcome = store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: "k9".into(),
                value: vec![],
            }],
        })
        .await
        .unwrap();
    assert_eq!(outcome, TxnOutcome::Committed { revision: 6 });
}

const WRITER_ENV: &str = "FLOTILLA_STORE_CRASH_WRITER";

/// In the child: write forever, printing each acknowledged key.
#[tokio::test]
async fn crash_writer_child() {
    let Ok(path) = std::env::var(WRITER_ENV) else {
        return;
    };
    let store = RedbStore::open(std::path::Path::new(&path)).unwrap();
    let store = Arc::new(store);
    let mut handles = Vec::new();
    for worker in 0..4 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0u64.. {
                let key = format!("w{worker}/{i}");
                let outcome = store
                    .txn(Txn {
                        compares: vec![Compare::ModRevision {
                            key: key.clone(),
                            mod_revision: 0,
                        }],
                        ops: vec![Op::Put {
                            key: key.clone(),
                            value: i.to_le_bytes().to_vec(),
                        }],
                    })
                    .await
                    .unwrap();
                assert!(matches!(outcome, TxnOutcome::Committed { .. }));
                let mut out = std::io::stdout().lock();
                writeln!(out, "ACK {key}").unwrap();
                out.flush().unwrap();
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_writer_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut acknowledged = Vec::new();
    let reader = BufReader::new(child.stdout.take().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(key) = line.strip_prefix("ACK ") {
            acknowledged.push(key.to_owned());
            if acknowledged.len() == 2000 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(
        acknowledged.len(),
        2000,
        "the writer acknowledged enough writes before the kill"
    );
    let store = RedbStore::open(&path).unwrap();
    for key in &acknowledged {
        assert!(
            store.get(key).await.unwrap().is_some(),
            "acknowledged {key} was lost"
        );
    }
}
