//! Turns a `HealthCheck` into a [`CheckDef`], or says which fields are wrong and what is allowed.
//!
//! The CRD schema enforces the same exactly-one-of rules with CEL; this is the agent's own check,
//! for the standalone folder (no API server in front) and for objects written before a rule
//! existed.

use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{Expression, Selector};

use super::{
    ActionDef, ActionKind, CheckDef, CheckKey, Endpoint, Limit, RestartPolicy, TargetDef, Timing,
    WorkloadSelector,
};
use crate::api::{self, ActionType, HealthCheck, HealthCheckSpec, Scheme};
use crate::probe::exec::ExecSpec;
use crate::probe::grpc::GrpcSpec;
use crate::probe::http::{BodyMatcher, HttpSpec, StatusRanges};
use crate::probe::icmp::IcmpSpec;
use crate::probe::tcp::TcpSpec;
use crate::probe::{PortRef, ProbeSpec, QmpSpec, is_link_local};

/// Longest accepted body regular expression, in bytes of source.
const MAX_REGEX_LEN: usize = 1024;

/// One thing wrong with a spec: the field (a path like `spec.probe.http.port`) and what is
/// allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }
}

/// Validates a HealthCheck. Its namespace must be set (the loader defaults it).
pub fn validate(hc: &HealthCheck) -> Result<CheckDef, Vec<FieldError>> {
    let key = CheckKey::new(
        hc.metadata.namespace.clone().unwrap_or_default(),
        hc.metadata.name.clone().unwrap_or_default(),
    );
    validate_spec(key, hc.metadata.generation.unwrap_or(1), std::sync::Arc::new(hc.spec.clone()))
}

/// Validates the HealthCheck `key` of `generation`; the definition holds `spec` itself.
pub fn validate_spec(
    key: CheckKey,
    generation: i64,
    spec: std::sync::Arc<HealthCheckSpec>,
) -> Result<CheckDef, Vec<FieldError>> {
    let mut errors = Errors::default();
    check_dns_name(&mut errors, "metadata.name", &key.name, 253);
    check_dns_name(&mut errors, "metadata.namespace", &key.namespace, 63);

    let target = target(&mut errors, &spec.target);
    let node_selector =
        spec.node_selector.as_ref().and_then(|s| selector(&mut errors, "spec.nodeSelector", s));
    let probe = probe(&mut errors, &spec.probe, target.as_ref());
    let timing = timing(&mut errors, &spec.probe);
    let action = spec.action.as_ref().and_then(|a| action(&mut errors, a, target.as_ref()));

    match (target, probe, errors.0.is_empty()) {
        (Some(target), Some(probe), true) => Ok(CheckDef {
            key,
            generation,
            target,
            node_selector,
            probe,
            timing,
            action,
            suspend: spec.suspend,
            spec,
        }),
        _ => Err(errors.0),
    }
}

fn check_dns_name(errors: &mut Errors, field: &str, value: &str, max: usize) {
    if value.is_empty() {
        errors.add(field, "required");
        return;
    }
    let ok = value.len() <= max
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && (max != 63 || !value.contains('.'));
    if !ok {
        errors.add(
            field,
            format!(
                "{value:?} is not a valid name: lowercase letters, digits and '-' (and '.' between parts for names), at most {max} characters"
            ),
        );
    }
}

fn count_set(fields: &[(&str, bool)]) -> Vec<String> {
    fields.iter().filter(|(_, set)| *set).map(|(name, _)| (*name).to_owned()).collect()
}

fn exactly_one(errors: &mut Errors, field: &str, fields: &[(&str, bool)]) -> bool {
    let set = count_set(fields);
    if set.len() == 1 {
        return true;
    }
    let all: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
    let found =
        if set.is_empty() { "none is set".to_owned() } else { format!("found {}", set.join(" and ")) };
    errors.add(field, format!("exactly one of {} must be set; {found}", all.join(", ")));
    false
}

fn target(errors: &mut Errors, t: &api::Target) -> Option<TargetDef> {
    if !exactly_one(
        errors,
        "spec.target",
        &[
            ("pods", t.pods.is_some()),
            ("containers", t.containers.is_some()),
            ("vms", t.vms.is_some()),
            ("host", t.host.is_some()),
            ("endpoints", t.endpoints.is_some()),
        ],
    ) {
        return None;
    }
    if let Some(pods) = &t.pods {
        return selector(errors, "spec.target.pods.selector", &pods.selector)
            .map(|selector| TargetDef::Pods { selector });
    }
    if let Some(c) = &t.containers {
        return workload(errors, "spec.target.containers", c).map(TargetDef::Containers);
    }
    if let Some(v) = &t.vms {
        return workload(errors, "spec.target.vms", v).map(TargetDef::Vms);
    }
    if t.host.is_some() {
        return Some(TargetDef::Host);
    }
    let e = t.endpoints.as_ref()?;
    if e.addresses.is_empty() {
        errors.add("spec.target.endpoints.addresses", "at least one address is required");
        return None;
    }
    let mut addresses = Vec::new();
    let before = errors.0.len();
    for (i, raw) in e.addresses.iter().enumerate() {
        let field = format!("spec.target.endpoints.addresses[{i}]");
        match Endpoint::parse(raw) {
            Ok(ep) => {
                if let Ok(ip) = ep.host.parse()
                    && is_link_local(ip)
                    && !e.allow_link_local
                {
                    errors.add(
                            field,
                            format!(
                                "{raw} is link-local (the cloud metadata range); set spec.target.endpoints.allowLinkLocal to probe it"
                            ),
                        );
                    continue;
                }
                if addresses.contains(&ep) {
                    errors.add(field, format!("{raw} is listed twice"));
                    continue;
                }
                addresses.push(ep);
            }
            Err(msg) => errors.add(field, msg),
        }
    }
    (errors.0.len() == before)
        .then_some(TargetDef::Endpoints { addresses, allow_link_local: e.allow_link_local })
}

fn workload(errors: &mut Errors, field: &str, w: &api::WorkloadTarget) -> Option<WorkloadSelector> {
    let names = w.names.clone().unwrap_or_default();
    if names.is_empty() && w.selector.is_none() {
        errors.add(field, "set names, selector, or both");
        return None;
    }
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            errors.add(format!("{field}.names[{i}]"), "must not be empty");
        }
    }
    let selector = match &w.selector {
        Some(s) => Some(selector(errors, &format!("{field}.selector"), s)?),
        None => None,
    };
    Some(WorkloadSelector { names, selector, suspend: w.suspend.clone() })
}

fn selector(errors: &mut Errors, field: &str, s: &LabelSelector) -> Option<Selector> {
    let before = errors.0.len();
    let mut selector: Selector = s.match_labels.clone().unwrap_or_default().into_iter().collect::<Selector>();
    for (i, req) in s.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        let values = req.values.clone().unwrap_or_default();
        let expr = match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                errors.add(
                    format!("{f}.values"),
                    format!("operator {} needs at least one value", req.operator),
                );
                continue;
            }
            "In" => Expression::In(req.key.clone(), values.into_iter().collect()),
            "NotIn" => Expression::NotIn(req.key.clone(), values.into_iter().collect()),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                errors.add(format!("{f}.values"), format!("operator {} takes no values", req.operator));
                continue;
            }
            "Exists" => Expression::Exists(req.key.clone()),
            "DoesNotExist" => Expression::DoesNotExist(req.key.clone()),
            other => {
                errors.add(
                    format!("{f}.operator"),
                    format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
                );
                continue;
            }
        };
        selector.extend([expr]);
    }
    (errors.0.len() == before).then_some(selector)
}

fn port(
    errors: &mut Errors,
    field: &str,
    value: &IntOrString,
    target: Option<&TargetDef>,
) -> Option<PortRef> {
    match value {
        IntOrString::Int(n) => match u16::try_from(*n) {
            Ok(p) if p > 0 => Some(PortRef::Number(p)),
            _ => {
                errors.add(field, format!("{n} is not a port: use a number from 1 to 65535"));
                None
            }
        },
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<i32>() {
                return port(errors, field, &IntOrString::Int(n), target);
            }
            let valid = !name.is_empty()
                && name.len() <= 15
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && name.chars().any(|c| c.is_ascii_lowercase());
            if !valid {
                errors.add(field, format!("{name:?} is neither a port number nor a port name (at most 15 lowercase letters, digits, '-')"));
                return None;
            }
            if !matches!(target, Some(TargetDef::Pods { .. }) | None) {
                errors.add(field, format!("named port {name:?} only works for pods targets; use a number"));
                return None;
            }
            Some(PortRef::Name(name.clone()))
        }
    }
}

/// A port is needed unless every endpoint address carries one.
fn require_port(errors: &mut Errors, field: &str, port: &Option<PortRef>, target: Option<&TargetDef>) {
    if port.is_some() {
        return;
    }
    let all_have_ports = match target {
        Some(TargetDef::Endpoints { addresses, .. }) => addresses.iter().all(|a| a.port.is_some()),
        None => true, // the target is already reported
        _ => false,
    };
    if !all_have_ports {
        errors.add(field, "required (a number, or give every endpoint address as host:port)");
    }
}

fn probe(errors: &mut Errors, p: &api::Probe, target: Option<&TargetDef>) -> Option<ProbeSpec> {
    if !exactly_one(
        errors,
        "spec.probe",
        &[
            ("http", p.http.is_some()),
            ("tcp", p.tcp.is_some()),
            ("grpc", p.grpc.is_some()),
            ("icmp", p.icmp.is_some()),
            ("arp", p.arp.is_some()),
            ("exec", p.exec.is_some()),
            ("docker", p.docker.is_some()),
            ("qmp", p.qmp.is_some()),
        ],
    ) {
        return None;
    }
    let before = errors.0.len();
    let kind_of_target = target.map(TargetDef::kind);
    let spec = if let Some(h) = &p.http {
        let port = h.port.as_ref().and_then(|pt| port(errors, "spec.probe.http.port", pt, target));
        if !h.path.starts_with('/') {
            errors.add("spec.probe.http.path", format!("{:?} must start with /", h.path));
        } else if h.path.parse::<http::uri::PathAndQuery>().is_err() || h.path.contains('#') {
            errors.add("spec.probe.http.path", format!("{:?} is not a valid path and query", h.path));
        }
        let mut headers = Vec::new();
        for (i, header) in h.headers.iter().enumerate() {
            match (HeaderName::try_from(header.name.as_str()), HeaderValue::try_from(header.value.as_str())) {
                (Ok(name), Ok(value)) => {
                    if name == http::header::CONNECTION {
                        errors.add(
                            format!("spec.probe.http.headers[{i}].name"),
                            "Connection cannot be set: probes never keep connections",
                        );
                    }
                    headers.push((name, value))
                }
                (Err(_), _) => errors.add(
                    format!("spec.probe.http.headers[{i}].name"),
                    format!("{:?} is not a valid header name", header.name),
                ),
                (_, Err(_)) => errors.add(
                    format!("spec.probe.http.headers[{i}].value"),
                    "not a valid header value (control characters are not allowed)",
                ),
            }
        }
        let expected = match &h.expected_status {
            None => StatusRanges::default(),
            Some(s) => s.parse().unwrap_or_else(|msg: String| {
                errors.add(
                    "spec.probe.http.expectedStatus",
                    format!("{msg}; write codes and ranges like 200-399 or 200,204"),
                );
                StatusRanges::default()
            }),
        };
        let body = h.body_match.as_ref().and_then(|b| body_match(errors, b));
        ProbeSpec::Http(HttpSpec {
            path: h.path.clone(),
            port,
            tls: h.scheme == Scheme::Https,
            headers,
            expected,
            body,
            follow_redirects: h.follow_redirects,
            insecure_skip_verify: h.insecure_skip_verify,
        })
    } else if let Some(t) = &p.tcp {
        let port = t.port.as_ref().and_then(|pt| port(errors, "spec.probe.tcp.port", pt, target));
        if t.port.is_none() {
            require_port(errors, "spec.probe.tcp.port", &port, target);
        }
        ProbeSpec::Tcp(TcpSpec { port })
    } else if let Some(i) = &p.icmp {
        // Checked here too, so that a folder's YAML gets the CRD's limits.
        if !(1..=20).contains(&i.count) {
            errors.add("spec.probe.icmp.count", "must be 1 to 20");
        }
        if !(10..=5000).contains(&i.interval_milliseconds) {
            errors.add("spec.probe.icmp.intervalMilliseconds", "must be 10 to 5000");
        }
        if i.max_packet_loss_percent > 99 {
            errors.add("spec.probe.icmp.maxPacketLossPercent", "must be 0 to 99");
        }
        let burst = u64::from(i.count.saturating_sub(1)) * u64::from(i.interval_milliseconds);
        if burst >= u64::from(p.timeout_seconds) * 1000 {
            errors.add(
                "spec.probe.icmp",
                format!(
                    "{} requests {} ms apart take {burst} ms, which leaves no time for the last reply within timeoutSeconds {}",
                    i.count, i.interval_milliseconds, p.timeout_seconds
                ),
            );
        }
        ProbeSpec::Icmp(IcmpSpec {
            count: i.count,
            interval: std::time::Duration::from_millis(u64::from(i.interval_milliseconds)),
            max_loss_percent: i.max_packet_loss_percent,
        })
    } else if p.arp.is_some() {
        ProbeSpec::Arp
    } else if let Some(g) = &p.grpc {
        let port = g.port.as_ref().and_then(|pt| port(errors, "spec.probe.grpc.port", pt, target));
        if g.port.is_none() {
            require_port(errors, "spec.probe.grpc.port", &port, target);
        }
        if g.insecure_skip_verify && !g.tls {
            errors.add("spec.probe.grpc.insecureSkipVerify", "only meaningful with tls: true");
        }
        ProbeSpec::Grpc(GrpcSpec {
            port,
            service: g.service.clone().unwrap_or_default(),
            tls: g.tls,
            insecure_skip_verify: g.insecure_skip_verify,
        })
    } else if let Some(e) = &p.exec {
        if e.command.is_empty() || e.command[0].is_empty() {
            errors.add("spec.probe.exec.command", "needs at least the program to run");
        }
        if let Some(kind @ ("pods" | "vms")) = kind_of_target {
            errors.add(
                "spec.probe.exec",
                format!("exec probes run on the node or inside a container; they are not available for {kind} targets"),
            );
        }
        ProbeSpec::Exec(ExecSpec { command: e.command.clone() })
    } else if p.docker.is_some() {
        if kind_of_target.is_some_and(|k| k != "containers") {
            errors.add("spec.probe.docker", "the docker probe needs a containers target");
        }
        ProbeSpec::Docker
    } else {
        let q = p.qmp.as_ref()?;
        if kind_of_target.is_some_and(|k| k != "vms") {
            errors.add("spec.probe.qmp", "the qmp probe needs a vms target");
        }
        if q.checks.is_empty() {
            errors.add(
                "spec.probe.qmp.checks",
                "at least one of runState, guestAgent, blockDevices, filesystems, readOnlyFilesystems, guestMemory, console",
            );
        }
        if !(1..=100).contains(&q.filesystem_usage_percent) {
            errors.add("spec.probe.qmp.filesystemUsagePercent", "must be from 1 to 100");
        }
        if !(1..=99).contains(&q.memory_available_percent) {
            errors.add("spec.probe.qmp.memoryAvailablePercent", "must be from 1 to 99");
        }
        for (i, m) in q.read_only_allowed.iter().enumerate() {
            if !m.starts_with('/') {
                errors.add(
                    format!("spec.probe.qmp.readOnlyAllowed[{i}]"),
                    format!("{m:?} is not a mount point (an absolute path such as /boot)"),
                );
            }
        }
        let mut checks: Vec<String> = q
            .checks
            .iter()
            .map(|c| {
                serde_json::to_value(c).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            })
            .collect();
        checks.dedup();
        if q.boot_grace_seconds == 0 {
            errors.add("spec.probe.qmp.bootGraceSeconds", "must be at least 1");
        }
        ProbeSpec::Qmp(QmpSpec {
            checks,
            filesystem_usage_percent: q.filesystem_usage_percent,
            boot_grace: std::time::Duration::from_secs(u64::from(q.boot_grace_seconds)),
            memory_available_percent: q.memory_available_percent,
            read_only_allowed: q.read_only_allowed.clone(),
        })
    };
    (errors.0.len() == before).then_some(spec)
}

fn body_match(errors: &mut Errors, b: &api::BodyMatch) -> Option<BodyMatcher> {
    if !exactly_one(
        errors,
        "spec.probe.http.bodyMatch",
        &[("contains", b.contains.is_some()), ("regex", b.regex.is_some())],
    ) {
        return None;
    }
    if let Some(text) = &b.contains {
        if text.is_empty() {
            errors.add("spec.probe.http.bodyMatch.contains", "must not be empty");
            return None;
        }
        return Some(BodyMatcher::Contains(text.clone()));
    }
    let source = b.regex.as_ref()?;
    if source.len() > MAX_REGEX_LEN {
        errors.add("spec.probe.http.bodyMatch.regex", format!("longer than {MAX_REGEX_LEN} bytes"));
        return None;
    }
    match regex::RegexBuilder::new(source).size_limit(1 << 20).build() {
        Ok(re) => Some(BodyMatcher::Regex(re)),
        Err(e) => {
            errors.add("spec.probe.http.bodyMatch.regex", format!("not a valid regular expression: {e}"));
            None
        }
    }
}

fn timing(errors: &mut Errors, p: &api::Probe) -> Timing {
    let at_least_one = |errors: &mut Errors, field: &str, v: u32| {
        if v < 1 {
            errors.add(format!("spec.probe.{field}"), format!("{v} is below the minimum of 1"));
        }
    };
    at_least_one(errors, "periodSeconds", p.period_seconds);
    at_least_one(errors, "timeoutSeconds", p.timeout_seconds);
    at_least_one(errors, "successThreshold", p.success_threshold);
    at_least_one(errors, "failureThreshold", p.failure_threshold);
    if let Some(fast) = p.failing_period_seconds {
        at_least_one(errors, "failingPeriodSeconds", fast);
        if fast > p.period_seconds {
            errors.add(
                "spec.probe.failingPeriodSeconds",
                format!(
                    "{fast} is longer than periodSeconds ({}); it is meant to probe faster while failing",
                    p.period_seconds
                ),
            );
        }
    }
    let secs = |v: u32| Duration::from_secs(u64::from(v.max(1)));
    Timing {
        initial_delay: Duration::from_secs(u64::from(p.initial_delay_seconds)),
        period: secs(p.period_seconds),
        failing_period: p.failing_period_seconds.map(secs),
        timeout: secs(p.timeout_seconds),
        success_threshold: p.success_threshold.max(1),
        failure_threshold: p.failure_threshold.max(1),
    }
}

fn action(errors: &mut Errors, a: &api::Action, target: Option<&TargetDef>) -> Option<ActionDef> {
    let kind = match a.kind {
        ActionType::None => None,
        ActionType::RestartContainer => Some(ActionKind::RestartContainer),
        ActionType::RestartVm => Some(ActionKind::RestartVm),
        ActionType::EvictPod => Some(ActionKind::EvictPod),
        ActionType::Exec => Some(ActionKind::Exec),
    };
    if let (Some(kind), Some(target)) = (kind, target) {
        let needs = match kind {
            ActionKind::RestartContainer => Some("containers"),
            ActionKind::RestartVm => Some("vms"),
            ActionKind::EvictPod => Some("pods"),
            ActionKind::Exec => None,
        };
        if let Some(needs) = needs.filter(|n| *n != target.kind()) {
            errors.add(
                "spec.action.type",
                format!("{} needs a {needs} target, not {}", kind.as_str(), target.kind()),
            );
        }
    }
    let exec = match (&a.exec, kind) {
        (Some(e), Some(ActionKind::Exec)) => {
            if e.command.is_empty() || e.command[0].is_empty() {
                errors.add("spec.action.exec.command", "needs at least the program to run");
            }
            Some((e.command.clone(), Duration::from_secs(u64::from(e.timeout_seconds.max(1)))))
        }
        (None, Some(ActionKind::Exec)) => {
            errors.add("spec.action.exec", "required when type is exec");
            None
        }
        (Some(_), _) => {
            errors.add("spec.action.exec", "only used when type is exec");
            None
        }
        (None, _) => None,
    };
    if a.max_restarts < 1 {
        errors.add("spec.action.maxRestarts", "must be at least 1 (use type: none to disable actions)");
    }
    if a.window_seconds < 1 {
        errors.add("spec.action.windowSeconds", "must be at least 1");
    }
    if a.backoff.multiplier < 1 {
        errors.add("spec.action.backoff.multiplier", "must be at least 1");
    }
    if a.backoff.max_seconds < a.backoff.initial_seconds {
        errors.add(
            "spec.action.backoff.maxSeconds",
            format!("{} is below initialSeconds ({})", a.backoff.max_seconds, a.backoff.initial_seconds),
        );
    }
    let max_unhealthy = match &a.max_unhealthy {
        None => None,
        Some(IntOrString::Int(n)) => match u32::try_from(*n) {
            Ok(n) => Some(Limit::Count(n)),
            Err(_) => {
                errors.add(
                    "spec.action.maxUnhealthy",
                    format!("{n} is negative: use a count or a percentage like \"40%\""),
                );
                None
            }
        },
        Some(IntOrString::String(s)) => {
            let parsed = s.strip_suffix('%').and_then(|p| p.trim().parse::<u32>().ok()).filter(|p| *p <= 100);
            match (parsed, s.parse::<u32>()) {
                (Some(p), _) => Some(Limit::Percent(p)),
                (None, Ok(n)) => Some(Limit::Count(n)),
                _ => {
                    errors.add(
                        "spec.action.maxUnhealthy",
                        format!("{s:?} is neither a count nor a percentage from 0% to 100%"),
                    );
                    None
                }
            }
        }
    };
    let kind = kind?;
    Some(ActionDef {
        kind,
        exec,
        policy: RestartPolicy {
            max_restarts: a.max_restarts.max(1),
            window: Duration::from_secs(u64::from(a.window_seconds.max(1))),
            backoff_initial: Duration::from_secs(u64::from(a.backoff.initial_seconds)),
            backoff_max: Duration::from_secs(u64::from(a.backoff.max_seconds)),
            multiplier: a.backoff.multiplier.max(1),
        },
        max_unhealthy,
    })
}
