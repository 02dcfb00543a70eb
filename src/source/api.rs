//! HealthChecks from the API server (Kubernetes mode): a watch of every namespace, or of the
//! namespaces given, sending the whole set after each change. The controller's
//! `status.remediationAllowed` of each is handed to the remediation gate as it is read.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::select_all;
use k8s_openapi::api::core::v1::Node;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{CheckSource, Loaded, Snapshot, Update};
use crate::api::HealthCheck;
use crate::cluster::{Objects, watch_message};
use crate::engine::aggregate::{ControllerVerdicts, Verdict};
use crate::model::CheckKey;

/// Changes that come within this much of each other are sent as one snapshot.
const SETTLE: Duration = Duration::from_millis(100);
/// How often a healthy watch vouches for the verdicts it holds.
const CONFIRM: Duration = Duration::from_secs(15);

/// The HealthCheck watch.
pub struct ApiSource {
    client: Client,
    namespaces: Vec<String>,
    verdicts: Arc<ControllerVerdicts>,
}

impl std::fmt::Debug for ApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSource").field("namespaces", &self.namespaces).finish_non_exhaustive()
    }
}

impl ApiSource {
    /// Watches HealthChecks in `namespaces` (all when empty).
    pub fn new(client: Client, namespaces: Vec<String>, verdicts: Arc<ControllerVerdicts>) -> ApiSource {
        ApiSource { client, namespaces, verdicts }
    }
}

impl CheckSource for ApiSource {
    fn name(&self) -> &'static str {
        "HealthCheck watch"
    }

    fn first_sync(&self) -> &'static str {
        "HealthChecks listed"
    }

    fn numbers_generations(&self) -> bool {
        true
    }

    fn run(self: Box<Self>, tx: mpsc::Sender<Update>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let ApiSource { client, namespaces, verdicts } = *self;
            // Untyped: one object that does not decode must not break the watch of the others.
            let resource = ApiResource::erase::<HealthCheck>(&());
            let mut watches: Vec<Objects<DynamicObject>> = if namespaces.is_empty() {
                vec![Objects::new(Api::all_with(client, &resource), watcher::Config::default())]
            } else {
                namespaces
                    .iter()
                    .map(|ns| {
                        let api = Api::namespaced_with(client.clone(), ns, &resource);
                        Objects::new(api, watcher::Config::default())
                    })
                    .collect()
            };
            let mut failing = false;
            let mut confirm = tokio::time::interval(CONFIRM);
            loop {
                let all_synced = watches.iter().all(Objects::synced);
                let changed = tokio::select! {
                    (result, _, _) = select_all(watches.iter_mut().map(|w| Box::pin(w.changed()))) => result,
                    _ = confirm.tick() => {
                        if !failing && all_synced {
                            verdicts.confirm();
                        }
                        continue;
                    }
                };
                if let Err(e) = changed {
                    if !failing {
                        let problem = format!("watching HealthChecks: {}", watch_message(&e));
                        warn!("{problem}");
                        failing = true;
                        if tx.send(Update::Failed(problem)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                if failing {
                    info!("watching HealthChecks again");
                    failing = false;
                }
                if !watches.iter().all(Objects::synced) {
                    continue;
                }
                // Let a burst of changes (an apply of many objects) settle into one snapshot.
                while let Ok(Ok(())) = tokio::time::timeout(
                    SETTLE,
                    select_all(watches.iter_mut().map(|w| Box::pin(w.changed()))),
                )
                .await
                .map(|(result, _, _)| result)
                {}
                let (snapshot, verdicts_now) = snapshot(&watches);
                verdicts.replace(verdicts_now);
                if tx.send(Update::Snapshot(snapshot)).await.is_err() {
                    return;
                }
            }
        })
    }
}

/// What the watches hold, and the controller's verdict on each HealthCheck (from its status).
fn snapshot(watches: &[Objects<DynamicObject>]) -> (Snapshot, Vec<(CheckKey, Verdict)>) {
    let mut snapshot = Snapshot::default();
    let mut verdicts = Vec::new();
    for object in watches.iter().flat_map(|w| w.current().values()) {
        let key = CheckKey::new(
            object.metadata.namespace.clone().unwrap_or_default(),
            object.metadata.name.clone().unwrap_or_default(),
        );
        match crate::cluster::decode_health_check(object) {
            Ok(hc) => {
                let status = hc.status.as_ref();
                let verdict = Verdict {
                    allowed: status.and_then(|s| s.remediation_allowed),
                    unhealthy: status.map_or(0, |s| s.unhealthy),
                };
                verdicts.push((key.clone(), verdict));
                snapshot.objects.push(Loaded::new(hc, format!("HealthCheck {key}")));
            }
            Err(e) => snapshot.problems.push(format!("HealthCheck {key}: {e}; not run")),
        }
    }
    (snapshot, verdicts)
}

/// This node's labels, kept current from a watch of its Node (they feed `spec.nodeSelector`).
/// A node without an object has none.
pub fn node_labels(
    client: Client,
    node: &str,
) -> (tokio::sync::watch::Receiver<BTreeMap<String, String>>, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = tokio::sync::watch::channel(BTreeMap::new());
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut nodes = Objects::new(Api::<Node>::all(client), config);
    let node = node.to_owned();
    let follow = async move {
        loop {
            if let Err(e) = nodes.changed().await {
                debug!(node, "watching the Node: {}", watch_message(&e));
                continue;
            }
            let labels: BTreeMap<String, String> = nodes
                .current()
                .values()
                .find(|n| n.metadata.name.as_deref() == Some(node.as_str()))
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default()
                .into_iter()
                .collect();
            tx.send_if_modified(|current| {
                let changed = *current != labels;
                *current = labels;
                changed
            });
        }
    };
    (rx, follow)
}
