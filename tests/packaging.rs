//! How vigil is shipped: the Helm chart and the kustomize base, linted, rendered, installed,
//! upgraded and uninstalled on the real API server; one version everywhere; the alert rules under
//! promtool; and a real Prometheus scraping a real agent and controller with the chart's scrape
//! settings, every dashboard and rule query answering.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::k8s::{ControlPlane, Helm, Kubectl, objects};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const REGENERATE: &str = "make manifests (or VIGIL_UPDATE_MANIFESTS=1 cargo test --test packaging)";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn helm() -> (Helm, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    (Helm::new(ControlPlane::shared(), home.path()), home)
}

fn key(o: &Value) -> String {
    format!(
        "{} {}/{}",
        o["kind"].as_str().unwrap_or_default(),
        o["metadata"]["namespace"].as_str().unwrap_or("-"),
        o["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn by_key(objects: Vec<Value>) -> BTreeMap<String, Value> {
    objects.into_iter().map(|o| (key(&o), o)).collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", objects.iter().map(key).collect::<Vec<_>>()))
}

fn args_of(workload: &Value) -> Vec<String> {
    workload["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

fn volumes_of(workload: &Value) -> Vec<String> {
    workload["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .map(|v| v.iter().map(|v| v["name"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn the_chart_lints_strictly_and_its_values_are_checked() {
    let (helm, _home) = helm();
    let lint = helm.ok(&["lint", "--strict", "charts/vigil"]);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    for variant in [
        "agent.docker.enabled=false",
        "agent.qemu.enabled=false",
        "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true",
        "watchNamespaces={shop,payments}",
    ] {
        let lint = helm.ok(&["lint", "--strict", "charts/vigil", "--set", variant]);
        assert!(lint.contains("0 chart(s) failed"), "{variant}: {lint}");
    }
    // values.schema.json: a typo or a wrong type is refused, naming the key.
    for (bad, named) in [
        ("agent.dockr.enabled=true", "dockr"),
        ("agent.docker.enabled=yes", "/agent/docker/enabled"),
        ("controller.nodeGrace=forty", "/controller/nodeGrace"),
        ("log.format=xml", "/log/format"),
        ("controller.port=70000", "/controller/port"),
    ] {
        let (ok, out, err) = helm.run(&["template", "vigil", "charts/vigil", "--set", bad]);
        assert!(!ok, "{bad} was accepted:\n{out}");
        assert!(err.contains(named), "{bad}: the error names {named}: {err}");
    }
}

#[test]
fn the_chart_renders_what_its_values_say() {
    let (helm, _home) = helm();
    let default = helm.render("vigil-system", &[]);
    let kinds: BTreeSet<String> = default.iter().map(key).collect();
    assert_eq!(
        kinds,
        [
            "ClusterRole -/vigil-agent",
            "ClusterRole -/vigil-controller",
            "ClusterRole -/vigil-node-reader",
            "ClusterRoleBinding -/vigil-agent",
            "ClusterRoleBinding -/vigil-controller",
            "ConfigMap vigil-system/vigil-dashboard",
            "DaemonSet vigil-system/vigil-agent",
            "Deployment vigil-system/vigil-controller",
            "Role vigil-system/vigil-agent",
            "Role vigil-system/vigil-controller",
            "RoleBinding vigil-system/vigil-agent",
            "RoleBinding vigil-system/vigil-controller",
            "Service vigil-system/vigil-agent",
            "Service vigil-system/vigil-controller",
            "ServiceAccount vigil-system/vigil-agent",
            "ServiceAccount vigil-system/vigil-controller",
            "ValidatingAdmissionPolicy -/vigil-agent-own-node",
            "ValidatingAdmissionPolicyBinding -/vigil-agent-own-node",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        "the default objects"
    );
    let agent = find(&default, "DaemonSet", "vigil-agent");
    let spec = &agent["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "vigil-agent");
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["tolerations"], json!([{"operator": "Exists"}]), "on every node, tainted or not");
    let env = &spec["containers"][0]["env"];
    assert_eq!(
        env[0],
        json!({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    );
    let args = args_of(agent);
    for wanted in [
        "agent",
        "--kubernetes",
        "--listen=0.0.0.0:9733",
        "--host-root=/host",
        "--docker-socket=/run/vigil/docker/docker.sock",
        "--vm-socket-glob=/run/vigil/vms/*/qmp.sock",
    ] {
        assert!(args.iter().any(|a| a == wanted), "{wanted} in {args:?}");
    }
    let mounts = &spec["containers"][0]["volumeMounts"];
    assert_eq!(
        mounts[0],
        json!({"name": "host-root", "mountPath": "/host", "readOnly": true, "mountPropagation": "HostToContainer"})
    );
    assert_eq!(volumes_of(agent), ["host-root", "docker", "vms-0", "vms-1", "tmp"]);
    assert_eq!(spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"], true);
    let controller = find(&default, "Deployment", "vigil-controller");
    assert_eq!(controller["spec"]["replicas"], 2);
    let c = &controller["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(controller["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true);
    assert!(args_of(controller).contains(&"--node-grace=40s".to_owned()));

    // No Docker: no socket mounted, and the agent told not to look for one.
    let objects = helm.render("vigil-system", &["--set", "agent.docker.enabled=false"]);
    let agent = find(&objects, "DaemonSet", "vigil-agent");
    assert!(args_of(agent).contains(&"--no-docker".to_owned()), "{:?}", args_of(agent));
    assert!(!args_of(agent).iter().any(|a| a.starts_with("--docker-socket")));
    assert_eq!(volumes_of(agent), ["host-root", "vms-0", "vms-1", "tmp"]);
    // No QEMU: no VM folder mounted or searched.
    let objects = helm.render("vigil-system", &["--set", "agent.qemu.enabled=false"]);
    let agent = find(&objects, "DaemonSet", "vigil-agent");
    assert!(!args_of(agent).iter().any(|a| a.starts_with("--vm-socket-glob")), "{:?}", args_of(agent));
    assert_eq!(volumes_of(agent), ["host-root", "docker", "tmp"]);
    // HealthChecks of some namespaces only.
    let objects = helm.render("ops", &["--set", "watchNamespaces={shop,payments}"]);
    let agent = find(&objects, "DaemonSet", "vigil-agent");
    assert_eq!(agent["metadata"]["namespace"], "ops");
    let args = args_of(agent);
    assert!(
        args.contains(&"--namespace=shop".to_owned()) && args.contains(&"--namespace=payments".to_owned())
    );
    let binding = find(&objects, "ClusterRoleBinding", "vigil-agent");
    assert_eq!(binding["subjects"][0]["namespace"], "ops", "bound to the release's namespace");
    // ServiceMonitor and PrometheusRule off by default, on when asked; the dashboard the other way.
    let on = helm.render(
        "vigil-system",
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,grafana.dashboard.enabled=false",
            "--set",
            "metrics.serviceMonitor.labels.release=prom",
        ],
    );
    let monitor = find(&on, "ServiceMonitor", "vigil");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    assert_eq!(monitor["spec"]["endpoints"][0]["honorLabels"], true);
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    let rule = find(&on, "PrometheusRule", "vigil");
    let alerts: Value = serde_saphyr::from_str(&read("charts/vigil/files/alerts.yaml")).unwrap();
    assert_eq!(rule["spec"], alerts, "the PrometheusRule is files/alerts.yaml");
    assert!(!on.iter().any(|o| o["kind"] == "ConfigMap"));
    let dashboard = find(&default, "ConfigMap", "vigil-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(dashboard["data"]["vigil-fleet.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "vigil-fleet");
}

/// One version everywhere: the crate's = the chart's appVersion (and version) = the image tag the
/// chart runs = the tag `make image` builds.
#[test]
fn one_version_everywhere() {
    let chart: Value = serde_saphyr::from_str(&read("charts/vigil/Chart.yaml")).unwrap();
    assert_eq!(chart["appVersion"], VERSION, "charts/vigil/Chart.yaml appVersion");
    assert_eq!(chart["version"], VERSION, "charts/vigil/Chart.yaml version");
    let (helm, _home) = helm();
    let objects = helm.render("vigil-system", &[]);
    for (kind, name) in [("DaemonSet", "vigil-agent"), ("Deployment", "vigil-controller")] {
        let image = &find(&objects, kind, name)["spec"]["template"]["spec"]["containers"][0]["image"];
        assert_eq!(image, &json!(format!("vigil:{VERSION}")), "{kind} {name}");
    }
    let script = read("packaging/image.sh");
    assert!(script.contains("IMAGE=${VIGIL_IMAGE:-vigil:$VERSION}"), "image.sh tags vigil:<crate version>");
    assert!(
        script.contains("VERSION=$(") && script.contains("Cargo.toml"),
        "image.sh reads the version from Cargo.toml"
    );
}

/// The chart's output with the Helm-only labels taken out: what kustomize must produce.
fn without_helm_labels(mut o: Value) -> Value {
    fn strip(labels: &mut Value) {
        if let Some(map) = labels.as_object_mut() {
            map.remove("helm.sh/chart");
            map.remove("app.kubernetes.io/managed-by");
        }
    }
    strip(&mut o["metadata"]["labels"]);
    if o["spec"]["template"]["metadata"].is_object() {
        strip(&mut o["spec"]["template"]["metadata"]["labels"]);
    }
    o
}

/// The kustomize base's files, from the chart's default rendering: one file per template.
fn manifests_from(rendered: &str) -> BTreeMap<String, String> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for doc in rendered.split("---\n").filter(|d| !d.trim().is_empty()) {
        let source = doc.lines().next().and_then(|l| l.strip_prefix("# Source: vigil/templates/"));
        let source = source.unwrap_or_else(|| panic!("a document without its source: {doc}"));
        let body: String = doc
            .lines()
            .skip(1)
            .filter(|l| !l.trim_start().starts_with("helm.sh/chart:"))
            .filter(|l| !l.trim_start().starts_with("app.kubernetes.io/managed-by:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let file = files.entry(source.to_owned()).or_insert_with(|| {
            format!(
                "# Generated from charts/vigil/templates/{source} with the default values by {REGENERATE}.\n"
            )
        });
        if file.lines().count() > 1 {
            file.push_str("---\n");
        }
        file.push_str(&body);
    }
    files
}

/// `manifests/` (kustomize) is the chart with its default values: the same objects, field for
/// field (names, images, args, ports, RBAC rules, the policy), but the Helm-only labels.
#[test]
fn the_kustomize_base_is_the_chart_with_its_defaults() {
    let (helm, home) = helm();
    let rendered = helm.template("vigil-system", &[]);
    let files = manifests_from(&rendered);
    let update = std::env::var_os("VIGIL_UPDATE_MANIFESTS").is_some();
    for (file, text) in &files {
        let path = root().join("manifests").join(file);
        if update {
            std::fs::write(&path, text).unwrap();
        } else {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(&committed == text, "manifests/{file} is stale: regenerate with {REGENERATE}");
        }
    }
    let kustomization = read("manifests/kustomization.yaml");
    for file in files.keys() {
        assert!(
            kustomization.contains(&format!("  - {file}\n")),
            "manifests/kustomization.yaml lists {file}"
        );
    }

    // And kustomize's own output is the same objects as the chart's.
    let kubectl = Kubectl::new(&ControlPlane::shared().kubeconfig(), home.path());
    let built = by_key(objects(&kubectl.ok(&["kustomize", "manifests/"])));
    let mut charted = by_key(
        objects(&helm.template("vigil-system", &["--include-crds"]))
            .into_iter()
            .map(without_helm_labels)
            .collect(),
    );
    charted
        .insert("Namespace -/vigil-system".to_owned(), objects(&read("manifests/namespace.yaml")).remove(0));
    let (a, b): (BTreeSet<&String>, BTreeSet<&String>) = (built.keys().collect(), charted.keys().collect());
    assert_eq!(a, b, "the same objects");
    for (k, o) in &built {
        if let Some(difference) = first_difference(o, &charted[k], "") {
            panic!("{k}: kustomize and the chart differ at {difference}");
        }
    }
}

/// Where two objects differ first (numbers compared by value: `0` and `0.0` are one number, as
/// YAML tools write them either way), with both sides.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let null = Value::Null;
                first_difference(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), &format!("{path}.{k}"))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, &format!("{path}[{i}]"))),
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{path}: {a} (kustomize) vs {b} (chart)")),
    }
}

/// The tests' admin kubeconfig, a kubectl and a helm for the install tests.
fn tools(home: &Path) -> (Kubectl, Helm) {
    let plane = ControlPlane::shared();
    (Kubectl::new(&plane.kubeconfig(), home), Helm::new(plane, home))
}

/// The Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule), fetched by `k8s.sh build`.
fn install_monitoring_crds(kubectl: &Kubectl) {
    let dir = ControlPlane::shared().bin("helm").parent().unwrap().parent().unwrap().join("monitoring-crds");
    assert!(dir.is_dir(), "{} (tests/fixtures/k8s.sh build fetches them)", dir.display());
    for crd in ["servicemonitors", "prometheusrules"] {
        let file = dir.join(format!("monitoring.coreos.com_{crd}.yaml"));
        kubectl.ok(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    }
    kubectl.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    ]);
}

/// `helm install`, `helm upgrade`, `helm uninstall` on the real API server, with every optional
/// object on: each object is accepted under strict field validation, the CRDs are Established,
/// an upgrade changes what its values say, and an uninstall removes everything but the CRDs.
#[test]
fn helm_installs_upgrades_and_uninstalls_on_the_real_api_server() {
    let home = tempfile::tempdir().unwrap();
    let (kubectl, helm) = tools(home.path());
    install_monitoring_crds(&kubectl);
    let ns = "vigil-helm";
    // What an earlier run left behind, if it failed half-way.
    let _ = helm.run(&["uninstall", "vigil", "--namespace", ns, "--wait"]);
    let _ = kubectl.run(&["delete", "namespace", ns, "--wait=true", "--ignore-not-found"], None);
    kubectl.ok(&["create", "namespace", ns]);
    let all_on = "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true";
    // Strict field validation of every object the chart makes: helm itself validates against
    // the OpenAPI schema, which lets unknown fields of CRD kinds through.
    let rendered = helm.template(ns, &["--set", all_on]);
    let accepted =
        kubectl.ok_stdin(&["create", "--dry-run=server", "--validate=strict", "-f", "-"], &rendered);
    assert_eq!(accepted.lines().filter(|l| l.ends_with("(server dry run)")).count(), 20, "{accepted}");

    let out = helm.ok(&["install", "vigil", "charts/vigil", "--namespace", ns, "--set", all_on]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(out.contains("kubectl get instancestatus -A"), "NOTES.txt tells what to type next: {out}");
    for crd in ["healthchecks.vigil.dev", "instancestatuses.vigil.dev"] {
        kubectl.ok(&["wait", "--for=condition=Established", "--timeout=60s", &format!("crd/{crd}")]);
    }
    let expected = [
        "daemonset/vigil-agent",
        "deployment/vigil-controller",
        "service/vigil-agent",
        "service/vigil-controller",
        "servicemonitor/vigil",
        "prometheusrule/vigil",
        "configmap/vigil-dashboard",
        "serviceaccount/vigil-agent",
        "role/vigil-agent",
        "clusterrole/vigil-agent",
        "clusterrole/vigil-node-reader",
        "validatingadmissionpolicy/vigil-agent-own-node",
    ];
    let mut get = vec!["get", "-n", ns, "-o", "name"];
    get.extend_from_slice(&expected);
    let live = kubectl.ok(&get);
    assert_eq!(live.lines().count(), expected.len(), "{live}");
    let replicas =
        kubectl.ok(&["get", "-n", ns, "deployment/vigil-controller", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(replicas, "2");

    let out = helm.ok(&[
        "upgrade",
        "vigil",
        "charts/vigil",
        "--namespace",
        ns,
        "--set",
        all_on,
        "--set",
        "controller.replicas=3,agent.docker.enabled=false",
    ]);
    assert!(out.contains("REVISION: 2"), "{out}");
    let replicas =
        kubectl.ok(&["get", "-n", ns, "deployment/vigil-controller", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(replicas, "3");
    let args = kubectl.ok(&[
        "get",
        "-n",
        ns,
        "daemonset/vigil-agent",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args}",
    ]);
    assert!(args.contains("--no-docker") && !args.contains("--docker-socket"), "{args}");

    let out = helm.ok(&["uninstall", "vigil", "--namespace", ns, "--wait"]);
    assert!(out.contains("uninstalled"), "{out}");
    let (_, gone) = kubectl.run(
        &[
            "get",
            "-n",
            ns,
            "daemonset/vigil-agent",
            "clusterrole/vigil-agent",
            "validatingadmissionpolicy/vigil-agent-own-node",
            "-o",
            "name",
        ],
        None,
    );
    assert!(gone.matches("NotFound").count() == 3, "{gone}");
    // Helm never deletes (or upgrades) CRDs: the users' HealthChecks survive an uninstall.
    kubectl.ok(&["get", "crd", "healthchecks.vigil.dev", "instancestatuses.vigil.dev"]);
    kubectl.ok(&["delete", "namespace", ns, "--wait=false"]);
}

/// `kubectl apply -k manifests/` against the real API server (a server-side dry run with strict
/// field validation: the objects it would create are all accepted).
#[test]
fn kubectl_apply_k_is_accepted_by_the_api_server() {
    let home = tempfile::tempdir().unwrap();
    let (kubectl, _) = tools(home.path());
    // The namespace must exist for the namespaced objects of a dry run.
    let (_, _) = kubectl.run(&["create", "namespace", "vigil-system"], None);
    // --force-conflicts: the CRDs may be on the server already, applied by helm in the install
    // test (another field manager); a user's first `kubectl apply -k` has no such conflict.
    let out = kubectl.ok(&[
        "apply",
        "-k",
        "manifests/",
        "--dry-run=server",
        "--validate=strict",
        "--server-side",
        "--force-conflicts",
    ]);
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/healthchecks.vigil.dev",
        "daemonset.apps/vigil-agent",
        "deployment.apps/vigil-controller",
        "validatingadmissionpolicy.admissionregistration.k8s.io/vigil-agent-own-node",
        "clusterrole.rbac.authorization.k8s.io/vigil-node-reader",
        "configmap/vigil-dashboard",
    ] {
        assert!(out.contains(object), "{object}: {out}");
    }
    assert_eq!(out.lines().filter(|l| l.contains("(server dry run)")).count(), 21, "{out}");
}

/// `promtool args…` in the repository: whether it succeeded, and what it printed.
fn promtool(args: &[&str]) -> (bool, String) {
    let local = root().join("target/tools/bin/promtool");
    let bin = if local.exists() { local } else { PathBuf::from("promtool") };
    let out = Command::new(bin).args(args).current_dir(root()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Each alert rule fires when it should and stays quiet when it should not (promtool's unit
/// tests in tests/alerts/).
#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let (ok, text) = promtool(&["check", "rules", "charts/vigil/files/alerts.yaml"]);
    assert!(ok && text.contains("SUCCESS: 8 rules found"), "{text}");
    let (ok, text) = promtool(&["test", "rules", "tests/alerts/alerts_test.yaml"]);
    assert!(ok && text.contains("SUCCESS"), "{text}");
}
