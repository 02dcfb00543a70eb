//! Followers: long-lived tasks, one per key (a VM's QMP connection), that are started again with
//! exponential backoff when they end without being asked to — a panic included — and counted.
//! Without this a follower that died left its VM at its last status for good.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt;
use prometheus::IntCounter;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

/// First wait before a follower that died is started again; it doubles up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Follower {
    handle: JoinHandle<()>,
    started: Instant,
    /// Deaths in a row (a follower that ran longer than [`MAX_BACKOFF`] starts over at 1).
    failures: u32,
    /// When it may be started again, once it died.
    retry_at: Option<Instant>,
}

/// The followers of one runtime, by key.
#[derive(Debug)]
pub struct Followers<K: Ord + Clone + std::fmt::Debug> {
    what: &'static str,
    tasks: BTreeMap<K, Follower>,
    restarts: IntCounter,
}

impl<K: Ord + Clone + std::fmt::Debug> Followers<K> {
    /// No followers yet; `restarts` counts every restart. `what` names them in logs.
    pub fn new(what: &'static str, restarts: IntCounter) -> Self {
        Followers { what, tasks: BTreeMap::new(), restarts }
    }

    /// Whether `key` has a follower (running or waiting to be started again).
    pub fn contains(&self, key: &K) -> bool {
        self.tasks.contains_key(key)
    }

    /// The keys followed.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.tasks.keys()
    }

    /// Number of keys followed.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether nothing is followed.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Starts following `key` with `task` (a follower it had is stopped).
    pub fn start(&mut self, key: K, task: impl Future<Output = ()> + Send + 'static) {
        let follower =
            Follower { handle: tokio::spawn(task), started: Instant::now(), failures: 0, retry_at: None };
        if let Some(old) = self.tasks.insert(key, follower) {
            old.handle.abort();
        }
    }

    /// Stops following `key`.
    pub fn stop(&mut self, key: &K) {
        if let Some(f) = self.tasks.remove(key) {
            f.handle.abort();
        }
    }

    /// Starts again, with `make`, the followers that ended and whose backoff has passed; notes
    /// the ones that just ended. Returns how many were started again.
    pub fn revive<F>(&mut self, now: Instant, mut make: impl FnMut(&K) -> F) -> usize
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut revived = 0;
        for (key, f) in &mut self.tasks {
            if !f.handle.is_finished() {
                continue;
            }
            let retry_at = match f.retry_at {
                Some(at) => at,
                None => {
                    let why = match (&mut f.handle).now_or_never() {
                        Some(Err(e)) if e.is_panic() => {
                            format!("it panicked: {}", panic_message(&e.into_panic()))
                        }
                        Some(Err(e)) => e.to_string(),
                        _ => "it returned".to_owned(),
                    };
                    f.failures = if now.saturating_duration_since(f.started) > MAX_BACKOFF {
                        1
                    } else {
                        f.failures + 1
                    };
                    let wait = backoff(f.failures);
                    warn!(what = self.what, key = ?key, "the follower stopped ({why}); starting it again in {wait:?}");
                    let at = now + wait;
                    f.retry_at = Some(at);
                    at
                }
            };
            if now >= retry_at {
                f.handle = tokio::spawn(make(key));
                f.started = now;
                f.retry_at = None;
                self.restarts.inc();
                revived += 1;
            }
        }
        revived
    }

    /// Stops every follower.
    pub fn stop_all(&mut self) {
        for (_, f) in std::mem::take(&mut self.tasks) {
            f.handle.abort();
        }
    }
}

impl<K: Ord + Clone + std::fmt::Debug> Drop for Followers<K> {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// What a panic said, when it said it with a string.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

/// The wait before the `failures`-th restart in a row.
fn backoff(failures: u32) -> Duration {
    INITIAL_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    /// Lets the spawned tasks run until they are finished.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    #[allow(clippy::panic)]
    async fn a_follower_that_panics_is_started_again_with_backoff_and_counted() {
        let restarts = IntCounter::new("restarts", "test").unwrap_or_else(|_| unreachable!());
        let mut followers = Followers::new("test", restarts.clone());
        let runs = Arc::new(AtomicUsize::new(0));
        let task = |runs: Arc<AtomicUsize>| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            panic!("lost the thread");
        };
        followers.start("vm-a".to_owned(), task(runs.clone()));
        let healthy = Arc::new(AtomicUsize::new(0));
        let steady = healthy.clone();
        followers.start("vm-b".to_owned(), async move {
            steady.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        });
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        let t0 = Instant::now();
        // Just died: noted, not started again before its backoff.
        assert_eq!(followers.revive(t0, |_| task(runs.clone())), 0);
        assert_eq!(followers.revive(t0 + Duration::from_millis(499), |_| task(runs.clone())), 0);
        assert_eq!(followers.revive(t0 + Duration::from_millis(500), |_| task(runs.clone())), 1);
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "started again");
        assert_eq!(restarts.get(), 1);
        // Died again at once: the wait doubles.
        let t1 = t0 + Duration::from_millis(600);
        assert_eq!(followers.revive(t1, |_| task(runs.clone())), 0);
        assert_eq!(followers.revive(t1 + Duration::from_millis(999), |_| task(runs.clone())), 0);
        assert_eq!(followers.revive(t1 + Duration::from_secs(1), |_| task(runs.clone())), 1);
        assert_eq!(restarts.get(), 2);
        // The healthy one was never touched; a stopped one is not started again.
        assert_eq!(healthy.load(Ordering::SeqCst), 1);
        followers.stop(&"vm-a".to_owned());
        settle().await;
        assert_eq!(followers.revive(t1 + Duration::from_secs(100), |_| task(runs.clone())), 0);
        assert_eq!(followers.len(), 1);
    }
}
