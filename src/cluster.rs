//! The connection to a Kubernetes API server, shared by the agent and the controller: the
//! client, and the names vigil uses on the objects it writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

/// Field manager of the agent's server-side applies.
pub const AGENT_MANAGER: &str = "vigil-agent";
/// Field manager of the controller's server-side applies.
pub const CONTROLLER_MANAGER: &str = "vigil-controller";
/// `reportingController` of the Events vigil records.
pub const EVENT_REPORTER: &str = "vigil.dev/agent";
/// Prefix of each agent's Lease (`vigil-agent-<node>`, in the agent's namespace).
pub const AGENT_LEASE_PREFIX: &str = "vigil-agent-";

/// The name of a node's agent Lease.
pub fn agent_lease(node: &str) -> String {
    format!("{AGENT_LEASE_PREFIX}{node}")
}

/// Why the API server cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig file could not be read.
    #[error("cannot read the kubeconfig {path}")]
    ReadKubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig does not describe a usable cluster.
    #[error("cannot use the kubeconfig {path}")]
    UseKubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No configuration was found (no `KUBECONFIG`, no `~/.kube/config`, not in a pod).
    #[error("no Kubernetes configuration found (give --kubeconfig, set KUBECONFIG, or run in a pod)")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("cannot build the Kubernetes client")]
    Client(#[source] kube::Error),
}

/// A client from `kubeconfig`, or else from what the environment says (`KUBECONFIG`,
/// `~/.kube/config`, the in-cluster ServiceAccount).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ClusterError> {
    Client::try_from(config(kubeconfig).await?).map_err(ClusterError::Client)
}

/// The client configuration from `kubeconfig`, or else from the environment (as [`client`]).
pub async fn config(kubeconfig: Option<&Path>) -> Result<Config, ClusterError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|source| ClusterError::ReadKubeconfig { path: path.to_owned(), source })?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClusterError::UseKubeconfig { path: path.to_owned(), source })?
        }
        None => Config::infer().await.map_err(ClusterError::Infer)?,
    };
    Ok(config)
}

/// The objects one watch holds, kept current from its events: the full set after the first
/// complete listing, then after every change. The watch resumes from its resourceVersion and
/// lists again when the server says the version is gone (410), with kube's default backoff.
pub struct Objects<K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static>
{
    stream: futures_util::stream::BoxStream<'static, Result<Event<K>, watcher::Error>>,
    current: BTreeMap<String, K>,
    listing: Option<BTreeMap<String, K>>,
    synced: bool,
}

impl<K> std::fmt::Debug for Objects<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("objects", &self.current.len()).field("synced", &self.synced).finish()
    }
}

impl<K> Objects<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    /// Watches what `api` and `config` select.
    pub fn new(api: kube::Api<K>, config: watcher::Config) -> Self {
        Objects {
            stream: watcher::watcher(api, config).default_backoff().boxed(),
            current: BTreeMap::new(),
            listing: None,
            synced: false,
        }
    }

    /// Waits for the next change of the set (the end of a listing counts as one); an error of
    /// the watch is returned as it comes, and the watch goes on.
    pub async fn changed(&mut self) -> Result<(), watcher::Error> {
        loop {
            let Some(event) = self.stream.next().await else {
                return std::future::pending().await;
            };
            match event? {
                Event::Init => self.listing = Some(BTreeMap::new()),
                Event::InitApply(object) => {
                    if let Some(listing) = self.listing.as_mut() {
                        listing.insert(key(&object), object);
                    }
                }
                Event::InitDone => {
                    self.current = self.listing.take().unwrap_or_default();
                    self.synced = true;
                    return Ok(());
                }
                Event::Apply(object) => {
                    self.current.insert(key(&object), object);
                    if self.synced {
                        return Ok(());
                    }
                }
                Event::Delete(object) => {
                    self.current.remove(&key(&object));
                    if self.synced {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The objects, by `namespace/name`.
    pub fn current(&self) -> &BTreeMap<String, K> {
        &self.current
    }

    /// Whether the first complete listing is done.
    pub fn synced(&self) -> bool {
        self.synced
    }
}

fn key<K: kube::Resource>(object: &K) -> String {
    let meta = object.meta();
    format!("{}/{}", meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""))
}

/// A watch error on one line, with its causes.
pub fn watch_message(e: &watcher::Error) -> String {
    crate::telemetry::one_line(e)
}

/// A HealthCheck read untyped, typed: or the field that does not decode and why (a watch of the
/// typed kind would fail as a whole on one such object).
pub fn decode_health_check(object: &kube::api::DynamicObject) -> Result<crate::api::HealthCheck, String> {
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) }
    })
}
