//! Prometheus metrics, registered in an explicit registry passed in (never the global default).
//!
//! Label sets are bounded by configuration: per check target (`namespace`, `healthcheck`,
//! `instance_id`, `probe`), per instance (`instance_id`, `instance_kind`) and per failure reason
//! (a fixed set). Series of removed checks and instances are deleted. The target's label is
//! `instance_id`, because Prometheus reserves `instance` for the scrape target.

use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Labels of a check target.
pub const TARGET_LABELS: &[&str] = &["namespace", "healthcheck", "instance_id", "probe"];
/// Labels of an instance.
pub const INSTANCE_LABELS: &[&str] = &["instance_id", "instance_kind"];

const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const LATENESS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The agent's metrics.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    /// 1 when the last probe of a target passed, 0 when it failed (unchanged when it could not
    /// run).
    pub probe_up: GaugeVec,
    /// 1 while a target's check is `impaired` (after the thresholds), else 0.
    pub check_impaired: GaugeVec,
    /// Probe durations.
    pub probe_duration: HistogramVec,
    /// Failed probes by reason.
    pub probe_failures: IntCounterVec,
    /// Probes that could not run.
    pub probe_errors: IntCounterVec,
    /// Remediation actions by result.
    pub restarts: IntCounterVec,
    /// 1 when any status check of the instance is impaired (CloudWatch `StatusCheckFailed`).
    pub status_check_failed: IntGaugeVec,
    /// 1 when the System status check is impaired.
    pub status_check_failed_system: IntGaugeVec,
    /// 1 when the Instance status check is impaired.
    pub status_check_failed_instance: IntGaugeVec,
    /// 1 when the Attached-volume status check is impaired.
    pub status_check_failed_attached_volume: IntGaugeVec,
    /// How late probes start against their schedule.
    pub scheduler_lateness: Histogram,
    /// (check, instance) pairs being probed.
    pub managed_checks: IntGauge,
    /// HealthChecks known, by state (`valid`, `invalid`).
    pub healthchecks: IntGaugeVec,
    /// Problems in the configuration (files or documents that could not be loaded).
    pub config_errors: IntGauge,
    /// Status writes (state folder or API server) by kind and result.
    pub status_writes: IntCounterVec,
    /// Process figures, refreshed at each scrape.
    pub process: ProcessMetrics,
}

/// The process's own figures.
#[derive(Clone, Debug)]
pub struct ProcessMetrics {
    cpu_seconds: Counter,
    resident_memory: IntGauge,
    open_fds: IntGauge,
    start_time: Gauge,
}

impl AgentMetrics {
    /// Creates and registers the agent's metrics.
    pub fn register(registry: &Registry) -> Result<AgentMetrics, prometheus::Error> {
        let probe_up = GaugeVec::new(
            Opts::new("vigil_probe_up", "1 when the last probe of the target passed, 0 when it failed."),
            TARGET_LABELS,
        )?;
        let check_impaired = GaugeVec::new(
            Opts::new(
                "vigil_check_impaired",
                "1 while the check is impaired on the target (failureThreshold failures in a row), else 0.",
            ),
            TARGET_LABELS,
        )?;
        let probe_duration = HistogramVec::new(
            HistogramOpts::new("vigil_probe_duration_seconds", "Duration of probes.")
                .buckets(DURATION_BUCKETS.to_vec()),
            TARGET_LABELS,
        )?;
        let mut failure_labels = TARGET_LABELS.to_vec();
        failure_labels.push("reason");
        let probe_failures = IntCounterVec::new(
            Opts::new(
                "vigil_probe_failures_total",
                "Failed probes, by reason (timeout, refused, dns, tls, status, ...).",
            ),
            &failure_labels,
        )?;
        let probe_errors = IntCounterVec::new(
            Opts::new(
                "vigil_probe_errors_total",
                "Probes that could not run (they count as insufficient data, never as failures).",
            ),
            TARGET_LABELS,
        )?;
        let restarts = IntCounterVec::new(
            Opts::new(
                "vigil_restarts_total",
                "Remediation actions taken, by action and result (success, failure).",
            ),
            &["namespace", "healthcheck", "instance_id", "action", "result"],
        )?;
        let scf = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), INSTANCE_LABELS);
        let status_check_failed =
            scf("vigil_status_check_failed", "1 when any status check of the instance is impaired.")?;
        let status_check_failed_system = scf(
            "vigil_status_check_failed_system",
            "1 when the System status check of the instance is impaired.",
        )?;
        let status_check_failed_instance = scf(
            "vigil_status_check_failed_instance",
            "1 when the Instance status check of the instance is impaired.",
        )?;
        let status_check_failed_attached_volume = scf(
            "vigil_status_check_failed_attached_volume",
            "1 when the Attached-volume status check of the instance is impaired.",
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
            start_time: Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
            )?,
        };

        registry.register(Box::new(probe_up.clone()))?;
        registry.register(Box::new(check_impaired.clone()))?;
        registry.register(Box::new(probe_duration.clone()))?;
        registry.register(Box::new(probe_failures.clone()))?;
        registry.register(Box::new(probe_errors.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        registry.register(Box::new(status_check_failed.clone()))?;
        registry.register(Box::new(status_check_failed_system.clone()))?;
        registry.register(Box::new(status_check_failed_instance.clone()))?;
        registry.register(Box::new(status_check_failed_attached_volume.clone()))?;
        registry.register(Box::new(scheduler_lateness.clone()))?;
        registry.register(Box::new(managed_checks.clone()))?;
        registry.register(Box::new(healthchecks.clone()))?;
        registry.register(Box::new(config_errors.clone()))?;
        registry.register(Box::new(status_writes.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(process.cpu_seconds.clone()))?;
        registry.register(Box::new(process.resident_memory.clone()))?;
        registry.register(Box::new(process.open_fds.clone()))?;
        registry.register(Box::new(process.start_time.clone()))?;

        Ok(AgentMetrics {
            probe_up,
            check_impaired,
            probe_duration,
            probe_failures,
            probe_errors,
            restarts,
            status_check_failed,
            status_check_failed_system,
            status_check_failed_instance,
            status_check_failed_attached_volume,
            scheduler_lateness,
            managed_checks,
            healthchecks,
            config_errors,
            status_writes,
            process,
        })
    }

    /// Deletes every series of one check target.
    pub fn remove_target(&self, labels: &[&str; 4]) {
        // A series that was never written is not there to delete; that is fine.
        let _ = self.probe_up.remove_label_values(labels);
        let _ = self.check_impaired.remove_label_values(labels);
        let _ = self.probe_duration.remove_label_values(labels);
        let _ = self.probe_errors.remove_label_values(labels);
        for reason in crate::probe::ALL_REASONS {
            let mut with_reason = labels.to_vec();
            with_reason.push(reason.as_str());
            let _ = self.probe_failures.remove_label_values(&with_reason);
        }
        for action in ["exec", "restartContainer", "restartVM", "evictPod"] {
            for result in ["success", "failure"] {
                let _ = self.restarts.remove_label_values(&[labels[0], labels[1], labels[2], action, result]);
            }
        }
    }

    /// Sets the four StatusCheckFailed gauges of an instance.
    pub fn set_status_checks(&self, labels: &[&str; 2], system: bool, instance: bool, volumes: bool) {
        self.status_check_failed_system.with_label_values(labels).set(i64::from(system));
        self.status_check_failed_instance.with_label_values(labels).set(i64::from(instance));
        self.status_check_failed_attached_volume.with_label_values(labels).set(i64::from(volumes));
        self.status_check_failed.with_label_values(labels).set(i64::from(system || instance || volumes));
    }

    /// Deletes every series of one instance.
    pub fn remove_instance(&self, labels: &[&str; 2]) {
        let _ = self.status_check_failed.remove_label_values(labels);
        let _ = self.status_check_failed_system.remove_label_values(labels);
        let _ = self.status_check_failed_instance.remove_label_values(labels);
        let _ = self.status_check_failed_attached_volume.remove_label_values(labels);
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
            self.resident_memory.set(stat.rss.saturating_mul(procfs::page_size()) as i64);
            if let Ok(boot) = procfs::boot_time_secs() {
                self.start_time.set(boot as f64 + stat.starttime as f64 / ticks);
            }
        }
        if let Ok(n) = me.fd_count() {
            self.open_fds.set(n as i64);
        }
    }
}

/// The registry's content in the Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut buf = Vec::with_capacity(16 * 1024);
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
}
