//! Behaviour every [`Store`] backend must have, as one suite each backend's tests run.
//!
//! Every check takes a fresh, empty store (each test owns the only reference, so dropping it
//! closes the store) and panics on a violation. Run them all with [`run_all`] from a tokio
//! test; they spawn tasks, so any runtime flavour works. No check sleeps or times anything:
//! each one waits for the condition it asserts.
//!
//! Two checks depend on retention policy rather than semantics: [`old_revisions_are_compacted`]
//! expects history older than [`HISTORY_EVENTS_MAX`] events to be gone (an etcd runner
//! compacts first), and [`lagging_watcher_is_dropped`] expects watchers bounded by
//! [`WATCH_BUFFER_MAX`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::*;

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    }
}

fn delete(key: &str) -> Op {
    Op::Delete {
        key: key.to_owned(),
    }
}

fn expect(key: &str, mod_revision: Revision) -> Compare {
    Compare::ModRevision {
        key: key.to_owned(),
        mod_revision,
    }
}

async fn commit(store: &dyn Store, compares: Vec<Compare>, ops: Vec<Op>) -> TxnOutcome {
    store.txn(Txn { compares, ops }).await.expect("txn")
}

async fn committed(store: &dyn Store, ops: Vec<Op>) -> Revision {
    match commit(store, vec![], ops).await {
        TxnOutcome::Committed { revision } => revision,
        other => panic!("an unconditional txn must commit, got {other:?}"),
    }
}

async fn list(store: &dyn Store, prefix: &str) -> RangeResponse {
    store
        .range(RangeRequest {
            prefix: prefix.into(),
            start_after: None,
            limit: 0,
        })
        .await
        .expect("range")
}

fn number(kv: &KeyValue) -> i64 {
    String::from_utf8(kv.value.clone())
        .expect("utf-8")
        .parse()
        .expect("a number")
}

/// Runs every check, each against a fresh store from `make`.
pub async fn run_all(make: impl Fn() -> Arc<dyn Store>) {
    put_get_delete_and_revisions(make()).await;
    range_with_prefix_and_pages(make()).await;
    compare_and_swap(make()).await;
    compare_value(make()).await;
    multi_op_atomicity(make()).await;
    checks_without_ops(make()).await;
    one_winner_per_revision(make()).await;
    concurrent_increments_are_exact(make()).await;
    concurrent_transfers_match_the_event_stream(make()).await;
    watches_filter_and_order(make()).await;
    watch_from_history_and_list_then_watch(make()).await;
    old_revisions_are_compacted(make()).await;
    lagging_watcher_is_dropped(make()).await;
    limits(make()).await;
    dropping_the_store_closes_watchers(make()).await;
}

pub async fn put_get_delete_and_revisions(store: Arc<dyn Store>) {
    assert_eq!(store.revision().await.unwrap(), 0, "an empty store is at 0");
    assert!(store.get("a").await.unwrap().is_none());
    assert_eq!(committed(&*store, vec![put("a", "1")]).await, 1);
    assert_eq!(
        committed(&*store, vec![put("a", "2"), put("b", "x")]).await,
        2
    );
    let a = store.get("a").await.unwrap().unwrap();
    assert_eq!(
        a,
        KeyValue {
            key: "a".into(),
            value: b"2".to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 2,
        }
    );
    let b = store.get("b").await.unwrap().unwrap();
    assert_eq!((b.create_revision, b.mod_revision, b.version), (2, 2, 1));
    assert_eq!(committed(&*store, vec![delete("a")]).await, 3);
    assert!(store.get("a").await.unwrap().is_none());
    assert_eq!(store.revision().await.unwrap(), 3);
    // Deleting a missing key is not an error; the txn still takes a revision.
    assert_eq!(committed(&*store, vec![delete("never")]).await, 4);
    // A re-created key starts over.
    assert_eq!(committed(&*store, vec![put("a", "3")]).await, 5);
    let a = store.get("a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
    assert_eq!(list(&*store, "").await.revision, 5);
}

pub async fn range_with_prefix_and_pages(store: Arc<dyn Store>) {
    let ops = (0..10)
        .map(|i| put(&format!("p/{i:02}"), "v"))
        .chain([put("q/0", "v"), put("o", "v"), put("p", "v")])
        .collect();
    committed(&*store, ops).await;
    let page = |start_after: Option<&str>, limit: usize| {
        let store = store.clone();
        let request = RangeRequest {
            prefix: "p/".into(),
            start_after: start_after.map(str::to_owned),
            limit,
        };
        async move { store.range(request).await.unwrap() }
    };
    let keys = |r: &RangeResponse| r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>();

    let all = page(None, 0).await;
    assert_eq!(all.kvs.len(), 10);
    assert!(!all.more);
    assert_eq!(all.revision, 1);
    assert!(
        keys(&all).windows(2).all(|w| w[0] < w[1]),
        "ascending key order"
    );

    let first = page(None, 4).await;
    assert_eq!(keys(&first), ["p/00", "p/01", "p/02", "p/03"]);
    assert!(first.more);
    let rest = page(Some("p/03"), 100).await;
    assert_eq!(rest.kvs.len(), 6);
    assert_eq!(rest.kvs[0].key, "p/04");
    assert!(!rest.more);
    assert!(
        !page(None, 10).await.more,
        "a full last page says there is no more"
    );
    // A start_after that is not a key, or sorts before the prefix, still works.
    assert_eq!(page(Some("p/035"), 1).await.kvs[0].key, "p/04");
    assert_eq!(page(Some("a"), 1).await.kvs[0].key, "p/00");
    assert!(page(Some("p/99"), 0).await.kvs.is_empty());

    // Paging through with a small limit visits every key exactly once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let response = page(after.as_deref(), 3).await;
        seen.extend(keys(&response));
        after = seen.last().cloned();
        if !response.more {
            break;
        }
    }
    assert_eq!(seen, keys(&all));

    assert_eq!(list(&*store, "").await.kvs.len(), 13, "empty prefix: all");
    assert!(list(&*store, "zz").await.kvs.is_empty());
}

pub async fn compare_and_swap(store: Arc<dyn Store>) {
    // Create-if-absent.
    assert_eq!(
        commit(&*store, vec![expect("k", 0)], vec![put("k", "1")]).await,
        TxnOutcome::Committed { revision: 1 }
    );
    // It fails once the key exists, and writes nothing (not even the other op).
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
    assert_eq!(
        store.revision().await.unwrap(),
        1,
        "a conflict takes no revision"
    );
    assert_eq!(
        commit(&*store, vec![expect("k", 1)], vec![put("k", "2")]).await,
        TxnOutcome::Committed { revision: 2 }
    );
    assert_eq!(
        commit(&*store, vec![expect("k", 1)], vec![put("k", "3")]).await,
        TxnOutcome::Conflict { key: "k".into() }
    );
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"2");
    // The outcome names the first compare that failed.
    assert_eq!(
        commit(
            &*store,
            vec![expect("k", 2), expect("absent", 0), expect("x", 7)],
            vec![put("k", "4")]
        )
        .await,
        TxnOutcome::Conflict { key: "x".into() }
    );
    // A deleted key compares as absent again.
    assert_eq!(
        commit(&*store, vec![expect("k", 2)], vec![delete("k")]).await,
        TxnOutcome::Committed { revision: 3 }
    );
    assert_eq!(
        commit(&*store, vec![expect("k", 0)], vec![put("k", "5")]).await,
        TxnOutcome::Committed { revision: 4 }
    );
}

fn expect_value(key: &str, value: &str) -> Compare {
    Compare::Value {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

/// A value compare holds while the key holds exactly those bytes, also against a write
/// queued just before it whose revision the caller never saw (a pipelined writer).
pub async fn compare_value(store: Arc<dyn Store>) {
    assert_eq!(
        commit(&*store, vec![expect_value("k", "1")], vec![put("k", "2")]).await,
        TxnOutcome::Conflict { key: "k".into() },
        "a missing key holds no value"
    );
    committed(&*store, vec![put("k", "1")]).await;
    assert_eq!(
        commit(&*store, vec![expect_value("k", "2")], vec![put("k", "3")]).await,
        TxnOutcome::Conflict { key: "k".into() }
    );
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"1");
    // Two transactions sent together: the second expects what the first writes.
    let first = store.txn(Txn {
        compares: vec![expect_value("k", "1")],
        ops: vec![put("k", "v2")],
    });
    let second = store.txn(Txn {
        compares: vec![expect_value("k", "v2")],
        ops: vec![put("k", "v3")],
    });
    let (first, second) = tokio::join!(first, second);
    assert!(matches!(first.unwrap(), TxnOutcome::Committed { .. }));
    assert!(matches!(second.unwrap(), TxnOutcome::Committed { .. }));
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"v3");
    // A stale expectation changes nothing.
    assert_eq!(
        commit(
            &*store,
            vec![expect_value("k", "v2")],
            vec![put("k", "v4"), put("o", "x")]
        )
        .await,
        TxnOutcome::Conflict { key: "k".into() }
    );
    assert!(store.get("o").await.unwrap().is_none());
}

pub async fn multi_op_atomicity(store: Arc<dyn Store>) {
    committed(&*store, vec![put("m/a", "1"), put("m/b", "1")]).await;
    let mut watcher = store.watch("m/", 0).unwrap();
    let revision = committed(
        &*store,
        vec![put("m/a", "2"), delete("m/b"), put("m/c", "3")],
    )
    .await;
    assert_eq!(revision, 2);
    let after = list(&*store, "m/").await;
    assert_eq!(after.revision, 2);
    let state: Vec<(&str, &[u8], Revision)> = after
        .kvs
        .iter()
        .map(|k| (k.key.as_str(), k.value.as_slice(), k.mod_revision))
        .collect();
    assert_eq!(state, [("m/a", &b"2"[..], 2), ("m/c", &b"3"[..], 2)]);
    // One transaction is one batch of events, in op order, all at its revision.
    let events = watcher.next().await.unwrap();
    let seen: Vec<(EventKind, &str, Revision)> = events
        .iter()
        .map(|e| (e.kind, e.kv.key.as_str(), e.kv.mod_revision))
        .collect();
    assert_eq!(
        seen,
        [
            (EventKind::Put, "m/a", 2),
            (EventKind::Delete, "m/b", 2),
            (EventKind::Put, "m/c", 2)
        ]
    );
}

pub async fn checks_without_ops(store: Arc<dyn Store>) {
    committed(&*store, vec![put("k", "1")]).await;
    committed(&*store, vec![put("j", "1")]).await;
    // A txn with compares only is a consistent check: it reports the revision it was checked
    // at and takes none.
    assert_eq!(
        commit(&*store, vec![expect("k", 1), expect("j", 2)], vec![]).await,
        TxnOutcome::Committed { revision: 2 }
    );
    assert_eq!(
        commit(&*store, vec![expect("k", 2)], vec![]).await,
        TxnOutcome::Conflict { key: "k".into() }
    );
    assert_eq!(store.revision().await.unwrap(), 2);
}

/// Many tasks race the same compare-and-swap: per revision exactly one wins.
pub async fn one_winner_per_revision(store: Arc<dyn Store>) {
    const ROUNDS: usize = 10;
    const CONTENDERS: usize = 16;
    for round in 0..ROUNDS {
        let before = store.revision().await.unwrap();
        let expected = store
            .get("race")
            .await
            .unwrap()
            .map_or(0, |k| k.mod_revision);
        let tasks: Vec<_> = (0..CONTENDERS)
            .map(|contender| {
                let store = store.clone();
                tokio::spawn(async move {
                    let outcome = store
                        .txn(Txn {
                            compares: vec![expect("race", expected)],
                            ops: vec![put("race", &contender.to_string())],
                        })
                        .await
                        .unwrap();
                    (contender, outcome)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (contender, TxnOutcome::Committed { revision }) => {
                    winners.push((contender, revision))
                }
                (_, TxnOutcome::Conflict { key }) => assert_eq!(key, "race"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
        let (winner, revision) = winners[0];
        assert_eq!(revision, before + 1);
        let stored = store.get("race").await.unwrap().unwrap();
        assert_eq!(stored.value, winner.to_string().as_bytes());
        assert_eq!(
            (stored.mod_revision, stored.version),
            (revision, round as u64 + 1)
        );
    }
}

pub async fn concurrent_increments_are_exact(store: Arc<dyn Store>) {
    const WORKERS: usize = 8;
    const INCREMENTS: usize = 25;
    let mut handles = Vec::new();
    for _ in 0..WORKERS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut attempts = 0;
            for _ in 0..INCREMENTS {
                loop {
                    attempts += 1;
                    let current = store.get("counter").await.unwrap();
                    let (value, revision) = current
                        .as_ref()
                        .map_or((0, 0), |kv| (number(kv), kv.mod_revision));
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
            attempts
        }));
    }
    let mut attempts = 0;
    for handle in handles {
        attempts += handle.await.unwrap();
    }
    let counter = store.get("counter").await.unwrap().unwrap();
    assert_eq!(number(&counter), (WORKERS * INCREMENTS) as i64);
    assert_eq!(counter.version as usize, WORKERS * INCREMENTS);
    assert_eq!(
        store.revision().await.unwrap() as usize,
        WORKERS * INCREMENTS,
        "only the winning attempts of {attempts} took a revision"
    );
}

/// Concurrent transfers between accounts keep the total, and the watch stream is a complete,
/// gap-free log: replaying it reproduces the final state exactly.
pub async fn concurrent_transfers_match_the_event_stream(store: Arc<dyn Store>) {
    const ACCOUNTS: usize = 5;
    const TASKS: usize = 12;
    const TRANSFERS: usize = 15;
    let account = |i: usize| format!("bank/{i}");
    let mut watcher = store.watch("bank/", 0).unwrap();
    committed(
        &*store,
        (0..ACCOUNTS).map(|i| put(&account(i), "100")).collect(),
    )
    .await;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..TRANSFERS {
                let from = format!("bank/{}", (task + i) % ACCOUNTS);
                let to = format!("bank/{}", (task + 3 * i + 1 + (i % 2)) % ACCOUNTS);
                if from == to {
                    continue;
                }
                let amount = 1 + ((task + i) % 7) as i64;
                loop {
                    let a = store.get(&from).await.unwrap().unwrap();
                    let b = store.get(&to).await.unwrap().unwrap();
                    let outcome = store
                        .txn(Txn {
                            compares: vec![
                                expect(&from, a.mod_revision),
                                expect(&to, b.mod_revision),
                            ],
                            ops: vec![
                                put(&from, &(number(&a) - amount).to_string()),
                                put(&to, &(number(&b) + amount).to_string()),
                            ],
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
    let finale = list(&*store, "bank/").await;
    let total: i64 = finale.kvs.iter().map(number).sum();
    assert_eq!(
        total,
        100 * ACCOUNTS as i64,
        "money is neither made nor lost"
    );

    let mut replayed: BTreeMap<String, KeyValue> = BTreeMap::new();
    let mut last = 0;
    while last < finale.revision {
        let events = watcher.next().await.unwrap();
        let revision = events[0].kv.mod_revision;
        assert_eq!(revision, last + 1, "every revision appears, in order");
        assert!(events.iter().all(|e| e.kv.mod_revision == revision));
        for event in events.iter() {
            assert_eq!(event.kind, EventKind::Put);
            replayed.insert(event.kv.key.clone(), event.kv.clone());
        }
        last = revision;
    }
    assert_eq!(replayed.into_values().collect::<Vec<_>>(), finale.kvs);
}

pub async fn watches_filter_and_order(store: Arc<dyn Store>) {
    let mut w = store.watch("w/", 0).unwrap();
    let mut everything = store.watch("", 0).unwrap();
    committed(&*store, vec![put("w/a", "1"), put("x/ignored", "1")]).await;
    committed(&*store, vec![put("x/ignored", "2")]).await;
    committed(&*store, vec![put("w/a", "2"), put("w/b", "1")]).await;
    committed(&*store, vec![delete("w/a")]).await;

    let events = w.next().await.unwrap();
    assert_eq!(events.len(), 1, "keys outside the prefix are filtered out");
    assert_eq!(
        (
            events[0].kind,
            events[0].kv.key.as_str(),
            events[0].kv.mod_revision
        ),
        (EventKind::Put, "w/a", 1)
    );
    let events = w.next().await.unwrap();
    let seen: Vec<(&str, Revision, u64)> = events
        .iter()
        .map(|e| (e.kv.key.as_str(), e.kv.mod_revision, e.kv.version))
        .collect();
    assert_eq!(seen, [("w/a", 3, 2), ("w/b", 3, 1)]);
    let events = w.next().await.unwrap();
    assert_eq!(
        (events[0].kind, events[0].kv.mod_revision),
        (EventKind::Delete, 4)
    );
    assert_eq!(events[0].kv.value, b"2", "a delete carries the last value");
    assert_eq!(events[0].kv.create_revision, 1);

    for revision in 1..=4 {
        let events = everything.next().await.unwrap();
        assert!(events.iter().all(|e| e.kv.mod_revision == revision));
    }
    // A dropped watcher does not disturb the others.
    drop(everything);
    committed(&*store, vec![put("w/c", "1")]).await;
    assert_eq!(w.next().await.unwrap()[0].kv.key, "w/c");
}

pub async fn watch_from_history_and_list_then_watch(store: Arc<dyn Store>) {
    committed(&*store, vec![put("h/a", "1")]).await;
    committed(&*store, vec![put("other", "1")]).await;
    committed(&*store, vec![delete("h/a")]).await;
    // Starting in the past replays retained history, in order, then continues live.
    let mut replay = store.watch("h/", 1).unwrap();
    assert_eq!(replay.next().await.unwrap()[0].kv.mod_revision, 1);
    assert_eq!(replay.next().await.unwrap()[0].kind, EventKind::Delete);
    let mut from_three = store.watch("h/", 3).unwrap();
    assert_eq!(from_three.next().await.unwrap()[0].kv.mod_revision, 3);

    // List, then watch from the list's revision + 1: no gap, no duplicate.
    let listed = list(&*store, "h/").await;
    assert_eq!(listed.revision, 3);
    let mut after_list = store.watch("h/", listed.revision + 1).unwrap();
    let mut far = store.watch("h/", listed.revision + 3).unwrap();
    for i in 0..3 {
        committed(&*store, vec![put(&format!("h/{i}"), "v")]).await;
    }
    for revision in 4..=6 {
        assert_eq!(
            after_list.next().await.unwrap()[0].kv.mod_revision,
            revision
        );
        assert_eq!(replay.next().await.unwrap()[0].kv.mod_revision, revision);
    }
    // A start in the future skips everything before it.
    assert_eq!(far.next().await.unwrap()[0].kv.mod_revision, 6);
}

pub async fn old_revisions_are_compacted(store: Arc<dyn Store>) {
    const PER_TXN: usize = 1000;
    let txns = HISTORY_EVENTS_MAX / PER_TXN + 2;
    for t in 0..txns {
        let ops = (0..PER_TXN)
            .map(|i| put(&format!("c/{t:03}/{i:04}"), "v"))
            .collect();
        committed(&*store, ops).await;
    }
    let current = store.revision().await.unwrap();
    let oldest = match store.watch("c/", 1) {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!(requested, 1);
            assert!(oldest > 1 && oldest <= current, "oldest {oldest}");
            oldest
        }
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(_) => panic!("a watch from before the retained history must fail"),
    };
    // The oldest retained revision itself can still be watched.
    let mut watcher = store.watch("c/", oldest).unwrap();
    let events = watcher.next().await.unwrap();
    assert_eq!(events.len(), PER_TXN);
    assert_eq!(events[0].kv.mod_revision, oldest);
    assert!(store.watch("c/", current + 1).is_ok());
    assert!(store.watch("c/", 0).is_ok());
}

pub async fn lagging_watcher_is_dropped(store: Arc<dyn Store>) {
    const TASKS: usize = 16;
    let mut slow = store.watch("s/", 0).unwrap();
    let mut unrelated = store.watch("u/", 0).unwrap();
    let per_task = WATCH_BUFFER_MAX / TASKS + 2;
    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    committed(&*store, vec![put(&format!("s/{task}/{i}"), "v")]).await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    // The events buffered before the overflow are still delivered, then the lag is reported.
    let mut delivered = 0;
    loop {
        match slow.next().await {
            Ok(events) => {
                assert_eq!(events.len(), 1);
                delivered += 1;
            }
            Err(StoreError::WatchLagged) => break,
            Err(other) => panic!("expected WatchLagged, got {other}"),
        }
    }
    assert!(delivered <= WATCH_BUFFER_MAX);
    assert!(matches!(slow.next().await, Err(StoreError::WatchLagged)));
    // Other watchers are unaffected.
    committed(&*store, vec![put("u/1", "v")]).await;
    assert_eq!(unrelated.next().await.unwrap()[0].kv.key, "u/1");
    // After re-listing, a new watch works.
    let listed = list(&*store, "s/").await;
    assert_eq!(listed.kvs.len(), TASKS * per_task);
    let mut again = store.watch("s/", listed.revision + 1).unwrap();
    committed(&*store, vec![put("s/again", "v")]).await;
    assert_eq!(again.next().await.unwrap()[0].kv.key, "s/again");
}

pub async fn limits(store: Arc<dyn Store>) {
    let refused = |result: Result<TxnOutcome, StoreError>| match result {
        Err(StoreError::TooLarge { size, limit, .. }) => assert!(size > limit),
        other => panic!("expected TooLarge, got {other:?}"),
    };
    let one = |key: &str, value: Vec<u8>| Txn {
        compares: vec![],
        ops: vec![Op::Put {
            key: key.into(),
            value,
        }],
    };
    refused(store.txn(one("big", vec![0; VALUE_BYTES_MAX + 1])).await);
    refused(store.txn(one(&"k".repeat(KEY_BYTES_MAX + 1), vec![])).await);
    let many = (0..=OPS_PER_TXN_MAX)
        .map(|i| put(&format!("m/{i}"), "v"))
        .collect();
    refused(
        store
            .txn(Txn {
                compares: vec![],
                ops: many,
            })
            .await,
    );
    let heavy = (0..=TXN_BYTES_MAX / VALUE_BYTES_MAX)
        .map(|i| Op::Put {
            key: format!("h/{i}"),
            value: vec![0; VALUE_BYTES_MAX],
        })
        .collect();
    refused(
        store
            .txn(Txn {
                compares: vec![],
                ops: heavy,
            })
            .await,
    );
    assert!(matches!(
        store.txn(one("", vec![])).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store.get("big").await.unwrap().is_none());
    assert!(store.get("m/0").await.unwrap().is_none());
    assert!(store.get("h/0").await.unwrap().is_none());
    assert_eq!(store.revision().await.unwrap(), 0, "nothing was written");
    // The limit itself is allowed.
    assert_eq!(
        store
            .txn(one("big", vec![7; VALUE_BYTES_MAX]))
            .await
            .unwrap(),
        TxnOutcome::Committed { revision: 1 }
    );
    assert_eq!(
        store.get("big").await.unwrap().unwrap().value.len(),
        VALUE_BYTES_MAX
    );
}

/// Dropping the last reference shuts the store down: watchers get what was committed, then
/// [`StoreError::Closed`].
pub async fn dropping_the_store_closes_watchers(store: Arc<dyn Store>) {
    let mut watcher = store.watch("", 0).unwrap();
    committed(&*store, vec![put("k", "v")]).await;
    drop(store);
    assert_eq!(watcher.next().await.unwrap()[0].kv.key, "k");
    assert!(matches!(watcher.next().await, Err(StoreError::Closed)));
}
