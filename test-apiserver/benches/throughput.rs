//! What the stand-in costs per request through the in-process face, so that tests that lean on it
//! (thousands of InstanceStatus writes) know what to expect: `cargo bench -p vigil-test-apiserver`.
//! Prints figures; asserts nothing about time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::StreamExt;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::json;
use vigil_test_apiserver::ApiServer;

const N: usize = 5_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = ApiServer::new();
    let client = server.client();
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.dev"},
        "spec": {"group": "example.dev", "scope": "Namespaced", "names": {"plural": "things", "kind": "Thing"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"node": {"type": "string"}, "kind": {"type": "string", "enum": ["Pod", "VM"]}}},
                    "status": {"type": "object", "properties": {"state": {"type": "string"}, "failures": {"type": "integer", "minimum": 0}}}}}}}]}});
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    crds.create(&PostParams::default(), &serde_json::from_value(crd).unwrap()).await.unwrap();
    let things: Api<DynamicObject> = Api::namespaced_with(
        client,
        "default",
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.dev", "v1", "Thing"), "things"),
    );

    // One watcher, as a controller would have, counting what it is sent.
    let watching = things.clone();
    let events = Arc::new(AtomicUsize::new(0));
    let seen = events.clone();
    let watcher = tokio::spawn(async move {
        let mut stream = watching.watch(&kube::api::WatchParams::default(), "0").await.unwrap().boxed();
        while let Some(Ok(_)) = stream.next().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });

    let report = |what: &str, started: Instant, n: usize| {
        let total = started.elapsed();
        println!(
            "{what:<28} {n:>6} in {:>7.1} ms = {:>6.1} µs each",
            total.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e6 / n as f64
        );
    };
    let started = Instant::now();
    for i in 0..N {
        let thing = json!({"apiVersion": "example.dev/v1", "kind": "Thing", "metadata": {"name": format!("t-{i}")}, "spec": {"node": format!("node-{}", i % 50), "kind": "Pod"}});
        things.create(&PostParams::default(), &serde_json::from_value(thing).unwrap()).await.unwrap();
    }
    report("create", started, N);

    let started = Instant::now();
    for i in 0..N {
        let status = json!({"status": {"state": "running", "failures": 1}});
        things
            .patch_status(&format!("t-{i}"), &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    report("merge patch /status", started, N);

    // The same configuration twice: the second round changes nothing.
    for round in ["server-side apply /status", "no-op apply /status"] {
        let started = Instant::now();
        for i in 0..N {
            let status = json!({"apiVersion": "example.dev/v1", "kind": "Thing", "status": {"state": "running", "failures": 2}});
            things
                .patch_status(&format!("t-{i}"), &PatchParams::apply("agent").force(), &Patch::Apply(&status))
                .await
                .unwrap();
        }
        report(round, started, N);
    }

    // Let the watcher drain, then stop it.
    let mut last = usize::MAX;
    while events.load(Ordering::SeqCst) != last {
        last = events.load(Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    watcher.abort();
    println!(
        "watch events delivered: {last} (expected {}: a create and two real status writes per object, none for the no-op applies)",
        3 * N
    );

    let started = Instant::now();
    let request =
        http::Request::get("/apis/example.dev/v1/namespaces/default/things").body(Vec::new()).unwrap();
    let text = server.client().request_text(request).await.unwrap();
    report("list, as text", started, 1);
    println!("list size: {} bytes", text.len());
    let started = Instant::now();
    let list = things.list(&ListParams::default()).await.unwrap();
    report("list (one request)", started, 1);
    assert_eq!(list.items.len(), N);
    println!("requests counted: {}", server.request_counts().values().sum::<u64>());
}
