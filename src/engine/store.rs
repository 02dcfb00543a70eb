//! The agent's shared view: instances, the state of every (check, instance), restart histories,
//! the host's own observations and the HealthChecks known. Workers record into it; the HTTP API
//! and the reporters read from it.
//!
//! Changes go into a feed ([`super::feed`]) that any number of reporters read, each from its own
//! position, so each writes only what changed. A probe that agrees with the last one changes
//! counters and times only (a touch), which reporters may defer. Transitions and actions are
//! also published as [`EngineEvent`]s.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use tokio::sync::{broadcast, watch};

use super::aggregate::{self, CheckFacts, RemediationGate, TargetResult};
use super::clock::Clock;
use super::feed::{Cursor, EVENT_CAPACITY, EngineEvent, Feed, FeedKey};
use super::remediation::{self, ActionRecord, ActionRequest, Decision, HISTORY_LIMIT};
use super::state::{CheckState, LastOutcome, Thresholds, Transition};
use crate::api::{
    self, CheckResult, CheckStatus, HealthCheck, HealthCheckSpec, InstanceKind, InstanceRef, InstanceState,
    InstanceStatus, InstanceStatusSpec, InstanceStatusStatus, RestartRecord, Restarts, StatusDetail,
    StatusSummary,
};
use crate::inventory::Instance;
use crate::inventory::host::{HostHealth, Observation};
use crate::metrics::{
    AgentMetrics, CheckSample, DurationHistogram, InstanceSample, SampleSource, Samples, TargetSample,
};
use crate::model::{CheckDef, CheckKey};
use crate::probe::{Outcome, Reason, Report};

/// One HealthCheck as the sources know it.
#[derive(Clone, Debug)]
pub struct CheckInfo {
    /// Which.
    pub key: CheckKey,
    /// The definition being run: the current spec, or the last valid one when the current is
    /// invalid. `None` when no valid spec was ever seen.
    pub def: Option<Arc<CheckDef>>,
    /// The spec as last written.
    pub spec: HealthCheckSpec,
    /// Its generation.
    pub generation: i64,
    /// What is wrong with the spec as last written.
    pub invalid: Option<String>,
}

/// What a recorded probe led to.
#[derive(Debug)]
pub struct Recorded {
    /// The status change, if any.
    pub transition: Option<Transition>,
    /// The status now.
    pub status: CheckStatus,
    /// Whether the faster failing period applies.
    pub wants_fast: bool,
    /// An action to take now.
    pub action: Option<ActionRequest>,
    /// The remediation policy's verdict, when the target is impaired and the check has an
    /// action.
    pub decision: Option<Decision>,
    /// Why an impaired target is not acted on, when that just changed.
    pub blocked: Option<String>,
}

impl Dirty {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty() && self.checks.is_empty()
    }
}

impl Recorded {
    fn nothing() -> Recorded {
        Recorded {
            transition: None,
            status: CheckStatus::NotApplicable,
            wants_fast: false,
            action: None,
            decision: None,
            blocked: None,
        }
    }
}

/// What changed since a reader last asked ([`Store::changes`]).
#[derive(Debug, Default)]
pub struct Dirty {
    /// Instances to write; `None` means removed.
    pub instances: Vec<(String, Option<InstanceStatus>)>,
    /// HealthChecks to write; `None` means removed.
    pub checks: Vec<(CheckKey, Option<HealthCheck>)>,
}

/// Running and total instances of each kind, and what the running ones claim.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claims {
    /// CPUs claimed by running instances.
    pub cpus: f64,
    /// Memory claimed by running instances, MiB.
    pub memory_mb: u64,
    /// Running / total VMs.
    pub vms: (usize, usize),
    /// Running / total containers.
    pub containers: (usize, usize),
    /// Running / total instances of every kind.
    pub all: (usize, usize),
}

/// A detail of a status check, with its impaired time kept across observations.
#[derive(Clone, Debug, PartialEq)]
struct Detail {
    name: String,
    status: CheckStatus,
    message: String,
    impaired_since: Option<Timestamp>,
}

/// Per-target counters, scraped by the metrics collector.
#[derive(Debug, Default)]
struct SlotCounters {
    /// Whether the last definite probe passed.
    up: Option<bool>,
    errors: u64,
    failures: Vec<(Reason, u64)>,
    actions: Vec<(&'static str, bool, u64)>,
}

#[derive(Debug)]
struct Slot {
    state: CheckState,
    probe: &'static str,
    suspended: bool,
    /// `namespace`, `name` of the check and the instance id, shared with scrapes.
    labels: [Arc<str>; 3],
    counters: SlotCounters,
    last_duration: Option<Duration>,
}

/// The checks of one instance, sorted by key. Most instances have one or two: a vector sized to
/// fit costs far less than a tree node per instance.
#[derive(Debug, Default)]
struct Slots(Vec<(CheckKey, Slot)>);

impl Slots {
    fn position(&self, key: &CheckKey) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(key))
    }

    fn get(&self, key: &CheckKey) -> Option<&Slot> {
        self.position(key).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, key: &CheckKey) -> Option<&mut Slot> {
        self.position(key).ok().map(|i| &mut self.0[i].1)
    }

    fn insert(&mut self, key: CheckKey, slot: Slot) {
        match self.position(&key) {
            Ok(i) => self.0[i].1 = slot,
            Err(i) => self.0.insert(i, (key, slot)),
        }
        self.0.shrink_to_fit();
    }

    fn remove(&mut self, key: &CheckKey) -> Option<Slot> {
        let i = self.position(key).ok()?;
        Some(self.0.remove(i).1)
    }

    fn iter(&self) -> impl Iterator<Item = (&CheckKey, &Slot)> {
        self.0.iter().map(|(k, s)| (k, s))
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl IntoIterator for Slots {
    type Item = (CheckKey, Slot);
    type IntoIter = std::vec::IntoIter<(CheckKey, Slot)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[derive(Debug)]
struct InstanceEntry {
    instance: Instance,
    /// The touch number of its last counters-only change (see [`Feed::touch`]).
    touched_at: u64,
    /// Whether the System, Instance and Attached-volume checks are impaired (for scrapes).
    failed: [bool; 3],
    first_seen: Timestamp,
    checks: Slots,
    history: VecDeque<ActionRecord>,
    restart_count: u32,
    /// Check results read back from the state folder, waiting for their check to attach.
    restored_checks: BTreeMap<String, CheckResult>,
    /// The instance's own System and Attached-volume details, with their `impairedSince`.
    own_system: Vec<Detail>,
    own_volumes: Vec<Detail>,
    /// An action decided on this instance has not finished: no other is started meanwhile
    /// (another worker of the same instance, or this one replaced while it runs).
    acting: bool,
}

#[derive(Debug)]
struct CheckEntry {
    info: CheckInfo,
    durations: DurationHistogram,
    note: Option<String>,
    conditions: Vec<Condition>,
    counts: [u32; 5],
    blocked: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    instances: HashMap<String, InstanceEntry>,
    checks: HashMap<CheckKey, CheckEntry>,
    host_system: Vec<Detail>,
    host_volumes: Vec<Detail>,
    restored: HashMap<String, InstanceStatus>,
    feed: Feed,
}

impl Inner {
    fn changed_instance(&mut self, id: &str) {
        self.feed.mark(FeedKey::Instance(id.to_owned()), false);
    }

    fn removed_instance(&mut self, id: &str) {
        self.feed.mark(FeedKey::Instance(id.to_owned()), true);
    }

    fn changed_check(&mut self, key: &CheckKey) {
        self.feed.mark(FeedKey::Check(key.clone()), false);
    }

    fn touched_instance(&mut self, id: &str) {
        let t = self.feed.touch();
        if let Some(e) = self.instances.get_mut(id) {
            e.touched_at = t;
        }
    }
}

/// The agent's shared view. See the module documentation.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    changed: watch::Sender<()>,
    events: broadcast::Sender<EngineEvent>,
    /// Whether a check may act, given the counts (`maxUnhealthy`).
    gate: Arc<dyn RemediationGate>,
    clock: Arc<dyn Clock>,
    metrics: AgentMetrics,
    node: String,
    namespace: String,
}

fn index(status: CheckStatus) -> usize {
    usize::from(status.severity())
}

fn time(ts: Timestamp) -> Time {
    Time(ts)
}

impl Store {
    /// An empty store for the agent of `node`, writing InstanceStatus objects into `namespace`.
    pub fn new(node: &str, namespace: &str, clock: Arc<dyn Clock>, metrics: AgentMetrics) -> Store {
        Store {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(()).0,
            events: broadcast::channel(EVENT_CAPACITY).0,
            gate: Arc::new(aggregate::LocalCounts),
            clock,
            metrics,
            node: node.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// This store, with `gate` deciding whether remediation is allowed (standalone: the
    /// agent's own counts; in a cluster: the controller's verdict over the fleet).
    pub fn with_gate(mut self, gate: Arc<dyn RemediationGate>) -> Store {
        self.gate = gate;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping would; keep serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The node this store belongs to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The time now, from the store's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A new reader of the change feed, positioned before everything the store holds: its first
    /// [`Store::changes`] brings every instance and HealthCheck.
    pub fn subscribe(&self) -> Cursor {
        let mut inner = self.lock();
        let position = inner.feed.register();
        Cursor {
            seen: 0,
            touched_seen: inner.feed.touches(),
            pending_touched: Vec::new(),
            position,
            notify: self.changed.subscribe(),
        }
    }

    /// Transitions and actions from now on.
    pub fn events(&self) -> broadcast::Receiver<EngineEvent> {
        self.events.subscribe()
    }

    /// Tells the readers that something that matters changed.
    fn publish(&self) {
        self.changed.send_replace(());
    }

    /// Loads state written by an earlier run. Restored instances take their restart history and
    /// check states back when they reappear; see [`Store::finish_restore`].
    pub fn restore(&self, docs: Vec<InstanceStatus>) {
        let mut inner = self.lock();
        for doc in docs {
            if let Some(name) = doc.metadata.name.clone() {
                inner.restored.insert(name, doc);
            }
        }
    }

    /// Forgets restored instances that did not reappear in the first full sync: their state
    /// files are removed.
    pub fn finish_restore(&self) {
        let mut inner = self.lock();
        let gone: Vec<String> = inner.restored.drain().map(|(id, _)| id).collect();
        for id in gone {
            if !inner.instances.contains_key(&id) {
                inner.removed_instance(&id);
            }
        }
        drop(inner);
        self.publish();
    }

    /// Replaces the set of known HealthChecks.
    pub fn set_checks(&self, checks: Vec<CheckInfo>) {
        let mut inner = self.lock();
        let keep: BTreeSet<CheckKey> = checks.iter().map(|c| c.key.clone()).collect();
        let removed: Vec<CheckKey> = inner.checks.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        for key in removed {
            inner.checks.remove(&key);
            inner.feed.mark(FeedKey::Check(key), true);
        }
        let (mut valid, mut invalid) = (0, 0);
        for info in checks {
            if info.invalid.is_some() {
                invalid += 1;
            } else {
                valid += 1;
            }
            let key = info.key.clone();
            match inner.checks.get_mut(&key) {
                Some(entry) => {
                    let changed = entry.info.generation != info.generation
                        || entry.info.invalid != info.invalid
                        || entry.info.spec != info.spec;
                    entry.info = info;
                    if changed {
                        inner.changed_check(&key);
                    }
                }
                None => {
                    inner.checks.insert(
                        key.clone(),
                        CheckEntry {
                            info,
                            durations: DurationHistogram::default(),
                            note: None,
                            conditions: Vec::new(),
                            counts: [0; 5],
                            blocked: None,
                        },
                    );
                    inner.changed_check(&key);
                }
            }
        }
        self.metrics.healthchecks.with_label_values(&["valid"]).set(valid);
        self.metrics.healthchecks.with_label_values(&["invalid"]).set(invalid);
        drop(inner);
        self.publish();
    }

    /// Sets the planner's notes (why a check has no targets here).
    pub fn set_notes(&self, notes: &BTreeMap<CheckKey, String>) {
        let mut inner = self.lock();
        let Inner { checks, feed, .. } = &mut *inner;
        for (key, entry) in checks.iter_mut() {
            let note = notes.get(key).cloned();
            if entry.note != note {
                entry.note = note;
                feed.mark(FeedKey::Check(key.clone()), false);
            }
        }
    }

    /// Replaces the set of instances. New ones take restored state; removed ones lose their
    /// metric series and their state file. Checks attached to a removed instance must be
    /// detached first (the scheduler does).
    pub fn sync_instances(&self, instances: Vec<Instance>) {
        let now = self.clock.now();
        let mut inner = self.lock();
        let keep: BTreeSet<String> = instances.iter().map(|i| i.id.clone()).collect();
        let removed: Vec<String> = inner.instances.keys().filter(|id| !keep.contains(*id)).cloned().collect();
        for id in removed {
            if let Some(entry) = inner.instances.remove(&id) {
                for (key, slot) in entry.checks {
                    self.drop_slot(&mut inner, &key, slot);
                }
            }
            inner.removed_instance(&id);
        }
        for instance in instances {
            let id = instance.id.clone();
            if let Some(entry) = inner.instances.get_mut(&id) {
                if entry.instance != instance {
                    entry.own_system = merge_details(&entry.own_system, instance.system.clone(), now);
                    entry.own_volumes = merge_details(&entry.own_volumes, instance.volumes.clone(), now);
                    entry.instance = instance;
                    inner.changed_instance(&id);
                    self.update_status_metrics(&mut inner, &id);
                }
                continue;
            }
            let mut entry = InstanceEntry {
                touched_at: 0,
                failed: [false; 3],
                first_seen: now,
                checks: Slots::default(),
                history: VecDeque::new(),
                restart_count: 0,
                restored_checks: BTreeMap::new(),
                own_system: merge_details(&[], instance.system.clone(), now),
                own_volumes: merge_details(&[], instance.volumes.clone(), now),
                acting: false,
                instance,
            };
            if let Some(doc) = inner.restored.remove(&id) {
                restore_entry(&mut entry, doc);
            }
            inner.instances.insert(id.clone(), entry);
            inner.changed_instance(&id);
            self.update_status_metrics(&mut inner, &id);
        }
        drop(inner);
        self.publish();
    }

    /// Starts tracking `check` on an instance. A state restored from disk is taken back.
    pub fn attach(&self, check: &CheckDef, instance_id: &str, suspended: bool) {
        let now = self.clock.now();
        let mut inner = self.lock();
        let Some(entry) = inner.instances.get_mut(instance_id) else { return };
        if entry.checks.get(&check.key).is_some_and(|slot| slot.probe != check.probe.kind()) {
            // Another kind of probe: its results say nothing about the old ones.
            if let Some(slot) = entry.checks.remove(&check.key) {
                self.drop_slot(&mut inner, &check.key, slot);
            }
        }
        let Some(entry) = inner.instances.get_mut(instance_id) else { return };
        if let Some(slot) = entry.checks.get_mut(&check.key) {
            // Re-attached with a changed spec: the state is kept, new probes will update it.
            if slot.suspended != suspended {
                slot.suspended = suspended;
                let to = if suspended { CheckStatus::NotApplicable } else { CheckStatus::Initializing };
                let from = slot.state.status;
                if slot.state.set_status(to, now).is_some() {
                    move_count(&mut inner, &check.key, from, to);
                }
            }
            inner.changed_instance(instance_id);
            inner.changed_check(&check.key);
            return;
        }
        let mut state = entry
            .restored_checks
            .remove(&check.key.to_string())
            .map(|r| restore_state(&r))
            .unwrap_or_default();
        if suspended {
            state.set_status(CheckStatus::NotApplicable, now);
        } else if state.status == CheckStatus::NotApplicable {
            state.set_status(CheckStatus::Initializing, now);
        }
        let labels: [Arc<str>; 3] = [
            Arc::from(check.key.namespace.as_str()),
            Arc::from(check.key.name.as_str()),
            Arc::from(instance_id),
        ];
        let status = state.status;
        entry.checks.insert(
            check.key.clone(),
            Slot {
                state,
                probe: check.probe.kind(),
                suspended,
                labels,
                counters: SlotCounters::default(),
                last_duration: None,
            },
        );
        if let Some(c) = inner.checks.get_mut(&check.key) {
            c.counts[index(status)] += 1;
        }
        refresh_block(&mut inner, &check.key);
        inner.changed_instance(instance_id);
        inner.changed_check(&check.key);
        self.update_status_metrics(&mut inner, instance_id);
        self.metrics.managed_checks.inc();
        drop(inner);
        self.publish();
    }

    /// Stops tracking `check` on an instance; its metric series go.
    pub fn detach(&self, check: &CheckKey, instance_id: &str) {
        let mut inner = self.lock();
        let Some(slot) = inner.instances.get_mut(instance_id).and_then(|e| e.checks.remove(check)) else {
            return;
        };
        self.drop_slot(&mut inner, check, slot);
        inner.changed_instance(instance_id);
        self.update_status_metrics(&mut inner, instance_id);
        drop(inner);
        self.publish();
    }

    fn drop_slot(&self, inner: &mut Inner, check: &CheckKey, slot: Slot) {
        self.metrics.managed_checks.dec();
        if let Some(c) = inner.checks.get_mut(check) {
            let i = index(slot.state.status);
            c.counts[i] = c.counts[i].saturating_sub(1);
            inner.changed_check(check);
        }
        refresh_block(inner, check);
    }

    /// Records one probe of `check` on an instance and decides whether to act.
    pub fn record(&self, check: &CheckDef, instance_id: &str, report: &Report) -> Recorded {
        let now = self.clock.now();
        let thresholds =
            Thresholds { success: check.timing.success_threshold, failure: check.timing.failure_threshold };
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(entry) = inner.instances.get_mut(instance_id) else {
            return Recorded::nothing();
        };
        let Some(slot) = entry.checks.get_mut(&check.key) else {
            return Recorded::nothing();
        };
        slot.last_duration = Some(report.duration);
        let counters = &mut slot.counters;
        match &report.outcome {
            Outcome::Healthy { .. } => counters.up = Some(true),
            Outcome::Unhealthy { reason, .. } => {
                counters.up = Some(false);
                match counters.failures.iter_mut().find(|(r, _)| r == reason) {
                    Some((_, n)) => *n += 1,
                    None => counters.failures.push((*reason, 1)),
                }
            }
            Outcome::Unknown { .. } => counters.errors += 1,
        }
        let reason_before = slot.state.reason;
        let transition = slot.state.observe(&report.outcome, now, thresholds);
        let status = slot.state.status;
        let wants_fast = slot.state.wants_fast_period();
        let significant = transition.is_some() || reason_before != slot.state.reason;
        // Act on a full streak of failures only: after an action the streak starts over, so the
        // target gets `failureThreshold` probes to show it recovered.
        let impaired_failure = status == CheckStatus::Impaired
            && matches!(report.outcome, Outcome::Unhealthy { .. })
            && slot.state.consecutive_failures >= thresholds.failure
            && !slot.suspended;
        let why = impaired_failure.then(|| {
            let reason = slot.state.reason.map(Reason::as_str).unwrap_or("unhealthy");
            format!("{reason}: {}", slot.state.message.as_deref().unwrap_or(""))
        });
        // Output-only changes are deferred by the reporters; status changes are not.
        if let Some(c) = inner.checks.get_mut(&check.key) {
            c.durations.observe(report.duration.as_secs_f64());
        }
        let event = transition.map(|tr| EngineEvent::Transition {
            check: check.key.clone(),
            instance_id: instance_id.to_owned(),
            from: tr.from,
            to: tr.to,
            reason: report.outcome.reason().map(Reason::as_str),
            message: Some(report.outcome.message().to_owned()),
            at: now,
        });
        if significant {
            inner.changed_instance(instance_id);
        } else {
            inner.touched_instance(instance_id);
        }
        let mut blocked_change = None;
        if let Some(tr) = transition {
            move_count(inner, &check.key, tr.from, tr.to);
            self.update_status_metrics(inner, instance_id);
            blocked_change = refresh_block(inner, &check.key);
            inner.changed_check(&check.key);
        }

        let mut action = None;
        let mut verdict = None;
        if let (Some(def), Some(why)) = (&check.action, why) {
            let (unhealthy, total) = inner
                .checks
                .get(&check.key)
                .map(|c| (c.counts[index(CheckStatus::Impaired)], c.counts.iter().sum()))
                .unwrap_or((1, 1));
            let decision =
                self.gate.blocked(&check.key, def.max_unhealthy, unhealthy, total).unwrap_or_else(|| {
                    let history: Vec<&ActionRecord> = inner
                        .instances
                        .get(instance_id)
                        .map(|e| e.history.iter().filter(|r| r.check == check.key).collect())
                        .unwrap_or_default();
                    remediation::decide(&def.policy, &history, now)
                });
            let acting = inner.instances.get(instance_id).is_some_and(|e| e.acting);
            let decision = if decision == Decision::Act && acting { Decision::InProgress } else { decision };
            if decision == Decision::Act
                && let Some(e) = inner.instances.get_mut(instance_id)
            {
                e.acting = true;
                action = Some(ActionRequest {
                    kind: def.kind,
                    check: check.key.clone(),
                    instance_id: e.instance.id.clone(),
                    instance_name: e.instance.name.clone(),
                    instance_kind: e.instance.kind,
                    reason: why,
                    exec: def.exec.clone(),
                });
            }
            verdict = Some(decision);
        }
        drop(guard);
        if significant {
            self.publish();
        }
        if let Some(event) = event {
            // No receiver is fine: nobody tells people about it in this mode.
            let _ = self.events.send(event);
        }
        Recorded { transition, status, wants_fast, action, decision: verdict, blocked: blocked_change }
    }

    /// Records an action taken; the target's streaks start over.
    pub fn record_action(&self, check: &CheckKey, instance_id: &str, record: ActionRecord) {
        let mut inner = self.lock();
        let Some(entry) = inner.instances.get_mut(instance_id) else { return };
        if let Some(slot) = entry.checks.get_mut(check) {
            slot.state.reset_streaks();
            let action = action_name(&record.action);
            let actions = &mut slot.counters.actions;
            match actions.iter_mut().find(|(a, ok, _)| *a == action && *ok == record.succeeded) {
                Some((_, _, n)) => *n += 1,
                None => actions.push((action, record.succeeded, 1)),
            }
        }
        entry.acting = false;
        entry.restart_count = entry.restart_count.saturating_add(1);
        let event = EngineEvent::Action {
            check: check.clone(),
            instance_id: instance_id.to_owned(),
            action: record.action.clone(),
            succeeded: record.succeeded,
            message: record.message.clone(),
            at: record.at,
        };
        entry.history.push_back(record);
        while entry.history.len() > HISTORY_LIMIT {
            entry.history.pop_front();
        }
        inner.changed_instance(instance_id);
        drop(inner);
        self.publish();
        let _ = self.events.send(event);
    }

    /// Sets the host's own observations (System and Attached volumes of the host, and the
    /// host part of the System check of the instances running on it).
    pub fn set_host_health(&self, health: HostHealth) {
        let now = self.clock.now();
        let mut inner = self.lock();
        let system = merge_details(&inner.host_system, health.system, now);
        let volumes = merge_details(&inner.host_volumes, health.volumes, now);
        let significant = statuses(&system) != statuses(&inner.host_system)
            || statuses(&volumes) != statuses(&inner.host_volumes);
        inner.host_system = system;
        inner.host_volumes = volumes;
        let affected: Vec<String> = inner
            .instances
            .values()
            .filter(|e| uses_host_details(e.instance.kind))
            .map(|e| e.instance.id.clone())
            .collect();
        for id in affected {
            if significant {
                inner.changed_instance(&id);
            } else {
                inner.touched_instance(&id);
            }
            self.update_status_metrics(&mut inner, &id);
        }
        drop(inner);
        if significant {
            self.publish();
        }
    }

    /// Takes up to `limit` of the changes after `cursor`'s position, rendered, and moves the
    /// cursor past them; call again until it returns nothing. Removed instances and
    /// HealthChecks come as `None`. With `touched`, instances whose counters or messages changed
    /// since this reader's last touched round come too (the periodic refresh). Taking changes in
    /// bounded batches keeps the memory a burst of changes needs bounded too. Readers do not
    /// take from each other: each sees every change once, at its latest.
    pub fn changes(&self, cursor: &mut Cursor, touched: bool, limit: usize) -> Dirty {
        let now = self.clock.now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        if touched && cursor.pending_touched.is_empty() {
            let since = cursor.touched_seen;
            cursor.pending_touched = inner
                .instances
                .iter()
                .filter(|(_, e)| e.touched_at > since)
                .map(|(id, _)| id.clone())
                .collect();
            cursor.touched_seen = inner.feed.touches();
        }
        let mut dirty = Dirty::default();
        let mut budget = limit.max(1);
        for (revision, key) in inner.feed.after(cursor.seen, budget) {
            cursor.seen = revision;
            budget -= 1;
            match key {
                FeedKey::Instance(id) => {
                    let doc = self.render_instance(inner, &id);
                    dirty.instances.push((id, doc));
                }
                FeedKey::Check(key) => {
                    let doc = self.render_check(inner, &key, now);
                    dirty.checks.push((key, doc));
                }
            }
        }
        while budget > 0 {
            let Some(id) = cursor.pending_touched.pop() else { break };
            if let Some(doc) = self.render_instance(inner, &id) {
                dirty.instances.push((id, Some(doc)));
                budget -= 1;
            }
        }
        cursor.position.store(cursor.seen, std::sync::atomic::Ordering::SeqCst);
        inner.feed.prune();
        dirty
    }

    /// Every instance, rendered as its InstanceStatus (live counters included).
    pub fn instance_docs(&self) -> Vec<InstanceStatus> {
        let inner = self.lock();
        let mut ids: Vec<&String> = inner.instances.keys().collect();
        ids.sort();
        ids.into_iter().filter_map(|id| self.render_instance(&inner, id)).collect()
    }

    /// One instance, by id or, failing that, by name.
    pub fn instance_doc(&self, id_or_name: &str) -> Option<InstanceStatus> {
        let inner = self.lock();
        let id = if inner.instances.contains_key(id_or_name) {
            id_or_name.to_owned()
        } else {
            inner.instances.values().find(|e| e.instance.name == id_or_name)?.instance.id.clone()
        };
        self.render_instance(&inner, &id)
    }

    /// Every HealthCheck, rendered with its status.
    pub fn check_docs(&self) -> Vec<HealthCheck> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let mut keys: Vec<CheckKey> = inner.checks.keys().cloned().collect();
        keys.sort();
        keys.iter().filter_map(|k| self.render_check(&mut inner, k, now)).collect()
    }

    /// What running instances claim from the host.
    pub fn claims(&self) -> Claims {
        let inner = self.lock();
        let mut claims = Claims::default();
        for e in inner.instances.values() {
            let running = e.instance.state == InstanceState::Running;
            let bump = |pair: &mut (usize, usize)| {
                pair.1 += 1;
                if running {
                    pair.0 += 1;
                }
            };
            bump(&mut claims.all);
            match e.instance.kind {
                InstanceKind::Vm => bump(&mut claims.vms),
                InstanceKind::Container => bump(&mut claims.containers),
                _ => {}
            }
            if let (true, Some(c)) = (running, e.instance.claimed) {
                claims.cpus += c.cpus;
                claims.memory_mb += c.memory_mb;
            }
        }
        claims
    }

    /// Number of (check, instance) pairs and of instances.
    pub fn sizes(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.instances.values().map(|e| e.checks.len()).sum(), inner.instances.len())
    }

    fn update_status_metrics(&self, inner: &mut Inner, id: &str) {
        let Some(entry) = inner.instances.get(id) else { return };
        let (system, instance, volumes) = summaries(inner, entry);
        let failed = [system, instance, volumes].map(|s| s.status == CheckStatus::Impaired);
        if let Some(entry) = inner.instances.get_mut(id) {
            entry.failed = failed;
        }
    }

    fn render_instance(&self, inner: &Inner, id: &str) -> Option<InstanceStatus> {
        let entry = inner.instances.get(id)?;
        let (system, instance, volumes) = summaries(inner, entry);
        let checks = entry
            .checks
            .iter()
            .map(|(key, slot)| CheckResult {
                health_check: key.to_string(),
                probe: slot.probe.to_owned(),
                status: slot.state.status,
                consecutive_failures: slot.state.consecutive_failures,
                consecutive_successes: slot.state.consecutive_successes,
                consecutive_errors: slot.state.consecutive_errors,
                last_probe_time: slot.state.last_probe.map(time),
                last_transition_time: slot.state.last_transition.map(time),
                impaired_since: slot.state.impaired_since.map(time),
                reason: slot.state.reason.map(|r| r.as_str().to_owned()),
                message: slot.state.message.clone(),
            })
            .collect();
        let recent: Vec<RestartRecord> = entry
            .history
            .iter()
            .map(|r| RestartRecord {
                time: time(r.at),
                health_check: r.check.to_string(),
                action: r.action.clone(),
                succeeded: r.succeeded,
                message: r.message.clone(),
            })
            .collect();
        let last = entry.history.back();
        let i = &entry.instance;
        let mut labels = BTreeMap::new();
        labels.insert(api::labels::NODE.to_owned(), i.node.clone());
        labels.insert(api::labels::KIND.to_owned(), i.kind.as_str().to_owned());
        let mut doc = InstanceStatus::new(
            id,
            InstanceStatusSpec {
                instance: InstanceRef {
                    kind: i.kind,
                    id: id.to_owned(),
                    name: i.name.clone(),
                    node: i.node.clone(),
                    address: i.address.clone(),
                },
            },
        );
        doc.metadata = ObjectMeta {
            name: Some(id.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            creation_timestamp: Some(time(entry.first_seen)),
            ..ObjectMeta::default()
        };
        doc.status = Some(InstanceStatusStatus {
            state: i.state,
            system_status: system,
            instance_status: instance,
            attached_volume_status: volumes,
            checks,
            restarts: Restarts {
                count: entry.restart_count,
                last_time: last.map(|r| time(r.at)),
                last_reason: last.map(|r| r.message.clone()),
                recent,
            },
        });
        Some(doc)
    }

    fn render_check(&self, inner: &mut Inner, key: &CheckKey, now: Timestamp) -> Option<HealthCheck> {
        let Inner { instances, checks, .. } = inner;
        let entry = checks.get_mut(key)?;
        let targets = instances.values().filter_map(|e| {
            e.checks.get(key).map(|slot| TargetResult {
                id: &e.instance.id,
                kind: e.instance.kind,
                node: &e.instance.node,
                status: slot.state.status,
                impaired_since: slot.state.impaired_since,
                message: slot.state.message.as_deref(),
            })
        });
        let info = &entry.info;
        let facts = CheckFacts {
            generation: info.generation,
            invalid: info.invalid.as_deref(),
            running: info.def.as_deref(),
            note: entry.note.as_deref(),
        };
        let status = aggregate::health_check_status(&facts, targets, &entry.conditions, now);
        entry.conditions = status.conditions.clone();
        let mut doc = HealthCheck::new(&key.name, info.spec.clone());
        doc.metadata = ObjectMeta {
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            generation: Some(info.generation),
            ..ObjectMeta::default()
        };
        doc.status = Some(status);
        Some(doc)
    }
}

/// The static name of an action (metric label).
fn action_name(action: &str) -> &'static str {
    match action {
        "restartContainer" => "restartContainer",
        "restartVM" => "restartVM",
        "evictPod" => "evictPod",
        "exec" => "exec",
        _ => "other",
    }
}

impl SampleSource for Store {
    fn samples(&self) -> Samples {
        let inner = self.lock();
        let mut samples = Samples {
            targets: Vec::with_capacity(inner.instances.len()),
            instances: Vec::with_capacity(inner.instances.len()),
            checks: Vec::with_capacity(inner.checks.len()),
        };
        for e in inner.instances.values() {
            let mut instance_id: Option<Arc<str>> = None;
            for (_, slot) in e.checks.iter() {
                instance_id.get_or_insert_with(|| slot.labels[2].clone());
                samples.targets.push(TargetSample {
                    namespace: slot.labels[0].clone(),
                    healthcheck: slot.labels[1].clone(),
                    instance_id: slot.labels[2].clone(),
                    probe: slot.probe,
                    up: slot.counters.up,
                    impaired: slot.state.status == CheckStatus::Impaired,
                    last_duration: slot.last_duration.map(|d| d.as_secs_f64()),
                    errors: slot.counters.errors,
                    failures: slot.counters.failures.iter().map(|(r, n)| (r.as_str(), *n)).collect(),
                    actions: slot.counters.actions.clone(),
                });
            }
            samples.instances.push(InstanceSample {
                instance_id: instance_id.unwrap_or_else(|| Arc::from(e.instance.id.as_str())),
                kind: e.instance.kind.as_str(),
                system: e.failed[0],
                instance: e.failed[1],
                volumes: e.failed[2],
            });
        }
        for (key, c) in &inner.checks {
            if let Some(def) = &c.info.def {
                samples.checks.push(CheckSample {
                    namespace: Arc::from(key.namespace.as_str()),
                    healthcheck: Arc::from(key.name.as_str()),
                    probe: def.probe.kind(),
                    durations: c.durations.clone(),
                });
            }
        }
        samples
    }
}

/// Recomputes whether a mass failure blocks the check's remediation; returns a message when
/// that changed.
fn refresh_block(inner: &mut Inner, key: &CheckKey) -> Option<String> {
    let entry = inner.checks.get_mut(key)?;
    let limit = entry.info.def.as_ref()?.action.as_ref()?.max_unhealthy;
    let unhealthy = entry.counts[index(CheckStatus::Impaired)];
    let blocked =
        remediation::mass_failure(limit, unhealthy, entry.counts.iter().sum()).and_then(|d| d.explain());
    if blocked == entry.blocked {
        return None;
    }
    let change =
        blocked.clone().unwrap_or_else(|| format!("{unhealthy} targets impaired: remediation allowed again"));
    entry.blocked = blocked;
    inner.changed_check(key);
    Some(change)
}

fn move_count(inner: &mut Inner, key: &CheckKey, from: CheckStatus, to: CheckStatus) {
    if let Some(c) = inner.checks.get_mut(key) {
        c.counts[index(from)] = c.counts[index(from)].saturating_sub(1);
        c.counts[index(to)] += 1;
    }
}

fn uses_host_details(kind: InstanceKind) -> bool {
    matches!(kind, InstanceKind::Host | InstanceKind::Container | InstanceKind::Vm | InstanceKind::Pod)
}

fn statuses(details: &[Detail]) -> Vec<(&str, CheckStatus)> {
    details.iter().map(|d| (d.name.as_str(), d.status)).collect()
}

/// New observations, keeping `impaired_since` of details that stay impaired.
fn merge_details(previous: &[Detail], observed: Vec<Observation>, now: Timestamp) -> Vec<Detail> {
    observed
        .into_iter()
        .map(|o| {
            let since = if o.status == CheckStatus::Impaired {
                previous.iter().find(|p| p.name == o.name).and_then(|p| p.impaired_since).or(Some(now))
            } else {
                None
            };
            Detail { name: o.name, status: o.status, message: o.message, impaired_since: since }
        })
        .collect()
}

fn summary(details: Vec<StatusDetail>) -> StatusSummary {
    StatusSummary { status: CheckStatus::worst(details.iter().map(|d| d.status)), details }
}

fn detail(d: &Detail) -> StatusDetail {
    StatusDetail {
        name: d.name.clone(),
        status: d.status,
        impaired_since: d.impaired_since.map(time),
        message: Some(d.message.clone()),
    }
}

/// The System, Instance and Attached-volume summaries of an instance.
fn summaries(inner: &Inner, entry: &InstanceEntry) -> (StatusSummary, StatusSummary, StatusSummary) {
    let kind = entry.instance.kind;
    let host_system: &[Detail] = if uses_host_details(kind) { &inner.host_system } else { &[] };
    let system = host_system.iter().chain(&entry.own_system).map(detail).collect();
    let volumes = if kind == InstanceKind::Host { &inner.host_volumes } else { &entry.own_volumes };
    let volumes = volumes.iter().map(detail).collect();
    let instance = entry
        .checks
        .iter()
        .map(|(key, slot)| StatusDetail {
            name: key.to_string(),
            status: slot.state.status,
            impaired_since: slot.state.impaired_since.map(time),
            message: match (slot.state.status, slot.state.reason, &slot.state.message) {
                (CheckStatus::Ok, _, _) | (_, _, None) => None,
                (_, Some(reason), Some(m)) => Some(format!("{reason}: {m}")),
                (_, None, Some(m)) => Some(m.clone()),
            },
        })
        .collect();
    (summary(system), summary(instance), summary(volumes))
}

fn restore_entry(entry: &mut InstanceEntry, doc: InstanceStatus) {
    if let Some(created) = doc.metadata.creation_timestamp {
        entry.first_seen = created.0;
    }
    let Some(status) = doc.status else { return };
    entry.restart_count = status.restarts.count;
    entry.history = status
        .restarts
        .recent
        .into_iter()
        .filter_map(|r| {
            Some(ActionRecord {
                at: r.time.0,
                check: CheckKey::parse(&r.health_check)?,
                action: r.action,
                succeeded: r.succeeded,
                message: r.message,
            })
        })
        .collect();
    entry.restored_checks = status.checks.into_iter().map(|c| (c.health_check.clone(), c)).collect();
}

/// A check state read back from disk.
fn restore_state(r: &CheckResult) -> CheckState {
    let last_outcome = if r.consecutive_successes > 0 {
        Some(LastOutcome::Healthy)
    } else if r.consecutive_failures > 0 {
        Some(LastOutcome::Unhealthy)
    } else if r.consecutive_errors > 0 {
        Some(LastOutcome::Unknown)
    } else {
        None
    };
    CheckState {
        status: r.status,
        consecutive_failures: r.consecutive_failures,
        consecutive_successes: r.consecutive_successes,
        consecutive_errors: r.consecutive_errors,
        last_probe: r.last_probe_time.as_ref().map(|t| t.0),
        last_transition: r.last_transition_time.as_ref().map(|t| t.0),
        impaired_since: r.impaired_since.as_ref().map(|t| t.0),
        reason: r.reason.as_deref().and_then(Reason::parse),
        message: r.message.clone(),
        last_outcome,
        ever_passed: r.status == CheckStatus::Ok || r.consecutive_successes > 0,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use prometheus::Registry;

    use super::*;
    use crate::api::HealthCheck;
    use crate::model::validate;
    use crate::probe::Reason;

    #[derive(Debug)]
    struct ManualClock(Mutex<Timestamp>);

    impl ManualClock {
        fn advance(&self, secs: i64) {
            let mut t = self.0.lock().unwrap();
            *t = t.checked_add(jiff::SignedDuration::from_secs(secs)).unwrap();
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Timestamp {
            *self.0.lock().unwrap()
        }
    }

    fn store() -> (Store, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock(Mutex::new(Timestamp::from_second(1_700_000_000).unwrap())));
        let metrics = AgentMetrics::register(&Registry::new()).unwrap();
        (Store::new("n1", "default", clock.clone(), metrics), clock)
    }

    fn def(action: &str) -> Arc<CheckDef> {
        let yaml = format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata: {{name: web, namespace: default}}\nspec:\n  target: {{endpoints: {{addresses: ['10.0.0.1:80', '10.0.0.2:80', '10.0.0.3:80']}}}}\n  probe: {{tcp: {{}}, failureThreshold: 2}}\n{action}"
        );
        let hc: HealthCheck = serde_saphyr::from_str(&yaml).unwrap();
        Arc::new(validate(&hc).unwrap())
    }

    fn setup(store: &Store, check: &Arc<CheckDef>) -> Vec<String> {
        let instances: Vec<Instance> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .iter()
            .map(|a| Instance::endpoint("n1", a))
            .collect();
        let ids = instances.iter().map(|i| i.id.clone()).collect();
        store.set_checks(vec![CheckInfo {
            key: check.key.clone(),
            def: Some(check.clone()),
            spec: check.spec.clone(),
            generation: 1,
            invalid: None,
        }]);
        store.sync_instances(instances.clone());
        for i in &instances {
            store.attach(check, &i.id, false);
        }
        ids
    }

    fn report(outcome: Outcome) -> Report {
        Report { outcome, duration: Duration::from_millis(1), steps: Vec::new() }
    }

    fn fail() -> Report {
        report(Outcome::unhealthy(Reason::Refused, "refused"))
    }

    const ACTION: &str =
        "  action: {type: exec, exec: {command: ['true']}, maxUnhealthy: 1, backoff: {initialSeconds: 10}}\n";

    #[test]
    fn acts_once_impaired_and_then_backs_off() {
        let (store, clock) = store();
        let check = def(ACTION);
        let ids = setup(&store, &check);
        let first = store.record(&check, &ids[0], &fail());
        assert!(first.action.is_none() && first.transition.is_none());
        let second = store.record(&check, &ids[0], &fail());
        assert_eq!(second.transition.map(|t| t.to), Some(CheckStatus::Impaired));
        let request = second.action.expect("impaired: act");
        assert_eq!(request.instance_id, ids[0]);
        store.record_action(
            &check.key,
            &ids[0],
            ActionRecord {
                at: clock.now(),
                check: check.key.clone(),
                action: "exec".into(),
                succeeded: true,
                message: "ok".into(),
            },
        );
        // The streak starts over; two more failures are needed, and the backoff applies.
        assert!(store.record(&check, &ids[0], &fail()).decision.is_none());
        clock.advance(5);
        let r = store.record(&check, &ids[0], &fail());
        assert!(matches!(r.decision, Some(Decision::Backoff { .. })), "{r:?}");
        assert!(r.action.is_none());
        clock.advance(5);
        assert!(store.record(&check, &ids[0], &fail()).action.is_some(), "the backoff is over");
    }

    /// What a reader took, as (kind, id, present) in order.
    fn taken(store: &Store, cursor: &mut Cursor, touched: bool) -> Vec<(String, bool)> {
        let mut all = Vec::new();
        loop {
            let dirty = store.changes(cursor, touched && all.is_empty(), 2);
            if dirty.is_empty() {
                return all;
            }
            all.extend(dirty.instances.into_iter().map(|(id, doc)| (id, doc.is_some())));
            all.extend(dirty.checks.into_iter().map(|(key, doc)| (format!("hc {key}"), doc.is_some())));
        }
    }

    #[test]
    fn two_readers_each_see_every_change_exactly_once() {
        let (store, _) = store();
        let check = def(ACTION);
        let mut a = store.subscribe();
        let mut b = store.subscribe();
        let mut events = store.events();
        let ids = setup(&store, &check);
        let mut first: Vec<(String, bool)> = ids.iter().map(|id| (id.clone(), true)).collect();
        first.push(("hc default/web".to_owned(), true));
        let sorted = |mut v: Vec<(String, bool)>| {
            v.sort();
            v
        };
        // A takes everything (in batches of two); B has taken nothing yet.
        assert_eq!(sorted(taken(&store, &mut a, false)), sorted(first.clone()));
        assert_eq!(taken(&store, &mut a, false), [], "once");
        // A transition on one instance, and one instance gone.
        store.record(&check, &ids[0], &fail());
        store.record(&check, &ids[0], &fail());
        store.sync_instances(vec![
            Instance::endpoint("n1", "10.0.0.1:80"),
            Instance::endpoint("n1", "10.0.0.2:80"),
        ]);
        let second =
            vec![(ids[0].clone(), true), (ids[2].clone(), false), ("hc default/web".to_owned(), true)];
        assert_eq!(sorted(taken(&store, &mut a, false)), sorted(second.clone()));
        assert_eq!(taken(&store, &mut a, false), []);
        // B, reading late, sees each key once at its latest: the removed one as removed.
        let mut late = first.clone();
        late.retain(|(id, _)| id != &ids[2]);
        late.push((ids[2].clone(), false));
        assert_eq!(sorted(taken(&store, &mut b, false)), sorted(late));
        assert_eq!(taken(&store, &mut b, false), []);
        // The first probe of ids[1] is a transition (initializing → ok) that both take; one that
        // agrees with it is a touch, which only a refreshing reader takes.
        let ok = || report(Outcome::healthy("connected"));
        store.record(&check, &ids[1], &ok());
        let third = vec![(ids[1].clone(), true), ("hc default/web".to_owned(), true)];
        assert_eq!(sorted(taken(&store, &mut a, false)), third);
        assert_eq!(sorted(taken(&store, &mut b, false)), third);
        store.record(&check, &ids[1], &ok());
        assert_eq!(taken(&store, &mut a, false), []);
        assert_eq!(taken(&store, &mut a, true), [(ids[1].clone(), true)]);
        assert_eq!(taken(&store, &mut a, true), [], "a touch is taken once too");
        assert_eq!(taken(&store, &mut b, true), [(ids[1].clone(), true)]);
        // The transition was published once to every events reader, in order.
        let tr = events.try_recv().unwrap();
        assert!(
            matches!(&tr, EngineEvent::Transition { instance_id, to: CheckStatus::Impaired, reason: Some("refused"), .. } if *instance_id == ids[0]),
            "{tr:?}"
        );
    }

    #[test]
    fn unknown_outcomes_never_act() {
        let (store, _) = store();
        let check = def(ACTION);
        let ids = setup(&store, &check);
        for _ in 0..2 {
            store.record(&check, &ids[0], &fail());
        }
        for _ in 0..10 {
            let r = store.record(&check, &ids[0], &report(Outcome::unknown("no route to the runtime")));
            assert!(r.action.is_none() && r.decision.is_none(), "{r:?}");
        }
        let doc = store.instance_doc(&ids[0]).unwrap();
        assert_eq!(doc.status.unwrap().checks[0].status, CheckStatus::InsufficientData);
    }

    #[test]
    fn a_mass_failure_blocks_every_action() {
        let (store, _) = store();
        let check = def(ACTION);
        let ids = setup(&store, &check);
        store.record(&check, &ids[0], &fail());
        assert!(
            store.record(&check, &ids[0], &fail()).action.is_some(),
            "1 of 3 impaired is within maxUnhealthy 1"
        );
        store.record(&check, &ids[1], &fail());
        let r = store.record(&check, &ids[1], &fail());
        assert!(matches!(r.decision, Some(Decision::MassFailure { unhealthy: 2, total: 3, .. })), "{r:?}");
        assert!(r.blocked.unwrap().contains("2 of 3 targets are impaired"));
        let hc = store.check_docs().remove(0);
        assert_eq!(hc.status.unwrap().remediation_allowed, Some(false));
        // Recovery lifts the block.
        let ok = report(Outcome::healthy("connected"));
        let r = store.record(&check, &ids[1], &ok);
        assert_eq!(r.transition.map(|t| t.to), Some(CheckStatus::Ok));
        assert!(r.blocked.unwrap().contains("remediation allowed again"));
        let hc = store.check_docs().remove(0);
        assert_eq!(hc.status.unwrap().remediation_allowed, Some(true));
    }

    #[test]
    fn rendered_state_restores_into_a_new_store() {
        let (store, clock) = store();
        let check = def(ACTION);
        let ids = setup(&store, &check);
        store.record(&check, &ids[2], &fail());
        store.record(&check, &ids[2], &fail());
        store.record_action(
            &check.key,
            &ids[2],
            ActionRecord {
                at: clock.now(),
                check: check.key.clone(),
                action: "exec".into(),
                succeeded: false,
                message: "x".into(),
            },
        );
        let docs = store.instance_docs();
        let before = store.instance_doc(&ids[2]).unwrap();

        let (fresh, _) = self::store();
        // Through YAML, as the state folder keeps them.
        let docs: Vec<InstanceStatus> = docs
            .iter()
            .map(|d| serde_saphyr::from_str(&serde_saphyr::to_string(d).unwrap()).unwrap())
            .collect();
        fresh.restore(docs);
        setup(&fresh, &check);
        let after = fresh.instance_doc(&ids[2]).unwrap();
        let (b, a) = (before.status.unwrap(), after.status.unwrap());
        assert_eq!(a.checks[0].status, CheckStatus::Impaired);
        assert_eq!(a.checks[0].impaired_since, b.checks[0].impaired_since);
        assert_eq!(a.checks[0].last_transition_time, b.checks[0].last_transition_time);
        assert_eq!(a.restarts, b.restarts);
        assert_eq!(after.metadata.creation_timestamp, before.metadata.creation_timestamp);
        let hc = fresh.check_docs().remove(0).status.unwrap();
        assert_eq!((hc.targets, hc.unhealthy), (3, 1), "counts include restored statuses");
    }
}
