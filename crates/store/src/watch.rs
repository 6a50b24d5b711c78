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

use crate::{Revision, StoreError, WATCH_BUFFER_MAX, WatchEvent, Watcher};

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

impl Committed {
    fn bytes(&self) -> usize {
        self.events
            .iter()
            .map(|e| e.kv.key.len() + e.kv.value.len())
            .sum()
    }

    fn matching(&self, prefix: &str) -> Vec<WatchEvent> {
        self.events
            .iter()
            .filter(|e| e.kv.key.starts_with(prefix))
            .cloned()
            .collect()
    }
}

struct Subscriber {
    prefix: String,
    /// Revisions below this were replayed from history or predate the watch.
    from: Revision,
    sender: mpsc::Sender<Vec<WatchEvent>>,
    lagged: Arc<AtomicBool>,
}

struct HubState {
    /// Oldest first; only transactions that produced events.
    history: VecDeque<(Committed, usize)>,
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
        let replay: Vec<Vec<WatchEvent>> = state
            .history
            .iter()
            .filter(|(c, _)| c.revision >= start)
            .map(|(c, _)| c.matching(prefix))
            .filter(|events| !events.is_empty())
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
            state.subscribers.retain(|subscriber| {
                if committed.revision < subscriber.from {
                    return true;
                }
                let events = committed.matching(&subscriber.prefix);
                if events.is_empty() {
                    return true;
                }
                match subscriber.sender.try_send(events) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Blocking the writer on one slow consumer would stall every write;
                        // the consumer re-lists instead, as with Kubernetes list+watch.
                        subscriber.lagged.store(true, Ordering::Release);
                        tracing::debug!(
                            prefix = %subscriber.prefix,
                            revision = committed.revision,
                            "dropping a watcher that fell {WATCH_BUFFER_MAX} transactions behind"
                        );
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            if committed.events.is_empty() {
                continue;
            }
            let bytes = committed.bytes();
            state.history_events += committed.events.len();
            state.history_bytes += bytes;
            state.history.push_back((committed, bytes));
            while state.history_events > HISTORY_EVENTS_MAX
                || state.history_bytes > HISTORY_BYTES_MAX
            {
                let Some((dropped, bytes)) = state.history.pop_front() else {
                    break;
                };
                state.history_events -= dropped.events.len();
                state.history_bytes -= bytes;
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
