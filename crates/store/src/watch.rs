//! Watch fan-out: the ring of recent events and the registered watchers.
//!
//! The writer hands every committed batch to [`WatchHub::publish`] after the commit is
//! durable and before it answers the callers, so a caller that saw `Committed { revision }`
//! and then watches from `revision + 1` misses nothing. Registration and publication take the
//! same lock, and every watcher remembers the first revision it wants, so a watcher never
//! sees a revision twice or skips one, whatever the interleaving.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::{Revision, StoreError, WATCH_BUFFER_MAX, WatchEvent, WatchEvents, Watcher};

/// Events kept so a watch can start slightly in the past (a list that took a while, a
/// reconnecting client). Older starts get [`StoreError::Compacted`].
pub const HISTORY_EVENTS_MAX: usize = 10_000;
/// Key and value bytes kept in the history, so large values cannot make it hold gigabytes.
pub const HISTORY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The events one committed transaction produced.
#[derive(Debug)]
pub(crate) struct Committed {
    pub revision: Revision,
    pub events: Vec<WatchEvent>,
}

/// A published transaction as the history keeps it. Its events are shared: a watcher whose
/// prefix covers all of them (the usual case) gets the same allocation, not a copy of every
/// key and value.
struct Published {
    revision: Revision,
    events: WatchEvents,
    /// Key and value bytes, counted against [`HISTORY_BYTES_MAX`].
    bytes: usize,
}

impl Published {
    fn of(committed: Committed) -> Self {
        let bytes = committed
            .events
            .iter()
            .map(|e| e.kv.key.len() + e.kv.value.len())
            .sum();
        Self {
            revision: committed.revision,
            events: committed.events.into(),
            bytes,
        }
    }

    /// The events under `prefix`, if any.
    fn matching(&self, prefix: &str) -> Option<WatchEvents> {
        let under = |e: &&WatchEvent| e.kv.key.starts_with(prefix);
        match self.events.iter().filter(under).count() {
            0 => None,
            n if n == self.events.len() => Some(self.events.clone()),
            _ => Some(self.events.iter().filter(under).cloned().collect()),
        }
    }
}

struct Subscriber {
    prefix: String,
    /// Revisions below this were replayed from history or predate the watch.
    from: Revision,
    sender: mpsc::Sender<WatchEvents>,
    lagged: Arc<AtomicBool>,
}

struct HubState {
    /// Oldest first; only transactions that produced events.
    history: VecDeque<Published>,
    history_events: usize,
    history_bytes: usize,
    /// Every revision >= this is in `history`, or has not been published yet.
    oldest_watchable: Revision,
    /// The last revision handed to [`WatchHub::publish`].
    published: Revision,
    subscribers: Vec<Subscriber>,
    closed: bool,
}

pub(crate) struct WatchHub {
    state: Mutex<HubState>,
}

impl WatchHub {
    /// A hub for a store whose last committed revision is `revision`; history starts empty.
    pub fn new(revision: Revision) -> Self {
        Self {
            state: Mutex::new(HubState {
                history: VecDeque::new(),
                history_events: 0,
                history_bytes: 0,
                oldest_watchable: revision + 1,
                published: revision,
                subscribers: Vec::new(),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // The state stays consistent across a panic elsewhere (every update is a few plain
        // assignments), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a watcher. `current` is the last committed revision, used when
    /// `start_revision` is 0 ("from now on").
    pub fn subscribe(
        &self,
        prefix: &str,
        start_revision: Revision,
        current: impl FnOnce() -> Revision,
    ) -> Result<Watcher, StoreError> {
        let mut state = self.lock();
        if state.closed {
            return Err(StoreError::Closed);
        }
        // Read under the lock: the writer advances it before publishing, so it is never
        // behind `published`.
        let start = match start_revision {
            0 => current() + 1,
            n => n,
        };
        if start < state.oldest_watchable {
            return Err(StoreError::Compacted {
                requested: start,
                oldest: state.oldest_watchable,
            });
        }
        let replay: Vec<WatchEvents> = state
            .history
            .iter()
            .filter(|published| published.revision >= start)
            .filter_map(|published| published.matching(prefix))
            .collect();
        // Room for the whole replay on top of the live buffer, so a watch from the past is
        // never refused for the size of the history it asked for.
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER_MAX + replay.len());
        for events in replay {
            if sender.try_send(events).is_err() {
                // Cannot happen: the capacity covers the replay and nobody else sends yet.
                return Err(StoreError::Storage(
                    "the watch buffer refused its replay".into(),
                ));
            }
        }
        let lagged = Arc::new(AtomicBool::new(false));
        let from = start.max(state.published + 1);
        state.subscribers.push(Subscriber {
            prefix: prefix.to_owned(),
            from,
            sender,
            lagged: lagged.clone(),
        });
        Ok(Watcher::new(receiver, lagged))
    }

    /// Fans out a committed batch (in revision order) and records it in the history.
    /// `last` is the batch's last revision, which may carry no events.
    pub fn publish(&self, batch: Vec<Committed>, last: Revision) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        for committed in batch {
            let published = Published::of(committed);
            state.subscribers.retain(|subscriber| {
                if published.revision < subscriber.from {
                    return true;
                }
                let Some(events) = published.matching(&subscriber.prefix) else {
                    return true;
                };
                match subscriber.sender.try_send(events) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Blocking the writer on one slow consumer would stall every write;
                        // the consumer re-lists instead, as with Kubernetes list+watch.
                        subscriber.lagged.store(true, Ordering::Release);
                        tracing::debug!(
                            prefix = %subscriber.prefix,
                            revision = published.revision,
                            "dropping a watcher that fell {WATCH_BUFFER_MAX} transactions behind"
                        );
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            if published.events.is_empty() {
                continue;
            }
            state.history_events += published.events.len();
            state.history_bytes += published.bytes;
            state.history.push_back(published);
            while state.history_events > HISTORY_EVENTS_MAX
                || state.history_bytes > HISTORY_BYTES_MAX
            {
                let Some(dropped) = state.history.pop_front() else {
                    break;
                };
                state.history_events -= dropped.events.len();
                state.history_bytes -= dropped.bytes;
                state.oldest_watchable = dropped.revision + 1;
            }
        }
        // Watchers whose consumer went away are otherwise only noticed when an event
        // matches them.
        state.subscribers.retain(|s| !s.sender.is_closed());
        state.published = last;
    }

    /// Ends every watcher with [`StoreError::Closed`] (after its buffered events) and refuses
    /// new ones.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.subscribers.clear();
        state.history.clear();
    }
}
