//! The fidelity suite: each test is a behaviour of the real API server that the project's
//! controller and agent rely on, written once and run twice — against the stand-in's in-process
//! face (`stand_in::…`) and against the real kube-apiserver of the tests (`real::…`, see
//! `tests/fixtures/k8s.sh`), with the same requests a client sends. A test that passes on one and
//! fails on the other is a divergence (the README lists the ones found and what was done).
//!
//! The real server is eventually consistent where the stand-in acts at once (garbage collection,
//! namespace deletion, CRD establishment, RBAC caches, PodDisruptionBudget status): those steps
//! wait for the outcome with [`eventually`], which holds both to the same end state. What only the
//! stand-in can do (faults on demand, forgetting history, bookmarks every 100 ms) is tested at the
//! end, on the stand-in alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![recursion_limit = "256"]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use vigil_test_apiserver::control_plane::{self, ControlPlane};
use vigil_test_apiserver::{ApiServer, Config, Fault, Rule, User};

const GROUP: &str = "example.dev";

/// A CRD of `group` with what the schema rules exercise: required, enum, bounds, a default, a CEL
/// rule, a list-map, a status subresource and printer columns.
fn widget_crd(group: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wg"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Color", "type": "string", "jsonPath": ".spec.color", "priority": 1},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["size"],
                            "x-kubernetes-validations": [{"rule": "self.size <= self.max", "message": "size must not exceed max"}],
                            "properties": {
                                "size": {"type": "integer", "minimum": 1, "maximum": 100},
                                "max": {"type": "integer", "default": 10},
                                "color": {"type": "string", "enum": ["red", "blue"]},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                "ports": {
                                    "type": "array",
                                    "x-kubernetes-list-type": "map",
                                    "x-kubernetes-list-map-keys": ["name"],
                                    "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}},
                                },
                            },
                        },
                        "status": {
                            "type": "object",
                            "properties": {
                                "observed": {"type": "integer"},
                                "conditions": {"type": "array", "items": {"type": "object", "properties": {"type": {"type": "string"}, "status": {"type": "string"}}}},
                            },
                        },
                    },
                }},
            }],
        },
    })
}

fn widget(name: &str, size: i64) -> Value {
    json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": size}})
}

/// Which server a test talks to.
enum Backend {
    StandIn(ApiServer),
    Real(&'static ControlPlane),
}

/// One test's view of a server: a client, and a namespace of its own on the real one (tests
/// share that server and run in parallel).
struct Api {
    backend: Backend,
    client: kube::Client,
    ns: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// Waits for `check` for up to 90 s (the real garbage collector notices a new kind within its
/// 30 s discovery resync); on the stand-in the first try is expected to succeed.
async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    control_plane::eventually(what, Duration::from_secs(90), check).await
}

impl Api {
    async fn stand_in() -> Self {
        Self::stand_in_with(Config::default()).await
    }

    async fn stand_in_with(config: Config) -> Self {
        let server = ApiServer::with_config(config);
        let client = server.client();
        let api = Api { backend: Backend::StandIn(server), client, ns: "default".into() };
        api.install_crd(GROUP).await;
        api
    }

    async fn real() -> Self {
        let plane = tokio::task::spawn_blocking(ControlPlane::shared).await.unwrap();
        let client = plane.client().await.unwrap();
        let ns = plane.namespace("fidelity").await.unwrap();
        let api = Api { backend: Backend::Real(plane), client, ns };
        api.install_crd(GROUP).await;
        api
    }

    fn server(&self) -> &ApiServer {
        match &self.backend {
            Backend::StandIn(server) => server,
            Backend::Real(_) => panic!("a stand-in-only test ran against the real server"),
        }
    }

    fn is_real(&self) -> bool {
        matches!(self.backend, Backend::Real(_))
    }

    /// Creates the widget CRD of `group` (kept if it exists) and waits until its kind is served.
    async fn install_crd(&self, group: &str) {
        let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
        let created = self.call(Method::POST, crds, "", &widget_crd(group)).await;
        assert!(
            created.status == StatusCode::CREATED || created.status == StatusCode::CONFLICT,
            "{}",
            created.body
        );
        let list = format!("/apis/{group}/v1/namespaces/{}/widgets", self.ns);
        eventually("the widget kind is served", || async {
            (self.get(&list).await.status == StatusCode::OK).then_some(())
        })
        .await;
    }

    /// The widgets of this test's namespace.
    fn widgets(&self) -> String {
        format!("/apis/{GROUP}/v1/namespaces/{}/widgets", self.ns)
    }

    fn path_of(&self, name: &str) -> String {
        format!("{}/{name}", self.widgets())
    }

    /// A namespaced path of a built-in kind in this test's namespace (`pods`, `events`, ...).
    fn core(&self, resource: &str) -> String {
        format!("/api/v1/namespaces/{}/{resource}", self.ns)
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<http::Response<kube::client::Body>, kube::Error> {
        let content_type = if content_type.is_empty() { "application/json" } else { content_type };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .body(body.to_vec())
            .unwrap();
        self.client.send(request.map(kube::client::Body::from)).await
    }

    async fn call(&self, method: Method, path: &str, content_type: &str, body: &Value) -> Answer {
        let bytes = if body.is_null() { Bytes::new() } else { Bytes::from(body.to_string()) };
        let response = self.raw(method, path, content_type, bytes).await.expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, headers, body }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, "", &Value::Null).await
    }

    async fn create(&self, object: &Value) -> Value {
        let a = self.call(Method::POST, &self.widgets(), "", object).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.body
    }

    async fn merge(&self, path: &str, patch: Value) -> Answer {
        self.call(Method::PATCH, path, "application/merge-patch+json", &patch).await
    }

    async fn apply(&self, path: &str, manager: &str, force: bool, config: Value) -> Answer {
        let path = format!("{path}?fieldManager={manager}&force={force}");
        self.call(Method::PATCH, &path, "application/apply-patch+yaml", &config).await
    }

    async fn watch_path(&self, path: &str) -> Watch {
        let response = self.raw(Method::GET, path, "", Bytes::new()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Watch { body: response.into_body(), buffer: Vec::new() }
    }

    async fn watch(&self, query: &str) -> Watch {
        self.watch_path(&format!("{}?watch=true&{query}", self.widgets())).await
    }

    /// Waits until `path` answers 404.
    async fn gone(&self, path: &str) {
        eventually(&format!("{path} deleted"), || async {
            (self.get(path).await.status == StatusCode::NOT_FOUND).then_some(())
        })
        .await;
    }
}

/// The lines of a watch.
struct Watch {
    body: kube::client::Body,
    buffer: Vec<u8>,
}

impl Watch {
    /// The next event, or None when nothing comes within `wait` (or the watch ended).
    async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await.ok()??.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }

    async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(5)).await.expect("a watch event within 5 s")
    }

    /// The next event that is not a bookmark.
    async fn next_change(&mut self) -> Value {
        loop {
            let e = self.next().await;
            if e["type"] != "BOOKMARK" {
                return e;
            }
        }
    }
}

fn rv(object: &Value) -> String {
    object["metadata"]["resourceVersion"].as_str().unwrap().to_owned()
}

/// Each test written once, run against both servers.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod stand_in {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Api::stand_in().await).await
                }
            )*
        }
        mod real {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Api::real().await).await
                }
            )*
        }
    };
}

on_both!(
    a_put_with_a_stale_resource_version_is_refused_with_409,
    status_and_spec_writes_are_isolated_and_only_spec_bumps_generation,
    a_write_that_changes_nothing_emits_no_event_and_keeps_the_resource_version,
    server_side_apply_tracks_owners_per_field_and_refuses_conflicts_unless_forced,
    apply_merges_list_maps_by_key,
    watches_resume_from_a_resource_version_in_order_and_get_410_when_it_is_gone,
    streaming_watches_end_their_initial_events_with_a_bookmark_and_filter_by_selector,
    finalizers_hold_deletion_until_they_are_removed,
    owned_objects_are_garbage_collected_unless_orphaned,
    objects_are_validated_pruned_and_defaulted_against_the_schema,
    discovery_follows_crds_and_deleting_a_crd_deletes_its_objects,
    lists_select_by_label_and_field_and_page,
    eviction_respects_pod_disruption_budgets,
    token_and_access_reviews_follow_the_granted_rules,
    tables_carry_the_printer_columns,
    events_have_two_faces_over_one_store,
    deleting_a_namespace_deletes_what_it_holds,
    patches_come_in_json_merge_and_strategic_flavours,
    typed_clients_renew_leases_and_stream_lists,
    subresources_take_only_their_verbs_and_a_watch_on_a_name_sees_that_object,
);

async fn a_put_with_a_stale_resource_version_is_refused_with_409(api: Api) {
    let first = api.create(&widget("w", 1)).await;
    let mut stale = first.clone();
    let moved = api.merge(&api.path_of("w"), json!({"spec": {"size": 2}})).await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_ne!(rv(&moved.body), rv(&first), "a write gets a new resourceVersion");
    stale["spec"]["size"] = json!(3);
    let refused = api.call(Method::PUT, &api.path_of("w"), "", &stale).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.body["reason"], "Conflict");
    assert_eq!(
        refused.body["message"],
        "Operation cannot be fulfilled on widgets.example.dev \"w\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let mut fresh = moved.body.clone();
    fresh["spec"]["size"] = json!(3);
    let accepted = api.call(Method::PUT, &api.path_of("w"), "", &fresh).await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.body);
    assert_eq!(accepted.body["spec"]["size"], 3);
}

async fn status_and_spec_writes_are_isolated_and_only_spec_bumps_generation(api: Api) {
    let mut with_status = widget("w", 1);
    with_status["status"] = json!({"observed": 7});
    let created = api.create(&with_status).await;
    assert!(created.get("status").is_none(), "create cannot set status: {created}");
    assert_eq!(created["metadata"]["generation"], 1);

    // Status through /status: spec changes in the same body are ignored, generation stays.
    let status = api
        .merge(
            &format!("{}/status", api.path_of("w")),
            json!({"spec": {"size": 50}, "status": {"observed": 1}}),
        )
        .await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.body);
    assert_eq!(status.body["status"]["observed"], 1);
    assert_eq!(status.body["spec"]["size"], 1);
    assert_eq!(status.body["metadata"]["generation"], 1);

    // Spec through the main resource: status in the same body is ignored, generation moves.
    let spec = api.merge(&api.path_of("w"), json!({"spec": {"size": 2}, "status": {"observed": 99}})).await;
    assert_eq!(spec.body["spec"]["size"], 2);
    assert_eq!(spec.body["status"]["observed"], 1);
    assert_eq!(spec.body["metadata"]["generation"], 2);

    // Metadata alone does not move generation.
    let labels = api.merge(&api.path_of("w"), json!({"metadata": {"labels": {"a": "b"}}})).await;
    assert_eq!(labels.body["metadata"]["generation"], 2);
    assert_ne!(rv(&labels.body), rv(&spec.body));
}

async fn a_write_that_changes_nothing_emits_no_event_and_keeps_the_resource_version(api: Api) {
    let created = api.create(&widget("w", 1)).await;
    let mut watch = api.watch(&format!("resourceVersion={}", rv(&created))).await;
    let same = api.merge(&api.path_of("w"), json!({"spec": {"size": 1}})).await;
    assert_eq!(rv(&same.body), rv(&created), "a no-op patch keeps the resourceVersion");
    let same_status = api.merge(&format!("{}/status", api.path_of("w")), json!({"status": null})).await;
    assert_eq!(rv(&same_status.body), rv(&created));
    let mut put = created.clone();
    put["metadata"]["resourceVersion"] = json!(rv(&created));
    let same_put = api.call(Method::PUT, &api.path_of("w"), "", &put).await;
    assert_eq!(rv(&same_put.body), rv(&created), "{}", same_put.body);
    assert_eq!(watch.next_within(Duration::from_millis(300)).await, None, "no event for no-op writes");
    let changed = api.merge(&api.path_of("w"), json!({"spec": {"size": 2}})).await;
    let event = watch.next().await;
    assert_eq!(event["type"], "MODIFIED");
    assert_eq!(rv(&event["object"]), rv(&changed.body));
}

async fn server_side_apply_tracks_owners_per_field_and_refuses_conflicts_unless_forced(api: Api) {
    let config = |size: i64, extra: Value| {
        let mut w = widget("w", size);
        if let Value::Object(m) = extra {
            for (k, v) in m {
                w["spec"][k] = v;
            }
        }
        w
    };
    let first = api.apply(&api.path_of("w"), "alice", false, config(5, json!({"color": "red"}))).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let managers: Vec<&str> = first.body["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["alice"]);
    let owned = &first.body["metadata"]["managedFields"][0];
    assert_eq!(owned["operation"], "Apply");
    assert!(owned["fieldsV1"]["f:spec"]["f:color"].is_object(), "{owned}");

    // Bob sets another value of alice's field: a conflict naming alice and the field.
    let conflict = api.apply(&api.path_of("w"), "bob", false, config(5, json!({"color": "blue"}))).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT, "{}", conflict.body);
    let message = conflict.body["message"].as_str().unwrap();
    assert!(message.contains("conflict with \"alice\"") && message.contains(".spec.color"), "{message}");
    // The same value is no conflict: the field becomes shared.
    let shared = api.apply(&api.path_of("w"), "bob", false, config(5, json!({}))).await;
    assert_eq!(shared.status, StatusCode::OK, "{}", shared.body);

    // Forced, the field moves to bob.
    let forced = api.apply(&api.path_of("w"), "bob", true, config(5, json!({"color": "blue"}))).await;
    assert_eq!(forced.status, StatusCode::OK, "{}", forced.body);
    assert_eq!(forced.body["spec"]["color"], "blue");
    let entry = |body: &Value, who: &str| {
        body["metadata"]["managedFields"].as_array().unwrap().iter().find(|m| m["manager"] == who).cloned()
    };
    assert!(entry(&forced.body, "bob").unwrap()["fieldsV1"]["f:spec"]["f:color"].is_object());
    assert!(entry(&forced.body, "alice").unwrap()["fieldsV1"]["f:spec"].get("f:color").is_none());

    // Alice drops the field from her configuration: bob owns it, so it stays.
    let dropped = api.apply(&api.path_of("w"), "alice", false, config(5, json!({}))).await;
    assert_eq!(dropped.body["spec"]["color"], "blue");
    // A field only alice owned goes when she stops applying it.
    let _ = api.apply(&api.path_of("w"), "alice", false, config(5, json!({"labels": {"x": "1"}}))).await;
    let gone = api.apply(&api.path_of("w"), "alice", false, config(5, json!({}))).await;
    assert!(gone.body["spec"].get("labels").is_none(), "{}", gone.body);

    // A plain update takes ownership of what it changed, without conflict.
    let update = api
        .call(
            Method::PATCH,
            &format!("{}?fieldManager=carol", api.path_of("w")),
            "application/merge-patch+json",
            &json!({"spec": {"color": "red"}}),
        )
        .await;
    assert_eq!(update.status, StatusCode::OK);
    let carol = entry(&update.body, "carol").unwrap();
    assert_eq!(carol["operation"], "Update");
    assert!(carol["fieldsV1"]["f:spec"]["f:color"].is_object());
    assert!(entry(&update.body, "bob").is_none_or(|b| b["fieldsV1"]["f:spec"].get("f:color").is_none()));

    // Apply without a field manager is refused.
    let anonymous = api
        .call(Method::PATCH, &api.path_of("w"), "application/apply-patch+yaml", &config(5, json!({})))
        .await;
    assert_eq!(anonymous.status, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn apply_merges_list_maps_by_key(api: Api) {
    let mut a = widget("w", 1);
    a["spec"]["ports"] = json!([{"name": "http", "port": 80}]);
    api.apply(&api.path_of("w"), "alice", false, a).await;
    let mut b = widget("w", 1);
    b["spec"]["ports"] = json!([{"name": "grpc", "port": 81}]);
    let merged = api.apply(&api.path_of("w"), "bob", false, b).await;
    assert_eq!(merged.status, StatusCode::OK, "{}", merged.body);
    let names: Vec<&str> = merged.body["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["http", "grpc"], "each manager's item is kept");
}

async fn watches_resume_from_a_resource_version_in_order_and_get_410_when_it_is_gone(api: Api) {
    let list = api.get(&api.widgets()).await;
    assert_eq!(list.body["kind"], "WidgetList");
    let start = list.body["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    api.create(&widget("a", 1)).await;
    api.merge(&api.path_of("a"), json!({"spec": {"size": 2}})).await;
    api.create(&widget("b", 1)).await;
    let deleted = api.call(Method::DELETE, &api.path_of("a"), "", &Value::Null).await;
    assert_eq!(deleted.status, StatusCode::OK);

    let mut watch = api.watch(&format!("resourceVersion={start}")).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = watch.next().await;
        seen.push(format!(
            "{} {}",
            e["type"].as_str().unwrap(),
            e["object"]["metadata"]["name"].as_str().unwrap()
        ));
    }
    assert_eq!(seen, ["ADDED a", "MODIFIED a", "ADDED b", "DELETED a"]);
    let later = watch.next_within(Duration::from_millis(200)).await;
    assert_eq!(later, None);

    // Watching from "0" starts with the current objects.
    let mut fresh = api.watch("resourceVersion=0").await;
    let first = fresh.next().await;
    assert_eq!(
        (first["type"].as_str(), first["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("b"))
    );

    // A resourceVersion from before the history the server keeps: the stand-in forgets its
    // history on demand (as etcd compaction); the real watch cache starts where it was first
    // filled, so "1" is older than anything it holds.
    let old = if api.is_real() {
        "1".to_owned()
    } else {
        api.server().compact();
        start
    };
    let mut expired = api.watch(&format!("resourceVersion={old}")).await;
    let error = expired.next().await;
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["code"], 410);
    assert_eq!(error["object"]["reason"], "Expired");
}

async fn streaming_watches_end_their_initial_events_with_a_bookmark_and_filter_by_selector(api: Api) {
    let mut labelled = widget("x", 1);
    labelled["metadata"]["labels"] = json!({"team": "a"});
    let created = api.create(&labelled).await;
    let mut watch = api
        .watch("sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&labelSelector=team%3Da")
        .await;
    let initial = watch.next().await;
    assert_eq!(
        (initial["type"].as_str(), initial["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("x"))
    );
    let bookmark = watch.next().await;
    assert_eq!(bookmark["type"], "BOOKMARK", "{bookmark}");
    assert_eq!(bookmark["object"]["kind"], "Widget");
    assert_eq!(bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    assert!(
        bookmark["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap()
            >= rv(&created).parse().unwrap()
    );
    // Leaving the selector is seen as a deletion; an object outside it is not seen at all.
    api.create(&widget("y", 1)).await;
    api.merge(&api.path_of("x"), json!({"metadata": {"labels": {"team": "b"}}})).await;
    let e = watch.next_change().await;
    assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("DELETED"), Some("x")));
}

async fn finalizers_hold_deletion_until_they_are_removed(api: Api) {
    let mut w = widget("w", 1);
    w["metadata"]["finalizers"] = json!(["example.dev/cleanup"]);
    let created = api.create(&w).await;
    let mut watch = api.watch(&format!("resourceVersion={}", rv(&created))).await;
    let deleting = api.call(Method::DELETE, &api.path_of("w"), "", &Value::Null).await;
    assert_eq!(deleting.status, StatusCode::OK);
    let still = api.get(&api.path_of("w")).await;
    assert_eq!(still.status, StatusCode::OK, "a finalizer keeps it");
    assert!(still.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(watch.next().await["type"], "MODIFIED");
    let refused = api
        .merge(&api.path_of("w"), json!({"metadata": {"finalizers": ["example.dev/cleanup", "other"]}}))
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    let released = api.merge(&api.path_of("w"), json!({"metadata": {"finalizers": null}})).await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.body);
    assert_eq!(watch.next().await["type"], "DELETED");
    assert_eq!(api.get(&api.path_of("w")).await.status, StatusCode::NOT_FOUND);
}

async fn owned_objects_are_garbage_collected_unless_orphaned(api: Api) {
    let owner = api.create(&widget("owner", 1)).await;
    let reference = json!([{"apiVersion": "example.dev/v1", "kind": "Widget", "name": "owner", "uid": owner["metadata"]["uid"], "controller": true}]);
    for name in ["child-1", "child-2"] {
        let mut child = widget(name, 1);
        child["metadata"]["ownerReferences"] = reference.clone();
        api.create(&child).await;
    }
    assert_eq!(
        api.call(Method::DELETE, &api.path_of("owner"), "", &Value::Null).await.status,
        StatusCode::OK
    );
    for name in ["owner", "child-1", "child-2"] {
        api.gone(&api.path_of(name)).await;
    }

    let owner = api.create(&widget("owner2", 1)).await;
    let mut child = widget("kept", 1);
    child["metadata"]["ownerReferences"] = json!([{"apiVersion": "example.dev/v1", "kind": "Widget", "name": "owner2", "uid": owner["metadata"]["uid"]}]);
    api.create(&child).await;
    let orphaning =
        api.call(Method::DELETE, &api.path_of("owner2"), "", &json!({"propagationPolicy": "Orphan"})).await;
    assert_eq!(orphaning.status, StatusCode::OK);
    api.gone(&api.path_of("owner2")).await;
    let kept = api.get(&api.path_of("kept")).await;
    assert_eq!(kept.status, StatusCode::OK);
    assert!(kept.body["metadata"].get("ownerReferences").is_none(), "{}", kept.body);

    // Foreground: the owner waits (with its finalizer) for a blocking dependent that has a
    // finalizer of its own; one that does not block is deleted but does not hold the owner.
    let owner = api.create(&widget("owner3", 1)).await;
    let mut child = widget("slow", 1);
    child["metadata"]["ownerReferences"] = json!([{"apiVersion": "example.dev/v1", "kind": "Widget", "name": "owner3", "uid": owner["metadata"]["uid"], "blockOwnerDeletion": true}]);
    child["metadata"]["finalizers"] = json!(["example.dev/slow"]);
    api.create(&child).await;
    api.call(Method::DELETE, &api.path_of("owner3"), "", &json!({"propagationPolicy": "Foreground"})).await;
    let waiting = api.get(&api.path_of("owner3")).await;
    assert_eq!(waiting.body["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    eventually("the dependent is being deleted", || async {
        api.get(&api.path_of("slow")).await.body["metadata"]["deletionTimestamp"].is_string().then_some(())
    })
    .await;
    assert_eq!(api.get(&api.path_of("owner3")).await.status, StatusCode::OK, "the owner waits for it");
    api.merge(&api.path_of("slow"), json!({"metadata": {"finalizers": null}})).await;
    api.gone(&api.path_of("slow")).await;
    api.gone(&api.path_of("owner3")).await;
}

async fn objects_are_validated_pruned_and_defaulted_against_the_schema(api: Api) {
    let mut w = widget("w", 1);
    w["spec"]["shape"] = json!("round");
    w["spec"]["color"] = json!("red");
    let warned = api.call(Method::POST, &api.widgets(), "", &w).await;
    assert_eq!(warned.status, StatusCode::CREATED);
    assert!(warned.body["spec"].get("shape").is_none(), "unknown fields are pruned");
    assert_eq!(warned.body["spec"]["max"], 10, "defaults are applied");
    let warning = warned.headers.get("warning").unwrap().to_str().unwrap();
    assert!(warning.contains("unknown field") && warning.contains("spec.shape"), "{warning}");

    let mut strict = widget("s", 1);
    strict["spec"]["shape"] = json!("round");
    let refused =
        api.call(Method::POST, &format!("{}?fieldValidation=Strict", api.widgets()), "", &strict).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused.body["message"],
        "Widget in version \"v1\" cannot be handled as a Widget: strict decoding error: unknown field \"spec.shape\""
    );

    let mut bad = widget("bad", 0);
    bad["spec"]["color"] = json!("green");
    let invalid = api.call(Method::POST, &api.widgets(), "", &bad).await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(invalid.body["reason"], "Invalid");
    let message = invalid.body["message"].as_str().unwrap();
    assert!(message.starts_with("Widget.example.dev \"bad\" is invalid: ["), "{message}");
    assert!(
        message.contains("spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\""),
        "{message}"
    );
    assert!(
        message
            .contains("spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"),
        "{message}"
    );
    let fields: Vec<&str> = invalid.body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"spec.color") && fields.contains(&"spec.size"), "{fields:?}");

    let missing = api
        .call(
            Method::POST,
            &api.widgets(),
            "",
            &json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "m"}, "spec": {}}),
        )
        .await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        missing.body["message"].as_str().unwrap().contains("spec.size: Required value"),
        "{}",
        missing.body
    );

    let mut rule = widget("r", 20);
    rule["spec"]["max"] = json!(5);
    let cel = api.call(Method::POST, &api.widgets(), "", &rule).await;
    assert_eq!(cel.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(cel.body["message"].as_str().unwrap().contains("size must not exceed max"), "{}", cel.body);
    // Nothing invalid was stored.
    assert_eq!(api.get(&api.path_of("bad")).await.status, StatusCode::NOT_FOUND);
}

async fn discovery_follows_crds_and_deleting_a_crd_deletes_its_objects(api: Api) {
    // A group of this test's own: deleting its CRD must not disturb the tests running beside it.
    let group = format!("d{:08x}.example.dev", fastrand::u32(..));
    let crd_path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{group}");
    let widgets = format!("/apis/{group}/v1/namespaces/{}/widgets", api.ns);
    api.install_crd(&group).await;
    let groups = api.get("/apis").await.body;
    assert!(groups["groups"].as_array().unwrap().iter().any(|g| g["name"] == group.as_str()), "{groups}");
    let resources = api.get(&format!("/apis/{group}/v1")).await.body;
    let names: Vec<&str> =
        resources["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["widgets", "widgets/status"]);
    assert_eq!(resources["resources"][0]["shortNames"], json!(["wg"]));
    let core = api.get("/api/v1").await.body;
    assert!(core["resources"].as_array().unwrap().iter().any(|r| r["name"] == "pods/eviction"));
    let crd = api.get(&crd_path).await.body;
    let established = crd["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established, "{crd}");

    let mut w = widget("w", 1);
    w["apiVersion"] = json!(format!("{group}/v1"));
    assert_eq!(api.call(Method::POST, &widgets, "", &w).await.status, StatusCode::CREATED);
    let gone = api.call(Method::DELETE, &crd_path, "", &Value::Null).await;
    assert_eq!(gone.status, StatusCode::OK);
    api.gone(&crd_path).await;
    api.gone(&format!("/apis/{group}/v1")).await;
    assert_eq!(api.get(&widgets).await.status, StatusCode::NOT_FOUND);
    // Recreated, the kind starts empty.
    api.install_crd(&group).await;
    assert_eq!(api.get(&widgets).await.body["items"], json!([]));
    api.call(Method::DELETE, &crd_path, "", &Value::Null).await;
}

async fn lists_select_by_label_and_field_and_page(api: Api) {
    for (name, node) in [("a", "n1"), ("b", "n2"), ("c", "n1")] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"node": node}}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}});
        let created = api.call(Method::POST, &api.core("pods"), "", &pod).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        assert_eq!(created.body["status"]["phase"], "Pending", "a new pod's status is the server's");
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let by_node = api.get(&format!("{}?fieldSelector=spec.nodeName%3Dn1", api.core("pods"))).await;
    assert_eq!(names(&by_node.body), ["a", "c"]);
    assert_eq!(by_node.body["kind"], "PodList");
    let by_label = api.get(&format!("{}?labelSelector=node%20in%20(n2)", api.core("pods"))).await;
    assert_eq!(names(&by_label.body), ["b"]);
    let unsupported = api.get(&format!("{}?fieldSelector=spec.image%3Dx", api.core("pods"))).await;
    assert_eq!(unsupported.status, StatusCode::BAD_REQUEST);
    assert_eq!(unsupported.body["message"], "field label not supported: spec.image");
    let page = api.get(&format!("{}?limit=2", api.core("pods"))).await;
    assert_eq!(names(&page.body), ["a", "b"]);
    let token = page.body["metadata"]["continue"].as_str().unwrap();
    assert_eq!(page.body["metadata"]["remainingItemCount"], 1);
    let rest = api.get(&format!("{}?limit=2&continue={token}", api.core("pods"))).await;
    assert_eq!(names(&rest.body), ["c"]);
    assert!(rest.body["metadata"].get("continue").is_none());
}

async fn eviction_respects_pod_disruption_budgets(api: Api) {
    for name in ["a", "b"] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        api.call(Method::POST, &api.core("pods"), "", &pod).await;
        let running =
            json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        let status = api
            .call(
                Method::PATCH,
                &format!("{}/{name}/status", api.core("pods")),
                "application/strategic-merge-patch+json",
                &running,
            )
            .await;
        assert_eq!(status.status, StatusCode::OK, "{}", status.body);
    }
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web"}, "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}});
    let pdbs = format!("/apis/policy/v1/namespaces/{}/poddisruptionbudgets", api.ns);
    assert_eq!(api.call(Method::POST, &pdbs, "", &pdb).await.status, StatusCode::CREATED);
    // The real server's disruption controller counts the healthy pods into the budget's status;
    // until it has, an eviction is refused too ("still being processed"), so wait for the count.
    eventually("the budget counts both pods", || async {
        (api.get(&format!("{pdbs}/web")).await.body["status"]["currentHealthy"] == 2).then_some(())
    })
    .await;
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "a", "namespace": api.ns}});
    let evict = format!("{}/a/eviction", api.core("pods"));
    let refused = api.call(Method::POST, &evict, "", &eviction).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.body);
    assert_eq!(refused.body["details"]["causes"][0]["reason"], "DisruptionBudget");
    api.merge(&format!("{pdbs}/web"), json!({"spec": {"minAvailable": 1}})).await;
    eventually("the budget allows one disruption", || async {
        (api.get(&format!("{pdbs}/web")).await.body["status"]["disruptionsAllowed"] == 1).then_some(())
    })
    .await;
    let evicted = api.call(Method::POST, &evict, "", &eviction).await;
    assert_eq!(evicted.status, StatusCode::CREATED, "{}", evicted.body);
    // An unscheduled pod goes at once (no kubelet has to confirm it).
    api.gone(&format!("{}/a", api.core("pods"))).await;
    assert_eq!(api.get(&format!("{}/b", api.core("pods"))).await.status, StatusCode::OK);
}

async fn token_and_access_reviews_follow_the_granted_rules(api: Api) {
    // A caller with a token and the right to `get nodes/metrics`: on the stand-in an allow-list
    // entry, on the real server a ServiceAccount token and a ClusterRole bound to it.
    let (token, user, groups) = match &api.backend {
        Backend::StandIn(server) => {
            server.add_token("secret", User { name: "prometheus".into(), groups: vec!["monitoring".into()] });
            server.allow(Rule::new("monitoring", "get", "", "nodes/metrics"));
            ("secret".to_owned(), "prometheus".to_owned(), vec!["monitoring".to_owned()])
        }
        Backend::Real(plane) => {
            let token = plane.token_for(&api.ns, "prometheus", Default::default()).await.unwrap();
            let role = format!("{}-metrics", api.ns);
            let cluster_role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
                "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]}]});
            let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": api.ns}]});
            let rbac = "/apis/rbac.authorization.k8s.io/v1";
            let made = api.call(Method::POST, &format!("{rbac}/clusterroles"), "", &cluster_role).await;
            assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
            let bound = api.call(Method::POST, &format!("{rbac}/clusterrolebindings"), "", &binding).await;
            assert_eq!(bound.status, StatusCode::CREATED, "{}", bound.body);
            let user = format!("system:serviceaccount:{}:prometheus", api.ns);
            let own = format!("system:serviceaccounts:{}", api.ns);
            let groups = ["system:serviceaccounts", own.as_str(), "system:authenticated"];
            (token, user, groups.map(str::to_owned).to_vec())
        }
    };
    let review = |token: &str| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
    let reviews = "/apis/authentication.k8s.io/v1/tokenreviews";
    let good = api.call(Method::POST, reviews, "", &review(&token)).await;
    assert_eq!(good.status, StatusCode::CREATED);
    assert_eq!(good.body["status"]["authenticated"], true, "{}", good.body);
    assert_eq!(good.body["status"]["user"]["username"], user.as_str());
    let bad = api.call(Method::POST, reviews, "", &review("guess")).await;
    assert!(bad.body["status"].get("authenticated").is_none_or(|a| a == false), "{}", bad.body);
    assert!(bad.body["status"]["error"].is_string(), "{}", bad.body);
    let sar = |verb: &str, resource: &str, sub: &str| json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": user, "groups": groups, "resourceAttributes": {"verb": verb, "resource": resource, "subresource": sub}}});
    let access = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    // (RBAC reads bindings through an informer: a new one takes effect within moments.)
    eventually("the granted access is allowed", || async {
        let allowed = api.call(Method::POST, access, "", &sar("get", "nodes", "metrics")).await;
        (allowed.body["status"]["allowed"] == true).then_some(())
    })
    .await;
    let denied = api.call(Method::POST, access, "", &sar("get", "nodes", "proxy")).await;
    assert_eq!(denied.body["status"]["allowed"], false);
}

#[tokio::test]
async fn faults_are_injected_and_requests_counted() {
    let api = Api::stand_in().await;
    api.create(&widget("w", 1)).await;
    api.server().fail(Fault::answer(500).verb("patch").resource("widgets/status").times(1));
    let failed = api.merge(&format!("{}/status", api.path_of("w")), json!({"status": {"observed": 1}})).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    let next = api.merge(&format!("{}/status", api.path_of("w")), json!({"status": {"observed": 1}})).await;
    assert_eq!(next.status, StatusCode::OK, "the fault was for one request");
    assert_eq!(api.server().requests("patch", "widgets/status"), 2);
    assert_eq!(api.server().requests("create", "widgets"), 1);

    api.server().fail(Fault::answer(409).verb("update").times(1));
    let w = api.get(&api.path_of("w")).await.body;
    assert_eq!(api.call(Method::PUT, &api.path_of("w"), "", &w).await.status, StatusCode::CONFLICT);

    api.server().unavailable_for(Duration::from_millis(300));
    assert!(
        api.raw(Method::GET, &api.path_of("w"), "", Bytes::new()).await.is_err(),
        "the connection is refused"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(api.get(&api.path_of("w")).await.status, StatusCode::OK);

    api.server().fail(Fault::delay(Duration::from_millis(200)).verb("get").times(1));
    let started = std::time::Instant::now();
    assert_eq!(api.get(&api.path_of("w")).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

async fn tables_carry_the_printer_columns(api: Api) {
    api.create(&widget("w", 3)).await;
    api.merge(
        &format!("{}/status", api.path_of("w")),
        json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    )
    .await;
    let request = Request::get(api.widgets())
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
        .body(Vec::new())
        .unwrap();
    let table: Value = api.client.request(request).await.unwrap();
    assert_eq!(table["kind"], "Table");
    let columns: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Name", "Size", "Ready", "Color"]);
    assert_eq!(table["columnDefinitions"][3]["priority"], 1);
    assert_eq!(table["rows"][0]["cells"], json!(["w", 3, "True", null]));
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
}

async fn events_have_two_faces_over_one_store(api: Api) {
    let event = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "example.dev/c", "reportingInstance": "c-1",
        "action": "Probe", "reason": "Unhealthy", "type": "Warning", "note": "probe failed",
        "regarding": {"apiVersion": "example.dev/v1", "kind": "Widget", "name": "w", "namespace": api.ns, "uid": "u1"}});
    let created = api
        .call(Method::POST, &format!("/apis/events.k8s.io/v1/namespaces/{}/events", api.ns), "", &event)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["note"], "probe failed");
    let core = api
        .get(&format!(
            "{}?fieldSelector=involvedObject.name%3Dw%2CinvolvedObject.kind%3DWidget",
            api.core("events")
        ))
        .await;
    assert_eq!(core.body["items"][0]["message"], "probe failed");
    assert_eq!(core.body["items"][0]["involvedObject"]["uid"], "u1");
    assert_eq!(
        (core.body["apiVersion"].as_str(), core.body["kind"].as_str()),
        (Some("v1"), Some("EventList"))
    );
    // Items of built-in lists carry no apiVersion and kind of their own.
    assert!(core.body["items"][0].get("apiVersion").is_none(), "{}", core.body);
}

async fn deleting_a_namespace_deletes_what_it_holds(api: Api) {
    let team = format!("team-{:08x}", fastrand::u32(..));
    let ns = api
        .call(
            Method::POST,
            "/api/v1/namespaces",
            "",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": team}}),
        )
        .await;
    assert_eq!(ns.status, StatusCode::CREATED);
    let in_team = &format!("/apis/example.dev/v1/namespaces/{team}/widgets");
    assert_eq!(api.call(Method::POST, in_team, "", &widget("w", 1)).await.status, StatusCode::CREATED);
    let missing =
        api.call(Method::POST, "/apis/example.dev/v1/namespaces/nowhere/widgets", "", &widget("w", 1)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["message"], "namespaces \"nowhere\" not found");
    api.call(Method::DELETE, &format!("/api/v1/namespaces/{team}"), "", &Value::Null).await;
    api.gone(&format!("{in_team}/w")).await;
    api.gone(&format!("/api/v1/namespaces/{team}")).await;
}

#[tokio::test]
async fn the_http_face_serves_the_same_store() {
    let api = Api::stand_in().await;
    api.create(&widget("w", 4)).await;
    let address = api.server().serve("127.0.0.1:0").await.unwrap();
    let config = kube::Config::new(format!("http://{address}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let object: Value =
        client.request(Request::get(api.path_of("w")).body(Vec::new()).unwrap()).await.unwrap();
    assert_eq!(object["spec"]["size"], 4);
    let version: Value = client.request(Request::get("/version").body(Vec::new()).unwrap()).await.unwrap();
    assert_eq!(version["major"], "1");
}

async fn patches_come_in_json_merge_and_strategic_flavours(api: Api) {
    let pods = &api.core("pods");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "one"}, {"name": "b", "image": "two"}]}});
    api.call(Method::POST, pods, "", &pod).await;
    // Strategic merge: containers merge by name, the other container is kept.
    let smp = json!({"spec": {"containers": [{"name": "b", "image": "three"}]}});
    let merged =
        api.call(Method::PATCH, &format!("{pods}/p"), "application/strategic-merge-patch+json", &smp).await;
    assert_eq!(merged.status, StatusCode::OK, "{}", merged.body);
    // (the real server also fills in defaults: imagePullPolicy, terminationMessagePath, ...)
    let images = |pod: &Value| -> Vec<(String, String)> {
        pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap().to_owned(), c["image"].as_str().unwrap().to_owned()))
            .collect()
    };
    let pair = |n: &str, i: &str| (n.to_owned(), i.to_owned());
    assert_eq!(images(&merged.body), [pair("a", "one"), pair("b", "three")]);
    // A JSON merge patch replaces the list, and a pod may not lose a container.
    let replaced = api.merge(&format!("{pods}/p"), smp.clone()).await;
    assert_eq!(replaced.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", replaced.body);
    let message = replaced.body["message"].as_str().unwrap();
    assert_eq!(
        message,
        "Pod \"p\" is invalid: spec.containers: Forbidden: pod updates may not add or remove containers"
    );
    let command = json!({"spec": {"containers": [{"name": "a", "command": ["sh"]}]}});
    let changed = api
        .call(Method::PATCH, &format!("{pods}/p"), "application/strategic-merge-patch+json", &command)
        .await;
    assert_eq!(changed.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", changed.body);
    let message = changed.body["message"].as_str().unwrap();
    assert!(
        message.contains(
            "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"
        ),
        "{message}"
    );
    api.create(&json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "list"}, "spec": {"size": 1, "ports": [{"name": "http"}, {"name": "grpc"}]}})).await;
    let replaced = api.merge(&api.path_of("list"), json!({"spec": {"ports": [{"name": "grpc"}]}})).await;
    assert_eq!(replaced.body["spec"]["ports"], json!([{"name": "grpc"}]));
    // JSON patch, with a failing test operation refused as a whole.
    let ops = json!([{"op": "add", "path": "/metadata/labels", "value": {"x": "1"}}, {"op": "replace", "path": "/spec/containers/0/image", "value": "four"}]);
    let patched = api.call(Method::PATCH, &format!("{pods}/p"), "application/json-patch+json", &ops).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["spec"]["containers"][0]["image"], "four");
    let failing = json!([{"op": "test", "path": "/metadata/labels/x", "value": "2"}, {"op": "remove", "path": "/metadata/labels"}]);
    let refused =
        api.call(Method::PATCH, &format!("{pods}/p"), "application/json-patch+json", &failing).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(api.get(&format!("{pods}/p")).await.body["metadata"]["labels"]["x"], "1");
    // Custom resources take no strategic merge patch.
    api.create(&widget("w", 1)).await;
    let unsupported = api
        .call(
            Method::PATCH,
            &api.path_of("w"),
            "application/strategic-merge-patch+json",
            &json!({"spec": {"size": 2}}),
        )
        .await;
    assert_eq!(unsupported.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

async fn typed_clients_renew_leases_and_stream_lists(api: Api) {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api as KubeApi, PostParams};
    use kube::runtime::watcher;
    let leases: KubeApi<Lease> = KubeApi::namespaced(api.client.clone(), &api.ns);
    let mut lease: Lease = serde_json::from_value(json!({"metadata": {"name": "node-a"}, "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 40}})).unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    lease.metadata.resource_version = created.metadata.resource_version.clone();
    lease.spec.as_mut().unwrap().renew_time =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now()));
    let renewed = leases.replace("node-a", &PostParams::default(), &lease).await.unwrap();
    assert_ne!(renewed.metadata.resource_version, created.metadata.resource_version);
    // Replaying the same stale renewal is a conflict, as two agents racing would see.
    let stale = leases.replace("node-a", &PostParams::default(), &lease).await.unwrap_err();
    assert!(matches!(stale, kube::Error::Api(ref s) if s.code == 409), "{stale:?}");

    // kube's watcher with streaming lists: initial events, then the end-of-initial-events bookmark.
    let config = watcher::Config::default().streaming_lists();
    let mut stream = Box::pin(watcher(leases.clone(), config));
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut stream))
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(l) => initial.push(l.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, ["node-a"]);
}

async fn subresources_take_only_their_verbs_and_a_watch_on_a_name_sees_that_object(api: Api) {
    api.create(&widget("a", 1)).await;
    let created = api.create(&widget("b", 1)).await;
    let post = api.call(Method::POST, &format!("{}/status", api.path_of("a")), "", &widget("a", 1)).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    let delete = api.call(Method::DELETE, &format!("{}/status", api.path_of("a")), "", &Value::Null).await;
    assert_eq!(delete.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(api.get(&api.path_of("a")).await.status, StatusCode::OK, "nothing was deleted");
    let status = api.get(&format!("{}/status", api.path_of("a"))).await;
    assert_eq!(status.body["metadata"]["name"], "a", "GET on /status answers the whole object");

    // `watch=true` on one object's URL is no watch: the object is answered, as by a get.
    let got = api.get(&format!("{}?watch=true&resourceVersion={}", api.path_of("b"), rv(&created))).await;
    assert_eq!((got.status, got.body["metadata"]["name"].as_str()), (StatusCode::OK, Some("b")));
    // One object is watched through the list with a field selector on its name.
    let mut watch =
        api.watch(&format!("resourceVersion={}&fieldSelector=metadata.name%3Db", rv(&created))).await;
    api.merge(&api.path_of("a"), json!({"spec": {"size": 2}})).await;
    api.merge(&api.path_of("b"), json!({"spec": {"size": 3}})).await;
    let e = watch.next().await;
    assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("MODIFIED"), Some("b")));
}

#[tokio::test]
async fn watches_send_bookmarks_when_asked() {
    // The real server sends one about every minute; the stand-in's interval is set for the test.
    let api =
        Api::stand_in_with(Config { bookmark_interval: Duration::from_millis(100), ..Config::default() })
            .await;
    let created = api.create(&widget("x", 1)).await;
    let mut watch = api.watch(&format!("resourceVersion={}&allowWatchBookmarks=true", rv(&created))).await;
    let bookmark = watch.next().await;
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["kind"], "Widget");
    assert!(
        bookmark["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap()
            >= rv(&created).parse().unwrap()
    );
}
