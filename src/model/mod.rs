//! The validated, internal form of a HealthCheck, free of API-machinery types.
//!
//! [`validate`](validate::validate) turns a `HealthCheck` into a [`CheckDef`] or into a list of
//! [`FieldError`]s, each naming the field and what is allowed. Agents and the controller use the
//! same function, so a spec is judged the same everywhere.

mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kube::core::{Selector, SelectorExt};

use crate::api::HealthCheckSpec;
use crate::probe::ProbeSpec;

pub use validate::{FieldError, validate, validate_spec};

/// Whether two specs are the same: the same allocation (a source that kept what it read hands
/// back the spec it gave before), else equal.
pub fn same_spec(a: &std::sync::Arc<HealthCheckSpec>, b: &std::sync::Arc<HealthCheckSpec>) -> bool {
    std::sync::Arc::ptr_eq(a, b) || a == b
}

/// Identifies a HealthCheck: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl CheckKey {
    /// A key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> CheckKey {
        CheckKey { namespace: namespace.into(), name: name.into() }
    }

    /// Parses `namespace/name`.
    pub fn parse(s: &str) -> Option<CheckKey> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty()).then(|| CheckKey::new(ns, name))
    }
}

impl fmt::Display for CheckKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A HealthCheck that can be run.
#[derive(Clone, Debug)]
pub struct CheckDef {
    /// Which HealthCheck.
    pub key: CheckKey,
    /// `metadata.generation` of the spec this was built from.
    pub generation: i64,
    /// What is checked.
    pub target: TargetDef,
    /// Which nodes take part; `None` for all.
    pub node_selector: Option<Selector>,
    /// How.
    pub probe: ProbeSpec,
    /// When.
    pub timing: Timing,
    /// What to do on failure.
    pub action: Option<ActionDef>,
    /// Probing and remediation paused.
    pub suspend: bool,
    /// The spec as written, to tell whether a reload changed anything; shared with the
    /// catalog and the store (a spec is most of a HealthCheck's memory).
    pub spec: Arc<HealthCheckSpec>,
}

impl CheckDef {
    /// Whether this node takes part.
    pub fn selects_node(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector.as_ref().is_none_or(|s| s.matches(labels))
    }
}

/// What is checked.
#[derive(Clone, Debug)]
pub enum TargetDef {
    /// Pods in the check's namespace.
    Pods {
        /// Which pods.
        selector: Selector,
    },
    /// Docker containers.
    Containers(WorkloadSelector),
    /// QEMU VMs.
    Vms(WorkloadSelector),
    /// The node.
    Host,
    /// Fixed addresses.
    Endpoints {
        /// The addresses.
        addresses: Vec<Endpoint>,
        /// Link-local addresses permitted.
        allow_link_local: bool,
    },
}

impl TargetDef {
    /// The target kind as written in the API.
    pub fn kind(&self) -> &'static str {
        match self {
            TargetDef::Pods { .. } => "pods",
            TargetDef::Containers(_) => "containers",
            TargetDef::Vms(_) => "vms",
            TargetDef::Host => "host",
            TargetDef::Endpoints { .. } => "endpoints",
        }
    }
}

/// Containers or VMs chosen by name or label.
#[derive(Clone, Debug)]
pub struct WorkloadSelector {
    /// Names; a workload with one of these names is selected.
    pub names: Vec<String>,
    /// Labels; a workload matching is selected.
    pub selector: Option<Selector>,
    /// Names of workloads in maintenance.
    pub suspend: Vec<String>,
}

impl WorkloadSelector {
    /// Whether a workload with this name and these labels is selected.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.names.iter().any(|n| n == name) || self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

/// One fixed address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// As written.
    pub address: String,
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// Port, when the address has one.
    pub port: Option<u16>,
}

impl Endpoint {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`. A bare IPv6 address is accepted too.
    pub fn parse(address: &str) -> Result<Endpoint, String> {
        let address = address.trim();
        if address.is_empty() {
            return Err("empty address".to_owned());
        }
        if address.contains("://") || address.contains('/') {
            return Err(format!("{address:?} must be host or host:port, without a scheme or path"));
        }
        let parse_port = |p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("port {p:?} in {address:?} must be a number from 1 to 65535")),
            }
        };
        let (host, port) = if let Some(rest) = address.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{address:?}: missing ] after an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(parse_port(
                    p.strip_prefix(':').ok_or_else(|| format!("{address:?}: expected :port after ]"))?,
                )?),
            };
            (host.to_owned(), port)
        } else if address.matches(':').count() > 1 {
            (address.to_owned(), None)
        } else if let Some((host, port)) = address.split_once(':') {
            (host.to_owned(), Some(parse_port(port)?))
        } else {
            (address.to_owned(), None)
        };
        if host.is_empty() {
            return Err(format!("{address:?} has no host"));
        }
        let valid = host.parse::<std::net::IpAddr>().is_ok()
            || host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            return Err(format!("{host:?} is neither an IP address nor a DNS name"));
        }
        Ok(Endpoint { address: address.to_owned(), host, port })
    }
}

/// Probe timing, with the kubelet's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Delay before the first probe of a new target.
    pub initial_delay: Duration,
    /// Between probes.
    pub period: Duration,
    /// Between probes while not passing, when set.
    pub failing_period: Option<Duration>,
    /// Per probe.
    pub timeout: Duration,
    /// Passes in a row to become `ok`.
    pub success_threshold: u32,
    /// Failures in a row to become `impaired`.
    pub failure_threshold: u32,
}

impl Default for Timing {
    /// The kubelet's defaults.
    fn default() -> Self {
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            failing_period: None,
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

/// The remedy, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionDef {
    /// Which action.
    pub kind: ActionKind,
    /// For `exec`: the command and its timeout.
    pub exec: Option<(Vec<String>, Duration)>,
    /// Budget and backoff.
    pub policy: RestartPolicy,
    /// Mass-failure limit.
    pub max_unhealthy: Option<Limit>,
}

/// Actions that do something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// Restart a Docker container.
    RestartContainer,
    /// Reset a VM.
    RestartVm,
    /// Evict a pod.
    EvictPod,
    /// Run a command.
    Exec,
}

impl ActionKind {
    /// The name as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::RestartContainer => "restartContainer",
            ActionKind::RestartVm => "restartVM",
            ActionKind::EvictPod => "evictPod",
            ActionKind::Exec => "exec",
        }
    }
}

/// How often an action may be taken on one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Actions allowed within `window`.
    pub max_restarts: u32,
    /// The counting window.
    pub window: Duration,
    /// Delay after the first action.
    pub backoff_initial: Duration,
    /// Delay cap.
    pub backoff_max: Duration,
    /// Growth factor.
    pub multiplier: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(3600),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            multiplier: 2,
        }
    }
}

/// A count or a percentage of targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// At most this many.
    Count(u32),
    /// At most this percentage of the total.
    Percent(u32),
}

impl Limit {
    /// Whether `unhealthy` out of `total` exceeds the limit.
    pub fn exceeded(&self, unhealthy: u32, total: u32) -> bool {
        match *self {
            Limit::Count(n) => unhealthy > n,
            Limit::Percent(p) => u64::from(unhealthy) * 100 > u64::from(p) * u64::from(total),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("127.0.0.1:8080").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", Some(8080)));
        let e = Endpoint::parse("example.com").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("example.com", None));
        let e = Endpoint::parse("[::1]:9000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", Some(9000)));
        let e = Endpoint::parse("fe80::1").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("fe80::1", None));
        for bad in ["", "http://x", "host:0", "host:99999", "host:abc", "[::1", "bad_host!", ":80"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn limits() {
        assert!(Limit::Count(2).exceeded(3, 10));
        assert!(!Limit::Count(2).exceeded(2, 10));
        assert!(Limit::Percent(40).exceeded(2, 3));
        assert!(!Limit::Percent(40).exceeded(1, 3));
        assert!(!Limit::Percent(50).exceeded(2, 4));
        assert!(Limit::Percent(0).exceeded(1, 100));
    }
}
