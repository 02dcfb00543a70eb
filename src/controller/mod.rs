//! The controller (`vigil controller`, leader-elected): reads every HealthCheck and every
//! InstanceStatus in the cluster and writes each HealthCheck's status across all nodes — the
//! validation (`Invalid` naming the field), the counts, the bounded unhealthy list, `Ready` and
//! `Degraded`, `observedGeneration`, and `remediationAllowed` from `maxUnhealthy` over the whole
//! fleet (the agents act only while it is true). The status is the engine's pure aggregation
//! ([`crate::engine::aggregate`]) and is written only when it changes, only while this replica
//! holds the leader Lease, with exponential backoff per object after an error.

pub mod evict;
pub mod gc;
pub mod nodes;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use futures_util::future::select;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, HealthCheck, HealthCheckStatus, InstanceStatus};
use crate::cluster::{CONTROLLER_MANAGER, ClusterError, Objects, watch_message};
use crate::engine::aggregate::{self, CheckFacts, TargetResult};
use crate::health::{Health, Readiness};
use crate::http::{self, ServerConfig};
use crate::model::CheckKey;
use crate::report::apiserver::error_message;
use crate::source::{Catalog, Loaded};

/// Name of the controller's leader Lease.
pub const LEADER_LEASE: &str = "vigil-controller";
/// Changes that come within this much of each other are reconciled together.
const SETTLE: Duration = Duration::from_millis(200);
/// Longest backoff of one object after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The controller's effective configuration.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerConfig {
    /// Kubeconfig file (`None`: inferred).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// HTTP listener (health, readiness, metrics).
    pub listen: SocketAddr,
    /// Namespace of the leader Lease.
    pub namespace: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// How long the leader Lease holds without renewal, seconds.
    pub lease_duration_seconds: u64,
    /// How long an agent's Lease may go unrenewed before its node's instances are impaired,
    /// seconds.
    pub node_grace_seconds: f64,
    /// At most one `evictPod` eviction per this interval across the fleet.
    pub eviction_interval_seconds: f64,
    /// InstanceStatus of a node without a Node object are deleted once its agent has been silent
    /// this long.
    pub gc_after_seconds: f64,
}

impl ControllerConfig {
    /// The configuration the arguments describe.
    pub fn from_args(args: crate::cli::ControllerArgs) -> ControllerConfig {
        let crate::cli::ControllerArgs {
            kubeconfig,
            listen,
            namespace,
            identity,
            lease_duration,
            node_grace,
            eviction_interval,
            gc_after,
        } = args;
        let identity = identity.unwrap_or_else(|| {
            let host =
                crate::inventory::host::figures().map(|f| f.hostname).unwrap_or_else(|_| "vigil".to_owned());
            format!("{host}-{}", std::process::id())
        });
        ControllerConfig {
            kubeconfig,
            listen,
            namespace,
            identity,
            lease_duration_seconds: lease_duration.as_secs().max(2),
            node_grace_seconds: node_grace.as_secs_f64(),
            eviction_interval_seconds: eviction_interval.as_secs_f64(),
            gc_after_seconds: gc_after.as_secs_f64(),
        }
    }
}

/// Why the controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The API server cannot be used.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The leader Lease cannot be used.
    #[error("cannot set up the leader Lease")]
    Lease(#[source] kube_lease_manager::LeaseManagerError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("cannot register metrics")]
    Metrics(#[source] prometheus::Error),
    /// The HTTP server failed.
    #[error("the HTTP server stopped")]
    Serve(#[source] std::io::Error),
}

/// The controller's own figures.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    /// Reconcile rounds by result.
    pub reconciles: IntCounterVec,
    /// Status writes by result.
    pub status_writes: IntCounterVec,
    /// Errors by bounded category.
    pub errors: IntCounterVec,
    /// 1 while this replica leads.
    pub leader: IntGauge,
    /// HealthChecks waiting for a retry after an error.
    pub backing_off: IntGauge,
    /// `evictPod` attempts, by outcome.
    pub evictions: IntCounterVec,
    /// InstanceStatus deleted because their node is gone, by result.
    pub collected: IntCounterVec,
    /// Agents by state (`live`, `silent`), as the leader sees their Leases.
    pub agents: IntGaugeVec,
    /// 1 for each node whose agent Lease expired (no series for live nodes).
    pub silent_agent: IntGaugeVec,
    /// Targets of each HealthCheck by state, as the leader aggregated them.
    pub targets: IntGaugeVec,
    /// Whether remediation is allowed, for each HealthCheck with an action.
    pub remediation_allowed: IntGaugeVec,
}

impl ControllerMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> Result<ControllerMetrics, prometheus::Error> {
        let m = ControllerMetrics {
            reconciles: IntCounterVec::new(
                Opts::new(
                    "vigil_controller_reconciles_total",
                    "Reconcile rounds over every HealthCheck, by result.",
                ),
                &["result"],
            )?,
            status_writes: IntCounterVec::new(
                Opts::new("vigil_controller_status_writes_total", "HealthCheck status writes, by result."),
                &["result"],
            )?,
            errors: IntCounterVec::new(
                Opts::new("vigil_controller_errors_total", "Errors, by category (watch, write)."),
                &["category"],
            )?,
            leader: IntGauge::new("vigil_controller_leader", "1 while this replica holds the leader Lease.")?,
            backing_off: IntGauge::new(
                "vigil_controller_backoff_objects",
                "HealthChecks whose status write failed and waits for its retry.",
            )?,
            evictions: IntCounterVec::new(
                Opts::new(
                    "vigil_controller_evictions_total",
                    "evictPod attempts through the Eviction API, by outcome (evicted, refused: a disruption budget said no, failed).",
                ),
                &["outcome"],
            )?,
            collected: IntCounterVec::new(
                Opts::new(
                    "vigil_controller_collected_total",
                    "InstanceStatus deleted because their node is gone, by result.",
                ),
                &["result"],
            )?,
            agents: IntGaugeVec::new(
                Opts::new(
                    "vigil_controller_agents",
                    "Agents by state: live (Lease renewed within --node-grace) or silent; set by the leader.",
                ),
                &["state"],
            )?,
            silent_agent: IntGaugeVec::new(
                Opts::new(
                    "vigil_controller_silent_agent",
                    "1 for each node whose agent Lease expired (the System check of its instances is impaired); no series for live nodes; set by the leader.",
                ),
                &["node"],
            )?,
            targets: IntGaugeVec::new(
                Opts::new(
                    "vigil_healthcheck_targets",
                    "Targets of a HealthCheck across the fleet, by state (healthy, unhealthy, unknown); set by the leader.",
                ),
                &["namespace", "healthcheck", "state"],
            )?,
            remediation_allowed: IntGaugeVec::new(
                Opts::new(
                    "vigil_healthcheck_remediation_allowed",
                    "1 while a HealthCheck's action may run, 0 while more targets are unhealthy than its maxUnhealthy allows; only HealthChecks with an action; set by the leader.",
                ),
                &["namespace", "healthcheck"],
            )?,
        };
        // Every known label value from the start, so that a rate or an alert over them has a
        // series before the first event.
        for outcome in ["evicted", "refused", "failed"] {
            m.evictions.with_label_values(&[outcome]);
        }
        for result in ["ok", "error"] {
            m.status_writes.with_label_values(&[result]);
            m.collected.with_label_values(&[result]);
        }
        for category in ["watch", "write"] {
            m.errors.with_label_values(&[category]);
        }
        registry.register(Box::new(m.reconciles.clone()))?;
        registry.register(Box::new(m.status_writes.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.leader.clone()))?;
        registry.register(Box::new(m.backing_off.clone()))?;
        registry.register(Box::new(m.evictions.clone()))?;
        registry.register(Box::new(m.collected.clone()))?;
        registry.register(Box::new(m.agents.clone()))?;
        registry.register(Box::new(m.silent_agent.clone()))?;
        registry.register(Box::new(m.targets.clone()))?;
        registry.register(Box::new(m.remediation_allowed.clone()))?;
        Ok(m)
    }
}

/// What the HTTP handlers read.
#[derive(Clone, Debug)]
struct HttpState {
    health: Arc<Health>,
    readiness: Arc<Readiness>,
    registry: Registry,
}

/// Retries of one object.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    failures: u32,
    until: tokio::time::Instant,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    config: ControllerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControllerError> {
    let registry = Registry::new();
    let metrics = ControllerMetrics::register(&registry).map_err(ControllerError::Metrics)?;
    let health = Health::new();
    let readiness = Readiness::new();
    let checks_listed = readiness.handle("HealthChecks listed");
    let statuses_listed = readiness.handle("InstanceStatus listed");
    let client_config = crate::cluster::config(config.kubeconfig.as_deref()).await?;
    let client = kube::Client::try_from(client_config.clone()).map_err(ClusterError::Client)?;
    // Evictions are retried by the controller's own backoff: a 429 (a disruption budget says
    // no) must come back at once, not after the client's retries (up to minutes).
    let mut no_retry = client_config;
    no_retry.default_retry = false;
    let evicting = kube::Client::try_from(no_retry).map_err(ClusterError::Client)?;

    let lease = LeaseManagerBuilder::new(client.clone(), LEADER_LEASE)
        .with_namespace(config.namespace.clone())
        .with_identity(config.identity.clone())
        .with_duration(config.lease_duration_seconds)
        .with_grace((config.lease_duration_seconds / 3).max(1))
        .with_field_manager(CONTROLLER_MANAGER)
        .build()
        .await
        .map_err(ControllerError::Lease)?;
    let (mut leading, lease_task) = lease.watch().await;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ControllerError::Listen { addr: config.listen, source })?;
    info!(listen = %config.listen, identity = config.identity, "controller serving health and metrics");
    let cancel = CancellationToken::new();
    let state = HttpState { health: health.clone(), readiness: readiness.clone(), registry };
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(http::not_found)
        .with_state(state);
    let server = tokio::spawn(http::serve(
        listener,
        router,
        ServerConfig::default(),
        cancel.clone().cancelled_owned(),
    ));
    {
        let health = health.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => health.beat(),
                }
            }
        });
    }

    let resource = ApiResource::erase::<HealthCheck>(&());
    let mut checks: Objects<DynamicObject> =
        Objects::new(Api::all_with(client.clone(), &resource), watcher::Config::default());
    let mut statuses: Objects<InstanceStatus> =
        Objects::new(Api::all(client.clone()), watcher::Config::default());
    let agent_leases = watcher::Config::default().labels(api::labels::NODE);
    // The agents' Leases live beside the controller's own (one install, one namespace).
    let mut leases: Objects<Lease> =
        Objects::new(Api::namespaced(client.clone(), &config.namespace), agent_leases);
    // Which nodes exist, for garbage collection (metadata only: a Node's status is large).
    let mut node_objects: Objects<PartialObjectMeta<Node>> =
        Objects::new(Api::all(client.clone()), watcher::Config::default());
    let gc_after = Duration::from_secs_f64(config.gc_after_seconds.max(0.0));
    let grace = Duration::from_secs_f64(config.node_grace_seconds.max(1.0));
    let mut look_at_nodes = tokio::time::interval((grace / 4).max(Duration::from_secs(1)));
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "vigil.dev/controller".to_owned(), instance: Some(config.identity.clone()) },
    );
    let mut reconciler = Reconciler {
        client,
        evicting,
        live: None,
        evictions: evict::Evictions::new(Duration::from_secs_f64(config.eviction_interval_seconds)),
        recorder: recorder.clone(),
        catalog: Catalog::default(),
        written: HashMap::new(),
        backoff: HashMap::new(),
        metrics: metrics.clone(),
        published: Published::default(),
        health: health.clone(),
    };
    let (mut checks_listed, mut statuses_listed) = (Some(checks_listed), Some(statuses_listed));
    let work = async {
        loop {
            let retry_at = reconciler.wake_at();
            let mut dirty = tokio::select! {
                r = checks.changed() => reconciler.watched("HealthCheck", r),
                r = statuses.changed() => reconciler.watched("InstanceStatus", r),
                r = leases.changed() => {
                    reconciler.watched("Lease", r);
                    false
                }
                r = node_objects.changed() => {
                    reconciler.watched("Node", r);
                    false
                }
                _ = look_at_nodes.tick() => {
                    let mut silence_changed = false;
                    if leases.synced() && statuses.synced() && *leading.borrow() {
                        let before = reconciler.live.clone();
                        reconciler.mark_silent_nodes(leases.current(), statuses.current(), grace, &recorder).await;
                        // Which nodes may be acted on changed: evictions are decided again.
                        silence_changed = reconciler.live != before;
                        if node_objects.synced() {
                            let nodes = node_objects.current().values().filter_map(|n| n.metadata.name.clone()).collect();
                            reconciler.collect(statuses.current(), &nodes, leases.current(), gc_after).await;
                        }
                    }
                    silence_changed
                }
                r = leading.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let now = *leading.borrow_and_update();
                    metrics.leader.set(i64::from(now));
                    info!(leading = now, "leadership changed");
                    // A new leader writes whatever differs; a former one stops at once.
                    reconciler.written.clear();
                    if !now {
                        reconciler.unpublish();
                    }
                    now
                }
                () = async {
                    match retry_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if checks.synced()
                && let Some(h) = checks_listed.take()
            {
                h.release();
            }
            if statuses.synced()
                && let Some(h) = statuses_listed.take()
            {
                h.release();
            }
            // Let a burst settle into one round.
            while let Ok(changed) = tokio::time::timeout(SETTLE, async {
                tokio::select! {
                    r = checks.changed() => reconciler.watched("HealthCheck", r),
                    r = statuses.changed() => reconciler.watched("InstanceStatus", r),
                }
            })
            .await
            {
                dirty |= changed;
            }
            if dirty && checks.synced() && statuses.synced() {
                let lead = *leading.borrow();
                reconciler.round(checks.current(), statuses.current(), lead).await;
            }
        }
    };
    tokio::pin!(shutdown);
    tokio::pin!(work);
    select(shutdown, work).await;
    cancel.cancel();
    lease_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

struct Reconciler {
    client: Client,
    /// The client for evictions (without the client's own retries of 429).
    evicting: Client,
    /// `evictPod` across the fleet.
    evictions: evict::Evictions,
    /// Nodes whose agent renews its Lease: only on their word is anyone evicted (a silent
    /// node's InstanceStatus, or one of a node without a Lease here, may be stale). `None` until
    /// the agents' Leases are listed.
    live: Option<std::collections::HashSet<String>>,
    recorder: Recorder,
    catalog: Catalog,
    /// The status written per HealthCheck until the watch brings it back, so that a round in
    /// between does not write it again.
    written: HashMap<CheckKey, serde_json::Value>,
    backoff: HashMap<CheckKey, Backoff>,
    metrics: ControllerMetrics,
    /// HealthChecks and silent nodes whose fleet gauges are published, so that the series of
    /// one that went away are deleted.
    published: Published,
    health: Arc<Health>,
}

#[derive(Debug, Default)]
struct Published {
    checks: std::collections::HashSet<CheckKey>,
    silent: std::collections::BTreeSet<String>,
}

impl Reconciler {
    /// The leader's fleet gauges of the HealthChecks: targets by state, remediation allowed.
    fn publish_checks(&mut self, statuses: &[(CheckKey, HealthCheckStatus)]) {
        let m = &self.metrics;
        let now: std::collections::HashSet<CheckKey> = statuses.iter().map(|(k, _)| k.clone()).collect();
        for gone in self.published.checks.difference(&now) {
            for state in ["healthy", "unhealthy", "unknown"] {
                let _ = m.targets.remove_label_values(&[&gone.namespace, &gone.name, state]);
            }
            let _ = m.remediation_allowed.remove_label_values(&[&gone.namespace, &gone.name]);
        }
        for (key, status) in statuses {
            let (ns, name) = (key.namespace.as_str(), key.name.as_str());
            m.targets.with_label_values(&[ns, name, "healthy"]).set(i64::from(status.healthy));
            m.targets.with_label_values(&[ns, name, "unhealthy"]).set(i64::from(status.unhealthy));
            m.targets.with_label_values(&[ns, name, "unknown"]).set(i64::from(status.unknown));
            match status.remediation_allowed {
                Some(allowed) => m.remediation_allowed.with_label_values(&[ns, name]).set(i64::from(allowed)),
                None => {
                    let _ = m.remediation_allowed.remove_label_values(&[ns, name]);
                }
            }
        }
        self.published.checks = now;
    }

    /// The leader's gauges of the agents.
    fn publish_agents(&mut self, silent: &BTreeMap<String, jiff::Timestamp>, live: usize) {
        let m = &self.metrics;
        m.agents.with_label_values(&["live"]).set(i64::try_from(live).unwrap_or(i64::MAX));
        m.agents.with_label_values(&["silent"]).set(i64::try_from(silent.len()).unwrap_or(i64::MAX));
        for gone in self.published.silent.iter().filter(|n| !silent.contains_key(*n)) {
            let _ = m.silent_agent.remove_label_values(&[gone]);
        }
        for node in silent.keys() {
            m.silent_agent.with_label_values(&[node]).set(1);
        }
        self.published.silent = silent.keys().cloned().collect();
    }

    /// A replica that does not lead publishes no fleet gauges (the leader's are the truth).
    fn unpublish(&mut self) {
        self.publish_checks(&[]);
        self.publish_agents(&BTreeMap::new(), 0);
        let _ = self.metrics.agents.remove_label_values(&["live"]);
        let _ = self.metrics.agents.remove_label_values(&["silent"]);
    }

    /// When the next round is due without a change: a write to retry, an eviction waiting.
    fn wake_at(&self) -> Option<tokio::time::Instant> {
        let retry = self.backoff.values().map(|b| b.until).min();
        let eviction = self.evictions.wake_at().map(|at| {
            let wait = jiff::Timestamp::now().duration_until(at);
            tokio::time::Instant::now() + Duration::try_from(wait).unwrap_or(Duration::ZERO)
        });
        retry.into_iter().chain(eviction).min()
    }

    /// Evicts at most one pod of an `evictPod` HealthCheck (the fleet-wide pace), with Events.
    async fn evict(
        &mut self,
        infos: &[crate::engine::store::CheckInfo],
        allowed: &HashMap<CheckKey, bool>,
        statuses: &BTreeMap<String, InstanceStatus>,
    ) {
        let defs: HashMap<CheckKey, &crate::model::CheckDef> =
            infos.iter().filter_map(|i| i.def.as_deref()).map(|d| (d.key.clone(), d)).collect();
        self.evictions.retain(&infos.iter().map(|i| i.key.clone()).collect());
        // Only on current word: not before the agents' Leases are known, and only a live node's.
        let Some(live) = &self.live else { return };
        let mut candidates = evict::candidates(defs.values().copied(), allowed, statuses);
        candidates.retain(|c| live.contains(&c.node));
        let now = jiff::Timestamp::now();
        let Some(chosen) = self.evictions.due(candidates, &defs, now) else { return };
        tracing::debug!(check = %chosen.check, pod = chosen.pod, "evicting");
        let (outcome, message) = evict::evict(&self.evicting, &chosen).await;
        self.evictions.record(&chosen, outcome, now);
        self.metrics.evictions.with_label_values(&[outcome.as_str()]).inc();
        let (type_, reason) = match outcome {
            evict::Outcome::Evicted => (EventType::Normal, "PodEvicted"),
            evict::Outcome::Refused => (EventType::Warning, "EvictionRefused"),
            evict::Outcome::Failed => (EventType::Warning, "EvictionFailed"),
        };
        match outcome {
            evict::Outcome::Evicted => info!(check = %chosen.check, "{message}"),
            _ => warn!(check = %chosen.check, "{message}"),
        }
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(format!("{message} (HealthCheck {})", chosen.check)),
            action: "EvictPod".to_owned(),
            secondary: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(chosen.pod.clone()),
                namespace: Some(chosen.namespace.clone()),
                uid: chosen.uid.clone(),
                ..ObjectReference::default()
            }),
        };
        let regarding = ObjectReference {
            api_version: Some(api::API_VERSION.to_owned()),
            kind: Some("InstanceStatus".to_owned()),
            name: Some(chosen.status_name.clone()),
            namespace: Some(chosen.namespace.clone()),
            uid: chosen.status_uid.clone(),
            ..ObjectReference::default()
        };
        if let Err(e) = self.recorder.publish(&event, &regarding).await {
            warn!("cannot record an Event: {}", error_message(&e));
        }
    }

    /// Marks the System check of every instance of a silent node impaired (once).
    async fn mark_silent_nodes(
        &mut self,
        leases: &BTreeMap<String, Lease>,
        statuses: &BTreeMap<String, InstanceStatus>,
        grace: Duration,
        recorder: &Recorder,
    ) {
        let now = jiff::Timestamp::now();
        let silent = nodes::silent_nodes(leases.values(), grace, now);
        let live = nodes::live_nodes(leases.values(), grace, now);
        self.publish_agents(&silent, live.len());
        self.live = Some(live);
        if silent.is_empty() {
            return;
        }
        for doc in statuses.values() {
            let node = &doc.spec.instance.node;
            let Some(since) = silent.get(node) else { continue };
            let Some(current) = &doc.status else { continue };
            let Some(system) = nodes::unreachable(&current.system_status, node, *since) else { continue };
            let (Some(ns), Some(name)) = (&doc.metadata.namespace, &doc.metadata.name) else { continue };
            let api: Api<InstanceStatus> = Api::namespaced(self.client.clone(), ns);
            let body = json!({"apiVersion": api::API_VERSION, "kind": "InstanceStatus", "metadata": {"name": name},
                              "status": {"systemStatus": system}});
            match api
                .patch_status(name, &PatchParams::apply(CONTROLLER_MANAGER).force(), &Patch::Apply(&body))
                .await
            {
                Ok(_) => {
                    self.metrics.status_writes.with_label_values(&["ok"]).inc();
                    warn!(node, instance = %name, "node silent: System check impaired");
                    let event = Event {
                        type_: EventType::Warning,
                        reason: "NodeUnreachable".to_owned(),
                        note: Some(format!(
                            "the agent of node {node} has not renewed its Lease since {since}"
                        )),
                        action: "MarkUnreachable".to_owned(),
                        secondary: None,
                    };
                    let regarding = ObjectReference {
                        api_version: Some(api::API_VERSION.to_owned()),
                        kind: Some("InstanceStatus".to_owned()),
                        name: Some(name.clone()),
                        namespace: Some(ns.clone()),
                        ..ObjectReference::default()
                    };
                    if let Err(e) = recorder.publish(&event, &regarding).await {
                        warn!("cannot record an Event: {}", error_message(&e));
                    }
                }
                Err(e) => {
                    self.metrics.status_writes.with_label_values(&["error"]).inc();
                    self.metrics.errors.with_label_values(&["write"]).inc();
                    warn!(node, instance = %name, "cannot mark the instance unreachable: {}", error_message(&e));
                }
            }
        }
    }

    /// Deletes the InstanceStatus of nodes that are gone ([`gc::garbage`]).
    async fn collect(
        &self,
        statuses: &BTreeMap<String, InstanceStatus>,
        nodes: &std::collections::HashSet<String>,
        leases: &BTreeMap<String, Lease>,
        after: Duration,
    ) {
        let garbage = gc::garbage(statuses.values(), nodes, leases.values(), after, jiff::Timestamp::now());
        for (ns, name) in garbage {
            let api: Api<InstanceStatus> = Api::namespaced(self.client.clone(), &ns);
            match api.delete(&name, &Default::default()).await {
                Ok(_) => {
                    self.metrics.collected.with_label_values(&["ok"]).inc();
                    info!(
                        namespace = ns,
                        instance = name,
                        "deleted the InstanceStatus of a node that is gone"
                    );
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    self.metrics.collected.with_label_values(&["error"]).inc();
                    self.metrics.errors.with_label_values(&["write"]).inc();
                    warn!(
                        namespace = ns,
                        instance = name,
                        "cannot delete the InstanceStatus: {}",
                        error_message(&e)
                    );
                }
            }
        }
    }

    /// Notes a watch result; `true` when something changed.
    fn watched(&self, what: &str, result: Result<(), watcher::Error>) -> bool {
        match result {
            Ok(()) => {
                self.health.set("watch", Vec::new());
                true
            }
            Err(e) => {
                self.metrics.errors.with_label_values(&["watch"]).inc();
                let problem = format!("watching {what}: {}", watch_message(&e));
                warn!("{problem}");
                self.health.set("watch", vec![problem]);
                false
            }
        }
    }

    /// Computes every HealthCheck's status and writes those that changed (when leading).
    async fn round(
        &mut self,
        checks: &BTreeMap<String, DynamicObject>,
        statuses: &BTreeMap<String, InstanceStatus>,
        lead: bool,
    ) {
        let now = jiff::Timestamp::now();
        let mut loaded = Vec::new();
        let mut undecodable = Vec::new();
        let mut current: HashMap<CheckKey, Option<HealthCheckStatus>> = HashMap::new();
        for object in checks.values() {
            let key = CheckKey::new(
                object.metadata.namespace.clone().unwrap_or_default(),
                object.metadata.name.clone().unwrap_or_default(),
            );
            let status = object.data.get("status").and_then(|s| serde_json::from_value(s.clone()).ok());
            current.insert(key.clone(), status);
            match crate::cluster::decode_health_check(object) {
                Ok(hc) => loaded.push(Loaded::new(hc, format!("HealthCheck {key}"))),
                Err(e) => undecodable.push((key, object.metadata.generation.unwrap_or(1), e)),
            }
        }
        let infos = self.catalog.update(loaded, true);
        // Every target's result, by HealthCheck, from every node's InstanceStatus.
        let mut results: HashMap<String, Vec<TargetResult<'_>>> = HashMap::new();
        for doc in statuses.values() {
            let Some(status) = &doc.status else { continue };
            let i = &doc.spec.instance;
            for c in &status.checks {
                results.entry(c.health_check.clone()).or_default().push(TargetResult {
                    id: &i.id,
                    kind: i.kind,
                    node: &i.node,
                    status: c.status,
                    impaired_since: c.impaired_since.as_ref().map(|t| t.0),
                    message: c.message.as_deref(),
                });
            }
        }
        let mut wanted: Vec<(CheckKey, HealthCheckStatus)> = Vec::new();
        for info in &infos {
            let previous =
                current.get(&info.key).cloned().flatten().map(|s| s.conditions).unwrap_or_default();
            let facts = CheckFacts {
                generation: info.generation,
                invalid: info.invalid.as_deref(),
                running: info.def.as_deref(),
                note: None,
            };
            let targets = results.remove(&info.key.to_string()).unwrap_or_default();
            wanted.push((info.key.clone(), aggregate::health_check_status(&facts, targets, &previous, now)));
        }
        for (key, generation, error) in undecodable {
            let previous = current.get(&key).cloned().flatten().map(|s| s.conditions).unwrap_or_default();
            let facts = CheckFacts { generation, invalid: Some(&error), running: None, note: None };
            wanted.push((key, aggregate::health_check_status(&facts, Vec::new(), &previous, now)));
        }
        self.metrics.reconciles.with_label_values(&["ok"]).inc();
        if !lead {
            // A replica that does not lead writes nothing: no retry or eviction to come back for
            // (a retry due in the past would wake the loop at once, again and again).
            self.evictions.rest();
            self.backoff.clear();
            self.metrics.backing_off.set(0);
            self.unpublish();
            return;
        }
        self.publish_checks(&wanted);
        let allowed: HashMap<CheckKey, bool> =
            wanted.iter().map(|(k, s)| (k.clone(), s.remediation_allowed.unwrap_or(false))).collect();
        let tnow = tokio::time::Instant::now();
        for (key, status) in wanted {
            let value = serde_json::to_value(&status).unwrap_or_default();
            let on_server = current.get(&key).cloned().flatten().and_then(|s| serde_json::to_value(s).ok());
            if on_server.as_ref() == Some(&value) {
                // Confirmed by the watch: from now on, what the server holds is the reference.
                self.written.remove(&key);
                continue;
            }
            if self.written.get(&key) == Some(&value) {
                // Written, and the watch has not brought it back yet.
                continue;
            }
            if self.backoff.get(&key).is_some_and(|b| b.until > tnow) {
                continue;
            }
            let api: Api<HealthCheck> = Api::namespaced(self.client.clone(), &key.namespace);
            let body = json!({"apiVersion": api::API_VERSION, "kind": "HealthCheck", "metadata": {"name": key.name}, "status": status});
            match api
                .patch_status(
                    &key.name,
                    &PatchParams::apply(CONTROLLER_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
            {
                Ok(_) => {
                    self.metrics.status_writes.with_label_values(&["ok"]).inc();
                    self.backoff.remove(&key);
                    self.written.insert(key, value);
                }
                Err(e) => {
                    self.metrics.status_writes.with_label_values(&["error"]).inc();
                    self.metrics.errors.with_label_values(&["write"]).inc();
                    let failures = self.backoff.get(&key).map_or(1, |b| b.failures + 1);
                    let wait =
                        Duration::from_millis(500).saturating_mul(1 << failures.min(10)).min(MAX_BACKOFF);
                    warn!(check = %key, failures, retry_in = ?wait, "cannot write the status: {}", error_message(&e));
                    self.backoff.insert(key, Backoff { failures, until: tnow + wait });
                }
            }
        }
        self.backoff.retain(|k, _| current.contains_key(k));
        self.metrics.backing_off.set(i64::try_from(self.backoff.len()).unwrap_or(i64::MAX));
        self.evict(&infos, &allowed, statuses).await;
    }
}

async fn healthz(State(s): State<HttpState>) -> Response {
    http::liveness(&s.health, Duration::from_secs(30))
}

async fn readyz(State(s): State<HttpState>) -> Response {
    http::readiness(&s.readiness)
}

async fn metrics_text(State(s): State<HttpState>) -> Response {
    match crate::metrics::encode(&s.registry) {
        Ok(text) => http::prometheus_text(text),
        Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}")),
    }
}
