//! The engine through its public interfaces, with a runtime of the test's own: no agent process,
//! no Docker. A prober that panics must not leave its (check, instance) frozen.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::Registry;
use vigil::action::Executors;
use vigil::api::{CheckStatus, HealthCheck, InstanceKind, InstanceState};
use vigil::engine::clock::SystemClock;
use vigil::engine::feed::EngineEvent;
use vigil::engine::planner::{self, NodeInfo, Sources};
use vigil::engine::scheduler::{Scheduler, SchedulerConfig};
use vigil::engine::store::Store;
use vigil::inventory::{Instance, id_for};
use vigil::metrics::AgentMetrics;
use vigil::probe::{ContainerRuntime, Outcome, OutcomeFuture, Prober};
use vigil::report::render;

/// A container runtime whose HEALTHCHECK reader has a bug: it panics on every call.
#[derive(Debug, Default)]
struct PanickingRuntime {
    calls: AtomicUsize,
}

impl ContainerRuntime for PanickingRuntime {
    fn health(&self, container: &str) -> Outcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        panic!("index out of bounds while reading {container}");
    }

    fn unreachable(&self, _container: &str) -> Option<Outcome> {
        None
    }

    fn exec<'a>(&'a self, _: &'a str, _: &'a [String], _: Duration) -> OutcomeFuture<'a> {
        Box::pin(async { Outcome::unknown(vigil::probe::Cause::NoRuntime, "no exec here") })
    }
}

fn container(name: &str) -> Instance {
    Instance {
        id: id_for(InstanceKind::Container, name, "n1"),
        namespace: None,
        kind: InstanceKind::Container,
        name: name.to_owned(),
        node: "n1".to_owned(),
        address: Some("127.0.0.1".to_owned()),
        labels: Default::default(),
        state: InstanceState::Running,
        claimed: None,
        runtime_id: Some(name.to_owned()),
        on_hold: None,
        ports: Vec::new(),
        system: Vec::new(),
        volumes: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_panics_is_unknown_counted_and_probed_again() {
    let registry = Registry::new();
    let metrics = AgentMetrics::register(&registry).unwrap();
    let store = Arc::new(Store::new("n1", "default", Arc::new(SystemClock), metrics.clone()));
    let mut events = store.events();
    let runtime = Arc::new(PanickingRuntime::default());
    let prober = Prober::new().with_containers(runtime.clone());
    let mut scheduler = Scheduler::new(
        store.clone(),
        prober,
        Executors::default(),
        SchedulerConfig::default(),
        metrics.clone(),
    )
    .unwrap();
    let yaml = "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata: {name: web, namespace: default, generation: 1}\nspec:\n  target: {containers: {names: [c1]}}\n  probe: {docker: {}, periodSeconds: 1}\n  action: {type: restartContainer}\n";
    let check: HealthCheck = serde_saphyr::from_str(yaml).unwrap();
    let check = Arc::new(vigil::model::validate(&check).unwrap());
    let node = NodeInfo { name: "n1".to_owned(), labels: Default::default() };
    let plan = planner::plan(
        &node,
        &[check],
        &[Instance::host("n1"), container("c1")],
        Sources { containers: true, ..Sources::default() },
    );
    assert_eq!(plan.assignments.len(), 1, "{:?}", plan.notes);
    scheduler.apply(plan);

    // Probed again and again (one a second), each time recorded as unknown, never a restart.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let doc = render::instance_doc(&store, "c1").map(|d| serde_json::to_value(d).unwrap());
        if runtime.calls.load(Ordering::SeqCst) >= 3
            && let Some(doc) = doc
        {
            break doc["status"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the worker stopped probing after a panic");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let entry = &status["checks"][0];
    assert_eq!(entry["status"], "insufficient-data", "{status}");
    assert!(
        entry["message"]
            .as_str()
            .unwrap()
            .contains("internal error: the probe panicked: index out of bounds"),
        "{entry}"
    );
    assert!(entry["consecutiveErrors"].as_u64().unwrap() >= 2, "{entry}");
    assert_eq!(status["restarts"]["count"].as_u64().unwrap_or(0), 0, "an internal error is no reason to act");
    // Published with its bounded cause, as an Events recorder would read it.
    let transition = loop {
        match events.try_recv() {
            Ok(EngineEvent::Transition { to: CheckStatus::InsufficientData, reason, .. }) => break reason,
            Ok(_) => continue,
            Err(e) => panic!("no transition to insufficient-data published: {e}"),
        }
    };
    assert_eq!(transition, Some("internal-error"));
    let panics = metrics.probe_panics.with_label_values(&["docker"]).get();
    assert!(panics >= 3, "{panics} panics counted");
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    assert!(text.contains("vigil_probe_panics_total{probe=\"docker\"}"), "{text}");
    scheduler.clear();
}
