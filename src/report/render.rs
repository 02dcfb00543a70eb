//! The store's views as API documents: InstanceStatus and HealthCheck, as `kubectl get -o yaml`
//! shows them. Rendering happens here, outside the store's lock.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use crate::api::{
    self, CheckResult, HealthCheck, InstanceKind, InstanceRef, InstanceStatus, InstanceStatusSpec,
    InstanceStatusStatus, RestartRecord, Restarts, StatusDetail, StatusSummary,
};
use crate::engine::store::Store;
use crate::engine::store::view::{Changes, CheckView, DetailView, InstanceView, Summary};
use crate::model::CheckKey;

/// Changes, rendered.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Instances to write; `None` means removed.
    pub instances: Vec<(String, Option<InstanceStatus>)>,
    /// HealthChecks to write; `None` means removed.
    pub checks: Vec<(CheckKey, Option<HealthCheck>)>,
}

impl Dirty {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty() && self.checks.is_empty()
    }
}

/// Renders the changes a reader took; instances without a namespace of their own go into
/// `namespace`.
pub fn changes(changes: Changes, namespace: &str) -> Dirty {
    Dirty {
        instances: changes
            .instances
            .into_iter()
            .map(|(id, view)| (id, view.map(|v| instance_status(&v, namespace))))
            .collect(),
        checks: changes.checks.into_iter().map(|(key, view)| (key, view.map(health_check))).collect(),
    }
}

/// Every instance of `store`, rendered.
pub fn instance_docs(store: &Store) -> Vec<InstanceStatus> {
    store.instances().iter().map(|v| instance_status(v, store.namespace())).collect()
}

/// One instance of `store`, by id or name, rendered.
pub fn instance_doc(store: &Store, id_or_name: &str) -> Option<InstanceStatus> {
    store.instance(id_or_name).map(|v| instance_status(&v, store.namespace()))
}

/// Every HealthCheck of `store`, rendered.
pub fn check_docs(store: &Store) -> Vec<HealthCheck> {
    store.checks().into_iter().map(health_check).collect()
}

fn time(ts: jiff::Timestamp) -> Time {
    Time(ts)
}

fn summary(s: &Summary) -> StatusSummary {
    StatusSummary { status: s.status, details: s.details.iter().map(detail).collect() }
}

fn detail(d: &DetailView) -> StatusDetail {
    StatusDetail {
        name: d.name.clone(),
        status: d.status,
        impaired_since: d.impaired_since.map(time),
        message: d.message.clone(),
    }
}

/// The name of an instance's InstanceStatus: its id, without the namespace that a pod's id
/// starts with (the object lives in that namespace).
pub fn object_name(i: &crate::inventory::Instance) -> String {
    match &i.namespace {
        Some(ns) => {
            i.id.strip_prefix(ns.as_str()).and_then(|r| r.strip_prefix('.')).unwrap_or(&i.id).to_owned()
        }
        None => i.id.clone(),
    }
}

/// An instance as its InstanceStatus document.
pub fn instance_status(view: &InstanceView, namespace: &str) -> InstanceStatus {
    let i = &view.instance;
    let checks = view
        .checks
        .iter()
        .map(|r| CheckResult {
            health_check: r.check.to_string(),
            probe: r.probe.to_owned(),
            status: r.state.status,
            consecutive_failures: r.state.consecutive_failures,
            consecutive_successes: r.state.consecutive_successes,
            consecutive_errors: r.state.consecutive_errors,
            last_probe_time: r.state.last_probe.map(time),
            last_transition_time: r.state.last_transition.map(time),
            impaired_since: r.state.impaired_since.map(time),
            reason: r.state.reason.map(|r| r.as_str().to_owned()),
            message: r.state.message.clone(),
        })
        .collect();
    let recent: Vec<RestartRecord> = view
        .recent
        .iter()
        .map(|r| RestartRecord {
            time: time(r.at),
            health_check: r.check.to_string(),
            action: r.action.clone(),
            succeeded: r.succeeded,
            message: r.message.clone(),
        })
        .collect();
    let last = view.recent.last();
    let mut labels = BTreeMap::new();
    labels.insert(api::labels::NODE.to_owned(), i.node.clone());
    labels.insert(api::labels::KIND.to_owned(), i.kind.as_str().to_owned());
    let mut doc = InstanceStatus::new(
        &i.id,
        InstanceStatusSpec {
            instance: InstanceRef {
                kind: i.kind,
                id: i.id.clone(),
                name: i.name.clone(),
                node: i.node.clone(),
                address: i.address.clone(),
            },
            report: view.report.clone(),
        },
    );
    // A pod's InstanceStatus belongs to the pod: the garbage collector removes it with it.
    let owners = match (i.kind, &i.runtime_id) {
        (InstanceKind::Pod, Some(uid)) => Some(vec![OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Pod".to_owned(),
            name: i.name.clone(),
            uid: uid.clone(),
            ..OwnerReference::default()
        }]),
        _ => None,
    };
    doc.metadata = ObjectMeta {
        name: Some(object_name(i)),
        namespace: Some(i.namespace.clone().unwrap_or_else(|| namespace.to_owned())),
        labels: Some(labels),
        owner_references: owners,
        creation_timestamp: Some(time(view.first_seen)),
        ..ObjectMeta::default()
    };
    doc.status = Some(InstanceStatusStatus {
        state: i.state,
        system_status: summary(&view.system),
        instance_status: summary(&view.instance_check),
        attached_volume_status: summary(&view.volumes),
        checks,
        restarts: Restarts {
            count: view.restarts,
            last_time: last.map(|r| time(r.at)),
            last_reason: last.map(|r| r.message.clone()),
            recent,
        },
        reported: view.reported,
    });
    doc
}

/// A HealthCheck with its status.
pub fn health_check(view: CheckView) -> HealthCheck {
    let mut doc = HealthCheck::new(&view.key.name, std::sync::Arc::unwrap_or_clone(view.spec));
    doc.metadata = ObjectMeta {
        name: Some(view.key.name.clone()),
        namespace: Some(view.key.namespace.clone()),
        generation: Some(view.generation),
        ..ObjectMeta::default()
    };
    doc.status = Some(view.status);
    doc
}
