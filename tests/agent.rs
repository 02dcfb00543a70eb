//! The standalone agent as a user runs it: the real binary, real folders, real targets on
//! loopback. Tests wait on state through the HTTP API; none sleeps to let time pass.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::agent::{Agent, check_of, request, request_full};
use support::servers::{self, HttpTarget};

const WAIT: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

fn healthcheck(name: &str, spec: &str) -> String {
    format!("apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

fn endpoint_http(name: &str, address: &str, extra: &str) -> String {
    healthcheck(
        name,
        &format!(
            "  target:\n    endpoints:\n      addresses: [\"{address}\"]\n  probe:\n    http:\n      path: /health\n    periodSeconds: 1\n{extra}"
        ),
    )
}

fn endpoint_id(address: &str) -> String {
    vigil::inventory::id_for(vigil::api::InstanceKind::Endpoint, address, "test-node")
}

fn state_doc(agent: &Agent, id: &str) -> Value {
    agent.state_doc(id).unwrap()
}

fn healthchecks(agent: &Agent) -> Vec<Value> {
    agent.json("/v1/healthchecks")["data"].as_array().unwrap().clone()
}

fn condition<'a>(hc: &'a Value, kind: &str) -> &'a Value {
    hc["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == kind).unwrap()
}

#[test]
fn impaired_after_the_failure_threshold_and_ok_after_the_success_threshold() {
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let address = target.address();
    let id = endpoint_id(&address);
    agent.write_check(
        "web.yaml",
        &endpoint_http("web", &address, "    failureThreshold: 3\n    successThreshold: 2\n"),
    );
    agent.wait_status(&id, "default/web", "ok", WAIT);

    let before = target.requests();
    target.set_status(500);
    let inst = agent.wait_status(&id, "default/web", "impaired", WAIT);
    let failures = target.requests() - before;
    assert!(failures >= 3, "impaired after {failures} failed probes");
    let check = check_of(&inst, "default/web").unwrap();
    assert!(check["consecutiveFailures"].as_u64().unwrap() >= 3);
    assert_eq!(check["reason"], "status");
    assert!(check["impairedSince"].is_string());
    assert_eq!(inst["status"]["instanceStatus"]["status"], "impaired");
    assert_eq!(inst["status"]["instanceStatus"]["details"][0]["impairedSince"], check["impairedSince"]);
    let hc = healthchecks(&agent).into_iter().find(|h| h["metadata"]["name"] == "web").unwrap();
    assert_eq!(hc["status"]["unhealthy"], 1);
    assert_eq!(condition(&hc, "Degraded")["status"], "True");

    target.set_status(200);
    let inst = agent.wait_status(&id, "default/web", "ok", WAIT);
    let check = check_of(&inst, "default/web").unwrap();
    assert!(check["consecutiveSuccesses"].as_u64().unwrap() >= 2);
    assert!(check.get("impairedSince").is_none());

    // The state folder follows status changes without waiting for the periodic refresh.
    let deadline = Instant::now() + WAIT;
    while state_doc(&agent, &id)["status"]["checks"][0]["status"] != "ok" {
        assert!(Instant::now() < deadline, "the state file never caught up");
        std::thread::sleep(Duration::from_millis(25));
    }
    let metrics = agent.get("/metrics").1;
    let series = format!(
        "{{namespace=\"default\",healthcheck=\"web\",instance_id=\"{id}\",probe=\"http\",reason=\"status\"}}"
    );
    let failed: f64 = metrics
        .lines()
        .find(|l| l.starts_with("vigil_probe_failures_total") && l.contains(&series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no failure series {series} in\n{metrics}"));
    assert!(failed >= 3.0);
}

#[test]
fn a_target_that_does_not_answer_is_unhealthy_with_its_reason() {
    let rt = runtime();
    let port = rt.block_on(servers::closed_port());
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let address = format!("127.0.0.1:{port}");
    agent.write_check("gone.yaml", &endpoint_http("gone", &address, "    failureThreshold: 2\n"));
    let inst = agent.wait_status(&endpoint_id(&address), "default/gone", "impaired", WAIT);
    assert_eq!(check_of(&inst, "default/gone").unwrap()["reason"], "refused");
}

const MARKER_SCRIPT: &str = "echo \"$VIGIL_CHECK $VIGIL_INSTANCE_ID\" >> \"$0\"";

fn exec_check(name: &str, command: &str, marker: &Path, action_extra: &str) -> String {
    healthcheck(
        name,
        &format!(
            "  target: {{host: {{}}}}\n  probe:\n    exec:\n      command: {command}\n    periodSeconds: 1\n    failureThreshold: 2\n  action:\n    type: exec\n    exec:\n      command: [\"sh\", \"-c\", {script:?}, {marker:?}]\n{action_extra}",
            script = MARKER_SCRIPT,
            marker = marker.display().to_string(),
        ),
    )
}

#[test]
fn a_probe_that_cannot_run_is_insufficient_data_and_never_remediated() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let marker = dir.path().join("remediated");
    agent.write_check("broken.yaml", &exec_check("broken", "[\"/nonexistent/check\"]", &marker, ""));
    let id = "host-test-node";
    agent.wait_status(id, "default/broken", "insufficient-data", WAIT);
    let inst = agent.wait_for(&format!("/v1/instances/{id}"), "more probes that cannot run", WAIT, |d| {
        check_of(&d["data"], "default/broken").is_some_and(|c| c["consecutiveErrors"].as_u64() >= Some(5))
    });
    let check = check_of(&inst["data"], "default/broken").unwrap();
    assert!(check["message"].as_str().unwrap().contains("command not found"), "{check}");
    assert_eq!(inst["data"]["status"]["restarts"]["count"], 0);
    assert!(!marker.exists(), "an action ran on a probe that could not run");
    let metrics = agent.get("/metrics").1;
    assert!(
        metrics.lines().any(|l| l.starts_with("vigil_probe_errors_total")
            && l.contains("broken")
            && l.contains("cause=\"local-error\"")),
        "{metrics}"
    );
}

#[test]
fn remediation_backs_off_and_stops_at_max_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let marker = dir.path().join("remediated");
    let extra =
        "    maxRestarts: 2\n    windowSeconds: 3600\n    backoff: {initialSeconds: 1, maxSeconds: 2}\n";
    agent.write_check("failing.yaml", &exec_check("failing", "[\"false\"]", &marker, extra));
    let id = "host-test-node";
    agent.wait_for(&format!("/v1/instances/{id}"), "two actions", WAIT, |d| {
        d["data"]["status"]["restarts"]["count"] == 2
    });
    // After the budget is spent, the check keeps failing and nothing more is done.
    let inst =
        agent.wait_for(&format!("/v1/instances/{id}"), "six failures after the last action", WAIT, |d| {
            check_of(&d["data"], "default/failing")
                .is_some_and(|c| c["consecutiveFailures"].as_u64() >= Some(6))
        });
    let restarts = &inst["data"]["status"]["restarts"];
    assert_eq!(restarts["count"], 2);
    let recent = restarts["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 2);
    assert!(
        recent.iter().all(|r| r["succeeded"] == true
            && r["action"] == "exec"
            && r["healthCheck"] == "default/failing")
    );
    let t0: jiff::Timestamp = recent[0]["time"].as_str().unwrap().parse().unwrap();
    let t1: jiff::Timestamp = recent[1]["time"].as_str().unwrap().parse().unwrap();
    assert!(t1.duration_since(t0) >= jiff::SignedDuration::from_secs(1), "no backoff between {t0} and {t1}");
    let lines = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(lines.lines().collect::<Vec<_>>(), ["default/failing host-test-node"; 2]);
}

#[test]
fn kill_9_keeps_counts_impaired_since_and_transitions() {
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), &[]);
    let marker = dir.path().join("remediated");
    let extra = "    maxRestarts: 5\n    backoff: {initialSeconds: 1, maxSeconds: 1}\n";
    agent.write_check("failing.yaml", &exec_check("failing", "[\"false\"]", &marker, extra));
    let address = target.address();
    agent.write_check("web.yaml", &endpoint_http("web", &address, ""));
    let host = "host-test-node";
    agent.wait_status(&endpoint_id(&address), "default/web", "ok", WAIT);
    // Wait until the file itself has two actions (what is persisted is what must survive).
    let deadline = Instant::now() + WAIT;
    let persisted = loop {
        let doc = state_doc(&agent, host);
        if doc["status"]["restarts"]["count"].as_u64() >= Some(2) {
            break doc;
        }
        assert!(Instant::now() < deadline, "the state file never recorded two actions\n{}", agent.logs());
        std::thread::sleep(Duration::from_millis(25));
    };
    let web_before = state_doc(&agent, &endpoint_id(&address));
    agent.kill9();
    agent.restart();

    let inst = agent.instance(host);
    let before = check_of(&persisted, "default/failing").unwrap();
    let after = check_of(&inst, "default/failing").unwrap();
    assert_eq!(after["status"], "impaired");
    assert_eq!(after["impairedSince"], before["impairedSince"]);
    assert_eq!(after["lastTransitionTime"], before["lastTransitionTime"]);
    let count = inst["status"]["restarts"]["count"].as_u64().unwrap();
    assert!(count >= persisted["status"]["restarts"]["count"].as_u64().unwrap());
    let recent_before = persisted["status"]["restarts"]["recent"].as_array().unwrap();
    let recent_after = inst["status"]["restarts"]["recent"].as_array().unwrap();
    assert_eq!(&recent_after[..recent_before.len()], &recent_before[..]);
    assert_eq!(inst["metadata"]["creationTimestamp"], persisted["metadata"]["creationTimestamp"]);
    let web = agent.instance(&endpoint_id(&address));
    let (b, a) = (check_of(&web_before, "default/web").unwrap(), check_of(&web, "default/web").unwrap());
    assert_eq!(a["lastTransitionTime"], b["lastTransitionTime"]);
    assert_eq!(a["status"], "ok");
}

#[test]
fn a_state_folder_of_an_earlier_version_keeps_its_history() {
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), &[]);
    let address = target.address();
    let id = endpoint_id(&address);
    assert!(id.ends_with("--test-node"), "{id}");
    agent.write_check("web.yaml", &endpoint_http("web", &address, ""));
    agent.wait_status(&id, "default/web", "ok", WAIT);
    let saved = agent.wait_written(&id, "the first result", |d| {
        check_of(d, "default/web").is_some_and(|c| c["status"] == "ok")
    });
    assert_eq!(agent.stop(), Some(0));
    // As an earlier version wrote it: named without the node, with a restart history.
    let old = format!("endpoint-{}", address.replace(':', "-"));
    let instances = dir.path().join("state").join("instances");
    let mut doc = saved.clone();
    doc["metadata"]["name"] = old.clone().into();
    doc["spec"]["instance"]["id"] = old.clone().into();
    doc["status"]["restarts"]["count"] = 7.into();
    std::fs::remove_file(instances.join(format!("{id}.yaml"))).unwrap();
    std::fs::write(instances.join(format!("{old}.yaml")), serde_saphyr::to_string(&doc).unwrap()).unwrap();

    agent.restart();
    let migrated =
        agent.wait_written(&id, "the migrated document", |d| d["status"]["restarts"]["count"] == 7);
    assert_eq!(migrated["metadata"]["creationTimestamp"], saved["metadata"]["creationTimestamp"]);
    let (b, a) = (check_of(&saved, "default/web").unwrap(), check_of(&migrated, "default/web").unwrap());
    assert_eq!(a["lastTransitionTime"], b["lastTransitionTime"], "no new transition");
    assert_eq!(agent.instance(&id)["status"]["restarts"]["count"], 7);
    let deadline = Instant::now() + WAIT;
    while instances.join(format!("{old}.yaml")).exists() {
        assert!(Instant::now() < deadline, "the old document was not removed\n{}", agent.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _) = agent.get(&format!("/v1/instances/{old}"));
    assert_eq!(status, 404, "only the node-qualified id is served");
}

#[test]
fn state_files_are_never_half_written() {
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    // Flapping every probe: every probe is a transition, and every transition a write.
    target.route("/health", servers::Behaviour { status: 500, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), &[]);
    let mut docs = String::new();
    for i in 0..40 {
        let flap = if i % 2 == 0 { "/health" } else { "/" };
        docs.push_str(&healthcheck(
            &format!("flap-{i}"),
            &format!(
                "  target:\n    endpoints:\n      addresses: [\"127.0.0.1:{}\", \"localhost:{}\"]\n  probe:\n    http: {{path: \"{flap}\"}}\n    periodSeconds: 1\n    failureThreshold: 1\n",
                target.addr.port(),
                target.addr.port()
            ),
        ));
        docs.push_str("\n---\n");
    }
    agent.write_check("many.yaml", &docs);
    agent.wait_for("/v1/health", "80 targets", WAIT, |d| d["checks"] == 80);
    let mut rng = 7u64;
    for round in 0..6 {
        // Switch the failing half so that the next seconds are full of transitions.
        target.route(
            "/health",
            servers::Behaviour { status: if round % 2 == 0 { 200 } else { 500 }, ..Default::default() },
        );
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(300 + (rng >> 33) % 900));
        agent.kill9();
        let mut files = 0;
        for sub in ["instances", "healthchecks"] {
            for e in std::fs::read_dir(agent.state.join(sub)).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // a temporary file the killed agent never renamed
                }
                let text = std::fs::read_to_string(e.path()).unwrap();
                let parsed: Result<Value, _> = serde_saphyr::from_str(&text);
                let doc = parsed.unwrap_or_else(|e| panic!("round {round}: {name} is not YAML: {e}\n{text}"));
                assert!(doc["status"].is_object(), "round {round}: {name} has no status:\n{text}");
                files += 1;
            }
        }
        assert!(files >= 41, "round {round}: only {files} files");
        agent.restart();
    }
}

#[test]
fn bad_documents_are_reported_and_the_rest_keeps_running() {
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let address = target.address();
    agent.write_check("good.yaml", &endpoint_http("good", &address, ""));
    let bad = format!(
        "{}\n---\n{}\n---\n{}\n",
        endpoint_http("also-good", &address, ""),
        endpoint_http("typed", &address, "    failureThreshold: three\n"),
        endpoint_http("double", &address, "    tcp: {port: 1}\n"),
    );
    agent.write_check("bad.yaml", &bad);
    let health = agent.wait_for("/v1/health", "degraded", WAIT, |d| d["status"] == "degraded");
    let reasons: Vec<String> =
        health["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
    assert!(
        reasons.iter().any(|r| r.contains(
            "bad.yaml: document 2 (HealthCheck default/typed): spec.probe.failureThreshold: invalid type"
        )),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("bad.yaml document 3 (HealthCheck default/double): spec.probe: exactly one of http, tcp, grpc, icmp, arp, exec, docker, qmp must be set; found http and tcp")),
        "{reasons:#?}"
    );
    let id = endpoint_id(&address);
    let inst = agent.wait_status(&id, "default/good", "ok", WAIT);
    assert!(check_of(&inst, "default/also-good").is_some(), "the valid document of bad.yaml is not running");
    let double = healthchecks(&agent).into_iter().find(|h| h["metadata"]["name"] == "double").unwrap();
    assert_eq!(condition(&double, "Invalid")["status"], "True");
    assert!(condition(&double, "Invalid")["message"].as_str().unwrap().contains("found http and tcp"));
    assert_eq!(condition(&double, "Ready")["status"], "False");

    // Fixed: healthy again.
    agent.write_check("bad.yaml", &endpoint_http("also-good", &address, ""));
    agent.wait_for("/v1/health", "healthy", WAIT, |d| d["status"] == "healthy");
}

#[test]
fn a_reload_changes_only_what_changed() {
    let rt = runtime();
    let (one, two) = rt.block_on(async { (HttpTarget::start().await, HttpTarget::start().await) });
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let (a1, a2) = (one.address(), two.address());
    agent.write_check("a.yaml", &endpoint_http("a", &a1, ""));
    agent.write_check("b.yaml", &endpoint_http("b", &a2, ""));
    agent.wait_status(&endpoint_id(&a2), "default/b", "ok", WAIT);
    let before =
        agent.wait_for(&format!("/v1/instances/{}", endpoint_id(&a1)), "a few passes of a", WAIT, |d| {
            check_of(&d["data"], "default/a").is_some_and(|c| c["consecutiveSuccesses"].as_u64() >= Some(3))
        });
    let a_before = check_of(&before["data"], "default/a").unwrap().clone();

    agent.write_check("b.yaml", &endpoint_http("b", &a2, "    timeoutSeconds: 2\n"));
    agent.wait_for("/v1/healthchecks", "b at generation 2", WAIT, |d| {
        d["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["metadata"]["name"] == "b" && h["status"]["observedGeneration"] == 2)
    });
    let a_after = agent.instance(&endpoint_id(&a1));
    let a_after = check_of(&a_after, "default/a").unwrap();
    assert_eq!(a_after["lastTransitionTime"], a_before["lastTransitionTime"]);
    assert!(
        a_after["consecutiveSuccesses"].as_u64() >= a_before["consecutiveSuccesses"].as_u64(),
        "a was reset by a change to b: {a_before} then {a_after}"
    );
    let a_hc = healthchecks(&agent).into_iter().find(|h| h["metadata"]["name"] == "a").unwrap();
    assert_eq!(a_hc["metadata"]["generation"], 1);

    // Removed: its instance, state file and metric series go.
    agent.remove_check("b.yaml");
    let b_id = endpoint_id(&a2);
    agent.wait_for("/v1/instances", "b's endpoint to go", WAIT, |d| {
        !d["data"].as_array().unwrap().iter().any(|i| i["metadata"]["name"] == b_id.as_str())
    });
    let file = agent.state.join("instances").join(format!("{b_id}.yaml"));
    let deadline = Instant::now() + WAIT;
    while file.exists() || agent.get("/metrics").1.contains("healthcheck=\"b\"") {
        assert!(Instant::now() < deadline, "b's state file or metric series remained");
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(!agent.state.join("healthchecks").join("default_b.yaml").exists());
}

#[test]
fn an_invalid_edit_keeps_the_last_valid_spec_running() {
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let address = target.address();
    agent.write_check("a.yaml", &endpoint_http("a", &address, ""));
    let id = endpoint_id(&address);
    agent.wait_status(&id, "default/a", "ok", WAIT);
    agent.write_check("a.yaml", &endpoint_http("a", &address, "    successThreshold: 0\n"));
    let hcs = agent.wait_for("/v1/healthchecks", "a invalid", WAIT, |d| {
        d["data"][0]["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Invalid" && c["status"] == "True"))
    });
    let invalid = condition(&hcs["data"][0], "Invalid");
    let message = invalid["message"].as_str().unwrap();
    assert!(message.contains("spec.probe.successThreshold: 0 is below the minimum of 1"), "{message}");
    assert!(message.contains("still running the last valid spec (generation 1)"), "{message}");
    let before =
        check_of(&agent.instance(&id), "default/a").unwrap()["consecutiveSuccesses"].as_u64().unwrap();
    agent.wait_for(&format!("/v1/instances/{id}"), "a to keep probing", WAIT, |d| {
        check_of(&d["data"], "default/a").is_some_and(|c| c["consecutiveSuccesses"].as_u64() > Some(before))
    });
}

#[test]
fn the_http_api_keeps_its_contract() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let (status, head, _) = request_full(agent.addr, "POST", "/v1/health", &[]).unwrap();
    assert_eq!(status, 405);
    assert!(head.to_ascii_lowercase().contains("allow: get,head"), "{head}");
    let (status, body) = request(agent.addr, "DELETE", "/v1/instances/x", &[]).unwrap();
    assert_eq!(status, 405, "{body}");
    let error = &serde_json::from_str::<Value>(&body).unwrap()["error"];
    assert_eq!(error["code"], 405, "{body}");
    assert!(error["message"].as_str().unwrap().contains("DELETE is not allowed"), "{body}");
    let (status, body) = agent.get("/v1/nothing");
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], 404);
    let (status, body) = agent.get("/v1/instances/no-such");
    assert_eq!(status, 404);
    assert!(body.contains("no instance"), "{body}");
    let (status, head, body) = request_full(agent.addr, "HEAD", "/v1/health", &[]).unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(body.is_empty());
    let huge = "x".repeat(20 * 1024);
    let (status, _) = request(agent.addr, "GET", "/v1/health", &[("X-Padding", &huge)]).unwrap();
    assert_eq!(status, 431);
    assert_eq!(agent.get("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(agent.get("/readyz"), (200, "ready\n".to_owned()));
    let config = agent.json("/v1/host/config");
    assert_eq!(config["data"]["checksDir"], agent.checks.display().to_string());
    assert_eq!(config["data"]["nodeName"], "test-node");

    let health = agent.json("/v1/health");
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
}

fn meminfo_mb(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

#[test]
fn host_status_matches_proc() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let avail_before = meminfo_mb("MemAvailable:");
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap();
    let data = agent.json("/v1/host/status")["data"].clone();
    let avail_after = meminfo_mb("MemAvailable:");
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap();
    let uptime: f64 =
        std::fs::read_to_string("/proc/uptime").unwrap().split_whitespace().next().unwrap().parse().unwrap();

    assert_eq!(data["total_memory_mb"].as_u64().unwrap(), meminfo_mb("MemTotal:"));
    let avail = data["available_memory_mb"].as_u64().unwrap();
    let (lo, hi) = (avail_before.min(avail_after), avail_before.max(avail_after));
    assert!(avail + 16 >= lo && avail <= hi + 16, "available {avail} MiB, /proc said {lo}..{hi}");
    let served_uptime = data["uptime_seconds"].as_f64().unwrap();
    assert!((uptime - served_uptime).abs() < 1.0, "uptime {served_uptime} vs /proc {uptime}");
    let load: Vec<f64> =
        data["load_average"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let parse = |s: &str| -> Vec<f64> { s.split_whitespace().take(3).map(|v| v.parse().unwrap()).collect() };
    assert!(
        load == parse(&load_before) || load == parse(&load_after),
        "load {load:?} vs {load_before} / {load_after}"
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(data["hostname"], hostname.trim());
    assert!(data["total_cpus"].as_u64().unwrap() >= 1);
    for key in
        ["used_cpus", "used_memory_mb", "running_vms", "total_vms", "running_containers", "total_containers"]
    {
        assert!(data.get(key).is_some(), "{key} missing from {data}");
    }
    assert_eq!(data["total_instances"], 1, "the host itself");
}

#[test]
fn metrics_pass_promtool_and_series_leave_with_their_check() {
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let address = target.address();
    agent.write_check("web.yaml", &endpoint_http("web", &address, ""));
    agent.wait_status(&endpoint_id(&address), "default/web", "ok", WAIT);
    let text = agent.get("/metrics").1;
    for name in [
        "vigil_probe_up{",
        "vigil_check_impaired{",
        "vigil_probe_duration_seconds_bucket{",
        "vigil_status_check_failed{",
        "vigil_status_check_failed_system{",
        "vigil_status_check_failed_instance{",
        "vigil_status_check_failed_attached_volume{",
        "vigil_scheduler_lateness_seconds_bucket{",
        "vigil_managed_checks ",
        "vigil_build_info{",
        "process_resident_memory_bytes ",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    support::agent::promtool_check(&text);

    agent.remove_check("web.yaml");
    let deadline = Instant::now() + WAIT;
    loop {
        let text = agent.get("/metrics").1;
        if !text.contains("healthcheck=\"web\"")
            && !text.contains(&format!("instance_id=\"{}\"", endpoint_id(&address)))
        {
            break;
        }
        assert!(Instant::now() < deadline, "series of the removed check remain:\n{text}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn the_standalone_examples_run_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/standalone");
    for e in std::fs::read_dir(examples).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap().replace("9733", &agent.addr.port().to_string());
        agent.write_check(&e.file_name().to_string_lossy(), &text);
    }
    // The first probe of each lands within its period (10 s here).
    let doc = agent.wait_for("/v1/instances", "every example check ok", Duration::from_secs(40), |d| {
        let checks: Vec<Value> = d["data"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|i| i["status"]["checks"].as_array().cloned().unwrap_or_default())
            .collect();
        checks.len() == 3 && checks.iter().all(|c| c["status"] == "ok")
    });
    assert_eq!(doc["data"].as_array().unwrap().len(), 2, "the host and one endpoint");
    assert_eq!(agent.json("/v1/health")["status"], "healthy");
}

#[test]
fn sigterm_writes_the_last_state_and_exits_zero() {
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), &[]);
    let address = target.address();
    agent.write_check("web.yaml", &endpoint_http("web", &address, ""));
    let id = endpoint_id(&address);
    let live = agent.wait_for(&format!("/v1/instances/{id}"), "three passes", WAIT, |d| {
        check_of(&d["data"], "default/web").is_some_and(|c| c["consecutiveSuccesses"].as_u64() >= Some(3))
    });
    let seen = check_of(&live["data"], "default/web").unwrap()["consecutiveSuccesses"].as_u64().unwrap();
    assert_eq!(agent.stop(), Some(0), "{}", agent.logs());
    let doc = state_doc(&agent, &id);
    let written = check_of(&doc, "default/web").unwrap()["consecutiveSuccesses"].as_u64().unwrap();
    assert!(written >= seen, "the last counters were not written: {written} < {seen}");
}

fn vigil(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn vigil_check_exit_codes() {
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    let url = format!("http://{}/health", target.address());
    let (code, out, _) = vigil(&["check", &url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("healthy"), "{out}");
    let (code, out, _) = vigil(&["check", "--verbose", &url]);
    assert_eq!(code, 0);
    for step in ["resolve", "connect", "first-byte"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(step)), "no {step} step in\n{out}");
    }
    target.set_status(500);
    let (code, out, _) = vigil(&["check", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("unhealthy (status)"), "{out}");
    let port = rt.block_on(servers::closed_port());
    let (code, out, _) = vigil(&["check", &format!("tcp://127.0.0.1:{port}")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refused"), "{out}");
    let (code, out, _) = vigil(&["check", "exec:/nonexistent/thing"]);
    assert_eq!(code, 2, "{out}");
    let (code, _, err) = vigil(&["check", "gopher://x:70"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown scheme"), "{err}");

    target.set_status(200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    std::fs::write(&file, endpoint_http("web", &target.address(), "")).unwrap();
    let (code, out, err) = vigil(&["check", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("default/web"), "{out}");
    let invalid = healthcheck(
        "web",
        &format!(
            "  target:\n    endpoints:\n      addresses: [\"{}\"]\n  probe:\n    tcp: {{}}\n    periodSeconds: 0\n",
            target.address()
        ),
    );
    std::fs::write(&file, invalid).unwrap();
    let (code, _, err) = vigil(&["check", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("spec.probe.periodSeconds"), "{err}");
}

#[test]
fn a_failing_target_is_probed_at_the_failing_period() {
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    target.set_status(500);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let address = target.address();
    // A 30 s period, but 1 s while failing: three failures take seconds, not a minute and a half.
    let check = endpoint_http("slow", &address, "    failingPeriodSeconds: 1\n    failureThreshold: 3\n")
        .replace("periodSeconds: 1\n    failingPeriodSeconds", "periodSeconds: 30\n    failingPeriodSeconds");
    assert!(check.contains("periodSeconds: 30"), "{check}");
    agent.write_check("slow.yaml", &check);
    let started = Instant::now();
    agent.wait_status(&endpoint_id(&address), "default/slow", "impaired", WAIT);
    assert!(started.elapsed() < Duration::from_secs(15), "impaired after {:?}", started.elapsed());

    // Healthy again: back to the 30 s period.
    target.set_status(200);
    agent.wait_status(&endpoint_id(&address), "default/slow", "ok", WAIT);
    let seen = target.requests();
    let mut later = target.requests();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        later = target.requests();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(later - seen <= 1, "{} probes in 3 s after recovery, with a 30 s period", later - seen);
}

#[test]
fn an_idle_agent_does_not_reread_its_checks_folder() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    let agent = Agent::start(dir.path(), &[]);
    agent.write_check("web.yaml", &endpoint_http("web", &target.address(), ""));
    agent.wait_status(&endpoint_id(&target.address()), "default/web", "ok", WAIT);
    // Reading the folder must not count as a change to it: only the periodic rescan (every 2 s
    // here) reads it again.
    let reads = |log: &str| log.matches("checks folder read").count();
    let before = reads(&agent.logs());
    std::thread::sleep(Duration::from_secs(3));
    let during = reads(&agent.logs()) - before;
    assert!(during <= 2, "the folder was read {during} times in 3 s:\n{}", agent.logs());
}

#[test]
fn readiness_waits_for_a_source_that_has_not_listed_and_gives_up_after_the_sync_timeout() {
    // A Docker socket that accepts connections and never answers: the containers are never
    // listed.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming().take(8) {
            open.push(stream);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let socket = socket.display().to_string();
    let mut agent = Agent::start_unready(
        &dir.path().join("agent"),
        &["--docker-socket", &socket, "--inventory-sync-timeout", "4s"],
    );
    // The API answers from the start, and says what readiness waits for.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, body) = loop {
        if let Ok(answer) = agent.try_get("/readyz") {
            break answer;
        }
        assert!(Instant::now() < deadline, "no HTTP answer:\n{}", agent.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("Docker containers listed"), "{body}");
    assert_eq!(agent.get("/healthz").0, 200, "alive while not ready");
    // After the bounded wait: ready without it, and the health says why.
    agent.wait_ready();
    let health = agent.json("/v1/health");
    assert_eq!(health["status"], "degraded", "{health}");
    let reasons = health["reasons"].to_string();
    assert!(reasons.contains("not done at start-up: Docker containers listed"), "{reasons}");
    assert!(reasons.contains("Docker daemon"), "{reasons}");
    drop(held);
}

/// `vigil check icmp://…` in a network namespace of its own (`unshare --net`, loopback up), in
/// each of the ways the host can let it ping: an unprivileged ICMP datagram socket where
/// `net.ipv4.ping_group_range` allows it, a raw socket with `CAP_NET_RAW` where it does not,
/// and neither — then the probe could not run, and says which setting to change.
#[test]
fn icmp_probes_ping_with_the_socket_the_host_allows() {
    let vigil = env!("CARGO_BIN_EXE_vigil");
    let in_netns = |setup: &str, check: &str| {
        let script = format!("ip link set lo up && {setup} {vigil} check --verbose {check}");
        let out = Command::new("unshare").args(["--net", "sh", "-c", &script]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    };
    let open = "sysctl -q -w net.ipv4.ping_group_range='0 2147483647' &&";
    for target in ["icmp://127.0.0.1", "icmp://[::1]"] {
        let (code, out) = in_netns(open, target);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("3/3 replies, 0% loss"), "{out}");
        assert!(out.contains("datagram icmp socket"), "unprivileged: {out}");
    }
    // ping_group_range as a fresh namespace has it ("1 0": nobody), but root's CAP_NET_RAW.
    let (code, out) = in_netns("", "icmp://127.0.0.1");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("raw icmp socket") && out.contains("3/3 replies"), "{out}");
    // Neither: exit 2 (could not run), naming the setting.
    let (code, out) =
        in_netns("exec setpriv --inh-caps=-net_raw --bounding-set=-net_raw", "icmp://127.0.0.1");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("could not run (local-error)") && out.contains("net.ipv4.ping_group_range is \"1 0\""),
        "{out}"
    );
    assert!(out.contains("CAP_NET_RAW"), "{out}");
    // No route: unhealthy at once; a route but nobody answering: every request lost.
    let (code, out) = in_netns(open, "icmp://10.1.2.3");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unhealthy (unreachable)"), "{out}");
    let (code, out) = in_netns(
        &format!(
            "ip link add v0 type veth peer name v1 && ip addr add 10.9.0.1/24 dev v0 && \
             ip link set v0 up && ip link set v1 up && {open}"
        ),
        "--timeout 1s icmp://10.9.0.2",
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unhealthy (timeout)") && out.contains("0/3 replies, 100% loss"), "{out}");
}

/// The host's hardware in its System check, read under `--host-root` (a fixture tree standing
/// for a host with a hot CPU) and from `--smartctl` (here a stand-in answering in smartctl's JSON
/// for a disk with pending sectors): each is a detail of every instance's System check, and
/// impairs it.
#[test]
fn the_hosts_temperature_throttling_and_disks_are_in_its_system_check() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("host");
    let write = |path: &str, text: &str| {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("sys/class/thermal/thermal_zone0/type", "x86_pkg_temp\n");
    write("sys/class/thermal/thermal_zone0/temp", "101000\n");
    write("sys/class/thermal/thermal_zone0/trip_point_0_type", "critical\n");
    write("sys/class/thermal/thermal_zone0/trip_point_0_temp", "100000\n");
    write("sys/devices/system/cpu/cpu0/thermal_throttle/core_throttle_count", "12\n");
    let smartctl = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smart/smartctl.sh");
    let agent = Agent::start(
        &dir.path().join("agent"),
        &["--host-root", root.to_str().unwrap(), "--smartctl", smartctl.to_str().unwrap()],
    );
    let host = agent.instance("host-test-node");
    let system = &host["status"]["systemStatus"];
    assert_eq!(system["status"], "impaired", "{system}");
    let detail = |name: &str| {
        system["details"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {system}"))
    };
    assert_eq!(detail("cpu-temperature")["status"], "impaired");
    assert!(detail("cpu-temperature")["message"].as_str().unwrap().contains("101.0 °C"), "{system}");
    assert_eq!(detail("cpu-throttling")["status"], "ok", "counters seen once have not grown");
    let disk = detail("disk-health:sdb");
    assert_eq!(disk["status"], "impaired");
    assert!(disk["message"].as_str().unwrap().contains("8 pending sectors"), "{disk}");
    assert!(disk["impairedSince"].is_string(), "{disk}");
    drop(agent);

    // A host without sensors (a VM): each sensor says so, and the System check is still ok.
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(bare.join("proc")).unwrap();
    std::fs::copy("/proc/meminfo", bare.join("proc/meminfo")).unwrap();
    let agent = Agent::start(
        &dir.path().join("agent-bare"),
        &["--host-root", bare.to_str().unwrap(), "--smartctl", "/nonexistent/smartctl"],
    );
    let host = agent.instance("host-test-node");
    let system = &host["status"]["systemStatus"];
    assert_eq!(system["status"], "ok", "{system}");
    for (name, why) in [
        ("cpu-temperature", "no thermal zones"),
        ("cpu-throttling", "no throttle counters"),
        ("disk-health", "smartmontools"),
    ] {
        let d = system["details"].as_array().unwrap().iter().find(|d| d["name"] == name).unwrap();
        assert_eq!(d["status"], "insufficient-data", "{d}");
        assert!(d["message"].as_str().unwrap().contains(why), "{d}");
    }
}

/// `/v1/instances` filters as DescribeInstanceStatus does: by ids, kind, status (of any check or
/// of one), running only (`includeAll=false`); a wrong filter is a 400 naming it.
#[test]
fn instances_are_filtered_like_describe_instance_status() {
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    agent.write_check("good.yaml", &endpoint_http("good", &target.address(), ""));
    agent.write_check("bad.yaml", &endpoint_http("bad", "127.0.0.1:1", "    failureThreshold: 1\n"));
    let ids = |query: &str| -> Vec<String> {
        let doc = agent.json(&format!("/v1/instances{query}"));
        let mut ids: Vec<String> = doc["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["spec"]["instance"]["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let good = format!("endpoint-{}--test-node", target.address().replace(':', "-"));
    let bad = "endpoint-127.0.0.1-1--test-node".to_owned();
    agent.wait_for("/v1/instances?status=impaired", "the bad endpoint impaired", WAIT, |d| {
        d["data"].as_array().is_some_and(|a| a.len() == 1)
    });
    assert_eq!(ids("?status=impaired"), [bad.as_str()]);
    assert_eq!(ids("?instanceStatus=impaired&systemStatus=not-applicable"), [bad.as_str()]);
    assert_eq!(ids("?kind=Endpoint"), [bad.as_str(), good.as_str()]);
    assert_eq!(ids("?kind=host"), ["host-test-node"]);
    assert_eq!(
        ids(&format!("?instanceIds={good},host-test-node")),
        [good.clone(), "host-test-node".to_owned()]
    );
    assert_eq!(ids("?kind=Endpoint&status=ok,initializing"), [good.as_str()]);
    assert_eq!(ids("?includeAll=false").len(), 3, "all three are running");
    assert_eq!(ids("").len(), 3);
    for (query, named) in [
        ("?status=broken", "broken\\\" is not one of ok, impaired"),
        ("?kind=Vm2", "Vm2\\\" is not one of Pod, Container, VM, Host, Endpoint"),
        ("?includeAll=maybe", "includeAll"),
        ("?instanceId=x", "the filters are instanceIds, kind"),
    ] {
        let (code, body) = agent.get(&format!("/v1/instances{query}"));
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body.contains(named), "{query}: {body}");
    }
}

/// The real smartctl, when installed (tests/fixtures/tools.sh installs Debian's smartmontools):
/// whatever this machine's disks are, each answer is judged — never an answer that could not be
/// read.
#[test]
fn the_real_smartctl_answers_are_judged() {
    let Ok(found) = Command::new("smartctl").arg("--version").output() else {
        panic!("smartctl is not installed (tests/fixtures/tools.sh installs smartmontools)");
    };
    assert!(found.status.success());
    let mut disks = vigil::inventory::hardware::DiskHealth::new("smartctl".into(), Duration::from_secs(60));
    let details = disks.assess(Instant::now());
    assert!(!details.is_empty());
    for d in &details {
        assert!(d.name.starts_with("disk-health"), "{d:?}");
        assert!(!d.message.contains("did not answer JSON") && !d.message.contains("cannot run"), "{d:?}");
        if d.status == vigil::api::CheckStatus::InsufficientData {
            assert!(d.message.contains("SMART") || d.message.contains("Unable"), "says why: {d:?}");
        }
    }
}

/// A webhook on loopback that records the JSON bodies POSTed to it, answering 503 to the first
/// `refuse` requests (the agent must retry them) and 204 after.
fn webhook(refuse: usize) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/vigil", listener.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        let mut served = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut line, mut length) = (String::new(), 0usize);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            served += 1;
            let status = if served <= refuse { "503 Service Unavailable" } else { "204 No Content" };
            if served > refuse {
                seen.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            }
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, bodies)
}

/// The SSE events of a finished `/v1/events` answer: (id, event, data).
fn sse_events(body: &str) -> Vec<(Option<u64>, String, Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let (mut id, mut event, mut data) = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ").or_else(|| line.strip_prefix("id:")) {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            Some((id, event?, data.unwrap_or(Value::Null)))
        })
        .collect()
}

/// Standalone events: every transition and action on `/v1/events` as Server-Sent Events, live
/// and replayed from `Last-Event-ID`; and POSTed to a webhook, retried when it fails, in order.
#[test]
fn events_stream_live_resume_from_their_id_and_reach_a_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("up");
    let (url, delivered) = webhook(1);
    let agent = Agent::start(&dir.path().join("agent"), &["--events-webhook", &url]);
    // A live reader from before anything happened.
    let addr = agent.addr;
    let live = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(stream, "GET /v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let (mut line, mut text) = (String::new(), String::new());
        // Only events whose blank line came count (the fields of the next may be half-read).
        let complete = |text: &str| sse_events(text.rfind("\n\n").map_or("", |i| &text[..i]));
        while complete(&text).iter().filter(|(_, e, _)| e == "transition").count() < 2 {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            text.push_str(line.trim_end_matches(['\r', '\n']));
            text.push('\n');
        }
        complete(&text)
    });
    std::thread::sleep(Duration::from_millis(300));
    let check = format!(
        "  target:\n    host: {{}}\n  probe:\n    exec:\n      command: [test, -e, {marker:?}]\n    periodSeconds: 1\n    failureThreshold: 1\n",
        marker = marker.display().to_string()
    );
    agent.write_check("flip.yaml", &healthcheck("flip", &check));
    agent.wait_status("host-test-node", "default/flip", "impaired", WAIT);
    std::fs::write(&marker, "").unwrap();
    agent.wait_status("host-test-node", "default/flip", "ok", WAIT);

    let seen = live.join().unwrap();
    let transitions: Vec<_> = seen.iter().filter(|(_, e, _)| e == "transition").collect();
    assert_eq!(transitions.len(), 2, "{seen:?}");
    let (first, second) = (transitions[0], transitions[1]);
    assert_eq!(first.2["healthCheck"], "default/flip");
    assert_eq!(first.2["instanceId"], "host-test-node");
    assert_eq!(first.2["to"], "impaired", "{seen:?}");
    assert_eq!(first.2["reason"], "exit-code");
    assert_eq!(second.2["from"], "impaired", "{seen:?}");
    assert_eq!(second.2["to"], "ok");
    let (i1, i2) = (first.0.unwrap(), second.0.unwrap());
    assert!(i2 > i1 && first.2["id"] == i1, "{seen:?}");

    // Replayed: everything kept, or from an id on (the header a reconnecting EventSource sends).
    let (code, body) = agent.get("/v1/events?since=0&follow=false");
    assert_eq!(code, 200, "{body}");
    let all = sse_events(&body);
    assert!(
        all.iter().any(|(id, _, _)| *id == Some(i1)) && all.iter().any(|(id, _, _)| *id == Some(i2)),
        "{body}"
    );
    let (code, _, body) =
        request_full(agent.addr, "GET", "/v1/events?follow=false", &[("Last-Event-ID", &i1.to_string())])
            .unwrap();
    assert_eq!(code, 200);
    let after: Vec<Option<u64>> = sse_events(&body).into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(after.first().copied().flatten(), Some(i2), "{body}");
    assert!(after.iter().all(|id| id.is_some_and(|id| id > i1)), "{body}");
    let (code, body) = agent.get("/v1/events?since=zero");
    assert_eq!(code, 400, "{body}");
    // An id beyond the agent's own is a reader from before a restart: it gets everything kept.
    let (_, _, body) =
        request_full(agent.addr, "GET", "/v1/events?follow=false", &[("Last-Event-ID", "99999")]).unwrap();
    assert!(sse_events(&body).iter().any(|(id, _, _)| *id == Some(i1)), "{body}");

    // The webhook refused the first POST: it was retried, and everything came in order.
    let deadline = Instant::now() + WAIT;
    loop {
        let got: Vec<u64> = delivered.lock().unwrap().iter().filter_map(|b| b["id"].as_u64()).collect();
        if got.contains(&i2) {
            assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
            assert!(got.contains(&i1), "the refused one was retried: {got:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the webhook got {got:?}\n{}", agent.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, metrics) = agent.get("/metrics");
    assert!(metrics.contains("vigil_events_webhook_total{result=\"retried\"} 1"), "{metrics}");
    assert!(metrics.contains("vigil_events_webhook_total{result=\"dropped\"} 0"), "{metrics}");
}

/// Two network namespaces of the test's own joined by a veth pair, one address each side, and
/// removed when dropped.
struct VethPair {
    near: String,
    far: String,
}

impl VethPair {
    fn new(tag: &str) -> VethPair {
        let pid = std::process::id();
        let pair = VethPair { near: format!("vigil-t-{tag}-a{pid}"), far: format!("vigil-t-{tag}-b{pid}") };
        let (a, b) = (&pair.near, &pair.far);
        let script = format!(
            "ip netns add {a} && ip netns add {b} && ip link add va{pid} type veth peer name vb{pid} && \
             ip link set va{pid} netns {a} && ip link set vb{pid} netns {b} && \
             ip -n {a} addr add 10.9.0.1/24 dev va{pid} && ip -n {a} link set va{pid} up && ip -n {a} link set lo up && \
             ip -n {b} addr add 10.9.0.2/24 dev vb{pid} && ip -n {b} link set vb{pid} up"
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        pair
    }

    /// The far side's hardware address.
    fn far_mac(&self) -> String {
        let out = Command::new("ip").args(["-n", &self.far, "-o", "link", "show"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.contains("link/ether")).unwrap().to_owned();
        line.split("link/ether ").nth(1).unwrap().split_whitespace().next().unwrap().to_owned()
    }

    /// `vigil check args…` in the near namespace.
    fn check(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.near, env!("CARGO_BIN_EXE_vigil"), "check"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.near, &self.far] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The `arp` probe on a veth pair: the address across answers ARP (healthy, with its hardware
/// address), an address nobody holds does not (`no-neighbour`), loopback has no neighbour.
#[test]
fn arp_probes_see_whether_the_neighbour_answers() {
    let pair = VethPair::new("arp");
    let mac = pair.far_mac();
    let (code, out) = pair.check(&["--verbose", "arp://10.9.0.2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("10.9.0.2 is at {mac} on va")), "{mac}: {out}");
    let (code, out) = pair.check(&["--timeout", "2s", "arp://10.9.0.3"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unhealthy (no-neighbour)") && out.contains("did not answer ARP on va"), "{out}");
    let (code, out) = pair.check(&["arp://127.0.0.1"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("loopback"), "{out}");
}

/// ReportInstanceStatus standalone: the owner's verdict, a file in the state folder's
/// `reports/`, shows in the instance, its Events and metrics while its window lasts; it never
/// changes the status checks nor triggers the check's action; a bad file is refused by field and
/// the last valid one stays.
#[test]
fn an_owners_report_shows_beside_the_checks_and_never_acts() {
    let rt = runtime();
    let target = rt.block_on(HttpTarget::start());
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("restarted");
    let agent = Agent::start(&dir.path().join("agent"), &[]);
    // A check that would act (exec) if the target were impaired.
    let action =
        format!("  action:\n    type: exec\n    exec:\n      command: [touch, {}]\n", marker.display());
    agent.write_check("web.yaml", &endpoint_http("web", &target.address(), &action));
    let id = endpoint_id(&target.address());
    agent.wait_status(&id, "default/web", "ok", WAIT);
    let reports = agent.state.join("reports");
    assert!(reports.is_dir(), "the agent makes the reports folder");

    std::fs::write(
        reports.join(format!("{id}.yaml")),
        "status: impaired\nreasons: [unresponsive, performance-network]\ndescription: ssh hangs after login\n",
    )
    .unwrap();
    let reported = agent.wait_for(&format!("/v1/instances/{id}"), "the report in force", WAIT, |d| {
        d["data"]["status"]["reported"] == "impaired"
    })["data"]
        .clone();
    assert_eq!(reported["spec"]["report"]["reasons"], json!(["unresponsive", "performance-network"]));
    assert_eq!(reported["status"]["instanceStatus"]["status"], "ok", "a report is not a check");
    let (_, metrics) = agent.get("/metrics");
    let series =
        format!("vigil_instance_reported_impaired{{instance_id=\"{id}\",instance_kind=\"Endpoint\"}} 1");
    assert!(metrics.contains(&series), "{series} not in\n{metrics}");
    support::agent::promtool_check(&metrics);
    let (_, body) = agent.get("/v1/events?since=0&follow=false");
    let report = sse_events(&body).into_iter().find(|(_, e, _)| e == "report").map(|(_, _, d)| d);
    let report = report.unwrap_or_else(|| panic!("no report event in {body}"));
    assert_eq!(report["instanceId"], id.as_str());
    assert_eq!(report["reported"], "impaired");
    assert_eq!(report["description"], "ssh hangs after login");

    // An invalid edit is refused, naming the field; the valid report stays in force.
    std::fs::write(reports.join(format!("{id}.yaml")), "status: impaired\nreasons: [slow]\n").unwrap();
    let deadline = Instant::now() + WAIT;
    while !agent.logs().contains("invalid report") {
        assert!(Instant::now() < deadline, "the bad report was not refused:\n{}", agent.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.logs().contains("reasons[0]"), "the refusal names the field:\n{}", agent.logs());
    assert_eq!(agent.instance(&id)["status"]["reported"], "impaired");

    // A window that has ended: no verdict in force, the metric gone, an event saying so.
    std::fs::write(
        reports.join(format!("{id}.yaml")),
        "status: ok\nstartTime: 2020-01-01T00:00:00Z\nendTime: 2020-01-02T00:00:00Z\n",
    )
    .unwrap();
    let ended = agent.wait_for(&format!("/v1/instances/{id}"), "the report out of force", WAIT, |d| {
        d["data"]["status"].get("reported").is_none() && d["data"]["spec"]["report"]["status"] == "ok"
    });
    assert!(ended["data"]["status"].get("reported").is_none());
    let (_, metrics) = agent.get("/metrics");
    assert!(!metrics.contains("vigil_instance_reported_impaired{"), "{metrics}");
    let (_, body) = agent.get("/v1/events?since=0&follow=false");
    let reports_seen: Vec<Value> =
        sse_events(&body).into_iter().filter(|(_, e, _)| e == "report").map(|(_, _, d)| d).collect();
    assert_eq!(reports_seen.len(), 2, "{reports_seen:?}");
    assert_eq!(reports_seen[1]["reported"], Value::Null);
    assert!(!marker.exists(), "a report never triggers the action");
    assert_eq!(agent.instance(&id)["status"]["restarts"]["count"], 0);
}
