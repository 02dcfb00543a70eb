//! Garbage collection of InstanceStatus whose node is gone: no Node object by that name, and its
//! agent's Lease expired longer than `--gc-after` ago. Without a Lease there is no evidence that
//! an agent ever ran there (an object written by hand, or by an agent of another install), and
//! nothing is deleted. A pod's InstanceStatus is left to
//! the Kubernetes garbage collector (it is owned by the Pod), and an instance that vanished from
//! a live node is deleted by that node's agent. Pure: objects and time in, names out.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;

use crate::api::{self, InstanceStatus};

/// The InstanceStatus (namespace, name) to delete now.
pub fn garbage<'a>(
    statuses: impl IntoIterator<Item = &'a InstanceStatus>,
    nodes: &HashSet<String>,
    leases: impl IntoIterator<Item = &'a Lease>,
    after: Duration,
    now: Timestamp,
) -> Vec<(String, String)> {
    let after = SignedDuration::try_from(after).unwrap_or(SignedDuration::MAX);
    // The last time each node's agent was heard of (its Lease's expiry).
    let mut heard: BTreeMap<&str, Timestamp> = BTreeMap::new();
    for lease in leases {
        let Some(node) = lease.metadata.labels.as_ref().and_then(|l| l.get(api::labels::NODE)) else {
            continue;
        };
        let Some(spec) = &lease.spec else { continue };
        let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
        let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0)));
        if let Some(until) = renewed.and_then(|r| r.checked_add(duration).ok()) {
            heard.insert(node.as_str(), until);
        }
    }
    let mut out = Vec::new();
    for doc in statuses {
        if doc.metadata.owner_references.iter().flatten().any(|o| o.kind == "Pod") {
            continue;
        }
        let node = doc
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(api::labels::NODE))
            .map_or(doc.spec.instance.node.as_str(), String::as_str);
        if node.is_empty() || nodes.contains(node) {
            continue;
        }
        let Some(last) = heard.get(node).copied() else { continue };
        if last.checked_add(after).is_ok_and(|gone| now > gone) {
            let (Some(ns), Some(name)) = (&doc.metadata.namespace, &doc.metadata.name) else { continue };
            out.push((ns.clone(), name.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn status(name: &str, node: &str, pod: bool) -> InstanceStatus {
        let owners = if pod {
            json!([{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "apiVersion": "vigil.dev/v1alpha1", "kind": "InstanceStatus",
            "metadata": {"name": name, "namespace": "vigil", "labels": {"vigil.dev/node": node},
                         "ownerReferences": owners},
            "spec": {"instance": {"kind": if pod { "Pod" } else { "Host" }, "id": name, "name": name, "node": node}},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn lease(node: &str, renewed: i64) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": format!("vigil-agent-{node}"), "labels": {"vigil.dev/node": node}},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
                     "renewTime": format!("{}", at(renewed).strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn only_objects_of_nodes_that_are_gone_and_silent() {
        let statuses = [
            status("host-n1", "n1", false),
            status("host-gone", "gone", false),
            status("host-quiet", "quiet", false),
            status("host-unknown", "unknown", false),
            status("pod-web", "gone", true),
        ];
        let nodes: HashSet<String> = ["n1".to_owned(), "quiet".to_owned()].into();
        // gone: Lease expired at 140, collected after 300 s more; quiet: silent but its Node stands.
        let leases = [lease("gone", 100), lease("quiet", 0)];
        let after = Duration::from_secs(300);
        assert!(garbage(&statuses, &nodes, &leases, after, at(400)).is_empty());
        assert_eq!(
            garbage(&statuses, &nodes, &leases, after, at(441)),
            vec![("vigil".into(), "host-gone".into())]
        );
        // Without a Lease, never: nothing says an agent ran there.
        assert_eq!(garbage(&statuses, &nodes, &leases, after, at(10_000)).len(), 1);
        // A renewed Lease keeps its node's objects, Node or not.
        assert!(garbage(&statuses[..2], &nodes, &[lease("gone", 790)], after, at(801)).is_empty());
    }
}
