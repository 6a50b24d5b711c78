//! Behaviour every [`Store`] backend must have, as one suite each backend's tests run.

use std::sync::Arc;

use crate::*;

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    }
}

async fn commit(store: &dyn Store, compares: Vec<Compare>, ops: Vec<Op>) -> TxnOutcome {
    store.txn(Txn { compares, ops }).await.expect("txn")
}

fn expect(key: &str, mod_revision: Revision) -> Compare {
    Compare::ModRevision {
        key: key.to_owned(),
        mod_revision,
    }
}

/// Runs every check against fresh stores from `make`.
pub async fn run_all(make: impl Fn() -> Arc<dyn Store>) {
    put_get_delete_and_revisions(make()).await;
    range_with_prefix_and_pages(make()).await;
    compare_and_swap(make()).await;
    concurrent_increments_are_exact(make()).await;
    watches(make()).await;
    limits(make()).await;
}

pub async fn put_get_delete_and_revisions(store: Arc<dyn Store>) {
    assert_eq!(store.revision().await.unwrap(), 0);
    assert_eq!(
        commit(&*store, vec![], vec![put("a", "1")]).await,
        TxnOutcome::Committed { revision: 1 }
    );
    assert_eq!(
        commit(&*store, vec![], vec![put("a", "2"), put("b", "x")]).await,
        TxnOutcome::Committed { revision: 2 }
    );
    let a = store.get("a").await.unwrap().unwrap();
    assert_eq!(
        (
            a.value.as_slice(),
            a.create_revision,
            a.mod_revision,
            a.version
        ),
        (&b"2"[..], 1, 2, 2)
    );
    assert_eq!(
        commit(&*store, vec![], vec![Op::Delete { key: "a".into() }]).await,
        TxnOutcome::Committed { revision: 3 }
    );
    assert!(store.get("a").await.unwrap().is_none());
    assert_eq!(store.revision().await.unwrap(), 3);
    // Recreated keys start over.
    commit(&*store, vec![], vec![put("a", "3")]).await;
    let a = store.get("a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.version), (4, 1));
}

pub async fn range_with_prefix_and_pages(store: Arc<dyn Store>) {
    let ops = (0..10)
        .map(|i| put(&format!("p/{i:02}"), "v"))
        .chain([put("q/0", "v"), put("o", "v")])
        .collect();
    commit(&*store, vec![], ops).await;
    let all = store
        .range(RangeRequest {
            prefix: "p/".into(),
            start_after: None,
            limit: 0,
        })
        .await
        .unwrap();
    assert_eq!(all.kvs.len(), 10);
    assert!(!all.more);
    assert_eq!(all.revision, 1);
    let first = store
        .range(RangeRequest {
            prefix: "p/".into(),
            start_after: None,
            limit: 4,
        })
        .await
        .unwrap();
    assert_eq!(
        first.kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        ["p/00", "p/01", "p/02", "p/03"]
    );
    assert!(first.more);
    let rest = store
        .range(RangeRequest {
            prefix: "p/".into(),
            start_after: Some("p/03".into()),
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(rest.kvs.len(), 6);
    assert_eq!(rest.kvs[0].key, "p/04");
    assert!(!rest.more);
    let exact = store
        .range(RangeRequest {
            prefix: "p/".into(),
            start_after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert!(!exact.more, "a full last page says there is no more");
}

pub async fn compare_and_swap(store: Arc<dyn Store>) {
    assert_eq!(
        commit(&*store, vec![expect("k", 0)], vec![put("k", "1")]).await,
        TxnOutcome::Committed { revision: 1 }
    );
    // Create-if-absent fails once it exists, and writes nothing (not even the other op).
    assert_eq!(
        commit(
            &*store,
            vec![expect("k", 0)],
            vec![put("k", "2"), put("other", "x")]
        )
        .await,
        TxnOutcome::Conflict { key: "k".into() }
    );
    assert!(store.get("other").await.unwrap().is_none());
    assert_eq!(store.revision().await.unwrap(), 1);
    assert_eq!(
        commit(&*store, vec![expect("k", 1)], vec![put("k", "2")]).await,
        TxnOutcome::Committed { revision: 2 }
    );
    assert_eq!(
        commit(&*store, vec![expect("k", 1)], vec![put("k", "3")]).await,
        TxnOutcome::Conflict { key: "k".into() }
    );
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"2");
}

pub async fn concurrent_increments_are_exact(store: Arc<dyn Store>) {
    const WORKERS: usize = 8;
    const INCREMENTS: usize = 25;
    let mut handles = Vec::new();
    for _ in 0..WORKERS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.get("counter").await.unwrap();
                    let (value, revision) = match &current {
                        Some(kv) => (
                            String::from_utf8(kv.value.clone())
                                .unwrap()
                                .parse::<usize>()
                                .unwrap(),
                            kv.mod_revision,
                        ),
                        None => (0, 0),
                    };
                    let outcome = store
                        .txn(Txn {
                            compares: vec![expect("counter", revision)],
                            ops: vec![put("counter", &(value + 1).to_string())],
                        })
                        .await
                        .unwrap();
                    if matches!(outcome, TxnOutcome::Committed { .. }) {
                        break;
                    }
                }
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let counter = store.get("counter").await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8(counter.value).unwrap(),
        (WORKERS * INCREMENTS).to_string()
    );
    assert_eq!(counter.version as usize, WORKERS * INCREMENTS);
}

pub async fn watches(store: Arc<dyn Store>) {
    let mut future_only = store.watch("w/", 0).unwrap();
    commit(
        &*store,
        vec![],
        vec![put("w/a", "1"), put("x/ignored", "1")],
    )
    .await;
    commit(&*store, vec![], vec![put("x/ignored", "2")]).await;
    commit(&*store, vec![], vec![Op::Delete { key: "w/a".into() }]).await;
    let events = future_only.next().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].kind,
            events[0].kv.key.as_str(),
            events[0].kv.mod_revision
        ),
        (EventKind::Put, "w/a", 1)
    );
    let events = future_only.next().await.unwrap();
    assert_eq!(
        (events[0].kind, events[0].kv.mod_revision),
        (EventKind::Delete, 3)
    );
    assert_eq!(events[0].kv.value, b"1", "a delete carries the last value");
    // Starting in the past replays retained history first, in order.
    let mut replay = store.watch("w/", 1).unwrap();
    assert_eq!(replay.next().await.unwrap()[0].kv.mod_revision, 1);
    assert_eq!(replay.next().await.unwrap()[0].kind, EventKind::Delete);
    // A consumer that never reads is dropped once its buffer is full.
    let mut slow = store.watch("s/", 0).unwrap();
    for i in 0..1100 {
        commit(&*store, vec![], vec![put(&format!("s/{i}"), "v")]).await;
    }
    let mut lagged = false;
    for _ in 0..2000 {
        match slow.next().await {
            Ok(_) => continue,
            Err(StoreError::WatchLagged) => {
                lagged = true;
                break;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(lagged, "an overflowing watcher learns it lagged");
}

pub async fn limits(store: Arc<dyn Store>) {
    let huge = vec![0u8; VALUE_BYTES_MAX + 1];
    let error = store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: "big".into(),
                value: huge,
            }],
        })
        .await;
    assert!(matches!(error, Err(StoreError::TooLarge(_))));
    let many = (0..=OPS_PER_TXN_MAX)
        .map(|i| put(&format!("m/{i}"), "v"))
        .collect();
    assert!(matches!(
        store
            .txn(Txn {
                compares: vec![],
                ops: many
            })
            .await,
        Err(StoreError::TooLarge(_))
    ));
    assert!(store.get("big").await.unwrap().is_none());
}
