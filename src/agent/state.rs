//! What the HTTP handlers read.

use std::sync::Arc;

use prometheus::Registry;
use serde_json::Value;

use crate::engine::store::Store;
use crate::health::{Health, Readiness};
use crate::metrics::{AgentMetrics, ViewCollector};

/// What the handlers read.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The live view.
    pub store: Arc<Store>,
    /// The agent's health.
    pub health: Arc<Health>,
    /// Readiness.
    pub readiness: Arc<Readiness>,
    /// Metrics registry (the agent's own figures).
    pub registry: Registry,
    /// Per-target, per-instance and per-check metrics, from the live view.
    pub view: Arc<ViewCollector>,
    /// Metrics (process figures are refreshed at each scrape).
    pub metrics: AgentMetrics,
    /// The effective configuration, as served.
    pub config: Arc<Value>,
    /// The Docker runtime, when this agent has one.
    pub docker: Option<crate::docker::DockerRuntime>,
    /// The QEMU runtime (its per-VM figures are rendered at each scrape).
    pub qemu: crate::qemu::QemuRuntime,
    /// The last events, and their live readers.
    pub events: std::sync::Arc<super::events::EventLog>,
}
