//! The agent's own health (`/v1/health`, `/healthz`) and readiness (`/readyz`).
//!
//! Health is answered from memory: components report problems as they find them, readers take
//! a snapshot. Readiness is owned by handles that must all be released: nobody can declare the
//! agent ready on behalf of a source that has not synced.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Problems reported by the agent's components.
#[derive(Debug, Default)]
pub struct Health {
    problems: RwLock<BTreeMap<&'static str, Vec<String>>>,
    fatal: AtomicBool,
    heartbeat_ms: AtomicU64,
}

/// A point-in-time view of the agent's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// No problem reported.
    pub healthy: bool,
    /// The problems, as `component: problem`.
    pub reasons: Vec<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Health {
    /// A healthy agent.
    pub fn new() -> Arc<Health> {
        let health = Health::default();
        health.beat();
        Arc::new(health)
    }

    /// Replaces the problems of `component` (empty: it is fine).
    pub fn set(&self, component: &'static str, problems: Vec<String>) {
        let mut map = self.problems.write().unwrap_or_else(|p| p.into_inner());
        if problems.is_empty() {
            map.remove(component);
        } else {
            map.insert(component, problems);
        }
    }

    /// Marks the agent as failed for good (a long-lived task ended).
    pub fn set_fatal(&self, component: &'static str, problem: String) {
        self.fatal.store(true, Ordering::SeqCst);
        self.set(component, vec![problem]);
    }

    /// Records that the runtime is making progress.
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether the agent is alive: nothing fatal, and the heartbeat is recent.
    pub fn alive(&self, max_silence: Duration) -> bool {
        let silent = now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
        !self.fatal.load(Ordering::SeqCst) && u128::from(silent) <= max_silence.as_millis()
    }

    /// The current view.
    pub fn snapshot(&self) -> HealthSnapshot {
        let map = self.problems.read().unwrap_or_else(|p| p.into_inner());
        let reasons: Vec<String> = map
            .iter()
            .flat_map(|(component, problems)| problems.iter().map(move |p| format!("{component}: {p}")))
            .collect();
        HealthSnapshot { healthy: reasons.is_empty(), reasons }
    }
}

/// Readiness: ready once every handle taken has been released.
#[derive(Debug, Default)]
pub struct Readiness {
    broken: AtomicBool,
    /// What the unreleased handles stand for (ready when empty), for `/readyz` to say.
    waiting: std::sync::Mutex<Vec<&'static str>>,
}

/// One thing the agent waits for before it is ready. Dropping it without
/// [`ReadyHandle::release`] keeps the agent unready.
#[derive(Debug)]
pub struct ReadyHandle {
    readiness: Arc<Readiness>,
    what: &'static str,
    released: bool,
}

impl Readiness {
    /// Nothing to wait for yet.
    pub fn new() -> Arc<Readiness> {
        Arc::new(Readiness::default())
    }

    /// Takes a handle that must be released before the agent is ready.
    pub fn handle(self: &Arc<Self>, what: &'static str) -> ReadyHandle {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).push(what);
        ReadyHandle { readiness: self.clone(), what, released: false }
    }

    /// What readiness still waits for.
    pub fn waiting_for(&self) -> Vec<&'static str> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether every handle was released and nothing broke since.
    pub fn is_ready(&self) -> bool {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
            && !self.broken.load(Ordering::SeqCst)
    }

    /// Marks the agent unready for good (a long-lived task ended).
    pub fn break_readiness(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }
}

impl ReadyHandle {
    /// What this handle stands for.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Done: this part of the agent is ready.
    pub fn release(mut self) {
        self.released = true;
        let mut waiting = self.readiness.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = waiting.iter().position(|w| *w == self.what) {
            waiting.remove(i);
        }
    }
}

impl Drop for ReadyHandle {
    fn drop(&mut self) {
        if !self.released {
            // Dropped without being released: whatever it stood for never became ready.
            self.readiness.broken.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_waits_for_every_handle() {
        let r = Readiness::new();
        assert!(r.is_ready(), "nothing to wait for");
        let a = r.handle("checks");
        let b = r.handle("inventory");
        assert!(!r.is_ready());
        a.release();
        assert!(!r.is_ready());
        assert_eq!(r.waiting_for(), ["inventory"]);
        b.release();
        assert!(r.is_ready());
        drop(r.handle("lost"));
        assert!(!r.is_ready(), "a handle dropped unreleased breaks readiness");
    }

    #[test]
    fn health_lists_problems_by_component() {
        let h = Health::new();
        assert!(h.snapshot().healthy);
        h.set("checks", vec!["a.yaml: document 1: bad".into()]);
        let s = h.snapshot();
        assert!(!s.healthy);
        assert_eq!(s.reasons, vec!["checks: a.yaml: document 1: bad".to_owned()]);
        h.set("checks", vec![]);
        assert!(h.snapshot().healthy);
        assert!(h.alive(Duration::from_secs(5)));
        h.set_fatal("scheduler", "stopped".into());
        assert!(!h.alive(Duration::from_secs(5)));
    }
}
