//! Keeps the container inventory current from the Engine's event stream: one listing when the
//! stream (re)connects, then one inspect per relevant event. No polling.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, EventMessage};
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures_util::StreamExt;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Container, DockerError, DockerRuntime, HealthRun, HealthState, Mount, RunState, engine_message};
use crate::api::CheckStatus;
use crate::inventory::{Claimed, Observation};

/// Inspects at once while listing.
const LIST_CONCURRENCY: usize = 8;

/// Follows the daemon until `cancel`: lists the containers, then applies events as they come.
/// When the daemon goes away, the containers are kept and marked as seen through an unreachable
/// daemon; the agent retries with backoff (0.5 s doubling to 5 s).
pub async fn watch(docker: DockerRuntime, cancel: CancellationToken) {
    let mut delay = Duration::from_millis(500);
    loop {
        let outcome = tokio::select! {
            () = cancel.cancelled() => return,
            r = follow(&docker) => r,
        };
        let message = match outcome {
            Ok(()) => DockerError::EventsEnded.message(),
            Err(e) => e.message(),
        };
        let was_reachable = {
            let mut index = docker.write();
            let was = index.daemon.reachable;
            index.daemon.reachable = false;
            index.daemon.message = message.clone();
            was
        };
        if was_reachable {
            warn!(socket = %docker.socket, "Docker daemon lost: {message}");
            // Figures of a daemon that does not answer are not current: none rather than stale.
            docker.stats.write().unwrap_or_else(|e| e.into_inner()).clear();
            docker.bump();
            delay = Duration::from_millis(500);
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn follow(docker: &DockerRuntime) -> Result<(), DockerError> {
    let client = &docker.client()?;
    client.ping().await.map_err(DockerError::Ping)?;
    // Events since just before the listing: whatever happens while listing is replayed, and an
    // event seen twice only costs an inspect.
    let since = (Timestamp::now().as_second() - 1).to_string();
    let filters = HashMap::from([("type".to_owned(), vec!["container".to_owned()])]);
    let mut events =
        client.events(Some(EventsOptionsBuilder::default().since(&since).filters(&filters).build()));

    let listed = client
        .list_containers(Some(ListContainersOptionsBuilder::default().all(true).build()))
        .await
        .map_err(DockerError::ListContainers)?;
    let ids: Vec<String> = listed.into_iter().filter_map(|c| c.id).collect();
    let inspected: Vec<Option<ContainerInspectResponse>> = futures_util::stream::iter(ids)
        .map(|id| async move { client.inspect_container(&id, None).await.ok() })
        .buffer_unordered(LIST_CONCURRENCY)
        .collect()
        .await;
    {
        let mut index = docker.write();
        let previous = std::mem::take(&mut index.containers);
        for response in inspected.into_iter().flatten() {
            let Some(mut c) = from_inspect(response) else { continue };
            // Known before (a reconnect): keep what the events told us. New: a container found
            // stopped has no history here, so it is taken as stopped on purpose.
            c.stopped_by_owner = match previous.get(&c.id) {
                Some(before) => before.stopped_by_owner && !matches!(c.state, RunState::Running),
                None => !matches!(c.state, RunState::Running | RunState::Restarting | RunState::Paused),
            };
            index.containers.insert(c.id.clone(), c);
        }
        index.daemon.reachable = true;
        index.daemon.message = "reachable".to_owned();
        index.synced = true;
        info!(socket = %docker.socket, containers = index.containers.len(), "Docker containers listed");
    }
    docker.bump();

    while let Some(event) = events.next().await {
        let event = event.map_err(DockerError::Events)?;
        apply(docker, event).await;
    }
    Ok(())
}

/// What an event means for the inventory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// Nothing (exec, attach, resize…).
    None,
    /// Look again.
    Inspect,
    /// Look again; its owner stopped it.
    InspectStoppedByOwner,
    /// Look again; it runs again.
    InspectStarted,
    /// It is gone.
    Remove,
}

fn effect(action: &str) -> Effect {
    // `health_status: healthy` and friends carry a suffix.
    let verb = action.split(':').next().unwrap_or("").trim();
    match verb {
        "destroy" => Effect::Remove,
        "stop" | "kill" => Effect::InspectStoppedByOwner,
        "start" | "restart" | "unpause" => Effect::InspectStarted,
        "create" | "die" | "pause" | "rename" | "update" | "oom" | "health_status" => Effect::Inspect,
        _ => Effect::None,
    }
}

async fn apply(docker: &DockerRuntime, event: EventMessage) {
    let action = event.action.unwrap_or_default();
    let Some(id) = event.actor.and_then(|a| a.id) else { return };
    let effect = match effect(&action) {
        // vigil's own restart: the container is not its owner's to hold.
        Effect::InspectStoppedByOwner if docker.is_restarting(&id) => Effect::Inspect,
        Effect::InspectStarted => {
            docker.mark_restarting(&id, false);
            Effect::InspectStarted
        }
        other => other,
    };
    debug!(container = %id, action, ?effect, "Docker event");
    match effect {
        Effect::None => {}
        Effect::Remove => {
            if docker.write().containers.remove(&id).is_some() {
                docker.stats.write().unwrap_or_else(|e| e.into_inner()).remove(&id);
                docker.bump();
            }
        }
        Effect::Inspect | Effect::InspectStoppedByOwner | Effect::InspectStarted => {
            let client = match docker.client() {
                Ok(c) => c,
                Err(e) => {
                    warn!(container = %id, "cannot inspect: {}", e.message());
                    return;
                }
            };
            let response = match client.inspect_container(&id, None).await {
                Ok(r) => r,
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                    if docker.write().containers.remove(&id).is_some() {
                        docker.bump();
                    }
                    return;
                }
                Err(e) => {
                    warn!(container = %id, "cannot inspect: {}", engine_message(&e));
                    return;
                }
            };
            let Some(mut c) = from_inspect(response) else { return };
            let mut index = docker.write();
            let before = index.containers.get(&id);
            c.stopped_by_owner = match effect {
                Effect::InspectStoppedByOwner => true,
                Effect::InspectStarted => false,
                _ => {
                    before.is_some_and(|b| b.stopped_by_owner)
                        || (before.is_none() && c.state == RunState::Created)
                }
            } && !matches!(c.state, RunState::Running | RunState::Restarting);
            if before != Some(&c) {
                index.containers.insert(id, c);
                drop(index);
                docker.bump();
            }
        }
    }
}

fn from_inspect(r: ContainerInspectResponse) -> Option<Container> {
    let id = r.id?;
    let state = r.state.unwrap_or_default();
    let run_state = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => RunState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => RunState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => RunState::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => RunState::Restarting,
        Some(ContainerStateStatusEnum::REMOVING) => RunState::Removing,
        Some(ContainerStateStatusEnum::DEAD) => RunState::Dead,
        _ => RunState::Exited,
    };
    let health = state.health.and_then(|h| {
        let status = h.status.map(|s| s.to_string()).unwrap_or_default();
        if status.is_empty() || status == "none" {
            return None;
        }
        Some(HealthState {
            status,
            failing_streak: h.failing_streak.unwrap_or(0),
            log: h
                .log
                .unwrap_or_default()
                .into_iter()
                .map(|l| HealthRun {
                    start: l.start.map(|d| d.to_string()),
                    end: l.end.map(|d| d.to_string()),
                    exit_code: l.exit_code,
                    output: l.output.unwrap_or_default(),
                })
                .collect(),
        })
    });
    let config = r.config.unwrap_or_default();
    let host_config = r.host_config.unwrap_or_default();
    let cpus = match (host_config.nano_cpus, host_config.cpu_quota, host_config.cpu_period) {
        (Some(n), _, _) if n > 0 => n as f64 / 1e9,
        (_, Some(q), Some(p)) if q > 0 && p > 0 => q as f64 / p as f64,
        _ => 0.0,
    };
    let memory_mb = host_config.memory.filter(|m| *m > 0).map_or(0, |m| (m as u64) / (1024 * 1024));
    let limits = (cpus > 0.0 || memory_mb > 0).then_some(Claimed { cpus, memory_mb });
    let ip = r.network_settings.and_then(|n| n.networks).and_then(|networks| {
        let mut by_name: Vec<_> = networks.into_iter().collect();
        by_name.sort_by(|a, b| a.0.cmp(&b.0));
        by_name.into_iter().find_map(|(_, e)| e.ip_address.filter(|ip| !ip.is_empty()))
    });
    let mounts: Vec<Mount> = r
        .mounts
        .unwrap_or_default()
        .into_iter()
        .map(|m| Mount {
            kind: m.typ.map(|t| t.to_string()).unwrap_or_default(),
            source: m.source.unwrap_or_default(),
            destination: m.destination.unwrap_or_default(),
            rw: m.rw.unwrap_or(false),
        })
        .collect();
    let volumes = volume_observations(&mounts);
    Some(Container {
        name: r.name.unwrap_or_default().trim_start_matches('/').to_owned(),
        image: config.image.unwrap_or_default(),
        state: run_state,
        exit_code: state.exit_code,
        started_at: state.started_at.and_then(|s| s.parse().ok()).filter(|t: &Timestamp| t.as_second() > 0),
        health,
        labels: config.labels.map(|l| l.into_iter().collect::<BTreeMap<_, _>>()).unwrap_or_default(),
        ip,
        mounts,
        restart_count: r.restart_count.unwrap_or(0),
        stopped_by_owner: false,
        limits,
        volumes,
        id,
    })
}

/// Every mount's source must be present and readable on this host. Mounts without a host path
/// (tmpfs) have nothing to check.
pub(super) fn volume_observations(mounts: &[Mount]) -> Vec<Observation> {
    mounts
        .iter()
        .filter(|m| !m.source.is_empty())
        .map(|m| {
            let path = std::path::Path::new(&m.source);
            let readable = match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => std::fs::read_dir(path).map(|_| ()),
                Ok(_) => std::fs::File::open(path).map(|_| ()),
                Err(e) => Err(e),
            };
            match readable {
                Ok(()) => Observation::new(
                    &m.destination,
                    CheckStatus::Ok,
                    format!("{} {} ({})", m.kind, m.source, if m.rw { "rw" } else { "ro" }),
                ),
                Err(e) => Observation::new(
                    &m.destination,
                    CheckStatus::Impaired,
                    format!("{} {} is not readable: {e}", m.kind, m.source),
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_effects() {
        assert_eq!(effect("health_status: unhealthy"), Effect::Inspect);
        assert_eq!(effect("exec_start: sh -c true"), Effect::None);
        assert_eq!(effect("exec_die"), Effect::None);
        assert_eq!(effect("stop"), Effect::InspectStoppedByOwner);
        assert_eq!(effect("kill"), Effect::InspectStoppedByOwner);
        assert_eq!(effect("start"), Effect::InspectStarted);
        assert_eq!(effect("destroy"), Effect::Remove);
        assert_eq!(effect("die"), Effect::Inspect);
    }

    #[test]
    fn missing_mount_sources_impair_attached_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let mounts = vec![
            Mount {
                kind: "bind".into(),
                source: dir.path().display().to_string(),
                destination: "/data".into(),
                rw: true,
            },
            Mount {
                kind: "bind".into(),
                source: "/nonexistent/x".into(),
                destination: "/x".into(),
                rw: false,
            },
            Mount { kind: "tmpfs".into(), source: String::new(), destination: "/run".into(), rw: true },
        ];
        let seen = volume_observations(&mounts);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].status, CheckStatus::Ok);
        assert_eq!(seen[1].status, CheckStatus::Impaired);
        assert!(seen[1].message.contains("/nonexistent/x"), "{}", seen[1].message);
    }
}
