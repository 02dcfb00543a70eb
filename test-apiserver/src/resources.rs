//! The kinds the server knows: built-ins, and custom resources registered by their CRDs.

use serde_json::{Value, json};

use crate::shape::{BuiltinShape, SchemaShape, Shape};

/// The verbs of an ordinary resource.
const ALL_VERBS: &[&str] =
    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// One resource the server serves, in one group-version.
#[derive(Debug, Clone)]
pub struct Resource {
    /// API group; empty for the core group.
    pub group: String,
    /// Version served (the only one for built-ins; each CRD version is its own `Resource`).
    pub version: String,
    /// Plural name, as in URLs.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (`kubectl get ist`).
    pub short_names: Vec<String>,
    /// Categories (`kubectl get all`).
    pub categories: Vec<String>,
    /// Verbs.
    pub verbs: Vec<String>,
    /// Subresources served (`status`, `eviction`).
    pub subresources: Vec<String>,
    /// Where the objects are stored: the group/plural shared by every version (and by the two
    /// faces of events).
    pub storage: String,
    /// The CRD's parts, for custom resources.
    pub custom: Option<Custom>,
}

/// What a CRD adds to a resource.
#[derive(Debug, Clone)]
pub struct Custom {
    /// The version's `openAPIV3Schema`.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns`.
    pub columns: Vec<Value>,
    /// The CRD's name (`plural.group`).
    pub crd: String,
}

impl Resource {
    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        short: &[&str],
    ) -> Self {
        Resource {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural.to_owned(),
            singular: kind.to_lowercase(),
            kind: kind.to_owned(),
            namespaced,
            short_names: short.iter().map(|s| (*s).to_owned()).collect(),
            categories: Vec::new(),
            verbs: ALL_VERBS.iter().map(|s| (*s).to_owned()).collect(),
            subresources: Vec::new(),
            storage: format!("{group}/{plural}"),
            custom: None,
        }
    }

    fn with_subresources(mut self, subs: &[&str]) -> Self {
        self.subresources = subs.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    fn create_only(mut self) -> Self {
        self.verbs = vec!["create".to_owned()];
        self
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `plural.group` (`pods` for the core group), as error messages name a resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// Whether the kind has a status subresource (so that status and spec writes are isolated).
    pub fn has_status(&self) -> bool {
        self.subresources.iter().any(|s| s == "status")
    }

    /// Whether it only takes `create` (reviews).
    pub fn is_review(&self) -> bool {
        self.verbs == ["create"]
    }

    /// The shape used for merging lists.
    pub fn shape(&self) -> Box<dyn Shape + Send + Sync> {
        match self.custom.as_ref().and_then(|c| c.schema.clone()) {
            Some(schema) => Box::new(SchemaShape(schema)),
            None => Box::new(BuiltinShape),
        }
    }

    /// Whether `metadata.generation` is kept (custom resources and kinds with a spec).
    pub fn tracks_generation(&self) -> bool {
        self.custom.is_some()
            || matches!(self.plural.as_str(), "customresourcedefinitions" | "poddisruptionbudgets")
    }

    /// An entry of an `APIResourceList`.
    fn discovery(&self) -> Vec<Value> {
        let mut entry = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs,
        });
        if !self.short_names.is_empty() {
            entry["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            entry["categories"] = json!(self.categories);
        }
        let mut out = vec![entry];
        for sub in &self.subresources {
            let (kind, verbs): (&str, &[&str]) = match sub.as_str() {
                "eviction" => ("Eviction", &["create"]),
                _ => (self.kind.as_str(), &["get", "patch", "update"]),
            };
            let (group, version) = if sub == "eviction" { ("policy", "v1") } else { ("", "") };
            let mut e = json!({
                "name": format!("{}/{sub}", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if !group.is_empty() {
                e["group"] = json!(group);
                e["version"] = json!(version);
            }
            out.push(e);
        }
        out
    }
}

/// Every resource served, in registration order.
#[derive(Debug, Clone)]
pub struct Registry {
    resources: Vec<Resource>,
}

impl Registry {
    /// The built-in kinds the project uses.
    pub fn builtin() -> Self {
        let events = Resource::builtin("", "v1", "events", "Event", true, &["ev"]);
        let mut new_events = Resource::builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"]);
        // One store, two faces: events.k8s.io/v1 is a view of core v1 events, as in the real server.
        new_events.storage = events.storage.clone();
        let resources = vec![
            Resource::builtin("", "v1", "namespaces", "Namespace", false, &["ns"])
                .with_subresources(&["status"]),
            Resource::builtin("", "v1", "nodes", "Node", false, &["no"]).with_subresources(&["status"]),
            Resource::builtin("", "v1", "pods", "Pod", true, &["po"])
                .with_subresources(&["eviction", "status"]),
            events,
            Resource::builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[]),
            new_events,
            Resource::builtin(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                &["crd", "crds"],
            )
            .with_subresources(&["status"]),
            Resource::builtin("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, &["pdb"])
                .with_subresources(&["status"]),
            Resource::builtin("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", false, &[])
                .create_only(),
            Resource::builtin(
                "authorization.k8s.io",
                "v1",
                "subjectaccessreviews",
                "SubjectAccessReview",
                false,
                &[],
            )
            .create_only(),
        ];
        Registry { resources }
    }

    /// The resource served at `group/version/plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Every resource served.
    pub fn all(&self) -> &[Resource] {
        &self.resources
    }

    /// Registers (or re-registers) the served versions of a CRD; returns an error message when the
    /// CRD is not acceptable.
    pub fn register_crd(&mut self, crd: &Value) -> Result<(), String> {
        let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let spec = crd.get("spec").ok_or("spec: Required value")?;
        let group = spec.get("group").and_then(Value::as_str).ok_or("spec.group: Required value")?;
        let names = spec.get("names").ok_or("spec.names: Required value")?;
        let plural =
            names.get("plural").and_then(Value::as_str).ok_or("spec.names.plural: Required value")?;
        let kind = names.get("kind").and_then(Value::as_str).ok_or("spec.names.kind: Required value")?;
        if name != format!("{plural}.{group}") {
            return Err(format!(
                "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
            ));
        }
        let scope = spec.get("scope").and_then(Value::as_str).unwrap_or_default();
        if !matches!(scope, "Namespaced" | "Cluster") {
            return Err(format!(
                "spec.scope: Unsupported value: {scope:?}: supported values: \"Cluster\", \"Namespaced\""
            ));
        }
        let versions =
            spec.get("versions").and_then(Value::as_array).ok_or("spec.versions: Required value")?;
        if versions.is_empty() {
            return Err(
                "spec.versions: Invalid value: null: must have exactly one version marked as storage version"
                    .to_owned(),
            );
        }
        let storage_versions =
            versions.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).count();
        if storage_versions != 1 {
            return Err(format!(
                "spec.versions: Invalid value: {}: must have exactly one version marked as storage version",
                versions.len()
            ));
        }
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        self.resources.retain(|r| r.custom.as_ref().map(|c| c.crd.as_str()) != Some(name.as_str()));
        for v in versions {
            if v.get("served").and_then(Value::as_bool) != Some(true) {
                continue;
            }
            let version =
                v.get("name").and_then(Value::as_str).ok_or("spec.versions[].name: Required value")?;
            let mut subresources = Vec::new();
            if v.pointer("/subresources/status").is_some() {
                subresources.push("status".to_owned());
            }
            self.resources.push(Resource {
                group: group.to_owned(),
                version: version.to_owned(),
                plural: plural.to_owned(),
                singular: names
                    .get("singular")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| kind.to_lowercase()),
                kind: kind.to_owned(),
                namespaced: scope == "Namespaced",
                short_names: strings(names.get("shortNames")),
                categories: strings(names.get("categories")),
                verbs: ALL_VERBS.iter().map(|s| (*s).to_owned()).collect(),
                subresources,
                storage: format!("{group}/{plural}"),
                custom: Some(Custom {
                    schema: v.pointer("/schema/openAPIV3Schema").cloned(),
                    columns: v
                        .get("additionalPrinterColumns")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                    crd: name.clone(),
                }),
            });
        }
        Ok(())
    }

    /// Forgets a CRD's resources.
    pub fn unregister_crd(&mut self, name: &str) {
        self.resources.retain(|r| r.custom.as_ref().map(|c| c.crd.as_str()) != Some(name));
    }

    /// The group-versions served, core first, each group's versions in registration order.
    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in &self.resources {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version.clone()),
                Some(_) => {}
                None => groups.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        groups
    }

    /// `GET /api`.
    pub fn core_versions(&self, address: &str) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
        })
    }

    fn group_json(group: &str, versions: &[String]) -> Value {
        let list: Vec<Value> =
            versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
        json!({"name": group, "versions": list, "preferredVersion": list[0]})
    }

    /// `GET /apis`.
    pub fn group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .iter()
            .filter(|(g, _)| !g.is_empty())
            .map(|(g, v)| Self::group_json(g, v))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /apis/{group}`.
    pub fn group(&self, group: &str) -> Option<Value> {
        let (g, versions) = self.groups().into_iter().find(|(g, _)| g == group && !g.is_empty())?;
        let mut out = Self::group_json(&g, &versions);
        out["kind"] = json!("APIGroup");
        out["apiVersion"] = json!("v1");
        Some(out)
    }

    /// `GET /api/v1` or `GET /apis/{group}/{version}`.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<Value> = self
            .resources
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .flat_map(Resource::discovery)
            .collect();
        if resources.is_empty() && !(group.is_empty() && version == "v1") {
            return None;
        }
        let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        )
    }
}
