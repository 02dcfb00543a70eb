//! Docker containers: the inventory (kept current from the Engine's event stream), the
//! container runtime probes use (HEALTHCHECK state, exec inside the container), resource stats
//! collected in the background, logs, and the `restartContainer` action.
//!
//! Everything talks to the Engine API through `bollard` on the agent's main runtime; probes that
//! run on probe threads hand their calls over to it. When the daemon does not answer, the last
//! known containers stay, their System check says the daemon is unreachable, and probes that need
//! the daemon are `Unknown` (`insufficient-data`), never a reason to restart anything.

pub mod logs;
pub mod stats;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::RestartContainerOptionsBuilder;
use futures_util::StreamExt;
use jiff::Timestamp;
use tokio::runtime::Handle;
use tokio::sync::watch as tokio_watch;

use crate::action::{ActionError, ActionExecutor, ActionFuture, ActionRequest};
use crate::api::{CheckStatus, InstanceKind, InstanceState};
use crate::inventory::{Claimed, Instance, Inventory, Observation, id_for};
use crate::probe::exec::{Exit, Finished, OUTPUT_LIMIT, judge};
use crate::probe::{Cause, ContainerRuntime, Outcome, OutcomeFuture, Reason};

pub use stats::{Resources, StatsConfig};
pub use watch::watch;

/// Seconds bollard waits for a response's headers (streams are not limited by it).
const REQUEST_TIMEOUT_SECS: u64 = 30;

/// What failed talking to the Docker Engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The socket could not be used.
    #[error("cannot use the Docker socket {socket}")]
    Connect {
        /// The socket.
        socket: String,
        /// The cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// The daemon did not answer a ping.
    #[error("the daemon does not answer")]
    Ping(#[source] bollard::errors::Error),
    /// The containers could not be listed.
    #[error("cannot list the containers")]
    ListContainers(#[source] bollard::errors::Error),
    /// The event stream broke.
    #[error("the event stream broke")]
    Events(#[source] bollard::errors::Error),
    /// The event stream ended.
    #[error("the event stream ended")]
    EventsEnded,
    /// An exec could not be created in the container.
    #[error("cannot create the exec")]
    CreateExec(#[source] bollard::errors::Error),
    /// An exec could not be started.
    #[error("cannot start the exec")]
    StartExec(#[source] bollard::errors::Error),
    /// An exec started detached, so its output cannot be read.
    #[error("the exec started detached")]
    ExecDetached,
    /// An exec's result could not be read.
    #[error("cannot inspect the exec")]
    InspectExec(#[source] bollard::errors::Error),
    /// The container's logs could not be read.
    #[error("cannot read the logs")]
    ReadLogs(#[source] bollard::errors::Error),
}

impl DockerError {
    /// What failed and what the Engine said, on one line.
    pub fn message(&self) -> String {
        use std::error::Error;
        match self.source().and_then(|s| s.downcast_ref::<bollard::errors::Error>()) {
            Some(engine) => format!("{self}: {}", engine_message(engine)),
            None => self.to_string(),
        }
    }
}

/// A container's run state, as Docker names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Being restarted by Docker's restart policy.
    Restarting,
    /// Being removed.
    Removing,
    /// Exited.
    Exited,
    /// Dead (failed to stop or remove).
    Dead,
}

impl RunState {
    /// Docker's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Created => "created",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Restarting => "restarting",
            RunState::Removing => "removing",
            RunState::Exited => "exited",
            RunState::Dead => "dead",
        }
    }

    fn instance_state(self) -> InstanceState {
        match self {
            RunState::Running => InstanceState::Running,
            RunState::Paused => InstanceState::Paused,
            RunState::Restarting => InstanceState::Restarting,
            RunState::Created | RunState::Removing | RunState::Exited | RunState::Dead => {
                InstanceState::Stopped
            }
        }
    }
}

/// One run of a container's HEALTHCHECK.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthRun {
    /// When it started.
    pub start: Option<String>,
    /// When it ended.
    pub end: Option<String>,
    /// Its exit code.
    pub exit_code: Option<i64>,
    /// Its output.
    pub output: String,
}

/// A container's HEALTHCHECK state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    /// Failed runs in a row.
    pub failing_streak: i64,
    /// The last runs, oldest first (Docker keeps five).
    pub log: Vec<HealthRun>,
}

/// A mount of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// `bind`, `volume`, `tmpfs`…
    pub kind: String,
    /// Path on the host (empty for tmpfs).
    pub source: String,
    /// Path in the container.
    pub destination: String,
    /// Writable.
    pub rw: bool,
}

/// What the agent knows of one container.
#[derive(Clone, Debug, PartialEq)]
pub struct Container {
    /// Full id.
    pub id: String,
    /// Name, without the leading `/`.
    pub name: String,
    /// Image, as asked for at creation.
    pub image: String,
    /// Run state.
    pub state: RunState,
    /// Exit code of the last run.
    pub exit_code: Option<i64>,
    /// When the current (or last) run started.
    pub started_at: Option<Timestamp>,
    /// HEALTHCHECK state; `None` without a HEALTHCHECK.
    pub health: Option<HealthState>,
    /// Docker labels.
    pub labels: BTreeMap<String, String>,
    /// IP address on its first network with one.
    pub ip: Option<String>,
    /// Mounts.
    pub mounts: Vec<Mount>,
    /// Restarts by Docker's restart policy.
    pub restart_count: i64,
    /// Stopped or killed by its owner (a `stop`/`kill` event, or found stopped when the agent
    /// started): not vigil's to restart.
    pub stopped_by_owner: bool,
    /// CPUs and memory it is limited to.
    pub limits: Option<Claimed>,
    /// Attached-volume observations, from the last look at its mounts.
    pub volumes: Vec<Observation>,
}

impl Container {
    /// The id `docker ps` shows.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    /// Why checks of this container are on hold, if they are.
    fn on_hold(&self) -> Option<String> {
        match self.state {
            RunState::Paused => Some("paused by its owner".to_owned()),
            RunState::Created => Some("created, never started".to_owned()),
            RunState::Exited | RunState::Dead if self.stopped_by_owner => {
                Some("stopped by its owner".to_owned())
            }
            _ => None,
        }
    }

    /// Seconds since the current run started (0 when not running).
    pub fn uptime_seconds(&self, now: Timestamp) -> i64 {
        match (self.state, self.started_at) {
            (RunState::Running | RunState::Paused, Some(t)) => (now - t).get_seconds().max(0),
            _ => 0,
        }
    }

    /// `healthy`, `unhealthy`, `starting`, or `none` without a HEALTHCHECK.
    pub fn health_status(&self) -> &str {
        self.health.as_ref().map_or("none", |h| h.status.as_str())
    }

    /// Counted as healthy in summaries: running, and its HEALTHCHECK (if any) says healthy.
    pub fn counts_healthy(&self) -> bool {
        self.state == RunState::Running && matches!(self.health_status(), "healthy" | "none")
    }

    /// Counted as unhealthy in summaries: its HEALTHCHECK fails, it is dead or crash-looping, or
    /// it exited non-zero without its owner stopping it.
    pub fn counts_unhealthy(&self) -> bool {
        self.health_status() == "unhealthy"
            || matches!(self.state, RunState::Dead | RunState::Restarting)
            || (self.state == RunState::Exited && !self.stopped_by_owner && self.exit_code != Some(0))
    }

    /// The verdict of a `docker` probe.
    pub fn verdict(&self) -> Outcome {
        match self.state {
            RunState::Running => match &self.health {
                None => Outcome::healthy("running (no HEALTHCHECK)"),
                Some(h) => match h.status.as_str() {
                    "healthy" => Outcome::healthy("HEALTHCHECK healthy"),
                    "unhealthy" => {
                        let last = h.log.last().map(|r| r.output.trim()).unwrap_or("");
                        Outcome::unhealthy(
                            Reason::Unhealthy,
                            format!(
                                "HEALTHCHECK unhealthy ({} failures in a row){}{last}",
                                h.failing_streak,
                                if last.is_empty() { "" } else { ": " }
                            ),
                        )
                    }
                    other => Outcome::unknown(Cause::Pending, format!("HEALTHCHECK {other}: no verdict yet")),
                },
            },
            RunState::Paused => Outcome::unknown(Cause::Paused, "paused"),
            state => Outcome::unhealthy(Reason::NotRunning, self.not_running_message(state)),
        }
    }

    fn not_running_message(&self, state: RunState) -> String {
        match (state, self.exit_code) {
            (RunState::Exited, Some(code)) => format!("exited with code {code}"),
            (state, _) => state.as_str().to_owned(),
        }
    }
}

/// The daemon, as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonStatus {
    /// It answered the last request.
    pub reachable: bool,
    /// What was seen.
    pub message: String,
}

#[derive(Debug)]
struct Index {
    containers: BTreeMap<String, Container>,
    daemon: DaemonStatus,
    /// The containers have been listed at least once.
    synced: bool,
}

/// The Docker runtime of one agent.
#[derive(Clone, Debug)]
pub struct DockerRuntime {
    /// The Engine's client, made once the socket exists (a node's Docker may start after the
    /// agent).
    client: Arc<std::sync::OnceLock<Docker>>,
    socket: String,
    index: Arc<RwLock<Index>>,
    stats: Arc<RwLock<HashMap<String, stats::Sample>>>,
    /// Bumped whenever the inventory changes in a way the planner must see.
    changed: Arc<tokio_watch::Sender<u64>>,
    /// The agent's main runtime, where every Engine API call runs.
    handle: Handle,
    /// Containers vigil is restarting: their `stop` and `kill` events are not their owner's.
    restarting: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    stop_timeout: Duration,
}

impl DockerRuntime {
    /// A runtime for the daemon at `socket` (`/var/run/docker.sock` or `unix:///…`). Nothing is
    /// asked of the daemon yet, and the socket need not exist yet: [`watch`] waits for it and
    /// keeps the inventory current (until then the daemon is unreachable). Call from the runtime
    /// that should run the Engine API calls.
    pub fn connect(socket: &str, stop_timeout: Duration) -> Result<DockerRuntime, DockerError> {
        let path = socket.trim_start_matches("unix://");
        let runtime = DockerRuntime {
            client: Arc::default(),
            socket: path.to_owned(),
            index: Arc::new(RwLock::new(Index {
                containers: BTreeMap::new(),
                daemon: DaemonStatus { reachable: false, message: "not contacted yet".to_owned() },
                synced: false,
            })),
            stats: Arc::default(),
            changed: Arc::new(tokio_watch::channel(0).0),
            handle: Handle::current(),
            restarting: Arc::default(),
            stop_timeout,
        };
        // A socket that is there but cannot be used is a configuration error; one that is not
        // there yet is waited for.
        match runtime.client() {
            Ok(_)
            | Err(DockerError::Connect { source: bollard::errors::Error::SocketNotFoundError(_), .. }) => {
                Ok(runtime)
            }
            Err(e) => Err(e),
        }
    }

    /// The Engine's client, made on first use once the socket exists.
    fn client(&self) -> Result<Docker, DockerError> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let client =
            Docker::connect_with_unix(&self.socket, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(|source| DockerError::Connect { socket: self.socket.clone(), source })?;
        Ok(self.client.get_or_init(|| client).clone())
    }

    /// The socket.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Notified when the inventory changes.
    pub fn subscribe(&self) -> tokio_watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The daemon, as last seen.
    pub fn daemon(&self) -> DaemonStatus {
        self.read().daemon.clone()
    }

    /// Whether the containers have been listed since the agent started.
    pub fn synced(&self) -> bool {
        self.read().synced
    }

    /// Every known container, by name.
    pub fn containers(&self) -> Vec<Container> {
        let mut all: Vec<Container> = self.read().containers.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// A container by name (with or without `/`), full id, or id prefix (unique).
    pub fn find(&self, key: &str) -> Option<Container> {
        let key = key.trim_start_matches('/');
        let index = self.read();
        if let Some(c) = index.containers.get(key) {
            return Some(c.clone());
        }
        if let Some(c) = index.containers.values().find(|c| c.name == key) {
            return Some(c.clone());
        }
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut matching = index.containers.values().filter(|c| c.id.starts_with(key));
        match (matching.next(), matching.next()) {
            (Some(c), None) => Some(c.clone()),
            _ => None,
        }
    }

    /// The latest resource figures of a container.
    pub fn resources(&self, id: &str) -> Option<(Timestamp, Resources)> {
        let stats = self.stats.read().unwrap_or_else(|e| e.into_inner());
        stats.get(id).map(|s| (s.at, Resources::from(&s.raw)))
    }

    /// The instances, as the planner sees them.
    pub fn instances(&self, node: &str) -> Vec<Instance> {
        let index = self.read();
        let system = vec![if index.daemon.reachable {
            Observation::new("docker-daemon", CheckStatus::Ok, "reachable")
        } else {
            Observation::new(
                "docker-daemon",
                CheckStatus::Impaired,
                format!("unreachable at {}: {}", self.socket, index.daemon.message),
            )
        }];
        index
            .containers
            .values()
            .map(|c| Instance {
                id: id_for(InstanceKind::Container, &c.name, node),
                namespace: None,
                kind: InstanceKind::Container,
                name: c.name.clone(),
                node: node.to_owned(),
                address: c.ip.clone().filter(|_| c.state == RunState::Running),
                labels: c.labels.clone(),
                state: c.state.instance_state(),
                claimed: c.limits.filter(|_| c.state == RunState::Running),
                runtime_id: Some(c.id.clone()),
                on_hold: c.on_hold(),
                ports: Vec::new(),
                system: system.clone(),
                volumes: c.volumes.clone(),
            })
            .collect()
    }

    /// Log lines of a container (see [`logs::stream`]).
    pub fn logs(&self, id: &str, tail: Option<usize>, follow: bool) -> logs::LogStream {
        match self.client() {
            Ok(client) => logs::stream(&client, id, tail, follow),
            Err(e) => Box::pin(futures_util::stream::iter([Err(e)])),
        }
    }

    /// Notes that vigil is restarting a container (until its `start` event), or no longer is.
    fn mark_restarting(&self, id: &str, yes: bool) {
        let mut set = self.restarting.lock().unwrap_or_else(|e| e.into_inner());
        if yes {
            set.insert(id.to_owned());
        } else {
            set.remove(id);
        }
    }

    fn is_restarting(&self, id: &str) -> bool {
        self.restarting.lock().unwrap_or_else(|e| e.into_inner()).contains(id)
    }

    /// Runs `f` on the agent's main runtime, where the client lives.
    async fn on_main<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        self.handle.spawn(f).await
    }

    async fn exec_in(
        client: Docker,
        container: String,
        command: Vec<String>,
        timeout: Duration,
    ) -> Result<Finished, DockerError> {
        let created = client
            .create_exec(
                &container,
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(command),
                    ..CreateExecOptions::default()
                },
            )
            .await
            .map_err(DockerError::CreateExec)?;
        let exec_id = created.id;
        let started = client
            .start_exec(&exec_id, Some(StartExecOptions { detach: false, ..StartExecOptions::default() }))
            .await
            .map_err(DockerError::StartExec)?;
        let StartExecResults::Attached { mut output, .. } = started else {
            return Err(DockerError::ExecDetached);
        };
        let mut kept = Vec::new();
        let mut dropped = 0usize;
        let collect = async {
            while let Some(chunk) = output.next().await {
                let Ok(chunk) = chunk else { break };
                let bytes = chunk.into_bytes();
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&bytes[..room.min(bytes.len())]);
                dropped += bytes.len().saturating_sub(room);
            }
        };
        let finished_in_time = tokio::time::timeout(timeout, collect).await.is_ok();
        let inspect = client.inspect_exec(&exec_id).await;
        let exit = if finished_in_time {
            match inspect {
                Ok(i) => match (i.running, i.exit_code) {
                    (Some(false), Some(code)) => Exit::Code(i32::try_from(code).unwrap_or(i32::MAX)),
                    _ => Exit::TimedOut,
                },
                Err(e) => return Err(DockerError::InspectExec(e)),
            }
        } else {
            // The Engine API cannot stop an exec; its process is ours to kill, through its pid
            // on this host.
            if let Ok(pid) = inspect.as_ref().map(|i| i.pid.unwrap_or(0))
                && let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            Exit::TimedOut
        };
        Ok(Finished { exit, output: String::from_utf8_lossy(&kept).into_owned(), dropped })
    }
}

impl ContainerRuntime for DockerRuntime {
    fn health(&self, container: &str) -> Outcome {
        let index = self.read();
        if !index.daemon.reachable {
            return Outcome::unknown(
                Cause::RuntimeUnreachable,
                format!("the Docker daemon does not answer: {}", index.daemon.message),
            );
        }
        match index.containers.get(container) {
            Some(c) => c.verdict(),
            None => Outcome::unknown(Cause::Gone, "the container is gone"),
        }
    }

    fn unreachable(&self, container: &str) -> Option<Outcome> {
        let index = self.read();
        let Some(c) = index.containers.get(container) else {
            return Some(Outcome::unknown(Cause::Gone, "the container is gone"));
        };
        match c.state {
            RunState::Running if c.ip.is_some() => None,
            RunState::Running => {
                Some(Outcome::unknown(Cause::NoAddress, "the container has no IP address (network mode?)"))
            }
            RunState::Paused => Some(Outcome::unknown(Cause::Paused, "paused")),
            state => Some(Outcome::unhealthy(Reason::NotRunning, c.not_running_message(state))),
        }
    }

    fn exec<'a>(&'a self, container: &'a str, command: &'a [String], timeout: Duration) -> OutcomeFuture<'a> {
        Box::pin(async move {
            if !self.read().daemon.reachable {
                return Outcome::unknown(Cause::RuntimeUnreachable, "the Docker daemon does not answer");
            }
            let client = match self.client() {
                Ok(c) => c,
                Err(e) => return Outcome::unknown(Cause::RuntimeUnreachable, e.message()),
            };
            let work = Self::exec_in(client, container.to_owned(), command.to_vec(), timeout);
            match self.on_main(work).await {
                Ok(Ok(finished)) => judge(&finished, timeout, "killed"),
                Ok(Err(e)) => Outcome::unknown(Cause::RuntimeUnreachable, e.message()),
                Err(e) => Outcome::unknown(Cause::Internal, format!("internal error: {e}")),
            }
        })
    }
}

/// One figure of a container, for a metric family.
type Figure<'a> = &'a dyn Fn(&Container, Option<&stats::Raw>) -> Option<f64>;

impl DockerRuntime {
    /// Appends the per-container families, rendered from the live inventory and the latest
    /// stats: a container's series go when it does.
    pub fn encode_metrics(&self, node: &str, out: &mut String) {
        use prometheus::proto::MetricType::{COUNTER, GAUGE};
        const LABELS: &[&str] = &["instance_id", "container"];
        let containers = self.containers();
        let raw = stats::raw_of(self);
        let ids: Vec<String> =
            containers.iter().map(|c| id_for(InstanceKind::Container, &c.name, node)).collect();
        let rows = |f: Figure<'_>| -> Vec<(Vec<&str>, f64)> {
            containers
                .iter()
                .zip(&ids)
                .filter_map(|(c, id)| Some((vec![id.as_str(), c.name.as_str()], f(c, raw.get(&c.id))?)))
                .collect()
        };
        let daemon = f64::from(u8::from(self.daemon().reachable));
        crate::metrics::push_family(
            out,
            "vigil_docker_daemon_up",
            "1 when the Docker daemon answers, else 0.",
            GAUGE,
            &[],
            [(Vec::new(), daemon)],
        );
        let families: [(&'static str, &'static str, _, Figure<'_>); 10] = [
            ("vigil_container_running", "1 while the container runs, else 0.", GAUGE, &|c, _| {
                Some(f64::from(u8::from(c.state == RunState::Running)))
            }),
            (
                "vigil_container_healthy",
                "1 when the container's HEALTHCHECK says healthy, 0 unhealthy; absent without one or while starting.",
                GAUGE,
                &|c, _| match c.health_status() {
                    "healthy" => Some(1.0),
                    "unhealthy" => Some(0.0),
                    _ => None,
                },
            ),
            (
                "vigil_container_cpu_percent",
                "CPU used between the last two samples, percent of one CPU.",
                GAUGE,
                &|_, r| r?.cpu_percent,
            ),
            ("vigil_container_memory_usage_bytes", "Memory in use, without page cache.", GAUGE, &|_, r| {
                r?.memory_bytes.map(|v| v as f64)
            }),
            (
                "vigil_container_memory_limit_bytes",
                "Memory limit (the host's memory when unlimited).",
                GAUGE,
                &|_, r| r?.memory_limit_bytes.map(|v| v as f64),
            ),
            (
                "vigil_container_network_receive_bytes_total",
                "Bytes received over all networks.",
                COUNTER,
                &|_, r| r?.rx_bytes.map(|v| v as f64),
            ),
            (
                "vigil_container_network_transmit_bytes_total",
                "Bytes sent over all networks.",
                COUNTER,
                &|_, r| r?.tx_bytes.map(|v| v as f64),
            ),
            ("vigil_container_block_read_bytes_total", "Bytes read from block devices.", COUNTER, &|_, r| {
                r?.read_bytes.map(|v| v as f64)
            }),
            (
                "vigil_container_block_write_bytes_total",
                "Bytes written to block devices.",
                COUNTER,
                &|_, r| r?.write_bytes.map(|v| v as f64),
            ),
            ("vigil_container_pids", "Processes and threads in the container.", GAUGE, &|_, r| {
                r?.pids.map(|v| v as f64)
            }),
        ];
        for (name, help, kind, f) in families {
            crate::metrics::push_family(out, name, help, kind, LABELS, rows(f));
        }
    }
}

/// The message the Engine gave, without bollard's wrapping.
pub fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, message } => {
            format!("{message} (HTTP {status_code})")
        }
        other => other.to_string(),
    }
}

impl Inventory for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn first_sync(&self) -> &'static str {
        "Docker containers listed"
    }

    fn kind(&self) -> InstanceKind {
        InstanceKind::Container
    }

    fn instances(&self, node: &str) -> Vec<Instance> {
        DockerRuntime::instances(self, node)
    }

    fn synced(&self) -> bool {
        DockerRuntime::synced(self)
    }

    fn changes(&self) -> Option<tokio_watch::Receiver<u64>> {
        Some(self.subscribe())
    }

    fn problems(&self) -> Vec<String> {
        let daemon = self.daemon();
        if daemon.reachable {
            Vec::new()
        } else {
            vec![format!("Docker daemon at {} unreachable: {}", self.socket, daemon.message)]
        }
    }
}

/// The `restartContainer` action: an Engine restart with a stop timeout.
#[derive(Clone, Debug)]
pub struct RestartContainer(pub DockerRuntime);

impl ActionExecutor for RestartContainer {
    fn execute<'a>(&'a self, request: &'a ActionRequest) -> ActionFuture<'a> {
        Box::pin(async move {
            let docker = &self.0;
            let Some(container) = docker.find(&request.instance_name) else {
                return Err(ActionError::Failed(format!("container {} is gone", request.instance_name)));
            };
            if let Some(why) = container.on_hold() {
                return Err(ActionError::Failed(format!("not restarted: {why}")));
            }
            let client = docker.client().map_err(|e| ActionError::Failed(e.message()))?;
            let id = container.id.clone();
            docker.mark_restarting(&id, true);
            let t = i32::try_from(docker.stop_timeout.as_secs()).unwrap_or(i32::MAX);
            let restarted = docker
                .on_main(async move {
                    client
                        .restart_container(&id, Some(RestartContainerOptionsBuilder::default().t(t).build()))
                        .await
                })
                .await
                .map_err(|e| ActionError::Failed(format!("internal error: {e}")))?;
            if restarted.is_err() {
                docker.mark_restarting(&container.id, false);
            }
            match restarted {
                Ok(()) => Ok(format!("restarted container {} (stop timeout {t}s)", container.name)),
                Err(e) => {
                    Err(ActionError::Failed(format!("Docker refused the restart: {}", engine_message(&e))))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(state: RunState, health: Option<&str>) -> Container {
        Container {
            id: "0123456789abcdef".into(),
            name: "web".into(),
            image: "img".into(),
            state,
            exit_code: Some(0),
            started_at: None,
            health: health.map(|s| HealthState {
                status: s.into(),
                failing_streak: 3,
                log: vec![HealthRun { start: None, end: None, exit_code: Some(1), output: "boom\n".into() }],
            }),
            labels: BTreeMap::new(),
            ip: Some("172.17.0.2".into()),
            mounts: Vec::new(),
            restart_count: 0,
            stopped_by_owner: false,
            limits: None,
            volumes: Vec::new(),
        }
    }

    #[test]
    fn verdicts_follow_the_healthcheck_then_the_state() {
        assert_eq!(container(RunState::Running, Some("healthy")).verdict().kind(), "healthy");
        assert_eq!(container(RunState::Running, None).verdict().kind(), "healthy");
        let sick = container(RunState::Running, Some("unhealthy")).verdict();
        assert_eq!(sick.reason(), Some(Reason::Unhealthy));
        assert!(sick.message().ends_with("3 failures in a row): boom"), "{}", sick.message());
        assert_eq!(container(RunState::Running, Some("starting")).verdict().kind(), "unknown");
        let mut crashed = container(RunState::Exited, None);
        crashed.exit_code = Some(137);
        assert_eq!(crashed.verdict().reason(), Some(Reason::NotRunning));
        assert_eq!(crashed.verdict().message(), "exited with code 137");
        assert!(crashed.on_hold().is_none(), "a crash is not on hold");
        crashed.stopped_by_owner = true;
        assert!(crashed.on_hold().is_some(), "a stop by its owner is");
        assert!(container(RunState::Paused, None).on_hold().is_some());
    }

    #[test]
    fn summary_counts() {
        assert!(container(RunState::Running, None).counts_healthy());
        assert!(!container(RunState::Running, Some("starting")).counts_healthy());
        assert!(container(RunState::Running, Some("unhealthy")).counts_unhealthy());
        let mut exited = container(RunState::Exited, None);
        assert!(!exited.counts_unhealthy(), "exit 0 is not a failure");
        exited.exit_code = Some(1);
        assert!(exited.counts_unhealthy());
        exited.stopped_by_owner = true;
        assert!(!exited.counts_unhealthy());
    }
}
