//! HealthChecks from a folder of the same YAML `kubectl apply -f` takes (standalone mode).
//!
//! Every `*.yaml`, `*.yml` and `*.json` file directly in the folder is read; a file may hold
//! several documents. Documents of other kinds are skipped (a folder may also hold a Namespace).
//! Unknown fields are errors, as with `kubectl apply`'s strict field validation. A bad file or
//! document is reported with the file, the document's index, the field and what is allowed;
//! everything else keeps loading.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{CheckSource, Loaded, Snapshot, Update};
use crate::api::{API_VERSION, GROUP, HealthCheck};

/// Largest file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Namespace of documents that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One problem loading the folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// The file, relative to the folder.
    pub file: String,
    /// The document, counting from 1, when the problem is in one.
    pub document: Option<usize>,
    /// `namespace/name`, when known.
    pub object: Option<String>,
    /// What is wrong: the field and what is allowed.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
        }
        if let Some(object) = &self.object {
            write!(f, " (HealthCheck {object})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why the folder itself could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// The folder is missing or unreadable.
    #[error("cannot read the checks folder {path}")]
    ReadDir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Reads every HealthCheck in `dir`.
pub fn load(dir: &Path) -> Result<Snapshot, FolderError> {
    let mut parsed = Parsed::default();
    Ok(load_changed(dir, &mut parsed)?.unwrap_or_default())
}

/// What the folder held at the last read: each file's text and what it parsed to.
#[derive(Debug, Default)]
pub struct Parsed {
    files: std::collections::HashMap<PathBuf, (String, Vec<Loaded>, Vec<String>)>,
}

/// Reads `dir` again: `None` when no file changed since `parsed` was taken (then nothing needs
/// doing), else the snapshot, with only the files that changed parsed again. A reload that
/// edits one file of ten thousand checks parses that file.
pub fn load_changed(dir: &Path, parsed: &mut Parsed) -> Result<Option<Snapshot>, FolderError> {
    let entries =
        std::fs::read_dir(dir).map_err(|source| FolderError::ReadDir { path: dir.to_owned(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
                && p.is_file()
        })
        .collect();
    files.sort();
    let mut snapshot = Snapshot::default();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut previous = std::mem::take(&mut parsed.files);
    let mut changed = previous.len() != files.len();
    for path in files {
        let label = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                snapshot
                    .problems
                    .push(file_error(&label, format!("larger than {MAX_FILE_BYTES} bytes; not read")));
                continue;
            }
            Ok(_) => match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    snapshot.problems.push(file_error(&label, format!("cannot read: {e}")));
                    continue;
                }
            },
            Err(e) => {
                snapshot.problems.push(file_error(&label, format!("cannot read: {e}")));
                continue;
            }
        };
        let (objects, errors) = match previous.remove(&path) {
            Some((old, objects, errors)) if old == text => (objects, errors),
            _ => {
                changed = true;
                let (objects, errors) = parse(&label, &text);
                (objects, errors.iter().map(ToString::to_string).collect())
            }
        };
        snapshot.problems.extend(errors.iter().cloned());
        for loaded in objects.iter().cloned() {
            let key = loaded.key.to_string();
            if let Some(first) = seen.get(&key) {
                let duplicate = LoadError {
                    file: label.clone(),
                    document: None,
                    object: Some(key.clone()),
                    message: format!("{}: duplicates the HealthCheck of {first}; ignored", loaded.origin),
                };
                snapshot.problems.push(duplicate.to_string());
                continue;
            }
            seen.insert(key, loaded.origin.clone());
            snapshot.objects.push(loaded);
        }
        parsed.files.insert(path, (text, objects, errors));
    }
    // A file gone, or one that cannot be read any more, is a change too.
    changed |= !previous.is_empty();
    Ok(changed.then_some(snapshot))
}

fn file_error(file: &str, message: String) -> String {
    LoadError { file: file.to_owned(), document: None, object: None, message }.to_string()
}

/// Parses the documents of one file.
pub fn parse(file: &str, text: &str) -> (Vec<Loaded>, Vec<LoadError>) {
    let docs: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(docs) => docs,
        Err(e) => {
            let error = LoadError {
                file: file.to_owned(),
                document: None,
                object: None,
                message: format!("not valid YAML: {e}"),
            };
            return (Vec::new(), vec![error]);
        }
    };
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let n = i + 1;
        let err = |object: Option<String>, message: String| LoadError {
            file: file.to_owned(),
            document: Some(n),
            object,
            message,
        };
        let Value::Object(map) = &doc else {
            if !doc.is_null() {
                errors.push(err(None, "expected an object with apiVersion and kind".to_owned()));
            }
            continue;
        };
        let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
        if api_version.is_empty() || kind.is_empty() {
            errors.push(err(None, "apiVersion and kind are required".to_owned()));
            continue;
        }
        let ours = api_version.split('/').next() == Some(GROUP);
        if kind != "HealthCheck" {
            if ours {
                errors.push(err(
                    None,
                    format!("kind {kind:?} is not read from a checks folder; only HealthCheck is"),
                ));
            } else {
                debug!(file, document = n, kind, "skipping a document that is not a HealthCheck");
            }
            continue;
        }
        if api_version != API_VERSION {
            errors.push(err(None, format!("apiVersion {api_version:?} is not served; use {API_VERSION}")));
            continue;
        }
        let name = map.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).map(str::to_owned);
        let namespace = map
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_owned();
        let object_label = name.as_ref().map(|n| format!("{namespace}/{n}"));
        // The generated root type checks these two itself and leaves them unused.
        match super::strict::<HealthCheck>(doc, &["apiVersion", "kind"]) {
            Err(message) => errors.push(err(object_label, message)),
            Ok((_, unknown)) if !unknown.is_empty() => {
                let fields: Vec<String> = unknown.iter().map(|p| format!("{p:?}")).collect();
                errors.push(err(
                    object_label,
                    format!("unknown field {} (see `kubectl explain healthcheck.spec`)", fields.join(", ")),
                ));
            }
            Ok((mut object, _)) => {
                if name.is_none() {
                    errors.push(err(None, "metadata.name: required".to_owned()));
                    continue;
                }
                object.metadata.namespace = Some(namespace);
                objects.push(Loaded::new(object, format!("{file} document {n}")));
            }
        }
    }
    (objects, errors)
}

/// The folder as a [`CheckSource`]: read once when opened (a missing folder is an error at
/// start), then after each change (debounced) and at least every `rescan`.
#[derive(Debug)]
pub struct FolderSource {
    dir: PathBuf,
    rescan: Duration,
    first: Snapshot,
    parsed: Parsed,
}

impl FolderSource {
    /// Reads `dir`.
    pub fn open(dir: &Path, rescan: Duration) -> Result<FolderSource, FolderError> {
        let mut parsed = Parsed::default();
        let first = load_changed(dir, &mut parsed)?.unwrap_or_default();
        Ok(FolderSource { dir: dir.to_owned(), rescan, first, parsed })
    }
}

impl CheckSource for FolderSource {
    fn name(&self) -> &'static str {
        "checks folder"
    }

    fn first_sync(&self) -> &'static str {
        "checks folder loaded"
    }

    fn numbers_generations(&self) -> bool {
        false
    }

    fn run(self: Box<Self>, tx: mpsc::Sender<Update>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            if tx.send(Update::Snapshot(self.first)).await.is_err() {
                return;
            }
            watch(self.dir, self.rescan, self.parsed, tx).await;
        })
    }
}

/// Watches `dir` and sends a fresh [`Snapshot`] after each change (debounced), and at least
/// every `rescan` in case an event was missed. Ends when the receiver is gone.
async fn watch(dir: PathBuf, rescan: Duration, mut parsed: Parsed, tx: mpsc::Sender<Update>) {
    let (events_tx, mut events) = mpsc::channel::<()>(1);
    let watcher = {
        use notify::Watcher;
        let tx = events_tx.clone();
        let made = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Reading the folder (ours included) is not a change: reacting to accesses would
            // reload forever.
            if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                // Full channel: a reload is already pending, which is enough.
                let _ = tx.try_send(());
            }
        });
        match made {
            Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot watch the checks folder; rescanning every {}s", rescan.as_secs());
                    None
                }
            },
            Err(e) => {
                warn!(error = %e, "no file watcher; rescanning the checks folder every {}s", rescan.as_secs());
                None
            }
        }
    };
    let mut tick = tokio::time::interval(rescan);
    tick.tick().await;
    loop {
        tokio::select! {
            Some(()) = events.recv() => {
                // Editors write in several steps: let them finish.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while events.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
        }
        let dir2 = dir.clone();
        let read = tokio::task::spawn_blocking(move || {
            let snapshot = load_changed(&dir2, &mut parsed);
            (snapshot, parsed)
        })
        .await;
        // A read that panicked loses what was parsed: the next one parses everything.
        let snapshot = match read {
            Ok((snapshot, kept)) => {
                parsed = kept;
                snapshot
            }
            Err(_) => {
                parsed = Parsed::default();
                continue;
            }
        };
        tracing::debug!(dir = %dir.display(), "checks folder read");
        let update = match snapshot {
            // Nothing changed: nothing to send, nothing to plan again.
            Ok(None) => continue,
            Ok(Some(snapshot)) => Update::Snapshot(snapshot),
            Err(e) => {
                // Once the folder reads again, its content goes out again, even unchanged:
                // that also clears the failure.
                parsed = Parsed::default();
                Update::Failed(format!(
                    "{e}: {}; keeping the checks loaded before",
                    crate::telemetry::causes(&e)
                ))
            }
        };
        if tx.send(update).await.is_err() {
            break;
        }
    }
    drop(watcher);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_documents_other_kinds_and_errors() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: vigil.dev/v1alpha1
kind: HealthCheck
metadata: {name: good, namespace: web}
spec:
  target: {host: {}}
  probe: {tcp: {port: 22}}
---
apiVersion: vigil.dev/v1alpha1
kind: HealthCheck
metadata: {name: typo}
spec:
  target: {host: {}}
  probe: {tcp: {port: 22}, periodSecond: 5}
---
apiVersion: vigil.dev/v1alpha1
kind: HealthCheck
metadata: {name: wrongtype}
spec:
  target: {host: {}}
  probe: {tcp: {port: 22}, periodSeconds: ten}
---
apiVersion: vigil.dev/v1beta9
kind: HealthCheck
metadata: {name: future}
"#;
        let (objects, errors) = parse("checks.yaml", text);
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].key.to_string(), "web/good");
        assert_eq!(objects[0].origin, "checks.yaml document 2");
        assert_eq!(errors.len(), 3, "{errors:#?}");
        let typo = errors[0].to_string();
        assert!(typo.starts_with("checks.yaml: document 3 (HealthCheck default/typo)"), "{typo}");
        assert!(typo.contains("spec.probe.periodSecond"), "{typo}");
        let wrong = errors[1].to_string();
        assert!(wrong.contains("document 4") && wrong.contains("spec.probe.periodSeconds"), "{wrong}");
        assert!(wrong.contains("invalid type"), "{wrong}");
        assert!(errors[2].to_string().contains("v1beta9"), "{}", errors[2]);
    }

    #[test]
    fn broken_yaml_names_the_file() {
        let (objects, errors) = parse("bad.yaml", "kind: [unclosed");
        assert!(objects.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().starts_with("bad.yaml: not valid YAML"), "{}", errors[0]);
    }

    #[test]
    fn a_read_parses_only_what_changed_and_says_when_nothing_did() {
        let dir = tempfile::tempdir().unwrap();
        let doc = |name: &str, port: u16| {
            format!(
                "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata: {{name: {name}}}\nspec: {{target: {{host: {{}}}}, probe: {{tcp: {{port: {port}}}}}}}\n"
            )
        };
        std::fs::write(dir.path().join("a.yaml"), doc("a", 1)).unwrap();
        std::fs::write(dir.path().join("b.yaml"), doc("b", 2)).unwrap();
        let mut parsed = Parsed::default();
        assert_eq!(load_changed(dir.path(), &mut parsed).unwrap().unwrap().objects.len(), 2);
        assert!(load_changed(dir.path(), &mut parsed).unwrap().is_none(), "nothing changed");
        std::fs::write(dir.path().join("b.yaml"), doc("b", 3)).unwrap();
        let snap = load_changed(dir.path(), &mut parsed).unwrap().expect("b changed");
        assert_eq!(snap.objects.len(), 2, "the unchanged file's check is still there");
        let b = snap.objects.iter().find(|o| o.key.name == "b").unwrap();
        assert!(serde_json::to_string(&*b.spec).unwrap().contains("\"port\":3"));
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert_eq!(load_changed(dir.path(), &mut parsed).unwrap().expect("a gone").objects.len(), 1);
        std::fs::write(dir.path().join("c.yaml"), "not: [valid").unwrap();
        let snap = load_changed(dir.path(), &mut parsed).unwrap().expect("c added");
        assert_eq!((snap.objects.len(), snap.problems.len()), (1, 1));
        let again = load_changed(dir.path(), &mut parsed).unwrap();
        assert!(again.is_none(), "a bad file unchanged is not read again: {again:?}");
    }

    #[test]
    fn duplicates_across_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let doc = "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata: {name: a}\nspec: {target: {host: {}}, probe: {tcp: {port: 1}}}\n";
        std::fs::write(dir.path().join("1.yaml"), doc).unwrap();
        std::fs::write(dir.path().join("2.yml"), doc).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "not: [valid").unwrap();
        let snap = load(dir.path()).unwrap();
        assert_eq!(snap.objects.len(), 1);
        assert_eq!(snap.problems.len(), 1);
        assert!(
            snap.problems[0].contains("duplicates the HealthCheck of 1.yaml document 1"),
            "{}",
            snap.problems[0]
        );
        assert!(load(&dir.path().join("missing")).is_err());
    }
}
