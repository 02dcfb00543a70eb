//! Events are stored once, as core v1 Events; `events.k8s.io/v1` is a second face of the same
//! objects with renamed fields, as in the real server.

use serde_json::{Map, Value, json};

/// (events.k8s.io/v1 field, core/v1 field).
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(object: &Value, to_core: bool, api_version: &str) -> Value {
    let mut out = Map::new();
    for (k, v) in object.as_object().into_iter().flatten() {
        let key = RENAMED
            .iter()
            .find(|(new, core)| if to_core { new == k } else { core == k })
            .map(|(new, core)| if to_core { *core } else { *new })
            .unwrap_or(k.as_str());
        out.insert(key.to_owned(), v.clone());
    }
    out.insert("apiVersion".to_owned(), json!(api_version));
    out.insert("kind".to_owned(), json!("Event"));
    Value::Object(out)
}

/// A core v1 Event as `events.k8s.io/v1` shows it.
pub fn to_events_v1(core: &Value) -> Value {
    rename(core, false, "events.k8s.io/v1")
}

/// An `events.k8s.io/v1` Event in its stored (core v1) form.
pub fn to_core(event: &Value) -> Value {
    if event.get("apiVersion").and_then(Value::as_str) == Some("v1") {
        return event.clone();
    }
    rename(event, true, "v1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_faces_round_trip() {
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reason": "Probe",
            "reportingController": "vigil.dev/agent", "type": "Warning"});
        let core = to_core(&new);
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["reportingComponent"], "vigil.dev/agent");
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(to_events_v1(&core), new);
    }
}
