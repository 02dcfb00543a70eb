//! NATS (`--nats-url`): the agent's status, events and container health on the subjects the
//! founding health designs name, with the same JSON as the HTTP API.
//!
//! | subject | what |
//! |---|---|
//! | `<prefix>.health.status` | an instance's InstanceStatus, each time it changes (as `/v1/instances/{id}`) |
//! | `<prefix>.health.events` | each transition and action (as `/v1/events`) |
//! | `<prefix>.health.metrics` | every `--nats-metrics-interval`: each instance's StatusCheckFailed figures |
//! | `docker.container.health` | a container's health when its state or health changes (as `/api/v1/containers/{id}/health`) |
//! | `docker.container.health.all` | request/reply: the summary of every container (as `/api/v1/containers/health`) |
//! | `docker.container.stats` | request/reply: one container's stats (the request names it; as `/api/v1/containers/{id}/stats`) |
//! | `docker.container.stats.stream` | each running container's stats, every `--docker-stats-interval` |
//!
//! The client reconnects by itself, for ever; while it is away, the latest state is what counts,
//! so after each (re)connection every instance and container is published again — after
//! [`RESYNC_SETTLE`], as the other clients of a restarted server are reconnecting and
//! subscribing again at the same moment and would miss a snapshot sent at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::containers;
use super::events::EventLog;
use crate::docker::DockerRuntime;
use crate::engine::store::Store;
use crate::report::render;

/// How long after a (re)connection the full state is published.
pub const RESYNC_SETTLE: Duration = Duration::from_secs(1);

/// What the NATS publisher needs.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, comma-separated for a cluster).
    pub url: String,
    /// The first token of the health subjects.
    pub prefix: String,
    /// How often the metrics snapshot is published.
    pub metrics_interval: Duration,
    /// How often container stats are streamed.
    pub stats_interval: Duration,
}

/// Why NATS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The URL or options were refused.
    #[error("cannot use the NATS server {url}")]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: async_nats::ConnectError,
    },
}

async fn publish(client: &Client, subject: String, body: &Value) {
    if let Err(e) = client.publish(subject.clone(), Bytes::from(body.to_string())).await {
        warn!(subject, "cannot publish to NATS: {e}");
    }
}

/// Connects (in the background: a server that is not up yet is waited for) and publishes until
/// `cancel`.
pub async fn run(
    config: NatsConfig,
    store: Arc<Store>,
    events: Arc<EventLog>,
    docker: Option<DockerRuntime>,
    cancel: CancellationToken,
) -> Result<(), NatsError> {
    // Each (re)connection bumps this, and the publishers send everything again.
    let (connected_tx, connected) = watch::channel(0u64);
    let options = ConnectOptions::new()
        .name(format!("vigil-agent {}", store.node()))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| Duration::from_millis((250 * attempts as u64).min(5000)))
        .event_callback(move |event| {
            let connected_tx = connected_tx.clone();
            async move {
                match event {
                    Event::Connected => {
                        info!("connected to NATS");
                        connected_tx.send_modify(|n| *n += 1);
                    }
                    Event::Disconnected => warn!("disconnected from NATS; reconnecting"),
                    other => info!("NATS: {other}"),
                }
            }
        });
    let client = options
        .connect(config.url.as_str())
        .await
        .map_err(|source| NatsError::Connect { url: config.url.clone(), source })?;
    let prefix = config.prefix.clone();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(statuses(client.clone(), prefix.clone(), store.clone(), connected.clone()));
    tasks.spawn(forward_events(client.clone(), prefix.clone(), events));
    tasks.spawn(metrics(client.clone(), prefix, store.clone(), config.metrics_interval));
    if let Some(docker) = docker {
        tasks.spawn(container_health(client.clone(), store.clone(), docker.clone(), connected));
        tasks.spawn(answer_summary(client.clone(), docker.clone()));
        tasks.spawn(answer_stats(client.clone(), docker.clone()));
        tasks.spawn(stream_stats(client.clone(), docker, config.stats_interval));
    }
    cancel.cancelled().await;
    tasks.abort_all();
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    Ok(())
}

/// Each changed instance on `<prefix>.health.status`; every instance after each connection.
async fn statuses(client: Client, prefix: String, store: Arc<Store>, mut connected: watch::Receiver<u64>) {
    let subject = format!("{prefix}.health.status");
    let mut cursor = store.subscribe();
    loop {
        loop {
            let changes = store.changes(&mut cursor, false, 256);
            if changes.instances.is_empty() && changes.checks.is_empty() {
                break;
            }
            for (id, view) in changes.instances {
                let body = match view {
                    Some(v) => json!(render::instance_status(&v, store.namespace())),
                    // Gone: its id and nothing else.
                    None => json!({"spec": {"instance": {"id": id}}, "status": null, "deleted": true}),
                };
                publish(&client, subject.clone(), &body).await;
            }
        }
        tokio::select! {
            () = cursor.changed() => {}
            r = connected.changed() => {
                if r.is_err() {
                    return;
                }
                // Everything again: what happened while away is covered by the latest state.
                tokio::time::sleep(RESYNC_SETTLE).await;
                cursor = store.subscribe();
            }
        }
    }
}

/// Each event on `<prefix>.health.events`.
async fn forward_events(client: Client, prefix: String, events: Arc<EventLog>) {
    let subject = format!("{prefix}.health.events");
    let (_, _, mut rx) = events.since(events.last_id());
    loop {
        match rx.recv().await {
            Ok(e) => publish(&client, subject.clone(), &e.data).await,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                publish(&client, subject.clone(), &json!({"type": "gap", "missed": missed})).await;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The StatusCheckFailed family of every instance, as CloudWatch has it.
pub fn metrics_doc(store: &Store) -> Value {
    use crate::metrics::SampleSource;
    // The same figures as the vigil_status_check_failed* gauges.
    let instances: Vec<Value> = store
        .samples()
        .instances
        .iter()
        .map(|i| {
            let (system, instance, volumes) = (u8::from(i.system), u8::from(i.instance), u8::from(i.volumes));
            json!({
                "instanceId": &*i.instance_id,
                "kind": i.kind,
                "StatusCheckFailed": system.max(instance).max(volumes),
                "StatusCheckFailed_System": system,
                "StatusCheckFailed_Instance": instance,
                "StatusCheckFailed_AttachedEBS": volumes,
            })
        })
        .collect();
    json!({"timestamp": store.now().to_string(), "node": store.node(), "instances": instances})
}

async fn metrics(client: Client, prefix: String, store: Arc<Store>, every: Duration) {
    let subject = format!("{prefix}.health.metrics");
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        publish(&client, subject.clone(), &metrics_doc(&store)).await;
    }
}

/// A container's health on `docker.container.health` when its state or health changes; every
/// container after each connection.
async fn container_health(
    client: Client,
    store: Arc<Store>,
    docker: DockerRuntime,
    mut connected: watch::Receiver<u64>,
) {
    let mut changes = docker.subscribe();
    let mut last: HashMap<String, (String, String)> = HashMap::new();
    loop {
        let containers = docker.containers();
        for c in &containers {
            let now = (c.state.as_str().to_owned(), c.health_status().to_owned());
            if last.get(&c.id) != Some(&now) {
                publish(
                    &client,
                    "docker.container.health".to_owned(),
                    &containers::health_doc(&store, &docker, c),
                )
                .await;
                last.insert(c.id.clone(), now);
            }
        }
        last.retain(|id, _| containers.iter().any(|c| c.id == *id));
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
            }
            r = connected.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(RESYNC_SETTLE).await;
                last.clear();
            }
        }
    }
}

/// `docker.container.health.all`: the summary, to whoever asks.
async fn answer_summary(client: Client, docker: DockerRuntime) {
    let Ok(mut requests) = client.subscribe("docker.container.health.all").await else {
        warn!("cannot subscribe to docker.container.health.all");
        return;
    };
    while let Some(request) = requests.next().await {
        if let Some(reply) = request.reply {
            let body = containers::summary_doc(&docker);
            if let Err(e) = client.publish(reply, Bytes::from(body.to_string())).await {
                warn!("cannot answer docker.container.health.all: {e}");
            }
        }
    }
}

/// `docker.container.stats`: the stats of the container the request names (its name, id or id
/// prefix, as text or as `{"id": …}`).
async fn answer_stats(client: Client, docker: DockerRuntime) {
    let Ok(mut requests) = client.subscribe("docker.container.stats").await else {
        warn!("cannot subscribe to docker.container.stats");
        return;
    };
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else { continue };
        let text = String::from_utf8_lossy(&request.payload).trim().to_owned();
        let key = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap_or(text);
        let body = match docker.find(&key) {
            Some(c) => containers::stats_doc(&docker, &c),
            None => {
                json!({"error": {"code": 404, "message": format!("no container {key:?} (a name, an id or a unique id prefix)")}})
            }
        };
        if let Err(e) = client.publish(reply, Bytes::from(body.to_string())).await {
            warn!("cannot answer docker.container.stats: {e}");
        }
    }
}

/// Every running container's stats on `docker.container.stats.stream`.
async fn stream_stats(client: Client, docker: DockerRuntime, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for c in docker.containers().into_iter().filter(|c| c.state == crate::docker::RunState::Running) {
            publish(&client, "docker.container.stats.stream".to_owned(), &containers::stats_doc(&docker, &c))
                .await;
        }
    }
}
