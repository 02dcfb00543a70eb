//! vigil's resources against the Kubernetes API stand-in (`test-apiserver/`): the real `kubectl`
//! over its HTTP face with the committed CRDs and examples, and a `kube::runtime::Controller`
//! over its in-process face.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{CustomResourceExt, ResourceExt};
use serde_json::json;
use vigil::api::{HealthCheck, InstanceStatus};
use vigil_test_apiserver::ApiServer;

/// `kubectl` with its own kubeconfig and discovery cache.
struct Kubectl {
    kubeconfig: std::path::PathBuf,
    cache: std::path::PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("kubectl is installed (tests/fixtures/tools.sh)");
        if let Some(text) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Runs and requires success; returns the output.
    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args, None);
        assert!(ok, "kubectl {} failed:\n{text}", args.join(" "));
        text
    }

    fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let (ok, text) = self.run(args, Some(stdin));
        assert!(ok, "kubectl {} failed:\n{text}", args.join(" "));
        text
    }
}

/// Words of a table line, for comparing columns without caring about their widths.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The user's path with `kubectl`: CRDs, examples, an InstanceStatus with its status, tables,
/// describe with Events, delete. Runs against the stand-in here and against a real cluster in the
/// ignored end-to-end test below, so both are held to the same expectations.
fn kubectl_scenario(kubectl: &Kubectl) {
    let crds = kubectl.ok(&["apply", "--server-side", "-f", "crds/"]);
    assert!(
        crds.contains(
            "customresourcedefinition.apiextensions.k8s.io/healthchecks.vigil.dev serverside-applied"
        ),
        "{crds}"
    );
    assert!(
        crds.contains(
            "customresourcedefinition.apiextensions.k8s.io/instancestatuses.vigil.dev serverside-applied"
        ),
        "{crds}"
    );
    // Applying again is a no-op for the server and fine for kubectl.
    kubectl.ok(&["apply", "--server-side", "-f", "crds/"]);
    kubectl.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/healthchecks.vigil.dev",
        "crd/instancestatuses.vigil.dev",
    ]);

    // The examples name their namespace; like a real cluster, it must exist first.
    let (ok, missing) = kubectl.run(&["apply", "-f", "examples/http-pods.yaml"], None);
    assert!(!ok && missing.contains("namespaces \"shop\" not found"), "{missing}");
    kubectl.ok_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n");
    let applied = kubectl.ok(&["apply", "-f", "examples/"]);
    let mut created = 0;
    for example in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")).unwrap() {
        let path = example.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = text.lines().find_map(|l| l.strip_prefix("  name: ")).unwrap().trim();
            assert!(applied.contains(&format!("healthcheck.vigil.dev/{name} created")), "{name}: {applied}");
            created += 1;
        }
    }
    assert!(created >= 4, "every example applied ({created})");

    let list = kubectl.ok(&["get", "vhc", "-A"]);
    let mut lines = list.lines();
    assert_eq!(
        words(lines.next().unwrap()),
        ["NAMESPACE", "NAME", "TARGET", "PROBE", "TARGETS", "HEALTHY", "UNHEALTHY", "READY", "AGE"]
    );
    assert_eq!(lines.count(), created, "{list}");

    // An InstanceStatus as the agent writes it: the object, then its status subresource.
    let ist = "apiVersion: vigil.dev/v1alpha1\nkind: InstanceStatus\nmetadata:\n  name: pod-shop-web-1\n  namespace: shop\nspec:\n  instance:\n    kind: Pod\n    id: shop/web-1\n    name: web-1\n    node: node-a\n";
    kubectl.ok_stdin(&["apply", "-f", "-"], ist);
    let status = r#"{"status":{"state":"running","systemStatus":{"status":"ok"},"instanceStatus":{"status":"impaired","details":[{"name":"web","status":"impaired","impairedSince":"2026-01-01T00:00:00Z"}]},"attachedVolumeStatus":{"status":"ok"},"restarts":{"count":2}}}"#;
    kubectl.ok(&[
        "patch",
        "ist",
        "pod-shop-web-1",
        "-n",
        "shop",
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    let wide = kubectl.ok(&["get", "ist", "-n", "shop", "-o", "wide"]);
    let mut lines = wide.lines();
    assert_eq!(
        words(lines.next().unwrap()),
        ["NAME", "NODE", "KIND", "STATE", "SYSTEM", "INSTANCE", "VOLUMES", "RESTARTS", "NAME", "AGE"]
    );
    let row = words(lines.next().unwrap());
    assert_eq!(
        &row[..9],
        ["pod-shop-web-1", "node-a", "Pod", "running", "ok", "impaired", "ok", "2", "web-1"],
        "{wide}"
    );
    let narrow = kubectl.ok(&["get", "ist", "-n", "shop"]);
    assert!(
        !narrow.lines().next().unwrap().contains("RESTARTS"),
        "priority-1 columns only with -o wide: {narrow}"
    );

    // describe shows the object and the Events about it (found by field selector), here one
    // written through events.k8s.io/v1 as vigil's recorder writes them.
    let uid = kubectl.ok(&["get", "vhc", "web", "-n", "shop", "-o", "jsonpath={.metadata.uid}"]);
    let event = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "web.1", "namespace": "shop"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "vigil.dev/controller", "reportingInstance": "vigil-0",
        "action": "Evaluate", "reason": "TargetsImpaired", "type": "Warning", "note": "1 of 3 targets impaired",
        "regarding": {"apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck", "name": "web", "namespace": "shop", "uid": uid.trim()},
    });
    kubectl.ok_stdin(&["create", "-f", "-"], &event.to_string());
    let described = kubectl.ok(&["describe", "vhc", "web", "-n", "shop"]);
    assert!(described.contains("Kind:         HealthCheck"), "{described}");
    let event_line =
        described.lines().find(|l| l.contains("TargetsImpaired")).unwrap_or_else(|| panic!("{described}"));
    assert!(event_line.contains("Warning") && event_line.contains("1 of 3 targets impaired"), "{event_line}");

    let deleted = kubectl.ok(&["delete", "vhc", "web", "-n", "shop"]);
    assert!(deleted.contains("healthcheck.vigil.dev \"web\" deleted"), "{deleted}");
    let (ok, gone) = kubectl.run(&["get", "vhc", "web", "-n", "shop"], None);
    assert!(!ok && gone.contains("NotFound"), "{gone}");

    // Clean up what the scenario made (a real cluster outlives the test).
    kubectl.ok(&["delete", "-f", "examples/", "--ignore-not-found"]);
    kubectl.ok(&["delete", "namespace", "shop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_crds_and_examples_and_reads_them_back() {
    let server = ApiServer::new();
    let address = server.serve("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    ApiServer::write_kubeconfig(address, &kubeconfig).unwrap();
    let kubectl = Kubectl { kubeconfig, cache: dir.path().join("cache") };
    // kubectl blocks; the server runs on the test's other worker.
    tokio::task::spawn_blocking(move || kubectl_scenario(&kubectl)).await.unwrap();
    // The server counted what kubectl did.
    assert!(server.requests("patch", "customresourcedefinitions") >= 4);
    assert!(server.requests("delete", "healthchecks") >= 1);
    assert_eq!(server.requests("patch", "instancestatuses/status"), 1);
}

/// The same scenario against a real cluster: `VIGIL_E2E_KUBECONFIG=~/.kube/config cargo test
/// --test kubernetes -- --ignored` (a disposable kind or k3d cluster: it installs the CRDs and
/// creates then deletes the `shop` namespace).
#[test]
#[ignore = "needs a real cluster: set VIGIL_E2E_KUBECONFIG"]
fn kubectl_scenario_on_a_real_cluster() {
    let kubeconfig = std::env::var_os("VIGIL_E2E_KUBECONFIG")
        .expect("VIGIL_E2E_KUBECONFIG names the cluster's kubeconfig");
    let dir = tempfile::tempdir().unwrap();
    kubectl_scenario(&Kubectl { kubeconfig: kubeconfig.into(), cache: dir.path().join("cache") });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_reconciles_new_objects_and_settles_after_its_own_status_writes() {
    let server = ApiServer::new();
    let client = server.client();
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(client.clone());
    crds.create(&PostParams::default(), &HealthCheck::crd()).await.unwrap();
    crds.create(&PostParams::default(), &InstanceStatus::crd()).await.unwrap();

    let checks: Api<HealthCheck> = Api::namespaced(client.clone(), "default");
    let reconciles = Arc::new(AtomicUsize::new(0));
    let counter = reconciles.clone();
    let controller = Controller::new(checks.clone(), watcher::Config::default())
        .run(
            move |check: Arc<HealthCheck>, api: Arc<Api<HealthCheck>>| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    // A naive reconciler: writes the same status every time. Against a real
                    // server the second write changes nothing, emits no event and ends the loop.
                    let status = json!({"status": {"observedGeneration": check.metadata.generation, "targets": 0, "healthy": 0, "unhealthy": 0, "unknown": 0}});
                    api.patch_status(&check.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await?;
                    Ok::<_, kube::Error>(Action::await_change())
                }
            },
            |_, _: &kube::Error, _| Action::requeue(Duration::from_secs(1)),
            Arc::new(checks.clone()),
        )
        .for_each(|_| async {});
    let running = tokio::spawn(controller);

    // Created after the controller started: only the watch can bring it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reconciles.load(Ordering::SeqCst), 0);
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/endpoints-grpc.yaml"))
            .unwrap();
    let check: HealthCheck = serde_saphyr::from_str(&example).unwrap();
    checks.create(&PostParams::default(), &check).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let current = checks.get("payments").await.unwrap();
        if current.status.as_ref().and_then(|s| s.observed_generation) == Some(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the controller never wrote status");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Quiet for a while: no reconcile storm, no stream of status writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = reconciles.load(Ordering::SeqCst);
    let writes = server.requests("patch", "healthchecks/status");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(reconciles.load(Ordering::SeqCst), settled, "reconciles kept coming");
    assert_eq!(server.requests("patch", "healthchecks/status"), writes, "status writes kept coming");
    assert!(settled <= 3, "{settled} reconciles for one object and its own status write");

    // A spec change is seen and reconciled once more, with the new generation.
    checks
        .patch(
            "payments",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"probe": {"periodSeconds": 20}}})),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while checks.get("payments").await.unwrap().status.and_then(|s| s.observed_generation) != Some(2) {
        assert!(tokio::time::Instant::now() < deadline, "the spec change was not reconciled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.abort();
}
