//! The InstanceStatus writer (Kubernetes mode): the store's changes, applied to the API server
//! with server-side apply under the agent's field manager (forced, as agents do).
//!
//! - **Only on change.** What is applied is compared with what was applied last, leaving out
//!   what every probe changes (`lastProbeTime`, the consecutive counts): a probe that agrees with
//!   the last one writes nothing. Those fields are as of the last change in the API; the agent's
//!   `/v1/instances` has them live.
//! - **Coalesced.** After a change the writer waits a short window, then takes every instance
//!   once, at its latest.
//! - **Through outages.** A write that fails stays pending, replaced by any newer state of the
//!   same instance, and is retried with backoff: when the API server returns, each instance is
//!   written once, at its latest, not a replay.
//! - **Restored from the API server.** At start the agent's own InstanceStatus objects are read
//!   back (restart counts, `impairedSince`) and what they hold is taken as applied.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::render;
use crate::api::{self, InstanceKind, InstanceStatus};
use crate::cluster::AGENT_MANAGER;
use crate::engine::feed::Cursor;
use crate::engine::store::Store;
use crate::engine::store::view::{InstanceView, Restored};
use crate::health::Health;
use crate::metrics::AgentMetrics;

/// Documents taken from the feed per batch.
const BATCH: usize = 256;
/// Longest wait between retries of failed writes.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The uid of each instance's InstanceStatus as written, by instance id: Events name it, so
/// that `kubectl describe` finds them.
pub type Uids = Arc<std::sync::RwLock<HashMap<String, String>>>;

/// Why the agent's InstanceStatus objects could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The list failed.
    #[error("cannot list this node's InstanceStatus objects")]
    List(#[source] kube::Error),
}

/// What the API server holds for one object, as far as this writer knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Applied {
    meta: u64,
    status: u64,
}

/// An object and the latest state to give it (`None`: delete it).
#[derive(Clone, Debug)]
struct Pending {
    namespace: String,
    name: String,
    doc: Option<InstanceStatus>,
}

/// How often the writer writes.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Changes within this window are written as one apply.
    pub coalesce: Duration,
    /// Changes of counters and messages alone are looked at this often.
    pub refresh: Duration,
}

/// Writes the store's changes into the API server.
pub struct ApiWriter {
    client: Client,
    store: Arc<Store>,
    cursor: Cursor,
    health: Arc<Health>,
    metrics: AgentMetrics,
    coalesce: Duration,
    refresh: Duration,
    /// By instance id: where its object is.
    names: HashMap<String, (String, String)>,
    /// By instance id.
    applied: HashMap<String, Applied>,
    /// By instance id: writes that failed, at their latest.
    pending: HashMap<String, Pending>,
    /// Rewrite everything (the node was seen as lost and this agent is back).
    resync: Arc<Notify>,
    uids: Uids,
    /// When each object was last written (or read back).
    written_at: HashMap<String, tokio::time::Instant>,
    /// Since the last resync: whether a write failed, and the first success after that.
    failed: bool,
    recovered_at: Option<tokio::time::Instant>,
}

/// The agent's objects read back: the instances to restore, and what the writer takes as
/// already applied.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Saved instance states.
    pub instances: Vec<Restored>,
    applied: Vec<(String, (String, String), Applied)>,
    uids: Vec<(String, String)>,
}

/// Reads back every InstanceStatus of `node`'s agent.
pub async fn load(client: &Client, node: &str) -> Result<Loaded, LoadError> {
    let api: Api<InstanceStatus> = Api::all(client.clone());
    let selector = format!("{}={node}", api::labels::NODE);
    let list = api.list(&ListParams::default().labels(&selector)).await.map_err(LoadError::List)?;
    let mut loaded = Loaded::default();
    for doc in list.items {
        let (Some(namespace), Some(name)) = (doc.metadata.namespace.clone(), doc.metadata.name.clone())
        else {
            continue;
        };
        let applied = Applied { meta: meta_hash(&doc), status: status_hash(&doc) };
        let uid = doc.metadata.uid.clone();
        if let Some((restored, _)) = super::restore::restored(doc, node) {
            if let Some(uid) = uid {
                loaded.uids.push((restored.id.clone(), uid));
            }
            loaded.applied.push((restored.id.clone(), (namespace, name), applied));
            loaded.instances.push(restored);
        }
    }
    Ok(loaded)
}

impl std::fmt::Debug for ApiWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiWriter").field("objects", &self.applied.len()).finish_non_exhaustive()
    }
}

impl ApiWriter {
    /// A writer of `store`'s instances; `loaded` is what [`load`] read back.
    pub fn new(
        client: Client,
        store: Arc<Store>,
        health: Arc<Health>,
        metrics: AgentMetrics,
        pace: Pace,
        loaded: &Loaded,
        uids: Uids,
    ) -> ApiWriter {
        let Pace { coalesce, refresh } = pace;
        let cursor = store.subscribe();
        let mut names = HashMap::new();
        let mut applied = HashMap::new();
        for (id, place, a) in &loaded.applied {
            names.insert(id.clone(), place.clone());
            applied.insert(id.clone(), *a);
        }
        uids.write().unwrap_or_else(|p| p.into_inner()).extend(loaded.uids.iter().cloned());
        ApiWriter {
            client,
            store,
            cursor,
            health,
            metrics,
            coalesce,
            refresh,
            names,
            applied,
            pending: HashMap::new(),
            resync: Arc::new(Notify::new()),
            uids,
            written_at: HashMap::new(),
            failed: false,
            recovered_at: None,
        }
    }

    /// Notified to rewrite every object (what the API server holds may have been changed by
    /// someone else, e.g. the controller marking this node unreachable).
    pub fn resync_handle(&self) -> Arc<Notify> {
        self.resync.clone()
    }

    /// Writes changes as they come until `stop` resolves, then once more.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + self.refresh, self.refresh);
        let mut retry_in = Duration::from_secs(1);
        let resync = self.resync.clone();
        // Everything the store holds at start (restored or new) is compared once.
        self.flush(false).await;
        loop {
            let retry = async {
                if self.pending.is_empty() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(retry_in).await;
            };
            let touched = tokio::select! {
                () = self.cursor.changed() => {
                    tokio::time::sleep(self.coalesce).await;
                    false
                }
                _ = refresh.tick() => true,
                () = retry => false,
                () = resync.notified() => {
                    info!("rewriting the status of every InstanceStatus of this node");
                    // The objects stand; the status of those not written since the API server
                    // came back may have been marked by the controller meanwhile.
                    let now = tokio::time::Instant::now();
                    let current_since = if self.failed { self.recovered_at.unwrap_or(now) } else { now };
                    for (id, applied) in &mut self.applied {
                        if self.written_at.get(id).is_none_or(|at| *at < current_since) {
                            applied.status = 0;
                        }
                    }
                    (self.failed, self.recovered_at) = (false, None);
                    self.rewrite_all();
                    false
                }
                () = &mut stop => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), self.flush(false)).await;
                    return;
                }
            };
            self.flush(touched).await;
            retry_in =
                if self.pending.is_empty() { Duration::from_secs(1) } else { (retry_in * 2).min(MAX_RETRY) };
        }
    }

    /// Queues every instance the store holds.
    fn rewrite_all(&mut self) {
        let namespace = self.store.namespace().to_owned();
        for view in self.store.instances().into_iter().filter(reported) {
            let doc = render::instance_status(&view, &namespace);
            let (ns, name) = place(&doc);
            self.names.insert(view.instance.id.clone(), (ns.clone(), name.clone()));
            self.pending.insert(view.instance.id.clone(), Pending { namespace: ns, name, doc: Some(doc) });
        }
    }

    /// Takes what changed (with `touched`, counters-only changes too) and applies what differs.
    async fn flush(&mut self, touched: bool) {
        let namespace = self.store.namespace().to_owned();
        let mut touched = touched;
        loop {
            let changes = self.store.changes(&mut self.cursor, touched, BATCH);
            touched = false;
            if changes.is_empty() {
                break;
            }
            for (id, view) in changes.instances {
                let pending = match view.filter(reported) {
                    Some(view) => {
                        let doc = render::instance_status(&view, &namespace);
                        let (ns, name) = place(&doc);
                        self.names.insert(id.clone(), (ns.clone(), name.clone()));
                        Pending { namespace: ns, name, doc: Some(doc) }
                    }
                    None => match self.names.remove(&id) {
                        Some((ns, name)) => Pending { namespace: ns, name, doc: None },
                        None => continue,
                    },
                };
                self.pending.insert(id, pending);
            }
        }
        if self.pending.is_empty() {
            return;
        }
        let mut failures = Vec::new();
        for (id, p) in std::mem::take(&mut self.pending) {
            let started = tokio::time::Instant::now();
            match self.write(&id, &p).await {
                Ok(()) => {
                    if self.failed && self.recovered_at.is_none() {
                        self.recovered_at = Some(started);
                    }
                }
                Err(e) => {
                    (self.failed, self.recovered_at) = (true, None);
                    failures.push(format!("{}/{}: {}", p.namespace, p.name, error_message(&e)));
                    self.pending.insert(id, p);
                }
            }
        }
        if failures.is_empty() {
            self.health.set("InstanceStatus writer", Vec::new());
        } else {
            warn!(failures = failures.len(), first = %failures[0], "InstanceStatus writes failed; will retry");
            failures.truncate(3);
            self.health.set("InstanceStatus writer", failures);
        }
    }

    async fn write(&mut self, id: &str, p: &Pending) -> Result<(), kube::Error> {
        let api: Api<InstanceStatus> = Api::namespaced(self.client.clone(), &p.namespace);
        let Some(doc) = &p.doc else {
            let result = match api.delete(&p.name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e),
            };
            self.count(result.is_ok());
            if result.is_ok() {
                self.applied.remove(id);
                self.uids.write().unwrap_or_else(|p| p.into_inner()).remove(id);
                debug!(id, "InstanceStatus deleted");
            }
            return result;
        };
        let want = Applied { meta: meta_hash(doc), status: status_hash(doc) };
        let had = self.applied.get(id).copied();
        if had == Some(want) {
            return Ok(());
        }
        let params = PatchParams::apply(AGENT_MANAGER).force();
        debug!(id, object = had.is_none_or(|h| h.meta != want.meta), "applying the InstanceStatus");
        if had.is_none_or(|h| h.meta != want.meta) {
            let result = api.patch(&p.name, &params, &Patch::Apply(object_body(doc))).await;
            self.count(result.is_ok());
            self.note_uid(id, &result?);
        }
        let result = api.patch_status(&p.name, &params, &Patch::Apply(status_body(doc))).await;
        self.count(result.is_ok());
        self.note_uid(id, &result?);
        self.applied.insert(id.to_owned(), want);
        self.written_at.insert(id.to_owned(), tokio::time::Instant::now());
        Ok(())
    }

    fn note_uid(&self, id: &str, written: &InstanceStatus) {
        if let Some(uid) = &written.metadata.uid {
            self.uids.write().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), uid.clone());
        }
    }

    fn count(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.metrics.status_writes.with_label_values(&["instance", result]).inc();
    }
}

/// Whether an instance gets an InstanceStatus: a pod only while a HealthCheck selects it (a
/// node runs many pods nobody asked about, and each object costs the API server and etcd);
/// the host, containers, VMs and endpoints always, as a cloud reports every instance.
fn reported(view: &InstanceView) -> bool {
    view.instance.kind != InstanceKind::Pod || !view.checks.is_empty()
}

/// Namespace and name of the object a document is written to.
fn place(doc: &InstanceStatus) -> (String, String) {
    (doc.metadata.namespace.clone().unwrap_or_default(), doc.metadata.name.clone().unwrap_or_default())
}

fn type_meta() -> (String, &'static str) {
    (api::API_VERSION.to_owned(), "InstanceStatus")
}

/// The object without its status: metadata this agent owns (labels, owner) and the spec.
fn object_body(doc: &InstanceStatus) -> Value {
    let (api_version, kind) = type_meta();
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": doc.metadata.name,
            "namespace": doc.metadata.namespace,
            "labels": doc.metadata.labels,
            "ownerReferences": doc.metadata.owner_references,
        },
        // Not `spec.report`: the owner's field, set with `kubectl patch`. Applied by the agent,
        // it would be the agent's, and taken away again when the owner removes it.
        "spec": {"instance": doc.spec.instance},
    })
}

fn status_body(doc: &InstanceStatus) -> Value {
    let (api_version, kind) = type_meta();
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": doc.metadata.name, "namespace": doc.metadata.namespace},
        "status": doc.status,
    })
}

fn hash_value(value: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    value.to_string().hash(&mut h);
    h.finish()
}

fn meta_hash(doc: &InstanceStatus) -> u64 {
    let mut labels = doc.metadata.labels.clone().unwrap_or_default();
    labels.retain(|k, _| k.starts_with("vigil.dev/"));
    let owners = doc.metadata.owner_references.clone().unwrap_or_default();
    hash_value(&json!({"labels": labels, "owners": owners, "instance": doc.spec.instance}))
}

/// The status, without what changes on every probe.
fn status_hash(doc: &InstanceStatus) -> u64 {
    let mut status = serde_json::to_value(&doc.status).unwrap_or(Value::Null);
    if let Some(checks) = status.get_mut("checks").and_then(Value::as_array_mut) {
        for check in checks {
            if let Some(c) = check.as_object_mut() {
                for volatile in
                    ["lastProbeTime", "consecutiveFailures", "consecutiveSuccesses", "consecutiveErrors"]
                {
                    c.remove(volatile);
                }
            }
        }
    }
    hash_value(&status)
}

/// An API error on one line.
pub fn error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => crate::telemetry::one_line(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> InstanceStatus {
        let text = r#"
apiVersion: vigil.dev/v1alpha1
kind: InstanceStatus
metadata: {name: pod-web, namespace: shop, labels: {vigil.dev/node: n1, vigil.dev/kind: Pod}}
spec: {instance: {kind: Pod, id: shop.pod-web, name: web, node: n1}}
status:
  state: running
  systemStatus: {status: ok, details: []}
  instanceStatus: {status: ok, details: []}
  attachedVolumeStatus: {status: not-applicable, details: []}
  checks:
  - {healthCheck: shop/web, probe: http, status: ok, consecutiveFailures: 0, consecutiveSuccesses: 7, consecutiveErrors: 0, lastProbeTime: "2026-12-01T10:00:07Z", message: 200 OK}
  restarts: {count: 0, recent: []}
"#;
        serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_probe_that_agrees_changes_nothing_that_is_compared() {
        let before = doc();
        let mut after = doc();
        let check = &mut after.status.as_mut().unwrap_or_else(|| panic!()).checks[0];
        check.consecutive_successes = 8;
        check.last_probe_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-12-01T10:00:08Z".parse().unwrap_or_else(|e| panic!("{e}")),
        ));
        assert_eq!(status_hash(&before), status_hash(&after));
        assert_eq!(meta_hash(&before), meta_hash(&after));
        after.status.as_mut().unwrap_or_else(|| panic!()).checks[0].message = Some("503".into());
        assert_ne!(status_hash(&before), status_hash(&after), "what it says is compared");
        let mut moved = doc();
        moved.spec.instance.address = Some("10.0.0.9".into());
        assert_ne!(meta_hash(&before), meta_hash(&moved));
    }

    #[test]
    fn bodies_carry_only_what_the_agent_owns() {
        let d = doc();
        let object = object_body(&d);
        assert_eq!(object["kind"], "InstanceStatus");
        assert!(object.get("status").is_none(), "the status goes through its subresource");
        let status = status_body(&d);
        assert!(status.get("spec").is_none());
        assert_eq!(status["status"]["checks"][0]["healthCheck"], "shop/web");
    }
}
