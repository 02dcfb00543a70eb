//! The shape of a kind that merging and field ownership need: how each list merges.
//!
//! For custom resources it is read from the CRD's structural schema (`x-kubernetes-list-type`,
//! `x-kubernetes-list-map-keys`, `x-kubernetes-map-type`); for built-in kinds from a table of the
//! lists the project's kinds have (the real server reads both from its OpenAPI models).

use serde_json::Value;

/// How a list at a given place in an object merges, as `x-kubernetes-list-type` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole (the default for CRD lists).
    Atomic,
    /// A set of scalars, merged by value.
    Set,
    /// A list of objects merged by these key fields.
    Map(Vec<String>),
}

/// What merging and field ownership need to know about a kind's shape.
pub trait Shape {
    /// The list type of the list found at `path`: field names from the object's root, list items
    /// are not part of the path (`spec.containers.ports` for the ports of any container).
    fn list_type(&self, path: &[&str]) -> ListType;
    /// Whether the map at `path` is atomic (`x-kubernetes-map-type: atomic`); granular by default.
    fn map_is_atomic(&self, _path: &[&str]) -> bool {
        false
    }
}

/// A custom resource's shape, from its `openAPIV3Schema`.
#[derive(Debug, Clone)]
pub struct SchemaShape(pub Value);

impl SchemaShape {
    fn at(&self, path: &[&str]) -> Option<&Value> {
        let mut node = &self.0;
        for field in path {
            // Lists are transparent: the path names fields only.
            while node.get("type").and_then(Value::as_str) == Some("array") {
                node = node.get("items")?;
            }
            node = match node.pointer(&format!("/properties/{field}")) {
                Some(n) => n,
                None => node.get("additionalProperties").filter(|a| a.is_object())?,
            };
        }
        Some(node)
    }
}

impl Shape for SchemaShape {
    fn list_type(&self, path: &[&str]) -> ListType {
        let Some(node) = self.at(path) else { return ListType::Atomic };
        match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(
                node.get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|keys| keys.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default(),
            ),
            _ => ListType::Atomic,
        }
    }

    fn map_is_atomic(&self, path: &[&str]) -> bool {
        self.at(path).and_then(|n| n.get("x-kubernetes-map-type")).and_then(Value::as_str) == Some("atomic")
    }
}

/// The merge keys of the built-in kinds' lists (their `patchMergeKey` / `listMapKeys`).
/// Simplified: only the lists of the kinds the stand-in serves; every other list is atomic.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinShape;

impl Shape for BuiltinShape {
    fn list_type(&self, path: &[&str]) -> ListType {
        let key = |k: &str| ListType::Map(vec![k.to_owned()]);
        match path.last().copied() {
            Some("containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes") => key("name"),
            Some("volumeMounts") => key("mountPath"),
            Some("ports") if path.contains(&"containers") => {
                ListType::Map(vec!["containerPort".to_owned(), "protocol".to_owned()])
            }
            Some("conditions") => key("type"),
            Some("versions") if path.first() == Some(&"spec") => key("name"),
            Some("taints") => ListType::Map(vec!["effect".to_owned(), "key".to_owned()]),
            Some("addresses") if path.first() == Some(&"status") => key("type"),
            Some("finalizers") => ListType::Set,
            _ => ListType::Atomic,
        }
    }
}
