//! A HealthCheck's status from the results of its targets — conditions, counts, the bounded list
//! of unhealthy instances and whether remediation is allowed (the `maxUnhealthy` gate). A pure
//! function: the standalone agent feeds it its own targets, the controller the whole fleet's.
//!
//! The gate itself is behind [`RemediationGate`]: standalone, the agent's own counts decide
//! ([`LocalCounts`]); in a cluster, the controller's `status.remediationAllowed` will.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::remediation::{self, Decision};
use crate::api::{CheckStatus, HealthCheckStatus, InstanceKind, UnhealthyInstance, conditions, reasons};
use crate::model::{CheckDef, CheckKey, Limit};

/// How many unhealthy instances a HealthCheck's status lists.
pub const UNHEALTHY_LIST_LIMIT: usize = 20;

/// What is known of the HealthCheck itself.
#[derive(Clone, Copy, Debug)]
pub struct CheckFacts<'a> {
    /// Generation of the spec as last written.
    pub generation: i64,
    /// What is wrong with that spec, if anything.
    pub invalid: Option<&'a str>,
    /// The definition that runs: the current spec, or the last valid one.
    pub running: Option<&'a CheckDef>,
    /// Why it has no targets, when it has none (the planner's note).
    pub note: Option<&'a str>,
}

/// One target's result.
#[derive(Clone, Debug)]
pub struct TargetResult<'a> {
    /// Instance id.
    pub id: &'a str,
    /// Its kind.
    pub kind: InstanceKind,
    /// The node that probes it.
    pub node: &'a str,
    /// The check's status on it.
    pub status: CheckStatus,
    /// Since when it is impaired.
    pub impaired_since: Option<Timestamp>,
    /// What the last probe saw.
    pub message: Option<&'a str>,
}

/// Whether a HealthCheck may act now on one of its targets.
pub trait RemediationGate: Send + Sync + std::fmt::Debug {
    /// `Some` (a mass failure, with its figures) when `check` must not act: `unhealthy` of
    /// `total` targets are impaired as this agent counts them, against `limit`.
    fn blocked(&self, check: &CheckKey, limit: Option<Limit>, unhealthy: u32, total: u32)
    -> Option<Decision>;
}

/// The standalone gate: this agent's own counts against `maxUnhealthy`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalCounts;

impl RemediationGate for LocalCounts {
    fn blocked(
        &self,
        _check: &CheckKey,
        limit: Option<Limit>,
        unhealthy: u32,
        total: u32,
    ) -> Option<Decision> {
        remediation::mass_failure(limit, unhealthy, total)
    }
}

/// What the controller last wrote of one HealthCheck.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// `status.remediationAllowed` (`None`: not written yet).
    pub allowed: Option<bool>,
    /// `status.unhealthy`: the impaired targets the controller has counted across the fleet.
    pub unhealthy: u32,
}

/// The gate in a cluster: the controller writes `status.remediationAllowed` of each HealthCheck
/// from the whole fleet's counts, and the agent acts only while that says yes — and only once
/// the controller has counted at least as many impaired targets as this agent sees of the check,
/// so that a failure of many targets at once is judged as a whole, not one by one as each
/// crosses its threshold (the first ones would otherwise be acted on under an old "yes"). What was read last
/// holds through an API outage for `staleness`; a check whose verdict was never read, or was read
/// too long ago, does not act. The agent's own counts still block a local mass failure.
#[derive(Debug)]
pub struct ControllerVerdicts {
    staleness: std::time::Duration,
    clock: std::sync::Arc<dyn super::clock::Clock>,
    state: std::sync::RwLock<Verdicts>,
}

#[derive(Debug, Default)]
struct Verdicts {
    /// Per check: what the controller wrote, as last read.
    allowed: std::collections::HashMap<CheckKey, Verdict>,
    /// When the source last had a complete, current view.
    fresh_at: Option<Timestamp>,
}

impl ControllerVerdicts {
    /// No verdict known yet.
    pub fn new(staleness: std::time::Duration, clock: std::sync::Arc<dyn super::clock::Clock>) -> Self {
        ControllerVerdicts { staleness, clock, state: std::sync::RwLock::default() }
    }

    /// Everything the HealthCheck source holds now, read from the API server just now.
    pub fn replace(&self, allowed: impl IntoIterator<Item = (CheckKey, Verdict)>) {
        let now = self.clock.now();
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.allowed = allowed.into_iter().collect();
        state.fresh_at = Some(now);
    }

    /// The source is still current (its watch is healthy) although nothing changed.
    pub fn confirm(&self) {
        let now = self.clock.now();
        self.state.write().unwrap_or_else(|p| p.into_inner()).fresh_at = Some(now);
    }

    fn verdict(&self, check: &CheckKey, local_unhealthy: u32) -> Result<(), String> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let Some(fresh_at) = state.fresh_at else {
            return Err("the HealthChecks have not been read from the API server yet: not acting".to_owned());
        };
        let limit = jiff::SignedDuration::try_from(self.staleness).unwrap_or(jiff::SignedDuration::MAX);
        if self.clock.now().duration_since(fresh_at) > limit {
            return Err(format!(
                "the controller's verdict was last read {}s ago (longer than {}s): not acting until the API server answers",
                self.clock.now().duration_since(fresh_at).as_secs(),
                self.staleness.as_secs()
            ));
        }
        match state.allowed.get(check) {
            Some(Verdict { allowed: Some(true), unhealthy }) if *unhealthy >= local_unhealthy => Ok(()),
            Some(Verdict { allowed: Some(true), unhealthy }) => Err(format!(
                "the controller has counted {unhealthy} impaired targets, this node sees {local_unhealthy}: waiting for it to judge them all (maxUnhealthy)"
            )),
            Some(Verdict { allowed: Some(false), .. }) => Err(
                "status.remediationAllowed is false: too many targets are impaired across the fleet (maxUnhealthy)"
                    .to_owned(),
            ),
            Some(Verdict { allowed: None, .. }) => {
                Err("the controller has not written status.remediationAllowed yet: not acting".to_owned())
            }
            None => Err("the HealthCheck is not known to the API server: not acting".to_owned()),
        }
    }
}

impl RemediationGate for ControllerVerdicts {
    fn blocked(
        &self,
        check: &CheckKey,
        limit: Option<Limit>,
        unhealthy: u32,
        total: u32,
    ) -> Option<Decision> {
        if let Some(local) = remediation::mass_failure(limit, unhealthy, total) {
            return Some(local);
        }
        self.verdict(check, unhealthy).err().map(|why| Decision::Withheld { why })
    }
}

/// Counts of targets by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every target.
    pub targets: u32,
    /// `ok`.
    pub healthy: u32,
    /// `impaired`.
    pub unhealthy: u32,
    /// `insufficient-data`.
    pub insufficient: u32,
    /// `initializing`.
    pub initializing: u32,
}

impl Counts {
    fn add(&mut self, status: CheckStatus) {
        self.targets += 1;
        match status {
            CheckStatus::Ok => self.healthy += 1,
            CheckStatus::Impaired => self.unhealthy += 1,
            CheckStatus::InsufficientData => self.insufficient += 1,
            CheckStatus::Initializing => self.initializing += 1,
            CheckStatus::NotApplicable => {}
        }
    }
}

/// The status of a HealthCheck with `facts` over `targets`. Conditions keep their
/// `lastTransitionTime` from `previous` while their status stays; new ones take `now`.
pub fn health_check_status<'a>(
    facts: &CheckFacts<'_>,
    targets: impl IntoIterator<Item = TargetResult<'a>>,
    previous: &[Condition],
    now: Timestamp,
) -> HealthCheckStatus {
    let mut counts = Counts::default();
    let mut impaired: Vec<TargetResult<'a>> = Vec::new();
    for t in targets {
        counts.add(t.status);
        if t.status == CheckStatus::Impaired {
            impaired.push(t);
        }
    }
    // The first impaired instances by id: the list is stable from one render to the next.
    impaired.sort_by(|a, b| a.id.cmp(b.id));
    let unhealthy_instances: Vec<UnhealthyInstance> = impaired
        .iter()
        .take(UNHEALTHY_LIST_LIMIT)
        .map(|t| UnhealthyInstance {
            id: t.id.to_owned(),
            kind: t.kind,
            node: Some(t.node.to_owned()),
            status: CheckStatus::Impaired,
            since: t.impaired_since.map(Time),
            message: t.message.map(str::to_owned),
        })
        .collect();
    let running = facts.running;
    let suspended = running.is_some_and(|d| d.suspend);
    let Counts { targets, healthy, unhealthy, insufficient, initializing } = counts;

    let mut wanted: Vec<(&str, &str, &str, String)> = Vec::new();
    wanted.push(match (facts.invalid, running) {
        (Some(errors), Some(def)) => (
            conditions::INVALID,
            "True",
            reasons::INVALID_SPEC,
            format!("{errors}; still running the last valid spec (generation {})", def.generation),
        ),
        (Some(errors), None) => {
            (conditions::INVALID, "True", reasons::INVALID_SPEC, format!("{errors}; not running"))
        }
        (None, _) => (conditions::INVALID, "False", reasons::VALID_SPEC, "the spec is valid".into()),
    });
    let ready = if running.is_none() {
        ("False", reasons::INVALID_SPEC, "the spec is invalid; nothing is probed".to_owned())
    } else if suspended {
        ("False", reasons::SUSPENDED, "spec.suspend is set; probing and remediation are paused".to_owned())
    } else if targets == 0 {
        ("False", reasons::NO_TARGETS, facts.note.unwrap_or("no target matches on this node").to_owned())
    } else {
        ("True", reasons::PROBING, format!("probing {targets} targets"))
    };
    wanted.push((conditions::READY, ready.0, ready.1, ready.2));
    let degraded = if unhealthy > 0 {
        let names: Vec<&str> = unhealthy_instances.iter().map(|u| u.id.as_str()).take(5).collect();
        (
            "True",
            reasons::TARGETS_IMPAIRED,
            format!("{unhealthy} of {targets} targets impaired: {}", names.join(", ")),
        )
    } else if insufficient > 0 {
        ("True", reasons::INSUFFICIENT_DATA, format!("{insufficient} of {targets} targets cannot be probed"))
    } else if initializing > 0 {
        ("Unknown", reasons::INITIALIZING, "waiting for the first probes".to_owned())
    } else {
        ("False", reasons::ALL_OK, format!("{healthy} of {targets} targets ok"))
    };
    wanted.push((conditions::DEGRADED, degraded.0, degraded.1, degraded.2));

    let conditions = wanted
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let since = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message,
                observed_generation: Some(facts.generation),
                last_transition_time: since,
            }
        })
        .collect();
    let remediation_allowed = running.and_then(|d| d.action.as_ref()).map(|action| {
        !suspended && remediation::mass_failure(action.max_unhealthy, unhealthy, targets).is_none()
    });
    HealthCheckStatus {
        observed_generation: Some(facts.generation),
        conditions,
        target_kind: running.map(|d| d.target.kind().to_owned()),
        probe_kind: running.map(|d| d.probe.kind().to_owned()),
        targets,
        healthy,
        unhealthy,
        unknown: targets - healthy - unhealthy,
        unhealthy_instances,
        remediation_allowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HealthCheck;

    fn def(action: &str) -> CheckDef {
        let yaml = format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata: {{name: web, namespace: default, generation: 3}}\nspec:\n  target: {{endpoints: {{addresses: ['10.0.0.1:80']}}}}\n  probe: {{tcp: {{}}}}\n{action}"
        );
        let hc: HealthCheck = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
        crate::model::validate(&hc).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn target(id: &str, status: CheckStatus) -> TargetResult<'_> {
        TargetResult {
            id,
            kind: InstanceKind::Pod,
            node: "n1",
            status,
            impaired_since: None,
            message: Some("refused"),
        }
    }

    #[test]
    fn the_controllers_verdict_gates_actions_and_goes_stale() {
        let clock = std::sync::Arc::new(super::super::clock::ManualClock::new());
        let gate = ControllerVerdicts::new(std::time::Duration::from_secs(300), clock.clone());
        let (web, db, new) =
            (CheckKey::new("ns", "web"), CheckKey::new("ns", "db"), CheckKey::new("ns", "new"));
        let withheld = |d: Option<Decision>| match d {
            Some(Decision::Withheld { why }) => why,
            other => panic!("{other:?}"),
        };
        assert!(
            withheld(gate.blocked(&web, None, 1, 10)).contains("not been read"),
            "never synced: no action"
        );
        let said = |allowed, unhealthy| Verdict { allowed, unhealthy };
        gate.replace([
            (web.clone(), said(Some(true), 1)),
            (db.clone(), said(Some(false), 9)),
            (new.clone(), said(None, 0)),
        ]);
        assert_eq!(gate.blocked(&web, None, 1, 10), None);
        // Three impaired here, one counted by the controller: wait for its judgement of all.
        assert!(
            withheld(gate.blocked(&web, None, 3, 10))
                .contains("counted 1 impaired targets, this node sees 3")
        );
        assert!(withheld(gate.blocked(&db, None, 1, 10)).contains("remediationAllowed is false"));
        assert!(withheld(gate.blocked(&new, None, 1, 10)).contains("not written"));
        assert!(withheld(gate.blocked(&CheckKey::new("ns", "gone"), None, 1, 10)).contains("not known"));
        // The agent's own count still blocks a local mass failure.
        let local = gate.blocked(&web, Some(Limit::Count(1)), 5, 10);
        assert!(matches!(local, Some(Decision::MassFailure { unhealthy: 5, .. })), "{local:?}");
        // An outage: the last verdict holds for the staleness, then nothing acts.
        clock.advance(299);
        assert_eq!(gate.blocked(&web, None, 1, 10), None);
        clock.advance(2);
        assert!(withheld(gate.blocked(&web, None, 1, 10)).contains("last read 301s ago"));
        gate.confirm();
        assert_eq!(gate.blocked(&web, None, 1, 10), None, "current again");
    }

    fn condition<'a>(s: &'a HealthCheckStatus, kind: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == kind).unwrap_or_else(|| panic!("no {kind}"))
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn counts_conditions_and_the_unhealthy_list_come_from_the_targets() {
        let def = def("  action: {type: exec, exec: {command: ['true']}, maxUnhealthy: '50%'}\n");
        let facts = CheckFacts { generation: 3, invalid: None, running: Some(&def), note: None };
        let ids: Vec<String> = (0..30).map(|i| format!("pod-{i:02}")).collect();
        let mut targets: Vec<TargetResult<'_>> =
            ids[..25].iter().map(|id| target(id, CheckStatus::Impaired)).collect();
        targets.extend(ids[25..28].iter().map(|id| target(id, CheckStatus::Ok)));
        targets.extend(ids[28..].iter().map(|id| target(id, CheckStatus::InsufficientData)));
        targets.reverse();
        let s = health_check_status(&facts, targets, &[], at(0));
        assert_eq!((s.targets, s.healthy, s.unhealthy, s.unknown), (30, 3, 25, 2));
        assert_eq!(s.unhealthy_instances.len(), UNHEALTHY_LIST_LIMIT, "bounded");
        assert_eq!(s.unhealthy_instances[0].id, "pod-00", "sorted by id, whatever the order in");
        let degraded = condition(&s, conditions::DEGRADED);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", reasons::TARGETS_IMPAIRED));
        assert!(
            degraded.message.starts_with("25 of 30 targets impaired: pod-00, pod-01"),
            "{}",
            degraded.message
        );
        assert_eq!(condition(&s, conditions::READY).status, "True");
        assert_eq!(condition(&s, conditions::INVALID).status, "False");
        assert_eq!(s.observed_generation, Some(3));
        // 25 of 30 is over half: nobody is restarted.
        assert_eq!(s.remediation_allowed, Some(false));
    }

    #[test]
    fn remediation_is_allowed_within_max_unhealthy_and_absent_without_an_action() {
        let def_with = def("  action: {type: exec, exec: {command: ['true']}, maxUnhealthy: 1}\n");
        let facts = CheckFacts { generation: 1, invalid: None, running: Some(&def_with), note: None };
        let one = [target("a", CheckStatus::Impaired), target("b", CheckStatus::Ok)];
        assert_eq!(health_check_status(&facts, one.clone(), &[], at(0)).remediation_allowed, Some(true));
        let two = [target("a", CheckStatus::Impaired), target("b", CheckStatus::Impaired)];
        assert_eq!(health_check_status(&facts, two, &[], at(0)).remediation_allowed, Some(false));
        let def_without = def("");
        let facts = CheckFacts { running: Some(&def_without), ..facts };
        assert_eq!(health_check_status(&facts, one, &[], at(0)).remediation_allowed, None);
    }

    #[test]
    fn conditions_keep_their_transition_time_while_their_status_stays() {
        let def = def("");
        let facts = CheckFacts { generation: 1, invalid: None, running: Some(&def), note: None };
        let first = health_check_status(&facts, [target("a", CheckStatus::Ok)], &[], at(0));
        let same = health_check_status(&facts, [target("a", CheckStatus::Ok)], &first.conditions, at(60));
        assert_eq!(condition(&same, conditions::DEGRADED).last_transition_time, Time(at(0)));
        let worse =
            health_check_status(&facts, [target("a", CheckStatus::Impaired)], &same.conditions, at(90));
        assert_eq!(condition(&worse, conditions::DEGRADED).last_transition_time, Time(at(90)));
        assert_eq!(condition(&worse, conditions::READY).last_transition_time, Time(at(0)));
    }

    #[test]
    fn an_invalid_spec_says_so_and_whether_the_last_valid_one_runs() {
        let def = def("");
        let invalid = "spec.probe.periodSeconds: must be at least 1";
        let facts = CheckFacts { generation: 4, invalid: Some(invalid), running: Some(&def), note: None };
        let s = health_check_status(&facts, [target("a", CheckStatus::Ok)], &[], at(0));
        let c = condition(&s, conditions::INVALID);
        assert_eq!(c.status, "True");
        assert!(
            c.message.contains(invalid) && c.message.contains("still running the last valid spec"),
            "{}",
            c.message
        );
        let facts =
            CheckFacts { running: None, note: Some("spec.nodeSelector does not select node n1"), ..facts };
        let s = health_check_status(&facts, [], &[], at(0));
        assert!(condition(&s, conditions::INVALID).message.ends_with("not running"));
        assert_eq!(condition(&s, conditions::READY).reason, reasons::INVALID_SPEC);
        let valid = CheckFacts { invalid: None, running: Some(&def), ..facts };
        let s = health_check_status(&valid, [], &[], at(0));
        let ready = condition(&s, conditions::READY);
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            (reasons::NO_TARGETS, "spec.nodeSelector does not select node n1")
        );
    }
}
