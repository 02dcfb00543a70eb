//! Watches: from a resourceVersion, in order, filtered by namespace and selectors, with bookmarks
//! and 410 Gone for a version the history no longer holds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::resources::Resource;
use crate::select::{FieldSelector, LabelSelector};
use crate::server::present;
use crate::store::{Change, ChangeKind, Store};

/// What the watch request asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `sendInitialEvents` (streaming list).
    pub send_initial: bool,
    /// `resourceVersion` ("" or "0" = start with the current objects).
    pub resource_version: String,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// How often to send a bookmark.
    pub bookmark_interval: Duration,
}

struct Filter {
    res: Resource,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        let ns = object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
        self.ns.as_deref().is_none_or(|want| want == ns)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The event this watch sees for a change, if any.
    fn event(&self, change: &Change) -> Option<String> {
        if change.storage != self.res.storage {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
        let kind = match change.kind {
            ChangeKind::Added if now => "ADDED",
            ChangeKind::Modified if now && before => "MODIFIED",
            // Selector-filtered watches see objects enter and leave, as the real watch cache does.
            ChangeKind::Modified if now => "ADDED",
            ChangeKind::Modified if before => "DELETED",
            ChangeKind::Deleted if before || now => "DELETED",
            _ => return None,
        };
        Some(line(kind, &present(&self.res, &change.object)))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> String {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": metadata}),
        )
    }
}

fn line(kind: &str, object: &Value) -> String {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    text
}

/// Starts a watch (under the store's lock, so that nothing falls between the past and the
/// future); the lines are streamed by a task of their own.
pub fn start(
    store: &Store,
    res: Resource,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    options: Options,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let filter = Filter { res, ns, labels, fields };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut first: Vec<String> = Vec::new();
    let current = store.rv();
    let from = match options.resource_version.as_str() {
        "" | "0" => None,
        rv => rv.parse::<u64>().ok().or(Some(0)),
    };
    let subscription = match from {
        _ if options.send_initial || from.is_none() => {
            for object in store.list(&filter.res.storage, filter.ns.as_deref()) {
                if filter.matches(object) {
                    first.push(line("ADDED", &present(&filter.res, object)));
                }
            }
            if options.send_initial && options.bookmarks {
                first.push(filter.bookmark(current, true));
            }
            store.since(current)
        }
        Some(rv) => match store.since(rv) {
            Some((past, receiver)) => {
                first.extend(past.iter().filter_map(|c| filter.event(c)));
                Some((Vec::new(), receiver))
            }
            None => {
                let status = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {rv} ({})", store.compacted() + 1),
                    "reason": "Expired", "code": 410,
                });
                first.push(line("ERROR", &status));
                None
            }
        },
        None => None,
    };
    let receiver = subscription.map(|(_, r)| r);
    tokio::spawn(pump(filter, first, receiver, current, options, tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
}

async fn pump(
    filter: Filter,
    first: Vec<String>,
    receiver: Option<broadcast::Receiver<Arc<Change>>>,
    mut progress: u64,
    options: Options,
    tx: mpsc::Sender<Bytes>,
) {
    for l in first {
        if tx.send(Bytes::from(l)).await.is_err() {
            return;
        }
    }
    let Some(mut receiver) = receiver else { return };
    let deadline = tokio::time::sleep(options.timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(options.bookmark_interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            change = receiver.recv() => match change {
                Ok(change) => {
                    progress = change.rv;
                    if let Some(l) = filter.event(&change)
                        && tx.send(Bytes::from(l)).await.is_err()
                    {
                        return;
                    }
                }
                // A watcher too slow to keep up is closed, as the real server does; the client
                // resumes from its last resourceVersion.
                Err(_) => return,
            },
            _ = ticker.tick(), if options.bookmarks => {
                if tx.send(Bytes::from(filter.bookmark(progress, false))).await.is_err() {
                    return;
                }
            }
            () = &mut deadline => return,
            () = tx.closed() => return,
        }
    }
}
