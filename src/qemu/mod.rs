//! QEMU virtual machines: found through their QMP sockets, watched over one QMP connection each
//! (QEMU allows one client per monitor), with asynchronous events applied as they arrive; the
//! `qmp` probe (run state, guest agent, block devices, guest filesystems) and the `restartVM`
//! action.
//!
//! QMP goes through the `qapi` crate (transport, negotiation, replies told apart from events).
//! Its generated types follow a newer QEMU than some hosts run (`query-blockstats` has fields
//! QEMU 7.2 does not send), so block queries are read as plain JSON. The guest agent is spoken
//! directly: see [`qga`].

pub mod guest;
pub mod qga;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use futures_util::StreamExt;
use qapi::futures::{QapiService, QmpStreamTokio};
use qapi::qmp;
use serde::Serialize;
use serde_json::Value;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::runtime::Handle;
use tokio::sync::watch as tokio_watch;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::action::{ActionError, ActionExecutor, ActionFuture, ActionRequest};
use crate::api::{CheckStatus, InstanceKind, InstanceState};
use crate::inventory::{Claimed, Instance, Inventory, Observation, id_for};
use crate::probe::{Cause, Outcome, OutcomeFuture, QmpSpec, Reason, VmRuntime};
use crate::supervise::Followers;

type Service = QapiService<QmpStreamTokio<WriteHalf<UnixStream>>>;

/// What failed in a QMP session.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be opened.
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    /// Nothing was said on connect (QMP serves one client: another may hold it).
    #[error("no QMP greeting within 5s (another client connected?)")]
    NoGreeting,
    /// What was said on connect is not a QMP greeting.
    #[error("not a QMP greeting")]
    Greeting(#[source] std::io::Error),
    /// Capabilities negotiation took too long.
    #[error("QMP negotiation timed out")]
    NegotiationTimeout,
    /// Capabilities negotiation failed.
    #[error("QMP negotiation failed")]
    Negotiate(#[source] std::io::Error),
    /// The event stream failed.
    #[error("QMP stream")]
    Stream(#[source] std::io::Error),
    /// `query-status` failed.
    #[error("query-status")]
    QueryStatus(#[source] qapi::ExecuteError),
    /// The connection closed.
    #[error("QMP connection closed")]
    Closed,
}

impl QmpError {
    /// What failed and why, on one line.
    pub fn message(&self) -> String {
        crate::telemetry::one_line(self)
    }
}

/// Where VMs are looked for, and how they are restarted.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QemuConfig {
    /// Glob patterns of QMP sockets.
    pub socket_globs: Vec<String>,
    /// How often the globs are looked at again.
    #[serde(rename = "rescanSeconds", serialize_with = "seconds")]
    pub rescan: Duration,
    /// How long `restartVM` waits for the guest agent after `system_reset`.
    #[serde(rename = "resetTimeoutSeconds", serialize_with = "seconds")]
    pub reset_timeout: Duration,
    /// Run (`sh -c`) when the guest does not come back after a reset; gets `VIGIL_VM_NAME` and
    /// `VIGIL_VM_DIR`.
    pub restart_command: Option<String>,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Commands whose answers are read as plain JSON.
macro_rules! raw_command {
    ($ty:ident, $name:literal) => {
        #[derive(Serialize)]
        struct $ty {}
        impl qapi::Command for $ty {
            type Ok = Value;
            const NAME: &'static str = $name;
            const ALLOW_OOB: bool = false;
        }
        impl qmp::QmpCommand for $ty {}
    };
}
raw_command!(QueryBlock, "query-block");
raw_command!(QueryBlockstats, "query-blockstats");
raw_command!(QueryCpusFast, "query-cpus-fast");

/// One VM as last seen.
#[derive(Clone, Debug)]
pub struct Vm {
    /// Name (`query-name`, else the folder or file name).
    pub name: String,
    /// The QMP socket.
    pub qmp_socket: PathBuf,
    /// QEMU's pid (the QMP socket's peer).
    pub pid: Option<i32>,
    /// Configured vCPUs.
    pub vcpus: u32,
    /// Configured memory, MiB.
    pub memory_mb: u64,
    /// The QEMU process's CPU over the last sample interval, percent of one CPU (as `top`).
    pub host_cpu_percent: Option<f64>,
    /// The QEMU process's resident memory, bytes.
    pub host_rss_bytes: Option<u64>,
    /// The QEMU process was alive (there, and not a zombie) at the last look at /proc.
    pub process_alive: bool,
    /// The last CPU sample: user + system clock ticks, and when.
    pub cpu_sample: Option<(u64, std::time::Instant)>,
    /// When the guest started, as far as the agent saw: when QMP first said it runs, or its
    /// last reset. The boot grace counts from here.
    pub started_at: Option<std::time::Instant>,
    /// QMP run state (`running`, `paused`, `shutdown`, `guest-panicked`…), `None` until known.
    pub status: Option<String>,
    /// Whether QMP answers, and what was seen when it does not.
    pub qmp: Result<(), String>,
    /// The guest-agent port, from `VSERPORT_CHANGE`.
    pub guest_port_open: Option<bool>,
    /// The guest's address, from `guest-network-get-interfaces` (first non-loopback IPv4), for
    /// network probes of the VM.
    pub address: Option<String>,
    /// The guest agent has answered since the guest (re)started: until it has, a silent agent
    /// is a guest still booting (`insufficient-data`), not a failure.
    pub guest_agent_seen: bool,
    /// Failed block operations when first seen, per device: later ones are new errors.
    pub failed_baseline: BTreeMap<String, i64>,
    /// Attached-volume observations from the last look at the block devices.
    pub volumes: Vec<Observation>,
}

impl Vm {
    /// The guest-agent socket beside the QMP socket, when there is one. Looked at each time:
    /// QEMU creates it a moment after the QMP socket.
    pub fn qga_socket(&self) -> Option<PathBuf> {
        let qga = self.qmp_socket.with_file_name("qga.sock");
        qga.exists().then_some(qga)
    }

    fn instance_state(&self) -> InstanceState {
        match (&self.qmp, self.status.as_deref()) {
            (Err(_), _) => InstanceState::Unknown,
            (_, Some("running")) => InstanceState::Running,
            (_, Some("paused" | "suspended")) => InstanceState::Paused,
            (_, Some("shutdown")) => InstanceState::Stopped,
            _ => InstanceState::Unknown,
        }
    }

    /// `pid 1234: 12.5% CPU, 812 MiB RSS (2 vCPUs, 1024 MiB configured)`, as far as known.
    fn process_figures(&self, pid: i32) -> String {
        let mut text = format!("pid {pid}");
        let mut parts = Vec::new();
        if let Some(cpu) = self.host_cpu_percent {
            parts.push(format!("{cpu:.1}% CPU"));
        }
        if let Some(rss) = self.host_rss_bytes {
            parts.push(format!("{} MiB RSS", rss / (1024 * 1024)));
        }
        if !parts.is_empty() {
            text.push_str(": ");
            text.push_str(&parts.join(", "));
        }
        if self.vcpus > 0 || self.memory_mb > 0 {
            text.push_str(&format!(" ({} vCPUs, {} MiB configured)", self.vcpus, self.memory_mb));
        }
        text
    }

    /// Samples the QEMU process: whether it is alive, CPU since the last sample, resident
    /// memory now.
    fn sample_process(&mut self, now: std::time::Instant) {
        let Some(pid) = self.pid else { return };
        let stat = match procfs::process::Process::new(pid).and_then(|p| p.stat()) {
            Ok(stat) if stat.state != 'Z' => stat,
            _ => {
                self.process_alive = false;
                self.host_cpu_percent = None;
                self.host_rss_bytes = None;
                return;
            }
        };
        self.process_alive = true;
        let ticks = stat.utime + stat.stime;
        if let Some((before, at)) = self.cpu_sample {
            let seconds = now.saturating_duration_since(at).as_secs_f64();
            if seconds > 0.0 && ticks >= before {
                let per_second = procfs::ticks_per_second() as f64;
                let percent = (ticks - before) as f64 / per_second / seconds * 100.0;
                self.host_cpu_percent = Some((percent * 10.0).round() / 10.0);
            }
        }
        self.cpu_sample = Some((ticks, now));
        self.host_rss_bytes = Some(stat.rss * procfs::page_size());
    }
}

#[derive(Debug, Default)]
struct Index {
    vms: BTreeMap<PathBuf, Vm>,
}

/// The QEMU runtime of one agent.
#[derive(Clone)]
pub struct QemuRuntime {
    config: QemuConfig,
    index: Arc<RwLock<Index>>,
    services: Arc<RwLock<BTreeMap<PathBuf, Arc<Service>>>>,
    changed: Arc<tokio_watch::Sender<u64>>,
    /// The sockets have been looked for at least once.
    synced: Arc<std::sync::atomic::AtomicBool>,
    handle: Handle,
}

impl std::fmt::Debug for QemuRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuRuntime").field("config", &self.config).finish_non_exhaustive()
    }
}

impl QemuRuntime {
    /// Appends the per-VM families: the host's view of each VM's QEMU process beside what the
    /// VM was configured with. A VM's series go when it does.
    pub fn encode_metrics(&self, node: &str, out: &mut String) {
        use prometheus::proto::MetricType::GAUGE;
        const LABELS: &[&str] = &["instance_id", "vm"];
        let vms = self.vms();
        let ids: Vec<String> = vms.iter().map(|vm| id_for(InstanceKind::Vm, &vm.name, node)).collect();
        type Figure = fn(&Vm) -> Option<f64>;
        let families: [(&'static str, &'static str, Figure); 4] = [
            (
                "vigil_vm_cpu_percent",
                "CPU of the VM's QEMU process over the last 5 s sample, percent of one CPU, as the host sees it.",
                |vm| vm.host_cpu_percent,
            ),
            (
                "vigil_vm_memory_rss_bytes",
                "Resident memory of the VM's QEMU process, as the host sees it.",
                |vm| vm.host_rss_bytes.map(|b| b as f64),
            ),
            ("vigil_vm_vcpus", "vCPUs the VM is configured with (query-cpus-fast).", |vm| {
                (vm.vcpus > 0).then_some(f64::from(vm.vcpus))
            }),
            (
                "vigil_vm_memory_configured_bytes",
                "Memory the VM is configured with (query-memory-size-summary).",
                |vm| (vm.memory_mb > 0).then_some((vm.memory_mb * 1024 * 1024) as f64),
            ),
        ];
        for (name, help, figure) in families {
            let rows = vms
                .iter()
                .zip(&ids)
                .filter_map(|(vm, id)| Some((vec![id.as_str(), vm.name.as_str()], figure(vm)?)));
            crate::metrics::push_family(out, name, help, GAUGE, LABELS, rows);
        }
    }

    /// A runtime looking for VMs as `config` says. Call from the runtime that should talk QMP.
    pub fn new(config: QemuConfig) -> QemuRuntime {
        QemuRuntime {
            config,
            index: Arc::default(),
            services: Arc::default(),
            changed: Arc::new(tokio_watch::channel(0).0),
            synced: Arc::default(),
            handle: Handle::current(),
        }
    }

    /// Whether the sockets have been looked for since the agent started: every VM there is has
    /// been found (its instance exists; QMP may still be connecting).
    pub fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Notified when the inventory changes.
    pub fn subscribe(&self) -> tokio_watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every known VM.
    pub fn vms(&self) -> Vec<Vm> {
        self.read().vms.values().cloned().collect()
    }

    fn find(&self, name: &str) -> Option<Vm> {
        self.read().vms.values().find(|v| v.name == name).cloned()
    }

    fn service(&self, socket: &Path) -> Option<Arc<Service>> {
        self.services.read().unwrap_or_else(|e| e.into_inner()).get(socket).cloned()
    }

    /// The instances, as the planner sees them.
    pub fn instances(&self, node: &str) -> Vec<Instance> {
        self.read()
            .vms
            .values()
            .map(|vm| {
                let system = vec![
                    match (vm.pid, vm.process_alive) {
                        (Some(pid), true) => {
                            Observation::new("qemu-process", CheckStatus::Ok, vm.process_figures(pid))
                        }
                        (Some(pid), false) => Observation::new(
                            "qemu-process",
                            CheckStatus::Impaired,
                            format!("QEMU process {pid} is gone"),
                        ),
                        (None, _) => Observation::new(
                            "qemu-process",
                            CheckStatus::InsufficientData,
                            "QEMU's pid is not known yet",
                        ),
                    },
                    match &vm.qmp {
                        Ok(()) => Observation::new("reachability", CheckStatus::Ok, "QMP answers"),
                        Err(e) => {
                            Observation::new("reachability", CheckStatus::Impaired, format!("QMP: {e}"))
                        }
                    },
                ];
                let running = vm.instance_state() == InstanceState::Running;
                Instance {
                    id: id_for(InstanceKind::Vm, &vm.name, node),
                    namespace: None,
                    kind: InstanceKind::Vm,
                    name: vm.name.clone(),
                    node: node.to_owned(),
                    address: vm.address.clone().filter(|_| running),
                    labels: BTreeMap::new(),
                    state: vm.instance_state(),
                    claimed: running
                        .then_some(Claimed { cpus: f64::from(vm.vcpus), memory_mb: vm.memory_mb }),
                    runtime_id: Some(vm.qmp_socket.display().to_string()),
                    on_hold: (vm.qmp.is_ok() && vm.status.as_deref() == Some("paused"))
                        .then(|| "paused by its operator".to_owned()),
                    ports: Vec::new(),
                    system,
                    volumes: vm.volumes.clone(),
                }
            })
            .collect()
    }

    /// Finds VMs until `cancel`: looks at the globs every `rescan`, keeps one QMP connection per
    /// VM, forgets VMs whose socket went away.
    /// A follower (one VM's QMP connection) that dies is started again with backoff and
    /// counted in `restarts`.
    pub async fn watch(self, cancel: CancellationToken, restarts: prometheus::IntCounter) {
        let mut tasks: Followers<PathBuf> = Followers::new("VM follower", restarts);
        let mut tick = tokio::time::interval(self.config.rescan);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            tasks.revive(tokio::time::Instant::now(), |path| {
                self.clone().follow_vm(path.clone()).instrument(follower_span(path))
            });
            let found = find_sockets(&self.config.socket_globs);
            let gone: Vec<PathBuf> = tasks.keys().filter(|p| !found.contains(*p)).cloned().collect();
            for path in gone {
                tasks.stop(&path);
                self.services.write().unwrap_or_else(|e| e.into_inner()).remove(&path);
                self.write().vms.remove(&path);
                info!(socket = %path.display(), "VM gone");
                self.bump();
            }
            for path in found {
                if tasks.contains(&path) {
                    continue;
                }
                info!(socket = %path.display(), "VM found");
                self.write().vms.insert(path.clone(), new_vm(&path));
                self.bump();
                let span = follower_span(&path);
                tasks.start(path.clone(), self.clone().follow_vm(path).instrument(span));
            }
            if !self.synced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                info!(vms = tasks.len(), "VM sockets scanned");
                self.bump();
            }
        }
        tasks.stop_all();
    }

    fn update(&self, socket: &Path, f: impl FnOnce(&mut Vm)) {
        let mut index = self.write();
        if let Some(vm) = index.vms.get_mut(socket) {
            f(vm);
        }
        drop(index);
        self.bump();
    }

    /// Keeps the QMP connection of one VM: connect, learn what it is, apply its events; on loss,
    /// say so and try again.
    async fn follow_vm(self, socket: PathBuf) {
        loop {
            let result = self.session(&socket).await;
            self.services.write().unwrap_or_else(|e| e.into_inner()).remove(&socket);
            let message = match result {
                Ok(()) => QmpError::Closed.message(),
                Err(e) => e.message(),
            };
            debug!(socket = %socket.display(), "QMP: {message}");
            // QMP lost: is the process gone too? Looked at on every retry, as the sampling of
            // a session is not there to tell.
            self.update(&socket, |vm| {
                if vm.qmp.as_ref().err() != Some(&message) {
                    vm.qmp = Err(message);
                }
                vm.sample_process(std::time::Instant::now());
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn session(&self, socket: &Path) -> Result<(), QmpError> {
        let stream = UnixStream::connect(socket).await.map_err(QmpError::Connect)?;
        let pid = peer_pid(&stream);
        let negotiation = tokio::time::timeout(Duration::from_secs(5), QmpStreamTokio::open(stream))
            .await
            .map_err(|_| QmpError::NoGreeting)?
            .map_err(QmpError::Greeting)?;
        let qapi_stream = tokio::time::timeout(Duration::from_secs(5), negotiation.negotiate())
            .await
            .map_err(|_| QmpError::NegotiationTimeout)?
            .map_err(QmpError::Negotiate)?;
        let (service, mut events) = qapi_stream.into_parts();
        let service = Arc::new(service);
        // Replies are read by the event stream: it is pumped for as long as the session lasts,
        // and everything else simply awaits its commands.
        let pump = async {
            while let Some(event) = events.next().await {
                let event = event.map_err(QmpError::Stream)?;
                self.apply_event(socket, &event);
            }
            Ok(())
        };
        let work = async {
            let name = service.execute(qmp::query_name {}).await.ok().and_then(|n| n.name);
            let status = service.execute(qmp::query_status {}).await.map_err(QmpError::QueryStatus)?;
            let cpus = service.execute(QueryCpusFast {}).await.ok();
            let memory = service.execute(qmp::query_memory_size_summary {}).await.ok();
            let vcpus = cpus.as_ref().and_then(Value::as_array).map_or(0, |a| a.len() as u32);
            let memory_mb =
                memory.map_or(0, |m| (m.base_memory + m.plugged_memory.unwrap_or(0)) / (1024 * 1024));
            let status = enum_name(&status.status);
            self.services
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(socket.to_owned(), service.clone());
            self.update(socket, |vm| {
                if let Some(name) = name.filter(|n| !n.is_empty()) {
                    vm.name = name;
                }
                if pid.is_some() && pid != vm.pid {
                    vm.pid = pid;
                    vm.cpu_sample = None;
                }
                vm.sample_process(std::time::Instant::now());
                vm.vcpus = vcpus;
                vm.memory_mb = memory_mb;
                if status == "running" && vm.started_at.is_none() {
                    vm.started_at = Some(std::time::Instant::now());
                }
                vm.status = Some(status.clone());
                vm.qmp = Ok(());
            });
            info!(socket = %socket.display(), status, vcpus, memory_mb, "QMP connected");
            let mut volumes_tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                volumes_tick.tick().await;
                self.update(socket, |vm| vm.sample_process(std::time::Instant::now()));
                self.look_at_volumes(socket, &service).await;
            }
        };
        tokio::select! {
            r = pump => r,
            r = work => r,
        }
    }

    fn apply_event(&self, socket: &Path, event: &qmp::Event) {
        let status = match event {
            qmp::Event::STOP { .. } => Some("paused"),
            qmp::Event::RESUME { .. } => Some("running"),
            qmp::Event::SHUTDOWN { .. } => Some("shutdown"),
            qmp::Event::GUEST_PANICKED { .. } => Some("guest-panicked"),
            _ => None,
        };
        if matches!(event, qmp::Event::RESET { .. } | qmp::Event::SHUTDOWN { .. }) {
            let reset = matches!(event, qmp::Event::RESET { .. });
            self.update(socket, |vm| {
                vm.guest_agent_seen = false;
                vm.address = None;
                vm.started_at = reset.then(std::time::Instant::now);
            });
        }
        match (status, event) {
            (Some(status), _) => {
                debug!(socket = %socket.display(), status, "QMP event");
                self.update(socket, |vm| vm.status = Some(status.to_owned()));
            }
            (None, qmp::Event::VSERPORT_CHANGE { data, .. }) => {
                let open = data.open;
                self.update(socket, |vm| vm.guest_port_open = Some(open));
            }
            (None, qmp::Event::BLOCK_IO_ERROR { data, .. }) => {
                let what = format!("{:?}", data);
                self.update(socket, |vm| {
                    vm.volumes.push(Observation::new("io-error", CheckStatus::Impaired, what));
                });
            }
            _ => {}
        }
    }

    async fn look_at_volumes(&self, socket: &Path, service: &Service) {
        let (Ok(block), Ok(stats)) =
            (service.execute(QueryBlock {}).await, service.execute(QueryBlockstats {}).await)
        else {
            return;
        };
        let baseline = self.read().vms.get(socket).map(|v| v.failed_baseline.clone()).unwrap_or_default();
        let (volumes, failed) = block_observations(&block, &stats, &baseline);
        let mut index = self.write();
        let Some(vm) = index.vms.get_mut(socket) else { return };
        for (device, n) in failed {
            vm.failed_baseline.entry(device).or_insert(n);
        }
        if vm.volumes != volumes {
            vm.volumes = volumes;
            drop(index);
            self.bump();
        }
    }

    async fn learn_address(&self, socket: &Path, qga_socket: &Path, timeout: Duration) {
        let Ok(interfaces) = qga::execute(qga_socket, "guest-network-get-interfaces", None, timeout).await
        else {
            return;
        };
        let address = interfaces.as_array().into_iter().flatten().find_map(|i| {
            i["ip-addresses"].as_array()?.iter().find_map(|a| {
                let ip = a["ip-address"].as_str()?;
                (a["ip-address-type"] == "ipv4" && !ip.starts_with("127.")).then(|| ip.to_owned())
            })
        });
        if address.is_some() {
            self.update(socket, |vm| vm.address = address);
        }
    }

    fn note_guest_agent(&self, socket: &Path) {
        let mut index = self.write();
        if let Some(vm) = index.vms.get_mut(socket) {
            vm.guest_agent_seen = true;
        }
    }

    async fn qmp_checks(&self, socket: &Path, spec: &QmpSpec, timeout: Duration) -> Outcome {
        let Some(vm) = self.read().vms.get(socket).cloned() else {
            return Outcome::unknown(Cause::Gone, "the VM is gone");
        };
        if let Err(e) = &vm.qmp {
            return Outcome::unknown(Cause::RuntimeUnreachable, format!("QMP does not answer: {e}"));
        }
        let mut passed = Vec::new();
        for check in &spec.checks {
            match check.as_str() {
                "runState" => match vm.status.as_deref() {
                    Some("running") => passed.push("running".to_owned()),
                    Some("paused") => return Outcome::unknown(Cause::Paused, "paused"),
                    Some(other) => {
                        return Outcome::unhealthy(Reason::NotRunning, format!("run state {other}"));
                    }
                    None => return Outcome::unknown(Cause::Pending, "run state not known yet"),
                },
                "guestAgent" => {
                    let Some(qga_socket) = vm.qga_socket() else {
                        return Outcome::unknown(
                            Cause::NoGuestAgent,
                            "no guest-agent socket beside the QMP socket",
                        );
                    };
                    // The port closed (VSERPORT_CHANGE): no need to wait for a timeout.
                    if vm.guest_agent_seen && vm.guest_port_open == Some(false) {
                        return Outcome::unhealthy(
                            Reason::GuestAgent,
                            "reachability: the guest closed the guest-agent port (the agent stopped)",
                        );
                    }
                    match qga::execute(&qga_socket, "guest-ping", None, timeout).await {
                        Ok(_) => {
                            self.note_guest_agent(socket);
                            if vm.address.is_none() {
                                self.learn_address(socket, &qga_socket, timeout).await;
                            }
                            passed.push("guest agent answers".to_owned());
                        }
                        Err(e) => return guest_agent_silent(&vm, &e, spec.boot_grace),
                    }
                }
                "blockDevices" => {
                    if let Some(bad) = vm.volumes.iter().find(|o| o.status == CheckStatus::Impaired) {
                        return Outcome::unhealthy(Reason::Io, format!("{}: {}", bad.name, bad.message));
                    }
                    passed.push(format!("{} block devices ok", vm.volumes.len()));
                }
                "filesystems" => {
                    let Some(qga_socket) = vm.qga_socket() else {
                        return Outcome::unknown(
                            Cause::NoGuestAgent,
                            "no guest-agent socket beside the QMP socket",
                        );
                    };
                    match qga::execute(&qga_socket, "guest-get-fsinfo", None, timeout).await {
                        Ok(fs) => {
                            if let Some(full) = full_filesystem(&fs, spec.filesystem_usage_percent) {
                                return Outcome::unhealthy(Reason::FilesystemFull, full);
                            }
                            passed.push(format!("filesystems below {}%", spec.filesystem_usage_percent));
                        }
                        Err(e) => return guest_agent_silent(&vm, &e, spec.boot_grace),
                    }
                }
                "readOnlyFilesystems" => {
                    let text = match guest_file(&vm, "/proc/mounts", spec, timeout).await {
                        Ok(text) => text,
                        Err(outcome) => return outcome,
                    };
                    let (read_only, writable) = guest::read_only_filesystems(&text, &spec.read_only_allowed);
                    if !read_only.is_empty() {
                        return Outcome::unhealthy(
                            Reason::ReadOnly,
                            format!("mounted read-only in the guest: {}", read_only.join(", ")),
                        );
                    }
                    passed.push(format!("{writable} guest filesystems writable"));
                }
                "guestMemory" => {
                    let text = match guest_file(&vm, "/proc/meminfo", spec, timeout).await {
                        Ok(text) => text,
                        Err(outcome) => return outcome,
                    };
                    let Some((available, total)) = guest::memory(&text) else {
                        return Outcome::unknown(
                            Cause::Pending,
                            "the guest's /proc/meminfo has no MemTotal and MemAvailable (or MemFree)",
                        );
                    };
                    let percent = available as f64 / total as f64 * 100.0;
                    let figures = format!(
                        "{percent:.0}% of guest memory available ({} of {} MiB)",
                        available / 1024,
                        total / 1024
                    );
                    if percent < f64::from(spec.memory_available_percent) {
                        return Outcome::unhealthy(
                            Reason::Memory,
                            format!("{figures}, below {}%", spec.memory_available_percent),
                        );
                    }
                    passed.push(figures);
                }
                "console" => {
                    let Some(service) = self.service(socket) else {
                        return Outcome::unknown(Cause::RuntimeUnreachable, "QMP does not answer");
                    };
                    match consoles(&service).await {
                        Ok((consoles, vnc)) => {
                            let text = guest::describe(&consoles, vnc.as_ref());
                            if consoles.is_empty() && !vnc.is_some_and(|v| v.enabled) {
                                return Outcome::unhealthy(
                                    Reason::NoConsole,
                                    format!("no serial console and no VNC server ({text})"),
                                );
                            }
                            passed.push(text);
                        }
                        Err(e) => {
                            return Outcome::unknown(
                                Cause::RuntimeUnreachable,
                                format!("query-chardev: {e}"),
                            );
                        }
                    }
                }
                other => return Outcome::unknown(Cause::Misconfigured, format!("unknown qmp check {other}")),
            }
        }
        Outcome::healthy(passed.join("; "))
    }
}

/// A file of the guest through its guest agent, or the outcome of not getting it: a command
/// the guest agent refuses is `insufficient-data` naming it, silence is judged as for
/// `guestAgent`.
async fn guest_file(vm: &Vm, path: &str, spec: &QmpSpec, timeout: Duration) -> Result<String, Outcome> {
    let Some(qga_socket) = vm.qga_socket() else {
        return Err(Outcome::unknown(Cause::NoGuestAgent, "no guest-agent socket beside the QMP socket"));
    };
    match guest::read_file(&qga_socket, path, timeout).await {
        Ok(text) => Ok(text),
        Err(qga::QgaError::Refused { command, message }) => Err(Outcome::unknown(
            Cause::Disallowed,
            format!("the guest agent does not allow {command} ({path}): {message}"),
        )),
        Err(e) => Err(guest_agent_silent(vm, &e, spec.boot_grace)),
    }
}

/// The VM's serial consoles (the chardevs its serial devices use) and its VNC server, if QEMU
/// has VNC at all.
async fn consoles(service: &Service) -> Result<(Vec<guest::Console>, Option<qmp::VncInfo>), String> {
    let chardevs = service.execute(qmp::query_chardev {}).await.map_err(|e| e.to_string())?;
    let mut serial = Vec::new();
    for folder in guest::DEVICE_FOLDERS {
        let Ok(children) = service.execute(qmp::qom_list { path: (*folder).to_owned() }).await else {
            continue;
        };
        for child in children.iter().filter(|c| guest::CONSOLE_DEVICES.contains(&c.type_.as_str())) {
            let path = format!("{folder}/{}", child.name);
            let chardev = service.execute(qmp::qom_get { path, property: "chardev".to_owned() }).await;
            if let Some(label) = chardev.ok().as_ref().and_then(Value::as_str) {
                serial.push(label.to_owned());
            }
        }
    }
    let vnc = service.execute(qmp::query_vnc {}).await.ok();
    Ok((guest::consoles(&chardevs, &serial), vnc))
}

/// A guest agent that does not answer: a failure once it has answered since the guest started;
/// before that a guest still booting, until the boot grace is over: then a stuck boot.
fn guest_agent_silent(vm: &Vm, e: &qga::QgaError, boot_grace: Duration) -> Outcome {
    if vm.guest_agent_seen {
        return Outcome::unhealthy(Reason::GuestAgent, format!("reachability: {e}"));
    }
    let booting = vm.started_at.map(|t| t.elapsed());
    match booting {
        Some(for_) if for_ >= boot_grace => Outcome::unhealthy(
            Reason::Boot,
            format!(
                "the guest agent has not answered in the {} s since the VM started (boot grace {} s): a stuck boot? {e}",
                for_.as_secs(),
                boot_grace.as_secs()
            ),
        ),
        _ => Outcome::unknown(
            Cause::NoGuestAgent,
            format!("the guest agent has not answered since the VM started: {e}"),
        ),
    }
}

fn enum_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn new_vm(socket: &Path) -> Vm {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let file = socket.file_name().and_then(|f| f.to_str()).unwrap_or("");
    // `/run/vigil/vms/<name>/qmp.sock`, or libvirt's `<name>.monitor`.
    let name = match file.strip_suffix(".monitor") {
        Some(stem) => stem.to_owned(),
        None => dir.file_name().and_then(|n| n.to_str()).unwrap_or("vm").to_owned(),
    };
    Vm {
        name,
        qmp_socket: socket.to_owned(),
        pid: None,
        vcpus: 0,
        memory_mb: 0,
        host_cpu_percent: None,
        host_rss_bytes: None,
        process_alive: false,
        cpu_sample: None,
        started_at: None,
        status: None,
        qmp: Err("not connected yet".to_owned()),
        guest_port_open: None,
        guest_agent_seen: false,
        address: None,
        failed_baseline: BTreeMap::new(),
        volumes: Vec::new(),
    }
}

fn find_sockets(globs: &[String]) -> std::collections::BTreeSet<PathBuf> {
    let mut found = std::collections::BTreeSet::new();
    for pattern in globs {
        let Ok(paths) = glob::glob(pattern) else {
            warn!(pattern, "not a glob pattern");
            continue;
        };
        found.extend(paths.flatten());
    }
    found
}

fn peer_pid(stream: &UnixStream) -> Option<i32> {
    use std::os::fd::AsFd;
    rustix::net::sockopt::socket_peercred(stream.as_fd()).ok().map(|c| c.pid.as_raw_nonzero().get())
}

/// Attached-volume observations from `query-block` and `query-blockstats`, and the failed
/// operation counts per device.
fn block_observations(
    block: &Value,
    stats: &Value,
    baseline: &BTreeMap<String, i64>,
) -> (Vec<Observation>, Vec<(String, i64)>) {
    let mut failed = Vec::new();
    for s in stats.as_array().into_iter().flatten() {
        let Some(device) = s["device"].as_str().filter(|d| !d.is_empty()) else { continue };
        let n: i64 = ["failed_rd_operations", "failed_wr_operations", "failed_flush_operations"]
            .iter()
            .filter_map(|k| s["stats"][k].as_i64())
            .sum();
        failed.push((device.to_owned(), n));
    }
    let observations = block
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            let device = b["device"].as_str()?.to_owned();
            let inserted = b.get("inserted").is_some_and(|i| !i.is_null());
            let io_status = b["io-status"].as_str().unwrap_or("ok");
            let new_errors = failed
                .iter()
                .find(|(d, _)| *d == device)
                .map_or(0, |(d, n)| n - baseline.get(d).copied().unwrap_or(*n));
            let file = b["inserted"]["file"].as_str().unwrap_or("").to_owned();
            Some(if !inserted && b["removable"] != Value::Bool(true) {
                Observation::new(&device, CheckStatus::Impaired, "no medium inserted")
            } else if io_status != "ok" {
                Observation::new(&device, CheckStatus::Impaired, format!("io-status {io_status}"))
            } else if new_errors > 0 {
                Observation::new(&device, CheckStatus::Impaired, format!("{new_errors} failed operations"))
            } else {
                Observation::new(&device, CheckStatus::Ok, file)
            })
        })
        .collect();
    (observations, failed)
}

/// The first guest filesystem fuller than `limit` percent, described.
fn full_filesystem(fsinfo: &Value, limit: u8) -> Option<String> {
    fsinfo.as_array()?.iter().find_map(|fs| {
        let total = fs["total-bytes"].as_f64()?;
        let used = fs["used-bytes"].as_f64()?;
        let percent = used / total * 100.0;
        (total > 0.0 && percent > f64::from(limit)).then(|| {
            format!("{} is {percent:.0}% full (limit {limit}%)", fs["mountpoint"].as_str().unwrap_or("?"))
        })
    })
}

impl VmRuntime for QemuRuntime {
    fn qmp<'a>(&'a self, vm: &'a str, spec: &'a QmpSpec, timeout: Duration) -> OutcomeFuture<'a> {
        Box::pin(async move {
            let (this, socket, spec) = (self.clone(), PathBuf::from(vm), spec.clone());
            match self.handle.spawn(async move { this.qmp_checks(&socket, &spec, timeout).await }).await {
                Ok(outcome) => outcome,
                Err(e) => Outcome::unknown(Cause::Internal, format!("internal error: {e}")),
            }
        })
    }
}

impl Inventory for QemuRuntime {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn first_sync(&self) -> &'static str {
        "VM sockets scanned"
    }

    fn kind(&self) -> InstanceKind {
        InstanceKind::Vm
    }

    fn instances(&self, node: &str) -> Vec<Instance> {
        QemuRuntime::instances(self, node)
    }

    fn synced(&self) -> bool {
        QemuRuntime::synced(self)
    }

    fn changes(&self) -> Option<tokio_watch::Receiver<u64>> {
        Some(self.subscribe())
    }

    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The span of a VM's follower.
fn follower_span(socket: &Path) -> tracing::Span {
    info_span!("follower", vm = %socket.display())
}

/// The `restartVM` action: `system_reset`, then wait for the guest agent; when the guest does
/// not come back in time, the configured command.
#[derive(Clone, Debug)]
pub struct RestartVm(pub QemuRuntime);

impl ActionExecutor for RestartVm {
    fn execute<'a>(&'a self, request: &'a ActionRequest) -> ActionFuture<'a> {
        Box::pin(async move {
            let qemu = self.0.clone();
            let name = request.instance_name.clone();
            qemu.handle
                .clone()
                .spawn(async move { restart(&qemu, &name).await })
                .await
                .map_err(|e| ActionError::Failed(format!("internal error: {e}")))?
        })
    }
}

async fn restart(qemu: &QemuRuntime, name: &str) -> Result<String, ActionError> {
    let vm = qemu.find(name).ok_or_else(|| ActionError::Failed(format!("VM {name} is gone")))?;
    let reset = match qemu.service(&vm.qmp_socket) {
        Some(service) => service.execute(qmp::system_reset {}).await.map(|_| ()).map_err(|e| e.to_string()),
        None => Err("QMP does not answer".to_owned()),
    };
    let deadline = tokio::time::Instant::now() + qemu.config.reset_timeout;
    if reset.is_ok()
        && let Some(qga_socket) = vm.qga_socket()
    {
        let started = tokio::time::Instant::now();
        // Give the reset a moment to take the old agent away before asking.
        tokio::time::sleep(Duration::from_secs(1)).await;
        while tokio::time::Instant::now() < deadline {
            if qga::execute(&qga_socket, "guest-ping", None, Duration::from_secs(3)).await.is_ok() {
                return Ok(format!("system_reset; guest agent back after {}s", started.elapsed().as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    } else if reset.is_ok() {
        return Ok("system_reset (no guest agent to wait for)".to_owned());
    }
    let why = match &reset {
        Ok(()) => format!(
            "the guest agent did not answer within {}s of system_reset",
            qemu.config.reset_timeout.as_secs()
        ),
        Err(e) => format!("system_reset failed: {e}"),
    };
    let Some(command) = &qemu.config.restart_command else {
        return Err(ActionError::Failed(format!("{why}; no --vm-restart-command to escalate to")));
    };
    let dir = vm.qmp_socket.parent().map(|d| d.display().to_string()).unwrap_or_default();
    let output = tokio::process::Command::new("sh")
        .args(["-c", command])
        .env("VIGIL_VM_NAME", &vm.name)
        .env("VIGIL_VM_DIR", dir)
        .output()
        .await
        .map_err(|e| ActionError::Failed(format!("{why}; cannot run the restart command: {e}")))?;
    if output.status.success() {
        Ok(format!("{why}; ran the restart command"))
    } else {
        Err(ActionError::Failed(format!(
            "{why}; the restart command failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn block_devices_and_new_errors() {
        let block = json!([{"device": "data0", "removable": false, "io-status": "ok", "inserted": {"file": "/d.img"}}]);
        let stats = json!([{"device": "data0", "stats": {"failed_rd_operations": 2, "failed_wr_operations": 0, "failed_flush_operations": 0}}]);
        let (seen, failed) = block_observations(&block, &stats, &BTreeMap::new());
        assert_eq!(seen[0].status, CheckStatus::Ok, "errors from before are the baseline");
        let baseline: BTreeMap<_, _> = failed.into_iter().collect();
        let stats = json!([{"device": "data0", "stats": {"failed_rd_operations": 3, "failed_wr_operations": 1, "failed_flush_operations": 0}}]);
        let (seen, _) = block_observations(&block, &stats, &baseline);
        assert_eq!(seen[0].status, CheckStatus::Impaired);
        assert_eq!(seen[0].message, "2 failed operations");
        let broken = json!([{"device": "data0", "removable": false, "io-status": "failed", "inserted": {"file": "/d.img"}}]);
        assert_eq!(block_observations(&broken, &json!([]), &baseline).0[0].message, "io-status failed");
        let empty = json!([{"device": "data0", "removable": false}]);
        assert_eq!(block_observations(&empty, &json!([]), &baseline).0[0].message, "no medium inserted");
    }

    #[tokio::test]
    async fn a_vm_that_cannot_be_reset_escalates_to_the_restart_command() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("db").join("qmp.sock");
        let marker = dir.path().join("escalated");
        let config = |command: Option<String>| QemuConfig {
            socket_globs: Vec::new(),
            rescan: Duration::from_secs(2),
            reset_timeout: Duration::from_secs(1),
            restart_command: command,
        };
        let command = format!("echo \"$VIGIL_VM_NAME $VIGIL_VM_DIR\" > {}", marker.display());
        let qemu = QemuRuntime::new(config(Some(command)));
        // Known, but QMP does not answer: system_reset cannot be sent.
        qemu.write().vms.insert(socket.clone(), new_vm(&socket));
        let done = restart(&qemu, "db").await.unwrap();
        assert!(done.contains("system_reset failed") && done.contains("ran the restart command"), "{done}");
        let seen = std::fs::read_to_string(&marker).unwrap();
        assert_eq!(seen.trim(), format!("db {}", dir.path().join("db").display()));

        // Without a command to escalate to, the action fails and says what is missing.
        let qemu = QemuRuntime::new(config(None));
        qemu.write().vms.insert(socket.clone(), new_vm(&socket));
        let failed = restart(&qemu, "db").await.unwrap_err().to_string();
        assert!(failed.contains("no --vm-restart-command"), "{failed}");
        // A failing command is a failed action.
        let qemu = QemuRuntime::new(config(Some("echo no >&2; exit 3".to_owned())));
        qemu.write().vms.insert(socket.clone(), new_vm(&socket));
        let failed = restart(&qemu, "db").await.unwrap_err().to_string();
        assert!(failed.contains("the restart command failed") && failed.contains("no"), "{failed}");
    }

    #[test]
    fn full_filesystems_are_named() {
        let fs = json!([{"mountpoint": "/data", "total-bytes": 100, "used-bytes": 95}]);
        assert_eq!(full_filesystem(&fs, 90).as_deref(), Some("/data is 95% full (limit 90%)"));
        assert_eq!(full_filesystem(&fs, 96), None);
    }
}
