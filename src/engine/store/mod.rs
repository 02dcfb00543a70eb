//! The agent's shared view: instances, the state of every (check, instance), restart histories,
//! the host's own observations and the HealthChecks known. Workers record into it; the HTTP API
//! and the reporters read copies of it ([`view`]) and render them outside the lock
//! ([`crate::report::render`]).
//!
//! - [`instances`]: the instance registry, with each instance's own details and remediation
//!   book;
//! - [`results`]: the state and counters of every (check, instance), and the metrics scrape;
//! - this module: the lock, the change feed ([`super::feed`]) and the operations that touch
//!   several of them at once.
//!
//! Changes go into a feed that any number of reporters read, each from its own position, so
//! each writes only what changed. A probe that agrees with the last one changes counters and
//! times only (a touch), which reporters may defer. Transitions and actions are also published
//! as [`EngineEvent`]s.

mod instances;
mod results;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use tokio::sync::{broadcast, watch};

use self::instances::{HostDetails, InstanceEntry, merge_details, statuses_differ, uses_host_details};
use self::results::{Slot, action_name};
use self::view::{Changes, CheckView, Claims, InstanceView, Restored};
use super::aggregate::{self, CheckFacts, RemediationGate, TargetResult};
use super::clock::Clock;
use super::feed::{Cursor, EVENT_CAPACITY, EngineEvent, Feed, FeedKey};
use super::remediation::book::Book;
use super::remediation::{self, ActionRecord, Decision};
use super::state::{Thresholds, Transition};
use crate::action::ActionRequest;
use crate::api::{CheckStatus, HealthCheckSpec, UserReport};
use crate::inventory::Instance;
use crate::inventory::host::HostHealth;
use crate::metrics::{AgentMetrics, DurationHistogram};
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
    pub spec: Arc<HealthCheckSpec>,
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

#[derive(Debug)]
struct CheckEntry {
    info: CheckInfo,
    /// Its revision in the change feed (0: never marked).
    revision: u64,
    durations: DurationHistogram,
    note: Option<String>,
    conditions: Vec<Condition>,
    counts: [u32; 5],
    blocked: Option<String>,
    /// The instances it is attached to (their ids, shared with the slots' labels): its status
    /// is aggregated over these, not over every instance of the node.
    targets: std::collections::HashSet<Arc<str>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Boxed: the map keeps spare buckets, and an entry is several hundred bytes.
    instances: HashMap<String, Box<InstanceEntry>>,
    /// Boxed, as instances are.
    checks: HashMap<CheckKey, Box<CheckEntry>>,
    host: HostDetails,
    restored: HashMap<String, Restored>,
    /// The owners' reports, by instance id or name.
    reports: HashMap<String, UserReport>,
    /// Whether some instance holds a report: without reports and without any held, the
    /// periodic refresh has nothing to look at.
    reports_held: bool,
    feed: Feed,
}

fn previous(revision: u64) -> Option<u64> {
    (revision > 0).then_some(revision)
}

impl Inner {
    fn changed_instance(&mut self, id: &str) {
        if let Some(e) = self.instances.get_mut(id) {
            e.revision = self.feed.mark(FeedKey::Instance(id.to_owned()), previous(e.revision));
        }
    }

    fn removed_instance(&mut self, id: &str, revision: u64) {
        self.feed.remove(FeedKey::Instance(id.to_owned()), previous(revision));
    }

    fn changed_check(&mut self, key: &CheckKey) {
        if let Some(c) = self.checks.get_mut(key) {
            c.revision = self.feed.mark(FeedKey::Check(key.clone()), previous(c.revision));
        }
    }

    fn touched_instance(&mut self, id: &str) {
        let t = self.feed.touch();
        if let Some(e) = self.instances.get_mut(id) {
            e.touched_at = t;
        }
    }

    fn refresh_failed(&mut self, id: &str) {
        let Inner { instances, host, .. } = self;
        if let Some(e) = instances.get_mut(id) {
            e.refresh_failed(host);
        }
    }

    fn check_view(&mut self, key: &CheckKey, now: Timestamp) -> Option<CheckView> {
        let Inner { instances, checks, .. } = self;
        let entry = checks.get_mut(key)?;
        let targets = entry.targets.iter().filter_map(|id| {
            let e = instances.get(&**id)?;
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
        entry.conditions.clone_from(&status.conditions);
        Some(CheckView { key: key.clone(), spec: info.spec.clone(), generation: info.generation, status })
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

impl Store {
    /// An empty store for the agent of `node`, whose own documents live in `namespace`.
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

    /// The namespace of the agent's own documents (every instance's but a pod's).
    pub fn namespace(&self) -> &str {
        &self.namespace
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

    /// Loads state saved by an earlier run. Restored instances take their restart history and
    /// check states back when they reappear; see [`Store::finish_restore`].
    pub fn restore(&self, saved: Vec<Restored>) {
        let mut inner = self.lock();
        for r in saved {
            inner.restored.insert(r.id.clone(), r);
        }
    }

    /// Forgets restored instances that did not reappear in the first full sync: their saved
    /// documents are removed.
    pub fn finish_restore(&self) {
        let mut inner = self.lock();
        let gone: Vec<Restored> = inner.restored.drain().map(|(_, r)| r).collect();
        for r in gone {
            if !inner.instances.contains_key(&r.id) {
                inner.removed_instance(&r.id, 0);
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
            if let Some(entry) = inner.checks.remove(&key) {
                inner.feed.remove(FeedKey::Check(key), previous(entry.revision));
            }
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
                        || !crate::model::same_spec(&entry.info.spec, &info.spec);
                    entry.info = info;
                    if changed {
                        inner.changed_check(&key);
                    }
                }
                None => {
                    inner.checks.insert(
                        key.clone(),
                        Box::new(CheckEntry {
                            info,
                            revision: 0,
                            durations: DurationHistogram::default(),
                            note: None,
                            conditions: Vec::new(),
                            counts: [0; 5],
                            blocked: None,
                            targets: std::collections::HashSet::new(),
                        }),
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
        let mut changed = Vec::new();
        for (key, entry) in &mut inner.checks {
            let note = notes.get(key).cloned();
            if entry.note != note {
                entry.note = note;
                changed.push(key.clone());
            }
        }
        for key in changed {
            inner.changed_check(&key);
        }
    }

    /// Replaces the set of instances. New ones take restored state; removed ones lose their
    /// metric series and their saved document. Checks attached to a removed instance must be
    /// detached first (the scheduler does).
    pub fn sync_instances(&self, instances: Vec<Instance>) {
        let now = self.clock.now();
        let mut inner = self.lock();
        let keep: BTreeSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        let removed: Vec<String> =
            inner.instances.keys().filter(|id| !keep.contains(id.as_str())).cloned().collect();
        for id in removed {
            if let Some(entry) = inner.instances.remove(&id) {
                for (key, slot) in entry.checks {
                    self.drop_slot(&mut inner, &key, slot);
                }
                inner.removed_instance(&id, entry.revision);
            }
        }
        for instance in instances {
            let id = instance.id.clone();
            if let Some(entry) = inner.instances.get_mut(&id) {
                match entry.update(instance, now) {
                    instances::Update::Unchanged => {}
                    instances::Update::Touched => inner.touched_instance(&id),
                    instances::Update::Changed => {
                        inner.changed_instance(&id);
                        inner.refresh_failed(&id);
                    }
                }
                continue;
            }
            let mut entry = Box::new(InstanceEntry::new(instance, now));
            if let Some(r) = inner.restored.remove(&id) {
                if let Some(first_seen) = r.first_seen {
                    entry.first_seen = first_seen;
                }
                entry.book = Book::restored(r.restarts, r.history);
                entry.restored_checks = r.checks;
            }
            inner.instances.insert(id.clone(), entry);
            inner.changed_instance(&id);
            inner.refresh_failed(&id);
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
        let mut state = entry.take_restored(&check.key.to_string()).unwrap_or_default();
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
        let target = labels[2].clone();
        entry.checks.insert(check.key.clone(), Slot::new(state, check.probe.kind(), suspended, labels));
        if let Some(c) = inner.checks.get_mut(&check.key) {
            c.counts[index(status)] += 1;
            c.targets.insert(target);
        }
        refresh_block(&mut inner, &check.key);
        inner.changed_instance(instance_id);
        inner.changed_check(&check.key);
        inner.refresh_failed(instance_id);
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
        inner.refresh_failed(instance_id);
        drop(inner);
        self.publish();
    }

    fn drop_slot(&self, inner: &mut Inner, check: &CheckKey, slot: Slot) {
        self.metrics.managed_checks.dec();
        if let Some(c) = inner.checks.get_mut(check) {
            let i = index(slot.state.status);
            c.counts[i] = c.counts[i].saturating_sub(1);
            c.targets.remove(&slot.labels[2]);
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
        let observed = slot.observe(report, now, thresholds);
        let transition = observed.transition;
        let status = slot.state.status;
        let wants_fast = slot.state.wants_fast_period();
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
        if let Some(c) = inner.checks.get_mut(&check.key) {
            c.durations.observe(report.duration.as_secs_f64());
        }
        let event = transition.map(|tr| EngineEvent::Transition {
            check: check.key.clone(),
            instance_id: instance_id.to_owned(),
            from: tr.from,
            to: tr.to,
            reason: report.outcome.label(),
            message: Some(report.outcome.message().to_owned()),
            at: now,
        });
        // Output-only changes are deferred by the reporters; status changes are not.
        if observed.significant {
            inner.changed_instance(instance_id);
        } else {
            inner.touched_instance(instance_id);
        }
        let mut blocked_change = None;
        if let Some(tr) = transition {
            move_count(inner, &check.key, tr.from, tr.to);
            inner.refresh_failed(instance_id);
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
            // The controller evicts pods: it paces evictions across the fleet.
            let blocked = if def.kind == crate::model::ActionKind::EvictPod {
                Some(Decision::Withheld { why: "evictPod is carried out by the controller".to_owned() })
            } else {
                self.gate.blocked(&check.key, def.max_unhealthy, unhealthy, total)
            };
            if let Some(e) = inner.instances.get_mut(instance_id) {
                let decision = blocked.unwrap_or_else(|| e.book.decide(&def.policy, &check.key, now));
                if decision == Decision::Act {
                    e.book.begin();
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
        }
        drop(guard);
        if observed.significant {
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
            slot.acted(action_name(&record.action), record.succeeded);
        }
        let event = EngineEvent::Action {
            check: check.clone(),
            instance_id: instance_id.to_owned(),
            action: record.action.clone(),
            succeeded: record.succeeded,
            message: record.message.clone(),
            at: record.at,
        };
        entry.book.finish(record);
        inner.changed_instance(instance_id);
        drop(inner);
        self.publish();
        let _ = self.events.send(event);
    }

    /// Takes the owners' reports (all of them, by instance id or name), then applies them as
    /// [`Store::refresh_reports`] does.
    pub fn set_reports(&self, reports: HashMap<String, UserReport>) {
        self.lock().reports = reports;
        self.refresh_reports();
    }

    /// Gives every instance its owner's report and the verdict of it in force now; a verdict
    /// that changed is an [`EngineEvent::Reported`]. Called when reports change and
    /// periodically, for windows that begin or end, and for instances that appeared since.
    /// A report never touches the status checks or remediation.
    pub fn refresh_reports(&self) {
        let now = self.clock.now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.reports.is_empty() && !inner.reports_held {
            return;
        }
        let mut changed = Vec::new();
        let mut events = Vec::new();
        let mut held = false;
        for (id, e) in &mut inner.instances {
            let report = inner.reports.get(id).or_else(|| inner.reports.get(&e.instance.name));
            let reported = report.filter(|r| r.in_effect(now)).map(|r| r.status);
            held |= report.is_some();
            if e.report.as_deref() == report && e.reported == reported {
                continue;
            }
            if e.reported != reported {
                let shown = reported.and(report);
                events.push(EngineEvent::Reported {
                    instance_id: id.clone(),
                    status: reported,
                    reasons: shown
                        .map(|r| r.reasons.iter().map(|x| x.as_str()).collect())
                        .unwrap_or_default(),
                    description: shown.and_then(|r| r.description.clone()),
                    at: now,
                });
            }
            e.report = report.cloned().map(Box::new);
            e.reported = reported;
            changed.push(id.clone());
        }
        inner.reports_held = held;
        for id in &changed {
            inner.changed_instance(id);
        }
        drop(guard);
        if !changed.is_empty() {
            self.publish();
        }
        for event in events {
            let _ = self.events.send(event);
        }
    }

    /// Sets the host's own observations (System and Attached volumes of the host, and the
    /// host part of the System check of the instances running on it).
    pub fn set_host_health(&self, health: HostHealth) {
        let now = self.clock.now();
        let mut inner = self.lock();
        let system = merge_details(&inner.host.system, health.system, now);
        let volumes = merge_details(&inner.host.volumes, health.volumes, now);
        let significant =
            statuses_differ(&system, &inner.host.system) || statuses_differ(&volumes, &inner.host.volumes);
        inner.host = HostDetails { system, volumes };
        let affected: Vec<String> = inner
            .instances
            .values()
            .filter(|e| uses_host_details(e.instance.kind))
            .map(|e| e.instance.id.clone())
            .collect();
        for id in affected {
            if significant {
                inner.changed_instance(&id);
                inner.refresh_failed(&id);
            } else {
                inner.touched_instance(&id);
            }
        }
        drop(inner);
        if significant {
            self.publish();
        }
    }

    /// Takes up to `limit` of the changes after `cursor`'s position and moves the cursor past
    /// them; call again until it returns nothing. Removed instances and HealthChecks come as
    /// `None`. With `touched`, instances whose counters or messages changed since this reader's
    /// last touched round come too (the periodic refresh). Taking changes in bounded batches
    /// keeps the memory a burst of changes needs bounded too. Readers do not take from each
    /// other: each sees every change once, at its latest.
    pub fn changes(&self, cursor: &mut Cursor, touched: bool, limit: usize) -> Changes {
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
        let mut changes = Changes::default();
        let mut budget = limit.max(1);
        for (revision, key) in inner.feed.after(cursor.seen, budget) {
            cursor.seen = revision;
            budget -= 1;
            match key {
                FeedKey::Instance(id) => {
                    let view = inner.instances.get(&id).map(|e| e.view(&inner.host));
                    changes.instances.push((id, view));
                }
                FeedKey::Check(key) => {
                    let view = inner.check_view(&key, now);
                    changes.checks.push((key, view));
                }
            }
        }
        while budget > 0 {
            let Some(id) = cursor.pending_touched.pop() else { break };
            if let Some(view) = inner.instances.get(&id).map(|e| e.view(&inner.host)) {
                changes.instances.push((id, Some(view)));
                budget -= 1;
            }
        }
        cursor.position.store(cursor.seen, std::sync::atomic::Ordering::SeqCst);
        inner.feed.prune();
        changes
    }

    /// Every instance, sorted by id (live counters included).
    pub fn instances(&self) -> Vec<InstanceView> {
        let inner = self.lock();
        let mut entries: Vec<&InstanceEntry> = inner.instances.values().map(|e| &**e).collect();
        entries.sort_by(|a, b| a.instance.id.cmp(&b.instance.id));
        entries.into_iter().map(|e| e.view(&inner.host)).collect()
    }

    /// One instance, by id or, failing that, by name.
    pub fn instance(&self, id_or_name: &str) -> Option<InstanceView> {
        let inner = self.lock();
        let entry = inner
            .instances
            .get(id_or_name)
            .or_else(|| inner.instances.values().find(|e| e.instance.name == id_or_name))?;
        Some(entry.view(&inner.host))
    }

    /// Every HealthCheck with its status, sorted by key.
    pub fn checks(&self) -> Vec<CheckView> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let mut keys: Vec<CheckKey> = inner.checks.keys().cloned().collect();
        keys.sort();
        keys.iter().filter_map(|k| inner.check_view(k, now)).collect()
    }

    /// What running instances claim from the host.
    pub fn claims(&self) -> Claims {
        instances::claims(self.lock().instances.values().map(|e| &**e))
    }

    /// Number of (check, instance) pairs and of instances.
    pub fn sizes(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.instances.values().map(|e| e.checks.len()).sum(), inner.instances.len())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus::Registry;

    use super::*;
    use crate::api::HealthCheck;
    use crate::engine::clock::ManualClock;
    use crate::engine::remediation::ActionRecord;
    use crate::model::validate;
    use crate::probe::Reason;

    fn store() -> (Store, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
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
            let changes = store.changes(cursor, touched && all.is_empty(), 2);
            if changes.is_empty() {
                return all;
            }
            all.extend(changes.instances.into_iter().map(|(id, view)| (id, view.is_some())));
            all.extend(changes.checks.into_iter().map(|(key, view)| (format!("hc {key}"), view.is_some())));
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
            let r = store.record(
                &check,
                &ids[0],
                &report(Outcome::unknown(crate::probe::Cause::RuntimeUnreachable, "no route to the runtime")),
            );
            assert!(r.action.is_none() && r.decision.is_none(), "{r:?}");
        }
        let view = store.instance(&ids[0]).unwrap();
        assert_eq!(view.checks[0].state.status, CheckStatus::InsufficientData);
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
        let hc = store.checks().remove(0);
        assert_eq!(hc.status.remediation_allowed, Some(false));
        // Recovery lifts the block.
        let ok = report(Outcome::healthy("connected"));
        let r = store.record(&check, &ids[1], &ok);
        assert_eq!(r.transition.map(|t| t.to), Some(CheckStatus::Ok));
        assert!(r.blocked.unwrap().contains("remediation allowed again"));
        let hc = store.checks().remove(0);
        assert_eq!(hc.status.remediation_allowed, Some(true));
    }
}
