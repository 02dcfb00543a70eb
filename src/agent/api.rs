//! The agent's HTTP API: health, readiness, metrics, host status, configuration and the live
//! view of instances. GET (and HEAD) only; JSON answers under `{"data": …}`, errors under
//! `{"error": {"code", "message"}}`.

use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;

pub use super::state::ApiState;
use crate::api::{CheckStatus, InstanceKind, InstanceState, InstanceStatus};
use crate::http::{self, AccessPolicy, Sensitive};
use crate::inventory::host;
use crate::metrics;
use crate::report::render;

/// Longest silence of the runtime's heartbeat before `/healthz` fails.
pub const MAX_HEARTBEAT_SILENCE: Duration = Duration::from_secs(30);

/// The agent's routes.
pub fn router(state: ApiState, access: AccessPolicy, request_timeout: Duration) -> Router {
    let config_access = access.clone();
    let sensitive = Router::new()
        .route("/v1/host/config", get(config))
        .route_layer(axum::middleware::from_fn(move |req, next| {
            http::require_access(config_access.clone(), Sensitive::Config, req, next)
        }))
        .merge(
            Router::new().route("/api/v1/containers/{id}/logs", get(super::containers::logs)).route_layer(
                axum::middleware::from_fn(move |req, next| {
                    http::require_access(access.clone(), Sensitive::Logs, req, next)
                }),
            ),
        );
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/health", get(health))
        .route("/v1/host/status", get(host_status))
        .route("/v1/instances", get(instances))
        .route("/v1/instances/{id}", get(instance))
        .route("/v1/healthchecks", get(healthchecks))
        .route("/v1/events", get(super::events::stream))
        .route("/api/v1/containers/health", get(super::containers::all_health))
        .route("/api/v1/containers/{id}/health", get(super::containers::one_health))
        .route("/api/v1/containers/{id}/stats", get(super::containers::one_stats))
        .merge(sensitive)
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(axum::middleware::from_fn(move |req, next| http::request_timeout(request_timeout, req, next)))
        .with_state(state)
}

fn data<T: Serialize>(value: T) -> Response {
    axum::Json(json!({ "data": value })).into_response()
}

async fn healthz(State(s): State<ApiState>) -> Response {
    http::liveness(&s.health, MAX_HEARTBEAT_SILENCE)
}

async fn readyz(State(s): State<ApiState>) -> Response {
    http::readiness(&s.readiness)
}

async fn metrics_text(State(s): State<ApiState>) -> Response {
    s.metrics.process.refresh();
    match metrics::encode(&s.registry) {
        Ok(mut text) => {
            s.view.encode(&mut text);
            if let Some(docker) = &s.docker {
                docker.encode_metrics(s.store.node(), &mut text);
            }
            s.qemu.encode_metrics(s.store.node(), &mut text);
            http::prometheus_text(text)
        }
        Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}")),
    }
}

/// `/v1/health`: answered from memory.
async fn health(State(s): State<ApiState>) -> Response {
    let snapshot = s.health.snapshot();
    let (checks, instances) = s.store.sizes();
    let body = json!({
        "status": if snapshot.healthy { "healthy" } else { "degraded" },
        "reasons": snapshot.reasons,
        "version": env!("CARGO_PKG_VERSION"),
        "ready": s.readiness.is_ready(),
        "checks": checks,
        "instances": instances,
    });
    // Degraded is still an answer: 200. Liveness is /healthz.
    axum::Json(body).into_response()
}

/// `/v1/host/status`: /proc read now, claims from the live view.
async fn host_status(State(s): State<ApiState>) -> Response {
    let figures = match tokio::task::spawn_blocking(host::figures).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let claims = s.store.claims();
    data(json!({
        "hostname": figures.hostname,
        "total_cpus": figures.total_cpus,
        "used_cpus": claims.cpus,
        "total_memory_mb": figures.total_memory_mb,
        "available_memory_mb": figures.available_memory_mb,
        "used_memory_mb": claims.memory_mb,
        "running_vms": claims.vms.0,
        "total_vms": claims.vms.1,
        "running_containers": claims.containers.0,
        "total_containers": claims.containers.1,
        "running_instances": claims.all.0,
        "total_instances": claims.all.1,
        "uptime_seconds": figures.uptime_seconds,
        "load_average": figures.load_average,
    }))
}

async fn config(State(s): State<ApiState>) -> Response {
    data(s.config.as_ref())
}

/// The filters of `GET /v1/instances`, as EC2's DescribeInstanceStatus has them. Every filter
/// takes a comma-separated list; an instance passes when it matches one value of each filter
/// given.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceFilters {
    /// Instance ids (or names).
    instance_ids: Option<String>,
    /// `Pod`, `Container`, `VM`, `Host`, `Endpoint`.
    kind: Option<String>,
    /// The worst of the three status checks.
    status: Option<String>,
    /// The System check.
    system_status: Option<String>,
    /// The Instance check.
    instance_status: Option<String>,
    /// The Attached-volume check.
    attached_volume_status: Option<String>,
    /// `false`: running instances only (EC2's default; an endpoint, which has no run state,
    /// always counts as running); `true` (vigil's default): all.
    include_all: Option<String>,
}

const STATUSES: [CheckStatus; 5] = [
    CheckStatus::Ok,
    CheckStatus::Impaired,
    CheckStatus::InsufficientData,
    CheckStatus::Initializing,
    CheckStatus::NotApplicable,
];
const KINDS: [InstanceKind; 5] = [
    InstanceKind::Pod,
    InstanceKind::Container,
    InstanceKind::Vm,
    InstanceKind::Host,
    InstanceKind::Endpoint,
];

fn list(value: &Option<String>) -> Option<Vec<&str>> {
    value.as_deref().map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect())
}

fn statuses(param: &str, value: &Option<String>) -> Result<Option<Vec<CheckStatus>>, String> {
    let Some(values) = list(value) else { return Ok(None) };
    values
        .into_iter()
        .map(|v| {
            STATUSES.iter().copied().find(|s| s.as_str() == v).ok_or_else(|| {
                let allowed: Vec<&str> = STATUSES.iter().map(|s| s.as_str()).collect();
                format!("{param}: {v:?} is not one of {}", allowed.join(", "))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl InstanceFilters {
    /// The documents that pass, or what is wrong with the filters.
    fn apply(&self, docs: Vec<InstanceStatus>) -> Result<Vec<InstanceStatus>, String> {
        let ids = list(&self.instance_ids);
        let kinds = match list(&self.kind) {
            None => None,
            Some(values) => Some(
                values
                    .into_iter()
                    .map(|v| {
                        KINDS.iter().copied().find(|k| k.as_str().eq_ignore_ascii_case(v)).ok_or_else(|| {
                            let allowed: Vec<&str> = KINDS.iter().map(|k| k.as_str()).collect();
                            format!("kind: {v:?} is not one of {}", allowed.join(", "))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let any = statuses("status", &self.status)?;
        let system = statuses("systemStatus", &self.system_status)?;
        let instance = statuses("instanceStatus", &self.instance_status)?;
        let volumes = statuses("attachedVolumeStatus", &self.attached_volume_status)?;
        let include_all = http::flag("includeAll", self.include_all.as_deref(), true)?;
        let within = |wanted: &Option<Vec<CheckStatus>>, got: CheckStatus| {
            wanted.as_ref().is_none_or(|w| w.contains(&got))
        };
        Ok(docs
            .into_iter()
            .filter(|d| {
                let i = &d.spec.instance;
                let s = d.status.clone().unwrap_or_default();
                ids.as_ref().is_none_or(|ids| ids.iter().any(|x| *x == i.id || *x == i.name))
                    && kinds.as_ref().is_none_or(|k| k.contains(&i.kind))
                    && (include_all || s.state == InstanceState::Running || i.kind == InstanceKind::Endpoint)
                    && within(&system, s.system_status.status)
                    && within(&instance, s.instance_status.status)
                    && within(&volumes, s.attached_volume_status.status)
                    && within(
                        &any,
                        CheckStatus::worst([
                            s.system_status.status,
                            s.instance_status.status,
                            s.attached_volume_status.status,
                        ]),
                    )
            })
            .collect())
    }
}

async fn instances(
    State(s): State<ApiState>,
    query: Result<Query<InstanceFilters>, QueryRejection>,
) -> Response {
    let filters = match query {
        Ok(Query(f)) => f,
        Err(e) => {
            return http::bad_query(
                &e,
                "the filters are instanceIds, kind, status, systemStatus, instanceStatus, attachedVolumeStatus and includeAll",
            );
        }
    };
    match filters.apply(render::instance_docs(&s.store)) {
        Ok(docs) => data(docs),
        Err(e) => http::error(StatusCode::BAD_REQUEST, e),
    }
}

async fn instance(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match render::instance_doc(&s.store, &id) {
        Some(doc) => data(doc),
        None => http::error(StatusCode::NOT_FOUND, format!("no instance {id:?} on this agent")),
    }
}

async fn healthchecks(State(s): State<ApiState>) -> Response {
    data(render::check_docs(&s.store))
}
