//! A stand-in for the Kubernetes API server, for tests only (it never ships in `vigil`).
//!
//! One store, two faces: [`ApiServer::client`] hands a `kube::Client` an in-process
//! `tower::Service`; [`ApiServer::serve`] listens on loopback over plain HTTP, with a kubeconfig
//! for the `vigil` binaries and `kubectl`.
//!
//! ```text
//! request ─▶ faults/counts ─▶ route ─▶ verb ─▶ admission (namespace, schema, strict fields)
//!                                        │         ─▶ write path (status isolation, managed fields,
//!                                        │            generation, no-op check, finalizers, GC)
//!                                        ▼
//!                               store (global resourceVersion, history) ─▶ watches
//! ```
//!
//! What it covers and simplifies is listed in the README's contributor section; each
//! simplification is also said where it is made.

#![forbid(unsafe_code)]

pub mod control_plane;
mod events;
mod faults;
mod http_face;
mod openapi;
mod resources;
mod review;
pub mod schema;
mod select;
mod server;
pub mod shape;
pub mod ssa;
mod status;
mod store;
pub mod strategic;
mod table;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use faults::Fault;
pub use review::{Rule, User};
pub use server::Config;
use server::Server;

/// The stand-in: cheap to clone, every clone is the same server.
#[derive(Debug, Clone)]
pub struct ApiServer {
    server: Arc<Server>,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiServer {
    /// A server with the built-in kinds and the usual namespaces, and nothing else.
    pub fn new() -> Self {
        Self::with_config(Config::default())
    }

    /// A server with these tunables.
    pub fn with_config(config: Config) -> Self {
        ApiServer { server: Server::new(config) }
    }

    /// A client over the in-process face (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(http_face::InProcess(self.server.clone()), "default")
    }

    /// Starts the HTTP face on `address` (`127.0.0.1:0` for any free port); returns where it listens.
    pub async fn serve(&self, address: &str) -> std::io::Result<SocketAddr> {
        http_face::serve(self.server.clone(), address).await
    }

    /// A kubeconfig for the HTTP face at `address`.
    pub fn kubeconfig(address: SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: vigil-standin\n  cluster:\n    server: http://{address}\ncontexts:\n- name: vigil-standin\n  context:\n    cluster: vigil-standin\n    user: vigil-standin\n    namespace: default\ncurrent-context: vigil-standin\nusers:\n- name: vigil-standin\n  user: {{}}\n"
        )
    }

    /// Writes [`Self::kubeconfig`] to `path`.
    pub fn write_kubeconfig(address: SocketAddr, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, Self::kubeconfig(address))
    }

    /// Injects a fault.
    pub fn fail(&self, fault: Fault) {
        self.server.faults.lock().unwrap_or_else(|p| p.into_inner()).add(fault);
    }

    /// Refuses every connection for this long.
    pub fn unavailable_for(&self, d: Duration) {
        self.server.faults.lock().unwrap_or_else(|p| p.into_inner()).unavailable_for(d);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.server.faults.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Requests of `verb` (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`) on
    /// `resource` (`instancestatuses`, `instancestatuses/status`) so far.
    pub fn requests(&self, verb: &str, resource: &str) -> u64 {
        self.request_counts().get(&(verb.to_owned(), resource.to_owned())).copied().unwrap_or(0)
    }

    /// Every count, by (verb, resource).
    pub fn request_counts(&self) -> BTreeMap<(String, String), u64> {
        self.server.faults.lock().unwrap_or_else(|p| p.into_inner()).counts()
    }

    /// Lets a bearer token stand for a user (TokenReview).
    pub fn add_token(&self, token: &str, user: User) {
        self.server.lock().authz.tokens.push((token.to_owned(), user));
    }

    /// Allows an action (SubjectAccessReview); everything not allowed is denied.
    pub fn allow(&self, rule: Rule) {
        self.server.lock().authz.rules.push(rule);
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.server.lock().store.rv()
    }

    /// Forgets the watch history up to now (as etcd compaction): a watch from an older
    /// resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut st = self.server.lock();
        let rv = st.store.rv();
        st.store.compact(rv);
    }
}
