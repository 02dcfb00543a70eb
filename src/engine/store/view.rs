//! What readers of the store get: plain copies taken under the lock, turned into API documents
//! by [`crate::report::render`] outside it.

use jiff::Timestamp;

use crate::api::{CheckStatus, HealthCheckSpec, HealthCheckStatus, ReportedStatus, UserReport};
use crate::engine::remediation::ActionRecord;
use crate::engine::state::CheckState;
use crate::inventory::Instance;
use crate::model::CheckKey;

/// One instance as the store knows it.
#[derive(Clone, Debug)]
pub struct InstanceView {
    /// The instance as its inventory describes it.
    pub instance: Instance,
    /// When it was first seen (kept across restarts of the agent).
    pub first_seen: Timestamp,
    /// The System status check: the host under it and the instance's own runtime.
    pub system: Summary,
    /// The Instance status check: one detail per HealthCheck.
    pub instance_check: Summary,
    /// The Attached-volume status check.
    pub volumes: Summary,
    /// Every HealthCheck on it, by key.
    pub checks: Vec<ResultView>,
    /// Actions taken on it in all.
    pub restarts: u32,
    /// The latest of them, oldest first.
    pub recent: Vec<ActionRecord>,
    /// The owner's report on it, if any.
    pub report: Option<UserReport>,
    /// The owner's verdict in force now.
    pub reported: Option<ReportedStatus>,
}

/// A status check: the worst of its details.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The worst detail status.
    pub status: CheckStatus,
    /// Its parts.
    pub details: Vec<DetailView>,
}

/// One part of a status check.
#[derive(Clone, Debug, PartialEq)]
pub struct DetailView {
    /// Which part.
    pub name: String,
    /// Its status.
    pub status: CheckStatus,
    /// Since when it is impaired, while it is.
    pub impaired_since: Option<Timestamp>,
    /// What was seen.
    pub message: Option<String>,
}

/// One HealthCheck's state on one instance.
#[derive(Clone, Debug)]
pub struct ResultView {
    /// The HealthCheck.
    pub check: CheckKey,
    /// Its probe kind.
    pub probe: &'static str,
    /// The state machine's state.
    pub state: CheckState,
}

/// One HealthCheck with its aggregated status.
#[derive(Clone, Debug)]
pub struct CheckView {
    /// Which.
    pub key: CheckKey,
    /// The spec as last written (shared with the store's).
    pub spec: std::sync::Arc<HealthCheckSpec>,
    /// Its generation.
    pub generation: i64,
    /// Status aggregated over its targets here ([`crate::engine::aggregate`]).
    pub status: HealthCheckStatus,
}

/// What changed since a reader last asked ([`super::Store::changes`]).
#[derive(Debug, Default)]
pub struct Changes {
    /// Instances, by id; `None` means removed.
    pub instances: Vec<(String, Option<InstanceView>)>,
    /// HealthChecks; `None` means removed.
    pub checks: Vec<(CheckKey, Option<CheckView>)>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty() && self.checks.is_empty()
    }
}

/// Running and total instances of each kind, and what the running ones claim.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claims {
    /// CPUs claimed by running instances.
    pub cpus: f64,
    /// Memory claimed by running instances, MiB.
    pub memory_mb: u64,
    /// Running / total VMs.
    pub vms: (usize, usize),
    /// Running / total containers.
    pub containers: (usize, usize),
    /// Running / total instances of every kind.
    pub all: (usize, usize),
}

/// An instance's saved state from an earlier run, waiting for the instance to reappear.
#[derive(Clone, Debug)]
pub struct Restored {
    /// Its id.
    pub id: String,
    /// When it was first seen.
    pub first_seen: Option<Timestamp>,
    /// Actions taken in all.
    pub restarts: u32,
    /// The latest of them, oldest first.
    pub history: Vec<ActionRecord>,
    /// Check states by HealthCheck (`namespace/name`).
    pub checks: Vec<(String, CheckState)>,
}
