//! Reading back what an earlier run saved: InstanceStatus documents into the store's terms,
//! under the ids of this version.
//!
//! Before ids carried the node, a container was `container-<name>`, a VM `vm-<name>` and an
//! endpoint `endpoint-<address>`. Such a document is taken as the instance's id of now
//! (`…--<node>`); the state folder removes the old file once the new one is written. A state
//! folder of an earlier version keeps its restart counts and `impairedSince` times.

use crate::api::{CheckResult, InstanceKind, InstanceStatus};
use crate::engine::remediation::ActionRecord;
use crate::engine::state::{CheckState, LastOutcome};
use crate::engine::store::view::Restored;
use crate::inventory::{id_for, unqualified_id};
use crate::model::CheckKey;
use crate::probe::Reason;

/// A saved document as the store restores it, for the agent of `node`, with the name it was
/// saved under when that is not its id (an earlier version's); `None` for a document without
/// a name.
pub fn restored(doc: InstanceStatus, node: &str) -> Option<(Restored, Option<String>)> {
    let instance = &doc.spec.instance;
    // A pod's object is named without the namespace its id starts with.
    let saved = match instance.kind {
        InstanceKind::Pod if !instance.id.is_empty() => instance.id.clone(),
        _ => doc.metadata.name.clone()?,
    };
    let raw = match instance.kind {
        InstanceKind::Endpoint => instance.address.as_deref().unwrap_or(&instance.name),
        _ => &instance.name,
    };
    let migrates =
        matches!(instance.kind, InstanceKind::Container | InstanceKind::Vm | InstanceKind::Endpoint)
            && saved == unqualified_id(instance.kind, raw);
    let (id, saved_as) =
        if migrates { (id_for(instance.kind, raw, node), Some(saved)) } else { (saved, None) };
    let first_seen = doc.metadata.creation_timestamp.map(|t| t.0);
    let Some(status) = doc.status else {
        let empty = Restored { id, first_seen, restarts: 0, history: Vec::new(), checks: Vec::new() };
        return Some((empty, saved_as));
    };
    let history = status
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
    let checks = status.checks.iter().map(|c| (c.health_check.clone(), state(c))).collect();
    Some((Restored { id, first_seen, restarts: status.restarts.count, history, checks }, saved_as))
}

/// A check state read back.
fn state(r: &CheckResult) -> CheckState {
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
        ever_passed: r.status == crate::api::CheckStatus::Ok || r.consecutive_successes > 0,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use prometheus::Registry;

    use super::*;
    use crate::api::{CheckStatus, HealthCheck};
    use crate::engine::clock::ManualClock;
    use crate::engine::store::{CheckInfo, Store};
    use crate::inventory::Instance;
    use crate::metrics::AgentMetrics;
    use crate::model::{CheckDef, validate};
    use crate::probe::{Outcome, Report};
    use crate::report::render;

    const ADDRESSES: [&str; 3] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];

    fn store() -> Store {
        Store::new(
            "n1",
            "default",
            Arc::new(ManualClock::new()),
            AgentMetrics::register(&Registry::new()).unwrap(),
        )
    }

    fn def() -> Arc<CheckDef> {
        let yaml = "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata: {name: web, namespace: default}\nspec:\n  target: {endpoints: {addresses: ['10.0.0.1:80', '10.0.0.2:80', '10.0.0.3:80']}}\n  probe: {tcp: {}, failureThreshold: 2}\n  action: {type: exec, exec: {command: ['true']}}\n";
        let hc: HealthCheck = serde_saphyr::from_str(yaml).unwrap();
        Arc::new(validate(&hc).unwrap())
    }

    fn setup(store: &Store, check: &Arc<CheckDef>) -> Vec<String> {
        let instances: Vec<Instance> = ADDRESSES.iter().map(|a| Instance::endpoint("n1", a)).collect();
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
        instances.into_iter().map(|i| i.id).collect()
    }

    /// A store whose third instance is impaired and was acted on once, and its documents as the
    /// state folder keeps them (through YAML).
    fn saved() -> (Store, Vec<String>, Vec<InstanceStatus>) {
        let store = store();
        let check = def();
        let ids = setup(&store, &check);
        let fail = Report {
            outcome: Outcome::unhealthy(Reason::Refused, "refused"),
            duration: Duration::from_millis(1),
            steps: Vec::new(),
        };
        store.record(&check, &ids[2], &fail);
        store.record(&check, &ids[2], &fail);
        let record = ActionRecord {
            at: store.now(),
            check: check.key.clone(),
            action: "exec".into(),
            succeeded: false,
            message: "x".into(),
        };
        store.record_action(&check.key, &ids[2], record);
        let docs = render::instance_docs(&store)
            .iter()
            .map(|d| serde_saphyr::from_str(&serde_saphyr::to_string(d).unwrap()).unwrap())
            .collect();
        (store, ids, docs)
    }

    fn restore_into(fresh: &Store, docs: Vec<InstanceStatus>) {
        fresh.restore(docs.into_iter().filter_map(|d| restored(d, "n1")).map(|(r, _)| r).collect());
    }

    #[test]
    fn rendered_state_restores_into_a_new_store() {
        let (store, ids, docs) = saved();
        let before = render::instance_doc(&store, &ids[2]).unwrap();
        let fresh = self::store();
        restore_into(&fresh, docs);
        setup(&fresh, &def());
        let after = render::instance_doc(&fresh, &ids[2]).unwrap();
        let (b, a) = (before.status.unwrap(), after.status.unwrap());
        assert_eq!(a.checks[0].status, CheckStatus::Impaired);
        assert_eq!(a.checks[0].impaired_since, b.checks[0].impaired_since);
        assert_eq!(a.checks[0].last_transition_time, b.checks[0].last_transition_time);
        assert_eq!(a.restarts, b.restarts);
        assert_eq!(after.metadata.creation_timestamp, before.metadata.creation_timestamp);
        let hc = render::check_docs(&fresh).remove(0).status.unwrap();
        assert_eq!((hc.targets, hc.unhealthy), (3, 1), "counts include restored statuses");
    }

    #[test]
    fn documents_of_an_earlier_version_are_migrated_to_node_qualified_ids() {
        let (_, ids, mut docs) = saved();
        // As an earlier version named them: without the node.
        for d in &mut docs {
            let address = d.spec.instance.address.clone().unwrap();
            d.metadata.name = Some(unqualified_id(InstanceKind::Endpoint, &address));
        }
        assert_eq!(docs[2].metadata.name.as_deref(), Some("endpoint-10.0.0.3-80"));
        let renamed: Vec<Option<String>> =
            docs.iter().map(|d| restored(d.clone(), "n1").unwrap().1).collect();
        let old: Vec<Option<String>> =
            ADDRESSES.iter().map(|a| Some(unqualified_id(InstanceKind::Endpoint, a))).collect();
        assert_eq!(renamed, old, "each says the name it was saved under");
        let fresh = self::store();
        restore_into(&fresh, docs);
        setup(&fresh, &def());
        let restored = fresh.instance(&ids[2]).unwrap();
        assert_eq!(restored.instance.id, "endpoint-10.0.0.3-80--n1");
        assert_eq!(restored.restarts, 1, "history carried over to the new id");
        assert_eq!(restored.checks[0].state.status, CheckStatus::Impaired);
    }

    #[test]
    fn only_old_style_names_are_migrated() {
        let (_, ids, docs) = saved();
        let (current, saved_as) = restored(docs[0].clone(), "n1").unwrap();
        assert_eq!((current.id.as_str(), saved_as), (ids[0].as_str(), None));
        let mut host = docs[0].clone();
        host.spec.instance.kind = InstanceKind::Host;
        host.metadata.name = Some("host-old-name".into());
        let (host, saved_as) = restored(host, "n1").unwrap();
        assert_eq!((host.id.as_str(), saved_as), ("host-old-name", None), "a host keeps its name");
    }
}
