//! Kubernetes Events (`events.k8s.io/v1`) for people: every status transition and every action,
//! regarding the instance's InstanceStatus (and, for a pod, related to the Pod), with reasons
//! from a fixed set. Repeats of the same event are aggregated into a series, as the kubelet does
//! (kube's `Recorder`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::render;
use crate::api::{self, CheckStatus, InstanceKind, ReportedStatus};
use crate::cluster::EVENT_REPORTER;
use crate::engine::feed::EngineEvent;
use crate::engine::store::Store;
use crate::engine::store::view::InstanceView;
use crate::report::apiserver::{Uids, error_message};

/// The reason of a transition to `to`.
pub fn transition_reason(to: CheckStatus) -> &'static str {
    match to {
        CheckStatus::Ok => "CheckOk",
        CheckStatus::Impaired => "CheckImpaired",
        CheckStatus::InsufficientData => "CheckInsufficientData",
        CheckStatus::Initializing => "CheckInitializing",
        CheckStatus::NotApplicable => "CheckNotApplicable",
    }
}

/// The reason of an action: the action and whether it worked (`RestartContainerFailed`).
pub fn action_reason(action: &str, succeeded: bool) -> &'static str {
    match (action, succeeded) {
        ("restartContainer", true) => "RestartContainerSucceeded",
        ("restartContainer", false) => "RestartContainerFailed",
        ("restartVM", true) => "RestartVMSucceeded",
        ("restartVM", false) => "RestartVMFailed",
        ("evictPod", true) => "EvictPodSucceeded",
        ("evictPod", false) => "EvictPodFailed",
        ("exec", true) => "ExecSucceeded",
        ("exec", false) => "ExecFailed",
        (_, true) => "ActionSucceeded",
        (_, false) => "ActionFailed",
    }
}

/// The Event for `event` on `instance`, and what it regards and relates to.
pub fn event_for(event: &EngineEvent, instance: &InstanceView, namespace: &str) -> (Event, ObjectReference) {
    let i = &instance.instance;
    let regarding = ObjectReference {
        api_version: Some(api::API_VERSION.to_owned()),
        kind: Some("InstanceStatus".to_owned()),
        name: Some(render::object_name(i)),
        namespace: Some(i.namespace.clone().unwrap_or_else(|| namespace.to_owned())),
        ..ObjectReference::default()
    };
    let related = (i.kind == InstanceKind::Pod).then(|| ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: Some(i.name.clone()),
        namespace: i.namespace.clone(),
        uid: i.runtime_id.clone(),
        ..ObjectReference::default()
    });
    let event = match event {
        EngineEvent::Transition { check, from, to, reason, message, .. } => {
            let why = match (reason, message) {
                (Some(r), Some(m)) => format!(": {r}: {m}"),
                (None, Some(m)) if !m.is_empty() => format!(": {m}"),
                _ => String::new(),
            };
            Event {
                type_: if matches!(
                    to,
                    CheckStatus::Ok | CheckStatus::Initializing | CheckStatus::NotApplicable
                ) {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: transition_reason(*to).to_owned(),
                note: Some(truncate(format!(
                    "HealthCheck {check}: {} → {}{why}",
                    from.as_str(),
                    to.as_str()
                ))),
                action: "Probe".to_owned(),
                secondary: related,
            }
        }
        EngineEvent::Action { check, action, succeeded, message, .. } => Event {
            type_: if *succeeded { EventType::Normal } else { EventType::Warning },
            reason: action_reason(action, *succeeded).to_owned(),
            note: Some(truncate(format!("HealthCheck {check}: {action}: {message}"))),
            action: action_name(action).to_owned(),
            secondary: related,
        },
        EngineEvent::Reported { status, reasons, description, .. } => {
            let said = match (reasons.is_empty(), description) {
                (false, Some(d)) => format!(" ({}): {d}", reasons.join(", ")),
                (false, None) => format!(" ({})", reasons.join(", ")),
                (true, Some(d)) => format!(": {d}"),
                (true, None) => String::new(),
            };
            Event {
                type_: if *status == Some(ReportedStatus::Impaired) {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: match status {
                    Some(ReportedStatus::Impaired) => "ReportedImpaired",
                    Some(ReportedStatus::Ok) => "ReportedOk",
                    None => "ReportEnded",
                }
                .to_owned(),
                note: Some(truncate(match status {
                    Some(s) => format!("the owner reports the instance {}{said}", s.as_str()),
                    None => "the owner's report is no longer in force".to_owned(),
                })),
                action: "Report".to_owned(),
                secondary: related,
            }
        }
    };
    (event, regarding)
}

fn action_name(action: &str) -> &'static str {
    match action {
        "restartContainer" => "RestartContainer",
        "restartVM" => "RestartVM",
        "evictPod" => "EvictPod",
        "exec" => "Exec",
        _ => "Action",
    }
}

/// Notes are at most 1 kB.
fn truncate(mut note: String) -> String {
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

fn instance_of(event: &EngineEvent) -> &str {
    match event {
        EngineEvent::Transition { instance_id, .. }
        | EngineEvent::Action { instance_id, .. }
        | EngineEvent::Reported { instance_id, .. } => instance_id,
    }
}

/// Records the store's events until `cancel`. An event that cannot be recorded is logged and
/// dropped: Events are for people, and status carries the truth.
pub async fn record(client: Client, store: Arc<Store>, node: String, uids: Uids, cancel: CancellationToken) {
    let recorder =
        Recorder::new(client, Reporter { controller: EVENT_REPORTER.to_owned(), instance: Some(node) });
    let mut events = store.events();
    let mut failing = false;
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return,
            got = events.recv() => match got {
                Ok(event) => event,
                Err(RecvError::Lagged(missed)) => {
                    warn!(missed, "events came faster than they could be recorded; some were dropped");
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        let id = instance_of(&event).to_owned();
        let Some(instance) = store.instance(&id) else { continue };
        let (event, mut regarding) = event_for(&event, &instance, store.namespace());
        // The object may not be written yet (a new instance's first transition): give the
        // writer a moment, so that the Event names its uid and `kubectl describe` shows it.
        for _ in 0..25 {
            regarding.uid = uids.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned();
            if regarding.uid.is_some() || cancel.is_cancelled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match recorder.publish(&event, &regarding).await {
            Ok(()) => {
                failing = false;
                debug!(reason = event.reason, "event recorded");
            }
            Err(e) => {
                if !failing {
                    warn!(reason = event.reason, "cannot record an Event: {}", error_message(&e));
                }
                failing = true;
            }
        }
    }
}
