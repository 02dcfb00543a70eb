//! The store's change feed: every instance and HealthCheck at the revision of its latest change,
//! so that any number of readers (the state folder, the InstanceStatus writer, the controller's
//! view) each keep a position of their own and take what changed after it, once, at its latest.
//!
//! A change that matters at once (a transition, a new instance) gets a new revision. A change of
//! counters and times only is a *touch*: it costs a counter increment, and readers collect
//! touched instances on their periodic refresh. Removed keys stay in the feed as tombstones until
//! every live reader has passed them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::model::CheckKey;

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FeedKey {
    /// An instance, by id.
    Instance(String),
    /// A HealthCheck.
    Check(CheckKey),
}

/// The feed itself (kept under the store's lock). The revision of a key that exists is kept on
/// its entry in the store, so the feed holds each key once; only removed keys are indexed here.
#[derive(Debug, Default)]
pub(crate) struct Feed {
    revision: u64,
    /// Each key once, at the revision of its latest change.
    log: BTreeMap<u64, FeedKey>,
    /// The removed keys among them, with their revision.
    tombstones: HashMap<FeedKey, u64>,
    touches: u64,
    /// Positions of the readers, for pruning tombstones.
    readers: Vec<Weak<AtomicU64>>,
}

impl Feed {
    /// `key` changed; `previous` is the revision it was last marked at (kept on its entry), if
    /// any. Returns the revision to keep.
    pub(crate) fn mark(&mut self, key: FeedKey, previous: Option<u64>) -> u64 {
        self.revision += 1;
        if let Some(old) = previous {
            self.log.remove(&old);
        }
        if !self.tombstones.is_empty()
            && let Some(old) = self.tombstones.remove(&key)
        {
            self.log.remove(&old);
        }
        self.log.insert(self.revision, key);
        self.revision
    }

    /// `key` is gone; `previous` as for [`Feed::mark`].
    pub(crate) fn remove(&mut self, key: FeedKey, previous: Option<u64>) {
        self.revision += 1;
        if let Some(old) = previous {
            self.log.remove(&old);
        }
        if let Some(old) = self.tombstones.insert(key.clone(), self.revision) {
            self.log.remove(&old);
        }
        self.log.insert(self.revision, key);
    }

    /// A counters-only change: the touch number to keep on the instance.
    pub(crate) fn touch(&mut self) -> u64 {
        self.touches += 1;
        self.touches
    }

    /// The latest touch number.
    pub(crate) fn touches(&self) -> u64 {
        self.touches
    }

    /// Up to `limit` keys changed after revision `seen`, oldest first, with their revisions.
    pub(crate) fn after(&self, seen: u64, limit: usize) -> Vec<(u64, FeedKey)> {
        self.log.range(seen.saturating_add(1)..).take(limit).map(|(r, k)| (*r, k.clone())).collect()
    }

    /// A new reader's position (0: it sees every key the feed holds).
    pub(crate) fn register(&mut self) -> Arc<AtomicU64> {
        let position = Arc::new(AtomicU64::new(0));
        self.readers.push(Arc::downgrade(&position));
        position
    }

    /// Forgets tombstones that every live reader has passed.
    pub(crate) fn prune(&mut self) {
        if self.tombstones.is_empty() {
            return;
        }
        self.readers.retain(|r| r.strong_count() > 0);
        // Nobody reads: nothing to keep for anyone.
        let oldest = self
            .readers
            .iter()
            .filter_map(Weak::upgrade)
            .map(|p| p.load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX);
        let log = &mut self.log;
        self.tombstones.retain(|_, revision| {
            let keep = *revision > oldest;
            if !keep {
                log.remove(revision);
            }
            keep
        });
    }
}

/// What happened, for readers that tell people (the Events recorder): every status transition
/// and every action, in order. Readers that fall behind by more than the channel holds are told
/// how many they missed.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    /// A (check, instance) changed status.
    Transition {
        /// The HealthCheck.
        check: CheckKey,
        /// The instance.
        instance_id: String,
        /// Status before.
        from: crate::api::CheckStatus,
        /// Status now.
        to: crate::api::CheckStatus,
        /// The probe's bounded failure reason or, when it could not run, its cause.
        reason: Option<&'static str>,
        /// What the probe saw.
        message: Option<String>,
        /// When.
        at: jiff::Timestamp,
    },
    /// An action was taken on an instance.
    Action {
        /// The HealthCheck whose action it was.
        check: CheckKey,
        /// The instance.
        instance_id: String,
        /// `restartContainer`, `restartVM`, `exec`, ...
        action: String,
        /// Whether it worked.
        succeeded: bool,
        /// What happened.
        message: String,
        /// When.
        at: jiff::Timestamp,
    },
    /// The owner's verdict in force on an instance changed (a report written, removed, its
    /// window begun or ended).
    Reported {
        /// The instance.
        instance_id: String,
        /// The verdict now; `None` when none is in force any more.
        status: Option<crate::api::ReportedStatus>,
        /// Its reasons.
        reasons: Vec<&'static str>,
        /// Its description.
        description: Option<String>,
        /// When.
        at: jiff::Timestamp,
    },
}

/// How many events a reader may fall behind before it misses some.
pub const EVENT_CAPACITY: usize = 1024;

/// One reader's position in the feed (see [`crate::engine::store::Store::subscribe`]).
#[derive(Debug)]
pub struct Cursor {
    pub(crate) seen: u64,
    pub(crate) touched_seen: u64,
    pub(crate) pending_touched: Vec<String>,
    pub(crate) position: Arc<AtomicU64>,
    pub(crate) notify: tokio::sync::watch::Receiver<()>,
}

impl Cursor {
    /// Resolves when something that matters changed since this reader last took changes (or
    /// when the store is gone).
    pub async fn changed(&mut self) {
        if self.notify.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The revision this reader has seen up to.
    pub fn revision(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> FeedKey {
        FeedKey::Instance(id.to_owned())
    }

    #[test]
    fn each_key_is_held_once_at_its_latest_revision() {
        let mut feed = Feed::default();
        let a = feed.mark(instance("a"), None);
        feed.mark(instance("b"), None);
        feed.mark(instance("a"), Some(a));
        assert_eq!(feed.after(0, 10), [(2, instance("b")), (3, instance("a"))]);
        assert_eq!(feed.after(2, 10), [(3, instance("a"))]);
        assert_eq!(feed.after(0, 1), [(2, instance("b"))]);
        assert!(feed.after(3, 10).is_empty());
    }

    #[test]
    fn tombstones_stay_until_every_reader_passed_them() {
        let mut feed = Feed::default();
        let slow = feed.register();
        let fast = feed.register();
        let a = feed.mark(instance("a"), None);
        feed.remove(instance("a"), Some(a));
        fast.store(2, Ordering::SeqCst);
        feed.prune();
        assert_eq!(feed.after(0, 10), [(2, instance("a"))], "the slow reader has not seen it yet");
        slow.store(2, Ordering::SeqCst);
        feed.prune();
        assert!(feed.after(0, usize::MAX).is_empty());
        // A key that comes back is a change like any other.
        feed.mark(instance("a"), None);
        assert_eq!(feed.after(2, 10), [(3, instance("a"))]);
        drop((slow, fast));
        feed.remove(instance("b"), None);
        feed.prune();
        assert_eq!(feed.after(0, 10), [(3, instance("a"))], "no reader left: tombstones go");
    }

    #[test]
    fn a_key_removed_and_back_before_anyone_read_is_listed_once() {
        let mut feed = Feed::default();
        let _reader = feed.register();
        let a = feed.mark(instance("a"), None);
        feed.remove(instance("a"), Some(a));
        feed.remove(instance("a"), None);
        let back = feed.mark(instance("a"), None);
        assert_eq!(feed.after(0, 10), [(back, instance("a"))]);
        feed.prune();
        assert_eq!(feed.after(0, 10), [(back, instance("a"))], "no tombstone left to prune it by");
    }
}
