//! `HealthCheck`: what to check, how, and what to do when it fails.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CheckStatus, InstanceKind};

/// What to check, how often, and what to do when the check fails.
///
/// The timing fields keep the kubelet's meaning and defaults: a target is `impaired` after
/// `failureThreshold` consecutive failed probes and `ok` again after `successThreshold`
/// consecutive good ones.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vigil.dev",
    version = "v1alpha1",
    kind = "HealthCheck",
    doc = "What to check (pods, containers, VMs, the host or fixed endpoints), how (http, tcp, grpc, icmp, arp, exec, docker, qmp), how often, and what to do when it fails.",
    namespaced,
    status = "HealthCheckStatus",
    shortname = "vhc",
    category = "vigil",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.targetKind"}"#,
    printcolumn = r#"{"name":"Probe","type":"string","jsonPath":".status.probeKind"}"#,
    printcolumn = r#"{"name":"Targets","type":"integer","jsonPath":".status.targets"}"#,
    printcolumn = r#"{"name":"Healthy","type":"integer","jsonPath":".status.healthy"}"#,
    printcolumn = r#"{"name":"Unhealthy","type":"integer","jsonPath":".status.unhealthy"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// What is checked: exactly one of `pods`, `containers`, `vms`, `host` or `endpoints`.
    pub target: Target,

    /// Only agents on nodes whose labels match take part. Empty or absent: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// How each target is probed, and how often.
    pub probe: Probe,

    /// What to do when a target is impaired. Absent: report only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,

    /// Stops probing and remediation for every target of this check (maintenance). Recorded
    /// state is kept; targets report `not-applicable` while suspended.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspend: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// What is checked. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.pods), has(self.containers), has(self.vms), has(self.host), has(self.endpoints)].exists_one(x, x)"
).message("exactly one of pods, containers, vms, host, endpoints must be set"))]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Pods in this HealthCheck's namespace that match a label selector; each pod is probed by
    /// the agent of its node, at the pod's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodTarget>,

    /// Docker containers on the selected nodes, by name or by Docker label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<WorkloadTarget>,

    /// QEMU virtual machines on the selected nodes, by name or by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms: Option<WorkloadTarget>,

    /// The node itself. Network probes go to the node's loopback address; `exec` runs on the
    /// node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostTarget>,

    /// Fixed addresses, probed from every selected node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointsTarget>,
}

/// Pods selected by label.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTarget {
    /// Label selector of the pods to check, in this HealthCheck's namespace.
    pub selector: LabelSelector,
}

/// Containers or virtual machines, chosen by name, by label, or both (a workload matching either
/// is selected).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("has(self.names) || has(self.selector)")
    .message("set names, selector, or both"))]
#[serde(rename_all = "camelCase")]
pub struct WorkloadTarget {
    /// Names of the workloads (for containers: the Docker name without the leading `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,

    /// Label selector over the workload's labels (Docker labels for containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// Names of selected workloads in maintenance: their checks are `not-applicable` and
    /// nothing is restarted, until they are taken off this list. Their recorded state is kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspend: Vec<String>,
}

/// The node itself. Has no fields; write `host: {}`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HostTarget {}

/// Fixed addresses.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsTarget {
    /// Addresses to probe: `host` or `host:port` (`[v6addr]:port` for IPv6). A port given here
    /// takes precedence over the probe's port.
    #[schemars(length(min = 1))]
    pub addresses: Vec<String>,

    /// Allow link-local addresses (169.254.0.0/16, fe80::/10), which include cloud metadata
    /// services. Refused unless set, so that a check cannot be used to read instance
    /// credentials.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_link_local: bool,
}

/// How targets are probed: exactly one of `http`, `tcp`, `grpc`, `icmp`, `arp`, `exec`, `docker`
/// or `qmp`, with the kubelet's timing fields.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.http), has(self.tcp), has(self.grpc), has(self.icmp), has(self.arp), has(self.exec), has(self.docker), has(self.qmp)].exists_one(x, x)"
).message("exactly one of http, tcp, grpc, icmp, arp, exec, docker, qmp must be set"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.icmp) || (self.icmp.count - 1) * self.icmp.intervalMilliseconds < self.timeoutSeconds * 1000"
).message("spec.probe.icmp: count requests intervalMilliseconds apart must fit within timeoutSeconds"))]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// An HTTP GET; healthy when the status is in `expectedStatus` (and the body matches, if
    /// asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,

    /// A TCP connect; healthy when the connection is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,

    /// A `grpc.health.v1.Health/Check` call; healthy when the answer is `SERVING`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcProbe>,

    /// ICMP echo (ping): a small burst of requests; healthy when no more of them are lost than
    /// `maxPacketLossPercent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpProbe>,

    /// The target's IPv4 address has a complete neighbour (ARP) entry on this node: for VMs and
    /// containers on a bridge, whose guest network stack answers ARP even when nothing listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp: Option<ArpProbe>,

    /// A command: on the node for `host` and `endpoints` targets, inside the container for
    /// `containers`. Healthy when it exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,

    /// The container's own Docker HEALTHCHECK state (`containers` targets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerProbe>,

    /// QEMU monitor and guest-agent checks (`vms` targets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qmp: Option<QmpProbe>,

    /// Seconds after a target appears before its first probe. The first probe then lands at a
    /// random point within one period, so that many targets do not probe in step.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub initial_delay_seconds: u32,

    /// Seconds between probes.
    #[serde(default = "default_period")]
    #[schemars(range(min = 1))]
    pub period_seconds: u32,

    /// A faster period used while the target has never passed or its last probe did not pass,
    /// so that recovery (and a new target's first `ok`) is seen sooner. Absent: always
    /// `periodSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub failing_period_seconds: Option<u32>,

    /// Seconds after which a probe that has not answered counts as failed (reason `timeout`).
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: u32,

    /// Consecutive passing probes needed to become `ok`.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub success_threshold: u32,

    /// Consecutive failing probes needed to become `impaired`.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1))]
    pub failure_threshold: u32,
}

fn default_period() -> u32 {
    10
}
fn default_timeout() -> u32 {
    1
}
fn default_one() -> u32 {
    1
}
fn default_failure_threshold() -> u32 {
    3
}

/// An HTTP GET probe.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbe {
    /// Request path, with an optional query string.
    #[serde(default = "default_path")]
    pub path: String,

    /// Port number, or for `pods` targets the name of a container port. Defaults to 80 for
    /// HTTP and 443 for HTTPS when neither this nor the endpoint address gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,

    /// `HTTP` or `HTTPS`.
    #[serde(default)]
    pub scheme: Scheme,

    /// Extra request headers. A `Host` header here sets the virtual host asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeader>,

    /// Status codes that pass: codes and ranges separated by commas, e.g. `200-399` (the
    /// default, as the kubelet) or `200,204,301-302`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[1-5][0-9][0-9](-[1-5][0-9][0-9])?(,[1-5][0-9][0-9](-[1-5][0-9][0-9])?)*$"
    ))]
    pub expected_status: Option<String>,

    /// The response body must match, too (the first 64 KiB are read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_match: Option<BodyMatch>,

    /// Follow redirects to the same host (up to 10). A redirect to another host is never
    /// followed: its own status is judged, as the kubelet does.
    #[serde(default = "default_true")]
    pub follow_redirects: bool,

    /// Accept any TLS certificate (self-signed targets). The connection is still encrypted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_skip_verify: bool,
}

fn default_path() -> String {
    "/".to_owned()
}
fn default_true() -> bool {
    true
}

/// URL scheme of an HTTP probe.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// HTTP over TLS.
    #[serde(rename = "HTTPS")]
    Https,
}

/// One request header.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HttpHeader {
    /// Header name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Header value.
    pub value: String,
}

/// How the response body must match. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("[has(self.contains), has(self.regex)].exists_one(x, x)")
    .message("exactly one of contains, regex must be set"))]
#[serde(rename_all = "camelCase")]
pub struct BodyMatch {
    /// The body contains this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// The body matches this regular expression (Rust `regex` syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A TCP connect probe.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcpProbe {
    /// Port number, or for `pods` targets the name of a container port. Required unless every
    /// endpoint address carries a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
}

/// An ICMP echo probe. It needs unprivileged ICMP sockets (the agent's group within
/// `net.ipv4.ping_group_range`) or `CAP_NET_RAW`; without either it reports
/// `insufficient-data`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IcmpProbe {
    /// Echo requests per probe. All of them, `intervalMilliseconds` apart, and the wait for the
    /// last reply must fit within `timeoutSeconds`.
    #[serde(default = "default_icmp_count")]
    #[schemars(range(min = 1, max = 20))]
    pub count: u32,

    /// Milliseconds between two requests.
    #[serde(default = "default_icmp_interval")]
    #[schemars(range(min = 10, max = 5000))]
    pub interval_milliseconds: u32,

    /// The highest share of requests that may go unanswered for the probe to pass, percent.
    #[serde(default = "default_icmp_loss")]
    #[schemars(range(min = 0, max = 99))]
    pub max_packet_loss_percent: u32,
}

impl Default for IcmpProbe {
    fn default() -> Self {
        IcmpProbe {
            count: default_icmp_count(),
            interval_milliseconds: default_icmp_interval(),
            max_packet_loss_percent: default_icmp_loss(),
        }
    }
}

fn default_icmp_count() -> u32 {
    3
}

fn default_icmp_interval() -> u32 {
    200
}

fn default_icmp_loss() -> u32 {
    50
}

/// A neighbour (ARP) probe; it has no settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArpProbe {}

/// A gRPC health probe (`grpc.health.v1.Health/Check`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrpcProbe {
    /// Port number, or for `pods` targets the name of a container port. Required unless every
    /// endpoint address carries a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,

    /// Service name sent in the request. Empty: the server's overall health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,

    /// Connect with TLS.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls: bool,

    /// With `tls`, accept any certificate.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_skip_verify: bool,
}

/// A command probe.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecProbe {
    /// The program and its arguments; no shell is involved (use `["sh", "-c", "…"]` for one).
    /// On timeout the whole process group is killed. Output is captured up to 4 KiB.
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
}

/// The container's own HEALTHCHECK state. Has no fields; write `docker: {}`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct DockerProbe {}

/// QEMU checks through the monitor (QMP) and the guest agent.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QmpProbe {
    /// Which checks run. Default: `runState`, `guestAgent`, `blockDevices` and `filesystems`;
    /// `readOnlyFilesystems`, `guestMemory` and `console` run when listed (the first two need a
    /// guest agent that allows `guest-file-open`, which some distributions block).
    #[serde(default = "QmpCheck::all")]
    pub checks: Vec<QmpCheck>,

    /// With `filesystems`, a guest filesystem fuller than this (percent) is resource
    /// exhaustion.
    #[serde(default = "default_fs_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub filesystem_usage_percent: u8,

    /// With `guestAgent`, how long after the VM started (or was reset) a guest agent that has
    /// never answered is a guest still booting (`insufficient-data`); after it, a stuck boot
    /// (`impaired`, reason `boot`).
    #[serde(default = "default_boot_grace")]
    #[schemars(range(min = 1))]
    pub boot_grace_seconds: u32,

    /// With `guestMemory`, memory available in the guest (`MemAvailable` of its
    /// `/proc/meminfo`) below this percent of its total is memory exhaustion.
    #[serde(default = "default_memory_percent")]
    #[schemars(range(min = 1, max = 99))]
    pub memory_available_percent: u8,

    /// With `readOnlyFilesystems`, mount points that are read-only by design (`/boot`, a
    /// recovery partition): not a failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only_allowed: Vec<String>,
}

fn default_memory_percent() -> u8 {
    5
}

fn default_fs_percent() -> u8 {
    95
}

fn default_boot_grace() -> u32 {
    300
}

/// One QMP check.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum QmpCheck {
    /// `query-status`: the VM is running (not paused, panicked, shut down or in error).
    RunState,
    /// `guest-ping` through the guest agent answers in time.
    GuestAgent,
    /// `query-block`/`query-blockstats`: every device inserted, `io-status` ok, no new failed
    /// operations.
    BlockDevices,
    /// `guest-get-fsinfo`: no guest filesystem above `filesystemUsagePercent`.
    Filesystems,
    /// The guest's `/proc/mounts`, read through the guest agent: no block-device filesystem
    /// that takes writes (ext4, xfs, btrfs…) mounted read-only, as the kernel does after I/O
    /// errors, unless listed in `readOnlyAllowed`.
    ReadOnlyFilesystems,
    /// The guest's `/proc/meminfo`, read through the guest agent: memory available above
    /// `memoryAvailablePercent`.
    GuestMemory,
    /// `query-chardev`, `query-vnc`: the VM has a serial console or a VNC server, named in the
    /// message (whether open, where).
    Console,
}

impl QmpCheck {
    /// Every check, the default.
    pub fn all() -> Vec<QmpCheck> {
        vec![QmpCheck::RunState, QmpCheck::GuestAgent, QmpCheck::BlockDevices, QmpCheck::Filesystems]
    }
}

/// What to do with an impaired target, and the limits that keep a mass failure from turning
/// into a restart storm.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.type != 'exec' || has(self.exec)")
    .message("type exec needs the exec field"))]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// `none` (report only), `restartContainer`, `restartVM`, `evictPod` or `exec`.
    #[serde(rename = "type", default)]
    pub kind: ActionType,

    /// The command run by the `exec` action, on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,

    /// At most this many actions per target within `windowSeconds`; then the target is left
    /// alone (and says so) until the window moves on.
    #[serde(default = "default_max_restarts")]
    #[schemars(range(min = 1))]
    pub max_restarts: u32,

    /// The window over which `maxRestarts` is counted, in seconds.
    #[serde(default = "default_window")]
    #[schemars(range(min = 1))]
    pub window_seconds: u32,

    /// Delay between successive actions on the same target.
    #[serde(default)]
    pub backoff: Backoff,

    /// A count (`3`) or a percentage (`"40%"`) of this check's targets. When more targets than
    /// this are impaired at once, nobody is restarted: a mass failure is a platform problem,
    /// not N workload problems. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unhealthy: Option<IntOrString>,
}

fn default_max_restarts() -> u32 {
    3
}
fn default_window() -> u32 {
    3600
}

/// The remedy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActionType {
    /// Report only.
    #[default]
    #[serde(rename = "none")]
    None,
    /// Restart the Docker container (`containers` targets).
    #[serde(rename = "restartContainer")]
    RestartContainer,
    /// Reset the VM, escalating to a configured command (`vms` targets).
    #[serde(rename = "restartVM")]
    RestartVm,
    /// Evict the pod through the Eviction API, which respects PodDisruptionBudgets (`pods`
    /// targets).
    #[serde(rename = "evictPod")]
    EvictPod,
    /// Run a command on the node.
    #[serde(rename = "exec")]
    Exec,
}

/// A remediation command.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecAction {
    /// The program and its arguments. It receives `VIGIL_INSTANCE_ID`, `VIGIL_INSTANCE_NAME`,
    /// `VIGIL_INSTANCE_KIND`, `VIGIL_CHECK` and `VIGIL_REASON` in its environment.
    #[schemars(length(min = 1))]
    pub command: Vec<String>,

    /// Seconds before the command's process group is killed.
    #[serde(default = "default_action_timeout")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: u32,
}

fn default_action_timeout() -> u32 {
    30
}

/// Exponential backoff between actions on one target: the n-th action within the window waits
/// `initialSeconds × multiplier^(n-1)` after the previous one, at most `maxSeconds`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// Delay after the first action.
    #[serde(default = "default_backoff_initial")]
    #[schemars(range(min = 0))]
    pub initial_seconds: u32,
    /// Upper bound of the delay.
    #[serde(default = "default_backoff_max")]
    #[schemars(range(min = 0))]
    pub max_seconds: u32,
    /// Growth factor, at least 1.
    #[serde(default = "default_backoff_multiplier")]
    #[schemars(range(min = 1, max = 10))]
    pub multiplier: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_seconds: default_backoff_initial(),
            max_seconds: default_backoff_max(),
            multiplier: default_backoff_multiplier(),
        }
    }
}

fn default_backoff_initial() -> u32 {
    10
}
fn default_backoff_max() -> u32 {
    300
}
fn default_backoff_multiplier() -> u32 {
    2
}

/// What the agents and the controller observed for this check.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` (probing works), `Degraded` (some targets are not ok) and `Invalid` (the spec
    /// cannot be run; the message says which field and what is allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Kind of target, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_kind: Option<String>,

    /// Kind of probe, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_kind: Option<String>,

    /// Targets found.
    #[serde(default)]
    pub targets: u32,

    /// Targets whose check is `ok`.
    #[serde(default)]
    pub healthy: u32,

    /// Targets whose check is `impaired`.
    #[serde(default)]
    pub unhealthy: u32,

    /// Targets whose check is `initializing`, `insufficient-data` or `not-applicable`.
    #[serde(default)]
    pub unknown: u32,

    /// The currently impaired targets (at most 20; `unhealthy` has the full count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unhealthy_instances: Vec<UnhealthyInstance>,

    /// Whether remediation may act now (false when more targets than `maxUnhealthy` are
    /// impaired, or the check has no action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation_allowed: Option<bool>,
}

/// One impaired target.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UnhealthyInstance {
    /// Instance id (the InstanceStatus name).
    pub id: String,
    /// Kind of instance.
    pub kind: InstanceKind,
    /// Node the instance runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The check's status for this instance (always `impaired` today).
    pub status: CheckStatus,
    /// When it became impaired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Why, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
