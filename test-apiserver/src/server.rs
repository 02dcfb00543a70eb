//! Requests in, answers out: routing, the verbs, admission and the write path shared by both faces.
//!
//! Follows the Kubernetes API conventions; where a behaviour is simplified the comment says so.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use serde_json::{Map, Value, json};

use crate::faults::{Faults, Verdict};
use crate::resources::{Registry, Resource};
use crate::review::Authz;
use crate::select::{FieldSelector, LabelSelector, selectable_fields};
use crate::status::ApiError;
use crate::store::Store;
use crate::{events, openapi, schema, ssa, strategic, table, watch};

/// A response body: whole, or streamed for watches.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The server's tunables.
#[derive(Debug, Clone)]
pub struct Config {
    /// How many changes the watch history keeps (older resourceVersions get 410 Gone).
    pub history_limit: usize,
    /// How often a watch that asked for bookmarks gets one (the real server: about a minute).
    pub bookmark_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config { history_limit: 10_000, bookmark_interval: Duration::from_secs(60) }
    }
}

/// What the store and registry hold, under one lock (writes are serialised, as etcd's revisions).
#[derive(Debug)]
pub(crate) struct State {
    pub registry: Registry,
    pub store: Store,
    pub authz: Authz,
    uid_seed: u64,
}

/// The server: one store behind both faces.
#[derive(Debug)]
pub struct Server {
    state: Mutex<State>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) config: Config,
    pub(crate) address: Mutex<String>,
}

/// The connection is refused (fault injection: the server is unavailable).
#[derive(Debug, Clone, Copy)]
pub struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection refused: the API server stand-in is unavailable (fault injected)")
    }
}

impl std::error::Error for Unavailable {}

/// Where a request goes.
#[derive(Debug, Clone)]
enum Route {
    Version,
    CoreVersions,
    Groups,
    Group(String),
    GroupVersion(String, String),
    OpenApiRoot,
    OpenApi(String, String),
    Resource(Target),
}

/// A resource path: `/api/v1/namespaces/{ns}/pods/{name}/status`.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// `fieldValidation`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// What a write knows of its request.
struct Write<'a> {
    res: &'a Resource,
    manager: String,
    dry_run: bool,
    validation: FieldValidation,
    now: String,
    warnings: Vec<String>,
}

type Query = HashMap<String, String>;

fn now() -> String {
    let ts = jiff::Timestamp::now();
    jiff::Timestamp::from_second(ts.as_second()).map(|t| t.to_string()).unwrap_or_else(|_| ts.to_string())
}

fn meta<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

fn whole(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

fn reply(code: u16, value: &Value, warnings: &[String]) -> Response<Body> {
    let mut response = Response::new(whole(value.to_string()));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            response.headers_mut().append(http::header::WARNING, v);
        }
    }
    response
}

fn error_reply(e: &ApiError) -> Response<Body> {
    reply(e.code, &e.to_status(), &[])
}

/// A DNS-1123 subdomain, as most object names must be.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn parse_route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Some(Route::Version),
        ["api"] => return Some(Route::CoreVersions),
        ["apis"] => return Some(Route::Groups),
        ["openapi", "v3"] => return Some(Route::OpenApiRoot),
        ["openapi", "v3", "api", v] => return Some(Route::OpenApi(String::new(), (*v).to_owned())),
        ["openapi", "v3", "apis", g, v] => return Some(Route::OpenApi((*g).to_owned(), (*v).to_owned())),
        ["apis", g] => return Some(Route::Group((*g).to_owned())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let target = |plural: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Route::Resource(Target {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural.to_owned(),
            ns: ns.map(str::to_owned),
            name: name.map(str::to_owned),
            sub: sub.map(str::to_owned),
        })
    };
    Some(match rest {
        [] => Route::GroupVersion(group.to_owned(), version.to_owned()),
        // A namespace's own subresources (`namespaces/x/status`, `namespaces/x/finalize`).
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => {
            target("namespaces", None, Some(name), Some(sub))
        }
        ["namespaces", ns, plural, more @ ..] => match more {
            [] => target(plural, Some(ns), None, None),
            [name] => target(plural, Some(ns), Some(name), None),
            [name, sub] => target(plural, Some(ns), Some(name), Some(sub)),
            _ => return None,
        },
        [plural] => target(plural, None, None, None),
        [plural, name] => target(plural, None, Some(name), None),
        [plural, name, sub] => target(plural, None, Some(name), Some(sub)),
        _ => return None,
    })
}

/// The Kubernetes verb of a request.
fn verb_of(method: &Method, target: &Target, query: &Query) -> &'static str {
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method.as_str(), target.name.is_some()) {
        // The real server serves a GET of one object's URL as a get, `watch=true` or not (its
        // watch on one object is a list watch with a `metadata.name` field selector).
        ("GET", false) if watching => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

impl Server {
    /// A server with the built-in kinds and the namespaces every cluster has.
    pub fn new(config: Config) -> Arc<Self> {
        let server = Arc::new(Server {
            state: Mutex::new(State {
                registry: Registry::builtin(),
                store: Store::new(config.history_limit),
                authz: Authz::default(),
                uid_seed: jiff::Timestamp::now().as_nanosecond() as u64,
            }),
            faults: Mutex::new(Faults::default()),
            config,
            address: Mutex::new("127.0.0.1:0".to_owned()),
        });
        {
            let mut st = server.lock();
            let now = now();
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let mut object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
                let uid = st.uid();
                object["metadata"]["uid"] = json!(uid);
                object["metadata"]["creationTimestamp"] = json!(now);
                st.store.put("/namespaces", object);
            }
        }
        server
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Answers one request (both faces end here). `Err` = the connection is refused.
    pub async fn handle(
        self: &Arc<Self>,
        request: http::Request<Bytes>,
    ) -> Result<Response<Body>, Unavailable> {
        let (parts, body) = request.into_parts();
        let query: Query = parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let route = parse_route(parts.uri.path());
        // Count and consult the faults before anything else, as a proxy in front would.
        let (verb, resource) = match &route {
            Some(Route::Resource(t)) => {
                let resource = match &t.sub {
                    Some(s) => format!("{}/{s}", t.plural),
                    None => t.plural.clone(),
                };
                (verb_of(&parts.method, t, &query), resource)
            }
            _ => ("get", String::new()),
        };
        let verdict = self.faults.lock().unwrap_or_else(|p| p.into_inner()).consult(verb, &resource);
        match verdict {
            Verdict::Refuse => return Err(Unavailable),
            Verdict::Answer(code) => {
                let reason = match code {
                    409 => "Conflict",
                    429 => "TooManyRequests",
                    503 => "ServiceUnavailable",
                    504 => "Timeout",
                    _ => "InternalError",
                };
                let e =
                    ApiError::new(code, reason, format!("injected fault: {verb} {resource} answered {code}"));
                return Ok(error_reply(&e));
            }
            Verdict::Delay(d) => tokio::time::sleep(d).await,
            Verdict::Pass => {}
        }
        let Some(route) = route else { return Ok(error_reply(&ApiError::no_route())) };
        let accept =
            parts.headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let as_table = accept.contains("as=Table");
        let result = match route {
            Route::Version => Ok(reply(
                200,
                &json!({
                    "major": "1", "minor": "32", "gitVersion": "v1.32.0+vigil.standin",
                    "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "none", "compiler": "none", "platform": "linux/amd64",
                }),
                &[],
            )),
            Route::CoreVersions => {
                let address = self.address.lock().map(|a| a.clone()).unwrap_or_default();
                Ok(reply(200, &self.lock().registry.core_versions(&address), &[]))
            }
            Route::Groups => Ok(reply(200, &self.lock().registry.group_list(), &[])),
            Route::Group(g) => {
                self.lock().registry.group(&g).map(|v| reply(200, &v, &[])).ok_or_else(ApiError::no_route)
            }
            Route::GroupVersion(g, v) => self
                .lock()
                .registry
                .resource_list(&g, &v)
                .map(|v| reply(200, &v, &[]))
                .ok_or_else(ApiError::no_route),
            Route::OpenApiRoot => Ok(reply(200, &openapi::root(&self.lock().registry), &[])),
            Route::OpenApi(g, v) => openapi::document(&self.lock().registry, &g, &v)
                .map(|d| reply(200, &d, &[]))
                .ok_or_else(ApiError::no_route),
            Route::Resource(target) => self.resource(&parts.headers, target, &query, body, verb, as_table),
        };
        Ok(result.unwrap_or_else(|e| error_reply(&e)))
    }

    fn resource(
        self: &Arc<Self>,
        headers: &HeaderMap,
        target: Target,
        query: &Query,
        body: Bytes,
        verb: &str,
        as_table: bool,
    ) -> Result<Response<Body>, ApiError> {
        let res = self
            .lock()
            .registry
            .find(&target.group, &target.version, &target.plural)
            .cloned()
            .ok_or_else(ApiError::no_route)?;
        if let Some(sub) = &target.sub
            && !res.subresources.contains(sub)
        {
            return Err(ApiError::no_route());
        }
        let cluster_wide_read = target.name.is_none() && matches!(verb, "list" | "watch");
        if (!res.namespaced && target.ns.is_some())
            || (res.namespaced && target.ns.is_none() && !cluster_wide_read)
        {
            return Err(ApiError::no_route());
        }
        if !res.verbs.iter().any(|v| v == verb) && target.sub.is_none() {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
        let user_agent =
            headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
        let manager = query
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| user_agent.split('/').next().unwrap_or("unknown").to_owned());
        let validation = match query.get("fieldValidation").map(String::as_str) {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            Some("Warn") | None => FieldValidation::Warn,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
                )));
            }
        };
        let mut w = Write {
            res: &res,
            manager,
            dry_run: query.get("dryRun").is_some_and(|d| d == "All"),
            validation,
            now: now(),
            warnings: Vec::new(),
        };
        let ns = target.ns.clone().unwrap_or_default();
        // Simplified: JSON only (and YAML), no protobuf; a protobuf body is refused as the real
        // server refuses a media type it does not serve for a kind.
        let body_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        let body = if matches!(verb, "create" | "update") && !body.is_empty() {
            match body_type.split(';').next().unwrap_or_default().trim() {
                "application/json" | "" => body,
                "application/yaml" => {
                    let text = std::str::from_utf8(&body)
                        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
                    let value: Value = serde_saphyr::from_str(text)
                        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
                    Bytes::from(value.to_string())
                }
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, application/yaml"
                        ),
                    ));
                }
            }
        } else {
            body
        };
        match (verb, target.sub.as_deref()) {
            ("get", _) => {
                let st = self.lock();
                let name = target.name.as_deref().unwrap_or_default();
                let object = st
                    .store
                    .get(&res.storage, &ns, name)
                    .ok_or_else(|| ApiError::not_found(&res.qualified(), name))?;
                let object = with_budget_status(&st.store, &res, present(&res, object));
                if as_table {
                    return Ok(reply(
                        200,
                        &table::table(&res, &[object], &st.store.rv().to_string(), query),
                        &[],
                    ));
                }
                Ok(reply(200, &object, &[]))
            }
            ("list", _) => self.list(&res, target.ns.as_deref(), query, as_table),
            ("watch", _) => {
                // A watch on one object's URL (the deprecated form) is a watch by name.
                let mut query = query.clone();
                if let Some(name) = &target.name {
                    let by_name = format!("metadata.name={name}");
                    let fields = match query.get("fieldSelector").filter(|f| !f.is_empty()) {
                        Some(f) => format!("{f},{by_name}"),
                        None => by_name,
                    };
                    query.insert("fieldSelector".to_owned(), fields);
                }
                self.watch(res.clone(), target.ns.clone(), &query)
            }
            ("delete", Some(_)) | ("create", Some("status")) => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )),
            ("create", Some("eviction")) => {
                self.evict(&res, &ns, target.name.as_deref().unwrap_or_default(), &body, &mut w)
            }
            ("create", _) if res.is_review() => {
                let input = parse_json(&body)?;
                let st = self.lock();
                let output = st.authz.review(&res.plural, input)?;
                Ok(reply(201, &output, &[]))
            }
            ("create", _) => {
                let object = parse_json(&body)?;
                let mut st = self.lock();
                let created = st.create(&mut w, &ns, object, None)?;
                Ok(reply(201, &present(&res, &created), &w.warnings))
            }
            ("update", sub) => {
                let object = parse_json(&body)?;
                let name = target.name.as_deref().unwrap_or_default();
                let mut st = self.lock();
                let updated = st.update(&mut w, &ns, name, object, sub)?;
                Ok(reply(200, &present(&res, &updated), &w.warnings))
            }
            ("patch", sub) => {
                let content_type = headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                let force = query.get("force").is_some_and(|f| f == "true");
                let name = target.name.as_deref().unwrap_or_default();
                let mut st = self.lock();
                let (code, patched) = st.patch(
                    &mut w,
                    &ns,
                    name,
                    &content_type,
                    &body,
                    force,
                    sub,
                    query.contains_key("fieldManager"),
                )?;
                Ok(reply(code, &present(&res, &patched), &w.warnings))
            }
            ("delete", _) => {
                let options = if body.is_empty() { json!({}) } else { parse_json(&body)? };
                let name = target.name.as_deref().unwrap_or_default();
                let mut st = self.lock();
                let deleted = st.delete(&mut w, &ns, name, &options, query)?;
                Ok(reply(200, &present(&res, &deleted), &[]))
            }
            ("deletecollection", _) => {
                let options = if body.is_empty() { json!({}) } else { parse_json(&body)? };
                let (labels, fields) = selectors(&res, query)?;
                let mut st = self.lock();
                let names: Vec<(String, String)> = st
                    .store
                    .list(&res.storage, target.ns.as_deref())
                    .filter(|o| labels.matches(o) && fields.matches(o))
                    .map(|o| {
                        (
                            meta(o, "namespace").unwrap_or_default().to_owned(),
                            meta(o, "name").unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
                for (ns, name) in names {
                    st.delete(&mut w, &ns, &name, &options, query)?;
                }
                Ok(reply(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                    &[],
                ))
            }
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )),
        }
    }

    fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        query: &Query,
        as_table: bool,
    ) -> Result<Response<Body>, ApiError> {
        let (labels, fields) = selectors(res, query)?;
        let st = self.lock();
        let mut items: Vec<Value> = st
            .store
            .list(&res.storage, ns)
            .filter(|o| labels.matches(o) && fields.matches(o))
            .map(|o| with_budget_status(&st.store, res, present(res, o)))
            .collect();
        // Paging: the continue token is the last key returned (opaque to clients).
        // Simplified: a continued list reads the latest state, not a snapshot at the first page.
        if let Some(token) = query.get("continue").filter(|c| !c.is_empty()) {
            let (cns, cname) = token.split_once('/').unwrap_or(("", token.as_str()));
            items.retain(|o| {
                (meta(o, "namespace").unwrap_or_default(), meta(o, "name").unwrap_or_default()) > (cns, cname)
            });
        }
        let mut list_meta = json!({"resourceVersion": st.store.rv().to_string()});
        if let Some(limit) = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0)
            && items.len() > limit
        {
            let remaining = items.len() - limit;
            items.truncate(limit);
            if let Some(last) = items.last() {
                list_meta["continue"] = json!(format!(
                    "{}/{}",
                    meta(last, "namespace").unwrap_or_default(),
                    meta(last, "name").unwrap_or_default()
                ));
                list_meta["remainingItemCount"] = json!(remaining);
            }
        }
        if as_table {
            return Ok(reply(200, &table::table(res, &items, &st.store.rv().to_string(), query), &[]));
        }
        // The real server's lists of built-in kinds carry no apiVersion and kind per item (its
        // lists of custom resources do).
        if res.custom.is_none() {
            for item in &mut items {
                if let Some(m) = item.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
            }
        }
        Ok(reply(
            200,
            &json!({"apiVersion": res.api_version(), "kind": format!("{}List", res.kind), "metadata": list_meta, "items": items}),
            &[],
        ))
    }

    fn watch(
        self: &Arc<Self>,
        res: Resource,
        ns: Option<String>,
        query: &Query,
    ) -> Result<Response<Body>, ApiError> {
        let (labels, fields) = selectors(&res, query)?;
        let options = watch::Options {
            bookmarks: query.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
            send_initial: query.get("sendInitialEvents").is_some_and(|b| b == "true"),
            resource_version: query.get("resourceVersion").cloned().unwrap_or_default(),
            timeout: query
                .get("timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(1800)),
            bookmark_interval: self.config.bookmark_interval,
        };
        let stream = {
            let st = self.lock();
            watch::start(&st.store, res, ns, labels, fields, options)
        };
        let body = StreamBody::new(stream.map(|line| Ok::<_, Infallible>(http_body::Frame::data(line))))
            .boxed_unsync();
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        Ok(response)
    }

    fn evict(
        &self,
        pods: &Resource,
        ns: &str,
        name: &str,
        body: &Bytes,
        w: &mut Write<'_>,
    ) -> Result<Response<Body>, ApiError> {
        let eviction = if body.is_empty() { json!({}) } else { parse_json(body)? };
        let mut st = self.lock();
        let pod = st
            .store
            .get(&pods.storage, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found("pods", name))?;
        // A pod that is not running yet (or no more) can always go, as the real eviction does.
        let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default();
        if phase == "Running" {
            let pdbs: Vec<Value> = st.store.list("policy/poddisruptionbudgets", Some(ns)).cloned().collect();
            for pdb in pdbs {
                let selector = pdb.pointer("/spec/selector").cloned().unwrap_or(json!({}));
                let Ok(selector) = LabelSelector::from_object(&selector) else { continue };
                if !selector.matches(&pod) {
                    continue;
                }
                // Simplified: the disruption controller's count is taken now, from the pods
                // that are Running and Ready, instead of from the PDB's status.
                let (healthy, total) = budget_pods(&st.store, ns, &selector);
                let allowed = disruptions_allowed(&pdb, healthy, total);
                if allowed < 1 {
                    let mut e = ApiError::new(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                    );
                    e.details = Some(
                        json!({"causes": [{"reason": "DisruptionBudget", "message": format!("The disruption budget {} needs {} healthy pods and has {} currently", meta(&pdb, "name").unwrap_or_default(), healthy - allowed, healthy)}]}),
                    );
                    return Err(e);
                }
            }
        }
        let options = eviction.get("deleteOptions").cloned().unwrap_or(json!({}));
        st.delete(w, ns, name, &options, &Query::new())?;
        Ok(reply(
            201,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            &[],
        ))
    }
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
        && pod.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten().any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Ready")
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
}

const POD_SPEC_IMMUTABLE: &str = "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// A pod's spec may change only in its images, deadline, tolerations and grace period, as the
/// real validation has it (simplified: tolerations may change in any way).
fn pod_spec_update_allowed(old: &Value, new: &Value) -> bool {
    let comparable = |pod: &Value| {
        let mut spec = pod.get("spec").cloned().unwrap_or(json!({}));
        for list in ["containers", "initContainers"] {
            if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in items {
                    if let Some(m) = c.as_object_mut() {
                        m.remove("image");
                    }
                }
            }
        }
        if let Some(m) = spec.as_object_mut() {
            for f in ["activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"] {
                m.remove(f);
            }
        }
        spec
    };
    comparable(old) == comparable(new)
}

/// The healthy (Running and Ready) and all pods of `ns` that `selector` matches.
fn budget_pods(store: &Store, ns: &str, selector: &LabelSelector) -> (i64, i64) {
    let matching: Vec<&Value> = store.list("/pods", Some(ns)).filter(|p| selector.matches(p)).collect();
    (matching.iter().filter(|p| ready(p)).count() as i64, matching.len() as i64)
}

/// A PodDisruptionBudget with the status the real disruption controller keeps. Simplified: it
/// is computed when the budget is read (watch events carry the stored object without it).
fn with_budget_status(store: &Store, res: &Resource, mut pdb: Value) -> Value {
    if res.plural != "poddisruptionbudgets" {
        return pdb;
    }
    let selector = pdb.pointer("/spec/selector").cloned().unwrap_or(json!({}));
    let (Ok(selector), Some(ns)) = (LabelSelector::from_object(&selector), meta(&pdb, "namespace")) else {
        return pdb;
    };
    let (healthy, total) = budget_pods(store, ns, &selector);
    let allowed = disruptions_allowed(&pdb, healthy, total).max(0);
    pdb["status"] = json!({
        "observedGeneration": pdb.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "currentHealthy": healthy,
        "desiredHealthy": healthy - allowed,
        "expectedPods": total,
        "disruptionsAllowed": allowed,
    });
    pdb
}

/// `minAvailable` / `maxUnavailable` (a count or a percent of the matching pods) → disruptions allowed.
fn disruptions_allowed(pdb: &Value, healthy: i64, total: i64) -> i64 {
    let scaled = |v: &Value, round_up: bool| -> i64 {
        match v {
            Value::Number(n) => n.as_i64().unwrap_or(0),
            Value::String(s) => {
                let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
                let x = pct * total as f64 / 100.0;
                if round_up { x.ceil() as i64 } else { x.floor() as i64 }
            }
            _ => 0,
        }
    };
    if let Some(min) = pdb.pointer("/spec/minAvailable") {
        healthy - scaled(min, true)
    } else if let Some(max) = pdb.pointer("/spec/maxUnavailable") {
        let unhealthy = total - healthy;
        scaled(max, true) - unhealthy
    } else {
        healthy
    }
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
}

fn selectors(res: &Resource, query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(
        query.get("fieldSelector").map(String::as_str).unwrap_or_default(),
        selectable_fields(&res.plural, &res.group),
    )
    .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

/// The object as the requested version shows it.
pub(crate) fn present(res: &Resource, stored: &Value) -> Value {
    if res.group == "events.k8s.io" {
        return events::to_events_v1(stored);
    }
    let mut object = stored.clone();
    object["apiVersion"] = json!(res.api_version());
    object["kind"] = json!(res.kind);
    object
}

/// Everything but metadata and status: what `generation` counts.
fn spec_part(object: &Value) -> Map<String, Value> {
    object
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The object without what the server alone changes on every write (to tell a no-op).
fn comparable(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        if let Some(Value::Array(fields)) = m.get_mut("managedFields") {
            for f in fields {
                if let Some(f) = f.as_object_mut() {
                    f.remove("time");
                }
            }
        }
    }
    o
}

impl State {
    fn uid(&mut self) -> String {
        // splitmix64: unique within the process, random-looking across runs.
        self.uid_seed = self.uid_seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.uid_seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let a = z ^ (z >> 31);
        let b = a.rotate_left(17) ^ self.uid_seed;
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }

    /// Checks the body's apiVersion and kind against the URL's.
    fn check_type(res: &Resource, object: &mut Value) -> Result<(), ApiError> {
        let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
        if !api_version.is_empty() && api_version != res.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                res.api_version()
            )));
        }
        if !kind.is_empty() && kind != res.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                res.kind
            )));
        }
        object["apiVersion"] = json!(res.api_version());
        object["kind"] = json!(res.kind);
        Ok(())
    }

    /// Schema validation, pruning and defaulting of a custom resource; built-ins get the checks
    /// the project relies on only (simplified: no full built-in validation).
    fn validate(w: &mut Write<'_>, object: &mut Value) -> Result<(), ApiError> {
        let name = meta(object, "name").unwrap_or_default().to_owned();
        let mut errors = Vec::new();
        if !valid_name(&name) {
            errors.push(format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ));
        }
        let mut pruned = Vec::new();
        if let Some(schema) = w.res.custom.as_ref().and_then(|c| c.schema.as_ref()) {
            let verdict = schema::validate(schema, object);
            errors.extend(verdict.errors);
            pruned = verdict.pruned;
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid(&w.res.kind, &w.res.group, &name, &errors));
        }
        if !pruned.is_empty() {
            let unknown: Vec<String> = pruned.iter().map(|p| format!("unknown field {p:?}")).collect();
            match w.validation {
                FieldValidation::Strict => {
                    return Err(ApiError::bad_request(format!(
                        "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                        unknown.join(", "),
                        kind = w.res.kind,
                        version = w.res.version,
                    )));
                }
                FieldValidation::Warn => w.warnings.extend(unknown),
                FieldValidation::Ignore => {}
            }
        }
        Ok(())
    }

    fn check_namespace(&self, res: &Resource, ns: &str) -> Result<(), ApiError> {
        if !res.namespaced {
            return Ok(());
        }
        let namespace =
            self.store.get("/namespaces", "", ns).ok_or_else(|| ApiError::not_found("namespaces", ns))?;
        if namespace.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("unable to create new content in namespace {ns} because it is being terminated"),
            ));
        }
        Ok(())
    }

    /// POST: a new object.
    fn create(
        &mut self,
        w: &mut Write<'_>,
        ns: &str,
        mut object: Value,
        applied_fields: Option<Value>,
    ) -> Result<Value, ApiError> {
        let res = w.res;
        Self::check_type(res, &mut object)?;
        if res.group == "events.k8s.io" {
            object = events::to_core(&object);
        }
        if !object.get("metadata").is_some_and(Value::is_object) {
            object["metadata"] = json!({});
        }
        let body_ns = meta(&object, "namespace").unwrap_or_default().to_owned();
        if res.namespaced {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            object["metadata"]["namespace"] = json!(ns);
        } else if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        if meta(&object, "name").unwrap_or_default().is_empty() {
            match meta(&object, "generateName").filter(|g| !g.is_empty()) {
                Some(prefix) => {
                    let suffix: String = {
                        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                        let seed = self.uid();
                        seed.bytes()
                            .filter(u8::is_ascii_hexdigit)
                            .take(5)
                            .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
                            .collect()
                    };
                    object["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
                }
                None => {
                    return Err(ApiError::invalid(
                        &res.kind,
                        &res.group,
                        "",
                        &["metadata.name: Required value: name or generateName is required".to_owned()],
                    ));
                }
            }
        }
        let name = meta(&object, "name").unwrap_or_default().to_owned();
        if meta(&object, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::new(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created",
            ));
        }
        self.check_namespace(res, ns)?;
        if self.store.get(&res.storage, ns, &name).is_some() {
            let mut e =
                ApiError::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", res.qualified()));
            e.details = Some(json!({"name": name, "group": res.group, "kind": res.plural}));
            return Err(e);
        }
        // Create cannot set status when the kind has a status subresource.
        if res.custom.is_some()
            && res.has_status()
            && let Some(m) = object.as_object_mut()
        {
            m.remove("status");
        }
        match (res.group.as_str(), res.plural.as_str()) {
            ("", "pods") => object["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"}),
            ("", "namespaces") => {
                object["spec"] = json!({"finalizers": ["kubernetes"]});
                object["status"] = json!({"phase": "Active"});
                let mut labels = object.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
                labels["kubernetes.io/metadata.name"] = json!(name);
                object["metadata"]["labels"] = labels;
            }
            _ => {}
        }
        Self::validate(w, &mut object)?;
        let uid = self.uid();
        let m = &mut object["metadata"];
        m["uid"] = json!(uid);
        m["creationTimestamp"] = json!(w.now);
        for f in ["deletionTimestamp", "deletionGracePeriodSeconds", "generation", "selfLink"] {
            if let Some(m) = m.as_object_mut() {
                m.remove(f);
            }
        }
        if res.tracks_generation() {
            object["metadata"]["generation"] = json!(1);
        }
        match applied_fields {
            Some(fields) => object["metadata"]["managedFields"] = fields,
            None => {
                let shape = res.shape();
                let scope = ssa::Scope::Main { status_isolated: false };
                ssa::record_update(None, &mut object, &w.manager, scope, shape.as_ref(), &w.now);
            }
        }
        if res.plural == "customresourcedefinitions" && res.group == "apiextensions.k8s.io" {
            self.registry
                .register_crd(&object)
                .map_err(|e| ApiError::invalid(&res.kind, &res.group, &name, &[e]))?;
            object["status"] = crd_status(&object);
            if w.dry_run {
                self.registry.unregister_crd(&name);
            }
        }
        if w.dry_run {
            return Ok(object);
        }
        Ok(self.store.put(&res.storage, object))
    }

    /// PUT: a whole object replaced (on the main resource or a subresource).
    fn update(
        &mut self,
        w: &mut Write<'_>,
        ns: &str,
        name: &str,
        mut object: Value,
        sub: Option<&str>,
    ) -> Result<Value, ApiError> {
        let res = w.res;
        Self::check_type(res, &mut object)?;
        if res.group == "events.k8s.io" {
            object = events::to_core(&object);
        }
        let body_name = meta(&object, "name").unwrap_or_default();
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        // Simplified: no create-on-update (custom resources and most built-ins do not allow it).
        let old = self
            .store
            .get(&res.storage, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&res.qualified(), name))?;
        if let Some(rv) = meta(&object, "resourceVersion").filter(|rv| !rv.is_empty())
            && Some(rv) != meta(&old, "resourceVersion")
        {
            return Err(ApiError::stale(&res.qualified(), name));
        }
        let scope = scope_of(res, sub);
        self.commit(w, name, old, object, scope, None)
    }

    /// PATCH in all four flavours.
    #[allow(clippy::too_many_arguments)]
    fn patch(
        &mut self,
        w: &mut Write<'_>,
        ns: &str,
        name: &str,
        content_type: &str,
        body: &Bytes,
        force: bool,
        sub: Option<&str>,
        manager_given: bool,
    ) -> Result<(u16, Value), ApiError> {
        let res = w.res;
        let scope = scope_of(res, sub);
        let old = self.store.get(&res.storage, ns, name).cloned();
        let presented_old = old.as_ref().map(|o| present(res, o));
        if content_type == "application/apply-patch+yaml" {
            if !manager_given {
                return Err(ApiError::invalid(
                    res.kind.as_str(),
                    &res.group,
                    name,
                    &["fieldManager: Required value: is required for apply patch".to_owned()],
                ));
            }
            let text = std::str::from_utf8(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            let mut config: Value = serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            Self::check_type(res, &mut config)?;
            if config.get("apiVersion").is_none() || config.get("kind").is_none() {
                return Err(ApiError::bad_request("apiVersion and kind must be set"));
            }
            if meta(&config, "name").is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    meta(&config, "name").unwrap_or_default()
                )));
            }
            config["metadata"]["name"] = json!(name);
            if res.namespaced {
                config["metadata"]["namespace"] = json!(ns);
            }
            let shape = res.shape();
            let Some(old) = old else {
                if sub.is_some() {
                    return Err(ApiError::not_found(&res.qualified(), name));
                }
                // Apply creates: the applied configuration becomes the object, owned by the manager.
                let merged = ssa::apply(None, &config, &w.manager, force, scope, shape.as_ref(), &w.now)
                    .map_err(|c| conflicts(res, name, &c))?;
                let fields = merged.pointer("/metadata/managedFields").cloned();
                return Ok((201, self.create(w, ns, config, fields)?));
            };
            let applied =
                ssa::apply(presented_old.as_ref(), &config, &w.manager, force, scope, shape.as_ref(), &w.now)
                    .map_err(|c| conflicts(res, name, &c))?;
            if let Some(rv) = meta(&config, "resourceVersion")
                && Some(rv) != meta(&old, "resourceVersion")
            {
                return Err(ApiError::stale(&res.qualified(), name));
            }
            let fields = applied.pointer("/metadata/managedFields").cloned();
            let updated = self.commit(w, name, old, applied, scope, fields)?;
            return Ok((200, updated));
        }
        let old = old.ok_or_else(|| ApiError::not_found(&res.qualified(), name))?;
        let mut patched = presented_old.unwrap_or_else(|| present(res, &old));
        let patch: Value = parse_json(body)?;
        match content_type {
            "application/merge-patch+json" => json_patch::merge(&mut patched, &patch),
            "application/json-patch+json" => {
                let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                json_patch::patch(&mut patched, &ops).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!("the server rejected our request due to an error in our request: {e}"),
                    )
                })?;
            }
            "application/strategic-merge-patch+json" if res.custom.is_none() => {
                patched = strategic::apply_patch(&patched, &patch, res.shape().as_ref())
                    .map_err(ApiError::bad_request)?;
            }
            _ => {
                let accepted = if res.custom.is_some() {
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
                } else {
                    "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                };
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: {accepted}"
                    ),
                ));
            }
        }
        if res.group == "events.k8s.io" {
            patched = events::to_core(&patched);
        }
        if let Some(rv) = patch.pointer("/metadata/resourceVersion").and_then(Value::as_str)
            && Some(rv) != meta(&old, "resourceVersion")
        {
            return Err(ApiError::stale(&res.qualified(), name));
        }
        // A patch cannot rename.
        patched["metadata"]["name"] = json!(name);
        Ok((200, self.commit(w, name, old, patched, scope, None)?))
    }

    /// The write path shared by PUT and PATCH: isolation, validation, ownership, generation,
    /// no-op detection, and finalization.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        w: &mut Write<'_>,
        name: &str,
        old: Value,
        mut new: Value,
        scope: ssa::Scope,
        applied_fields: Option<Value>,
    ) -> Result<Value, ApiError> {
        let res = w.res;
        // Status isolation: the main resource ignores status; /status ignores everything else.
        match scope {
            ssa::Scope::Main { status_isolated: true } => match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            },
            ssa::Scope::Status => {
                let status = new.get("status").cloned();
                new = old.clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            ssa::Scope::Main { status_isolated: false } => {}
        }
        if !new.get("metadata").is_some_and(Value::is_object) {
            new["metadata"] = json!({});
        }
        // What only the server sets.
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
        ] {
            match old["metadata"].get(f) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let before: Vec<&Value> = old
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let added = new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|after| after.iter().any(|f| !before.contains(&f)));
            if added {
                return Err(ApiError::invalid(&res.kind, &res.group, name, &["metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted".to_owned()]));
            }
        }
        if res.group.is_empty() && res.plural == "pods" {
            let count = |pod: &Value| pod.pointer("/spec/containers").and_then(Value::as_array).map(Vec::len);
            let error = if count(&old) != count(&new) {
                Some("spec.containers: Forbidden: pod updates may not add or remove containers")
            } else if !pod_spec_update_allowed(&old, &new) {
                Some(POD_SPEC_IMMUTABLE)
            } else {
                None
            };
            if let Some(error) = error {
                return Err(ApiError::invalid(&res.kind, &res.group, name, &[error.to_owned()]));
            }
        }
        let mut presented = present(res, &new);
        Self::validate(w, &mut presented)?;
        new = if res.group == "events.k8s.io" {
            events::to_core(&presented)
        } else {
            let mut n = presented;
            n["apiVersion"] = old["apiVersion"].clone();
            n["kind"] = old["kind"].clone();
            n
        };
        let shape = res.shape();
        match applied_fields {
            Some(fields) => new["metadata"]["managedFields"] = fields,
            None => ssa::record_update(Some(&old), &mut new, &w.manager, scope, shape.as_ref(), &w.now),
        }
        if res.tracks_generation() {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            let bumped = if spec_part(&old) != spec_part(&new) { generation + 1 } else { generation };
            new["metadata"]["generation"] = json!(bumped);
        }
        // A write that changes nothing is not a write: same resourceVersion, no event.
        if comparable(&old) == comparable(&new) {
            return Ok(old);
        }
        if res.plural == "customresourcedefinitions"
            && res.group == "apiextensions.k8s.io"
            && scope != ssa::Scope::Status
        {
            let mut registry = self.registry.clone();
            registry.register_crd(&new).map_err(|e| ApiError::invalid(&res.kind, &res.group, name, &[e]))?;
            if !w.dry_run {
                self.registry = registry;
            }
            new["status"] = crd_status(&new);
        }
        if w.dry_run {
            return Ok(new);
        }
        let finalizing = new.pointer("/metadata/deletionTimestamp").is_some()
            && new.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
        if finalizing {
            // The last finalizer is gone: the object goes (one DELETED event).
            let gone = self.store.remove_as(&res.storage, new);
            if let Some(gone) = &gone {
                self.forget_crd_objects(&res.storage, gone);
            }
            self.collect_garbage();
            return Ok(gone.unwrap_or(old));
        }
        Ok(self.store.put(&res.storage, new))
    }

    /// DELETE: finalizers first, then removal, garbage collection of dependents.
    fn delete(
        &mut self,
        w: &mut Write<'_>,
        ns: &str,
        name: &str,
        options: &Value,
        query: &Query,
    ) -> Result<Value, ApiError> {
        let res = w.res;
        let mut object = self
            .store
            .get(&res.storage, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&res.qualified(), name))?;
        if let Some(uid) = options.pointer("/preconditions/uid").and_then(Value::as_str)
            && Some(uid) != meta(&object, "uid")
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta(&object, "uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = options.pointer("/preconditions/resourceVersion").and_then(Value::as_str)
            && Some(rv) != meta(&object, "resourceVersion")
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta(&object, "resourceVersion").unwrap_or_default()
                ),
            ));
        }
        let policy = options
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .or(query.get("propagationPolicy").map(String::as_str))
            .map(str::to_owned)
            .or_else(|| {
                (options.get("orphanDependents").and_then(Value::as_bool) == Some(true))
                    .then(|| "Orphan".to_owned())
            })
            .unwrap_or_else(|| "Background".to_owned());
        if w.dry_run {
            return Ok(object);
        }
        let mut finalizers: Vec<Value> =
            object.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
        let gc_finalizer = match policy.as_str() {
            "Orphan" => Some("orphan"),
            "Foreground" => Some("foregroundDeletion"),
            _ => None,
        };
        if let Some(f) = gc_finalizer
            && !finalizers.iter().any(|x| x == f)
            && object.pointer("/metadata/deletionTimestamp").is_none()
        {
            finalizers.push(json!(f));
        }
        let namespace = res.group.is_empty() && res.plural == "namespaces";
        if namespace {
            // The namespace controller empties it first (simplified: at once, not eventually).
            finalizers =
                object.pointer("/spec/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
        }
        if finalizers.is_empty() {
            let gone = self
                .remove(&res.storage, ns, name)
                .ok_or_else(|| ApiError::not_found(&res.qualified(), name))?;
            return Ok(gone);
        }
        if object.pointer("/metadata/deletionTimestamp").is_none() {
            object["metadata"]["deletionTimestamp"] = json!(w.now);
            object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if !namespace {
                object["metadata"]["finalizers"] = json!(finalizers);
            } else {
                object["status"]["phase"] = json!("Terminating");
            }
            object = self.store.put(&res.storage, object);
        }
        self.collect_garbage();
        Ok(self.store.get(&res.storage, ns, name).cloned().unwrap_or(object))
    }

    /// Removes an object for good and collects what depended on it.
    fn remove(&mut self, storage: &str, ns: &str, name: &str) -> Option<Value> {
        let gone = self.forget(storage, ns, name);
        self.collect_garbage();
        gone
    }

    /// Takes an object out of the store; a CRD takes its objects along. Removals by requests and
    /// by the garbage collector go through here (the finalizing update uses `remove_as` and the
    /// same CRD step).
    fn forget(&mut self, storage: &str, ns: &str, name: &str) -> Option<Value> {
        let gone = self.store.remove(storage, ns, name)?;
        self.forget_crd_objects(storage, &gone);
        Some(gone)
    }

    fn forget_crd_objects(&mut self, storage: &str, gone: &Value) {
        let name = meta(gone, "name").unwrap_or_default().to_owned();
        if storage == "apiextensions.k8s.io/customresourcedefinitions" {
            self.registry.unregister_crd(&name);
            if let (Some(group), Some(plural)) = (
                gone.pointer("/spec/group").and_then(Value::as_str),
                gone.pointer("/spec/names/plural").and_then(Value::as_str),
            ) {
                let s = format!("{group}/{plural}");
                let keys: Vec<(String, String)> =
                    self.store.list(&s, None).map(crate::store::key_of).collect();
                for (ns, name) in keys {
                    self.store.remove(&s, &ns, &name);
                }
                self.store.drop_storage(&s);
            }
        }
    }

    /// The garbage collector, run after every deletion (simplified: synchronously, where the real
    /// one is eventually consistent): dependents whose owners are all gone are deleted in the
    /// background; `orphan` and `foregroundDeletion` finalizers are processed; terminating
    /// namespaces are emptied and removed.
    fn collect_garbage(&mut self) {
        while let Some(job) = self.next_gc_job() {
            self.run_gc(job);
        }
    }

    /// The next step of garbage collection, orphaning first (so that the dependents of an
    /// orphaned owner are not deleted); one pass over the store, nothing cloned.
    fn next_gc_job(&self) -> Option<Gc> {
        let has = |o: &Value, finalizer: &str| {
            o.pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| f.iter().any(|x| x == finalizer))
        };
        let deleting = |o: &Value| o.pointer("/metadata/deletionTimestamp").is_some();
        // uid → (orphaning, deleting in the foreground)
        let mut owners: HashMap<&str, (bool, bool)> = HashMap::new();
        let mut dependents: Vec<(&str, &Value, &Vec<Value>)> = Vec::new();
        let mut terminating: Vec<(&str, &Value)> = Vec::new();
        for (storage, o) in self.store.everything() {
            if let Some(uid) = meta(o, "uid") {
                owners.insert(uid, (has(o, "orphan"), has(o, "foregroundDeletion")));
            }
            if let Some(refs) =
                o.pointer("/metadata/ownerReferences").and_then(Value::as_array).filter(|r| !r.is_empty())
            {
                dependents.push((storage, o, refs));
            }
            if deleting(o) {
                terminating.push((storage, o));
            }
        }
        let key = |storage: &str, o: &Value| {
            let (ns, name) = crate::store::key_of(o);
            (storage.to_owned(), ns, name)
        };
        let mut later: Option<Gc> = None;
        for (storage, o, refs) in &dependents {
            let owner = |r: &Value| r.get("uid").and_then(Value::as_str).and_then(|u| owners.get(u));
            // An owner being orphaned lets go of its dependents.
            let live: Vec<Value> =
                refs.iter().filter(|r| owner(r).is_some_and(|(orphaning, _)| !orphaning)).cloned().collect();
            let foreground = refs.iter().any(|r| owner(r).is_some_and(|(_, fg)| *fg));
            let (s, ns, name) = key(storage, o);
            // Owners gone are dropped from the references; an orphaning owner leaves none.
            let orphaned = live.is_empty() && refs.iter().any(|r| owner(r).is_some());
            if live.len() != refs.len() && (orphaned || !live.is_empty()) {
                return Some(Gc::SetOwners(s, ns, name, live));
            } else if (live.is_empty() || foreground) && !deleting(o) {
                later.get_or_insert(Gc::Delete(s, ns, name));
            }
        }
        if later.is_some() {
            return later;
        }
        for (storage, o) in terminating {
            let (s, ns, name) = key(storage, o);
            if storage == "/namespaces" {
                // The namespace controller: delete what it holds, then the namespace.
                let contents: Vec<(&str, &Value)> = self
                    .store
                    .everything()
                    .filter(|(_, x)| meta(x, "namespace") == Some(name.as_str()))
                    .collect();
                if contents.is_empty() {
                    return Some(Gc::Remove(s, ns, name));
                }
                let Some((cs, content)) = contents.into_iter().find(|(_, x)| !deleting(x)) else { continue };
                let (cs, cns, cname) = key(cs, content);
                return Some(Gc::Delete(cs, cns, cname));
            } else if has(o, "orphan") {
                return Some(Gc::DropFinalizer(s, ns, name, "orphan"));
            } else if has(o, "foregroundDeletion") {
                let uid = meta(o, "uid");
                // Only dependents whose reference says blockOwnerDeletion hold the owner back.
                let waiting = dependents.iter().any(|(_, _, refs)| {
                    refs.iter().any(|r| {
                        r.get("uid").and_then(Value::as_str) == uid
                            && r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true)
                    })
                });
                if !waiting {
                    return Some(Gc::DropFinalizer(s, ns, name, "foregroundDeletion"));
                }
            }
        }
        None
    }

    fn run_gc(&mut self, job: Gc) {
        match job {
            Gc::Delete(storage, ns, name) => {
                let Some(mut object) = self.store.get(&storage, &ns, &name).cloned() else { return };
                let finalizers = object
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                if finalizers {
                    object["metadata"]["deletionTimestamp"] = json!(now());
                    object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    self.store.put(&storage, object);
                } else {
                    self.forget(&storage, &ns, &name);
                }
            }
            Gc::Remove(storage, ns, name) => {
                self.forget(&storage, &ns, &name);
            }
            Gc::SetOwners(storage, ns, name, owners) => {
                let Some(mut object) = self.store.get(&storage, &ns, &name).cloned() else { return };
                if owners.is_empty() {
                    if let Some(m) = object["metadata"].as_object_mut() {
                        m.remove("ownerReferences");
                    }
                } else {
                    object["metadata"]["ownerReferences"] = json!(owners);
                }
                self.store.put(&storage, object);
            }
            Gc::DropFinalizer(storage, ns, name, finalizer) => {
                let Some(mut object) = self.store.get(&storage, &ns, &name).cloned() else { return };
                let left: Vec<Value> = object
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .map(|f| f.iter().filter(|x| *x != finalizer).cloned().collect())
                    .unwrap_or_default();
                if left.is_empty() {
                    self.forget(&storage, &ns, &name);
                } else {
                    object["metadata"]["finalizers"] = json!(left);
                    self.store.put(&storage, object);
                }
            }
        }
    }
}

/// One step of garbage collection.
enum Gc {
    Delete(String, String, String),
    Remove(String, String, String),
    SetOwners(String, String, String, Vec<Value>),
    DropFinalizer(String, String, String, &'static str),
}

fn scope_of(res: &Resource, sub: Option<&str>) -> ssa::Scope {
    match sub {
        Some("status") => ssa::Scope::Status,
        _ => ssa::Scope::Main { status_isolated: res.has_status() },
    }
}

fn conflicts(res: &Resource, name: &str, conflicts: &[ssa::Conflict]) -> ApiError {
    let message = ssa::conflicts_message(conflicts);
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {:?}", c.manager), "field": c.field}))
        .collect();
    ApiError {
        details: Some(json!({"name": name, "group": res.group, "kind": res.plural, "causes": causes})),
        ..ApiError::new(409, "Conflict", message)
    }
}

/// A CRD's status once accepted: established at once (simplified: the real server's
/// establishing controller takes a moment).
fn crd_status(crd: &Value) -> Value {
    let now = now();
    let condition = |t: &str, reason: &str, message: &str| json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let mut accepted = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    if accepted.get("singular").is_none()
        && let Some(kind) = accepted.get("kind").and_then(Value::as_str)
    {
        accepted["singular"] = json!(kind.to_lowercase());
    }
    if accepted.get("listKind").is_none()
        && let Some(kind) = accepted.get("kind").and_then(Value::as_str)
    {
        accepted["listKind"] = json!(format!("{kind}List"));
    }
    json!({
        "acceptedNames": accepted,
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found for the names"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    })
}
