//! The agent's events, standalone as in a cluster: every transition of a (check, instance) and
//! every action taken, kept in memory (the last [`CAPACITY`]) with increasing ids, served as
//! Server-Sent Events on `/v1/events` (resumable with `Last-Event-ID`), and optionally POSTed as
//! JSON to a webhook from a bounded queue, with retries: a slow or dead webhook never holds the
//! probes up, it loses the oldest events and counts them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http::Uri;
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::state::ApiState;
use crate::engine::feed::EngineEvent;
use crate::engine::store::Store;
use crate::http as api_http;

/// Events kept for replay.
pub const CAPACITY: usize = 1000;

/// One recorded event.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// Increasing from 1 for the life of the process.
    pub id: u64,
    /// `transition`, `action`, or `gap` (events this log missed).
    pub kind: &'static str,
    /// The event as JSON (with its id).
    pub data: Value,
}

#[derive(Debug, Default)]
struct Ring {
    last_id: u64,
    items: VecDeque<Arc<Recorded>>,
}

/// The last events, and a channel to the live readers.
#[derive(Debug)]
pub struct EventLog {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Recorded>>,
    capacity: usize,
}

impl EventLog {
    /// A log keeping the last `capacity` events.
    pub fn new(capacity: usize) -> EventLog {
        EventLog { ring: Mutex::default(), live: broadcast::channel(256).0, capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `data` (an object) as an event of `kind`.
    pub fn record(&self, kind: &'static str, mut data: Value) -> Arc<Recorded> {
        let mut ring = self.lock();
        ring.last_id += 1;
        let id = ring.last_id;
        if let Some(map) = data.as_object_mut() {
            map.insert("id".to_owned(), json!(id));
            map.insert("type".to_owned(), json!(kind));
        }
        let event = Arc::new(Recorded { id, kind, data });
        ring.items.push_back(event.clone());
        while ring.items.len() > self.capacity {
            ring.items.pop_front();
        }
        // Sent under the lock, so that a reader who subscribed and then read the ring sees
        // every event exactly once.
        let _ = self.live.send(event.clone());
        event
    }

    /// The events after `since` still kept, how many after it are no longer kept, and a
    /// receiver for what comes next.
    pub fn since(&self, since: u64) -> (Vec<Arc<Recorded>>, u64, broadcast::Receiver<Arc<Recorded>>) {
        let ring = self.lock();
        let receiver = self.live.subscribe();
        let oldest = ring.items.front().map_or(ring.last_id + 1, |e| e.id);
        let lost = oldest.saturating_sub(since.saturating_add(1)).min(ring.last_id.saturating_sub(since));
        let kept = ring.items.iter().filter(|e| e.id > since).cloned().collect();
        (kept, lost, receiver)
    }

    /// The id of the latest event (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.lock().last_id
    }

    /// Where a reader that last saw `seen` resumes: there, or from the start when `seen` is
    /// beyond every id this log gave (the agent restarted, and its ids with it), so that such a
    /// reader is not kept waiting for ids it already had.
    pub fn resume_from(&self, seen: u64) -> u64 {
        if seen > self.last_id() { 0 } else { seen }
    }
}

/// The JSON of an engine event.
pub fn to_json(event: &EngineEvent, node: &str) -> (&'static str, Value) {
    match event {
        EngineEvent::Transition { check, instance_id, from, to, reason, message, at } => (
            "transition",
            json!({
                "time": at.to_string(), "node": node, "healthCheck": check.to_string(), "instanceId": instance_id,
                "from": from.as_str(), "to": to.as_str(), "reason": reason, "message": message,
            }),
        ),
        EngineEvent::Action { check, instance_id, action, succeeded, message, at } => (
            "action",
            json!({
                "time": at.to_string(), "node": node, "healthCheck": check.to_string(), "instanceId": instance_id,
                "action": action, "succeeded": succeeded, "message": message,
            }),
        ),
        EngineEvent::Reported { instance_id, status, reasons, description, at } => (
            "report",
            json!({
                "time": at.to_string(), "node": node, "instanceId": instance_id,
                "reported": status.map(|s| s.as_str()), "reasons": reasons, "description": description,
            }),
        ),
    }
}

/// Copies the store's events into `log` until `cancel`.
pub async fn follow(store: Arc<Store>, log: Arc<EventLog>, node: String, cancel: CancellationToken) {
    let mut events = store.events();
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return,
            e = events.recv() => e,
        };
        match event {
            Ok(e) => {
                let (kind, data) = to_json(&e, &node);
                log.record(kind, data);
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                log.record("gap", json!({"node": node, "missed": missed}));
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// `GET /v1/events` query.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Replay the kept events after this id (as the `Last-Event-ID` header does).
    since: Option<u64>,
    /// `false`: end after the replay instead of streaming on.
    follow: Option<String>,
}

fn sse(event: &Recorded) -> Event {
    Event::default().id(event.id.to_string()).event(event.kind).data(event.data.to_string())
}

/// `GET /v1/events[?since=ID][&follow=false]`: Server-Sent Events (`transition`, `action`,
/// and `gap` when events were lost to this reader), each with its `id`. A client that reconnects
/// with `Last-Event-ID` gets what it missed, as far as the agent still keeps it.
pub async fn stream(
    State(s): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return api_http::bad_query(
                &e,
                "the parameters are since (an event id) and follow (true or false)",
            );
        }
    };
    let follow = match api_http::flag("follow", q.follow.as_deref(), true) {
        Ok(follow) => follow,
        Err(message) => return api_http::error(StatusCode::BAD_REQUEST, message),
    };
    let header = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let since = match (header, q.since) {
        (Some(h), _) => match h.trim().parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return api_http::error(
                    StatusCode::BAD_REQUEST,
                    format!("Last-Event-ID: {h:?} is not an event id"),
                );
            }
        },
        (None, since) => since,
    };
    let log = s.events.clone();
    // Without a position, only what happens from now on.
    let since = since.map_or_else(|| log.last_id(), |seen| log.resume_from(seen));
    let (kept, lost, receiver) = log.since(since);
    let mut last = since;
    let mut replay: Vec<Event> = Vec::new();
    if lost > 0 {
        replay.push(Event::default().event("gap").data(json!({"missed": lost}).to_string()));
    }
    for e in &kept {
        last = e.id;
        replay.push(sse(e));
    }
    let replay = futures_util::stream::iter(replay.into_iter().map(Ok::<_, Infallible>));
    if !follow {
        return Sse::new(replay).into_response();
    }
    let live = futures_util::stream::unfold((receiver, last), |(mut rx, last)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.id <= last => continue,
                Ok(e) => return Some((Ok(sse(&e)), (rx, e.id))),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let gap = Event::default().event("gap").data(json!({"missed": missed}).to_string());
                    return Some((Ok(gap), (rx, last)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(replay.chain(live))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The webhook's figures.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    /// Events by result: `delivered`, `dropped` (the queue was full, or the webhook refused it
    /// for good), `retried`.
    pub events: IntCounterVec,
}

impl WebhookMetrics {
    /// Registers the family in `registry`.
    pub fn register(registry: &Registry) -> Result<WebhookMetrics, prometheus::Error> {
        let events = IntCounterVec::new(
            Opts::new(
                "vigil_events_webhook_total",
                "Events sent to the --events-webhook, by result (delivered, retried, dropped).",
            ),
            &["result"],
        )?;
        for result in ["delivered", "retried", "dropped"] {
            events.with_label_values(&[result]);
        }
        registry.register(Box::new(events.clone()))?;
        Ok(WebhookMetrics { events })
    }
}

/// Where events are POSTed.
#[derive(Clone, Debug)]
pub struct Webhook {
    /// The URL (`http://` or `https://`).
    pub url: Uri,
    /// Events waiting at most; beyond, the oldest are dropped.
    pub queue: usize,
}

/// Why one delivery failed.
enum Failure {
    /// Worth another try (no connection, a 5xx, a 429).
    Retry(String),
    /// Not (a 4xx: the webhook does not want it).
    Refused(String),
}

/// Sends every event of `log` to `hook` until `cancel`, in order, one POST each.
pub async fn deliver(log: Arc<EventLog>, hook: Webhook, metrics: WebhookMetrics, cancel: CancellationToken) {
    let (_, _, mut rx) = log.since(log.last_id());
    let mut queue: VecDeque<Arc<Recorded>> = VecDeque::new();
    let tls = crate::probe::tls::TlsConfigs::load();
    let mut backoff = Duration::from_millis(500);
    loop {
        // Take whatever arrived, without waiting when there is work.
        loop {
            let next = if queue.is_empty() {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    e = rx.recv() => e,
                }
            } else {
                match rx.try_recv() {
                    Ok(e) => Ok(e),
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => Err(broadcast::error::RecvError::Closed),
                }
            };
            match next {
                Ok(e) => {
                    queue.push_back(e);
                    while queue.len() > hook.queue.max(1) {
                        queue.pop_front();
                        metrics.events.with_label_values(&["dropped"]).inc();
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics.events.with_label_values(&["dropped"]).inc_by(n);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        let Some(event) = queue.front().cloned() else { continue };
        match post(&hook.url, &event.data, &tls).await {
            Ok(()) => {
                queue.pop_front();
                metrics.events.with_label_values(&["delivered"]).inc();
                backoff = Duration::from_millis(500);
            }
            Err(Failure::Refused(why)) => {
                queue.pop_front();
                metrics.events.with_label_values(&["dropped"]).inc();
                warn!(url = %hook.url, id = event.id, "the events webhook refused an event: {why}");
            }
            Err(Failure::Retry(why)) => {
                metrics.events.with_label_values(&["retried"]).inc();
                debug!(url = %hook.url, id = event.id, retry_in = ?backoff, "cannot deliver an event: {why}");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn post(url: &Uri, body: &Value, tls: &crate::probe::tls::TlsConfigs) -> Result<(), Failure> {
    let secure = url.scheme_str() == Some("https");
    let host = url.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = url.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| Failure::Retry(format!("cannot connect to {host}:{port}: {e}")))?;
        let path = url.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let authority = url.authority().map(|a| a.to_string()).unwrap_or_else(|| host.clone());
        let request = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("vigil/", env!("CARGO_PKG_VERSION")))
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
            .map_err(|e| Failure::Refused(format!("cannot build the request: {e}")))?;
        let status = if secure {
            let config = tls.get(crate::probe::tls::Alpn::Http1, false).map_err(Failure::Retry)?;
            let name = crate::probe::tls::server_name(&host).map_err(Failure::Refused)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| Failure::Retry(format!("TLS with {host}: {e}")))?;
            send(stream, request).await?
        } else {
            send(tcp, request).await?
        };
        match status.as_u16() {
            200..=299 => Ok(()),
            429 | 500..=599 => Err(Failure::Retry(format!("answered {status}"))),
            _ => Err(Failure::Refused(format!("answered {status}"))),
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), work).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Retry("no answer within 10s".to_owned())),
    }
}

async fn send<S>(
    stream: S,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<http::StatusCode, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Retry(format!("HTTP: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(request).await.map_err(|e| Failure::Retry(format!("HTTP: {e}")))?;
    Ok(response.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_last_events_and_says_how_many_a_reader_missed() {
        let log = EventLog::new(3);
        for i in 0..5 {
            log.record("transition", json!({"n": i}));
        }
        let (kept, lost, _) = log.since(0);
        assert_eq!(kept.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(lost, 2, "events 1 and 2 are gone");
        assert_eq!(kept[0].data["id"], 3);
        assert_eq!(kept[0].data["type"], "transition");
        let (kept, lost, _) = log.since(4);
        assert_eq!((kept.len(), lost), (1, 0));
        let (kept, lost, mut rx) = log.since(5);
        assert_eq!((kept.len(), lost), (0, 0));
        log.record("action", json!({}));
        assert_eq!(rx.try_recv().unwrap().id, 6, "the live reader gets what comes next");
        // A reader from before a restart of the agent, whose ids started over.
        assert_eq!(log.resume_from(500), 0);
        assert_eq!(log.resume_from(5), 5);
    }
}
