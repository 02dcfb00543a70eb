//! One store for every kind: objects by storage, namespace and name; a global resourceVersion
//! counter (as etcd's revision); a bounded history of changes for watches to resume from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Removed.
    Deleted,
}

/// One committed write, as watches see it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the write got.
    pub rv: u64,
    /// Which storage (`group/plural`).
    pub storage: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The object after the write (for a deletion, its last state).
    pub object: Value,
    /// The object before the write (for selector-filtered watches: an object that stops
    /// matching is seen as deleted, one that starts matching as added).
    pub previous: Option<Value>,
}

type Key = (String, String);

/// The changes a watch replays, and the receiver of the ones to come.
pub type Subscription = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

/// The objects and their history.
#[derive(Debug)]
pub struct Store {
    rv: u64,
    objects: BTreeMap<String, BTreeMap<Key, Value>>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// The newest resourceVersion no longer in the history (a watch from before it gets 410).
    compacted: u64,
    tx: broadcast::Sender<Arc<Change>>,
}

impl Store {
    /// An empty store keeping `history_limit` changes for watches to resume from.
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Store { rv: 1, objects: BTreeMap::new(), history: VecDeque::new(), history_limit, compacted: 0, tx }
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Forgets every change up to and including `rv` (as etcd compaction does).
    pub fn compact(&mut self, rv: u64) {
        while self.history.front().is_some_and(|c| c.rv <= rv) {
            self.history.pop_front();
        }
        self.compacted = self.compacted.max(rv);
    }

    /// The newest compacted resourceVersion.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// One object.
    pub fn get(&self, storage: &str, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(storage)?.get(&(ns.to_owned(), name.to_owned()))
    }

    /// The objects of a storage, in namespace then name order; `ns` None = all namespaces.
    pub fn list<'a>(&'a self, storage: &str, ns: Option<&'a str>) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .get(storage)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(move |((n, _), _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v)
    }

    /// Every object of every storage, with its storage.
    pub fn everything(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.objects.iter().flat_map(|(s, m)| m.values().map(move |v| (s.as_str(), v)))
    }

    /// Writes an object (create or update), giving it the next resourceVersion.
    pub fn put(&mut self, storage: &str, mut object: Value) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let key = key_of(&object);
        let previous = self.objects.entry(storage.to_owned()).or_default().insert(key, object.clone());
        let kind = if previous.is_some() { ChangeKind::Modified } else { ChangeKind::Added };
        self.record(storage, kind, object.clone(), previous);
        object
    }

    /// Removes an object; its last state carries the deletion's resourceVersion, as watches see it.
    pub fn remove(&mut self, storage: &str, ns: &str, name: &str) -> Option<Value> {
        let previous = self.objects.get_mut(storage)?.remove(&(ns.to_owned(), name.to_owned()))?;
        self.rv += 1;
        let mut last = previous.clone();
        last["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.record(storage, ChangeKind::Deleted, last.clone(), Some(previous));
        Some(last)
    }

    /// Removes an object whose last state is `last` (an update that removed the last finalizer
    /// of an object being deleted: the update and the removal are one write, one DELETED event).
    pub fn remove_as(&mut self, storage: &str, mut last: Value) -> Option<Value> {
        let (ns, name) = key_of(&last);
        let previous = self.objects.get_mut(storage)?.remove(&(ns, name))?;
        self.rv += 1;
        last["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.record(storage, ChangeKind::Deleted, last.clone(), Some(previous));
        Some(last)
    }

    /// Drops a whole storage without events (a CRD's objects are removed one by one first).
    pub fn drop_storage(&mut self, storage: &str) {
        self.objects.remove(storage);
    }

    fn record(&mut self, storage: &str, kind: ChangeKind, object: Value, previous: Option<Value>) {
        let change = Arc::new(Change { rv: self.rv, storage: storage.to_owned(), kind, object, previous });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receiver is fine: nobody watches.
        let _ = self.tx.send(change);
    }

    /// The changes after `rv` still in the history, and a receiver for the ones to come; None
    /// when `rv` is older than the history (the watch must answer 410 Gone).
    pub fn since(&self, rv: u64) -> Option<Subscription> {
        if rv < self.compacted {
            return None;
        }
        let past = self.history.iter().filter(|c| c.rv > rv).cloned().collect();
        Some((past, self.tx.subscribe()))
    }
}

/// `(namespace, name)` of an object.
pub fn key_of(object: &Value) -> Key {
    let field = |f: &str| {
        object.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or_default().to_owned()
    };
    (field("namespace"), field("name"))
}
