//! Node loss: an agent that stops renewing its Lease cannot report, so after a grace period the
//! System check of every instance of its node is `impaired` (`reachability` failed), as EC2's
//! system status check fails when the host is unreachable. It clears when the agent renews again
//! and writes its own status. Pure: Leases, time and current status in, decisions out.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{self, CheckStatus, StatusDetail, StatusSummary};

/// The detail the controller adds to a silent node's instances.
pub const REACHABILITY: &str = "reachability";

/// Nodes whose agent Lease has not been renewed within `grace`, with the time it ran out.
pub fn silent_nodes<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    grace: Duration,
    now: Timestamp,
) -> BTreeMap<String, Timestamp> {
    let grace = SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX);
    let mut silent = BTreeMap::new();
    for lease in leases {
        let Some(node) = lease.metadata.labels.as_ref().and_then(|l| l.get(api::labels::NODE)) else {
            continue;
        };
        let Some(renewed) = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()).map(|t| t.0) else {
            continue;
        };
        let Some(expired) = renewed.checked_add(grace).ok() else { continue };
        if now > expired {
            silent.insert(node.clone(), expired);
        }
    }
    silent
}

/// Nodes whose agent Lease was renewed within `grace`.
pub fn live_nodes<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    grace: Duration,
    now: Timestamp,
) -> std::collections::HashSet<String> {
    let grace = SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX);
    let mut live = std::collections::HashSet::new();
    for lease in leases {
        let Some(node) = lease.metadata.labels.as_ref().and_then(|l| l.get(api::labels::NODE)) else {
            continue;
        };
        let renewed = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
        if renewed.and_then(|r| r.checked_add(grace).ok()).is_some_and(|until| now <= until) {
            live.insert(node.clone());
        }
    }
    live
}

/// The System check of an instance of a node silent since `since`: what it was, with
/// reachability impaired. `None` when it already says so.
pub fn unreachable(current: &StatusSummary, node: &str, since: Timestamp) -> Option<StatusSummary> {
    if current.details.iter().any(|d| d.name == REACHABILITY && d.status == CheckStatus::Impaired) {
        return None;
    }
    let mut details: Vec<StatusDetail> =
        current.details.iter().filter(|d| d.name != REACHABILITY).cloned().collect();
    details.push(StatusDetail {
        name: REACHABILITY.to_owned(),
        status: CheckStatus::Impaired,
        impaired_since: Some(Time(since)),
        message: Some(format!(
            "the agent of node {node} has not renewed its Lease since {since}; this status is not current"
        )),
    });
    Some(StatusSummary { status: CheckStatus::Impaired, details })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(node: &str, renewed: i64) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("vigil-agent-{node}"), "labels": {"vigil.dev/node": node}},
            "spec": {"holderIdentity": node, "renewTime": Timestamp::from_second(renewed).unwrap_or_else(|e| panic!("{e}")).to_string()},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_lease_not_renewed_within_the_grace_makes_its_node_silent() {
        let t = 1_700_000_000;
        let leases = [lease("n1", t), lease("n2", t + 30)];
        let now = Timestamp::from_second(t + 41).unwrap_or_else(|e| panic!("{e}"));
        let silent = silent_nodes(&leases, Duration::from_secs(40), now);
        assert_eq!(silent.keys().collect::<Vec<_>>(), ["n1"]);
        assert_eq!(silent["n1"], Timestamp::from_second(t + 40).unwrap_or_else(|e| panic!("{e}")));
        let at_grace = Timestamp::from_second(t + 40).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            silent_nodes(&leases, Duration::from_secs(40), at_grace).is_empty(),
            "not before the grace ends"
        );
        // Live is the other side: n2 only, then both at the grace's end; a node without a Lease
        // is never live.
        let live = live_nodes(&leases, Duration::from_secs(40), now);
        assert_eq!(live, ["n2".to_owned()].into());
        assert_eq!(live_nodes(&leases, Duration::from_secs(40), at_grace).len(), 2);
        assert!(!live.contains("n3"));
    }

    #[test]
    fn reachability_is_added_once() {
        let ok = StatusSummary {
            status: CheckStatus::Ok,
            details: vec![StatusDetail {
                name: "memory".into(),
                status: CheckStatus::Ok,
                impaired_since: None,
                message: None,
            }],
        };
        let since = Timestamp::from_second(1_700_000_040).unwrap_or_else(|e| panic!("{e}"));
        let marked = unreachable(&ok, "n1", since).unwrap_or_else(|| panic!("marked"));
        assert_eq!(marked.status, CheckStatus::Impaired);
        assert_eq!(marked.details.len(), 2, "the agent's details stay");
        let r = &marked.details[1];
        assert_eq!((r.name.as_str(), r.status), (REACHABILITY, CheckStatus::Impaired));
        assert_eq!(r.impaired_since, Some(Time(since)));
        assert!(unreachable(&marked, "n1", since).is_none(), "already says so: nothing to write");
    }
}
