//! Probers: one probe in, one outcome out, no state.
//!
//! A probe that could not run is not a probe that failed: every prober answers with one of three
//! [`Outcome`]s. `Unhealthy` carries a [`Reason`] from a small fixed set (usable as a metric
//! label); `Unknown` feeds `insufficient-data` and never a restart.

pub mod arp;
pub mod exec;
pub mod grpc;
pub mod http;
pub mod icmp;
mod net;
pub mod tcp;
pub(crate) mod tls;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use net::{AddressPolicy, is_link_local};

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The target passed.
    Healthy {
        /// What was seen, e.g. `200 OK`.
        message: String,
    },
    /// The target answered wrongly or not at all.
    Unhealthy {
        /// Why, from a fixed set.
        reason: Reason,
        /// Details for a person.
        message: String,
    },
    /// The probe could not be run; nothing is known about the target.
    Unknown {
        /// Why, from a fixed set.
        cause: Cause,
        /// What went wrong on our side.
        error: String,
    },
}

impl Outcome {
    /// A healthy outcome.
    pub fn healthy(message: impl Into<String>) -> Outcome {
        Outcome::Healthy { message: message.into() }
    }

    /// An unhealthy outcome.
    pub fn unhealthy(reason: Reason, message: impl Into<String>) -> Outcome {
        Outcome::Unhealthy { reason, message: message.into() }
    }

    /// An outcome for a probe that could not run.
    pub fn unknown(cause: Cause, error: impl Into<String>) -> Outcome {
        Outcome::Unknown { cause, error: error.into() }
    }

    /// `healthy`, `unhealthy` or `unknown`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Healthy { .. } => "healthy",
            Outcome::Unhealthy { .. } => "unhealthy",
            Outcome::Unknown { .. } => "unknown",
        }
    }

    /// The message or error text.
    pub fn message(&self) -> &str {
        match self {
            Outcome::Healthy { message } | Outcome::Unhealthy { message, .. } => message,
            Outcome::Unknown { error, .. } => error,
        }
    }

    /// The bounded reason or cause, for a metric label or an Event reason: the failure reason
    /// of an unhealthy outcome, the cause of an unknown one.
    pub fn label(&self) -> Option<&'static str> {
        match self {
            Outcome::Healthy { .. } => None,
            Outcome::Unhealthy { reason, .. } => Some(reason.as_str()),
            Outcome::Unknown { cause, .. } => Some(cause.as_str()),
        }
    }

    /// The failure reason, for unhealthy outcomes.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Outcome::Unhealthy { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// Why a probe failed. A closed set, so that it can label metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// No answer within the timeout.
    Timeout,
    /// The name did not resolve.
    Dns,
    /// The connection was refused.
    Refused,
    /// The connection was reset or closed early.
    Reset,
    /// No route to the host or network.
    Unreachable,
    /// Another connection error.
    Connect,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The peer spoke something that is not the expected protocol.
    Protocol,
    /// An HTTP status outside the expected range.
    Status,
    /// The HTTP body did not match.
    Body,
    /// Too many redirects.
    Redirect,
    /// A command exited non-zero.
    ExitCode,
    /// A command was killed by a signal.
    Signal,
    /// gRPC health answered `NOT_SERVING` (or `UNKNOWN`).
    NotServing,
    /// gRPC health does not know the service asked for.
    ServiceUnknown,
    /// A gRPC call failed with a status code.
    GrpcStatus,
    /// A workload reported itself unhealthy (e.g. Docker HEALTHCHECK).
    Unhealthy,
    /// A workload is not running (stopped, paused, crashed).
    NotRunning,
    /// A guest agent did not answer.
    GuestAgent,
    /// A block device or volume reports errors.
    Io,
    /// A filesystem is fuller than allowed.
    FilesystemFull,
    /// More echo requests went unanswered than allowed.
    PacketLoss,
    /// The address has no complete neighbour entry (it did not answer ARP).
    NoNeighbour,
    /// A VM's guest agent never answered within the boot grace: a stuck boot.
    Boot,
    /// A filesystem that takes writes is mounted read-only (as after I/O errors).
    ReadOnly,
    /// Memory available is below the limit.
    Memory,
    /// The VM has neither a serial console nor a VNC server.
    NoConsole,
}

impl Reason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Dns => "dns",
            Reason::Refused => "refused",
            Reason::Reset => "reset",
            Reason::Unreachable => "unreachable",
            Reason::Connect => "connect",
            Reason::Tls => "tls",
            Reason::Protocol => "protocol",
            Reason::Status => "status",
            Reason::Body => "body",
            Reason::Redirect => "redirect",
            Reason::ExitCode => "exit-code",
            Reason::Signal => "signal",
            Reason::NotServing => "not-serving",
            Reason::ServiceUnknown => "service-unknown",
            Reason::GrpcStatus => "grpc-status",
            Reason::Unhealthy => "unhealthy",
            Reason::NotRunning => "not-running",
            Reason::GuestAgent => "guest-agent",
            Reason::Io => "io-error",
            Reason::FilesystemFull => "filesystem-full",
            Reason::PacketLoss => "packet-loss",
            Reason::NoNeighbour => "no-neighbour",
            Reason::Boot => "boot",
            Reason::ReadOnly => "read-only-filesystem",
            Reason::Memory => "memory-exhausted",
            Reason::NoConsole => "no-console",
        }
    }

    /// Parses a label value back (used when state is restored from disk).
    pub fn parse(s: &str) -> Option<Reason> {
        ALL_REASONS.iter().copied().find(|r| r.as_str() == s)
    }
}

/// Why a probe could not run. A closed set, so that it can label metrics and Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// This agent has no runtime for the probe (no Docker socket, no QEMU).
    NoRuntime,
    /// The probe does not fit its target (a `qmp` probe on containers, a named port outside a
    /// pod, a link-local address not allowed).
    Misconfigured,
    /// The target has no address to probe yet.
    NoAddress,
    /// The runtime that answers for the target does not (the Docker daemon, QMP).
    RuntimeUnreachable,
    /// The VM's guest agent is absent or has never answered.
    NoGuestAgent,
    /// The instance is gone.
    Gone,
    /// Paused by its owner.
    Paused,
    /// No verdict yet (a HEALTHCHECK that has not run, a run state not read yet).
    Pending,
    /// The runtime refused a command the probe needs (a guest agent that blocks
    /// `guest-file-open`).
    Disallowed,
    /// Something on this host failed (a command could not start, a socket could not be made).
    Local,
    /// A fault in vigil itself (a probe that panicked).
    Internal,
}

impl Cause {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NoRuntime => "no-runtime",
            Cause::Misconfigured => "misconfigured",
            Cause::NoAddress => "no-address",
            Cause::RuntimeUnreachable => "runtime-unreachable",
            Cause::NoGuestAgent => "no-guest-agent",
            Cause::Gone => "gone",
            Cause::Paused => "paused",
            Cause::Pending => "pending",
            Cause::Disallowed => "disallowed",
            Cause::Local => "local-error",
            Cause::Internal => "internal-error",
        }
    }

    /// Parses a label value back.
    pub fn parse(s: &str) -> Option<Cause> {
        ALL_CAUSES.iter().copied().find(|c| c.as_str() == s)
    }
}

/// Every cause, for parsing and documentation.
pub const ALL_CAUSES: &[Cause] = &[
    Cause::NoRuntime,
    Cause::Misconfigured,
    Cause::NoAddress,
    Cause::RuntimeUnreachable,
    Cause::NoGuestAgent,
    Cause::Gone,
    Cause::Paused,
    Cause::Pending,
    Cause::Disallowed,
    Cause::Local,
    Cause::Internal,
];

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every reason, for parsing and documentation.
pub const ALL_REASONS: &[Reason] = &[
    Reason::Timeout,
    Reason::Dns,
    Reason::Refused,
    Reason::Reset,
    Reason::Unreachable,
    Reason::Connect,
    Reason::Tls,
    Reason::Protocol,
    Reason::Status,
    Reason::Body,
    Reason::Redirect,
    Reason::ExitCode,
    Reason::Signal,
    Reason::NotServing,
    Reason::ServiceUnknown,
    Reason::GrpcStatus,
    Reason::Unhealthy,
    Reason::NotRunning,
    Reason::GuestAgent,
    Reason::Io,
    Reason::FilesystemFull,
    Reason::PacketLoss,
    Reason::NoNeighbour,
    Reason::Boot,
    Reason::ReadOnly,
    Reason::Memory,
    Reason::NoConsole,
];

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a probe, for `vigil check --verbose`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// `resolve`, `connect`, `tls`, `first-byte`, `body`, `redirect`, `spawn`, `exit`…
    pub name: &'static str,
    /// Time since the probe started when the step ended.
    pub at: Duration,
    /// What the step found.
    pub detail: String,
}

/// Collects steps when asked to; costs nothing otherwise.
#[derive(Debug)]
pub struct Trace {
    start: Instant,
    steps: Option<Vec<Step>>,
}

impl Trace {
    /// A trace that records steps when `enabled`.
    pub fn new(enabled: bool) -> Trace {
        Trace { start: Instant::now(), steps: enabled.then(Vec::new) }
    }

    /// Whether steps are recorded.
    pub fn enabled(&self) -> bool {
        self.steps.is_some()
    }

    /// Records a step ending now. The detail is only built when the trace is enabled.
    pub fn step(&mut self, name: &'static str, detail: impl FnOnce() -> String) {
        if let Some(steps) = &mut self.steps {
            steps.push(Step { name, at: self.start.elapsed(), detail: detail() });
        }
    }

    /// The recorded steps.
    pub fn into_steps(self) -> Vec<Step> {
        self.steps.unwrap_or_default()
    }
}

/// One probe's outcome with its timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// What the probe found.
    pub outcome: Outcome,
    /// How long it took.
    pub duration: Duration,
    /// Steps, when tracing was asked for.
    pub steps: Vec<Step>,
}

/// A port: a number, or the name of a container port (resolved for pods only).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A named container port.
    Name(String),
}

/// What to probe, validated. Built from a HealthCheck's `spec.probe`, or by `vigil check`.
#[derive(Clone, Debug)]
pub enum ProbeSpec {
    /// HTTP GET.
    Http(http::HttpSpec),
    /// TCP connect.
    Tcp(tcp::TcpSpec),
    /// ICMP echo.
    Icmp(icmp::IcmpSpec),
    /// A complete neighbour (ARP) entry.
    Arp,
    /// gRPC health.
    Grpc(grpc::GrpcSpec),
    /// A command.
    Exec(exec::ExecSpec),
    /// Docker HEALTHCHECK state.
    Docker,
    /// QEMU checks.
    Qmp(QmpSpec),
}

impl ProbeSpec {
    /// The probe kind as written in the API (`http`, `tcp`…), also a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeSpec::Http(_) => "http",
            ProbeSpec::Tcp(_) => "tcp",
            ProbeSpec::Icmp(_) => "icmp",
            ProbeSpec::Arp => "arp",
            ProbeSpec::Grpc(_) => "grpc",
            ProbeSpec::Exec(_) => "exec",
            ProbeSpec::Docker => "docker",
            ProbeSpec::Qmp(_) => "qmp",
        }
    }

    /// The port the probe uses unless the target address names one.
    pub fn port(&self) -> Option<&PortRef> {
        match self {
            ProbeSpec::Http(h) => h.port.as_ref(),
            ProbeSpec::Tcp(t) => t.port.as_ref(),
            ProbeSpec::Grpc(g) => g.port.as_ref(),
            _ => None,
        }
    }
}

/// QEMU checks to run (the prober arrives with the QEMU support).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QmpSpec {
    /// Which checks, by API name.
    pub checks: Vec<String>,
    /// Guest filesystem usage limit, percent.
    pub filesystem_usage_percent: u8,
    /// How long a guest agent that never answered is a guest still booting.
    pub boot_grace: Duration,
    /// Guest memory available below this percent is exhaustion.
    pub memory_available_percent: u8,
    /// Guest mount points read-only by design.
    pub read_only_allowed: Vec<String>,
}

/// Where a probe goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP address.
    pub host: String,
    /// Port given by the target itself (an endpoint's `host:port`); wins over the probe's.
    pub port: Option<u16>,
    /// Which addresses may be connected to.
    pub policy: AddressPolicy,
    /// Extra environment for `exec` probes (`VIGIL_INSTANCE_ID`…).
    pub env: Vec<(String, String)>,
    /// The container, for probes that go through the container runtime (`docker`, and `exec`
    /// inside the container).
    pub container: Option<String>,
    /// The VM (its QMP socket), for `qmp` probes.
    pub vm: Option<String>,
    /// Named ports of the target (a pod's container ports).
    pub ports: Vec<(String, u16)>,
}

impl Target {
    /// A target at `host`, with the default address policy.
    pub fn new(host: impl Into<String>) -> Target {
        Target {
            host: host.into(),
            port: None,
            policy: AddressPolicy::default(),
            env: Vec::new(),
            container: None,
            vm: None,
            ports: Vec::new(),
        }
    }
}

/// A boxed probe outcome.
pub type OutcomeFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// What probes of containers need from the container runtime (Docker). Behind a trait so that
/// an agent without a runtime still runs, and the engine is testable without a daemon.
pub trait ContainerRuntime: Send + Sync + fmt::Debug {
    /// The container's own verdict: its HEALTHCHECK state, or its run state when it has none.
    fn health(&self, container: &str) -> Outcome;
    /// Why a network probe cannot reach the container (it has no address); `None` when it can.
    fn unreachable(&self, container: &str) -> Option<Outcome>;
    /// Runs a command inside the container; it must end within `timeout`.
    fn exec<'a>(&'a self, container: &'a str, command: &'a [String], timeout: Duration) -> OutcomeFuture<'a>;
}

/// What the `qmp` probe needs from the QEMU runtime.
pub trait VmRuntime: Send + Sync + fmt::Debug {
    /// Runs the QMP and guest-agent checks of `spec` on the VM whose QMP socket is `vm`.
    fn qmp<'a>(&'a self, vm: &'a str, spec: &'a QmpSpec, timeout: Duration) -> OutcomeFuture<'a>;
}

/// Runs probes. Holds only what is expensive to build and never changes (TLS configurations,
/// the container runtime); every probe is independent.
#[derive(Clone, Debug)]
pub struct Prober {
    tls: Arc<tls::TlsConfigs>,
    user_agent: ::http::HeaderValue,
    containers: Option<Arc<dyn ContainerRuntime>>,
    vms: Option<Arc<dyn VmRuntime>>,
}

impl Prober {
    /// A prober that trusts the system's certificate store.
    pub fn new() -> Prober {
        Prober {
            tls: Arc::new(tls::TlsConfigs::load()),
            user_agent: ::http::HeaderValue::from_static(concat!("vigil/", env!("CARGO_PKG_VERSION"))),
            containers: None,
            vms: None,
        }
    }

    /// This prober, with a QEMU runtime for `qmp` probes.
    pub fn with_vms(mut self, runtime: Arc<dyn VmRuntime>) -> Prober {
        self.vms = Some(runtime);
        self
    }

    /// This prober, with a container runtime for `docker` probes and `exec` inside containers.
    pub fn with_containers(mut self, runtime: Arc<dyn ContainerRuntime>) -> Prober {
        self.containers = Some(runtime);
        self
    }

    /// Runs one probe against `target` within `timeout`.
    pub async fn run(&self, spec: &ProbeSpec, target: &Target, timeout: Duration, trace: bool) -> Report {
        let mut trace = Trace::new(trace);
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let runtime = || {
            self.containers.as_ref().ok_or_else(|| {
                Outcome::unknown(Cause::NoRuntime, "this agent has no Docker runtime (see --docker-socket)")
            })
        };
        let outcome = match (spec, &target.container) {
            // In the container: the runtime enforces the deadline.
            (ProbeSpec::Exec(exec), Some(container)) => match runtime() {
                Ok(rt) => rt.exec(container, &exec.command, timeout).await,
                Err(outcome) => outcome,
            },
            // On the host: the exec prober enforces its own deadline, it must kill the process
            // group.
            (ProbeSpec::Exec(exec), None) => exec::probe(exec, target, timeout, &mut trace).await,
            (ProbeSpec::Docker, Some(container)) => match runtime() {
                Ok(rt) => rt.health(container),
                Err(outcome) => outcome,
            },
            (ProbeSpec::Docker, None) => {
                Outcome::unknown(Cause::Misconfigured, "the docker probe applies to containers targets only")
            }
            (ProbeSpec::Qmp(qmp), _) => match (&self.vms, &target.vm) {
                (Some(rt), Some(vm)) => rt.qmp(vm, qmp, timeout).await,
                (None, _) => Outcome::unknown(
                    Cause::NoRuntime,
                    "this agent has no QEMU runtime (see --vm-socket-glob)",
                ),
                (_, None) => {
                    Outcome::unknown(Cause::Misconfigured, "the qmp probe applies to vms targets only")
                }
            },
            _ if target.host.is_empty() && target.vm.is_some() => Outcome::unknown(
                Cause::NoAddress,
                "the VM's address is not known yet (the guest agent reports it)",
            ),
            (_, Some(container)) if target.host.is_empty() => match runtime() {
                Ok(rt) => rt.unreachable(container).unwrap_or_else(|| {
                    Outcome::unknown(Cause::NoAddress, "the container has no IP address to probe")
                }),
                Err(outcome) => outcome,
            },
            _ => {
                match tokio::time::timeout_at(deadline, self.run_network(spec, target, deadline, &mut trace))
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        Outcome::unhealthy(Reason::Timeout, format!("no answer within {}", human(timeout)))
                    }
                }
            }
        };
        Report { outcome, duration: start.elapsed(), steps: trace.into_steps() }
    }

    async fn run_network(
        &self,
        spec: &ProbeSpec,
        target: &Target,
        deadline: tokio::time::Instant,
        trace: &mut Trace,
    ) -> Outcome {
        match spec {
            ProbeSpec::Http(http) => http::probe(http, target, &self.tls, &self.user_agent, trace).await,
            ProbeSpec::Tcp(tcp) => tcp::probe(tcp, target, trace).await,
            ProbeSpec::Icmp(icmp) => icmp::probe(icmp, target, deadline, trace).await,
            ProbeSpec::Arp => arp::probe(target, deadline, trace).await,
            ProbeSpec::Grpc(grpc) => grpc::probe(grpc, target, &self.tls, &self.user_agent, trace).await,
            ProbeSpec::Exec(_) | ProbeSpec::Docker => {
                Outcome::unknown(Cause::Internal, "internal error: a runtime probe on the network path")
            }
            ProbeSpec::Qmp(_) => {
                Outcome::unknown(Cause::Internal, "internal error: a runtime probe on the network path")
            }
        }
    }
}

impl Default for Prober {
    fn default() -> Self {
        Prober::new()
    }
}

/// A duration as a person writes it: `1s`, `250ms`, `1.5s`.
pub fn human(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        let s = d.as_secs_f64();
        if s.fract() == 0.0 { format!("{s:.0}s") } else { format!("{s:.2}s") }
    } else if d >= Duration::from_millis(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{}µs", d.as_micros())
    }
}

/// Resolves the port of a probe against a target: the target's own port, then the probe's
/// numeric port, then `default`.
pub fn effective_port(
    target: &Target,
    probe_port: Option<&PortRef>,
    default: Option<u16>,
) -> Result<u16, String> {
    if let Some(port) = target.port {
        return Ok(port);
    }
    match probe_port {
        Some(PortRef::Number(n)) => Ok(*n),
        Some(PortRef::Name(name)) => match target.ports.iter().find(|(n, _)| n == name) {
            Some((_, port)) => Ok(*port),
            None if target.ports.is_empty() => {
                Err(format!("named port {name:?} can only be resolved for pods"))
            }
            None => Err(format!(
                "the pod has no container port named {name:?} (it has {})",
                target.ports.iter().map(|(n, p)| format!("{n}={p}")).collect::<Vec<_>>().join(", ")
            )),
        },
        None => default.ok_or_else(|| "no port: set the probe's port or give host:port".to_owned()),
    }
}
