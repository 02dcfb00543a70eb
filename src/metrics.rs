//! Prometheus metrics, registered in an explicit registry passed in (never the global default).
//!
//! Two kinds:
//! - the agent's own figures ([`AgentMetrics`]): plain counters, gauges and histograms;
//! - per target, per instance and per HealthCheck figures, generated at scrape time from the
//!   agent's live view by a [`Collector`] ([`ViewCollector`]). Nothing is kept per series
//!   between scrapes, so a removed check or instance leaves no series behind, and ten thousand
//!   targets cost a few hundred bytes each rather than a metric object per series.
//!
//! Label sets are bounded by configuration: per target (`namespace`, `healthcheck`,
//! `instance_id`, `probe`), per instance (`instance_id`, `instance_kind`), per failure reason (a
//! fixed set). The target's label is `instance_id`, because Prometheus reserves `instance` for the
//! scrape target. Probe durations are a histogram per HealthCheck (aggregated over its targets)
//! and a gauge per target: a histogram per target would be 17 series each.

use std::sync::Arc;

use prometheus::proto::MetricType;
use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Upper bounds of the probe duration histogram, seconds.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const LATENESS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The agent's own metrics.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    /// Probes run, by probe kind and outcome (`healthy`, `unhealthy`, `unknown`).
    pub probes: IntCounterVec,
    /// How late probes start against their schedule.
    pub scheduler_lateness: Histogram,
    /// (check, instance) pairs being probed.
    pub managed_checks: IntGauge,
    /// HealthChecks known, by state (`valid`, `invalid`).
    pub healthchecks: IntGaugeVec,
    /// Configuration problems.
    pub config_errors: IntGauge,
    /// Status writes (state folder or API server) by kind and result.
    pub status_writes: IntCounterVec,
    /// Probes that panicked (recorded as unknown; the worker goes on), by probe kind.
    pub probe_panics: IntCounterVec,
    /// Long-lived followers (a VM's QMP connection) that died and were started again, by kind.
    pub follower_restarts: IntCounterVec,
    /// Process figures, refreshed at each scrape.
    pub process: ProcessMetrics,
}

/// The process's own figures.
#[derive(Clone, Debug)]
pub struct ProcessMetrics {
    cpu_seconds: Counter,
    resident_memory: IntGauge,
    open_fds: IntGauge,
    start_time: prometheus::Gauge,
}

impl AgentMetrics {
    /// Creates and registers the agent's own metrics.
    pub fn register(registry: &Registry) -> Result<AgentMetrics, prometheus::Error> {
        let probes = IntCounterVec::new(
            Opts::new("vigil_probes_total", "Probes run by this agent, by probe kind and outcome."),
            &["probe", "outcome"],
        )?;
        let scheduler_lateness = Histogram::with_opts(
            HistogramOpts::new(
                "vigil_scheduler_lateness_seconds",
                "How late probes start against their schedule.",
            )
            .buckets(LATENESS_BUCKETS.to_vec()),
        )?;
        let managed_checks =
            IntGauge::new("vigil_managed_checks", "Check targets being probed by this agent.")?;
        let healthchecks = IntGaugeVec::new(
            Opts::new("vigil_healthchecks", "HealthChecks known to this agent, by state."),
            &["state"],
        )?;
        let config_errors = IntGauge::new(
            "vigil_config_errors",
            "Configuration problems: files or documents that could not be loaded, and invalid HealthChecks.",
        )?;
        let status_writes = IntCounterVec::new(
            Opts::new(
                "vigil_status_writes_total",
                "Status writes (state folder or API server), by kind and result.",
            ),
            &["kind", "result"],
        )?;
        let probe_panics = IntCounterVec::new(
            Opts::new(
                "vigil_probe_panics_total",
                "Probes that panicked: each is recorded as unknown (an internal error) and its worker goes on.",
            ),
            &["probe"],
        )?;
        let follower_restarts = IntCounterVec::new(
            Opts::new(
                "vigil_follower_restarts_total",
                "Followers of a runtime object (a VM's QMP connection) that died and were started again.",
            ),
            &["kind"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("vigil_build_info", "Always 1; the labels say which vigil is running."),
            &["version"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let process = ProcessMetrics {
            cpu_seconds: Counter::new(
                "process_cpu_seconds_total",
                "User and system CPU time spent, in seconds.",
            )?,
            resident_memory: IntGauge::new(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            )?,
            open_fds: IntGauge::new("process_open_fds", "Open file descriptors.")?,
            start_time: prometheus::Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
            )?,
        };
        registry.register(Box::new(probes.clone()))?;
        registry.register(Box::new(scheduler_lateness.clone()))?;
        registry.register(Box::new(managed_checks.clone()))?;
        registry.register(Box::new(healthchecks.clone()))?;
        registry.register(Box::new(config_errors.clone()))?;
        registry.register(Box::new(status_writes.clone()))?;
        registry.register(Box::new(probe_panics.clone()))?;
        registry.register(Box::new(follower_restarts.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(process.cpu_seconds.clone()))?;
        registry.register(Box::new(process.resident_memory.clone()))?;
        registry.register(Box::new(process.open_fds.clone()))?;
        registry.register(Box::new(process.start_time.clone()))?;
        Ok(AgentMetrics {
            probes,
            scheduler_lateness,
            managed_checks,
            healthchecks,
            config_errors,
            status_writes,
            probe_panics,
            follower_restarts,
            process,
        })
    }
}

impl ProcessMetrics {
    /// Reads /proc/self now.
    pub fn refresh(&self) {
        let Ok(me) = procfs::process::Process::myself() else { return };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let total = (stat.utime + stat.stime) as f64 / ticks;
            // A counter only goes up: add what was spent since the last scrape.
            let delta = total - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
            self.resident_memory
                .set(i64::try_from(stat.rss.saturating_mul(procfs::page_size())).unwrap_or(i64::MAX));
            if let Ok(boot) = procfs::boot_time_secs() {
                self.start_time.set(boot as f64 + stat.starttime as f64 / ticks);
            }
        }
        if let Ok(n) = me.fd_count() {
            self.open_fds.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// A compact histogram with the bounds of [`DURATION_BUCKETS`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DurationHistogram {
    /// Count per bucket (not cumulative); the last one is `+Inf`.
    pub buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// Sum of the observations.
    pub sum: f64,
}

impl DurationHistogram {
    /// Adds one observation.
    pub fn observe(&mut self, seconds: f64) {
        let i = DURATION_BUCKETS.iter().position(|le| seconds <= *le).unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += seconds;
    }

    /// Adds another histogram's observations.
    pub fn add(&mut self, other: &DurationHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum += other.sum;
    }
}

/// One check target, as scraped.
#[derive(Clone, Debug)]
pub struct TargetSample {
    /// HealthCheck namespace.
    pub namespace: Arc<str>,
    /// HealthCheck name.
    pub healthcheck: Arc<str>,
    /// Instance id.
    pub instance_id: Arc<str>,
    /// Probe kind.
    pub probe: &'static str,
    /// Whether the last probe passed; `None` before any definite answer.
    pub up: Option<bool>,
    /// Whether the check is impaired.
    pub impaired: bool,
    /// Duration of the last probe, seconds.
    pub last_duration: Option<f64>,
    /// Probes that could not run, by cause.
    pub errors: Vec<(&'static str, u64)>,
    /// Failed probes by reason.
    pub failures: Vec<(&'static str, u64)>,
    /// Actions taken by result: (action, succeeded, count).
    pub actions: Vec<(&'static str, bool, u64)>,
}

/// One instance, as scraped.
#[derive(Clone, Debug)]
pub struct InstanceSample {
    /// Instance id.
    pub instance_id: Arc<str>,
    /// Instance kind.
    pub kind: &'static str,
    /// System status check impaired.
    pub system: bool,
    /// Instance status check impaired.
    pub instance: bool,
    /// Attached-volume status check impaired.
    pub volumes: bool,
    /// The owner's verdict in force: impaired (`true`) or ok; `None` without one.
    pub reported_impaired: Option<bool>,
}

/// One HealthCheck's probe durations, as scraped.
#[derive(Clone, Debug)]
pub struct CheckSample {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub healthcheck: Arc<str>,
    /// Probe kind.
    pub probe: &'static str,
    /// Durations of its probes on every target.
    pub durations: DurationHistogram,
}

/// Everything the view contributes to a scrape.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Per target.
    pub targets: Vec<TargetSample>,
    /// Per instance.
    pub instances: Vec<InstanceSample>,
    /// Per HealthCheck.
    pub checks: Vec<CheckSample>,
}

/// Appends one family in the text format — `# HELP`, `# TYPE` and its series — or nothing when
/// it has no series. For collectors outside this module that render live state at scrape time.
pub fn push_family<'a>(
    out: &mut String,
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
    series: impl IntoIterator<Item = (Vec<&'a str>, f64)>,
) {
    let family = Family { name, help, kind, labels };
    let start = out.len();
    push_header(out, &family);
    let header_end = out.len();
    for (values, value) in series {
        push_series(out, name, "", labels, &values, value);
    }
    if out.len() == header_end {
        out.truncate(start);
    }
}

/// What the [`ViewCollector`] reads.
pub trait SampleSource: Send + Sync + std::fmt::Debug {
    /// The samples now.
    fn samples(&self) -> Samples;
}

const TARGET_LABELS: [&str; 4] = ["namespace", "healthcheck", "instance_id", "probe"];
const INSTANCE_LABELS: [&str; 2] = ["instance_id", "instance_kind"];

struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const FAMILIES: &[Family] = &[
    Family {
        name: "vigil_probe_up",
        help: "1 when the last probe of the target passed, 0 when it failed (absent until one did either).",
        kind: MetricType::GAUGE,
        labels: &TARGET_LABELS,
    },
    Family {
        name: "vigil_check_impaired",
        help: "1 while the check is impaired on the target (failureThreshold failures in a row), else 0.",
        kind: MetricType::GAUGE,
        labels: &TARGET_LABELS,
    },
    Family {
        name: "vigil_probe_last_duration_seconds",
        help: "Duration of the last probe of the target.",
        kind: MetricType::GAUGE,
        labels: &TARGET_LABELS,
    },
    Family {
        name: "vigil_probe_failures_total",
        help: "Failed probes of the target, by reason (timeout, refused, dns, tls, status, ...).",
        kind: MetricType::COUNTER,
        labels: &["namespace", "healthcheck", "instance_id", "probe", "reason"],
    },
    Family {
        name: "vigil_probe_errors_total",
        help: "Probes of the target that could not run, by cause (no-runtime, runtime-unreachable, ...): insufficient data, never a failure.",
        kind: MetricType::COUNTER,
        labels: &["namespace", "healthcheck", "instance_id", "probe", "cause"],
    },
    Family {
        name: "vigil_restarts_total",
        help: "Remediation actions taken on the target, by action and result (success, failure).",
        kind: MetricType::COUNTER,
        labels: &["namespace", "healthcheck", "instance_id", "action", "result"],
    },
    Family {
        name: "vigil_probe_duration_seconds",
        help: "Durations of the probes, per probe kind (per HealthCheck, over all its targets, with --metrics-detail full).",
        kind: MetricType::HISTOGRAM,
        labels: &["namespace", "healthcheck", "probe"],
    },
    Family {
        name: "vigil_status_check_failed",
        help: "1 when any status check of the instance is impaired (CloudWatch StatusCheckFailed).",
        kind: MetricType::GAUGE,
        labels: &INSTANCE_LABELS,
    },
    Family {
        name: "vigil_status_check_failed_system",
        help: "1 when the System status check of the instance is impaired.",
        kind: MetricType::GAUGE,
        labels: &INSTANCE_LABELS,
    },
    Family {
        name: "vigil_status_check_failed_instance",
        help: "1 when the Instance status check of the instance is impaired.",
        kind: MetricType::GAUGE,
        labels: &INSTANCE_LABELS,
    },
    Family {
        name: "vigil_status_check_failed_attached_volume",
        help: "1 when the Attached-volume status check of the instance is impaired.",
        kind: MetricType::GAUGE,
        labels: &INSTANCE_LABELS,
    },
    Family {
        name: "vigil_instance_reported_impaired",
        help: "1 while the instance's owner reports it impaired, 0 while they report it ok (spec.report); absent without a report in force.",
        kind: MetricType::GAUGE,
        labels: &INSTANCE_LABELS,
    },
];

/// Writes the per-target, per-instance and per-check families from the live view at each scrape,
/// straight into the text exposition format: at ten thousand targets a scrape is tens of
/// thousands of series, and building the crate's metric objects for each would cost far more
/// memory than the series themselves.
#[derive(Debug)]
pub struct ViewCollector {
    source: Arc<dyn SampleSource>,
    detail: MetricsDetail,
}

/// Which per-target and per-HealthCheck series a scrape has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MetricsDetail {
    /// Per target: up, impaired and the counters; the duration histogram per probe kind. About
    /// 450 bytes per target of one HealthCheck, a fifth of `full`.
    #[default]
    Basic,
    /// Also each target's last probe duration and a duration histogram per HealthCheck.
    Full,
}

/// Appends a label value, escaped as the text format requires.
fn push_escaped(out: &mut String, value: &str) {
    // Most values need no escape: copied at once.
    if !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_series(out: &mut String, name: &str, suffix: &str, names: &[&str], values: &[&str], value: f64) {
    use std::fmt::Write;
    out.push_str(name);
    out.push_str(suffix);
    if !names.is_empty() {
        out.push('{');
        for (i, (n, v)) in names.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(n);
            out.push_str("=\"");
            push_escaped(out, v);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value == 0.0 {
        out.push('0');
    } else if value == 1.0 {
        out.push('1');
    } else {
        let _ = write!(out, "{value}");
    }
    out.push('\n');
}

fn push_header(out: &mut String, f: &Family) {
    let kind = match f.kind {
        MetricType::COUNTER => "counter",
        MetricType::HISTOGRAM => "histogram",
        _ => "gauge",
    };
    out.push_str("# HELP ");
    out.push_str(f.name);
    out.push(' ');
    out.push_str(f.help);
    out.push_str("\n# TYPE ");
    out.push_str(f.name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

impl ViewCollector {
    /// A collector over `source`, with the series `detail` asks for.
    pub fn new(source: Arc<dyn SampleSource>, detail: MetricsDetail) -> ViewCollector {
        ViewCollector { source, detail }
    }

    /// Appends the families to `out` in the text format.
    pub fn encode(&self, out: &mut String) {
        let s = self.source.samples();
        let target = |t: &TargetSample| -> [Arc<str>; 3] {
            [t.namespace.clone(), t.healthcheck.clone(), t.instance_id.clone()]
        };
        for (i, f) in FAMILIES.iter().enumerate() {
            let start = out.len();
            push_header(out, f);
            let header_end = out.len();
            match i {
                0..=5 => {
                    for t in &s.targets {
                        let [ns, hc, id] = target(t);
                        let base = [&*ns, &*hc, &*id, t.probe];
                        match i {
                            0 => {
                                if let Some(up) = t.up {
                                    push_series(out, f.name, "", f.labels, &base, f64::from(u8::from(up)));
                                }
                            }
                            1 => {
                                push_series(out, f.name, "", f.labels, &base, f64::from(u8::from(t.impaired)))
                            }
                            2 => {
                                if let Some(d) =
                                    t.last_duration.filter(|_| self.detail == MetricsDetail::Full)
                                {
                                    push_series(out, f.name, "", f.labels, &base, d);
                                }
                            }
                            3 => {
                                for (reason, n) in &t.failures {
                                    let l = [base[0], base[1], base[2], base[3], reason];
                                    push_series(out, f.name, "", f.labels, &l, *n as f64);
                                }
                            }
                            4 => {
                                for (cause, n) in &t.errors {
                                    let l = [base[0], base[1], base[2], base[3], cause];
                                    push_series(out, f.name, "", f.labels, &l, *n as f64);
                                }
                            }
                            _ => {
                                for (action, ok, n) in &t.actions {
                                    let result = if *ok { "success" } else { "failure" };
                                    let l = [base[0], base[1], base[2], action, result];
                                    push_series(out, f.name, "", f.labels, &l, *n as f64);
                                }
                            }
                        }
                    }
                }
                6 if self.detail == MetricsDetail::Basic => {
                    // One histogram per probe kind: the sum of the HealthChecks' own.
                    let mut kinds: Vec<(&str, DurationHistogram)> = Vec::new();
                    for c in &s.checks {
                        match kinds.iter_mut().find(|(k, _)| *k == c.probe) {
                            Some((_, h)) => h.add(&c.durations),
                            None => kinds.push((c.probe, c.durations.clone())),
                        }
                    }
                    kinds.sort_by_key(|(k, _)| *k);
                    for (probe, h) in &kinds {
                        let mut cumulative = 0;
                        for (k, n) in h.buckets.iter().enumerate() {
                            cumulative += n;
                            let le =
                                DURATION_BUCKETS.get(k).map_or_else(|| "+Inf".to_owned(), |b| format!("{b}"));
                            push_series(
                                out,
                                f.name,
                                "_bucket",
                                &["probe", "le"],
                                &[probe, le.as_str()],
                                cumulative as f64,
                            );
                        }
                        push_series(out, f.name, "_sum", &["probe"], &[probe], h.sum);
                        push_series(out, f.name, "_count", &["probe"], &[probe], cumulative as f64);
                    }
                }
                6 => {
                    let mut with_le: Vec<&str> = f.labels.to_vec();
                    with_le.push("le");
                    for c in &s.checks {
                        let base = [&*c.namespace, &*c.healthcheck, c.probe];
                        let mut cumulative = 0;
                        for (k, n) in c.durations.buckets.iter().enumerate() {
                            cumulative += n;
                            let le =
                                DURATION_BUCKETS.get(k).map_or_else(|| "+Inf".to_owned(), |b| format!("{b}"));
                            let l = [base[0], base[1], base[2], le.as_str()];
                            push_series(out, f.name, "_bucket", &with_le, &l, cumulative as f64);
                        }
                        push_series(out, f.name, "_sum", f.labels, &base, c.durations.sum);
                        push_series(out, f.name, "_count", f.labels, &base, cumulative as f64);
                    }
                }
                _ => {
                    for inst in &s.instances {
                        // An endpoint's System and Attached-volume checks are not applicable:
                        // no series for them (as CloudWatch has none).
                        if inst.kind == "Endpoint" && (i == 8 || i == 10) {
                            continue;
                        }
                        let flag = match i {
                            7 => inst.system || inst.instance || inst.volumes,
                            8 => inst.system,
                            9 => inst.instance,
                            10 => inst.volumes,
                            _ => match inst.reported_impaired {
                                Some(impaired) => impaired,
                                None => continue,
                            },
                        };
                        push_series(
                            out,
                            f.name,
                            "",
                            f.labels,
                            &[&*inst.instance_id, inst.kind],
                            f64::from(u8::from(flag)),
                        );
                    }
                }
            }
            if out.len() == header_end {
                // No series: no header either.
                out.truncate(start);
            }
        }
    }
}

/// The registry's content in the Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut buf = Vec::with_capacity(64 * 1024);
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_their_bucket() {
        let mut h = DurationHistogram::default();
        h.observe(0.0004);
        h.observe(0.001);
        h.observe(20.0);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[DURATION_BUCKETS.len()], 1);
        assert!((h.sum - 20.0014).abs() < 1e-9);
    }

    #[derive(Debug)]
    struct Fixed(Samples);

    impl SampleSource for Fixed {
        fn samples(&self) -> Samples {
            self.0.clone()
        }
    }

    fn samples_target() -> TargetSample {
        TargetSample {
            namespace: "n".into(),
            healthcheck: "h".into(),
            instance_id: "i".into(),
            probe: "tcp",
            up: None,
            impaired: false,
            last_duration: None,
            errors: Vec::new(),
            failures: Vec::new(),
            actions: Vec::new(),
        }
    }

    #[test]
    fn view_families_render() {
        let registry = Registry::new();
        let t = TargetSample {
            namespace: "default".into(),
            healthcheck: "web".into(),
            instance_id: "endpoint-a".into(),
            probe: "http",
            up: Some(false),
            impaired: true,
            last_duration: Some(0.002),
            errors: Vec::new(),
            failures: vec![("refused", 3)],
            actions: vec![("exec", true, 1)],
        };
        let mut durations = DurationHistogram::default();
        durations.observe(0.002);
        let samples = Samples {
            targets: vec![t],
            instances: vec![
                InstanceSample {
                    instance_id: "endpoint-a".into(),
                    kind: "Endpoint",
                    system: false,
                    instance: true,
                    volumes: false,
                    reported_impaired: Some(true),
                },
                InstanceSample {
                    instance_id: "host-a".into(),
                    kind: "Host",
                    system: true,
                    instance: false,
                    volumes: false,
                    reported_impaired: None,
                },
            ],
            checks: vec![CheckSample {
                namespace: "default".into(),
                healthcheck: "web".into(),
                probe: "http",
                durations,
            }],
        };
        let mut text = encode(&registry).unwrap();
        ViewCollector::new(Arc::new(Fixed(samples.clone())), MetricsDetail::Full).encode(&mut text);
        // An endpoint has no System or Attached-volume check: no series for them.
        for absent in [
            "vigil_status_check_failed_system{instance_id=\"endpoint-a\"",
            "vigil_status_check_failed_attached_volume{instance_id=\"endpoint-a\"",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        // Basic: no last duration per target, one histogram per probe kind.
        let mut second = samples.clone();
        let mut other = second.checks[0].clone();
        other.healthcheck = "api".into();
        second.checks.push(other);
        let mut basic = String::new();
        ViewCollector::new(Arc::new(Fixed(second)), MetricsDetail::Basic).encode(&mut basic);
        assert!(!basic.contains("vigil_probe_last_duration_seconds"), "{basic}");
        assert!(
            basic.contains("vigil_probe_duration_seconds_bucket{probe=\"http\",le=\"0.0025\"} 2\n"),
            "{basic}"
        );
        assert!(basic.contains("vigil_probe_duration_seconds_count{probe=\"http\"} 2\n"), "{basic}");
        assert!(!basic.contains("healthcheck=\"api\""), "{basic}");
        assert!(basic.contains("vigil_probe_up{namespace=\"default\",healthcheck=\"web\""), "{basic}");
        for line in [
            "vigil_probe_up{namespace=\"default\",healthcheck=\"web\",instance_id=\"endpoint-a\",probe=\"http\"} 0",
            "vigil_check_impaired{namespace=\"default\",healthcheck=\"web\",instance_id=\"endpoint-a\",probe=\"http\"} 1",
            "vigil_probe_failures_total{namespace=\"default\",healthcheck=\"web\",instance_id=\"endpoint-a\",probe=\"http\",reason=\"refused\"} 3",
            "vigil_probe_duration_seconds_bucket{namespace=\"default\",healthcheck=\"web\",probe=\"http\",le=\"0.0025\"} 1",
            "vigil_probe_duration_seconds_bucket{namespace=\"default\",healthcheck=\"web\",probe=\"http\",le=\"+Inf\"} 1",
            "vigil_probe_duration_seconds_count{namespace=\"default\",healthcheck=\"web\",probe=\"http\"} 1",
            "vigil_status_check_failed{instance_id=\"endpoint-a\",instance_kind=\"Endpoint\"} 1",
            "vigil_instance_reported_impaired{instance_id=\"endpoint-a\",instance_kind=\"Endpoint\"} 1",
            "vigil_status_check_failed_system{instance_id=\"host-a\",instance_kind=\"Host\"} 1",
            "vigil_status_check_failed_attached_volume{instance_id=\"host-a\",instance_kind=\"Host\"} 0",
            "vigil_probe_last_duration_seconds{namespace=\"default\",healthcheck=\"web\",instance_id=\"endpoint-a\",probe=\"http\"} 0.002",
            "vigil_restarts_total{namespace=\"default\",healthcheck=\"web\",instance_id=\"endpoint-a\",action=\"exec\",result=\"success\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains("vigil_probe_errors_total"),
            "zero error counters are not emitted, nor their header"
        );

        let quoted = TargetSample {
            instance_id: "a\"b\\c".into(),
            errors: vec![("runtime-unreachable", 2)],
            ..samples_target()
        };
        let mut text = String::new();
        ViewCollector::new(
            Arc::new(Fixed(Samples { targets: vec![quoted], ..Samples::default() })),
            MetricsDetail::Full,
        )
        .encode(&mut text);
        assert!(text.contains("instance_id=\"a\\\"b\\\\c\""), "{text}");
        assert!(
            text.contains("vigil_probe_errors_total{namespace=\"n\",healthcheck=\"h\",instance_id=\"a\\\"b\\\\c\",probe=\"tcp\",cause=\"runtime-unreachable\"} 2"),
            "{text}"
        );
    }
}
