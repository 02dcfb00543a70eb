//! `InstanceStatus`: one per monitored instance, read like EC2's DescribeInstanceStatus.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The instance this status describes. Written by the agent of the instance's node.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vigil.dev",
    version = "v1alpha1",
    kind = "InstanceStatus",
    doc = "The health of one monitored instance, read like EC2's DescribeInstanceStatus: its run state and its System, Instance and Attached-volume status checks.",
    namespaced,
    status = "InstanceStatusStatus",
    shortname = "ist",
    category = "vigil",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.instance.node"}"#,
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.instance.kind"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"System","type":"string","jsonPath":".status.systemStatus.status"}"#,
    printcolumn = r#"{"name":"Instance","type":"string","jsonPath":".status.instanceStatus.status"}"#,
    printcolumn = r#"{"name":"Volumes","type":"string","jsonPath":".status.attachedVolumeStatus.status"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","jsonPath":".status.restarts.count","priority":1}"#,
    printcolumn = r#"{"name":"Reported","type":"string","jsonPath":".status.reported","priority":1}"#,
    printcolumn = r#"{"name":"Name","type":"string","jsonPath":".spec.instance.name","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatusSpec {
    /// Which instance.
    pub instance: InstanceRef,

    /// The owner's own verdict on the instance, as EC2's ReportInstanceStatus takes it: set it
    /// with `kubectl patch` (the agent never writes this field). It shows in `status.reported`,
    /// in Events and in the `vigil_instance_reported_impaired` metric while its time window
    /// lasts, and never triggers an action by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<UserReport>,
}

/// A verdict of the instance's owner: `impaired` with reasons, or `ok`, for a time window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.status != 'impaired' || (has(self.reasons) && size(self.reasons) > 0)")
    .message("an impaired report needs at least one reason"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.startTime) || !has(self.endTime) || self.endTime > self.startTime")
    .message("endTime must be after startTime"))]
#[serde(rename_all = "camelCase")]
pub struct UserReport {
    /// `impaired` or `ok`.
    pub status: ReportedStatus,
    /// What is wrong, in EC2's reason codes; at least one with `impaired`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<ReportReason>,
    /// What the owner saw, in their words (at most 512 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub description: Option<String>,
    /// When the verdict begins to hold. Absent: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it stops holding. Absent: until the report is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
}

impl UserReport {
    /// Whether the verdict holds at `now`: its window has begun and not ended.
    pub fn in_effect(&self, now: jiff::Timestamp) -> bool {
        self.start_time.as_ref().is_none_or(|t| t.0 <= now)
            && self.end_time.as_ref().is_none_or(|t| now < t.0)
    }
}

/// The owner's verdict.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ReportedStatus {
    /// The instance works, whatever the checks say.
    Ok,
    /// The instance is impaired, whatever the checks say.
    Impaired,
}

impl ReportedStatus {
    /// The name as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportedStatus::Ok => "ok",
            ReportedStatus::Impaired => "impaired",
        }
    }
}

/// Why the owner reports an instance impaired: EC2's ReportInstanceStatus reason codes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ReportReason {
    /// It stays in one run state (stuck stopping, stuck booting).
    InstanceStuckInState,
    /// It does not answer.
    Unresponsive,
    /// It refuses valid credentials.
    NotAcceptingCredentials,
    /// Its password or secret cannot be had.
    PasswordNotAvailable,
    /// Its network is slow or lossy.
    PerformanceNetwork,
    /// Its local disks are slow.
    PerformanceInstanceStore,
    /// Its attached volumes are slow.
    PerformanceEbsVolume,
    /// It is slow otherwise.
    PerformanceOther,
    /// Anything else (say what in the description).
    Other,
}

impl ReportReason {
    /// The name as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportReason::InstanceStuckInState => "instance-stuck-in-state",
            ReportReason::Unresponsive => "unresponsive",
            ReportReason::NotAcceptingCredentials => "not-accepting-credentials",
            ReportReason::PasswordNotAvailable => "password-not-available",
            ReportReason::PerformanceNetwork => "performance-network",
            ReportReason::PerformanceInstanceStore => "performance-instance-store",
            ReportReason::PerformanceEbsVolume => "performance-ebs-volume",
            ReportReason::PerformanceOther => "performance-other",
            ReportReason::Other => "other",
        }
    }
}

/// Identity of a monitored instance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRef {
    /// `Pod`, `Container`, `VM`, `Host` or `Endpoint`.
    pub kind: InstanceKind,
    /// Stable id: the pod UID, the container id, the VM's name, the node name, or the
    /// endpoint address.
    pub id: String,
    /// Human name: pod name, container name, VM name, hostname or address.
    pub name: String,
    /// Node whose agent observes this instance.
    pub node: String,
    /// Address probes are sent to, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Kind of monitored instance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InstanceKind {
    /// A Kubernetes pod.
    Pod,
    /// A Docker container.
    Container,
    /// A QEMU virtual machine.
    #[serde(rename = "VM")]
    Vm,
    /// A node.
    Host,
    /// A fixed network address, as seen from one node.
    Endpoint,
}

impl InstanceKind {
    /// The name as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceKind::Pod => "Pod",
            InstanceKind::Container => "Container",
            InstanceKind::Vm => "VM",
            InstanceKind::Host => "Host",
            InstanceKind::Endpoint => "Endpoint",
        }
    }
}

/// Observed state of an instance and its three status checks.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatusStatus {
    /// Run state of the instance.
    #[serde(default)]
    pub state: InstanceState,

    /// The host under the instance: host memory and disk pressure, the container or VM
    /// runtime reachable, the agent's heartbeat.
    #[serde(default)]
    pub system_status: StatusSummary,

    /// The instance itself: probe results, guest agent, run state.
    #[serde(default)]
    pub instance_status: StatusSummary,

    /// Block devices, volumes and filesystems: present, writable where they should be, not
    /// erroring.
    #[serde(default)]
    pub attached_volume_status: StatusSummary,

    /// One entry per HealthCheck that applies to this instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,

    /// Remediation actions taken on this instance.
    #[serde(default)]
    pub restarts: Restarts,

    /// The owner's verdict in force now (`spec.report`, within its time window); absent when
    /// none is. Beside the checks above, never part of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<ReportedStatus>,
}

/// Run state of an instance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum InstanceState {
    /// Running.
    Running,
    /// Paused or suspended by its operator.
    Paused,
    /// Being restarted.
    Restarting,
    /// Stopped, exited or shut down.
    Stopped,
    /// Not known (yet).
    #[default]
    Unknown,
}

/// A status check (System, Instance or Attached volumes): an overall status and the details it
/// is made of. The overall status is the worst detail: `impaired`, then `insufficient-data`,
/// then `initializing`, then `ok`; `not-applicable` when there is nothing to check.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusSummary {
    /// Overall status.
    #[serde(default)]
    pub status: CheckStatus,
    /// What the status is made of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<StatusDetail>,
}

/// One part of a status check.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetail {
    /// What was checked: `reachability`, `memory-pressure`, a HealthCheck as
    /// `namespace/name`, a device name…
    pub name: String,
    /// Its status.
    pub status: CheckStatus,
    /// When it became impaired; absent unless impaired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impaired_since: Option<Time>,
    /// Why, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Status of a check, as EC2 reports its status checks.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    /// Passing.
    Ok,
    /// Failing.
    Impaired,
    /// The check could not be run (probe error, runtime unreachable).
    InsufficientData,
    /// Not enough results yet.
    #[default]
    Initializing,
    /// Nothing to check, or deliberately not checked (paused, suspended).
    NotApplicable,
}

impl CheckStatus {
    /// The name as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Impaired => "impaired",
            CheckStatus::InsufficientData => "insufficient-data",
            CheckStatus::Initializing => "initializing",
            CheckStatus::NotApplicable => "not-applicable",
        }
    }

    /// Severity used to combine details: higher is worse.
    pub fn severity(self) -> u8 {
        match self {
            CheckStatus::NotApplicable => 0,
            CheckStatus::Ok => 1,
            CheckStatus::Initializing => 2,
            CheckStatus::InsufficientData => 3,
            CheckStatus::Impaired => 4,
        }
    }

    /// The overall status of a set of details: the worst one, `not-applicable` when empty or
    /// when every detail is.
    pub fn worst(statuses: impl IntoIterator<Item = CheckStatus>) -> CheckStatus {
        statuses.into_iter().max_by_key(|s| s.severity()).unwrap_or(CheckStatus::NotApplicable)
    }
}

/// The state of one HealthCheck on one instance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// The HealthCheck, as `namespace/name`.
    pub health_check: String,
    /// Kind of probe.
    pub probe: String,
    /// Current status.
    pub status: CheckStatus,
    /// Failed probes in a row (as of the last recorded change; `/v1/instances` has the live
    /// count).
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Passed probes in a row (as of the last recorded change).
    #[serde(default)]
    pub consecutive_successes: u32,
    /// Probes in a row that could not run (as of the last recorded change).
    #[serde(default)]
    pub consecutive_errors: u32,
    /// Time of the probe behind the last recorded change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// When the check became impaired; absent unless impaired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impaired_since: Option<Time>,
    /// Machine-readable reason of the last failure: `timeout`, `refused`, `dns`, `tls`,
    /// `status`, `body`, `exit-code`…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the last probe said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Remediation actions taken on an instance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Restarts {
    /// Actions taken since the instance was first seen.
    #[serde(default)]
    pub count: u32,
    /// Time of the last action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<Time>,
    /// Why the last action was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
    /// The most recent actions (at most 10), oldest first: the restart budget and backoff are
    /// computed from these, so they survive an agent restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<RestartRecord>,
}

/// One remediation action.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestartRecord {
    /// When it was taken.
    pub time: Time,
    /// The HealthCheck that asked for it, as `namespace/name`.
    pub health_check: String,
    /// The action (`restartContainer`, `exec`…).
    pub action: String,
    /// Whether it succeeded.
    pub succeeded: bool,
    /// Why it was taken, and what came of it.
    pub message: String,
}
