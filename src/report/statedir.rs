//! The local state folder (standalone mode): one InstanceStatus document per instance under
//! `instances/`, one HealthCheck (spec and status) per check under `healthchecks/`, the same
//! YAML `kubectl get -o yaml` would show.
//!
//! Every file is written atomically: to a temporary file in the same folder, flushed to disk,
//! then renamed over the old one, and the folder itself is flushed. Writes go in batches with one
//! flush each. A reader, or an agent killed at any moment, sees the old document or the new one,
//! never half of one.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use crate::api::{HealthCheck, InstanceStatus};
use crate::engine::feed::Cursor;
use crate::engine::store::Store;
use crate::engine::store::view::Restored;
use crate::health::Health;
use crate::metrics::AgentMetrics;
use crate::model::CheckKey;
use crate::report::render::{self, Dirty};

const INSTANCES: &str = "instances";
const HEALTHCHECKS: &str = "healthchecks";
const TMP_PREFIX: &str = ".tmp-";
/// Documents rendered and written per batch.
const BATCH: usize = 256;

/// Why the state folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// A folder could not be created.
    #[error("cannot create the state folder {path}")]
    Create {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What an earlier run left in the state folder.
#[derive(Debug, Default)]
pub struct Saved {
    /// The instances, under today's ids.
    pub instances: Vec<Restored>,
    /// Documents saved under another name than their id (an earlier version's), by id: each is
    /// removed once its instance is written under its id.
    pub renamed: HashMap<String, String>,
    /// Documents that could not be read, set aside.
    pub problems: Vec<String>,
}

/// The state folder.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// One file to write or remove.
#[derive(Clone, Debug)]
enum Op {
    Write { dir: &'static str, name: String, bytes: Vec<u8> },
    Remove { dir: &'static str, name: String },
}

impl StateDir {
    /// Opens (and creates) the folder; removes temporary files a killed run left behind.
    pub fn open(root: &Path) -> Result<StateDir, StateDirError> {
        for sub in [INSTANCES, HEALTHCHECKS] {
            let path = root.join(sub);
            fs::create_dir_all(&path)
                .map_err(|source| StateDirError::Create { path: path.clone(), source })?;
            if let Ok(entries) = fs::read_dir(&path) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
        Ok(StateDir { root: root.to_owned() })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of an instance's document.
    pub fn instance_path(&self, id: &str) -> PathBuf {
        self.root.join(INSTANCES).join(format!("{id}.yaml"))
    }

    /// Path of a HealthCheck's document.
    pub fn check_path(&self, key: &CheckKey) -> PathBuf {
        self.root.join(HEALTHCHECKS).join(check_file(key))
    }

    /// Reads the instance documents an earlier run wrote. A document that cannot be read is set
    /// aside (renamed `*.corrupt`), never deleted, and reported.
    /// Documents of an earlier version are taken under today's ids ([`super::restore`]).
    pub fn load_instances(&self, node: &str) -> Saved {
        let dir = self.root.join(INSTANCES);
        let mut saved = Saved::default();
        let Ok(entries) = fs::read_dir(&dir) else { return saved };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("yaml") {
                continue;
            }
            let parsed = fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| serde_saphyr::from_str::<InstanceStatus>(&text).map_err(|e| e.to_string()));
            match parsed {
                Ok(doc) => {
                    if let Some((restored, saved_as)) = super::restore::restored(doc, node) {
                        if let Some(old) = saved_as {
                            saved.renamed.insert(restored.id.clone(), old);
                        }
                        saved.instances.push(restored);
                    }
                }
                Err(e) => {
                    let aside = path.with_extension("yaml.corrupt");
                    let _ = fs::rename(&path, &aside);
                    saved.problems.push(format!(
                        "{} could not be read ({e}); moved to {}",
                        path.display(),
                        aside.display()
                    ));
                }
            }
        }
        saved
    }

    /// Applies a batch: every new document goes to a temporary file, the filesystem is flushed
    /// once, then the temporary files are renamed over the documents and the folders flushed.
    /// One flush per batch instead of one per file; a reader or a killed agent still sees whole
    /// documents only, and after a power cut no document is renamed before its data is on disk.
    fn apply(&self, ops: &[Op]) -> Vec<(String, io::Error)> {
        let mut failures = Vec::new();
        let mut staged: Vec<(&'static str, &str)> = Vec::new();
        for op in ops {
            if let Op::Write { dir, name, bytes } = op {
                let tmp = self.root.join(dir).join(format!("{TMP_PREFIX}{name}"));
                match File::create(&tmp).and_then(|mut f| f.write_all(bytes)) {
                    Ok(()) => staged.push((dir, name)),
                    Err(e) => failures.push((format!("{dir}/{name}"), e)),
                }
            }
        }
        if !staged.is_empty()
            && let Err(e) =
                File::open(&self.root).and_then(|d| rustix::fs::syncfs(&d).map_err(io::Error::from))
        {
            // Not durable yet: leave the documents as they were and try again later.
            for (dir, name) in staged.drain(..) {
                failures.push((format!("{dir}/{name}"), io::Error::new(e.kind(), e.to_string())));
            }
        }
        let mut touched_dirs: Vec<&'static str> = Vec::new();
        let mut touch = |dir: &'static str| {
            if !touched_dirs.contains(&dir) {
                touched_dirs.push(dir);
            }
        };
        for (dir, name) in staged {
            let folder = self.root.join(dir);
            match fs::rename(folder.join(format!("{TMP_PREFIX}{name}")), folder.join(name)) {
                Ok(()) => touch(dir),
                Err(e) => failures.push((format!("{dir}/{name}"), e)),
            }
        }
        for op in ops {
            if let Op::Remove { dir, name } = op {
                match fs::remove_file(self.root.join(dir).join(name)) {
                    Ok(()) => touch(dir),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => failures.push((format!("{dir}/{name}"), e)),
                }
            }
        }
        // The renames are durable once the folders are.
        for dir in touched_dirs {
            if let Err(e) = File::open(self.root.join(dir)).and_then(|d| d.sync_all()) {
                failures.push((dir.to_owned(), e));
            }
        }
        failures
    }
}

fn check_file(key: &CheckKey) -> String {
    // Neither a namespace nor a name may contain `_`.
    format!("{}_{}.yaml", key.namespace, key.name)
}

fn hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// A file to write or remove, with the hash of what is written.
#[derive(Clone, Debug)]
struct Pending {
    file: String,
    hash: u64,
    op: Op,
}

/// Writes the store's changes into the state folder.
#[derive(Debug)]
pub struct Reporter {
    dir: StateDir,
    store: Arc<Store>,
    /// This reporter's position in the store's change feed.
    cursor: Cursor,
    health: Arc<Health>,
    metrics: AgentMetrics,
    refresh: Duration,
    /// Hash of the content last written, per file.
    written: HashMap<String, u64>,
    /// Writes that failed, retried with the next batch unless a newer version replaces them.
    retry: HashMap<String, Pending>,
    /// Documents of an earlier version, by the id they are written under now.
    renamed: HashMap<String, String>,
}

impl Reporter {
    /// A reporter; counters-only changes are written at most every `refresh`.
    pub fn new(
        dir: StateDir,
        store: Arc<Store>,
        health: Arc<Health>,
        metrics: AgentMetrics,
        refresh: Duration,
        renamed: HashMap<String, String>,
    ) -> Reporter {
        let cursor = store.subscribe();
        Reporter {
            dir,
            store,
            cursor,
            health,
            metrics,
            refresh,
            written: HashMap::new(),
            retry: HashMap::new(),
            renamed,
        }
    }

    /// Writes changes as they come until `stop` resolves, then writes everything once more.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut refresh = tokio::time::interval_at(Instant::now() + self.refresh, self.refresh);
        loop {
            let touched = tokio::select! {
                () = self.cursor.changed() => false,
                _ = refresh.tick() => true,
                () = &mut stop => {
                    self.flush(true).await;
                    return;
                }
            };
            // Let a burst of changes settle into one batch.
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.flush(touched).await;
        }
    }

    /// Writes what changed (with `touched`, counters-only changes too), a batch at a time.
    pub async fn flush(&mut self, touched: bool) {
        let mut failures = Vec::new();
        let mut retry = std::mem::take(&mut self.retry);
        let mut touched = touched;
        loop {
            let dirty =
                render::changes(self.store.changes(&mut self.cursor, touched, BATCH), self.store.namespace());
            touched = false;
            if dirty.is_empty() && retry.is_empty() {
                break;
            }
            let (failed, next) = self.write_batch(dirty, std::mem::take(&mut retry)).await;
            failures.extend(failed);
            retry = next;
        }
        if failures.is_empty() {
            self.health.set("state", Vec::new());
            debug!("state folder up to date");
        } else {
            let problems: Vec<String> = failures
                .iter()
                .take(3)
                .map(|(f, e)| format!("cannot write {}/{f}: {e}", self.dir.root().display()))
                .collect();
            warn!(failures = failures.len(), first = %problems.join("; "), "state folder write failed; will retry");
            self.health.set("state", problems);
        }
    }

    async fn write_batch(
        &mut self,
        dirty: Dirty,
        mut batch: HashMap<String, Pending>,
    ) -> (Vec<(String, io::Error)>, HashMap<String, Pending>) {
        // Old documents go once their instance's new one is written (or the instance is gone).
        let mut renames: Vec<(String, String)> = Vec::new();
        for (id, doc) in dirty.instances {
            let p = pending(INSTANCES, format!("{id}.yaml"), doc.as_ref().map(render_instance));
            if let Some(old) = self.renamed.get(&id) {
                renames.push((p.file.clone(), old.clone()));
            }
            batch.insert(p.file.clone(), p);
        }
        for (key, doc) in dirty.checks {
            let p = pending(HEALTHCHECKS, check_file(&key), doc.as_ref().map(render_check));
            batch.insert(p.file.clone(), p);
        }
        // Write only what differs from what is on disk.
        batch.retain(|file, p| match p.op {
            Op::Write { .. } => self.written.get(file) != Some(&p.hash),
            Op::Remove { .. } => true,
        });
        if batch.is_empty() {
            return (Vec::new(), HashMap::new());
        }
        let dir = self.dir.clone();
        let ops: Vec<Op> = batch.values().map(|p| p.op.clone()).collect();
        let files: Vec<String> = batch.keys().cloned().collect();
        let failures = match tokio::task::spawn_blocking(move || dir.apply(&ops)).await {
            Ok(failures) => failures,
            // The batch's task died (a panic): nothing in it counts as written.
            Err(e) => files
                .into_iter()
                .map(|f| (f, io::Error::other(format!("the write task ended: {e}"))))
                .collect(),
        };
        for (file, p) in batch {
            let kind = if file.starts_with(INSTANCES) { "instance" } else { "healthcheck" };
            if failures.iter().any(|(f, _)| *f == file) {
                self.metrics.status_writes.with_label_values(&[kind, "error"]).inc();
                self.retry.insert(file, p);
                continue;
            }
            self.metrics.status_writes.with_label_values(&[kind, "ok"]).inc();
            match p.op {
                Op::Write { .. } => self.written.insert(file, p.hash),
                Op::Remove { .. } => self.written.remove(&file),
            };
        }
        let mut next = HashMap::new();
        for (file, old) in renames {
            if !failures.iter().any(|(f, _)| *f == file) {
                let p = pending(INSTANCES, format!("{old}.yaml"), None);
                next.insert(p.file.clone(), p);
                let id = file.trim_start_matches(INSTANCES).trim_start_matches('/').trim_end_matches(".yaml");
                self.renamed.remove(id);
            }
        }
        (failures, next)
    }
}

fn pending(dir: &'static str, name: String, yaml: Option<String>) -> Pending {
    let file = format!("{dir}/{name}");
    match yaml {
        Some(text) => {
            Pending { file, hash: hash(&text), op: Op::Write { dir, name, bytes: text.into_bytes() } }
        }
        None => Pending { file, hash: 0, op: Op::Remove { dir, name } },
    }
}

/// An InstanceStatus as YAML.
pub fn render_instance(doc: &InstanceStatus) -> String {
    serde_saphyr::to_string(doc).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// A HealthCheck as YAML.
pub fn render_check(doc: &HealthCheck) -> String {
    serde_saphyr::to_string(doc).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}
