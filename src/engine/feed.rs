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

/// The feed itself (kept under the store's lock).
#[derive(Debug, Default)]
pub(crate) struct Feed {
    revision: u64,
    /// Each key once, at the revision of its latest change.
    log: BTreeMap<u64, FeedKey>,
    at: HashMap<FeedKey, u64>,
    /// The removed keys among them, by revision.
    tombstones: BTreeMap<u64, FeedKey>,
    touches: u64,
    /// Positions of the readers, for pruning tombstones.
    readers: Vec<Weak<AtomicU64>>,
}

impl Feed {
    /// `key` changed (or, with `removed`, is gone).
    pub(crate) fn mark(&mut self, key: FeedKey, removed: bool) {
        self.revision += 1;
        if let Some(old) = self.at.insert(key.clone(), self.revision) {
            self.log.remove(&old);
            self.tombstones.remove(&old);
        }
        if removed {
            self.tombstones.insert(self.revision, key.clone());
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
        self.readers.retain(|r| r.strong_count() > 0);
        let Some(oldest) =
            self.readers.iter().filter_map(Weak::upgrade).map(|p| p.load(Ordering::SeqCst)).min()
        else {
            // Nobody reads: nothing to keep for anyone.
            self.forget_tombstones(u64::MAX);
            return;
        };
        self.forget_tombstones(oldest);
    }

    fn forget_tombstones(&mut self, up_to: u64) {
        let passed: Vec<u64> = self.tombstones.range(..=up_to).map(|(r, _)| *r).collect();
        for r in passed {
            if let Some(key) = self.tombstones.remove(&r) {
                self.log.remove(&r);
                self.at.remove(&key);
            }
        }
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
        /// The probe's bounded reason, when it failed.
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
        feed.mark(instance("a"), false);
        feed.mark(instance("b"), false);
        feed.mark(instance("a"), false);
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
        feed.mark(instance("a"), false);
        feed.mark(instance("a"), true);
        fast.store(2, Ordering::SeqCst);
        feed.prune();
        assert_eq!(feed.after(0, 10), [(2, instance("a"))], "the slow reader has not seen it yet");
        slow.store(2, Ordering::SeqCst);
        feed.prune();
        assert!(feed.after(0, usize::MAX).is_empty());
        // A key that comes back is a change like any other.
        feed.mark(instance("a"), false);
        assert_eq!(feed.after(2, 10), [(3, instance("a"))]);
        drop((slow, fast));
        feed.mark(instance("b"), true);
        feed.prune();
        assert_eq!(feed.after(0, 10), [(3, instance("a"))], "no reader left: tombstones go");
    }
}
