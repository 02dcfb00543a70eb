//! `/api/v1/containers/…`: container health, stats and live logs, answered from the inventory
//! and the stats collected in the background (logs stream from the Engine).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use super::state::ApiState;
use crate::docker::{Container, DockerRuntime};
use crate::engine::store::Store;
use crate::http;

fn runtime(s: &ApiState) -> Result<&DockerRuntime, Box<Response>> {
    s.docker.as_ref().ok_or_else(|| {
        Box::new(http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this agent has no Docker runtime (see --docker-socket)",
        ))
    })
}

fn find(docker: &DockerRuntime, id: &str) -> Result<Container, Box<Response>> {
    docker.find(id).ok_or_else(|| {
        Box::new(http::error(
            StatusCode::NOT_FOUND,
            format!("no container {id:?} (a name, an id or a unique id prefix)"),
        ))
    })
}

/// The runtime and the container `{id}` names, or the answer that says why not.
fn lookup<'a>(s: &'a ApiState, id: &str) -> Result<(&'a DockerRuntime, Container), Box<Response>> {
    let docker = runtime(s)?;
    Ok((docker, find(docker, id)?))
}

fn summary(docker: &DockerRuntime, c: &Container, now: Timestamp) -> Value {
    let resources = docker.resources(&c.id).map(|(_, r)| r).unwrap_or_default();
    json!({
        "id": c.short_id(),
        "name": c.name,
        "image": c.image,
        "status": c.state.as_str(),
        "health": c.health_status(),
        "uptime": c.uptime_seconds(now),
        "resources": resources,
        "labels": c.labels,
        "lastHealthCheck": c.health.as_ref().and_then(|h| h.log.last()).and_then(|r| r.end.clone().or(r.start.clone())),
    })
}

/// The summary of every container, as `GET /api/v1/containers/health` (and NATS
/// `docker.container.health.all`) answer it.
pub fn summary_doc(docker: &DockerRuntime) -> Value {
    let now = Timestamp::now();
    let containers = docker.containers();
    let healthy = containers.iter().filter(|c| c.counts_healthy()).count();
    let unhealthy = containers.iter().filter(|c| c.counts_unhealthy()).count();
    let daemon = docker.daemon();
    json!({
        "timestamp": now.to_string(),
        "total": containers.len(),
        "healthy": healthy,
        "unhealthy": unhealthy,
        "daemon": { "reachable": daemon.reachable, "message": daemon.message },
        "containers": containers.iter().map(|c| summary(docker, c, now)).collect::<Vec<_>>(),
    })
}

/// One container's health: the summary plus the HEALTHCHECK log and the status checks of its
/// instance (`GET /api/v1/containers/{id}/health`, NATS `docker.container.health`).
pub fn health_doc(store: &Store, docker: &DockerRuntime, c: &Container) -> Value {
    let mut body = summary(docker, c, Timestamp::now());
    let instance = crate::report::render::instance_doc(
        store,
        &crate::inventory::id_for(crate::api::InstanceKind::Container, &c.name, store.node()),
    );
    body["fullId"] = json!(c.id);
    body["exitCode"] = json!(c.exit_code);
    body["startedAt"] = json!(c.started_at.map(|t| t.to_string()));
    body["restartCount"] = json!(c.restart_count);
    body["stoppedByOwner"] = json!(c.stopped_by_owner);
    body["failingStreak"] = json!(c.health.as_ref().map(|h| h.failing_streak));
    body["healthLog"] = json!(c.health.as_ref().map(|h| h.log.clone()).unwrap_or_default());
    body["mounts"] = json!(
        c.mounts
            .iter()
            .map(|m| json!({"type": m.kind, "source": m.source, "destination": m.destination, "rw": m.rw}))
            .collect::<Vec<_>>()
    );
    body["instanceStatus"] = json!(instance.and_then(|doc| doc.status));
    body
}

/// One container's last resource sample (`GET /api/v1/containers/{id}/stats`, NATS
/// `docker.container.stats`).
pub fn stats_doc(docker: &DockerRuntime, c: &Container) -> Value {
    let (sampled, resources) =
        docker.resources(&c.id).map_or((None, Default::default()), |(t, r)| (Some(t), r));
    json!({
        "id": c.short_id(),
        "name": c.name,
        "status": c.state.as_str(),
        "sampledAt": sampled.map(|t| t.to_string()),
        "resources": resources,
    })
}

/// `GET /api/v1/containers/health`.
pub async fn all_health(State(s): State<ApiState>) -> Response {
    match runtime(&s) {
        Ok(docker) => axum::Json(summary_doc(docker)).into_response(),
        Err(r) => *r,
    }
}

/// `GET /api/v1/containers/{id}/health`: the summary plus the HEALTHCHECK log and the status
/// checks of its instance.
pub async fn one_health(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match lookup(&s, &id) {
        Ok((docker, c)) => axum::Json(health_doc(&s.store, docker, &c)).into_response(),
        Err(r) => *r,
    }
}

/// `GET /api/v1/containers/{id}/stats`.
pub async fn one_stats(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match lookup(&s, &id) {
        Ok((docker, c)) => axum::Json(stats_doc(docker, &c)).into_response(),
        Err(r) => *r,
    }
}

/// Query of the logs route.
#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    /// Last N lines; all when absent.
    tail: Option<String>,
    /// Keep streaming new lines.
    #[serde(default)]
    follow: Option<String>,
}

/// `GET /api/v1/containers/{id}/logs?tail=N&follow=true`: Server-Sent Events, one `log` event per
/// line (`{"timestamp","stream","message"}`), then an `end` event when the logs end (the container
/// stopped, or without `follow` the history was sent). A client that leaves ends the stream.
pub async fn logs(State(s): State<ApiState>, Path(id): Path<String>, Query(q): Query<LogsQuery>) -> Response {
    let (docker, c) = match lookup(&s, &id) {
        Ok(found) => found,
        Err(r) => return *r,
    };
    let tail = match q.tail.as_deref() {
        None | Some("all") => None,
        Some(t) => match t.parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => {
                return http::error(
                    StatusCode::BAD_REQUEST,
                    format!("tail: {t:?} is not a number of lines (or \"all\")"),
                );
            }
        },
    };
    let follow = match http::flag("follow", q.follow.as_deref(), false) {
        Ok(follow) => follow,
        Err(message) => return http::error(StatusCode::BAD_REQUEST, message),
    };
    let lines = docker.logs(&c.id, tail, follow).map(|line| {
        Ok::<_, Infallible>(match line {
            Ok(line) => Event::default().event("log").json_data(line).unwrap_or_else(|_| Event::default()),
            Err(e) => Event::default().event("error").data(e.message()),
        })
    });
    let end = futures_util::stream::once(async { Ok(Event::default().event("end").data("{}")) });
    Sse::new(lines.chain(end)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}
