//! `/openapi/v3`: the root index and one document per group-version.
//!
//! Simplified: the documents carry what clients read from them — every resource's operations with
//! their `x-kubernetes-group-version-kind`, the query parameters (`kubectl` checks
//! `fieldValidation` there before validating on the server) and the patch content types — and the
//! CRDs' schemas (for `kubectl explain`); built-in kinds have no schemas (clients have them
//! compiled in). `/openapi/v2` is not served, as a client of a 1.32 server does not need it.

use serde_json::{Map, Value, json};

use crate::resources::{Registry, Resource};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

fn fnv(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// The schema name of a kind (`dev.vigil.v1alpha1.HealthCheck`).
fn schema_name(r: &Resource) -> String {
    let reversed: Vec<&str> = r.group.split('.').rev().filter(|s| !s.is_empty()).collect();
    let prefix = if reversed.is_empty() { "io.k8s.api.core".to_owned() } else { reversed.join(".") };
    format!("{prefix}.{}.{}", r.version, r.kind)
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(r: &Resource, action: &str, params: &[&str]) -> Value {
    let mut op = json!({
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
        "parameters": params.iter().map(|p| query_param(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(r))}}}}},
    });
    if action == "patch" {
        // Strategic merge is left out even for built-ins, so that `kubectl` uses the patch
        // metadata compiled into it rather than schemas this document does not carry.
        op["requestBody"] = json!({"content": {
            "application/apply-patch+yaml": {"schema": {"type": "object"}},
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}},
        }});
    }
    op
}

/// One group-version's document, if served.
pub fn document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<&Resource> =
        registry.all().iter().filter(|r| r.group == group && r.version == version).collect();
    if resources.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in resources {
        let base = format!("/{}", gv_path(group, version));
        let collection = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let writes = ["dryRun", "fieldManager", "fieldValidation"];
        paths.insert(
            collection.clone(),
            json!({"get": operation(r, "list", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch"]), "post": operation(r, "post", &writes)}),
        );
        if !r.is_review() {
            paths.insert(
                format!("{collection}/{{name}}"),
                json!({
                    "get": operation(r, "get", &[]),
                    "put": operation(r, "put", &writes),
                    "patch": operation(r, "patch", &["dryRun", "fieldManager", "fieldValidation", "force"]),
                    "delete": operation(r, "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
                }),
            );
        }
        for sub in r.subresources.iter().filter(|s| *s == "status") {
            paths.insert(
                format!("{collection}/{{name}}/{sub}"),
                json!({"get": operation(r, "get", &[]), "put": operation(r, "put", &writes), "patch": operation(r, "patch", &["dryRun", "fieldManager", "fieldValidation", "force"])}),
            );
        }
        let mut schema =
            r.custom.as_ref().and_then(|c| c.schema.clone()).unwrap_or_else(|| json!({"type": "object"}));
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
        schemas.insert(schema_name(r), schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0+vigil.standin"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// `/openapi/v3`: where each group-version's document is, with a hash that changes with it.
pub fn root(registry: &Registry) -> Value {
    let mut seen: Vec<(String, String)> = Vec::new();
    for r in registry.all() {
        let gv = (r.group.clone(), r.version.clone());
        if !seen.contains(&gv) {
            seen.push(gv);
        }
    }
    let mut paths = Map::new();
    for (g, v) in seen {
        let hash = document(registry, &g, &v).map(|d| fnv(&d.to_string())).unwrap_or_default();
        let path = gv_path(&g, &v);
        paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}));
    }
    json!({"paths": paths})
}
