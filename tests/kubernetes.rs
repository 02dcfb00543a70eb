//! vigil's resources on the real control plane of the tests (kube-apiserver, etcd,
//! kube-controller-manager and kwok, built and started by `tests/fixtures/k8s.sh`): `kubectl`
//! with the committed CRDs and examples, a `kube::runtime::Controller`, RBAC on ServiceAccount
//! tokens, the real garbage collector, kwok's nodes and helm. The `kubectl` scenario and the
//! controller also run against the stand-in (`test-apiserver/`), which is held to the same
//! expectations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use support::k8s::{ControlPlane, Kubectl, control_plane, eventually};
use vigil::api::{HealthCheck, InstanceStatus};
use vigil_test_apiserver::ApiServer;

/// Words of a table line, for comparing columns without caring about their widths.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The user's path with `kubectl`: CRDs, examples, an InstanceStatus with its status, tables,
/// describe with Events, delete. Runs against the stand-in here and against a real cluster in the
/// ignored end-to-end test below, so both are held to the same expectations.
fn kubectl_scenario(kubectl: &Kubectl) {
    // What a failed earlier run on the same cluster may have left.
    kubectl.ok(&["delete", "namespace", "shop", "--ignore-not-found"]);
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
    // The real server warns about schema parts it does not know (such as `format: uint32`).
    assert!(!crds.contains("Warning"), "{crds}");
    // Applying again is a no-op for the server and fine for kubectl.
    kubectl.ok(&["apply", "--server-side", "-f", "crds/"]);
    kubectl.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/healthchecks.vigil.dev",
        "crd/instancestatuses.vigil.dev",
    ]);
    kubectl.ok(&["delete", "-f", "examples/", "--ignore-not-found"]);

    // The examples name their namespace; like a real cluster, it must exist first.
    let (ok, missing) = kubectl.run(&["apply", "-f", "examples/http-pods.yaml"], None);
    assert!(!ok && missing.contains("namespaces \"shop\" not found"), "{missing}");
    kubectl.ok_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n");
    let applied = kubectl.ok(&["apply", "-f", "examples/"]);
    let mut created = Vec::new();
    for example in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")).unwrap() {
        let path = example.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let field = |f: &str| text.lines().find_map(|l| l.strip_prefix(f)).map(|v| v.trim().to_owned());
            let name = field("  name: ").unwrap();
            assert!(applied.contains(&format!("healthcheck.vigil.dev/{name} created")), "{name}: {applied}");
            created.push((field("  namespace: ").unwrap_or_else(|| "default".into()), name));
        }
    }
    assert!(created.len() >= 4, "every example applied ({created:?})");

    let list = kubectl.ok(&["get", "vhc", "-A"]);
    let mut lines = list.lines();
    assert_eq!(
        words(lines.next().unwrap()),
        ["NAMESPACE", "NAME", "TARGET", "PROBE", "TARGETS", "HEALTHY", "UNHEALTHY", "READY", "AGE"]
    );
    // (a shared cluster may hold other HealthChecks too)
    let rows: Vec<Vec<&str>> = lines.map(words).collect();
    for (namespace, name) in &created {
        assert!(
            rows.iter().any(|r| r[..2] == [namespace.as_str(), name.as_str()]),
            "{namespace}/{name}: {list}"
        );
    }

    // An InstanceStatus as the agent writes it: the object, then its status subresource.
    let ist = "apiVersion: vigil.dev/v1alpha1\nkind: InstanceStatus\nmetadata:\n  name: pod-shop-web-1\n  namespace: shop\nspec:\n  instance:\n    kind: Pod\n    id: shop/web-1\n    name: web-1\n    node: node-a\n";
    kubectl.ok_stdin(&["apply", "-f", "-"], ist);
    let status = r#"{"status":{"state":"running","systemStatus":{"status":"ok"},"instanceStatus":{"status":"impaired","details":[{"name":"web","status":"impaired","impairedSince":"2026-01-01T00:00:00Z"}]},"attachedVolumeStatus":{"status":"ok"},"restarts":{"count":2},"reported":"impaired"}}"#;
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
        [
            "NAME", "NODE", "KIND", "STATE", "SYSTEM", "INSTANCE", "VOLUMES", "RESTARTS", "REPORTED", "NAME",
            "AGE"
        ]
    );
    let row = words(lines.next().unwrap());
    assert_eq!(
        &row[..10],
        ["pod-shop-web-1", "node-a", "Pod", "running", "ok", "impaired", "ok", "2", "impaired", "web-1"],
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

#[test]
fn kubectl_applies_the_crds_and_examples_and_reads_them_back() {
    let _turn = AGENTS.blocking_lock();
    let plane = ControlPlane::shared();
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::new(&plane.kubeconfig(), &dir.path().join("cache"));
    kubectl_scenario(&kubectl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scenario_on_the_stand_in() {
    let server = ApiServer::new();
    let address = server.serve("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    ApiServer::write_kubeconfig(address, &kubeconfig).unwrap();
    let cache = dir.path().join("cache");
    let kubectl = tokio::task::spawn_blocking(move || Kubectl::new(&kubeconfig, &cache)).await.unwrap();
    // kubectl blocks; the server runs on the test's other worker.
    tokio::task::spawn_blocking(move || kubectl_scenario(&kubectl)).await.unwrap();
    // The server counted what kubectl did.
    assert!(server.requests("patch", "customresourcedefinitions") >= 4);
    assert!(server.requests("delete", "healthchecks") >= 1);
    assert_eq!(server.requests("patch", "instancestatuses/status"), 1);
}

/// The same scenario against a real cluster: `VIGIL_E2E_KUBECONFIG=~/.kube/config cargo test
/// --test kubernetes -- --ignored` (a disposable kind or k3d cluster: it installs the CRDs and
/// creates then deletes the `shop` namespace; `kubectl` from PATH unless `VIGIL_E2E_KUBECTL`).
#[test]
#[ignore = "needs a real cluster: set VIGIL_E2E_KUBECONFIG"]
fn kubectl_scenario_on_a_real_cluster() {
    let kubeconfig = std::env::var_os("VIGIL_E2E_KUBECONFIG")
        .expect("VIGIL_E2E_KUBECONFIG names the cluster's kubeconfig");
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl {
        bin: std::env::var_os("VIGIL_E2E_KUBECTL").unwrap_or("kubectl".into()).into(),
        kubeconfig: kubeconfig.into(),
        cache: dir.path().join("cache"),
    };
    kubectl_scenario(&kubectl);
}

/// Installs vigil's CRDs (server-side apply, so it is a no-op when they are current) and waits
/// until both are served.
async fn install_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let apply = PatchParams::apply("vigil-tests").force();
    for (_, crd) in vigil::crd::all() {
        crds.patch(&crd.name_any(), &apply, &Patch::Apply(&crd)).await.unwrap();
    }
    let checks: Api<HealthCheck> = Api::all(client.clone());
    let statuses: Api<InstanceStatus> = Api::all(client.clone());
    eventually("vigil's kinds are served", Duration::from_secs(30), || async {
        (checks.list(&Default::default()).await.is_ok() && statuses.list(&Default::default()).await.is_ok())
            .then_some(())
    })
    .await;
}

/// A HealthCheck from the examples, moved to `namespace`.
fn example_check(file: &str, namespace: &str) -> HealthCheck {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(file)).unwrap();
    let mut check: HealthCheck = serde_saphyr::from_str(&text).unwrap();
    check.metadata.namespace = Some(namespace.to_owned());
    check
}

/// A naive controller (it writes the same status on every reconcile) over `client`: reconciles a
/// HealthCheck created after it started, settles after its own status write because a write that
/// changes nothing emits no event, and reconciles again on a spec change. `status_writes` counts
/// the server's `patch healthchecks/status` requests.
async fn controller_scenario<F, Fut>(client: kube::Client, namespace: &str, status_writes: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    install_crds(&client).await;
    let checks: Api<HealthCheck> = Api::namespaced(client.clone(), namespace);
    let reconciles = Arc::new(AtomicUsize::new(0));
    let counter = reconciles.clone();
    let controller = Controller::new(checks.clone(), watcher::Config::default())
        .run(
            move |check: Arc<HealthCheck>, api: Arc<Api<HealthCheck>>| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
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
    checks.create(&PostParams::default(), &example_check("endpoints-grpc.yaml", namespace)).await.unwrap();

    eventually("the controller writes status", Duration::from_secs(10), || async {
        let current = checks.get("payments").await.unwrap();
        (current.status.as_ref().and_then(|s| s.observed_generation) == Some(1)).then_some(())
    })
    .await;
    // Quiet for a while: no reconcile storm, no stream of status writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = reconciles.load(Ordering::SeqCst);
    let writes = status_writes().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(reconciles.load(Ordering::SeqCst), settled, "reconciles kept coming");
    assert_eq!(status_writes().await, writes, "status writes kept coming");
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
    eventually("the spec change is reconciled", Duration::from_secs(10), || async {
        let current = checks.get("payments").await.unwrap();
        (current.status.and_then(|s| s.observed_generation) == Some(2)).then_some(())
    })
    .await;
    running.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_reconciles_new_objects_and_settles_after_its_own_status_writes() {
    let _turn = AGENTS.lock().await;
    let plane = control_plane().await;
    let namespace = plane.namespace("controller").await.unwrap();
    let client = plane.client().await.unwrap();
    // The API server's own count; only this test writes HealthCheck status.
    controller_scenario(client, &namespace, || async {
        plane.request_counts().await.unwrap().get("patch", "healthchecks/status")
    })
    .await;
    plane.delete_namespace(&namespace).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_settles_on_the_stand_in_too() {
    let server = ApiServer::new();
    controller_scenario(server.client(), "default", || async {
        server.requests("patch", "healthchecks/status")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_judges_service_account_tokens() {
    let _turn = AGENTS.lock().await;
    let plane = control_plane().await;
    let namespace = plane.namespace("rbac").await.unwrap();
    let admin = plane.client().await.unwrap();
    install_crds(&admin).await;
    // A real token of a ServiceAccount with no role bound.
    let writer = plane.client_as(&namespace, "writer").await.unwrap();
    let checks: Api<HealthCheck> = Api::namespaced(writer, &namespace);
    let check = example_check("endpoints-grpc.yaml", &namespace);
    match checks.create(&PostParams::default(), &check).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message.contains(&format!("system:serviceaccount:{namespace}:writer"))
                    && s.message.contains("cannot create resource \"healthchecks\""),
                "{}",
                s.message
            );
        }
        other => panic!("an unbound ServiceAccount created a HealthCheck: {other:?}"),
    }

    // A Role that allows it, bound to the ServiceAccount.
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": {"name": "healthcheck-writer"},
        "rules": [{"apiGroups": ["vigil.dev"], "resources": ["healthchecks"], "verbs": ["create", "get"]}],
    }))
    .unwrap();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "healthcheck-writer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "healthcheck-writer"},
        "subjects": [{"kind": "ServiceAccount", "name": "writer", "namespace": namespace}],
    }))
    .unwrap();
    Api::namespaced(admin.clone(), &namespace).create(&PostParams::default(), &role).await.unwrap();
    Api::namespaced(admin.clone(), &namespace).create(&PostParams::default(), &binding).await.unwrap();
    let created = eventually("the bound Role takes effect", Duration::from_secs(10), || async {
        match checks.create(&PostParams::default(), &check).await {
            Ok(created) => Some(created),
            Err(kube::Error::Api(s)) if s.code == 403 => None,
            Err(e) => panic!("{e:?}"),
        }
    })
    .await;
    assert_eq!(created.metadata.name.as_deref(), Some("payments"));
    // Only what the Role names: deleting is still refused.
    match checks.delete("payments", &Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("delete was not refused: {other:?}"),
    }
    plane.delete_namespace(&namespace).await.unwrap();
}

/// What a token may write: `Ok(())`, or the API server's refusal (code and message).
async fn write_outcome<F>(write: F) -> Result<(), (u16, String)>
where
    F: Future<Output = Result<(), kube::Error>>,
{
    match write.await {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) => Err((s.code, s.message)),
        Err(e) => panic!("{e:?}"),
    }
}

/// The chart's admission policy on the real API server: with tokens bound to agent Pods on
/// three nodes (the node's name is in each token), an agent writes its own node's InstanceStatus
/// and Lease and nobody else's; a token of the agent's ServiceAccount without the claim writes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_writes_only_its_own_nodes_objects() {
    let _turn = AGENTS.lock().await;
    use k8s_openapi::api::coordination::v1::Lease;
    let (plane, namespace, _admin) = with_access("own").await;
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for n in ["n1", "n2", "n3"] {
        let node = format!("{namespace}-{n}");
        let config =
            support::k8s::agent_kubeconfig(plane, &namespace, &node, &plane.kubeconfig(), dir.path()).await;
        let client = kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(&config).unwrap(),
                &Default::default(),
            )
            .await
            .unwrap(),
        )
        .unwrap();
        agents.push((node, client));
    }
    let host = |node: &str| -> InstanceStatus {
        serde_json::from_value(json!({
            "apiVersion": "vigil.dev/v1alpha1", "kind": "InstanceStatus",
            "metadata": {"name": format!("host-{node}"), "labels": {"vigil.dev/node": node}},
            "spec": {"instance": {"kind": "Host", "id": format!("host-{node}"), "name": node, "node": node}},
        }))
        .unwrap()
    };
    let apply = PatchParams::apply("vigil-agent").force();
    let write_status = |client: kube::Client, doc: InstanceStatus| {
        let namespace = namespace.clone();
        let apply = apply.clone();
        async move {
            let api: Api<InstanceStatus> = Api::namespaced(client, &namespace);
            let name = doc.metadata.name.clone().unwrap();
            api.patch(&name, &apply, &Patch::Apply(&doc)).await.map(drop)
        }
    };
    let lease = |node: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": format!("vigil-agent-{node}"), "labels": {"vigil.dev/node": node}},
               "spec": {"holderIdentity": node}})
    };
    let write_lease = |client: kube::Client, body: serde_json::Value| {
        let namespace = namespace.clone();
        let apply = apply.clone();
        async move {
            let api: Api<Lease> = Api::namespaced(client, &namespace);
            let name = body["metadata"]["name"].as_str().unwrap().to_owned();
            api.patch(&name, &apply, &Patch::Apply(&body)).await.map(drop)
        }
    };
    let (n1, c1) = (&agents[0].0, agents[0].1.clone());
    let n2 = &agents[1].0;
    // The policy takes effect once the API server has loaded it.
    let refused =
        eventually("n1's token is refused n2's InstanceStatus", Duration::from_secs(20), || async {
            write_outcome(write_status(c1.clone(), host(n2))).await.err()
        })
        .await;
    assert_eq!(refused.0, 403, "{refused:?}");
    assert!(
        refused.1.contains("vigil-agent-own-node") && refused.1.contains(&format!("node {n1}")),
        "{refused:?}"
    );
    // Each agent writes its own.
    for (node, client) in &agents {
        write_outcome(write_status(client.clone(), host(node))).await.unwrap();
        write_outcome(write_lease(client.clone(), lease(node))).await.unwrap();
        let statuses: Api<InstanceStatus> = Api::namespaced(client.clone(), &namespace);
        let status = json!({"apiVersion": "vigil.dev/v1alpha1", "kind": "InstanceStatus",
                            "status": {"state": "running"}});
        statuses
            .patch_status(&format!("host-{node}"), &apply, &Patch::Apply(&status))
            .await
            .unwrap_or_else(|e| panic!("{node} writes its own status: {e}"));
    }
    // Not another node's: create, patch of its object or its status, relabelling, delete, Lease.
    let mut stolen = host(n2);
    stolen.metadata.name = Some(format!("host-{n1}-too"));
    stolen.metadata.labels = Some([("vigil.dev/node".to_owned(), n1.clone())].into());
    let refusals = [
        ("patch n2's InstanceStatus", write_outcome(write_status(c1.clone(), host(n2))).await),
        ("an object of n1 naming n2's instance", write_outcome(write_status(c1.clone(), stolen)).await),
        ("n2's Lease", write_outcome(write_lease(c1.clone(), lease(n2))).await),
        ("a Lease of another name", {
            let mut other = lease(n1);
            other["metadata"]["name"] = json!("vigil-controller");
            write_outcome(write_lease(c1.clone(), other)).await
        }),
        ("n2's status", {
            let statuses: Api<InstanceStatus> = Api::namespaced(c1.clone(), &namespace);
            let status = json!({"apiVersion": "vigil.dev/v1alpha1", "kind": "InstanceStatus",
                                "status": {"state": "stopped"}});
            write_outcome(async {
                statuses.patch_status(&format!("host-{n2}"), &apply, &Patch::Apply(&status)).await.map(drop)
            })
            .await
        }),
        ("relabel n2's object as n1's", {
            let statuses: Api<InstanceStatus> = Api::namespaced(c1.clone(), &namespace);
            let relabel = json!({"metadata": {"labels": {"vigil.dev/node": n1}}});
            write_outcome(async {
                statuses
                    .patch(&format!("host-{n2}"), &PatchParams::default(), &Patch::Merge(&relabel))
                    .await
                    .map(drop)
            })
            .await
        }),
        ("delete n2's InstanceStatus", {
            let statuses: Api<InstanceStatus> = Api::namespaced(c1.clone(), &namespace);
            write_outcome(async {
                statuses.delete(&format!("host-{n2}"), &Default::default()).await.map(drop)
            })
            .await
        }),
    ];
    for (what, outcome) in refusals {
        match outcome {
            Err((403, message)) => assert!(message.contains("vigil-agent-own-node"), "{what}: {message}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // A token of the same ServiceAccount that is not bound to a Pod carries no node.
    let unbound = plane.client_as(&namespace, "vigil-agent").await.unwrap();
    let mut own = host(n1);
    own.metadata.name = Some(format!("host-{n1}-unbound"));
    match write_outcome(write_status(unbound.clone(), own)).await {
        Err((403, message)) => {
            assert!(message.contains("authentication.kubernetes.io/node-name"), "{message}")
        }
        other => panic!("a token without a node wrote: {other:?}"),
    }
    // Reading is RBAC's business alone: every agent reads every InstanceStatus.
    let all: Api<InstanceStatus> = Api::namespaced(unbound, &namespace);
    assert_eq!(all.list(&Default::default()).await.unwrap().items.len(), 3);
    plane.delete_namespace(&namespace).await.unwrap();
}

/// The chart's RBAC grants each component what it uses and nothing more: with real tokens
/// of the two ServiceAccounts, what the other component does, or neither does, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_component_is_refused_what_its_role_does_not_grant() {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let (plane, namespace, _admin) = with_access("least").await;
    let allowed = |client: kube::Client, group: &str, resource: &str, verb: &str, ns: Option<&str>| {
        let attributes = ResourceAttributes {
            group: Some(group.to_owned()),
            resource: Some(resource.split('/').next().unwrap().to_owned()),
            subresource: resource.split('/').nth(1).map(str::to_owned),
            verb: Some(verb.to_owned()),
            namespace: ns.map(str::to_owned),
            ..ResourceAttributes::default()
        };
        async move {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(attributes),
                    ..Default::default()
                },
                ..Default::default()
            };
            let api: Api<SelfSubjectAccessReview> = Api::all(client);
            api.create(&PostParams::default(), &review).await.unwrap().status.unwrap().allowed
        }
    };
    let agent = plane.client_as(&namespace, "vigil-agent").await.unwrap();
    let controller = plane.client_as(&namespace, "vigil-controller").await.unwrap();
    let elsewhere = Some("default");
    let here = Some(namespace.as_str());
    // (component, group, resource, verb, namespace, allowed)
    let cases = [
        ("agent", "vigil.dev", "instancestatuses", "patch", elsewhere, true),
        ("agent", "vigil.dev", "instancestatuses/status", "patch", elsewhere, true),
        ("agent", "vigil.dev", "healthchecks", "watch", None, true),
        ("agent", "", "pods", "list", None, true),
        ("agent", "coordination.k8s.io", "leases", "patch", here, true),
        ("agent", "vigil.dev", "healthchecks", "create", elsewhere, false),
        ("agent", "vigil.dev", "healthchecks/status", "patch", elsewhere, false),
        ("agent", "", "pods", "delete", elsewhere, false),
        ("agent", "", "pods/eviction", "create", elsewhere, false),
        ("agent", "", "secrets", "get", here, false),
        ("agent", "coordination.k8s.io", "leases", "patch", elsewhere, false),
        ("agent", "coordination.k8s.io", "leases", "delete", here, false),
        ("controller", "vigil.dev", "healthchecks/status", "patch", elsewhere, true),
        ("controller", "vigil.dev", "instancestatuses", "delete", elsewhere, true),
        ("controller", "vigil.dev", "instancestatuses/status", "patch", elsewhere, true),
        ("controller", "", "pods/eviction", "create", elsewhere, true),
        ("controller", "coordination.k8s.io", "leases", "watch", here, true),
        ("controller", "vigil.dev", "instancestatuses", "create", elsewhere, false),
        ("controller", "vigil.dev", "healthchecks", "patch", elsewhere, false),
        ("controller", "", "pods", "delete", elsewhere, false),
        ("controller", "", "secrets", "list", here, false),
        ("controller", "coordination.k8s.io", "leases", "patch", elsewhere, false),
        ("controller", "authentication.k8s.io", "tokenreviews", "create", None, false),
    ];
    let mut wrong = Vec::new();
    for (who, group, resource, verb, ns, expected) in cases {
        let client = if who == "agent" { agent.clone() } else { controller.clone() };
        if allowed(client, group, resource, verb, ns).await != expected {
            wrong.push(format!("{who} {verb} {group}/{resource} in {ns:?}: expected allowed={expected}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    plane.delete_namespace(&namespace).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_status_owned_by_a_pod_goes_with_the_pod() {
    let _turn = AGENTS.lock().await;
    use k8s_openapi::api::core::v1::Pod;
    let plane = control_plane().await;
    let namespace = plane.namespace("gc").await.unwrap();
    let client = plane.client().await.unwrap();
    install_crds(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]},
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let statuses: Api<InstanceStatus> = Api::namespaced(client.clone(), &namespace);
    let status: InstanceStatus = serde_json::from_value(json!({
        "apiVersion": "vigil.dev/v1alpha1", "kind": "InstanceStatus",
        "metadata": {"name": "pod-web-1", "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "web-1", "uid": pod.metadata.uid}]},
        "spec": {"instance": {"kind": "Pod", "id": format!("{namespace}/web-1"), "name": "web-1", "node": "n1"}},
    }))
    .unwrap();
    statuses.create(&PostParams::default(), &status).await.unwrap();
    // One that is owned by nothing stays.
    let mut unowned = status.clone();
    unowned.metadata.name = Some("host-n1".into());
    unowned.metadata.owner_references = None;
    statuses.create(&PostParams::default(), &unowned).await.unwrap();

    pods.delete("web-1", &Default::default()).await.unwrap();
    // The real garbage collector (kube-controller-manager) deletes the dependent; it may first
    // have to discover the new kind (a resync every 30 s).
    eventually("the Pod's InstanceStatus is collected", Duration::from_secs(90), || async {
        match statuses.get("pod-web-1").await {
            Err(kube::Error::Api(s)) if s.code == 404 => Some(()),
            _ => None,
        }
    })
    .await;
    assert!(statuses.get("host-n1").await.is_ok(), "an InstanceStatus without an owner stays");
    plane.delete_namespace(&namespace).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kwok_keeps_fifty_nodes_ready_with_leases() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Node;
    let plane = control_plane().await;
    let client = plane.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let prefix = format!("kwok-{:06x}", fastrand::u32(..0xff_ffff));
    let names: Vec<String> = (0..50).map(|i| format!("{prefix}-{i:02}")).collect();
    for name in &names {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"}, "labels": {"vigil.test/kwok": prefix}},
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
    let selector = kube::api::ListParams::default().labels(&format!("vigil.test/kwok={prefix}"));
    eventually("kwok makes all 50 nodes Ready", Duration::from_secs(60), || async {
        let listed = nodes.list(&selector).await.unwrap();
        let ready = listed
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == 50).then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewed_at = |lease: &Lease| lease.spec.as_ref().and_then(|s| s.renew_time.clone()).map(|t| t.0);
    let first = eventually("a Lease for every node", Duration::from_secs(60), || async {
        let mut times = Vec::new();
        for name in &names {
            let lease = leases.get_opt(name).await.unwrap()?;
            // (held by kwok under its own identity, where a kubelet would name its node)
            assert!(
                lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).is_some_and(|h| !h.is_empty())
            );
            times.push(renewed_at(&lease)?);
        }
        Some(times)
    })
    .await;
    // Renewed every quarter of the 40 s lease duration, as a kubelet does.
    eventually("every Lease is renewed", Duration::from_secs(30), || async {
        for (name, before) in names.iter().zip(&first) {
            let lease = leases.get(name).await.unwrap();
            if renewed_at(&lease)? <= *before {
                return None;
            }
        }
        Some(())
    })
    .await;
    for name in &names {
        nodes.delete(name, &Default::default()).await.unwrap();
    }
}

#[test]
fn helm_renders_a_chart_against_the_api_server() {
    let plane = ControlPlane::shared();
    let helm = plane.bin("helm");
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&helm)
            .args(args)
            .env("KUBECONFIG", plane.kubeconfig())
            .env("HELM_CACHE_HOME", dir.path().join("cache"))
            .env("HELM_CONFIG_HOME", dir.path().join("config"))
            .env("HELM_DATA_HOME", dir.path().join("data"))
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "helm {}: {text}", args.join(" "));
        text
    };
    assert!(run(&["version", "--short"]).starts_with("v3.22.0"), "the pinned helm");
    // A throw-away chart that prints what helm learnt of the cluster.
    let chart = dir.path().join("probe");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: \">=1.30.0-0\"\n",
    )
    .unwrap();
    std::fs::write(
        chart.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n  hasLeases: {{ .Capabilities.APIVersions.Has \"coordination.k8s.io/v1/Lease\" | quote }}\n",
    )
    .unwrap();
    // --validate: helm asks the API server for its version and kinds instead of assuming them.
    let rendered =
        run(&["template", "probe", chart.to_str().unwrap(), "--validate", "--namespace", "default"]);
    assert!(rendered.contains(&format!("kubeVersion: \"{}\"", plane.version())), "{rendered}");
    assert!(rendered.contains("hasLeases: \"true\""), "{rendered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_refuses_connections_and_loses_nothing() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let plane = control_plane().await;
    let namespace = plane.namespace("outage").await.unwrap();
    // A second API server on the same etcd: stopping it disturbs no other test.
    let server = tokio::task::spawn_blocking(|| ControlPlane::shared().second_apiserver("outage"))
        .await
        .unwrap()
        .unwrap();
    let client = server.client().await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "kept"}, "data": {"a": "1"}})).unwrap();
    maps.create(&PostParams::default(), &map).await.unwrap();

    let server = tokio::task::spawn_blocking(move || {
        server.stop().unwrap();
        server
    })
    .await
    .unwrap();
    match maps.get("kept").await {
        Err(kube::Error::HyperError(_)) | Err(kube::Error::Service(_)) => {}
        other => panic!("a stopped API server answered: {other:?}"),
    }
    // The main API server, on the same etcd, still has it.
    let main: Api<ConfigMap> = Api::namespaced(plane.client().await.unwrap(), &namespace);
    assert_eq!(main.get("kept").await.unwrap().data.unwrap()["a"], "1");

    let server = tokio::task::spawn_blocking(move || {
        server.start().unwrap();
        server
    })
    .await
    .unwrap();
    assert_eq!(maps.get("kept").await.unwrap().data.unwrap()["a"], "1", "back, with the data");
    tokio::task::spawn_blocking(move || drop(server)).await.unwrap();
    plane.delete_namespace(&namespace).await.unwrap();
}

/// The control plane, a new namespace `prefix-…`, an admin client, the CRDs, and vigil's access
/// rules for an install in that namespace.
async fn with_access(prefix: &str) -> (&'static ControlPlane, String, kube::Client) {
    let plane = control_plane().await;
    let namespace = plane.namespace(prefix).await.unwrap();
    let client = plane.client().await.unwrap();
    install_crds(&client).await;
    install_access(plane, &namespace).await;
    (plane, namespace, client)
}

/// The `/metrics` text of a process on loopback `port` (empty when it does not answer).
fn metrics_of(port: u16) -> String {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio::task::block_in_place(|| support::agent::request(addr, "GET", "/metrics", &[]))
        .map(|(_, text)| text)
        .unwrap_or_default()
}

/// A real `vigil agent` for `node`, with the token of ServiceAccount `vigil-agent` bound to a
/// Pod on that node, against the server of `base`; HealthChecks and Lease in `namespace`, its
/// files under `dir`.
async fn start_agent(
    plane: &'static ControlPlane,
    namespace: &str,
    node: &str,
    base: &Path,
    dir: &Path,
    extra: &[&str],
) -> support::agent::Agent {
    let kubeconfig = support::k8s::agent_kubeconfig(plane, namespace, node, base, dir).await;
    let mut args = vec!["--agent-namespace", namespace, "--namespace", namespace];
    args.extend_from_slice(extra);
    tokio::task::block_in_place(|| support::agent::Agent::start_in_cluster(dir, &kubeconfig, node, &args))
}

/// vigil's ServiceAccounts, RBAC and admission policy, rendered from the chart, for an install in
/// `namespace`: the tests' agents and controllers run with the tokens of its ServiceAccounts only.
async fn install_access(plane: &'static ControlPlane, namespace: &str) {
    let namespace = namespace.to_owned();
    tokio::task::spawn_blocking(move || {
        let cache = tempfile::tempdir().unwrap();
        support::k8s::install_vigil_access(plane, &namespace, cache.path());
    })
    .await
    .unwrap();
}

/// The real `vigil controller` against `plane` with the token of its ServiceAccount, its Lease in
/// `namespace`, its log under `dir`; returns the process and its HTTP port.
async fn start_controller(
    plane: &ControlPlane,
    namespace: &str,
    dir: &Path,
    extra: &[&str],
) -> (ControllerProcess, u16) {
    let port = support::agent::free_port();
    let kubeconfig = support::k8s::controller_kubeconfig(plane, namespace, dir).await;
    let log = std::fs::File::create(dir.join("controller.log")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["controller", "--listen", &format!("127.0.0.1:{port}"), "--namespace", namespace])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--lease-duration", "4s"])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    (ControllerProcess(child), port)
}

/// A `vigil controller` process, killed when dropped (a failed test must not leave a controller
/// that goes on reconciling every HealthCheck in the cluster).
struct ControllerProcess(std::process::Child);

impl std::ops::Deref for ControllerProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ControllerProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Tests that write vigil's objects to the real API server, or run agents or controllers, take
/// turns: the API server counts requests for the whole cluster (one test's writes would be
/// counted in another's steady state), and a controller reconciles every namespace.
static AGENTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The first Event of `events` with `reason`, if there is one now.
async fn first_event(
    events: &Api<k8s_openapi::api::events::v1::Event>,
    reason: &str,
) -> Option<k8s_openapi::api::events::v1::Event> {
    events
        .list(&Default::default())
        .await
        .ok()?
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some(reason))
}

/// The first Event of `events` with `reason`, waited for.
async fn event_with_reason(
    events: &Api<k8s_openapi::api::events::v1::Event>,
    reason: &str,
) -> k8s_openapi::api::events::v1::Event {
    eventually(&format!("an Event {reason}"), Duration::from_secs(20), || first_event(events, reason)).await
}

/// The agent in Kubernetes mode against the real API server: a pod on its node (its status set
/// by the test, as there is no kubelet) probed at its IP on the named port; the pod's
/// InstanceStatus in the pod's namespace, owned by the Pod; the node's Lease; writes only on
/// change; the InstanceStatus gone with the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_a_cluster_reports_its_pods_only_on_change() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Pod;
    use support::servers::HttpTarget;

    let _turn = AGENTS.lock().await;
    let (plane, namespace, client) = with_access("agent").await;
    // A node name of this test's own: the agent watches pods and lists InstanceStatus by node.
    let node = format!("{namespace}-n1");
    let target = HttpTarget::start().await;
    let port: u16 = target.address().rsplit(':').next().unwrap().parse().unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "nginx",
            "ports": [{"name": "http", "containerPort": port}]}]},
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let running =
        json!({"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}});
    pods.patch_status("web-1", &PatchParams::default(), &Patch::Merge(&running)).await.unwrap();

    let checks: Api<HealthCheck> = Api::namespaced(client.clone(), &namespace);
    let check: HealthCheck = serde_json::from_value(json!({
        "apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck",
        "metadata": {"name": "web"},
        "spec": {"target": {"pods": {"selector": {"matchLabels": {"app": "web"}}}},
                 "probe": {"http": {"path": "/health", "port": "http"}, "periodSeconds": 1}},
    }))
    .unwrap();
    checks.create(&PostParams::default(), &check).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let agent =
        start_agent(plane, &namespace, &node, &plane.kubeconfig(), dir.path(), &["--lease-renew", "2s"])
            .await;

    let statuses: Api<InstanceStatus> = Api::namespaced(client.clone(), &namespace);
    let check_status = |doc: &InstanceStatus| {
        doc.status.as_ref().and_then(|s| s.checks.first()).map(|c| c.status.as_str().to_owned())
    };
    let written = eventually("the pod's InstanceStatus is ok", Duration::from_secs(30), || async {
        statuses.get("pod-web-1").await.ok().filter(|d| check_status(d).as_deref() == Some("ok"))
    })
    .await;
    let owner = &written.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Pod", "web-1"));
    assert_eq!(Some(&owner.uid), pod.metadata.uid.as_ref());
    let labels = written.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("vigil.dev/node"), Some(&node));
    assert_eq!(written.spec.instance.id, format!("{namespace}.pod-web-1"));
    assert!(target.requests() > 0, "probed at the pod's IP on its named port");
    let managers: Vec<String> =
        written.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
    assert!(managers.iter().any(|m| m == "vigil-agent"), "{managers:?}");

    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let lease = eventually("the node's Lease", Duration::from_secs(10), || async {
        leases.get(&format!("vigil-agent-{node}")).await.ok()
    })
    .await;
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), Some(node.clone()));

    // Steady state: probes every second that agree with the last one write nothing.
    let before = plane.request_counts().await.unwrap();
    let probes_before = target.requests();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady = plane.request_counts().await.unwrap().since(&before);
    assert!(target.requests() >= probes_before + 3, "still probing");
    let writes = |c: &support::k8s::RequestCounts| {
        c.get("patch", "instancestatuses") + c.get("patch", "instancestatuses/status")
    };
    assert_eq!(writes(&steady), 0, "{:?}", steady.all());
    assert!(steady.get("patch", "leases") >= 1, "the Lease is renewed: {:?}", steady.all());

    // A failure: impaired after three failed probes, a handful of writes for it.
    target.set_status(503);
    eventually("the pod's InstanceStatus is impaired", Duration::from_secs(30), || async {
        statuses.get("pod-web-1").await.ok().filter(|d| check_status(d).as_deref() == Some("impaired"))
    })
    .await;
    // An Event for people, regarding the InstanceStatus and related to the Pod.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &namespace);
    let impaired = event_with_reason(&events, "CheckImpaired").await;
    let regarding = impaired.regarding.clone().unwrap_or_default();
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("InstanceStatus"), Some("pod-web-1"))
    );
    assert_eq!(regarding.uid, written.metadata.uid, "named by uid, so that kubectl describe finds it");
    let related = impaired.related.clone().unwrap_or_default();
    assert_eq!((related.kind.as_deref(), related.name.as_deref()), (Some("Pod"), Some("web-1")));
    assert_eq!(impaired.type_.as_deref(), Some("Warning"));
    assert!(impaired.note.as_deref().unwrap_or("").contains("ok → impaired"), "{:?}", impaired.note);
    assert_eq!(impaired.reporting_controller.as_deref(), Some("vigil.dev/agent"));
    let failing = plane.request_counts().await.unwrap().since(&before);
    let written = writes(&failing);
    assert!((1..=4).contains(&written), "{written} writes for one transition: {:?}", failing.all());

    // ReportInstanceStatus: the owner patches their verdict into spec.report. The API server
    // refuses an impaired one without a reason; a valid one is in status.reported and an Event,
    // the field stays the owner's (the agent's applies leave it alone), and removing it ends it.
    let refused = statuses
        .patch(
            "pod-web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"report": {"status": "impaired"}}})),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("an impaired report needs at least one reason"), "{refused}");
    let report = json!({"spec": {"report": {"status": "impaired", "reasons": ["unresponsive"],
        "description": "users see timeouts"}}});
    statuses
        .patch(
            "pod-web-1",
            &PatchParams { field_manager: Some("owner".to_owned()), ..Default::default() },
            &Patch::Merge(report),
        )
        .await
        .unwrap();
    let reported = eventually("status.reported is impaired", Duration::from_secs(20), || async {
        statuses.get("pod-web-1").await.ok().filter(|d| {
            d.status.as_ref().and_then(|s| s.reported) == Some(vigil::api::ReportedStatus::Impaired)
        })
    })
    .await;
    assert_eq!(check_status(&reported).as_deref(), Some("impaired"), "the checks are the checks");
    let report_owners: Vec<String> = reported
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.fields_v1.as_ref().is_some_and(|f| f.0["f:spec"].get("f:report").is_some()))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(report_owners, ["owner"], "only the owner manages spec.report");
    let event = event_with_reason(&events, "ReportedImpaired").await;
    assert!(
        event.note.as_deref().unwrap_or("").contains("(unresponsive): users see timeouts"),
        "{:?}",
        event.note
    );
    let metric = format!(
        "vigil_instance_reported_impaired{{instance_id=\"{namespace}.pod-web-1\",instance_kind=\"Pod\"}} 1"
    );
    assert!(metrics_of(agent.addr.port()).contains(&metric), "{metric}");
    statuses
        .patch("pod-web-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"report": null}})))
        .await
        .unwrap();
    let ended = eventually("the report no longer in force", Duration::from_secs(20), || async {
        statuses
            .get("pod-web-1")
            .await
            .ok()
            .filter(|d| d.status.as_ref().is_some_and(|s| s.reported.is_none()))
    })
    .await;
    assert_eq!(ended.spec.report, None, "the agent does not put the owner's report back");

    // The pod goes (at once: without a kubelet, a graceful deletion never completes), and so
    // does its InstanceStatus.
    let now = kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    pods.delete("web-1", &now).await.unwrap();
    eventually("the InstanceStatus goes with the pod", Duration::from_secs(90), || async {
        match statuses.get("pod-web-1").await {
            Err(kube::Error::Api(s)) if s.code == 404 => Some(()),
            _ => None,
        }
    })
    .await;
    drop(agent);
    plane.delete_namespace(&namespace).await.unwrap();
}

/// In a cluster an agent acts only on the controller's word: an impaired target with an `exec`
/// action is left alone until `status.remediationAllowed` is true (written here as the
/// controller would), and then acted on, with an Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_a_cluster_acts_only_when_the_controller_allows_it() {
    let _turn = AGENTS.lock().await;
    let (plane, namespace, client) = with_access("gate").await;
    let node = format!("{namespace}-n1");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("acted");
    let checks: Api<HealthCheck> = Api::namespaced(client.clone(), &namespace);
    let check: HealthCheck = serde_json::from_value(json!({
        "apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck",
        "metadata": {"name": "disk"},
        "spec": {"target": {"host": {}},
                 "probe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2},
                 "action": {"type": "exec", "exec": {"command": ["touch", marker.display().to_string()]},
                            "backoff": {"initialSeconds": 1}}},
    }))
    .unwrap();
    checks.create(&PostParams::default(), &check).await.unwrap();
    let agent =
        start_agent(plane, &namespace, &node, &plane.kubeconfig(), &dir.path().join("agent"), &[]).await;
    let statuses: Api<InstanceStatus> = Api::namespaced(client.clone(), &namespace);
    let host = format!("host-{node}");
    eventually("the host check is impaired", Duration::from_secs(30), || async {
        let doc = statuses.get(&host).await.ok()?;
        (doc.status?.checks.first()?.status == vigil::api::CheckStatus::Impaired).then_some(())
    })
    .await;
    // Impaired for several periods, and no verdict from the controller: nothing is done.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!marker.exists(), "acted without the controller's word\n{}", agent.logs());
    let patch = json!({"status": {"remediationAllowed": true, "unhealthy": 1}});
    checks.patch_status("disk", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    eventually("the action runs once allowed", Duration::from_secs(20), || async {
        marker.exists().then_some(())
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &namespace);
    eventually("an Event records the action", Duration::from_secs(20), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("ExecSucceeded")).map(|_| ())
    })
    .await;
    drop(agent);
    plane.delete_namespace(&namespace).await.unwrap();
}

/// The real `vigil controller` beside a real agent: it writes each HealthCheck's status across
/// the fleet — `remediationAllowed`, on which the agent then acts, the counts from every node's
/// InstanceStatus, and `Invalid` naming the field of a spec that cannot run — only when it
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_aggregates_the_fleet_and_allows_remediation() {
    let _turn = AGENTS.lock().await;
    let (plane, namespace, client) = with_access("ctrl").await;
    let node = format!("{namespace}-n1");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("acted");
    let checks: Api<HealthCheck> = Api::namespaced(client.clone(), &namespace);
    let failing: HealthCheck = serde_json::from_value(json!({
        "apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck",
        "metadata": {"name": "disk"},
        "spec": {"target": {"host": {}},
                 "probe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2},
                 "action": {"type": "exec", "exec": {"command": ["touch", marker.display().to_string()]}}},
    }))
    .unwrap();
    checks.create(&PostParams::default(), &failing).await.unwrap();
    let invalid: HealthCheck = serde_json::from_value(json!({
        "apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck",
        "metadata": {"name": "wrong"},
        "spec": {"target": {"host": {}}, "probe": {"docker": {}}},
    }))
    .unwrap();
    checks.create(&PostParams::default(), &invalid).await.unwrap();

    let (mut controller, port) = start_controller(plane, &namespace, dir.path(), &[]).await;
    let controller_log = || std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();
    eventually("the controller is ready", Duration::from_secs(30), || async {
        let (code, _) = tokio::task::block_in_place(|| {
            support::agent::request(format!("127.0.0.1:{port}").parse().unwrap(), "GET", "/readyz", &[])
        })
        .ok()?;
        (code == 200).then_some(())
    })
    .await;

    let agent =
        start_agent(plane, &namespace, &node, &plane.kubeconfig(), &dir.path().join("agent"), &[]).await;
    let wrong = eventually("the invalid HealthCheck says why", Duration::from_secs(30), || async {
        let status = checks.get("wrong").await.ok()?.status?;
        status.conditions.into_iter().find(|c| c.type_ == "Invalid" && c.status == "True")
    })
    .await;
    assert!(wrong.message.contains("spec.probe.docker"), "{}", wrong.message);
    eventually("the action runs once the controller allows it", Duration::from_secs(30), || async {
        marker.exists().then_some(())
    })
    .await;
    let status = checks.get("disk").await.unwrap().status.unwrap();
    assert_eq!(status.remediation_allowed, Some(true), "{status:?}");
    assert_eq!(status.targets, 1, "{status:?}");
    assert_eq!(status.observed_generation, Some(1));
    // Written only when it changes: a quiet spell writes nothing.
    eventually("the status settles", Duration::from_secs(30), || async {
        let before = plane.request_counts().await.ok()?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let quiet = plane.request_counts().await.ok()?.since(&before);
        (quiet.get("patch", "healthchecks/status") == 0).then_some(())
    })
    .await;
    let metrics = metrics_of(port);
    assert!(metrics.contains("vigil_controller_leader 1"), "{metrics}\n{}", controller_log());
    assert!(metrics.contains("vigil_controller_status_writes_total{result=\"ok\"}"), "{metrics}");
    let _ = controller.kill();
    let _ = controller.wait();
    drop(agent);
    plane.delete_namespace(&namespace).await.unwrap();
}

/// An agent that dies: after the grace period the controller marks the System check of its
/// node's instances impaired (`reachability`), with an Event; the agent back clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_unreachable_until_its_agent_returns() {
    let _turn = AGENTS.lock().await;
    let (plane, namespace, client) = with_access("loss").await;
    let node = format!("{namespace}-n1");
    let dir = tempfile::tempdir().unwrap();
    let (mut controller, _) = start_controller(plane, &namespace, dir.path(), &["--node-grace", "4s"]).await;
    let mut agent = start_agent(
        plane,
        &namespace,
        &node,
        &plane.kubeconfig(),
        &dir.path().join("agent"),
        &["--lease-renew", "1s"],
    )
    .await;
    let statuses: Api<InstanceStatus> = Api::namespaced(client.clone(), &namespace);
    let host = format!("host-{node}");
    let system = |doc: InstanceStatus| doc.status.map(|s| s.system_status);
    let reachability_failed = |s: &vigil::api::StatusSummary| {
        s.details.iter().any(|d| d.name == "reachability" && d.status == vigil::api::CheckStatus::Impaired)
    };
    eventually("the host's status is written", Duration::from_secs(30), || async {
        let s = system(statuses.get(&host).await.ok()?)?;
        (!reachability_failed(&s)).then_some(())
    })
    .await;
    agent.kill9();
    let marked = eventually("the silent node's host is unreachable", Duration::from_secs(30), || async {
        system(statuses.get(&host).await.ok()?).filter(reachability_failed)
    })
    .await;
    assert_eq!(marked.status, vigil::api::CheckStatus::Impaired);
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &namespace);
    eventually("an Event says the node is unreachable", Duration::from_secs(20), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("NodeUnreachable")).map(|_| ())
    })
    .await;
    tokio::task::block_in_place(|| agent.restart());
    let back = eventually("the agent back clears it", Duration::from_secs(30), || async {
        system(statuses.get(&host).await.ok()?).filter(|s| !reachability_failed(s))
    })
    .await;
    assert_ne!(back.status, vigil::api::CheckStatus::Impaired, "{back:?}");
    let _ = controller.kill();
    let _ = controller.wait();
    drop(agent);
    plane.delete_namespace(&namespace).await.unwrap();
}

/// The API server goes away for a while: the agent keeps probing (its own view turns impaired),
/// and when the server is back it writes the latest state of each instance once, not a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_rides_out_an_api_server_outage() {
    use support::agent::{Agent, check_of};
    use support::servers::HttpTarget;

    let _turn = AGENTS.lock().await;
    let (plane, namespace, client) = with_access("ride").await;
    let server = tokio::task::spawn_blocking(|| ControlPlane::shared().second_apiserver("ride"))
        .await
        .unwrap()
        .unwrap();
    let node = format!("{namespace}-n1");
    let target = HttpTarget::start().await;
    let address = target.address();
    let checks: Api<HealthCheck> = Api::namespaced(client.clone(), &namespace);
    let check: HealthCheck = serde_json::from_value(json!({
        "apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck",
        "metadata": {"name": "web"},
        "spec": {"target": {"endpoints": {"addresses": [address]}},
                 "probe": {"http": {"path": "/health"}, "periodSeconds": 1, "failureThreshold": 2}},
    }))
    .unwrap();
    checks.create(&PostParams::default(), &check).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent =
        start_agent(plane, &namespace, &node, &server.kubeconfig(), dir.path(), &["--lease-renew", "1s"])
            .await;
    let check_key = format!("{namespace}/web");
    let id = vigil::inventory::id_for(vigil::api::InstanceKind::Endpoint, &address, &node);
    let statuses: Api<InstanceStatus> = Api::namespaced(client.clone(), &namespace);
    let status_of =
        |doc: &InstanceStatus| doc.status.as_ref().and_then(|s| s.checks.first()).map(|c| c.status);
    eventually("written ok", Duration::from_secs(30), || async {
        statuses.get(&id).await.ok().filter(|d| status_of(d) == Some(vigil::api::CheckStatus::Ok))
    })
    .await;
    let writes = |agent: &Agent| -> u64 {
        let text = agent.get("/metrics").1;
        text.lines()
            .filter(|l| {
                l.starts_with("vigil_status_writes_total")
                    && l.contains("kind=\"instance\"")
                    && l.contains("result=\"ok\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };

    let server = tokio::task::spawn_blocking(move || {
        server.stop().unwrap();
        server
    })
    .await
    .unwrap();
    // Meanwhile: a failure, then a recovery, then a failure again — seen by the agent alone.
    target.set_status(503);
    tokio::task::block_in_place(|| agent.wait_status(&id, &check_key, "impaired", Duration::from_secs(20)));
    target.set_status(200);
    tokio::task::block_in_place(|| agent.wait_status(&id, &check_key, "ok", Duration::from_secs(20)));
    target.set_status(503);
    let local = tokio::task::block_in_place(|| {
        agent.wait_status(&id, &check_key, "impaired", Duration::from_secs(20))
    });
    let health = agent.json("/v1/health");
    assert_eq!(health["status"], "degraded", "the outage is reported: {health}");
    let before = writes(&agent);
    let server = tokio::task::spawn_blocking(move || {
        server.start().unwrap();
        server
    })
    .await
    .unwrap();
    let written = eventually("the latest state reaches the API server", Duration::from_secs(60), || async {
        statuses.get(&id).await.ok().filter(|d| status_of(d) == Some(vigil::api::CheckStatus::Impaired))
    })
    .await;
    let kept = check_of(&local, &check_key).unwrap()["impairedSince"].clone();
    let api_since =
        written.status.as_ref().unwrap().checks[0].impaired_since.as_ref().map(|t| t.0.to_string());
    assert_eq!(kept.as_str().map(str::to_owned), api_since, "the state the agent holds, not an older one");
    // One status write per instance (the endpoint, and the host, rewritten in case the
    // controller marked the node meanwhile), not one per transition.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = writes(&agent);
    assert!(after - before <= 2, "{} writes after the outage\n{}", after - before, agent.logs());
    assert!(after > before, "something was written");
    tokio::task::spawn_blocking(move || drop(server)).await.unwrap();
    drop(agent);
    plane.delete_namespace(&namespace).await.unwrap();
}

/// Two controllers: one leads and writes, the other waits; the leader killed, the other takes
/// over within the Lease duration and writes the next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_controller_takes_over_when_the_leader_dies() {
    let _turn = AGENTS.lock().await;
    let (plane, namespace, client) = with_access("leader").await;
    let dir = tempfile::tempdir().unwrap();
    let metric = |port: u16| -> Option<String> {
        metrics_of(port).lines().find(|l| l.starts_with("vigil_controller_leader ")).map(str::to_owned)
    };
    let (mut first, first_port) = start_controller(plane, &namespace, &dir.path().join("a"), &[]).await;
    eventually("the first controller leads", Duration::from_secs(30), || async {
        (metric(first_port).as_deref() == Some("vigil_controller_leader 1")).then_some(())
    })
    .await;
    let (mut second, second_port) = start_controller(plane, &namespace, &dir.path().join("b"), &[]).await;
    eventually("the second one is up, not leading", Duration::from_secs(30), || async {
        (metric(second_port).as_deref() == Some("vigil_controller_leader 0")).then_some(())
    })
    .await;
    let checks: Api<HealthCheck> = Api::namespaced(client.clone(), &namespace);
    let check = |name: &str| -> HealthCheck {
        serde_json::from_value(json!({
            "apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck",
            "metadata": {"name": name},
            "spec": {"target": {"host": {}}, "probe": {"tcp": {"port": 22}}},
        }))
        .unwrap()
    };
    checks.create(&PostParams::default(), &check("one")).await.unwrap();
    eventually("the leader writes its status", Duration::from_secs(30), || async {
        checks.get("one").await.ok()?.status.map(|_| ())
    })
    .await;
    let _ = first.kill();
    let _ = first.wait();
    eventually("the second takes over", Duration::from_secs(30), || async {
        (metric(second_port).as_deref() == Some("vigil_controller_leader 1")).then_some(())
    })
    .await;
    checks.create(&PostParams::default(), &check("two")).await.unwrap();
    eventually("the new leader writes the next status", Duration::from_secs(30), || async {
        checks.get("two").await.ok()?.status.map(|_| ())
    })
    .await;
    // Someone else takes the Lease: the controller stops writing at once.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), &namespace);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    let taken =
        json!({"spec": {"holderIdentity": "someone-else", "renewTime": now, "leaseDurationSeconds": 600}});
    leases.patch("vigil-controller", &PatchParams::default(), &Patch::Merge(&taken)).await.unwrap();
    eventually("the controller knows it no longer leads", Duration::from_secs(30), || async {
        (metric(second_port).as_deref() == Some("vigil_controller_leader 0")).then_some(())
    })
    .await;
    checks.create(&PostParams::default(), &check("three")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(checks.get("three").await.unwrap().status.is_none(), "a controller that lost the Lease wrote");
    let _ = second.kill();
    let _ = second.wait();
    plane.delete_namespace(&namespace).await.unwrap();
}

/// Creates pod `name` (label app=web) on `node`, Running and Ready at 127.0.0.1 with its named
/// port `http` at `port` (there is no kubelet: the test writes the status).
async fn running_pod(pods: &Api<k8s_openapi::api::core::v1::Pod>, name: &str, node: &str, port: u16) {
    let pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "nginx",
            "ports": [{"name": "http", "containerPort": port}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = json!({"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&running)).await.unwrap();
}

/// `evictPod` on the real API server: the leader evicts the failing pod through the Eviction
/// API; a PodDisruptionBudget that allows no disruption refuses it first (a Warning Event, a
/// retry with backoff), and once the budget allows one, the pod is evicted (a Normal Event);
/// the healthy pod is left alone and the agent never evicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_evicts_a_failing_pod_within_its_disruption_budget() {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use support::servers::HttpTarget;

    let _turn = AGENTS.lock().await;
    let (plane, namespace, client) = with_access("evict").await;
    let node = format!("{namespace}-n1");
    let (failing, healthy) = (HttpTarget::start().await, HttpTarget::start().await);
    let port = |t: &HttpTarget| -> u16 { t.address().rsplit(':').next().unwrap().parse().unwrap() };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    running_pod(&pods, "web-1", &node, port(&failing)).await;
    running_pod(&pods, "web-2", &node, port(&healthy)).await;
    // Both pods must stay up: no disruption allowed.
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
    let budget = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
    }))
    .unwrap();
    budgets.create(&PostParams::default(), &budget).await.unwrap();
    eventually("the disruption controller counts both pods", Duration::from_secs(30), || async {
        let status = budgets.get("web").await.ok()?.status?;
        (status.current_healthy == Some(2) && status.disruptions_allowed == Some(0)).then_some(())
    })
    .await;

    let checks: Api<HealthCheck> = Api::namespaced(client.clone(), &namespace);
    let check: HealthCheck = serde_json::from_value(json!({
        "apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck",
        "metadata": {"name": "web"},
        "spec": {"target": {"pods": {"selector": {"matchLabels": {"app": "web"}}}},
                 "probe": {"http": {"path": "/health", "port": "http"}, "periodSeconds": 1, "failureThreshold": 2},
                 "action": {"type": "evictPod", "maxRestarts": 3, "backoff": {"initialSeconds": 2}}},
    }))
    .unwrap();
    checks.create(&PostParams::default(), &check).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut controller, port) =
        start_controller(plane, &namespace, dir.path(), &["--eviction-interval", "1s"]).await;
    let agent =
        start_agent(plane, &namespace, &node, &plane.kubeconfig(), &dir.path().join("agent"), &[]).await;
    failing.set_status(503);

    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &namespace);
    let find = |reason: &'static str| first_event(&events, reason);
    let controller_log = || std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();
    let refused =
        eventually("the budget refuses the eviction", Duration::from_secs(60), || find("EvictionRefused"))
            .await;
    assert_eq!(refused.type_.as_deref(), Some("Warning"));
    let note = refused.note.clone().unwrap_or_default();
    assert!(note.contains("web-1") && note.contains("disruption budget"), "{note}");
    let regarding = refused.regarding.clone().unwrap_or_default();
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("InstanceStatus"), Some("pod-web-1"))
    );
    assert_eq!(refused.related.and_then(|r| r.name).as_deref(), Some("web-1"));
    assert_eq!(refused.reporting_controller.as_deref(), Some("vigil.dev/controller"));
    assert!(pods.get("web-1").await.unwrap().metadata.deletion_timestamp.is_none(), "refused means refused");
    // Refused again after the backoff: the same Event, as a series (as the kubelet aggregates).
    let repeated = eventually("the refusal repeats as a series", Duration::from_secs(30), || async {
        let refusals: Vec<_> = events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("EvictionRefused"))
            .collect();
        assert_eq!(refusals.len(), 1, "one Event object for the repeats: {refusals:?}");
        refusals.into_iter().next().filter(|e| e.series.as_ref().is_some_and(|s| s.count >= 2))
    })
    .await;
    assert!(repeated.series.is_some());

    // The budget allows one disruption: the retry evicts the failing pod, and only it.
    let allow = json!({"spec": {"minAvailable": 1}});
    budgets.patch("web", &PatchParams::default(), &Patch::Merge(&allow)).await.unwrap();
    let evicted =
        eventually("the failing pod is evicted", Duration::from_secs(60), || find("PodEvicted")).await;
    assert_eq!(evicted.type_.as_deref(), Some("Normal"));
    assert!(evicted.note.clone().unwrap_or_default().contains(&format!("HealthCheck {namespace}/web")));
    // Without a kubelet the pod stays terminating; it was evicted (not deleted outright) when the
    // budget counts the disruption.
    let terminating = pods.get("web-1").await.unwrap();
    assert!(
        terminating.metadata.deletion_timestamp.is_some(),
        "{:?}\n{}",
        terminating.metadata,
        controller_log()
    );
    assert!(pods.get("web-2").await.unwrap().metadata.deletion_timestamp.is_none());
    let metrics = metrics_of(port);
    let count = |outcome: &str| -> u64 {
        let series = format!("vigil_controller_evictions_total{{outcome=\"{outcome}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0, |v| v.trim().parse().unwrap())
    };
    assert_eq!(count("evicted"), 1, "{metrics}");
    assert!(count("refused") >= 1, "{metrics}");
    // Evicted once: a terminating pod is not evicted again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = metrics_of(port);
    assert!(again.contains("vigil_controller_evictions_total{outcome=\"evicted\"} 1"), "{again}");
    assert!(agent.logs().contains("evictPod is carried out by the controller"), "{}", agent.logs());
    controller.kill().unwrap();
    controller.wait().unwrap();
    drop(agent);
    plane.delete_namespace(&namespace).await.unwrap();
}

/// Garbage collection: the InstanceStatus of a node whose Node object is deleted and whose agent's
/// Lease expired goes; those of a node whose agent renews its Lease stay, Node object or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_collects_the_status_of_nodes_that_are_gone() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Node;

    let _turn = AGENTS.lock().await;
    let (plane, namespace, client) = with_access("gcn").await;
    let (gone, alive) = (format!("{namespace}-gone"), format!("{namespace}-alive"));
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": gone}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let statuses: Api<InstanceStatus> = Api::namespaced(client.clone(), &namespace);
    for n in [&gone, &alive] {
        let doc: InstanceStatus = serde_json::from_value(json!({
            "apiVersion": "vigil.dev/v1alpha1", "kind": "InstanceStatus",
            "metadata": {"name": format!("host-{n}"), "labels": {"vigil.dev/node": n}},
            "spec": {"instance": {"kind": "Host", "id": format!("host-{n}"), "name": n, "node": n}},
        }))
        .unwrap();
        statuses.create(&PostParams::default(), &doc).await.unwrap();
    }
    // The agents' Leases (written here as agents do): the live node's renewed just now, the
    // other's last renewed an hour ago.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    for (n, age) in [(&alive, 0), (&gone, 3600)] {
        let renewed = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(age);
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": format!("vigil-agent-{n}"), "labels": {"vigil.dev/node": n}},
            "spec": {"holderIdentity": n, "leaseDurationSeconds": 40,
                     "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
        }))
        .unwrap();
        leases.create(&PostParams::default(), &lease).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (_controller, port) =
        start_controller(plane, &namespace, dir.path(), &["--gc-after", "2s", "--node-grace", "4s"]).await;
    let collected = || {
        metrics_of(port)
            .lines()
            .find_map(|l| l.strip_prefix("vigil_controller_collected_total{result=\"ok\"} "))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    // Its Node stands: kept, however long its agent is silent.
    eventually("the controller leads", Duration::from_secs(30), || async {
        metrics_of(port).contains("vigil_controller_leader 1").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(statuses.get(&format!("host-{gone}")).await.is_ok(), "collected while its Node stands");
    // (The count is the cluster's: other tests' leftovers may be collected too.)
    let before = collected();
    nodes.delete(&gone, &Default::default()).await.unwrap();
    eventually("the gone node's InstanceStatus is collected", Duration::from_secs(30), || async {
        match statuses.get(&format!("host-{gone}")).await {
            Err(kube::Error::Api(s)) if s.code == 404 => Some(()),
            _ => None,
        }
    })
    .await;
    assert!(collected() > before);
    assert!(statuses.get(&format!("host-{alive}")).await.is_ok(), "a node whose agent renews stays");
    plane.delete_namespace(&namespace).await.unwrap();
}

/// In a cluster the agent's sensitive routes are judged by the API server: no token → 401, even
/// on loopback; a token it does not accept → 401; a ServiceAccount without the
/// `vigil-node-reader` role → 403 naming what it lacks; bound to it → 200. Public routes stay
/// open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_judges_who_reads_an_agents_sensitive_routes() {
    use support::agent::request;

    let _turn = AGENTS.lock().await;
    let (plane, namespace, client) = with_access("authz").await;
    let node = format!("{namespace}-n1");
    let dir = tempfile::tempdir().unwrap();
    let agent =
        start_agent(plane, &namespace, &node, &plane.kubeconfig(), &dir.path().join("agent"), &[]).await;
    let token = |name: &'static str| {
        let namespace = namespace.clone();
        async move { plane.token_for(&namespace, name, Default::default()).await.unwrap() }
    };
    let (stranger, reader) = (token("stranger").await, token("reader").await);
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{namespace}-reader")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{namespace}-vigil-node-reader")},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    }))
    .unwrap();
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client.clone());
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    let get = |path: &'static str, token: Option<String>| {
        let addr = agent.addr;
        tokio::task::block_in_place(move || {
            let header = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
            request(addr, "GET", path, &headers).unwrap()
        })
    };
    let (code, body) = get("/v1/host/config", None);
    assert_eq!(code, 401, "loopback is not trusted in a cluster: {body}");
    let (code, body) = get("/v1/host/config", Some("not-a-token".into()));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("does not accept this token"), "{body}");
    let (code, body) = get("/v1/host/config", Some(stranger.clone()));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(&format!(
            "system:serviceaccount:{namespace}:stranger may not get nodes/config of {node}"
        )),
        "{body}"
    );
    let allowed = eventually("the reader's binding takes effect", Duration::from_secs(20), || {
        let reader = reader.clone();
        async move {
            let (code, body) = get("/v1/host/config", Some(reader));
            (code == 200).then_some(body)
        }
    })
    .await;
    assert!(allowed.contains(&node), "{allowed}");
    // The logs route is judged on its own (the route exists; the container does not).
    let (code, body) = get("/api/v1/containers/none/logs?tail=1", Some(stranger));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("nodes/logs"), "{body}");
    let (code, _) = get("/api/v1/containers/none/logs?tail=1", Some(reader));
    assert_ne!(code, 403);
    // What is not sensitive needs nothing.
    assert_eq!(get("/v1/host/status", None).0, 200);
    bindings.delete(&format!("{namespace}-reader"), &Default::default()).await.unwrap();
    drop(agent);
    plane.delete_namespace(&namespace).await.unwrap();
}

/// Resident memory of a process, in MiB (from /proc).
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Writes by vigil to the API server in `counts`: InstanceStatus objects and status, HealthCheck
/// status, Events (Leases are counted apart).
fn vigil_writes(counts: &support::k8s::RequestCounts) -> u64 {
    let mut n = 0;
    for ((verb, resource), count) in counts.all() {
        let write = matches!(verb.as_str(), "create" | "patch" | "update" | "delete");
        let ours = resource.starts_with("instancestatuses")
            || resource.starts_with("healthchecks")
            || resource == "events";
        if write && ours {
            n += count;
        }
    }
    n
}

/// The fleet end to end on the real control plane: the real controller and three agents on kwok
/// Nodes n1–n3, each with 100 pods probed at their IPs, all with the tokens of their own
/// ServiceAccounts. `kubectl get` shows the tables, `kubectl describe` the Events. Healthy for
/// 60 s, the fleet writes only Leases; 100 pods failing at once cost one status write each, and
/// being a third of the fleet (above `maxUnhealthy` 10 %) nobody acts; an invalid HealthCheck
/// says which field; a killed agent's node turns unreachable and back. Prints the API writes and
/// the processes' memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_three_nodes_end_to_end() {
    use k8s_openapi::api::core::v1::{Node, Pod};
    use support::agent::Agent;
    use support::servers::HttpTarget;

    const PODS: usize = 100;
    let _turn = AGENTS.lock().await;
    let (plane, namespace, client) = with_access("fleet").await;
    let nodes_api: Api<Node> = Api::all(client.clone());
    let names: Vec<String> = (1..=3).map(|i| format!("{namespace}-n{i}")).collect();
    for name in &names {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"vigil.test/fleet": namespace, "topology.kubernetes.io/zone": "a"}},
        }))
        .unwrap();
        nodes_api.create(&PostParams::default(), &node).await.unwrap();
    }
    let targets = [HttpTarget::start().await, HttpTarget::start().await, HttpTarget::start().await];
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    for (n, name) in names.iter().enumerate() {
        let port: u16 = targets[n].address().rsplit(':').next().unwrap().parse().unwrap();
        let creations = (0..PODS).map(|j| {
            let pods = pods.clone();
            let (name, pod) = (name.clone(), format!("web-{}-{j}", n + 1));
            async move { running_pod(&pods, &pod, &name, port).await }
        });
        futures_util::future::join_all(creations).await;
    }
    eventually("kwok makes the three Nodes Ready", Duration::from_secs(60), || async {
        let ready = nodes_api
            .list(&kube::api::ListParams::default().labels(&format!("vigil.test/fleet={namespace}")))
            .await
            .ok()?
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == 3).then_some(())
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let acted = dir.path().join("acted");
    std::fs::create_dir_all(&acted).unwrap();
    let checks: Api<HealthCheck> = Api::namespaced(client.clone(), &namespace);
    let web: HealthCheck = serde_json::from_value(json!({
        "apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck",
        "metadata": {"name": "web"},
        "spec": {"target": {"pods": {"selector": {"matchLabels": {"app": "web"}}}},
                 "nodeSelector": {"matchLabels": {"topology.kubernetes.io/zone": "a"}},
                 "probe": {"http": {"path": "/health", "port": "http"}, "periodSeconds": 1, "failureThreshold": 2},
                 "action": {"type": "exec", "maxUnhealthy": "10%",
                            "exec": {"command": ["sh", "-c", format!("touch {}/$VIGIL_INSTANCE_NAME", acted.display())]}}},
    }))
    .unwrap();
    checks.create(&PostParams::default(), &web).await.unwrap();
    // Selects no node (its nodeSelector matches none): no InstanceStatus anywhere.
    let elsewhere: HealthCheck = serde_json::from_value(json!({
        "apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck",
        "metadata": {"name": "elsewhere"},
        "spec": {"target": {"pods": {"selector": {"matchLabels": {"app": "web"}}}},
                 "nodeSelector": {"matchLabels": {"topology.kubernetes.io/zone": "b"}},
                 "probe": {"tcp": {"port": "http"}}},
    }))
    .unwrap();
    checks.create(&PostParams::default(), &elsewhere).await.unwrap();
    let invalid: HealthCheck = serde_json::from_value(json!({
        "apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck",
        "metadata": {"name": "wrong"},
        "spec": {"target": {"host": {}}, "probe": {"http": {"port": 70000}}},
    }))
    .unwrap();
    if let Err(e) = checks.create(&PostParams::default(), &invalid).await {
        // The schema may refuse it outright; then it never reaches the controller.
        panic!("the API server refused the invalid HealthCheck itself: {e}");
    }

    let (controller, controller_port) =
        start_controller(plane, &namespace, dir.path(), &["--node-grace", "20s"]).await;
    let mut agents = Vec::new();
    for name in &names {
        let base = plane.kubeconfig();
        agents.push(
            start_agent(plane, &namespace, name, &base, &dir.path().join(name), &["--lease-renew", "2s"])
                .await,
        );
    }
    let status_of = |name: &'static str| {
        let checks = checks.clone();
        async move { checks.get(name).await.ok()?.status }
    };
    let all = PODS as u32 * 3;
    eventually("the controller counts 300 healthy pods", Duration::from_secs(90), || async {
        let s = status_of("web").await?;
        (s.targets == all && s.healthy == all).then_some(())
    })
    .await;
    let wrong = eventually("the invalid HealthCheck says why", Duration::from_secs(30), || async {
        let s = status_of("wrong").await?;
        s.conditions.into_iter().find(|c| c.type_ == "Invalid" && c.status == "True")
    })
    .await;
    assert!(wrong.message.contains("spec.probe.http.port"), "{}", wrong.message);
    let web_status = status_of("web").await.unwrap();
    assert_eq!(web_status.remediation_allowed, Some(true));
    assert_eq!(status_of("elsewhere").await.map(|s| s.targets), Some(0), "no node takes part");

    // What a user sees.
    let cache = dir.path().join("kubectl");
    let kubectl = Kubectl::new(&plane.kubeconfig(), &cache);
    let table = tokio::task::block_in_place(|| kubectl.ok(&["get", "ist", "-A", "-l", "vigil.dev/kind=Pod"]));
    let mut lines = table.lines();
    assert_eq!(
        words(lines.next().unwrap()),
        ["NAMESPACE", "NAME", "NODE", "KIND", "STATE", "SYSTEM", "INSTANCE", "VOLUMES", "AGE"],
        "{table}"
    );
    let ours: Vec<Vec<&str>> = lines.map(words).filter(|w| w[0] == namespace).collect();
    assert_eq!(ours.len(), 3 * PODS, "{table}");
    let row = ours.iter().find(|w| w[1] == "pod-web-1-0").unwrap();
    assert_eq!(&row[2..8], [names[0].as_str(), "Pod", "running", "ok", "ok", "not-applicable"], "{table}");
    let checks_table = tokio::task::block_in_place(|| kubectl.ok(&["get", "vhc", "-n", &namespace, "web"]));
    let line = checks_table.lines().nth(1).unwrap();
    assert_eq!(&words(line)[..6], ["web", "pods", "http", "300", "300", "0"], "{checks_table}");

    // Healthy for a minute: nothing but Leases written.
    let memory = |agents: &[Agent]| -> Vec<f64> { agents.iter().map(|a| rss_mib(a.pid())).collect() };
    let before = plane.request_counts().await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let steady = plane.request_counts().await.unwrap().since(&before);
    let lease_writes = steady.get("patch", "leases") + steady.get("update", "leases");
    eprintln!(
        "measured: steady state 3 agents x {PODS} pods, 60 s: {} vigil writes, {lease_writes} Lease writes \
         (vigil's and kwok's node leases: {:.2}/s); agents RSS {:?} MiB, controller RSS {:.1} MiB with {} InstanceStatus",
        vigil_writes(&steady),
        lease_writes as f64 / 60.0,
        memory(&agents).iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>(),
        rss_mib(controller.id()),
        3 * PODS + 3,
    );
    assert_eq!(vigil_writes(&steady), 0, "{:?}", steady.all());
    assert!(lease_writes >= 3 * 4, "the agents renew their Leases: {:?}", steady.all());

    // A hundred pods fail at once: a third of the fleet, above maxUnhealthy.
    let before = plane.request_counts().await.unwrap();
    let started = std::time::Instant::now();
    targets[0].set_status(503);
    eventually("the controller counts 100 unhealthy", Duration::from_secs(60), || async {
        let s = status_of("web").await?;
        (s.unhealthy == PODS as u32 && s.remediation_allowed == Some(false)).then_some(())
    })
    .await;
    let settled = started.elapsed();
    // Let the stragglers land, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let burst = plane.request_counts().await.unwrap().since(&before);
    let status_writes = burst.get("patch", "instancestatuses/status");
    eprintln!(
        "measured: burst of {PODS} failures: {status_writes} InstanceStatus writes, {} Event writes, {} HealthCheck \
         status writes, {} vigil writes in all over {:.1} s to settle",
        burst.get("create", "events") + burst.get("patch", "events"),
        burst.get("patch", "healthchecks/status"),
        vigil_writes(&burst),
        settled.as_secs_f64(),
    );
    assert!(
        (PODS as u64..=2 * PODS as u64).contains(&status_writes),
        "one status write per failing pod (coalesced): {:?}",
        burst.all()
    );
    let degraded = status_of("web").await.unwrap();
    assert!(degraded.conditions.iter().any(|c| c.type_ == "Degraded" && c.status == "True"), "{degraded:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let taken: Vec<_> = std::fs::read_dir(&acted).unwrap().collect();
    assert!(taken.is_empty(), "a mass failure is not 100 workload problems: acted on {}", taken.len());
    let described =
        tokio::task::block_in_place(|| kubectl.ok(&["describe", "ist", "-n", &namespace, "pod-web-1-0"]));
    assert!(described.contains("CheckImpaired"), "{described}");
    targets[0].set_status(200);
    eventually("all healthy again", Duration::from_secs(60), || async {
        let s = status_of("web").await?;
        (s.healthy == all).then_some(())
    })
    .await;

    // An agent killed: its node's instances are unreachable after the grace, and back after.
    let statuses: Api<InstanceStatus> = Api::namespaced(client.clone(), &namespace);
    let reachability = |name: String| {
        let statuses = statuses.clone();
        async move {
            let doc = statuses.get(&name).await.ok()?;
            let system = doc.status?.system_status;
            Some(
                system
                    .details
                    .iter()
                    .any(|d| d.name == "reachability" && d.status == vigil::api::CheckStatus::Impaired),
            )
        }
    };
    agents[2].kill9();
    let host3 = format!("host-{}", names[2]);
    eventually("n3's instances are unreachable", Duration::from_secs(60), || async {
        (reachability(host3.clone()).await? && reachability("pod-web-3-7".into()).await?).then_some(())
    })
    .await;
    tokio::task::block_in_place(|| agents[2].restart());
    eventually("n3 is reachable again", Duration::from_secs(60), || async {
        (!reachability(host3.clone()).await? && !reachability("pod-web-3-7".into()).await?).then_some(())
    })
    .await;
    let metrics = tokio::task::block_in_place(|| {
        support::agent::request(
            format!("127.0.0.1:{controller_port}").parse().unwrap(),
            "GET",
            "/metrics",
            &[],
        )
    })
    .unwrap()
    .1;
    assert!(metrics.contains("vigil_controller_leader 1"), "{metrics}");
    drop(agents);
    drop(controller);
    for name in &names {
        nodes_api.delete(name, &Default::default()).await.unwrap();
    }
    plane.delete_namespace(&namespace).await.unwrap();
}

/// A real Prometheus (Debian's) scrapes a real agent and controller with the chart's scrape
/// settings (the ServiceMonitor's job names, `honorLabels` and the `node` label, as a static
/// configuration; a 1 s interval instead of 30 s), loads the chart's alert rules, and answers every
/// query of the dashboard and every series an alert rule selects: the dashboard and the alerts
/// use only what vigil exports, with the labels it exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_vigil_and_every_dashboard_and_alert_query_answers() {
    use k8s_openapi::api::coordination::v1::Lease;
    use serde_json::Value;
    use support::servers::HttpTarget;

    let _turn = AGENTS.lock().await;
    let (plane, namespace, client) = with_access("prom").await;
    let node = format!("{namespace}-n1");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("acted");
    let web = HttpTarget::start().await;
    let checks: Api<HealthCheck> = Api::namespaced(client.clone(), &namespace);
    for check in [
        json!({"apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck", "metadata": {"name": "web"},
               "spec": {"target": {"endpoints": {"addresses": [web.address()]}},
                        "probe": {"http": {"path": "/"}, "periodSeconds": 1}}}),
        json!({"apiVersion": "vigil.dev/v1alpha1", "kind": "HealthCheck", "metadata": {"name": "disk"},
               "spec": {"target": {"host": {}},
                        "probe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1},
                        "action": {"type": "exec", "exec": {"command": ["touch", marker.display().to_string()]},
                                   "backoff": {"initialSeconds": 1}}}}),
    ] {
        let check: HealthCheck = serde_json::from_value(check).unwrap();
        checks.create(&PostParams::default(), &check).await.unwrap();
    }
    // A node whose agent fell silent long ago: its Lease, not renewed for ten minutes.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let stale = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(600);
    let ghost: Lease = serde_json::from_value(json!({
        "metadata": {"name": format!("vigil-agent-{namespace}-ghost"), "labels": {"vigil.dev/node": format!("{namespace}-ghost")}},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 40, "renewTime": stale.to_string()},
    }))
    .unwrap();
    leases.create(&PostParams::default(), &ghost).await.unwrap();
    let (_controller, controller_port) = start_controller(plane, &namespace, dir.path(), &[]).await;
    let agent =
        start_agent(plane, &namespace, &node, &plane.kubeconfig(), &dir.path().join("agent"), &[]).await;
    eventually("the exec action ran", Duration::from_secs(60), || async { marker.exists().then_some(()) })
        .await;

    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prometheus_dir).unwrap();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/vigil/files/alerts.yaml");
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: [{rules}]\n\
         scrape_configs:\n\
         - job_name: vigil-agent\n  honor_labels: true\n  metrics_path: /metrics\n  static_configs:\n  - targets: ['{agent}']\n    labels: {{node: {node}}}\n\
         - job_name: vigil-controller\n  honor_labels: true\n  metrics_path: /metrics\n  static_configs:\n  - targets: ['127.0.0.1:{controller_port}']\n",
        rules = rules.display(),
        agent = agent.addr,
    );
    std::fs::write(prometheus_dir.join("prometheus.yml"), config).unwrap();
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin");
    let port = support::agent::free_port();
    let log = std::fs::File::create(prometheus_dir.join("prometheus.log")).unwrap();
    let child = std::process::Command::new(tools.join("prometheus"))
        .arg(format!("--config.file={}", prometheus_dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", prometheus_dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("prometheus: {e} (tests/fixtures/tools.sh extracts it)"));
    let _prometheus = ControllerProcess(child);
    let server = format!("http://127.0.0.1:{port}");
    let query = |expr: String| {
        let (tools, server) = (tools.clone(), server.clone());
        async move {
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(tools.join("promtool"))
                    .args(["query", "instant", "-o", "json", &server, &expr])
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            if !out.status.success() {
                return None;
            }
            let result: Value = serde_json::from_slice(&out.stdout).ok()?;
            result.as_array().filter(|r| !r.is_empty()).cloned()
        }
    };
    let prometheus_log =
        || std::fs::read_to_string(prometheus_dir.join("prometheus.log")).unwrap_or_default();
    eventually("Prometheus scrapes both", Duration::from_secs(60), || {
        query("count(up == 1) == 2".to_owned())
    })
    .await;
    // Rates over two scrapes and more, and the controller's view of the ghost.
    eventually("the controller reports the silent node", Duration::from_secs(30), || {
        query(format!("vigil_controller_silent_agent{{node=\"{namespace}-ghost\"}}"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rules_loaded = query("count(ALERTS) or vector(0)".to_owned()).await;
    assert!(rules_loaded.is_some(), "{}", prometheus_log());

    // The dashboard: every query answers, its variables set to "all".
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/vigil/files/dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        ("definition", Value::String(e)) if e.starts_with("label_values(") => {
                            out.push(e.clone())
                        }
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut failed = Vec::new();
    for expr in &exprs {
        // Grafana's label_values(selector, label): the selector must have series with the label.
        let promql = match expr.strip_prefix("label_values(").and_then(|e| e.strip_suffix(')')) {
            Some(inner) => {
                let (selector, label) = inner.rsplit_once(',').unwrap();
                format!("count by ({label}) ({selector})")
            }
            None => expr.clone(),
        };
        let promql = promql.replace("$node", ".*").replace("$namespace", ".*").replace("$healthcheck", ".*");
        if query(promql.clone()).await.is_none() {
            failed.push(promql);
        }
    }
    assert!(failed.is_empty(), "dashboard queries without data:\n{}", failed.join("\n"));

    // The alert rules: every series each selects exists (the conditions themselves are not met
    // here; tests/alerts/ tests when they fire).
    let alerts: Value = serde_saphyr::from_str(&std::fs::read_to_string(&rules).unwrap()).unwrap();
    let mut selected = Vec::new();
    for group in alerts["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            for s in selectors(rule["expr"].as_str().unwrap()) {
                selected.push((rule["alert"].as_str().unwrap().to_owned(), s));
            }
        }
    }
    assert!(selected.len() >= 8, "{selected:?}");
    for (alert, s) in &selected {
        if query(format!("count({s})")).await.is_none() {
            failed.push(format!("{alert}: {s}"));
        }
    }
    assert!(failed.is_empty(), "alert rules selecting nothing:\n{}", failed.join("\n"));
    // Every metric name the dashboard and the rules use is one vigil exports.
    let exported = format!("{}{}", agent.get("/metrics").1, metrics_of(controller_port));
    for expr in exprs.iter().chain(selected.iter().map(|(_, s)| s)) {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&format!("# TYPE {name} ")) || name == "up",
                "{name} (in {expr}) is not exported"
            );
        }
    }
    drop(agent);
}

/// The vector selectors of a PromQL expression (`name` or `name{…}`), function names left out.
fn selectors(expr: &str) -> Vec<String> {
    let bytes: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_') {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let next = bytes.get(i).copied();
            let is_metric = word.starts_with("vigil_") || word.starts_with("process_") || word == "up";
            if is_metric {
                if next == Some('{') {
                    let end = bytes[i..].iter().position(|&c| c == '}').unwrap() + i;
                    out.push(bytes[start..=end].iter().collect());
                    i = end + 1;
                } else {
                    out.push(word);
                }
            }
        } else if c == '"' {
            // Skip strings: label values are not selectors.
            i += 1;
            while i < bytes.len() && bytes[i] != '"' {
                i += 1;
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

/// The metric names of a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    selectors(expr)
        .into_iter()
        .map(|s| {
            let name = s.split('{').next().unwrap().to_owned();
            // A histogram's series are exported as name_bucket, name_sum and name_count.
            name.strip_suffix("_bucket").map(str::to_owned).unwrap_or(name)
        })
        .collect()
}
