//! The pods on this node (Kubernetes mode), from a watch of the Pods whose `spec.nodeName` is
//! this node. A pod is probed at its own IP, never through a Service; a pod that is not Running,
//! or is terminating, is tracked but not probed.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Instance, Inventory, instance_id};
use crate::api::{InstanceKind, InstanceState};
use crate::cluster::{Objects, watch_message};

/// The pods of one node.
#[derive(Clone, Debug)]
pub struct PodInventory {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pods: RwLock<Vec<Instance>>,
    synced: AtomicBool,
    problem: RwLock<Option<String>>,
    changed: watch::Sender<u64>,
}

impl PodInventory {
    /// The inventory of `node`'s pods, and the watch that keeps it (run it until shutdown).
    pub fn new(client: Client, node: &str) -> (PodInventory, impl Future<Output = ()> + Send + 'static) {
        let shared = Arc::new(Shared {
            pods: RwLock::default(),
            synced: AtomicBool::new(false),
            problem: RwLock::default(),
            changed: watch::channel(0).0,
        });
        let inventory = PodInventory { shared: shared.clone() };
        let node = node.to_owned();
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let mut pods = Objects::new(Api::<Pod>::all(client), config);
        let follow = async move {
            loop {
                let result = pods.changed().await;
                let problem =
                    result.err().map(|e| format!("watching the pods of {node}: {}", watch_message(&e)));
                let was = shared.problem.read().unwrap_or_else(|p| p.into_inner()).clone();
                match (&problem, &was) {
                    (Some(p), None) => warn!("{p}"),
                    (None, Some(_)) => info!(node, "watching pods again"),
                    _ => {}
                }
                let failed = problem.is_some();
                *shared.problem.write().unwrap_or_else(|p| p.into_inner()) = problem;
                if failed {
                    if was.is_none() {
                        shared.changed.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    continue;
                }
                let instances: Vec<Instance> =
                    pods.current().values().filter_map(|p| instance(p, &node)).collect();
                *shared.pods.write().unwrap_or_else(|p| p.into_inner()) = instances;
                if !shared.synced.swap(true, Ordering::SeqCst) {
                    info!(node, pods = pods.current().len(), "pods listed");
                }
                shared.changed.send_modify(|n| *n = n.wrapping_add(1));
            }
        };
        (inventory, follow)
    }
}

impl Inventory for PodInventory {
    fn name(&self) -> &'static str {
        "pods"
    }

    fn first_sync(&self) -> &'static str {
        "pods listed"
    }

    fn kind(&self) -> InstanceKind {
        InstanceKind::Pod
    }

    fn instances(&self, _node: &str) -> Vec<Instance> {
        self.shared.pods.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn synced(&self) -> bool {
        self.shared.synced.load(Ordering::SeqCst)
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.shared.changed.subscribe())
    }

    fn problems(&self) -> Vec<String> {
        self.shared.problem.read().unwrap_or_else(|p| p.into_inner()).clone().into_iter().collect()
    }
}

/// The id of a pod on its agent: its namespace, then the name of its InstanceStatus
/// (`pod-<name>`, in the pod's namespace).
pub fn pod_id(namespace: &str, name: &str) -> String {
    format!("{namespace}.{}", instance_id("pod", name))
}

/// A pod as an instance; `None` for one without a name or namespace.
pub fn instance(pod: &Pod, node: &str) -> Option<Instance> {
    let meta = &pod.metadata;
    let (namespace, name) = (meta.namespace.clone()?, meta.name.clone()?);
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    let terminating = meta.deletion_timestamp.is_some();
    let state = match phase {
        "Running" => InstanceState::Running,
        "Succeeded" | "Failed" => InstanceState::Stopped,
        _ => InstanceState::Unknown,
    };
    let on_hold = if terminating {
        Some("terminating".to_owned())
    } else if phase != "Running" {
        Some(format!("phase {phase}"))
    } else {
        None
    };
    let address = status.and_then(|s| s.pod_ip.clone()).filter(|_| on_hold.is_none());
    let ports = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect();
    Some(Instance {
        id: pod_id(&namespace, &name),
        namespace: Some(namespace),
        kind: InstanceKind::Pod,
        name,
        node: node.to_owned(),
        address,
        labels: meta.labels.clone().unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>(),
        state,
        claimed: None,
        runtime_id: meta.uid.clone(),
        on_hold,
        ports,
        system: Vec::new(),
        volumes: Vec::new(),
    })
}
