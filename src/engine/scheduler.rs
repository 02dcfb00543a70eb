//! The scheduler: one worker per (check, instance), started and stopped as plans change.
//!
//! A worker owns its timer: the first probe lands at a random point of
//! `[initialDelay, initialDelay + period)`, later ones on a fixed grid (`due += period`), skipping
//! ticks that were missed rather than bunching them. Probes run under a global concurrency limit
//! (and a smaller one for `exec`, whose forks are expensive). Lateness — how long after its due
//! time a probe actually starts — is measured for every probe.

use std::collections::HashMap;
use std::mem::discriminant;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::planner::{Assignment, Plan};
use super::remediation::{ActionRecord, Decision};
use super::store::Store;
use crate::action::Executors;
use crate::metrics::AgentMetrics;
use crate::model::{CheckDef, CheckKey};
use crate::probe::{Cause, Outcome, ProbeSpec, Prober, Report, Target};

/// Limits of the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Probes running at once.
    pub max_concurrent_probes: usize,
    /// `exec` probes running at once.
    pub max_concurrent_exec: usize,
    /// Threads running probes; 0 runs them on the caller's runtime.
    pub probe_threads: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { max_concurrent_probes: 256, max_concurrent_exec: 8, probe_threads: 0 }
    }
}

/// Threads that run the probes, each a single-threaded runtime: a worker's timer, sockets and
/// bookkeeping stay on one thread (no cross-thread wake-ups), and probing load never delays the
/// HTTP API, which runs elsewhere.
#[derive(Debug)]
pub struct ProbeThreads {
    handles: Vec<tokio::runtime::Handle>,
    /// When each runtime's clock started: its timer ticks are whole milliseconds from there.
    epochs: Vec<Instant>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ProbeThreads {
    /// Starts `n` probe threads (at least one).
    pub fn start(n: usize) -> std::io::Result<ProbeThreads> {
        let mut threads =
            ProbeThreads { handles: Vec::new(), epochs: Vec::new(), stops: Vec::new(), threads: Vec::new() };
        for i in 0..n.max(1) {
            // The runtime's clock started a moment before this (its timer ticks are whole
            // milliseconds from then); step back so that due times fall just before a tick,
            // never just after one, which would cost a whole tick.
            let before = Instant::now();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            threads.epochs.push(before.checked_sub(TICK_MARGIN).unwrap_or(before));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            threads.handles.push(runtime.handle().clone());
            threads.stops.push(stop);
            threads.threads.push(std::thread::Builder::new().name(format!("vigil-probe-{i}")).spawn(
                move || {
                    runtime.block_on(async {
                        // Either a stop or the sender dropped: both mean stop.
                        let _ = stopped.await;
                    });
                },
            )?);
        }
        Ok(threads)
    }

    /// The thread of `key` among the first `active`.
    fn pick(&self, key: &(CheckKey, String), active: usize) -> (&tokio::runtime::Handle, Instant) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let active = active.clamp(1, self.handles.len());
        let i = usize::try_from(h.finish() % active as u64).unwrap_or(0);
        (&self.handles[i], self.epochs[i])
    }
}

impl Drop for ProbeThreads {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// Origin of the slot grid when probes run on the caller's runtime.
    epoch: Instant,
    /// Step of the slot grid, nanoseconds (see [`slot_for_rate`]).
    slot_nanos: std::sync::atomic::AtomicU64,
    store: Arc<Store>,
    prober: Prober,
    executors: Executors,
    probes: Semaphore,
    execs: Semaphore,
    metrics: AgentMetrics,
}

/// Aborts the task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
struct Worker {
    check: Arc<CheckDef>,
    target: Target,
    suspended: bool,
    _task: Option<AbortOnDrop>,
}

/// Runs every assigned probe on time.
#[derive(Debug)]
pub struct Scheduler {
    shared: Arc<Shared>,
    // Declared before the threads, so that workers are aborted before their runtimes stop.
    workers: HashMap<(CheckKey, String), Worker>,
    threads: Option<ProbeThreads>,
}

impl Scheduler {
    /// A scheduler recording into `store`. With `probe_threads` set, it starts its threads.
    pub fn new(
        store: Arc<Store>,
        prober: Prober,
        executors: Executors,
        config: SchedulerConfig,
        metrics: AgentMetrics,
    ) -> std::io::Result<Scheduler> {
        let shared = Shared {
            epoch: Instant::now(),
            slot_nanos: std::sync::atomic::AtomicU64::new(MAX_SLOT.as_nanos() as u64),
            store,
            prober,
            executors,
            probes: Semaphore::new(config.max_concurrent_probes.max(1)),
            execs: Semaphore::new(config.max_concurrent_exec.max(1)),
            metrics,
        };
        let threads = match config.probe_threads {
            0 => None,
            n => Some(ProbeThreads::start(n)?),
        };
        Ok(Scheduler { shared: Arc::new(shared), workers: HashMap::new(), threads })
    }

    /// Number of (check, instance) workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there is no worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Makes the workers match `plan`: unchanged pairs keep running (and keep their state),
    /// changed ones restart, gone ones stop.
    pub fn apply(&mut self, plan: Plan) {
        let store = &self.shared.store;
        let mut wanted: HashMap<(CheckKey, String), Assignment> =
            HashMap::with_capacity(plan.assignments.len());
        for a in plan.assignments {
            wanted.insert((a.check.key.clone(), a.instance_id.clone()), a);
        }
        let gone: Vec<(CheckKey, String)> =
            self.workers.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        for key in gone {
            self.workers.remove(&key);
            store.detach(&key.0, &key.1);
        }
        // Probes per second, and the same weighted by what each costs.
        let (rate, load) = wanted.values().filter(|a| !a.suspended).fold((0.0, 0.0), |(rate, load), a| {
            let per_second =
                1.0 / a.check.timing.failing_period.unwrap_or(a.check.timing.period).as_secs_f64();
            (rate + per_second, load + per_second * weight(&a.check.probe))
        });
        let active = threads_for_load(load, self.threads.as_ref().map_or(1, |t| t.handles.len()));
        self.shared.slot_nanos.store(
            slot_for_rate(rate / active as f64).as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        store.sync_instances(plan.instances);
        for (key, a) in wanted {
            if let Some(w) = self.workers.get(&key) {
                let same_spec =
                    Arc::ptr_eq(&w.check, &a.check) || crate::model::same_spec(&w.check.spec, &a.check.spec);
                if same_spec && w.target == a.target && w.suspended == a.suspended {
                    continue;
                }
            }
            // New or changed: the old worker (if any) stops when replaced.
            store.attach(&a.check, &a.instance_id, a.suspended);
            let task = (!a.suspended).then(|| {
                let (handle, epoch) = match &self.threads {
                    Some(threads) => {
                        let (handle, epoch) = threads.pick(&key, active);
                        (Some(handle), epoch)
                    }
                    None => (None, self.shared.epoch),
                };
                let worker = run_worker(
                    self.shared.clone(),
                    a.check.clone(),
                    a.instance_id.clone(),
                    a.target.clone(),
                    epoch,
                );
                // A span per worker (`check`, `instance`) when debug logging is on. Held inline,
                // even a disabled span adds 128 bytes to every (check, instance) task; boxed and
                // only when wanted, it costs a pointer.
                let worker = if tracing::enabled!(tracing::Level::DEBUG) {
                    let span =
                        tracing::debug_span!("worker", check = %a.check.key, instance = %a.instance_id);
                    futures_util::future::Either::Left(Box::pin(tracing::Instrument::instrument(
                        worker, span,
                    )))
                } else {
                    futures_util::future::Either::Right(worker)
                };
                AbortOnDrop(match handle {
                    Some(handle) => handle.spawn(worker),
                    None => tokio::spawn(worker),
                })
            });
            self.workers.insert(
                key,
                Worker { check: a.check, target: a.target, suspended: a.suspended, _task: task },
            );
        }
        store.set_notes(&plan.notes);
    }

    /// Stops every worker.
    pub fn clear(&mut self) {
        self.workers.clear();
    }
}

/// Plain probes per second given to one probe thread before the next is used. A probe costs
/// 30–60 µs of CPU (the bench), so a thread stays under about half a core; fewer threads than
/// that share their wake-ups better and leave the other cores to everything else (on a
/// 2-CPU machine at 10,000 probes/s, one thread instead of two cost 14 % less CPU per probe
/// and brought the p99 lateness from 4.5 to 2.0 ms).
pub const PROBES_PER_THREAD: f64 = 15_000.0;

/// How many plain probes a probe counts for: a TLS handshake costs about ten.
fn weight(probe: &crate::probe::ProbeSpec) -> f64 {
    use crate::probe::ProbeSpec;
    match probe {
        ProbeSpec::Http(s) if s.tls => 10.0,
        ProbeSpec::Grpc(s) if s.tls => 10.0,
        _ => 1.0,
    }
}

/// Probe threads to use of `threads` for `load` plain probes per second: one per
/// [`PROBES_PER_THREAD`], at least one.
pub fn threads_for_load(load: f64, threads: usize) -> usize {
    // The cast saturates: NaN is 0, infinity usize::MAX.
    ((load / PROBES_PER_THREAD).ceil() as usize).clamp(1, threads.max(1))
}

/// Probes are due on a grid, so that probes due about the same time share one wake-up of their
/// thread instead of one each (timer slack, as the kernel does for timers). Periods are whole
/// seconds, so a probe stays on the grid. The step shrinks as the probe rate grows, so that a
/// slot holds only a handful of probes: a slot of a hundred would start them in a burst and make
/// the last ones late.
pub const MAX_SLOT: Duration = Duration::from_millis(10);
/// The finest step: the runtime's timer resolution.
pub const MIN_SLOT: Duration = Duration::from_millis(1);
/// How far before a timer tick due times are placed.
const TICK_MARGIN: Duration = Duration::from_micros(100);
/// Probes a slot is sized to hold.
const PROBES_PER_SLOT: f64 = 8.0;

/// The grid step for `rate` probes per second.
pub fn slot_for_rate(rate: f64) -> Duration {
    if rate <= 0.0 {
        return MAX_SLOT;
    }
    Duration::from_secs_f64(PROBES_PER_SLOT / rate).clamp(MIN_SLOT, MAX_SLOT)
}

/// The first slot at or after `t`.
fn on_slot(epoch: Instant, step: Duration, t: Instant) -> Instant {
    let since = t.saturating_duration_since(epoch).as_nanos();
    let step = step.as_nanos().max(1);
    let slots = since.div_ceil(step);
    epoch + Duration::from_nanos(u64::try_from(slots * step).unwrap_or(u64::MAX))
}

/// A random offset in `[0, period)`.
fn jitter(period: Duration) -> Duration {
    let nanos = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(fastrand::u64(0..nanos))
}

/// The first due time after `now` on the grid `due + k × period`.
fn next_on_grid(due: Instant, period: Duration, now: Instant) -> Instant {
    let next = due + period;
    if next > now {
        return next;
    }
    let behind = now.duration_since(next).as_nanos();
    let skips = behind / period.as_nanos().max(1) + 1;
    next + period * u32::try_from(skips).unwrap_or(u32::MAX)
}

/// One (check, instance): probe on time, record, act. `epoch` is the origin of its runtime's
/// clock, so that due times fall on the runtime's timer ticks.
async fn run_worker(
    shared: Arc<Shared>,
    check: Arc<CheckDef>,
    instance_id: String,
    target: Target,
    epoch: Instant,
) {
    let timing = check.timing;
    let first_period = timing.failing_period.unwrap_or(timing.period);
    let slot = Duration::from_nanos(shared.slot_nanos.load(std::sync::atomic::Ordering::Relaxed));
    let mut due = on_slot(epoch, slot, Instant::now() + timing.initial_delay + jitter(first_period));
    let kind = check.probe.kind();
    let counted = |outcome: &str| shared.metrics.probes.with_label_values(&[kind, outcome]);
    let mut worker = WorkerState {
        counters: [counted("healthy"), counted("unhealthy"), counted("unknown")],
        last_verdict: None,
        epoch,
    };
    loop {
        tokio::time::sleep_until(due).await;
        // Each round boxed: between probes a worker holds its timer and a few fields, not the
        // state machine of a probe, its record and a possible action (ten thousand workers).
        due = Box::pin(round(&shared, &check, &instance_id, &target, due, &mut worker)).await;
    }
}

/// What a worker keeps between rounds.
struct WorkerState {
    counters: [prometheus::IntCounter; 3],
    last_verdict: Option<std::mem::Discriminant<Decision>>,
    epoch: Instant,
}

/// One round of a worker: probe, record, act if due; the time of the next round.
async fn round(
    shared: &Arc<Shared>,
    check: &Arc<CheckDef>,
    instance_id: &str,
    target: &Target,
    due: Instant,
    worker: &mut WorkerState,
) -> Instant {
    let timing = check.timing;
    let kind = check.probe.kind();
    let is_exec = matches!(check.probe, ProbeSpec::Exec(_));
    let slot = || Duration::from_nanos(shared.slot_nanos.load(std::sync::atomic::Ordering::Relaxed));
    let report = {
        // The semaphores are never closed, so acquiring cannot fail; if it did, probing
        // without a permit is better than not probing.
        let _permit = shared.probes.acquire().await.ok();
        let _exec_permit = if is_exec { shared.execs.acquire().await.ok() } else { None };
        let started = Instant::now();
        shared.metrics.scheduler_lateness.observe(started.saturating_duration_since(due).as_secs_f64());
        let probe = Box::pin(shared.prober.run(&check.probe, target, timing.timeout, false));
        // A probe that panics is a bug of ours, not a verdict on the target: it is recorded
        // as unknown and counted, and the worker goes on (as the kubelet's prober recovers).
        match futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(probe)).await {
            Ok(report) => report,
            Err(panic) => {
                shared.metrics.probe_panics.with_label_values(&[kind]).inc();
                let message = crate::supervise::panic_message(panic.as_ref());
                warn!(check = %check.key, instance = %instance_id, "the probe panicked: {message}");
                Report {
                    outcome: Outcome::unknown(
                        Cause::Internal,
                        format!("internal error: the probe panicked: {message}"),
                    ),
                    duration: started.elapsed(),
                    steps: Vec::new(),
                }
            }
        }
    };
    worker.counters[match report.outcome {
        Outcome::Healthy { .. } => 0,
        Outcome::Unhealthy { .. } => 1,
        Outcome::Unknown { .. } => 2,
    }]
    .inc();
    let recorded = shared.store.record(check, instance_id, &report);
    if let Some(tr) = recorded.transition {
        info!(
            check = %check.key,
            instance = %instance_id,
            from = tr.from.as_str(),
            to = tr.to.as_str(),
            outcome = report.outcome.kind(),
            reason = report.outcome.reason().map(|r| r.as_str()),
            detail = report.outcome.message(),
            "status changed"
        );
    }
    if let Some(blocked) = &recorded.blocked {
        warn!(check = %check.key, "{blocked}");
    }
    let verdict = recorded.decision.as_ref().map(discriminant);
    if verdict != worker.last_verdict {
        if let Some(why) = recorded.decision.as_ref().and_then(Decision::explain)
            && !matches!(recorded.decision, Some(Decision::MassFailure { .. }))
        {
            info!(check = %check.key, instance = %instance_id, "not acting: {why}");
        }
        worker.last_verdict = verdict;
    }
    if let Some(request) = recorded.action {
        info!(check = %check.key, instance = %instance_id, action = request.kind.as_str(), reason = %request.reason, "taking action");
        // In a task of its own: a worker replaced while its action runs (the restart changed
        // the target's address or state) must not cancel the action or lose its record.
        let action = {
            let (shared, check, instance_id) = (shared.clone(), check.clone(), instance_id.to_owned());
            async move {
                let (succeeded, message) = match shared.executors.execute(&request).await {
                    Ok(done) => (true, format!("{}: {done}", request.reason)),
                    Err(e) => {
                        warn!(check = %check.key, instance = %instance_id, error = %e, "action failed");
                        (false, format!("{}; action failed: {e}", request.reason))
                    }
                };
                record_action(&shared, &check, &instance_id, request.kind.as_str(), succeeded, message);
            }
        };
        if let Err(e) = tokio::spawn(action).await {
            // The action task died without recording anything: record that, which also
            // lets the next action be decided.
            let kind = check.action.as_ref().map_or("action", |a| a.kind.as_str());
            let message = format!("internal error: the action task ended: {e}");
            record_action(shared, check, instance_id, kind, false, message);
        }
        worker.last_verdict = None;
        // Give the target its initial delay again before judging it.
        return on_slot(worker.epoch, slot(), Instant::now() + timing.initial_delay.max(timing.period));
    }
    let period = match timing.failing_period {
        Some(fast) if recorded.wants_fast => fast,
        _ => timing.period,
    };
    next_on_grid(due, period, Instant::now())
}

fn record_action(
    shared: &Shared,
    check: &CheckDef,
    instance_id: &str,
    action: &str,
    succeeded: bool,
    message: String,
) {
    let record = ActionRecord {
        at: shared.store.now(),
        check: check.key.clone(),
        action: action.to_owned(),
        succeeded,
        message,
    };
    shared.store.record_action(&check.key, instance_id, record);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_period() {
        for _ in 0..1000 {
            assert!(jitter(Duration::from_secs(10)) < Duration::from_secs(10));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn due_times_land_on_slots() {
        let epoch = Instant::now();
        let step = Duration::from_millis(10);
        assert_eq!(on_slot(epoch, step, epoch), epoch);
        assert_eq!(on_slot(epoch, step, epoch + Duration::from_millis(1)), epoch + step);
        assert_eq!(on_slot(epoch, step, epoch + step), epoch + step);
        assert_eq!(
            on_slot(epoch, step, epoch + Duration::from_millis(25)),
            epoch + Duration::from_millis(30)
        );
    }

    #[test]
    fn slots_shrink_as_the_rate_grows() {
        assert_eq!(slot_for_rate(0.0), MAX_SLOT);
        assert_eq!(slot_for_rate(100.0), MAX_SLOT);
        assert_eq!(slot_for_rate(1000.0), Duration::from_millis(8));
        assert_eq!(slot_for_rate(5000.0), Duration::from_secs_f64(8.0 / 5000.0));
        assert_eq!(slot_for_rate(100_000.0), MIN_SLOT);
    }

    #[test]
    fn probe_threads_are_used_as_the_load_needs() {
        assert_eq!(threads_for_load(0.0, 4), 1);
        assert_eq!(threads_for_load(10_000.0, 4), 1);
        assert_eq!(threads_for_load(15_000.0, 4), 1);
        assert_eq!(threads_for_load(15_001.0, 4), 2);
        assert_eq!(threads_for_load(40_000.0, 4), 3);
        assert_eq!(threads_for_load(1e9, 4), 4);
        assert_eq!(threads_for_load(40_000.0, 0), 1);
        assert_eq!(threads_for_load(f64::NAN, 4), 1);
    }

    #[test]
    fn missed_ticks_are_skipped_on_the_grid() {
        let t0 = Instant::now();
        let p = Duration::from_secs(10);
        assert_eq!(next_on_grid(t0, p, t0 + Duration::from_secs(1)), t0 + p);
        // 35 s late: the next slot on the grid is at 40 s.
        assert_eq!(next_on_grid(t0, p, t0 + Duration::from_secs(35)), t0 + Duration::from_secs(40));
        assert_eq!(next_on_grid(t0, p, t0 + Duration::from_secs(10)), t0 + Duration::from_secs(20));
    }
}
