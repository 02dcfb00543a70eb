//! The results cache: the state of every (check, instance) with its per-target counters, and the
//! scrape of it all for `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use super::Store;
use crate::engine::state::{CheckState, Thresholds, Transition};
use crate::metrics::{CheckSample, InstanceSample, SampleSource, Samples, TargetSample};
use crate::model::CheckKey;
use crate::probe::{Cause, Outcome, Reason, Report};

/// Per-target counters, scraped by the metrics collector.
#[derive(Debug, Default)]
pub(super) struct SlotCounters {
    /// Whether the last definite probe passed.
    up: Option<bool>,
    errors: Vec<(Cause, u64)>,
    failures: Vec<(Reason, u64)>,
    actions: Vec<(&'static str, bool, u64)>,
}

/// One check on one instance.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) state: CheckState,
    pub(super) probe: &'static str,
    pub(super) suspended: bool,
    /// `namespace`, `name` of the check and the instance id, shared with scrapes.
    pub(super) labels: [Arc<str>; 3],
    counters: SlotCounters,
    last_duration: Option<Duration>,
}

/// What one probe did to a slot.
pub(super) struct Observed {
    pub(super) transition: Option<Transition>,
    /// The status or the failure reason changed: readers should write it now.
    pub(super) significant: bool,
}

impl Slot {
    pub(super) fn new(
        state: CheckState,
        probe: &'static str,
        suspended: bool,
        labels: [Arc<str>; 3],
    ) -> Slot {
        Slot { state, probe, suspended, labels, counters: SlotCounters::default(), last_duration: None }
    }

    /// Counts the outcome and runs the state machine on it.
    pub(super) fn observe(
        &mut self,
        report: &Report,
        now: jiff::Timestamp,
        thresholds: Thresholds,
    ) -> Observed {
        self.last_duration = Some(report.duration);
        let counters = &mut self.counters;
        match &report.outcome {
            Outcome::Healthy { .. } => counters.up = Some(true),
            Outcome::Unhealthy { reason, .. } => {
                counters.up = Some(false);
                match counters.failures.iter_mut().find(|(r, _)| r == reason) {
                    Some((_, n)) => *n += 1,
                    None => counters.failures.push((*reason, 1)),
                }
            }
            Outcome::Unknown { cause, .. } => match counters.errors.iter_mut().find(|(c, _)| c == cause) {
                Some((_, n)) => *n += 1,
                None => counters.errors.push((*cause, 1)),
            },
        }
        let reason_before = self.state.reason;
        let transition = self.state.observe(&report.outcome, now, thresholds);
        Observed { transition, significant: transition.is_some() || reason_before != self.state.reason }
    }

    /// Counts an action taken; the streaks start over.
    pub(super) fn acted(&mut self, action: &'static str, succeeded: bool) {
        self.state.reset_streaks();
        let actions = &mut self.counters.actions;
        match actions.iter_mut().find(|(a, ok, _)| *a == action && *ok == succeeded) {
            Some((_, _, n)) => *n += 1,
            None => actions.push((action, succeeded, 1)),
        }
    }

    fn sample(&self) -> TargetSample {
        TargetSample {
            namespace: self.labels[0].clone(),
            healthcheck: self.labels[1].clone(),
            instance_id: self.labels[2].clone(),
            probe: self.probe,
            up: self.counters.up,
            impaired: self.state.status == crate::api::CheckStatus::Impaired,
            last_duration: self.last_duration.map(|d| d.as_secs_f64()),
            errors: self.counters.errors.iter().map(|(c, n)| (c.as_str(), *n)).collect(),
            failures: self.counters.failures.iter().map(|(r, n)| (r.as_str(), *n)).collect(),
            actions: self.counters.actions.clone(),
        }
    }
}

/// The checks of one instance, sorted by key. Most instances have one or two: a vector sized to
/// fit costs far less than a tree node per instance.
#[derive(Debug, Default)]
pub(super) struct Slots(Vec<(CheckKey, Slot)>);

impl Slots {
    fn position(&self, key: &CheckKey) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(key))
    }

    pub(super) fn get(&self, key: &CheckKey) -> Option<&Slot> {
        self.position(key).ok().map(|i| &self.0[i].1)
    }

    pub(super) fn get_mut(&mut self, key: &CheckKey) -> Option<&mut Slot> {
        self.position(key).ok().map(|i| &mut self.0[i].1)
    }

    pub(super) fn insert(&mut self, key: CheckKey, slot: Slot) {
        match self.position(&key) {
            Ok(i) => self.0[i].1 = slot,
            Err(i) => self.0.insert(i, (key, slot)),
        }
        self.0.shrink_to_fit();
    }

    pub(super) fn remove(&mut self, key: &CheckKey) -> Option<Slot> {
        let i = self.position(key).ok()?;
        Some(self.0.remove(i).1)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&CheckKey, &Slot)> {
        self.0.iter().map(|(k, s)| (k, s))
    }

    pub(super) fn len(&self) -> usize {
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

/// The static name of an action (metric label).
pub(super) fn action_name(action: &str) -> &'static str {
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
                samples.targets.push(slot.sample());
            }
            samples.instances.push(InstanceSample {
                instance_id: instance_id.unwrap_or_else(|| Arc::from(e.instance.id.as_str())),
                kind: e.instance.kind.as_str(),
                system: e.failed[0],
                instance: e.failed[1],
                volumes: e.failed[2],
                reported_impaired: e.reported.map(|r| r == crate::api::ReportedStatus::Impaired),
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
