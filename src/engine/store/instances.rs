//! The instance registry: every instance the inventory reported, its own System and
//! Attached-volume details (with the time each became impaired), the host's details shared by
//! the instances on it, and the remediation book of each.

use jiff::Timestamp;

use super::results::Slots;
use super::view::{Claims, DetailView, InstanceView, ResultView, Summary};
use crate::api::{CheckStatus, InstanceKind, InstanceState, ReportedStatus, UserReport};
use crate::engine::remediation::book::Book;
use crate::engine::state::CheckState;
use crate::inventory::{Instance, Observation};

/// The same instance but for the messages of its observations. Every field is named, so that a
/// new one cannot be forgotten here.
fn same_but_messages(a: &Instance, b: &Instance) -> bool {
    let Instance {
        id,
        namespace,
        kind,
        name,
        node,
        address,
        labels,
        state,
        claimed,
        runtime_id,
        on_hold,
        ports,
        system,
        volumes,
    } = a;
    let same_observations = |x: &[Observation], y: &[Observation]| {
        x.len() == y.len() && x.iter().zip(y).all(|(x, y)| x.name == y.name && x.status == y.status)
    };
    *id == b.id
        && *namespace == b.namespace
        && *kind == b.kind
        && *name == b.name
        && *node == b.node
        && *address == b.address
        && *labels == b.labels
        && *state == b.state
        && *claimed == b.claimed
        && *runtime_id == b.runtime_id
        && *on_hold == b.on_hold
        && *ports == b.ports
        && same_observations(system, &b.system)
        && same_observations(volumes, &b.volumes)
}

/// A detail of a status check, with its impaired time kept across observations.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Detail {
    pub(super) name: String,
    pub(super) status: CheckStatus,
    pub(super) message: String,
    pub(super) impaired_since: Option<Timestamp>,
}

impl Detail {
    fn view(&self) -> DetailView {
        DetailView {
            name: self.name.clone(),
            status: self.status,
            impaired_since: self.impaired_since,
            message: Some(self.message.clone()),
        }
    }
}

/// New observations, keeping `impaired_since` of details that stay impaired.
pub(super) fn merge_details(previous: &[Detail], observed: Vec<Observation>, now: Timestamp) -> Vec<Detail> {
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

/// Whether the statuses differ (messages aside).
pub(super) fn statuses_differ(a: &[Detail], b: &[Detail]) -> bool {
    a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.name != y.name || x.status != y.status)
}

/// The host's own details: its System check, which every instance on it shares, and its
/// Attached volumes.
#[derive(Debug, Default)]
pub(super) struct HostDetails {
    pub(super) system: Vec<Detail>,
    pub(super) volumes: Vec<Detail>,
}

/// Whether an instance's System check includes the host's.
pub(super) fn uses_host_details(kind: InstanceKind) -> bool {
    matches!(kind, InstanceKind::Host | InstanceKind::Container | InstanceKind::Vm | InstanceKind::Pod)
}

#[derive(Debug)]
pub(super) struct InstanceEntry {
    pub(super) instance: Instance,
    /// Its revision in the change feed (0: never marked).
    pub(super) revision: u64,
    /// The touch number of its last counters-only change.
    pub(super) touched_at: u64,
    /// Whether the System, Instance and Attached-volume checks are impaired (for scrapes).
    pub(super) failed: [bool; 3],
    pub(super) first_seen: Timestamp,
    pub(super) checks: Slots,
    pub(super) book: Book,
    /// Check states read back from the state folder, waiting for their check to attach.
    pub(super) restored_checks: Vec<(String, CheckState)>,
    /// The instance's own System and Attached-volume details.
    pub(super) own_system: Vec<Detail>,
    pub(super) own_volumes: Vec<Detail>,
    /// The owner's report on it, as last taken, and the verdict of it in force then.
    pub(super) report: Option<Box<UserReport>>,
    pub(super) reported: Option<ReportedStatus>,
}

impl InstanceEntry {
    pub(super) fn new(instance: Instance, now: Timestamp) -> InstanceEntry {
        InstanceEntry {
            revision: 0,
            touched_at: 0,
            failed: [false; 3],
            first_seen: now,
            checks: Slots::default(),
            book: Book::default(),
            restored_checks: Vec::new(),
            own_system: merge_details(&[], instance.system.clone(), now),
            own_volumes: merge_details(&[], instance.volumes.clone(), now),
            report: None,
            reported: None,
            instance,
        }
    }

    /// Takes what the inventory says now: whether nothing changed, only the messages of its
    /// details (figures such as a VM's CPU: a touch, written with the periodic refresh), or
    /// something that matters.
    pub(super) fn update(&mut self, instance: Instance, now: Timestamp) -> Update {
        if self.instance == instance {
            return Update::Unchanged;
        }
        let significant = !same_but_messages(&self.instance, &instance);
        self.own_system = merge_details(&self.own_system, instance.system.clone(), now);
        self.own_volumes = merge_details(&self.own_volumes, instance.volumes.clone(), now);
        self.instance = instance;
        if significant { Update::Changed } else { Update::Touched }
    }

    /// A restored check state for `check`, if one was saved.
    pub(super) fn take_restored(&mut self, check: &str) -> Option<CheckState> {
        let i = self.restored_checks.iter().position(|(k, _)| k == check)?;
        Some(self.restored_checks.swap_remove(i).1)
    }

    fn host_system<'a>(&self, host: &'a HostDetails) -> &'a [Detail] {
        if uses_host_details(self.instance.kind) { &host.system } else { &[] }
    }

    fn volumes<'a>(&'a self, host: &'a HostDetails) -> &'a [Detail] {
        if self.instance.kind == InstanceKind::Host { &host.volumes } else { &self.own_volumes }
    }

    /// Recomputes whether the System, Instance and Attached-volume checks are impaired.
    pub(super) fn refresh_failed(&mut self, host: &HostDetails) {
        let impaired = |d: &Detail| d.status == CheckStatus::Impaired;
        self.failed = [
            self.host_system(host).iter().chain(&self.own_system).any(impaired),
            self.checks.iter().any(|(_, slot)| slot.state.status == CheckStatus::Impaired),
            self.volumes(host).iter().any(impaired),
        ];
    }

    /// A copy for readers.
    pub(super) fn view(&self, host: &HostDetails) -> InstanceView {
        // A hardware sensor the host does not have (a VM's thermal zones, a virtio disk's SMART)
        // is shown as insufficient-data but does not make the whole check so: its impairment
        // counts, its absence does not.
        let summary = |details: Vec<DetailView>| Summary {
            status: CheckStatus::worst(
                details
                    .iter()
                    .filter(|d| {
                        !(d.status == CheckStatus::InsufficientData
                            && crate::inventory::hardware::is_sensor(&d.name))
                    })
                    .map(|d| d.status),
            ),
            details,
        };
        let system = self.host_system(host).iter().chain(&self.own_system).map(Detail::view).collect();
        let volumes = self.volumes(host).iter().map(Detail::view).collect();
        let instance = self
            .checks
            .iter()
            .map(|(key, slot)| DetailView {
                name: key.to_string(),
                status: slot.state.status,
                impaired_since: slot.state.impaired_since,
                message: match (slot.state.status, slot.state.reason, &slot.state.message) {
                    (CheckStatus::Ok, _, _) | (_, _, None) => None,
                    (_, Some(reason), Some(m)) => Some(format!("{reason}: {m}")),
                    (_, None, Some(m)) => Some(m.clone()),
                },
            })
            .collect();
        InstanceView {
            instance: self.instance.clone(),
            first_seen: self.first_seen,
            system: summary(system),
            instance_check: summary(instance),
            volumes: summary(volumes),
            checks: self
                .checks
                .iter()
                .map(|(key, slot)| ResultView {
                    check: key.clone(),
                    probe: slot.probe,
                    state: slot.state.clone(),
                })
                .collect(),
            restarts: self.book.count(),
            recent: self.book.history().cloned().collect(),
            report: self.report.as_deref().cloned(),
            reported: self.reported,
        }
    }
}

/// What running instances claim from the host.
pub(super) fn claims<'a>(instances: impl Iterator<Item = &'a InstanceEntry>) -> Claims {
    let mut claims = Claims::default();
    for e in instances {
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

/// What an inventory update changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Update {
    /// Nothing.
    Unchanged,
    /// Only messages of details.
    Touched,
    /// Something readers must see at once.
    Changed,
}
