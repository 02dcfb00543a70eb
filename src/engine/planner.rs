//! The planner: which check applies to which instance on this node. Pure: checks and inventory
//! in, instances and assignments out.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::InstanceKind;
use crate::inventory::Instance;
use crate::model::{CheckDef, CheckKey, TargetDef};
use crate::probe::{AddressPolicy, ProbeSpec, Target};

/// This node, as checks select it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
}

/// Which inventory sources feed this agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// Docker containers.
    pub containers: bool,
    /// QEMU VMs.
    pub vms: bool,
    /// Kubernetes pods.
    pub pods: bool,
}

impl Sources {
    /// The sources of inventories listing these kinds.
    pub fn of(kinds: impl IntoIterator<Item = InstanceKind>) -> Sources {
        kinds.into_iter().fold(Sources::default(), |mut s, kind| {
            match kind {
                InstanceKind::Container => s.containers = true,
                InstanceKind::Vm => s.vms = true,
                InstanceKind::Pod => s.pods = true,
                InstanceKind::Host | InstanceKind::Endpoint => {}
            }
            s
        })
    }
}

/// One check on one instance.
#[derive(Clone, Debug)]
pub struct Assignment {
    /// The check.
    pub check: Arc<CheckDef>,
    /// The instance.
    pub instance_id: String,
    /// Where its probes go.
    pub target: Target,
    /// Not probed (the check is suspended).
    pub suspended: bool,
}

/// What this node should be doing.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Every instance: the discovered ones and the endpoints checks name.
    pub instances: Vec<Instance>,
    /// Every (check, instance) pair.
    pub assignments: Vec<Assignment>,
    /// Why a check has no target here, when it has none.
    pub notes: BTreeMap<CheckKey, String>,
}

/// Plans `checks` over the `discovered` instances (which include the host).
pub fn plan(node: &NodeInfo, checks: &[Arc<CheckDef>], discovered: &[Instance], sources: Sources) -> Plan {
    let mut instances: BTreeMap<String, Instance> =
        discovered.iter().map(|i| (i.id.clone(), i.clone())).collect();
    let mut assignments = Vec::new();
    let mut notes = BTreeMap::new();
    for check in checks {
        if !check.selects_node(&node.labels) {
            notes.insert(check.key.clone(), format!("spec.nodeSelector does not select node {}", node.name));
            continue;
        }
        let before = assignments.len();
        // Only commands read an environment; other probes do not carry one.
        let wants_env = matches!(check.probe, ProbeSpec::Exec(_));
        let mut assign = |instance: &Instance, target: Target, in_maintenance: bool| {
            assignments.push(Assignment {
                check: check.clone(),
                instance_id: instance.id.clone(),
                target: if wants_env { with_env(target, instance) } else { target },
                // Paused or stopped by its owner: nothing to judge, nothing to restart.
                suspended: check.suspend || instance.on_hold.is_some() || in_maintenance,
            });
        };
        match &check.target {
            TargetDef::Host => {
                for host in discovered.iter().filter(|i| i.kind == InstanceKind::Host) {
                    assign(
                        host,
                        Target::new(host.address.clone().unwrap_or_else(|| "127.0.0.1".to_owned())),
                        false,
                    );
                }
            }
            TargetDef::Endpoints { addresses, allow_link_local } => {
                for ep in addresses {
                    let instance = Instance::endpoint(&node.name, &ep.address);
                    let target = Target {
                        host: ep.host.clone(),
                        port: ep.port,
                        policy: AddressPolicy { allow_link_local: *allow_link_local },
                        env: Vec::new(),
                        container: None,
                        vm: None,
                        ports: Vec::new(),
                    };
                    assign(&instance, target, false);
                    instances.entry(instance.id.clone()).or_insert(instance);
                }
            }
            TargetDef::Containers(sel) | TargetDef::Vms(sel) => {
                let (kind, available, what) = match &check.target {
                    TargetDef::Containers(_) => (InstanceKind::Container, sources.containers, "Docker"),
                    _ => (InstanceKind::Vm, sources.vms, "QEMU"),
                };
                if !available {
                    notes.insert(
                        check.key.clone(),
                        format!(
                            "this agent has no {what} runtime; {} targets are not checked here",
                            check.target.kind()
                        ),
                    );
                    continue;
                }
                // `docker`, `qmp` and `exec` go through the runtime; network probes need an
                // address, which a stopped workload does not have: they judge it by the runtime's
                // view instead (the prober says it is not running).
                for i in discovered.iter().filter(|i| i.kind == kind && sel.matches(&i.name, &i.labels)) {
                    let mut target = Target::new(i.address.clone().unwrap_or_default());
                    match kind {
                        InstanceKind::Container => target.container = i.runtime_id.clone(),
                        _ => target.vm = i.runtime_id.clone(),
                    }
                    // In maintenance (`suspend`): tracked, not probed, never restarted.
                    assign(i, target, sel.suspend.contains(&i.name));
                }
            }
            TargetDef::Pods { selector } => {
                if !sources.pods {
                    notes.insert(
                        check.key.clone(),
                        "this agent is not connected to Kubernetes; pods targets are not checked here"
                            .to_owned(),
                    );
                    continue;
                }
                use kube::core::SelectorExt;
                for i in discovered.iter().filter(|i| {
                    i.kind == InstanceKind::Pod
                        && i.namespace.as_deref() == Some(check.key.namespace.as_str())
                        && selector.matches(&i.labels)
                }) {
                    // Not Running, or terminating: tracked, not probed. Running without an IP
                    // yet: not yet a target.
                    let address = match (&i.on_hold, &i.address) {
                        (Some(_), _) => String::new(),
                        (None, Some(address)) => address.clone(),
                        (None, None) => continue,
                    };
                    let mut target = Target::new(address);
                    target.ports.clone_from(&i.ports);
                    assign(i, target, false);
                }
            }
        }
        if assignments.len() == before && !notes.contains_key(&check.key) {
            notes.insert(
                check.key.clone(),
                format!("no {} target matches on node {}", check.target.kind(), node.name),
            );
        }
    }
    Plan { instances: instances.into_values().collect(), assignments, notes }
}

fn with_env(mut target: Target, instance: &Instance) -> Target {
    target.env = vec![
        ("VIGIL_INSTANCE_ID".to_owned(), instance.id.clone()),
        ("VIGIL_INSTANCE_NAME".to_owned(), instance.name.clone()),
        ("VIGIL_INSTANCE_KIND".to_owned(), instance.kind.as_str().to_owned()),
        ("VIGIL_TARGET_HOST".to_owned(), target.host.clone()),
    ];
    if let Some(port) = target.port {
        target.env.push(("VIGIL_TARGET_PORT".to_owned(), port.to_string()));
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HealthCheck;
    use crate::model::validate;

    fn check(yaml: &str) -> Arc<CheckDef> {
        let mut hc: HealthCheck = serde_saphyr::from_str(yaml).unwrap();
        hc.metadata.namespace.get_or_insert_with(|| "default".to_owned());
        Arc::new(validate(&hc).unwrap())
    }

    fn node() -> NodeInfo {
        NodeInfo { name: "n1".into(), labels: [("zone".to_owned(), "a".to_owned())].into() }
    }

    const ENDPOINTS: &str = "
apiVersion: vigil.dev/v1alpha1
kind: HealthCheck
metadata: {name: web}
spec:
  target: {endpoints: {addresses: ['127.0.0.1:8080', 'localhost']}}
  probe: {http: {path: /healthz, port: 9000}}
";

    #[test]
    fn endpoints_become_instances_and_host_checks_go_to_loopback() {
        let host = Instance::host("n1");
        let checks = [
            check(ENDPOINTS),
            check(
                "
apiVersion: vigil.dev/v1alpha1
kind: HealthCheck
metadata: {name: sshd}
spec:
  target: {host: {}}
  probe: {tcp: {port: 22}}
",
            ),
        ];
        let p = plan(&node(), &checks, std::slice::from_ref(&host), Sources::default());
        assert_eq!(p.instances.len(), 3);
        assert_eq!(p.assignments.len(), 3);
        let ep = p.assignments.iter().find(|a| a.instance_id == "endpoint-127.0.0.1-8080--n1").unwrap();
        assert_eq!((ep.target.host.as_str(), ep.target.port), ("127.0.0.1", Some(8080)));
        let local = p.assignments.iter().find(|a| a.instance_id == "endpoint-localhost--n1").unwrap();
        assert_eq!(local.target.port, None, "the probe's port applies");
        let h = p.assignments.iter().find(|a| a.instance_id == host.id).unwrap();
        assert_eq!(h.target.host, "127.0.0.1");
        assert!(h.target.env.is_empty(), "only exec probes get an environment");
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn workloads_in_maintenance_are_tracked_but_not_probed() {
        let vms = check(
            "
apiVersion: vigil.dev/v1alpha1
kind: HealthCheck
metadata: {name: vms}
spec:
  target: {vms: {names: [a, b], suspend: [b]}}
  probe: {qmp: {checks: [runState]}}
",
        );
        let vm = |name: &str| Instance {
            id: format!("vm-{name}"),
            kind: InstanceKind::Vm,
            runtime_id: Some(format!("/run/vigil/vms/{name}/qmp.sock")),
            ..Instance::host(name)
        };
        let sources = Sources { vms: true, ..Sources::default() };
        let p = plan(&node(), &[vms], &[vm("a"), vm("b")], sources);
        let by_id = |id: &str| p.assignments.iter().find(|a| a.instance_id == id).unwrap();
        assert!(!by_id("vm-a").suspended);
        assert_eq!(by_id("vm-a").target.vm.as_deref(), Some("/run/vigil/vms/a/qmp.sock"));
        assert!(by_id("vm-b").suspended, "in maintenance");
    }

    #[test]
    fn node_selector_and_missing_runtimes_are_explained() {
        let other_zone = check(
            "
apiVersion: vigil.dev/v1alpha1
kind: HealthCheck
metadata: {name: elsewhere}
spec:
  nodeSelector: {matchLabels: {zone: b}}
  target: {host: {}}
  probe: {tcp: {port: 22}}
",
        );
        let containers = check(
            "
apiVersion: vigil.dev/v1alpha1
kind: HealthCheck
metadata: {name: ctr}
spec:
  target: {containers: {names: [web]}}
  probe: {docker: {}}
",
        );
        let p = plan(
            &node(),
            &[other_zone.clone(), containers.clone()],
            &[Instance::host("n1")],
            Sources::default(),
        );
        assert!(p.assignments.is_empty());
        assert!(p.notes[&other_zone.key].contains("nodeSelector"));
        assert!(p.notes[&containers.key].contains("no Docker runtime"));
    }
}
