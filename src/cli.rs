//! Command-line arguments, one `Args` struct per subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Health checks for pods, containers, VMs and nodes, reported like a cloud provider's status
/// checks.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "plain", env = "VIGIL_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter (`info`, `vigil=debug`, …); `RUST_LOG` works too.
    #[arg(long, global = true, default_value = "info", env = "VIGIL_LOG")]
    pub log_level: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: probe, track status, report, remediate.
    Agent(Box<AgentArgs>),
    /// Run the controller: every HealthCheck's status across the fleet, leader-elected.
    Controller(ControllerArgs),
    /// Print the CustomResourceDefinitions.
    Crd,
    /// Run one probe now and print the outcome (exit 0 healthy, 1 unhealthy, 2 could not run).
    Check(CheckArgs),
    /// Print the version.
    Version,
}

/// `vigil agent` without a cluster: checks from a folder, status into a folder.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Standalone")]
pub struct StandaloneArgs {
    /// Folder of HealthCheck YAML. Reloaded when files change.
    #[arg(long, env = "VIGIL_CHECKS_DIR", requires = "state_dir")]
    pub checks_dir: Option<PathBuf>,

    /// Folder where InstanceStatus and HealthCheck documents are kept.
    #[arg(long, env = "VIGIL_STATE_DIR", requires = "checks_dir")]
    pub state_dir: Option<PathBuf>,
}

/// `vigil agent` in a cluster: HealthChecks from the API server, status into InstanceStatus
/// objects, a Lease per node.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kubernetes")]
pub struct KubernetesArgs {
    /// Run in a cluster (instead of --checks-dir/--state-dir).
    #[arg(long, conflicts_with_all = ["checks_dir", "state_dir"])]
    pub kubernetes: bool,

    /// Kubeconfig file. Default: `KUBECONFIG`, `~/.kube/config`, or the pod's ServiceAccount.
    #[arg(long, env = "VIGIL_KUBECONFIG", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,

    /// A namespace whose HealthChecks this agent runs; repeat for more. Default: every namespace.
    #[arg(long = "namespace", requires = "kubernetes")]
    pub namespaces: Vec<String>,

    /// How long the controller's `status.remediationAllowed`, as last read, holds while the API
    /// server does not answer; after that, nothing is restarted until it answers again.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub remediation_staleness: Duration,

    /// Changes of one instance within this window are written as one apply.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub write_coalesce: Duration,

    /// How often the node's agent Lease is renewed (with jitter).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub lease_renew: Duration,

    /// How long the Lease holds without renewal (`leaseDurationSeconds`).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub lease_duration: Duration,
}

/// `vigil agent`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["checks_dir", "kubernetes"])))]
pub struct AgentArgs {
    /// Standalone mode.
    #[command(flatten)]
    pub standalone: StandaloneArgs,

    /// Kubernetes mode.
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,

    /// Address of the HTTP API and metrics. Loopback by default.
    #[arg(long, default_value = "127.0.0.1:9733", env = "VIGIL_LISTEN")]
    pub listen: SocketAddr,

    /// Name of this node. Default: the host name.
    #[arg(long, env = "VIGIL_NODE_NAME")]
    pub node_name: Option<String>,

    /// A label of this node, `key=value`, for `spec.nodeSelector`. Repeat for more.
    #[arg(long = "node-label", value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,

    /// Namespace of the agent's own objects: its Lease, and the InstanceStatus of everything
    /// but pods (a pod's lives in the pod's namespace). In a pod, give it `POD_NAMESPACE`.
    #[arg(long, default_value = "default", env = "VIGIL_AGENT_NAMESPACE")]
    pub agent_namespace: String,

    /// Probes running at once.
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_probes: usize,

    /// `exec` probes running at once (each is a fork).
    #[arg(long, default_value_t = 8)]
    pub max_concurrent_exec: usize,

    /// The most threads probes run on. Default: one per CPU, at most 4. Of these, as many are
    /// used as the probe rate needs: one per 15,000 probes per second (a TLS probe counts ten).
    #[arg(long)]
    pub probe_threads: Option<usize>,

    /// How often host memory, disk and filesystems are assessed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub host_interval: Duration,

    /// Changes of counters and messages alone are written at most this often (status changes
    /// are written at once).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub status_refresh: Duration,

    /// How often the checks folder is rescanned even without a change notification.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub rescan_interval: Duration,

    /// How long start-up waits for each inventory source (Docker, QEMU) to list what it has
    /// before the agent turns ready without it and forgets saved instances that did not
    /// reappear.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub inventory_sync_timeout: Duration,

    /// Memory pressure below this much available memory, MiB (the kubelet's default).
    #[arg(long, default_value_t = 100)]
    pub memory_pressure_mb: u64,

    /// Disk pressure below this percentage of free space.
    #[arg(long, default_value_t = 10.0)]
    pub disk_pressure_percent: f64,

    /// Where the host's root filesystem is seen. In a container, mount the host's `/` read-only
    /// (the chart mounts it at `/host`): the host's memory, mounts (`proc/1/mountinfo`) and
    /// filesystems are then read under it instead of the container's own.
    #[arg(long, default_value = "/", env = "VIGIL_HOST_ROOT")]
    pub host_root: PathBuf,

    /// The `smartctl` program (Debian's smartmontools) that disk health is asked of; without it,
    /// disk health is insufficient-data.
    #[arg(long, default_value = "smartctl")]
    pub smartctl: PathBuf,

    /// POST every event (transitions and actions, as JSON, one per request) to this URL
    /// (`http://` or `https://`), retrying with backoff; a slow webhook never holds probes up.
    #[arg(long, value_parser = parse_webhook)]
    pub events_webhook: Option<::http::Uri>,

    /// Events waiting for the webhook at most; beyond, the oldest are dropped (and counted).
    #[arg(long, default_value_t = 1000)]
    pub events_webhook_queue: usize,

    /// Publish status, events, metrics and container health to this NATS server
    /// (`nats://host:4222`; comma-separated for a cluster). Waited for when not up yet.
    #[arg(long, env = "VIGIL_NATS_URL")]
    pub nats_url: Option<String>,

    /// The first token of the NATS health subjects (`<prefix>.health.status`, ...).
    #[arg(long, default_value = "vigil", requires = "nats_url")]
    pub nats_prefix: String,

    /// How often the StatusCheckFailed snapshot is published on `<prefix>.health.metrics`.
    #[arg(long, default_value = "60s", value_parser = parse_duration, requires = "nats_url")]
    pub nats_metrics_interval: Duration,

    /// How often the disks are asked for their SMART health.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub smart_interval: Duration,

    /// `basic`: per target `vigil_probe_up`, `vigil_check_impaired` and the failure, error and
    /// restart counters; the probe duration histogram per probe kind. `full` adds each target's
    /// `vigil_probe_last_duration_seconds` and a duration histogram per HealthCheck (about 2 KB
    /// more per HealthCheck).
    #[arg(long, env = "VIGIL_METRICS_DETAIL", value_enum, default_value = "basic")]
    pub metrics_detail: crate::metrics::MetricsDetail,

    /// File holding a bearer token that also grants access to sensitive routes (logs,
    /// configuration) from other hosts. Without it, they are served to loopback callers only.
    #[arg(long, env = "VIGIL_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Docker Engine socket. Default: `DOCKER_HOST` when it names a unix socket, else
    /// /var/run/docker.sock when it exists (no Docker runtime otherwise). Given explicitly, the
    /// agent waits for the socket and the daemon if they are not there yet (Docker is reported
    /// unreachable meanwhile).
    #[arg(long, env = "VIGIL_DOCKER_SOCKET", conflicts_with = "no_docker")]
    pub docker_socket: Option<String>,

    /// Do not watch Docker containers, even if a daemon is there.
    #[arg(long)]
    pub no_docker: bool,

    /// How often container resource figures are sampled.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub docker_stats_interval: Duration,

    /// Seconds a container is given to stop when the `restartContainer` action restarts it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub container_stop_timeout: Duration,

    /// Where QEMU VMs' QMP sockets are looked for (glob; repeat for more). A guest-agent socket
    /// `qga.sock` beside a QMP socket is used for guest checks.
    #[arg(
        long = "vm-socket-glob",
        default_values_t = ["/run/vigil/vms/*/qmp.sock".to_owned(), "/var/lib/libvirt/qemu/*.monitor".to_owned()]
    )]
    pub vm_socket_globs: Vec<String>,

    /// How long `restartVM` waits for the guest agent after `system_reset` before escalating.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub vm_reset_timeout: Duration,

    /// Command (`sh -c`) run when a VM does not come back after `system_reset`, e.g.
    /// `systemctl restart vm@$VIGIL_VM_NAME`. It gets `VIGIL_VM_NAME` and `VIGIL_VM_DIR`.
    #[arg(long)]
    pub vm_restart_command: Option<String>,
}

/// `vigil controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Kubeconfig file. Default: `KUBECONFIG`, `~/.kube/config`, or the pod's ServiceAccount.
    #[arg(long, env = "VIGIL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, default_value = "127.0.0.1:9734", env = "VIGIL_LISTEN")]
    pub listen: SocketAddr,

    /// vigil's namespace: the leader Lease, and the agents' Leases watched for node loss. In a
    /// pod, give it `POD_NAMESPACE`.
    #[arg(long, default_value = "default", env = "VIGIL_CONTROLLER_NAMESPACE")]
    pub namespace: String,

    /// This replica's identity in the leader Lease. Default: the host name and process id (in a
    /// pod, give it `POD_NAME`).
    #[arg(long, env = "VIGIL_IDENTITY")]
    pub identity: Option<String>,

    /// How long the leader Lease holds without renewal; a new leader takes over after it.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long an agent's Lease may go unrenewed before the System check of every instance of
    /// its node is impaired (`reachability`).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_grace: Duration,

    /// At most one `evictPod` eviction per this interval across the whole fleet (the node
    /// lifecycle controller's default pace is one per 10 s too).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub eviction_interval: Duration,

    /// How long after its agent fell silent the InstanceStatus of a node that no longer has a
    /// Node object are deleted.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub gc_after: Duration,
}

/// `vigil check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// What to probe: `http://host:port/path`, `https://…`, `tcp://host:port`, `icmp://host`,
    /// `grpc://host:port[/service]`, `exec:command args…`.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub target: Option<String>,

    /// Run the probe of a HealthCheck file against its targets instead.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,

    /// Time allowed to the probe. Default: 5s, or the HealthCheck's timeoutSeconds.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Show each step: resolve, connect, TLS, first byte.
    #[arg(short, long)]
    pub verbose: bool,

    /// Accept any TLS certificate.
    #[arg(short = 'k', long)]
    pub insecure: bool,

    /// Status codes that pass, as in `expectedStatus`.
    #[arg(long)]
    pub expect_status: Option<String>,

    /// The body must contain this text.
    #[arg(long)]
    pub expect_body: Option<String>,
}

fn parse_webhook(s: &str) -> Result<::http::Uri, String> {
    let uri: ::http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!("{s:?}: an http:// or https:// URL with a host")),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not key=value"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Parses `500ms`, `10s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("{s:?} is not a duration such as 500ms, 10s, 5m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
