//! What is on this node: the instances the agent can check.
//!
//! The host itself is always an instance; endpoints become instances when a check names them;
//! containers, VMs and pods come from their runtimes.

pub mod hardware;
pub mod host;
pub mod pods;

use std::collections::BTreeMap;
use std::fmt::Debug;

use tokio::sync::watch;

use crate::api::{InstanceKind, InstanceState};

pub use host::Observation;

/// A source of instances on this node: the host itself, the Docker containers, the QEMU VMs, and
/// in a cluster the pods. The agent plans over the union of what its inventories list, replans
/// when one of them changes, and finishes restoring saved state once each has listed what it has.
pub trait Inventory: Send + Sync + Debug {
    /// Short name, for health reasons and logs (`docker`).
    fn name(&self) -> &'static str;
    /// What readiness waits for until the first complete listing (`Docker containers listed`).
    fn first_sync(&self) -> &'static str;
    /// The kind of instances it lists.
    fn kind(&self) -> InstanceKind;
    /// Its instances now, as observed from `node`.
    fn instances(&self, node: &str) -> Vec<Instance>;
    /// Whether its first complete listing is done.
    fn synced(&self) -> bool;
    /// Changes whenever its instances may have changed; `None` when they never do.
    fn changes(&self) -> Option<watch::Receiver<u64>>;
    /// What is wrong with it now (its daemon unreachable…), for `/v1/health`.
    fn problems(&self) -> Vec<String>;
}

/// The node itself: always one instance, listed from the start.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostInventory;

impl Inventory for HostInventory {
    fn name(&self) -> &'static str {
        "host"
    }

    fn first_sync(&self) -> &'static str {
        "host listed"
    }

    fn kind(&self) -> InstanceKind {
        InstanceKind::Host
    }

    fn instances(&self, node: &str) -> Vec<Instance> {
        vec![Instance::host(node)]
    }

    fn synced(&self) -> bool {
        true
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Resources an instance claims from the host (vCPUs and memory of a VM, a container's limits).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Claimed {
    /// CPUs.
    pub cpus: f64,
    /// Memory, MiB.
    pub memory_mb: u64,
}

/// A monitored instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// Stable id, unique in the cluster, also the InstanceStatus name (see [`id_for`]).
    pub id: String,
    /// Namespace of its InstanceStatus when not the agent's own (a pod's is the pod's).
    pub namespace: Option<String>,
    /// Kind.
    pub kind: InstanceKind,
    /// Human name.
    pub name: String,
    /// Node observing it.
    pub node: String,
    /// Where probes go, when there is an address.
    pub address: Option<String>,
    /// Labels (Docker labels, pod labels), used by selectors.
    pub labels: BTreeMap<String, String>,
    /// Run state.
    pub state: InstanceState,
    /// Resources claimed, for the host's `used_cpus` / `used_memory_mb`.
    pub claimed: Option<Claimed>,
    /// The runtime's own handle (a Docker container id), for probes and actions that go through
    /// the runtime rather than the network.
    pub runtime_id: Option<String>,
    /// Why the instance is deliberately out of service (paused or stopped by its owner): its
    /// checks are `not-applicable` and nothing is restarted.
    pub on_hold: Option<String>,
    /// Named ports (a pod's container ports), for probes that name their port.
    pub ports: Vec<(String, u16)>,
    /// The instance's own part of its System check (its runtime reachable…), beside the host's.
    pub system: Vec<Observation>,
    /// Its Attached-volume observations (for the host they come from the host assessment).
    pub volumes: Vec<Observation>,
}

impl Instance {
    /// The node itself.
    pub fn host(node: &str) -> Instance {
        Instance {
            id: id_for(InstanceKind::Host, node, node),
            namespace: None,
            kind: InstanceKind::Host,
            name: node.to_owned(),
            node: node.to_owned(),
            address: Some("127.0.0.1".to_owned()),
            labels: BTreeMap::new(),
            state: InstanceState::Running,
            claimed: None,
            runtime_id: None,
            on_hold: None,
            ports: Vec::new(),
            system: Vec::new(),
            volumes: Vec::new(),
        }
    }

    /// A fixed address, as seen from `node`.
    pub fn endpoint(node: &str, address: &str) -> Instance {
        Instance {
            id: id_for(InstanceKind::Endpoint, address, node),
            namespace: None,
            kind: InstanceKind::Endpoint,
            name: address.to_owned(),
            node: node.to_owned(),
            address: Some(address.to_owned()),
            labels: BTreeMap::new(),
            state: InstanceState::Unknown,
            claimed: None,
            runtime_id: None,
            on_hold: None,
            ports: Vec::new(),
            system: Vec::new(),
            volumes: Vec::new(),
        }
    }
}

/// The id of an instance, unique in a cluster: the kind's prefix and its raw name (a container's
/// or a VM's name, an endpoint's address), then `--` and the node observing it. A host is
/// `host-<node>`; a pod is `pod-<name>` in the pod's namespace (a pod runs on one node).
/// `--` never occurs in the mapped name ([`instance_id`] folds runs of `-`), so the node part is
/// unambiguous: two agents never write the same InstanceStatus.
pub fn id_for(kind: InstanceKind, raw: &str, node: &str) -> String {
    let prefix = kind_prefix(kind);
    match kind {
        InstanceKind::Host | InstanceKind::Pod => instance_id(prefix, raw),
        InstanceKind::Container | InstanceKind::Vm | InstanceKind::Endpoint => {
            let local = instance_id(prefix, raw);
            let node = instance_id("", node);
            let node = node.trim_start_matches('-');
            let mut id = format!("{local}--{node}");
            if id.len() > MAX_NAME {
                id.truncate(MAX_NAME - 9);
                while id.ends_with(['-', '.']) {
                    id.pop();
                }
                let whole = format!("{raw}\0{node}");
                id.push_str(&format!("-{:08x}", fnv1a(whole.as_bytes()) as u32));
            }
            id
        }
    }
}

/// The id an instance had before ids carried the node (state folders of earlier versions).
pub fn unqualified_id(kind: InstanceKind, raw: &str) -> String {
    instance_id(kind_prefix(kind), raw)
}

fn kind_prefix(kind: InstanceKind) -> &'static str {
    match kind {
        InstanceKind::Pod => "pod",
        InstanceKind::Container => "container",
        InstanceKind::Vm => "vm",
        InstanceKind::Host => "host",
        InstanceKind::Endpoint => "endpoint",
    }
}

/// The longest object name the API server takes.
const MAX_NAME: usize = 253;

/// A valid object name (DNS subdomain) for an instance: `prefix-` and the raw id, lowercased,
/// other characters replaced by `-`. When the mapping lost information, a short hash of the raw
/// id is appended so that two ids never collide.
pub fn instance_id(prefix: &str, raw: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + raw.len() + 1);
    out.push_str(prefix);
    out.push('-');
    // `host:port` reads well as `host-port`; that is only unambiguous when the raw id has no `-`.
    let colon_is_lossless = !raw.contains('-') && raw.matches(':').count() <= 1;
    let mut lossy = false;
    let mut last_dash = true;
    for c in raw.chars() {
        let mapped = match c {
            'a'..='z' | '0'..='9' | '.' => c,
            'A'..='Z' => {
                lossy = true;
                c.to_ascii_lowercase()
            }
            _ => {
                lossy |= !(c == ':' && colon_is_lossless || c == '-');
                '-'
            }
        };
        if mapped == '-' && last_dash {
            lossy = true;
            continue;
        }
        last_dash = mapped == '-' || mapped == '.';
        out.push(mapped);
    }
    while out.ends_with(['-', '.']) {
        out.pop();
        lossy = true;
    }
    if lossy || out.len() > 200 {
        out.truncate(200);
        out.push('-');
        out.push_str(&format!("{:08x}", fnv1a(raw.as_bytes()) as u32));
    }
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_local_ids_carry_the_node() {
        let a = id_for(InstanceKind::Container, "web", "node-1");
        assert_eq!(a, "container-web--node-1");
        assert_ne!(a, id_for(InstanceKind::Container, "web", "node-2"));
        assert_eq!(id_for(InstanceKind::Endpoint, "127.0.0.1:8080", "n1"), "endpoint-127.0.0.1-8080--n1");
        assert_eq!(id_for(InstanceKind::Vm, "db", "n1"), "vm-db--n1");
        assert_eq!(id_for(InstanceKind::Host, "n1", "n1"), "host-n1");
        // A name that ends like a node cannot pass for another node's instance.
        assert_ne!(
            id_for(InstanceKind::Container, "web-node", "1"),
            id_for(InstanceKind::Container, "web", "node-1")
        );
        let upper = id_for(InstanceKind::Vm, "db", "Laptop.Local");
        assert!(upper.starts_with("vm-db--laptop.local-"), "{upper}");
        let long = id_for(InstanceKind::Container, &"c".repeat(250), &"n".repeat(250));
        assert!(long.len() <= 253, "{}", long.len());
        assert_ne!(long, id_for(InstanceKind::Container, &"c".repeat(250), &"n".repeat(249)));
        assert_eq!(unqualified_id(InstanceKind::Container, "web"), "container-web");
    }

    #[test]
    fn ids_are_object_names() {
        assert_eq!(instance_id("endpoint", "127.0.0.1:8080"), "endpoint-127.0.0.1-8080");
        assert_eq!(instance_id("host", "node-1"), "host-node-1");
        let v6 = instance_id("endpoint", "[::1]:80");
        assert!(v6.starts_with("endpoint-1-80-"), "{v6}");
        assert_ne!(instance_id("endpoint", "A:1"), instance_id("endpoint", "a:1"));
        assert_ne!(instance_id("endpoint", "my-host:80"), instance_id("endpoint", "my-host-80"));
        assert_ne!(instance_id("endpoint", "a_1"), instance_id("endpoint", "a-1"));
        for id in [v6, instance_id("x", "Weird Name!!"), instance_id("x", &"y".repeat(300))] {
            assert!(id.len() <= 253);
            assert!(
                id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
                "{id}"
            );
            assert!(!id.ends_with('-'));
        }
    }
}
