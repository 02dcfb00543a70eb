//! NATS against a real `nats-server` (Debian's, started here on a loopback port of its own): the
//! agent publishes instance status, events, metrics and container health on the subjects of the
//! health designs, answers the container summary and stats requests, and after the server went
//! away and came back publishes the latest state again, so nothing of it is lost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use support::agent::Agent;
use support::docker::{TestContainer, engine};

const WAIT: Duration = Duration::from_secs(30);

/// A `nats-server` on `port`, killed when dropped.
struct NatsServer(Child);

impl NatsServer {
    fn start(port: u16, log: &Path) -> NatsServer {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("nats-server: {e} (tests/fixtures/tools.sh installs it)"));
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        NatsServer(child)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next message on `sub` whose JSON passes `want`.
async fn next(sub: &mut async_nats::Subscriber, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("the subscription ended waiting for {what}"));
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        if want(&body) {
            return body;
        }
    }
}

fn check_of<'a>(doc: &'a Value, check: &str) -> Option<&'a Value> {
    doc["status"]["checks"].as_array()?.iter().find(|c| c["healthCheck"] == check)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_publishes_to_nats_answers_requests_and_republishes_after_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::agent::free_port();
    let log = dir.path().join("nats-server.log");
    let server = NatsServer::start(port, &log);
    let url = format!("nats://127.0.0.1:{port}");
    let name = "vigil-t-nats";
    let container = TestContainer::run(
        engine(),
        name,
        &["--label", "vigil.case=nats", "--health-cmd", "true", "--health-interval", "1s"],
        "exec sleep 3600",
    );
    let marker = dir.path().join("up");
    let agent = tokio::task::block_in_place(|| {
        Agent::start(
            &dir.path().join("agent"),
            &[
                "--docker-socket",
                engine(),
                "--nats-url",
                &url,
                "--nats-prefix",
                "fleet",
                "--nats-metrics-interval",
                "1s",
                "--docker-stats-interval",
                "1s",
            ],
        )
    });
    let client = async_nats::connect(&url).await.unwrap();
    let mut statuses = client.subscribe("fleet.health.status").await.unwrap();
    let mut events = client.subscribe("fleet.health.events").await.unwrap();
    let mut metrics = client.subscribe("fleet.health.metrics").await.unwrap();
    let mut health = client.subscribe("docker.container.health").await.unwrap();
    let mut stats = client.subscribe("docker.container.stats.stream").await.unwrap();
    client.flush().await.unwrap();

    let check = format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata:\n  name: flip\nspec:\n  target:\n    host: {{}}\n  probe:\n    exec:\n      command: [test, -e, {:?}]\n    periodSeconds: 1\n    failureThreshold: 1\n",
        marker.display().to_string()
    );
    agent.write_check("flip.yaml", &check);
    let impaired = next(&mut statuses, "the host's status with flip impaired", |d| {
        d["spec"]["instance"]["id"] == "host-test-node"
            && check_of(d, "default/flip").is_some_and(|c| c["status"] == "impaired")
    })
    .await;
    assert_eq!(impaired["kind"], "InstanceStatus", "the InstanceStatus document: {impaired}");
    let event =
        next(&mut events, "the transition", |e| e["type"] == "transition" && e["to"] == "impaired").await;
    assert_eq!(event["healthCheck"], "default/flip");
    assert_eq!(event["instanceId"], "host-test-node");
    assert!(event["id"].as_u64().is_some(), "{event}");
    let snapshot = next(&mut metrics, "a metrics snapshot with the host failing", |m| {
        m["instances"].as_array().is_some_and(|i| {
            i.iter().any(|x| x["instanceId"] == "host-test-node" && x["StatusCheckFailed_Instance"] == 1)
        })
    })
    .await;
    assert_eq!(snapshot["node"], "test-node");

    // Containers: health on change, stats streamed, and the two requests.
    let h =
        next(&mut health, "the test container's health", |d| d["name"] == name && d["health"] == "healthy")
            .await;
    assert_eq!(h["fullId"], container.id.as_str());
    assert_eq!(h["labels"]["vigil.case"], "nats");
    let s = next(&mut stats, "the test container's stats", |d| d["name"] == name).await;
    assert_eq!(s["status"], "running");
    let summary = client.request("docker.container.health.all", "".into()).await.unwrap();
    let summary: Value = serde_json::from_slice(&summary.payload).unwrap();
    assert!(summary["containers"].as_array().unwrap().iter().any(|c| c["name"] == name), "{summary}");
    assert_eq!(summary["daemon"]["reachable"], true);
    let one = client.request("docker.container.stats", name.into()).await.unwrap();
    let one: Value = serde_json::from_slice(&one.payload).unwrap();
    assert_eq!(one["name"], name, "{one}");
    let none = client.request("docker.container.stats", "{\"id\": \"no-such\"}".into()).await.unwrap();
    let none: Value = serde_json::from_slice(&none.payload).unwrap();
    assert_eq!(none["error"]["code"], 404, "{none}");

    // The server goes away; meanwhile the check recovers. When the server is back, the agent
    // publishes the latest state again, without any new change.
    drop(client);
    drop(server);
    std::fs::write(&marker, "").unwrap();
    tokio::task::block_in_place(|| agent.wait_status("host-test-node", "default/flip", "ok", WAIT));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _server = NatsServer::start(port, &log);
    let client = async_nats::connect(&url).await.unwrap();
    let mut statuses = client.subscribe("fleet.health.status").await.unwrap();
    let mut health = client.subscribe("docker.container.health").await.unwrap();
    client.flush().await.unwrap();
    let recovered = next(&mut statuses, "the latest host status after the outage", |d| {
        d["spec"]["instance"]["id"] == "host-test-node"
            && check_of(d, "default/flip").is_some_and(|c| c["status"] == "ok")
    })
    .await;
    assert_eq!(recovered["status"]["instanceStatus"]["status"], "ok");
    next(&mut health, "the container's health again", |d| d["name"] == name).await;
    assert!(agent.logs().contains("connected to NATS"), "{}", agent.logs());
    drop(container);
}
