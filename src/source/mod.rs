//! Where HealthChecks come from: a folder of YAML (standalone) or the API server.
//!
//! Every source feeds a [`Catalog`], which keeps the last valid definition of each check running
//! when an edit makes it invalid, and numbers generations for sources that have none.

pub mod api;
pub mod folder;
pub mod reports;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::api::{HealthCheck, HealthCheckSpec};
use crate::engine::store::CheckInfo;
use crate::model::{self, CheckDef, CheckKey, FieldError};

/// Where HealthChecks come from: the folder (standalone), the API server's watch (in a cluster).
/// A source sends everything it holds at start and after every change; the agent keeps the
/// last valid definition of each check running through invalid edits ([`Catalog`]).
pub trait CheckSource: Send + Debug {
    /// Short name, for health reasons and logs (`checks folder`).
    fn name(&self) -> &'static str;
    /// What readiness waits for until the first snapshot (`checks folder loaded`).
    fn first_sync(&self) -> &'static str;
    /// Whether objects carry their own `metadata.generation` (the API server numbers them;
    /// a folder does not).
    fn numbers_generations(&self) -> bool;
    /// Sends updates until the receiver is gone. Returning means the source cannot go on.
    fn run(self: Box<Self>, tx: mpsc::Sender<Update>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// What a source says.
#[derive(Debug)]
pub enum Update {
    /// Everything it holds now; checks not in it are gone.
    Snapshot(Snapshot),
    /// It could not be read this time; what it held before stays.
    Failed(String),
}

/// What a source held.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// HealthChecks that parsed (they may still be invalid; validation is the catalog's job).
    pub objects: Vec<Loaded>,
    /// What could not be loaded: the place, the field and what is allowed.
    pub problems: Vec<String>,
}

/// A HealthCheck read from a source, with where it came from: what the catalog needs of it, its
/// spec shared (a source that keeps what it read, the catalog and the running definition hold one
/// copy between them).
#[derive(Clone, Debug)]
pub struct Loaded {
    /// `namespace/name` (the namespace defaulted).
    pub key: CheckKey,
    /// `metadata.generation` as the source gave it.
    pub generation: Option<i64>,
    /// The spec.
    pub spec: Arc<HealthCheckSpec>,
    /// Where it was read: `file.yaml document 2`.
    pub origin: String,
}

impl Loaded {
    /// The parts of `object` the catalog takes.
    pub fn new(object: HealthCheck, origin: String) -> Loaded {
        let HealthCheck { metadata, spec, .. } = object;
        Loaded {
            key: CheckKey::new(metadata.namespace.unwrap_or_default(), metadata.name.unwrap_or_default()),
            generation: metadata.generation,
            spec: Arc::new(spec),
            origin,
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Shared with the running definition when the spec is valid.
    spec: Arc<HealthCheckSpec>,
    generation: i64,
    running: Option<Arc<CheckDef>>,
    invalid: Option<String>,
}

/// The HealthChecks of one source, with generations and last valid definitions.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: BTreeMap<CheckKey, Entry>,
}

impl Catalog {
    /// Replaces the content with `objects`. A check whose spec did not change keeps its
    /// generation and its definition (so its workers keep running untouched); an invalid edit
    /// keeps the last valid definition running. When `keep_generation` is set (the API server
    /// numbers generations), the object's own `metadata.generation` is used.
    pub fn update(&mut self, objects: Vec<Loaded>, keep_generation: bool) -> Vec<CheckInfo> {
        let mut next = BTreeMap::new();
        for loaded in objects {
            let Loaded { key, generation: given, spec, .. } = loaded;
            let previous = self.entries.remove(&key);
            let same = |p: &Entry| model::same_spec(&p.spec, &spec);
            let generation = match (&previous, keep_generation) {
                (_, true) => given.unwrap_or(1),
                (Some(p), false) if same(p) => p.generation,
                (Some(p), false) => p.generation + 1,
                (None, false) => 1,
            };
            let entry = match previous {
                Some(p) if same(&p) && p.generation == generation => p,
                previous => match model::validate_spec(key.clone(), generation, spec.clone()) {
                    Ok(def) => Entry { spec, generation, running: Some(Arc::new(def)), invalid: None },
                    Err(errors) => Entry {
                        spec,
                        generation,
                        running: previous.and_then(|p| p.running),
                        invalid: Some(join(&errors)),
                    },
                },
            };
            next.insert(key, entry);
        }
        self.entries = next;
        self.infos()
    }

    /// The checks as the store takes them.
    pub fn infos(&self) -> Vec<CheckInfo> {
        self.entries
            .iter()
            .map(|(key, e)| CheckInfo {
                key: key.clone(),
                def: e.running.clone(),
                spec: e.spec.clone(),
                generation: e.generation,
                invalid: e.invalid.clone(),
            })
            .collect()
    }

    /// The definitions to run.
    pub fn running(&self) -> Vec<Arc<CheckDef>> {
        self.entries.values().filter_map(|e| e.running.clone()).collect()
    }
}

/// `doc` as a `T`: an error names the field (`spec.probe.http.port: invalid type…`); with it,
/// the fields `T` has no place for (unknown fields), but for those in `unused` (fields a type
/// checks itself and leaves unused).
pub fn strict<T: serde::de::DeserializeOwned>(
    doc: serde_json::Value,
    unused: &[&str],
) -> Result<(T, Vec<String>), String> {
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| {
        let path = path.to_string();
        if !unused.contains(&path.as_str()) {
            unknown.push(path);
        }
    };
    let de = serde_ignored::Deserializer::new(doc, &mut record);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(de);
    match parsed {
        Ok(value) => Ok((value, unknown)),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." || path.is_empty() { String::new() } else { format!("{path}: ") };
            Err(format!("{field}{}", e.inner()))
        }
    }
}

/// Field errors as one line.
pub fn join(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(yaml: &str) -> Loaded {
        let mut object: HealthCheck = serde_saphyr::from_str(yaml).unwrap();
        object.metadata.namespace = Some("default".into());
        Loaded::new(object, "test".into())
    }

    const GOOD: &str = "
apiVersion: vigil.dev/v1alpha1
kind: HealthCheck
metadata: {name: web}
spec:
  target: {endpoints: {addresses: ['127.0.0.1:8080']}}
  probe: {tcp: {}}
";

    #[test]
    fn unchanged_specs_keep_their_definition_and_generation() {
        let mut c = Catalog::default();
        c.update(vec![loaded(GOOD)], false);
        let first = c.running()[0].clone();
        let infos = c.update(vec![loaded(GOOD)], false);
        assert!(Arc::ptr_eq(&first, &c.running()[0]), "same Arc: workers are left alone");
        assert_eq!(infos[0].generation, 1);
        let changed = GOOD.replace("8080", "8081");
        let infos = c.update(vec![loaded(&changed)], false);
        assert_eq!(infos[0].generation, 2);
        assert!(!Arc::ptr_eq(&first, &c.running()[0]));
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_valid_definition() {
        let mut c = Catalog::default();
        c.update(vec![loaded(GOOD)], false);
        let bad = GOOD.replace("probe: {tcp: {}}", "probe: {tcp: {}, http: {}}");
        let infos = c.update(vec![loaded(&bad)], false);
        assert_eq!(infos.len(), 1);
        let info = &infos[0];
        assert!(
            info.invalid.as_deref().unwrap().contains("spec.probe: exactly one of"),
            "{:?}",
            info.invalid
        );
        let running = info.def.as_ref().unwrap();
        assert_eq!(running.generation, 1, "the last valid spec keeps running");
        assert_eq!(info.generation, 2);
        // Removed from the source: gone.
        assert!(c.update(vec![], false).is_empty());
    }
}
