//! `evictPod`: the leader evicts the pods of a HealthCheck whose action is `evictPod`, through the
//! Eviction API, so that PodDisruptionBudgets are honoured. Agents never evict: one place sees
//! the fleet, paces evictions across it (one per `--eviction-interval`, as the node lifecycle
//! controller paces its own), and keeps each pod's budget.
//!
//! The decisions are pure ([`Evictions::due`]); [`evict`] is the one call to the API server.
//! - A pod is a candidate while its InstanceStatus says the check is `impaired` with a failing
//!   last probe, the pod is running, and the controller allows remediation for the check
//!   (`maxUnhealthy` over the fleet).
//! - Evictions of a pod count against `maxRestarts` within `window`, by namespace and name, so a
//!   StatefulSet pod that comes back under its name keeps its budget; each eviction waits the
//!   backoff after the previous one.
//! - A refusal (429: a disruption budget allows no disruption now) is recorded and retried with
//!   the check's backoff; it does not use up the budget, as nothing was disrupted.
//! - A pod once evicted is not evicted again (its uid is remembered): it is terminating.
//! - Never on the word of a node whose agent is silent: its InstanceStatus are stale.
//!
//! The history lives in the leader's memory: a new leader starts with fresh budgets, which the
//! fleet-wide pace and the disruption budgets still bound.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta, Preconditions};
use kube::Client;
use kube::core::Status;

use crate::api::{CheckStatus, InstanceKind, InstanceState, InstanceStatus};
use crate::engine::remediation::{self, ActionRecord, Decision};
use crate::model::{ActionKind, CheckDef, CheckKey};

/// A pod the controller may evict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The HealthCheck that asks.
    pub check: CheckKey,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's uid (from the InstanceStatus's owner), so that only this incarnation is evicted.
    pub uid: Option<String>,
    /// Its InstanceStatus (name, uid), which Events are about.
    pub status_name: String,
    /// Its InstanceStatus's uid.
    pub status_uid: Option<String>,
    /// The node whose agent reported it.
    pub node: String,
    /// Why, from the probe.
    pub reason: String,
}

/// The pods to consider now: those of `evictPod` HealthChecks (`defs`) that are impaired on a
/// failing probe, running, and whose check the controller allows to remediate (`allowed`).
pub fn candidates<'a>(
    defs: impl IntoIterator<Item = &'a CheckDef>,
    allowed: &HashMap<CheckKey, bool>,
    statuses: &BTreeMap<String, InstanceStatus>,
) -> Vec<Candidate> {
    let evicting: HashMap<String, &CheckDef> = defs
        .into_iter()
        .filter(|d| d.action.as_ref().is_some_and(|a| a.kind == ActionKind::EvictPod))
        .filter(|d| !d.suspend && allowed.get(&d.key).copied().unwrap_or(false))
        .map(|d| (d.key.to_string(), d))
        .collect();
    if evicting.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for doc in statuses.values() {
        let instance = &doc.spec.instance;
        let Some(status) = &doc.status else { continue };
        if instance.kind != InstanceKind::Pod || status.state != InstanceState::Running {
            continue;
        }
        let (Some(namespace), Some(status_name)) = (&doc.metadata.namespace, &doc.metadata.name) else {
            continue;
        };
        let owner = doc.metadata.owner_references.iter().flatten().find(|o| o.kind == "Pod");
        for result in &status.checks {
            let Some(def) = evicting.get(&result.health_check) else { continue };
            let failing = result.status == CheckStatus::Impaired
                && result.consecutive_failures >= def.timing.failure_threshold.max(1);
            if !failing {
                continue;
            }
            let reason = match (&result.reason, &result.message) {
                (Some(r), Some(m)) => format!("{r}: {m}"),
                (Some(r), None) => r.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => "unhealthy".to_owned(),
            };
            out.push(Candidate {
                check: def.key.clone(),
                namespace: namespace.clone(),
                pod: owner.map_or_else(|| instance.name.clone(), |o| o.name.clone()),
                uid: owner.map(|o| o.uid.clone()),
                status_name: status_name.clone(),
                status_uid: doc.metadata.uid.clone(),
                node: instance.node.clone(),
                reason,
            });
        }
    }
    out
}

/// What came of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pod is being evicted.
    Evicted,
    /// The API server refused for now (429: a disruption budget).
    Refused,
    /// Another error (the pod is gone, a conflict, the API server failed).
    Failed,
}

impl Outcome {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Evicted => "evicted",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// The evictions of the fleet, as far as this leader knows them.
#[derive(Debug)]
pub struct Evictions {
    /// Fleet-wide pace: at most one attempt per interval.
    interval: SignedDuration,
    /// When the last attempt was made.
    last_attempt: Option<Timestamp>,
    /// Attempts per (check, namespace/pod), oldest first.
    history: HashMap<(CheckKey, String), Vec<(Timestamp, Outcome)>>,
    /// Pods (uids) already evicted.
    evicted: HashSet<String>,
    /// The earliest time something waiting may be done.
    wake: Option<Timestamp>,
}

impl Evictions {
    /// Evictions paced at one per `interval` across the fleet.
    pub fn new(interval: Duration) -> Evictions {
        Evictions {
            interval: SignedDuration::try_from(interval).unwrap_or(SignedDuration::MAX),
            last_attempt: None,
            history: HashMap::new(),
            evicted: HashSet::new(),
            wake: None,
        }
    }

    /// When a candidate that had to wait may be tried again.
    pub fn wake_at(&self) -> Option<Timestamp> {
        self.wake
    }

    /// The candidates to evict now (at most one: the pace), in order; notes when to look again
    /// for those that must wait.
    pub fn due(
        &mut self,
        candidates: Vec<Candidate>,
        defs: &HashMap<CheckKey, &CheckDef>,
        now: Timestamp,
    ) -> Option<Candidate> {
        self.wake = None;
        let mut chosen = None;
        for c in candidates {
            if c.uid.as_ref().is_some_and(|u| self.evicted.contains(u)) {
                continue;
            }
            let Some(policy) = defs.get(&c.check).and_then(|d| d.action.as_ref()).map(|a| &a.policy) else {
                continue;
            };
            let attempts =
                self.history.get(&(c.check.clone(), pod_key(&c))).map(Vec::as_slice).unwrap_or(&[]);
            match decide(policy, &c.check, attempts, now) {
                Decision::Act => {}
                Decision::Backoff { until } => {
                    self.wake_no_later(until);
                    continue;
                }
                _ => continue,
            }
            if let Some(last) = self.last_attempt {
                let next = last.checked_add(self.interval).unwrap_or(Timestamp::MAX);
                if now < next {
                    self.wake_no_later(next);
                    continue;
                }
            }
            if chosen.is_none() {
                chosen = Some(c);
            } else if let Some(last) = self.last_attempt.or(Some(now)) {
                // More are waiting: look again once the pace allows.
                self.wake_no_later(last.checked_add(self.interval).unwrap_or(Timestamp::MAX));
            }
        }
        chosen
    }

    /// Records an attempt on `candidate`.
    pub fn record(&mut self, candidate: &Candidate, outcome: Outcome, now: Timestamp) {
        self.last_attempt = Some(now);
        if outcome == Outcome::Evicted
            && let Some(uid) = &candidate.uid
        {
            self.evicted.insert(uid.clone());
        }
        let attempts = self.history.entry((candidate.check.clone(), pod_key(candidate))).or_default();
        attempts.push((now, outcome));
        if attempts.len() > remediation::HISTORY_LIMIT {
            attempts.remove(0);
        }
        // The next attempt on anything waits for the pace.
        self.wake_no_later(now.checked_add(self.interval).unwrap_or(Timestamp::MAX));
    }

    /// Nothing to wake up for (this replica does not lead).
    pub fn rest(&mut self) {
        self.wake = None;
    }

    /// Forgets the history of checks that no longer exist.
    pub fn retain(&mut self, checks: &HashSet<CheckKey>) {
        self.history.retain(|(check, _), _| checks.contains(check));
    }

    fn wake_no_later(&mut self, at: Timestamp) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }
}

fn pod_key(c: &Candidate) -> String {
    format!("{}/{}", c.namespace, c.pod)
}

/// The engine's policy over the evictions that happened (the budget), then the backoff after
/// refusals since the last of them.
fn decide(
    policy: &crate::model::RestartPolicy,
    check: &CheckKey,
    attempts: &[(Timestamp, Outcome)],
    now: Timestamp,
) -> Decision {
    let evictions: Vec<ActionRecord> = attempts
        .iter()
        .filter(|(_, o)| *o == Outcome::Evicted)
        .map(|(at, _)| ActionRecord {
            at: *at,
            check: check.clone(),
            action: "evictPod".to_owned(),
            succeeded: true,
            message: String::new(),
        })
        .collect();
    let refs: Vec<&ActionRecord> = evictions.iter().collect();
    let decision = remediation::decide(policy, &refs, now);
    if decision != Decision::Act {
        return decision;
    }
    let refused: Vec<Timestamp> =
        attempts.iter().rev().take_while(|(_, o)| *o != Outcome::Evicted).map(|(at, _)| *at).collect();
    if let Some(last) = refused.first() {
        let n = u32::try_from(refused.len()).unwrap_or(u32::MAX);
        let delay =
            SignedDuration::try_from(remediation::backoff_delay(policy, n)).unwrap_or(SignedDuration::MAX);
        let until = last.checked_add(delay).unwrap_or(Timestamp::MAX);
        if now < until {
            return Decision::Backoff { until };
        }
    }
    Decision::Act
}

/// Asks the API server to evict `candidate` (only the incarnation of its uid); the outcome and
/// what the server said.
///
/// The Eviction is posted as the API defines it (`policy/v1`, `deleteOptions` in camelCase):
/// kube's own `Api::evict` (kube-core 5.0) sends `delete_options`, which the API server ignores
/// as an unknown field, so its preconditions would silently not apply.
pub async fn evict(client: &Client, candidate: &Candidate) -> (Outcome, String) {
    let eviction = Eviction {
        metadata: ObjectMeta {
            name: Some(candidate.pod.clone()),
            namespace: Some(candidate.namespace.clone()),
            ..ObjectMeta::default()
        },
        delete_options: Some(DeleteOptions {
            preconditions: candidate
                .uid
                .clone()
                .map(|uid| Preconditions { uid: Some(uid), resource_version: None }),
            ..DeleteOptions::default()
        }),
    };
    let url = format!("/api/v1/namespaces/{}/pods/{}/eviction", candidate.namespace, candidate.pod);
    let sent = serde_json::to_vec(&eviction).map_err(|e| e.to_string()).and_then(|body| {
        http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| e.to_string())
    });
    let result = match sent {
        Ok(request) => client.request::<Status>(request).await,
        Err(e) => {
            return (
                Outcome::Failed,
                format!("cannot build the eviction of {}/{}: {e}", candidate.namespace, candidate.pod),
            );
        }
    };
    match result {
        Ok(_) => (
            Outcome::Evicted,
            format!("evicted pod {}/{}: {}", candidate.namespace, candidate.pod, candidate.reason),
        ),
        Err(kube::Error::Api(s)) if s.code == 429 => (
            Outcome::Refused,
            format!(
                "eviction of pod {}/{} refused for now: {}",
                candidate.namespace, candidate.pod, s.message
            ),
        ),
        Err(e) => (
            Outcome::Failed,
            format!(
                "cannot evict pod {}/{}: {}",
                candidate.namespace,
                candidate.pod,
                crate::report::apiserver::error_message(&e)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RestartPolicy;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 2,
            window: Duration::from_secs(600),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(40),
            multiplier: 2,
        }
    }

    fn candidate(pod: &str) -> Candidate {
        Candidate {
            check: CheckKey::new("shop", "web"),
            namespace: "shop".into(),
            pod: pod.into(),
            uid: Some(format!("uid-{pod}")),
            status_name: format!("pod-{pod}"),
            status_uid: None,
            node: "n1".into(),
            reason: "status: HTTP 503".into(),
        }
    }

    type Mock =
        tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>;

    /// A client whose every request goes to the returned handle.
    fn mock_client() -> (kube::Client, Mock) {
        let (service, handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        (kube::Client::new(service, "default"), handle)
    }

    fn reply(status: u16, body: serde_json::Value) -> http::Response<kube::client::Body> {
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap_or_default()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The exact call: one POST of an Eviction for the pod, with the pod's uid as a
    /// precondition (a pod of the same name made since is not evicted); the server's 429 is a
    /// refusal with its message, its 201 an eviction.
    #[tokio::test]
    async fn an_eviction_is_one_post_naming_the_pods_uid() {
        for (code, expected) in [(429, Outcome::Refused), (201, Outcome::Evicted), (404, Outcome::Failed)] {
            let (client, mut handle) = mock_client();
            let server = tokio::spawn(async move {
                let Some((request, send)) = handle.next_request().await else { panic!("no request") };
                assert_eq!(request.method(), http::Method::POST);
                assert_eq!(request.uri().to_string(), "/api/v1/namespaces/shop/pods/web-1/eviction");
                let body = request.into_body().collect_bytes().await.unwrap_or_default();
                let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                assert_eq!(
                    (&sent["apiVersion"], &sent["kind"]),
                    (&"policy/v1".into(), &"Eviction".into()),
                    "{sent}"
                );
                assert_eq!(sent["metadata"]["name"], "web-1", "{sent}");
                assert_eq!(sent["deleteOptions"]["preconditions"]["uid"], "uid-web-1", "{sent}");
                let message = "Cannot evict pod as it would violate the pod's disruption budget.";
                send.send_response(reply(
                    code,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": if code < 300 { "Success" } else { "Failure" },
                                       "message": message, "code": code}),
                ));
                // Nothing more: no retry by the client itself.
                assert!(
                    tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await.is_err()
                );
            });
            let (outcome, message) = evict(&client, &candidate("web-1")).await;
            assert_eq!(outcome, expected, "{code}: {message}");
            if code == 429 {
                assert!(
                    message.contains("refused for now") && message.contains("disruption budget"),
                    "{message}"
                );
            }
            server.await.unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn refusals_back_off_without_using_the_budget() {
        let p = policy();
        let key = CheckKey::new("shop", "web");
        assert_eq!(decide(&p, &key, &[], at(0)), Decision::Act);
        let refused = [(at(0), Outcome::Refused)];
        assert_eq!(decide(&p, &key, &refused, at(5)), Decision::Backoff { until: at(10) });
        assert_eq!(decide(&p, &key, &refused, at(10)), Decision::Act);
        let twice = [(at(0), Outcome::Refused), (at(10), Outcome::Refused)];
        assert_eq!(decide(&p, &key, &twice, at(25)), Decision::Backoff { until: at(30) });
        // Many refusals never exhaust the budget: nothing was disrupted.
        let many: Vec<_> = (0..10).map(|i| (at(i * 100), Outcome::Refused)).collect();
        assert_eq!(decide(&p, &key, &many, at(2000)), Decision::Act);
        // Evictions do.
        let two = [(at(0), Outcome::Evicted), (at(100), Outcome::Evicted)];
        assert!(matches!(decide(&p, &key, &two, at(200)), Decision::BudgetExhausted { count: 2, .. }));
        assert_eq!(decide(&p, &key, &two, at(700)), Decision::Act);
    }

    #[test]
    fn one_eviction_per_interval_across_the_fleet() {
        let yaml = "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata: {name: web, namespace: shop}\nspec:\n  target: {pods: {selector: {matchLabels: {app: web}}, port: 80}}\n  probe: {http: {}}\n  action: {type: evictPod, maxRestarts: 2, windowSeconds: 600, backoff: {initialSeconds: 10, maxSeconds: 40}}\n";
        let hc: crate::api::HealthCheck = serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        let def = crate::model::validate(&hc).unwrap_or_else(|e| panic!("{e:?}"));
        let defs: HashMap<CheckKey, &CheckDef> = [(def.key.clone(), &def)].into();
        let mut e = Evictions::new(Duration::from_secs(10));
        let first = e.due(vec![candidate("a"), candidate("b")], &defs, at(0)).unwrap();
        assert_eq!(first.pod, "a");
        e.record(&first, Outcome::Evicted, at(0));
        // The next pod waits for the pace; the evicted one is never chosen again.
        assert_eq!(e.due(vec![candidate("a"), candidate("b")], &defs, at(3)), None);
        assert_eq!(e.wake_at(), Some(at(10)));
        let second = e.due(vec![candidate("a"), candidate("b")], &defs, at(10)).unwrap();
        assert_eq!(second.pod, "b");
        e.record(&second, Outcome::Refused, at(10));
        // Refused: b backs off 10 s, and the pace is 10 s.
        assert_eq!(e.due(vec![candidate("b")], &defs, at(15)), None);
        assert_eq!(e.wake_at(), Some(at(20)));
        assert_eq!(e.due(vec![candidate("b")], &defs, at(20)).map(|c| c.pod), Some("b".to_owned()));
    }
}
