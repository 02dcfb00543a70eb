//! `Accept: application/json;as=Table;g=meta.k8s.io;v=v1`: what `kubectl get` prints. Custom
//! resources get their CRD's `additionalPrinterColumns` (JSONPath), built-ins the real server's
//! usual columns (simplified: the columns only, for the kinds served here).

use std::collections::HashMap;

use serde_json::{Value, json};
use serde_json_path::JsonPath;

use crate::resources::Resource;

/// A duration as `kubectl` prints ages (`45s`, `3m20s`, `5h`, `12d`).
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    let with = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 { format!("{big}{unit}") } else { format!("{big}{unit}{small}{small_unit}") }
    };
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        with(m, "m", s % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        with(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        with(d, "d", h % 24, "h")
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        with(d / 365, "y", d % 365, "d")
    } else {
        format!("{}y", d / 365)
    }
}

fn age(value: &Value) -> Value {
    let Some(text) = value.as_str() else { return json!("<unknown>") };
    match text.parse::<jiff::Timestamp>() {
        Ok(t) => json!(human_duration(jiff::Timestamp::now().as_second() - t.as_second())),
        Err(_) => json!("<invalid>"),
    }
}

/// The first JSONPath result (Kubernetes paths have no leading `$` and may be in braces).
fn find<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let full = if path.starts_with('$') { path.to_owned() } else { format!("${path}") };
    let parsed = JsonPath::parse(&full).ok()?;
    parsed.query(object).all().into_iter().next()
}

struct Column {
    name: String,
    kind: &'static str,
    priority: i64,
    cell: Box<dyn Fn(&Value) -> Value>,
}

fn col(
    name: impl Into<String>,
    kind: &'static str,
    priority: i64,
    cell: impl Fn(&Value) -> Value + 'static,
) -> Column {
    Column { name: name.into(), kind, priority, cell: Box::new(cell) }
}

fn at(object: &Value, pointer: &str) -> Value {
    object.pointer(pointer).cloned().unwrap_or(Value::Null)
}

fn builtin_columns(res: &Resource) -> Vec<Column> {
    let age_col = || col("Age", "string", 0, |o| age(&at(o, "/metadata/creationTimestamp")));
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "pods") => vec![
            col("Ready", "string", 0, |o| {
                let statuses = o
                    .pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let total = o.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
                let ready =
                    statuses.iter().filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true)).count();
                json!(format!("{ready}/{total}"))
            }),
            col("Status", "string", 0, |o| at(o, "/status/phase")),
            col("Restarts", "string", 0, |o| {
                let statuses = o
                    .pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                json!(
                    statuses
                        .iter()
                        .filter_map(|s| s.get("restartCount").and_then(Value::as_i64))
                        .sum::<i64>()
                        .to_string()
                )
            }),
            age_col(),
            col("IP", "string", 1, |o| at(o, "/status/podIP")),
            col("Node", "string", 1, |o| at(o, "/spec/nodeName")),
        ],
        ("", "namespaces") => vec![col("Status", "string", 0, |o| at(o, "/status/phase")), age_col()],
        ("", "nodes") => vec![
            col("Status", "string", 0, |o| {
                let ready =
                    o.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten().any(
                        |c| {
                            c.get("type").and_then(Value::as_str) == Some("Ready")
                                && c.get("status").and_then(Value::as_str) == Some("True")
                        },
                    );
                json!(if ready { "Ready" } else { "NotReady" })
            }),
            col("Roles", "string", 0, |_| json!("<none>")),
            age_col(),
            col("Version", "string", 0, |o| at(o, "/status/nodeInfo/kubeletVersion")),
        ],
        ("", "events") | ("events.k8s.io", "events") => vec![
            col("Last Seen", "string", 0, |o| {
                let t = o
                    .get("lastTimestamp")
                    .or_else(|| o.get("deprecatedLastTimestamp"))
                    .or_else(|| o.get("eventTime"))
                    .cloned()
                    .unwrap_or(Value::Null);
                age(&t)
            }),
            col("Type", "string", 0, |o| at(o, "/type")),
            col("Reason", "string", 0, |o| at(o, "/reason")),
            col("Object", "string", 0, |o| {
                let r = o.get("involvedObject").or_else(|| o.get("regarding")).cloned().unwrap_or(json!({}));
                json!(format!(
                    "{}/{}",
                    r["kind"].as_str().unwrap_or_default().to_lowercase(),
                    r["name"].as_str().unwrap_or_default()
                ))
            }),
            col("Message", "string", 0, |o| {
                o.get("message").or_else(|| o.get("note")).cloned().unwrap_or(Value::Null)
            }),
        ],
        ("coordination.k8s.io", "leases") => {
            vec![col("Holder", "string", 0, |o| at(o, "/spec/holderIdentity")), age_col()]
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            vec![col("Created At", "date", 0, |o| at(o, "/metadata/creationTimestamp"))]
        }
        ("policy", "poddisruptionbudgets") => vec![
            col("Min Available", "string", 0, |o| {
                o.pointer("/spec/minAvailable")
                    .map(|v| json!(v.to_string().trim_matches('"')))
                    .unwrap_or(json!("N/A"))
            }),
            col("Max Unavailable", "string", 0, |o| {
                o.pointer("/spec/maxUnavailable")
                    .map(|v| json!(v.to_string().trim_matches('"')))
                    .unwrap_or(json!("N/A"))
            }),
            col("Allowed Disruptions", "integer", 0, |o| at(o, "/status/disruptionsAllowed")),
            age_col(),
        ],
        _ => vec![age_col()],
    }
}

fn custom_columns(columns: &[Value]) -> Vec<Column> {
    let source: Vec<Value> = if columns.is_empty() {
        vec![json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})]
    } else {
        columns.to_vec()
    };
    source
        .into_iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            let kind = match c["type"].as_str().unwrap_or("string") {
                "integer" => "integer",
                "number" => "number",
                "boolean" => "boolean",
                "date" => "date",
                _ => "string",
            };
            let priority = c["priority"].as_i64().unwrap_or(0);
            let path = c["jsonPath"].as_str().unwrap_or_default().to_owned();
            col(name, kind, priority, move |o| match find(o, &path) {
                None | Some(Value::Null) => Value::Null,
                Some(v) => match kind {
                    // The server renders dates as ages, as `kubectl` prints them.
                    "date" => age(v),
                    "string" => match v {
                        Value::String(s) => json!(s),
                        other => json!(other.to_string()),
                    },
                    _ => v.clone(),
                },
            })
        })
        .collect()
}

/// The Table for these objects.
pub fn table(res: &Resource, objects: &[Value], rv: &str, query: &HashMap<String, String>) -> Value {
    let columns = match &res.custom {
        Some(c) => custom_columns(&c.columns),
        None => builtin_columns(res),
    };
    let mut definitions = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace. Is required when creating resources.",
    })];
    definitions.extend(columns.iter().map(|c| {
        let (kind, format) = if c.kind == "date" { ("date", "") } else { (c.kind, "") };
        json!({"name": c.name, "type": kind, "format": format, "priority": c.priority, "description": ""})
    }));
    let include = query.get("includeObject").map(String::as_str).unwrap_or("Metadata");
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
            cells.extend(columns.iter().map(|c| (c.cell)(o)));
            let object = match include {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400, "3d"),
            (400 * 86400, "400d"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn printer_column_paths_find_filtered_values() {
        let o = json!({"status": {"conditions": [{"type": "Other", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(find(&o, ".status.conditions[?(@.type==\"Ready\")].status"), Some(&json!("True")));
        assert_eq!(find(&o, ".status.missing"), None);
    }
}
