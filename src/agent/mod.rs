//! The agent: sources and inventory in, probes scheduled, status kept and reported.
//!
//! Long-lived tasks run in one `JoinSet`. If any ends before shutdown, the agent logs why, turns
//! unready and unhealthy, and exits non-zero: a silently dead reporter must not look alive.

mod access;
pub mod api;
pub(crate) mod containers;
pub mod events;
mod lease;
pub mod nats;
mod state;

use lease::LeaseConfig;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::action::{ExecAction, Executors};
use crate::cli::{AgentArgs, KubernetesArgs, StandaloneArgs};
use crate::docker::{DockerRuntime, RestartContainer, StatsConfig};
use crate::engine::aggregate::ControllerVerdicts;
use crate::engine::clock::SystemClock;
use crate::engine::planner::{self, NodeInfo, Sources};
use crate::engine::scheduler::{Scheduler, SchedulerConfig};
use crate::engine::store::Store;
use crate::health::{Health, Readiness, ReadyHandle};
use crate::http::{self, AccessPolicy, ServerConfig};
use crate::inventory::host::{self, PressureThresholds};
use crate::inventory::pods::PodInventory;
use crate::inventory::{HostInventory, Inventory};
use crate::metrics::{AgentMetrics, ViewCollector};
use crate::probe::Prober;
use crate::qemu::{QemuConfig, QemuRuntime, RestartVm};
use crate::report::apiserver::{self, ApiWriter};
use crate::report::statedir::{Reporter, StateDir, StateDirError};
use crate::source::api::ApiSource;
use crate::source::folder::{FolderError, FolderSource};
use crate::source::{Catalog, CheckSource, Snapshot, Update};

/// Where checks come from and where status goes.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "mode", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Mode {
    /// No cluster: checks from a folder, status into a state folder.
    Standalone {
        /// HealthCheck folder.
        checks_dir: PathBuf,
        /// State folder.
        state_dir: PathBuf,
    },
    /// In a cluster: HealthChecks from the API server, InstanceStatus objects and a Lease into it.
    Kubernetes {
        /// Kubeconfig file (`None`: inferred).
        kubeconfig: Option<PathBuf>,
        /// Namespaces whose HealthChecks run here (empty: all).
        namespaces: Vec<String>,
        /// How long the controller's verdict holds through an outage, seconds.
        remediation_staleness_seconds: f64,
        /// Coalescing window of InstanceStatus writes, seconds.
        write_coalesce_seconds: f64,
        /// Lease renewal period, seconds.
        lease_renew_seconds: f64,
        /// Lease duration, seconds.
        lease_duration_seconds: f64,
    },
}

/// The agent's effective configuration (served by `/v1/host/config`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// Where checks come from and where status goes.
    #[serde(flatten)]
    pub mode: Mode,
    /// HTTP listener.
    pub listen: SocketAddr,
    /// This node.
    pub node_name: String,
    /// Its labels.
    pub node_labels: std::collections::BTreeMap<String, String>,
    /// Namespace of the agent's own documents.
    pub namespace: String,
    /// Scheduler limits.
    #[serde(flatten)]
    pub scheduler: SchedulerLimits,
    /// Host assessment period, seconds.
    pub host_interval_seconds: f64,
    /// Deferred-write period, seconds.
    pub status_refresh_seconds: f64,
    /// Folder rescan period, seconds.
    pub rescan_interval_seconds: f64,
    /// How long start-up waits for each inventory source's first listing, seconds.
    pub inventory_sync_timeout_seconds: f64,
    /// Host pressure thresholds.
    pub pressure: PressureThresholds,
    /// Where the host's root filesystem is seen (`/`, or the host's `/` mounted into a container).
    pub host_root: PathBuf,
    /// The `smartctl` program.
    pub smartctl: PathBuf,
    /// Where events are POSTed, if anywhere.
    #[serde(serialize_with = "uri_opt")]
    pub events_webhook: Option<::http::Uri>,
    /// Events waiting for the webhook at most.
    pub events_webhook_queue: usize,
    /// The NATS server, if any.
    pub nats_url: Option<String>,
    /// The first token of the NATS health subjects.
    pub nats_prefix: String,
    /// How often the metrics snapshot goes to NATS, seconds.
    pub nats_metrics_interval_seconds: f64,
    /// How often the disks are asked for their SMART health, seconds.
    pub smart_interval_seconds: f64,
    /// Which per-target and per-HealthCheck series `/metrics` has.
    pub metrics_detail: crate::metrics::MetricsDetail,
    /// Token file for sensitive routes (its content is never served).
    pub api_token_file: Option<PathBuf>,
    /// HTTP server limits.
    pub server: ServerConfig,
    /// Docker: the socket, or `None` without a Docker runtime.
    pub docker_socket: Option<String>,
    /// Container stats sampling period, seconds.
    pub docker_stats_interval_seconds: f64,
    /// Stop timeout of the `restartContainer` action, seconds.
    pub container_stop_timeout_seconds: u64,
    /// QEMU VMs: where they are looked for, how they are restarted.
    pub qemu: QemuConfig,
    /// vigil's version.
    pub version: &'static str,
}

/// Scheduler limits, as served.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerLimits {
    /// Probes at once.
    pub max_concurrent_probes: usize,
    /// Exec probes at once.
    pub max_concurrent_exec: usize,
    /// Threads running probes.
    pub probe_threads: usize,
}

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The token file could not be read.
    #[error("cannot read the API token file {path}")]
    ReadToken {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state folder cannot be used.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// The checks folder cannot be read.
    #[error(transparent)]
    Checks(#[from] FolderError),
    /// The reports folder cannot be made.
    #[error("cannot make the reports folder {dir}")]
    ReportsFolder {
        /// The folder.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The probe threads could not be started.
    #[error("cannot start the probe threads")]
    ProbeThreads(#[source] std::io::Error),
    /// The first assessment of the host did not finish (it panicked).
    #[error("the first host assessment failed: {0}")]
    HostMonitor(String),
    /// The Docker runtime could not be set up.
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
    /// Metrics could not be registered.
    #[error("cannot register metrics")]
    Metrics(#[source] prometheus::Error),
    /// Neither mode was chosen.
    #[error("choose a mode: --checks-dir and --state-dir (standalone), or --kubernetes")]
    Mode,
    /// The API server cannot be used.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A long-lived task ended before shutdown.
    #[error("{task} stopped unexpectedly: {reason}")]
    TaskEnded {
        /// Which task.
        task: &'static str,
        /// Why.
        reason: String,
    },
}

impl AgentConfig {
    /// The configuration the arguments describe.
    pub fn from_args(args: AgentArgs) -> Result<AgentConfig, AgentError> {
        let AgentArgs {
            standalone: StandaloneArgs { checks_dir, state_dir },
            kubernetes:
                KubernetesArgs {
                    kubernetes,
                    kubeconfig,
                    namespaces,
                    remediation_staleness,
                    write_coalesce,
                    lease_renew,
                    lease_duration,
                },
            listen,
            node_name,
            node_labels,
            agent_namespace: namespace,
            max_concurrent_probes,
            max_concurrent_exec,
            probe_threads,
            host_interval,
            status_refresh,
            rescan_interval,
            inventory_sync_timeout,
            memory_pressure_mb,
            disk_pressure_percent,
            host_root,
            smartctl,
            smart_interval,
            metrics_detail,
            events_webhook,
            events_webhook_queue,
            nats_url,
            nats_prefix,
            nats_metrics_interval,
            api_token_file,
            docker_socket,
            no_docker,
            docker_stats_interval,
            container_stop_timeout,
            vm_socket_globs,
            vm_reset_timeout,
            vm_restart_command,
        } = args;
        let default_socket = "/var/run/docker.sock";
        let docker_socket = match (no_docker, docker_socket) {
            (true, _) => None,
            (false, Some(socket)) => Some(socket),
            // Docker's own variable (unix sockets only), then the default socket if it is there.
            (false, None) => std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| h.starts_with("unix://"))
                .or_else(|| std::path::Path::new(default_socket).exists().then(|| default_socket.to_owned())),
        };
        // In a pod, the downward API gives the node as NODE_NAME.
        let node_name =
            node_name.or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty())).unwrap_or_else(
                || host::figures().map(|f| f.hostname).unwrap_or_else(|_| "localhost".to_owned()),
            );
        let mode = match (kubernetes, checks_dir, state_dir) {
            (true, _, _) => Mode::Kubernetes {
                kubeconfig,
                namespaces,
                remediation_staleness_seconds: remediation_staleness.as_secs_f64(),
                write_coalesce_seconds: write_coalesce.as_secs_f64(),
                lease_renew_seconds: lease_renew.as_secs_f64(),
                lease_duration_seconds: lease_duration.as_secs_f64(),
            },
            (false, Some(checks_dir), Some(state_dir)) => Mode::Standalone { checks_dir, state_dir },
            _ => return Err(AgentError::Mode),
        };
        Ok(AgentConfig {
            mode,
            listen,
            node_name,
            node_labels: node_labels.into_iter().collect(),
            namespace,
            scheduler: SchedulerLimits {
                max_concurrent_probes,
                max_concurrent_exec,
                probe_threads: probe_threads.unwrap_or_else(|| host::online_cpus().clamp(1, 4)),
            },
            host_interval_seconds: host_interval.as_secs_f64(),
            status_refresh_seconds: status_refresh.as_secs_f64(),
            rescan_interval_seconds: rescan_interval.as_secs_f64(),
            inventory_sync_timeout_seconds: inventory_sync_timeout.as_secs_f64(),
            pressure: PressureThresholds {
                memory_available_bytes: memory_pressure_mb.saturating_mul(1024 * 1024),
                disk_available_percent: disk_pressure_percent,
                ..PressureThresholds::default()
            },
            host_root,
            smartctl,
            smart_interval_seconds: smart_interval.as_secs_f64(),
            metrics_detail,
            events_webhook,
            events_webhook_queue,
            nats_url,
            nats_prefix,
            nats_metrics_interval_seconds: nats_metrics_interval.as_secs_f64(),
            api_token_file,
            server: ServerConfig::default(),
            docker_socket,
            docker_stats_interval_seconds: docker_stats_interval.as_secs_f64(),
            container_stop_timeout_seconds: container_stop_timeout.as_secs(),
            qemu: QemuConfig {
                socket_globs: vm_socket_globs,
                rescan: Duration::from_secs(2),
                reset_timeout: vm_reset_timeout,
                restart_command: vm_restart_command,
            },
            version: env!("CARGO_PKG_VERSION"),
        })
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.001))
}

/// Turns sources into plans and plans into running workers.
struct Reconciler {
    catalog: Catalog,
    /// Whether the source numbers generations itself.
    keep_generation: bool,
    scheduler: Scheduler,
    store: Arc<Store>,
    node: NodeInfo,
    health: Arc<Health>,
    metrics: AgentMetrics,
    reported: BTreeSet<String>,
    inventories: Vec<Arc<dyn Inventory>>,
    /// Released at the first snapshot of the HealthCheck source.
    checks_loaded: Option<ReadyHandle>,
    startup: Option<StartupSync>,
    /// Inventories that had not listed their instances when start-up gave up waiting.
    late: Vec<&'static str>,
}

/// Start-up: the instances restored from the state folder are kept until every inventory has
/// listed what it has and the first snapshot of the HealthChecks is applied (endpoints are
/// instances because a check names them), or the deadline passed; only then are those that did
/// not reappear gone. Each inventory's readiness handle is released at its first listing.
struct StartupSync {
    deadline: tokio::time::Instant,
    /// Handles of the inventories (by index) that have not listed yet.
    waiting: Vec<(usize, ReadyHandle)>,
}

impl Reconciler {
    /// Releases what has synced; once everything has (or `timed_out`), finishes the restore.
    fn settle_startup(&mut self, timed_out: bool) {
        let synced: Vec<bool> = self.inventories.iter().map(|i| i.synced()).collect();
        let Some(startup) = self.startup.as_mut() else {
            if !self.late.is_empty() && synced.iter().all(|s| *s) {
                self.late.clear();
                self.health.set("startup", Vec::new());
            }
            return;
        };
        let (done, waiting): (Vec<_>, Vec<_>) = startup.waiting.drain(..).partition(|(i, _)| synced[*i]);
        startup.waiting = waiting;
        for (_, h) in done {
            h.release();
        }
        // Endpoints are instances because a HealthCheck names them: the restore also waits for
        // the first snapshot of the checks.
        if !(timed_out || (startup.waiting.is_empty() && self.checks_loaded.is_none())) {
            return;
        }
        let late: Vec<&'static str> = startup
            .waiting
            .drain(..)
            .map(|(_, h)| {
                let what = h.what();
                h.release();
                what
            })
            .collect();
        if !late.is_empty() {
            let problem = format!(
                "not done at start-up: {}; instances saved for it and not seen yet were forgotten",
                late.join(", ")
            );
            warn!("{problem}");
            self.health.set("startup", vec![problem]);
        }
        self.late = late;
        self.startup = None;
        self.store.finish_restore();
        info!("state restore finished");
    }

    fn apply(&mut self, snapshot: Snapshot) {
        let origins: std::collections::BTreeMap<_, _> =
            snapshot.objects.iter().map(|o| (o.key.clone(), o.origin.clone())).collect();
        let mut problems = snapshot.problems;
        let infos = self.catalog.update(snapshot.objects, self.keep_generation);
        for info in &infos {
            if let Some(invalid) = &info.invalid {
                let origin = origins.get(&info.key).map(String::as_str).unwrap_or("?");
                let running = if info.def.is_some() { "; the last valid spec keeps running" } else { "" };
                problems.push(format!("{origin} (HealthCheck {}): {invalid}{running}", info.key));
            }
        }
        let now: BTreeSet<String> = problems.iter().cloned().collect();
        for p in now.difference(&self.reported) {
            warn!("{p}");
        }
        self.reported = now;
        self.metrics.config_errors.set(i64::try_from(problems.len()).unwrap_or(i64::MAX));
        self.health.set("checks", problems);
        self.store.set_checks(infos);
        let first = self.checks_loaded.take();
        self.replan();
        if let Some(handle) = first {
            let (checks, instances) = self.store.sizes();
            info!(checks, instances, "checks loaded");
            handle.release();
        }
    }

    fn replan(&mut self) {
        let mut discovered = Vec::new();
        for inventory in &self.inventories {
            discovered.extend(inventory.instances(&self.node.name));
            self.health.set(inventory.name(), inventory.problems());
        }
        let sources = Sources::of(self.inventories.iter().map(|i| i.kind()));
        let plan = planner::plan(&self.node, &self.catalog.running(), &discovered, sources);
        self.scheduler.apply(plan);
        self.settle_startup(false);
    }
}

/// Resolves when one of `receivers` changes; a receiver whose sender is gone is dropped.
async fn any_changed(receivers: &mut Vec<watch::Receiver<u64>>) {
    loop {
        if receivers.is_empty() {
            return std::future::pending().await;
        }
        let (result, index, _) =
            futures_util::future::select_all(receivers.iter_mut().map(|rx| Box::pin(rx.changed()))).await;
        match result {
            Ok(()) => return,
            Err(_) => {
                receivers.swap_remove(index);
            }
        }
    }
}

/// Where this mode's checks come from and its status goes.
struct ModeParts {
    source: Box<dyn CheckSource>,
    /// The reporter: runs until the token is cancelled, then writes once more.
    reporter: Task,
    /// Inventories of this mode (the pods of the node).
    inventories: Vec<Arc<dyn Inventory>>,
    /// Other long-lived tasks of this mode, each ending at the token.
    tasks: Vec<(&'static str, Task)>,
    /// This node's labels, when something keeps them current (the Node object).
    node_labels: Option<watch::Receiver<std::collections::BTreeMap<String, String>>>,
    /// Who judges callers of the sensitive routes (the API server, in a cluster).
    reviewer: Option<Arc<dyn http::TokenReviewer>>,
}

/// A long-lived task, started with the shutdown token.
type Task = Box<dyn FnOnce(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Opens the state folder and the checks folder, and restores what an earlier run saved.
fn standalone(
    checks_dir: &std::path::Path,
    state_dir: &std::path::Path,
    config: &AgentConfig,
    store: &Arc<Store>,
    health: &Arc<Health>,
    metrics: &AgentMetrics,
) -> Result<ModeParts, AgentError> {
    let dir = StateDir::open(state_dir)?;
    let saved = dir.load_instances(&config.node_name);
    for p in &saved.problems {
        warn!("{p}");
    }
    info!(
        instances = saved.instances.len(),
        renamed = saved.renamed.len(),
        dir = %state_dir.display(),
        "state restored"
    );
    store.restore(saved.instances);
    let source = FolderSource::open(checks_dir, secs(config.rescan_interval_seconds))?;
    info!(dir = %checks_dir.display(), "checks folder read");
    let reports = crate::source::reports::ReportFolder::open(&state_dir.join("reports"))
        .map_err(|source| AgentError::ReportsFolder { dir: state_dir.join("reports"), source })?;
    let report_store = store.clone();
    let follow_reports: Task = Box::new(move |cancel| {
        Box::pin(crate::source::reports::follow_folder(reports, report_store, cancel))
    });
    let reporter = Reporter::new(
        dir,
        store.clone(),
        health.clone(),
        metrics.clone(),
        secs(config.status_refresh_seconds),
        saved.renamed,
    );
    Ok(ModeParts {
        source: Box::new(source),
        reporter: Box::new(move |cancel| Box::pin(reporter.run(cancel.cancelled_owned()))),
        inventories: Vec::new(),
        tasks: vec![("reports folder", follow_reports)],
        node_labels: None,
        reviewer: None,
    })
}

/// Connects to the API server, reads back this node's InstanceStatus objects, and sets up the
/// HealthCheck watch, the pods of the node, its labels, the Lease and the InstanceStatus writer.
#[allow(clippy::too_many_arguments)]
async fn kubernetes(
    mode: &Mode,
    config: &AgentConfig,
    store: &Arc<Store>,
    health: &Arc<Health>,
    metrics: &AgentMetrics,
    verdicts: Arc<ControllerVerdicts>,
) -> Result<ModeParts, AgentError> {
    let Mode::Kubernetes {
        kubeconfig,
        namespaces,
        write_coalesce_seconds,
        lease_renew_seconds,
        lease_duration_seconds,
        ..
    } = mode
    else {
        return Err(AgentError::Mode);
    };
    let client = crate::cluster::client(kubeconfig.as_deref()).await?;
    let node = config.node_name.clone();
    // What this node's agent wrote before: restart counts and impairedSince survive a restart.
    let deadline = tokio::time::Instant::now() + secs(config.inventory_sync_timeout_seconds);
    let loaded = loop {
        match apiserver::load(&client, &node).await {
            Ok(loaded) => break loaded,
            Err(e) if tokio::time::Instant::now() < deadline => {
                warn!("{e}: {}; trying again", crate::telemetry::causes(&e));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                let problem =
                    format!("{e}: {}; restart counts start from zero", crate::telemetry::causes(&e));
                warn!("{problem}");
                health.set("restore", vec![problem]);
                break apiserver::Loaded::default();
            }
        }
    };
    let uids = apiserver::Uids::default();
    let writer = ApiWriter::new(
        client.clone(),
        store.clone(),
        health.clone(),
        metrics.clone(),
        apiserver::Pace {
            coalesce: secs(*write_coalesce_seconds),
            refresh: secs(config.status_refresh_seconds),
        },
        &loaded,
        uids.clone(),
    );
    info!(instances = loaded.instances.len(), node, "InstanceStatus objects read back");
    store.restore(loaded.instances);
    let resync = writer.resync_handle();
    let (pods, follow_pods) = PodInventory::new(client.clone(), &node);
    let (labels, follow_labels) = crate::source::api::node_labels(client.clone(), &node);
    let lease = LeaseConfig { renew: secs(*lease_renew_seconds), duration: secs(*lease_duration_seconds) };
    let mut tasks: Vec<(&'static str, Task)> = Vec::new();
    tasks.push((
        "pod watch",
        Box::new(move |cancel: CancellationToken| {
            Box::pin(async move {
                tokio::select! {
                    () = follow_pods => {}
                    () = cancel.cancelled() => {}
                }
            })
        }),
    ));
    tasks.push((
        "node watch",
        Box::new(move |cancel: CancellationToken| {
            Box::pin(async move {
                tokio::select! {
                    () = follow_labels => {}
                    () = cancel.cancelled() => {}
                }
            })
        }),
    ));
    {
        let (client, store, node) = (client.clone(), store.clone(), node.clone());
        tasks.push((
            "report watch",
            Box::new(move |cancel| {
                Box::pin(crate::source::reports::watch_cluster(client, node, store, cancel))
            }),
        ));
    }
    {
        let (client, store, node) = (client.clone(), store.clone(), node.clone());
        tasks.push((
            "event recorder",
            Box::new(move |cancel| {
                Box::pin(crate::report::events::record(client, store, node, uids, cancel))
            }),
        ));
    }
    {
        let (client, namespace, health, node) =
            (client.clone(), config.namespace.clone(), health.clone(), node.clone());
        tasks.push((
            "lease",
            Box::new(move |cancel| {
                Box::pin(lease::keep(client, namespace, node, lease, health, resync, cancel))
            }),
        ));
    }
    let reviewer: Arc<dyn http::TokenReviewer> =
        Arc::new(access::ApiReviewer::new(client.clone(), &config.node_name));
    Ok(ModeParts {
        reviewer: Some(reviewer),
        source: Box::new(ApiSource::new(client, namespaces.clone(), verdicts)),
        reporter: Box::new(move |cancel| Box::pin(writer.run(cancel.cancelled_owned()))),
        inventories: vec![Arc::new(pods)],
        tasks,
        node_labels: Some(labels),
    })
}

type TaskResult = (&'static str, Result<(), String>);

/// Runs the agent until `shutdown` resolves.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let registry = Registry::new();
    let metrics = AgentMetrics::register(&registry).map_err(AgentError::Metrics)?;
    let health = Health::new();
    let readiness = Readiness::new();
    let token = match &config.api_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|source| AgentError::ReadToken { path: path.clone(), source })?,
        ),
        None => None,
    };

    let store = Store::new(&config.node_name, &config.namespace, Arc::new(SystemClock), metrics.clone());
    let (store, parts, watched) = match &config.mode {
        Mode::Standalone { checks_dir, state_dir } => {
            let store = Arc::new(store);
            let parts = standalone(checks_dir, state_dir, &config, &store, &health, &metrics)?;
            (store, parts, vec![config.host_root.clone(), state_dir.clone()])
        }
        mode @ Mode::Kubernetes { remediation_staleness_seconds, .. } => {
            // In a cluster, remediation waits for the controller's verdict over the whole fleet.
            let verdicts = Arc::new(ControllerVerdicts::new(
                secs(*remediation_staleness_seconds),
                Arc::new(SystemClock),
            ));
            let store = Arc::new(store.with_gate(verdicts.clone()));
            let parts = kubernetes(mode, &config, &store, &health, &metrics, verdicts).await?;
            (store, parts, vec![config.host_root.clone()])
        }
    };
    let view = Arc::new(ViewCollector::new(store.clone(), config.metrics_detail));
    let monitor = Arc::new(std::sync::Mutex::new(host::HostMonitor::new(
        config.pressure.clone(),
        watched,
        config.host_root.clone(),
        config.smartctl.clone(),
        secs(config.smart_interval_seconds),
    )));
    let first = monitor.clone();
    let first = tokio::task::spawn_blocking(move || {
        first.lock().unwrap_or_else(std::sync::PoisonError::into_inner).assess()
    });
    store.set_host_health(first.await.map_err(|e| AgentError::HostMonitor(e.to_string()))?);

    let docker = match &config.docker_socket {
        Some(socket) => {
            Some(DockerRuntime::connect(socket, Duration::from_secs(config.container_stop_timeout_seconds))?)
        }
        None => None,
    };
    let qemu = QemuRuntime::new(config.qemu.clone());
    let mut inventories: Vec<Arc<dyn Inventory>> = vec![Arc::new(HostInventory)];
    let mut prober = Prober::new().with_vms(Arc::new(qemu.clone()));
    let mut executors = Executors {
        exec: Some(Arc::new(ExecAction)),
        vm: Some(Arc::new(RestartVm(qemu.clone()))),
        ..Executors::default()
    };
    if let Some(docker) = &docker {
        prober = prober.with_containers(Arc::new(docker.clone()));
        executors.container = Some(Arc::new(RestartContainer(docker.clone())));
        inventories.push(Arc::new(docker.clone()));
    }
    inventories.push(Arc::new(qemu.clone()));
    inventories.extend(parts.inventories);

    let checks_loaded = readiness.handle(parts.source.first_sync());
    let startup = StartupSync {
        deadline: tokio::time::Instant::now() + secs(config.inventory_sync_timeout_seconds),
        waiting: inventories
            .iter()
            .enumerate()
            .filter(|(_, i)| !i.synced())
            .map(|(n, i)| (n, readiness.handle(i.first_sync())))
            .collect(),
    };
    let scheduler = Scheduler::new(
        store.clone(),
        prober,
        executors,
        SchedulerConfig {
            max_concurrent_probes: config.scheduler.max_concurrent_probes,
            max_concurrent_exec: config.scheduler.max_concurrent_exec,
            probe_threads: config.scheduler.probe_threads,
        },
        metrics.clone(),
    )
    .map_err(AgentError::ProbeThreads)?;
    let mut inventory_changes: Vec<watch::Receiver<u64>> =
        inventories.iter().filter_map(|i| i.changes()).collect();
    let mut reconciler = Reconciler {
        catalog: Catalog::default(),
        keep_generation: parts.source.numbers_generations(),
        scheduler,
        store: store.clone(),
        node: NodeInfo { name: config.node_name.clone(), labels: config.node_labels.clone() },
        health: health.clone(),
        metrics: metrics.clone(),
        reported: BTreeSet::new(),
        inventories,
        checks_loaded: Some(checks_loaded),
        startup: Some(startup),
        late: Vec::new(),
    };
    let mut node_labels = parts.node_labels;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen { addr: config.listen, source })?;
    info!(listen = %config.listen, "serving the HTTP API");

    let cancel = CancellationToken::new();
    let mut tasks: JoinSet<TaskResult> = JoinSet::new();

    let (updates_tx, mut updates) = mpsc::channel(4);
    let source_name = parts.source.name();
    {
        let source = parts.source;
        let span = info_span!("source", name = source.name());
        let cancel = cancel.clone();
        tasks.spawn(
            async move {
                tokio::select! {
                    () = source.run(updates_tx) => ("checks source", Err("the source ended".to_owned())),
                    () = cancel.cancelled() => ("checks source", Ok(())),
                }
            }
            .instrument(span),
        );
    }

    if let Some(docker) = &docker {
        let (d, c) = (docker.clone(), cancel.clone());
        tasks.spawn(
            async move {
                crate::docker::watch(d, c).await;
                ("docker watcher", Ok(()))
            }
            .instrument(info_span!("watcher", inventory = "docker")),
        );
        let (d, c) = (docker.clone(), cancel.clone());
        let stats = StatsConfig { interval: secs(config.docker_stats_interval_seconds), concurrency: 64 };
        tasks.spawn(
            async move {
                crate::docker::stats::collect(d, stats, c).await;
                ("container stats", Ok(()))
            }
            .instrument(info_span!("stats", inventory = "docker")),
        );
    }
    {
        let (q, c) = (qemu.clone(), cancel.clone());
        let restarts = metrics.follower_restarts.with_label_values(&["vm"]);
        tasks.spawn(
            async move {
                q.watch(c, restarts).await;
                ("VM watcher", Ok(()))
            }
            .instrument(info_span!("watcher", inventory = "qemu")),
        );
    }

    {
        let cancel = cancel.clone();
        let health = health.clone();
        tasks.spawn(
            async move {
                loop {
                    let startup_deadline = reconciler.startup.as_ref().map(|s| s.deadline);
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = async {
                            match startup_deadline {
                                Some(deadline) => tokio::time::sleep_until(deadline).await,
                                None => std::future::pending().await,
                            }
                        } => {
                            reconciler.replan();
                            reconciler.settle_startup(true);
                        }
                        () = any_changed(&mut inventory_changes) => reconciler.replan(),
                        Some(labels) = async {
                            match node_labels.as_mut() {
                                Some(rx) => match rx.changed().await {
                                    Ok(()) => Some(rx.borrow_and_update().clone()),
                                    Err(_) => std::future::pending().await,
                                },
                                None => std::future::pending().await,
                            }
                        } => {
                            if reconciler.node.labels != labels {
                                info!(?labels, "node labels changed");
                                reconciler.node.labels = labels;
                                reconciler.replan();
                            }
                        }
                        got = updates.recv() => match got {
                            Some(Update::Snapshot(snapshot)) => {
                                health.set(source_name, Vec::new());
                                reconciler.apply(snapshot);
                            }
                            Some(Update::Failed(problem)) => {
                                warn!("{problem}");
                                health.set(source_name, vec![problem]);
                            }
                            None => return ("reconciler", Err("the checks source went away".to_owned())),
                        },
                    }
                }
                // Workers stop here, before the last write.
                reconciler.scheduler.clear();
                ("reconciler", Ok(()))
            }
            .instrument(info_span!("reconciler")),
        );
    }

    {
        let store = store.clone();
        let cancel = cancel.clone();
        let period = secs(config.host_interval_seconds);
        tasks.spawn(
            async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return ("host monitor", Ok(())),
                        _ = tick.tick() => {}
                    }
                    let monitor = monitor.clone();
                    let assessed = tokio::task::spawn_blocking(move || {
                        monitor.lock().unwrap_or_else(std::sync::PoisonError::into_inner).assess()
                    });
                    match assessed.await {
                        Ok(h) => store.set_host_health(h),
                        Err(e) => return ("host monitor", Err(e.to_string())),
                    }
                }
            }
            .instrument(info_span!("host monitor")),
        );
    }

    {
        let reporter = (parts.reporter)(cancel.clone());
        tasks.spawn(
            async move {
                reporter.await;
                ("reporter", Ok(()))
            }
            .instrument(info_span!("reporter")),
        );
    }
    for (name, task) in parts.tasks {
        let task = task(cancel.clone());
        let cancel = cancel.clone();
        tasks.spawn(
            async move {
                task.await;
                (name, if cancel.is_cancelled() { Ok(()) } else { Err("it ended".to_owned()) })
            }
            .instrument(info_span!("task", name)),
        );
    }

    {
        let health = health.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return ("heartbeat", Ok(())),
                    _ = tick.tick() => health.beat(),
                }
            }
        });
    }

    let event_log = Arc::new(events::EventLog::new(events::CAPACITY));
    {
        let (store, log, node, cancel) =
            (store.clone(), event_log.clone(), config.node_name.clone(), cancel.clone());
        tasks.spawn(
            async move {
                events::follow(store, log, node, cancel.clone()).await;
                ("event log", if cancel.is_cancelled() { Ok(()) } else { Err("it ended".to_owned()) })
            }
            .instrument(info_span!("event log")),
        );
    }
    if let Some(url) = &config.events_webhook {
        let hook = events::Webhook { url: url.clone(), queue: config.events_webhook_queue };
        let webhook_metrics = events::WebhookMetrics::register(&registry).map_err(AgentError::Metrics)?;
        let (log, cancel) = (event_log.clone(), cancel.clone());
        tasks.spawn(
            async move {
                events::deliver(log, hook, webhook_metrics, cancel).await;
                ("events webhook", Ok(()))
            }
            .instrument(info_span!("events webhook")),
        );
    }

    if let Some(url) = &config.nats_url {
        let nats = nats::NatsConfig {
            url: url.clone(),
            prefix: config.nats_prefix.clone(),
            metrics_interval: secs(config.nats_metrics_interval_seconds),
            stats_interval: secs(config.docker_stats_interval_seconds),
        };
        let (store, log, docker, cancel) = (store.clone(), event_log.clone(), docker.clone(), cancel.clone());
        tasks.spawn(
            async move {
                let result = nats::run(nats, store, log, docker, cancel).await;
                ("NATS publisher", result.map_err(|e| crate::telemetry::one_line(&e)))
            }
            .instrument(info_span!("nats")),
        );
    }

    {
        let config_json = serde_json::to_value(&config).unwrap_or_default();
        let state = api::ApiState {
            store: store.clone(),
            health: health.clone(),
            readiness: readiness.clone(),
            registry,
            view,
            metrics: metrics.clone(),
            config: Arc::new(config_json),
            docker: docker.clone(),
            qemu: qemu.clone(),
            events: event_log.clone(),
        };
        let access = AccessPolicy { token, reviewer: parts.reviewer.clone() };
        let router = api::router(state, access, config.server.request_timeout);
        let server = config.server;
        let cancel = cancel.clone();
        tasks.spawn(
            async move {
                let result = http::serve(listener, router, server, cancel.cancelled_owned()).await;
                ("http server", result.map_err(|e| e.to_string()))
            }
            .instrument(info_span!("http")),
        );
    }

    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        () = &mut shutdown => {
            info!("shutting down");
            Ok(())
        }
        ended = tasks.join_next() => {
            let (task, reason) = match ended {
                Some(Ok((task, Ok(())))) => (task, "it returned".to_owned()),
                Some(Ok((task, Err(e)))) => (task, e),
                Some(Err(e)) => ("a task", if e.is_panic() { "it panicked".to_owned() } else { e.to_string() }),
                None => ("every task", "none left".to_owned()),
            };
            error!(task, reason = %reason, "a long-lived task stopped; exiting");
            readiness.break_readiness();
            health.set_fatal("agent", format!("{task} stopped: {reason}"));
            Err(AgentError::TaskEnded { task, reason })
        }
    };
    cancel.cancel();
    // The reporter writes everything once more on its way out.
    let drained =
        tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} })
            .await;
    if drained.is_err() {
        warn!("some tasks did not stop within 10s");
    }
    outcome
}

/// An optional URL, as text in the served configuration.
fn uri_opt<S: serde::Serializer>(uri: &Option<::http::Uri>, s: S) -> Result<S::Ok, S::Error> {
    match uri {
        Some(u) => s.serialize_some(&u.to_string()),
        None => s.serialize_none(),
    }
}
