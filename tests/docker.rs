//! Docker containers against a real engine: the agent binary watching it, containers made with
//! the real `docker` client from a local busybox image. No mock of Docker anywhere. Tests wait on
//! state through the agent's HTTP API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::agent::{Agent, check_of, request};
use support::docker::{SecondEngine, TestContainer, docker_ok, engine};

const WAIT: Duration = Duration::from_secs(30);

fn container_check(name: &str, selector_value: &str, probe: &str, extra: &str) -> String {
    format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata:\n  name: {name}\nspec:\n  target:\n    containers:\n      selector:\n        matchLabels:\n          vigil.case: {selector_value}\n  probe:\n{probe}\n{extra}"
    )
}

fn agent_on(dir: &std::path::Path, socket: &str, extra: &[&str]) -> Agent {
    let mut args = vec!["--docker-socket", socket];
    args.extend_from_slice(extra);
    Agent::start(dir, &args)
}

fn instance_id(name: &str) -> String {
    vigil::inventory::id_for(vigil::api::InstanceKind::Container, name, "test-node")
}

/// A container labelled `vigil.case=<case>` that is healthy while its /tmp/ok exists (checked
/// every second); the file survives restarts, so once removed it stays unhealthy.
fn file_health_container(socket: &str, name: &str, case: &str) -> TestContainer {
    let label = format!("vigil.case={case}");
    let options = [
        "--label",
        &label,
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
    ];
    TestContainer::run(socket, name, &options, "exec sleep 3600")
}

fn restarts(instance: &Value) -> u64 {
    instance["status"]["restarts"]["count"].as_u64().unwrap_or(0)
}

#[test]
fn healthcheck_drives_status_and_restarts_back_off_and_stop_at_max_restarts() {
    let socket = engine();
    let name = format!("vigil-t-restart-{}", std::process::id());
    let c = file_health_container(socket, &name, "restart");
    c.exec("touch /tmp/ok");
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_on(dir.path(), socket, &[]);
    agent.write_check(
        "c.yaml",
        &container_check(
            "web",
            "restart",
            "    docker: {}\n    periodSeconds: 1\n    failureThreshold: 2",
            "  action:\n    type: restartContainer\n    maxRestarts: 3\n    windowSeconds: 3600\n    backoff: {initialSeconds: 1, multiplier: 2, maxSeconds: 60}",
        ),
    );
    let id = instance_id(&name);
    let ok = agent.wait_status(&id, "default/web", "ok", WAIT);
    assert_eq!(ok["spec"]["instance"]["kind"], "Container");
    assert_eq!(ok["status"]["state"], "running");
    assert_eq!(check_of(&ok, "default/web").unwrap()["message"], "HEALTHCHECK healthy");
    assert_eq!(restarts(&ok), 0);
    let first_start = c.inspect("{{.State.StartedAt}}");

    c.exec("rm /tmp/ok");
    let impaired = agent.wait_status(&id, "default/web", "impaired", WAIT);
    let entry = check_of(&impaired, "default/web").unwrap();
    assert_eq!(entry["reason"], "unhealthy", "{entry}");
    assert!(entry["consecutiveFailures"].as_u64().unwrap() >= 2 || restarts(&impaired) > 0, "{entry}");

    // Three restarts, further and further apart, then the budget is spent.
    let done =
        agent.wait_for(&format!("/v1/instances/{id}"), "three restarts", Duration::from_secs(60), |d| {
            restarts(&d["data"]) >= 3
        });
    let recent = done["data"]["status"]["restarts"]["recent"].as_array().unwrap().clone();
    assert_eq!(recent.len(), 3, "{recent:?}");
    assert!(recent.iter().all(|r| r["action"] == "restartContainer" && r["succeeded"] == true), "{recent:?}");
    let times: Vec<jiff::Timestamp> =
        recent.iter().map(|r| r["time"].as_str().unwrap().parse().unwrap()).collect();
    let gaps: Vec<i64> = times.windows(2).map(|w| (w[1] - w[0]).get_seconds()).collect();
    assert!(gaps[0] >= 1 && gaps[1] >= 2, "backoff 1 s then 2 s at least: gaps {gaps:?}");
    assert_ne!(c.inspect("{{.State.StartedAt}}"), first_start, "Docker restarted it");

    // No fourth: the agent says why, and the count stays.
    let deadline = Instant::now() + WAIT;
    while !agent.logs().contains("3 actions within 3600s (maxRestarts)") {
        assert!(Instant::now() < deadline, "no maxRestarts message:\n{}", agent.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(restarts(&agent.instance(&id)), 3);
    assert_eq!(c.inspect("{{.State.Running}}"), "true");
}

#[test]
fn a_restarted_agent_keeps_the_restart_budget_and_impaired_since_of_a_container() {
    let socket = engine();
    let name = format!("vigil-t-restore-{}", std::process::id());
    // Unhealthy for good: /tmp/ok is never made.
    let c = file_health_container(socket, &name, "restore");
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_on(dir.path(), socket, &[]);
    agent.write_check(
        "c.yaml",
        &container_check(
            "web",
            "restore",
            "    docker: {}\n    periodSeconds: 1\n    failureThreshold: 2",
            "  action:\n    type: restartContainer\n    maxRestarts: 1\n    windowSeconds: 3600\n    backoff: {initialSeconds: 0}",
        ),
    );
    let id = instance_id(&name);
    let spent = agent.wait_for(&format!("/v1/instances/{id}"), "one restart", Duration::from_secs(60), |d| {
        restarts(&d["data"]) == 1 && d["data"]["status"]["instanceStatus"]["status"] == "impaired"
    })["data"]
        .clone();
    let impaired_since = spent["status"]["instanceStatus"]["details"][0]["impairedSince"].clone();
    assert!(impaired_since.is_string(), "{}", spent["status"]);
    let restarted_at = spent["status"]["restarts"]["recent"][0]["time"].clone();
    let started = c.inspect("{{.State.StartedAt}}");

    // Once the state folder has it: killed without a chance to write anything more, then
    // started again on the same state.
    agent.wait_written(&id, "the restart", |d| d["status"]["restarts"]["count"] == 1);
    agent.kill9();
    agent.restart();
    let back = agent.wait_for(&format!("/v1/instances/{id}"), "the container again", WAIT, |d| {
        d["data"]["status"]["instanceStatus"]["status"] == "impaired"
    })["data"]
        .clone();
    assert_eq!(restarts(&back), 1, "the restart budget survives: {}", back["status"]);
    assert_eq!(back["status"]["restarts"]["recent"][0]["time"], restarted_at);
    assert_eq!(back["status"]["instanceStatus"]["details"][0]["impairedSince"], impaired_since);
    // Still impaired and past its budget: no new restart (probes run every second).
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(restarts(&agent.instance(&id)), 1);
    assert_eq!(c.inspect("{{.State.StartedAt}}"), started, "Docker was not asked to restart it again");
}

#[test]
fn containers_come_and_go_with_their_instances_and_metrics() {
    let socket = engine();
    let name = format!("vigil-t-gone-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_on(dir.path(), socket, &["--docker-stats-interval", "1s"]);
    agent
        .write_check("c.yaml", &container_check("alive", "gone", "    docker: {}\n    periodSeconds: 1", ""));
    let c = TestContainer::run(
        socket,
        &name,
        &["--label", "vigil.case=gone", "--label", "forge.agent.type=worker"],
        "exec sleep 3600",
    );
    let id = instance_id(&name);
    // Appears from the event stream, no restart of the agent, no polling on our side.
    let seen = agent.wait_status(&id, "default/alive", "ok", WAIT);
    assert_eq!(check_of(&seen, "default/alive").unwrap()["message"], "running (no HEALTHCHECK)");
    let system = &seen["status"]["systemStatus"]["details"];
    assert!(
        system.as_array().unwrap().iter().any(|d| d["name"] == "docker-daemon" && d["status"] == "ok"),
        "{system}"
    );

    // The seed's summary contract, with the Docker labels.
    let summary = agent.json("/api/v1/containers/health");
    for key in ["timestamp", "total", "healthy", "unhealthy", "containers"] {
        assert!(summary.get(key).is_some(), "{key} missing: {summary}");
    }
    let entry = summary["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["id"].as_str().unwrap(), &c.id[..12]);
    assert_eq!(entry["status"], "running");
    assert_eq!(entry["health"], "none");
    assert_eq!(entry["labels"]["forge.agent.type"], "worker");
    for key in [
        "cpuPercent",
        "memoryUsageMB",
        "memoryLimitMB",
        "memoryPercent",
        "networkRxMB",
        "networkTxMB",
        "blockReadMB",
        "blockWriteMB",
        "pids",
    ] {
        assert!(entry["resources"].get(key).is_some(), "resources.{key} missing: {entry}");
    }
    assert!(entry["uptime"].as_i64().is_some(), "{entry}");
    // By id prefix and by name; unknown is a JSON 404.
    let by_prefix = agent.json(&format!("/api/v1/containers/{}/health", &c.id[..8]));
    assert_eq!(by_prefix["name"], name.as_str());
    assert_eq!(by_prefix["fullId"], c.id.as_str());
    let (status, body) = agent.get("/api/v1/containers/no-such-container/stats");
    assert_eq!(status, 404, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], 404);
    // Host status counts it.
    agent.wait_for("/v1/host/status", "the container to be counted", WAIT, |d| {
        d["data"]["running_containers"].as_u64() >= Some(1)
    });
    // Per-container metrics, and they pass promtool.
    let pids = format!("vigil_container_pids{{instance_id=\"{id}\"");
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let (_, text) = agent.get("/metrics");
        if text.contains(&pids) {
            break text;
        }
        assert!(Instant::now() < deadline, "no {pids} in:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.contains(&format!("vigil_container_running{{instance_id=\"{id}\",container=\"{name}\"}} 1"))
    );
    support::agent::promtool_check(&metrics);

    drop(c);
    agent.wait_for("/v1/instances", "the instance to go", WAIT, |d| {
        d["data"].as_array().unwrap().iter().all(|i| i["metadata"]["name"] != id.as_str())
    });
    let (status, _) = agent.get(&format!("/v1/instances/{id}"));
    assert_eq!(status, 404);
    let (_, metrics) = agent.get("/metrics");
    assert!(!metrics.contains(&id), "series of a removed container stay:\n{metrics}");
}

/// Reads Server-Sent Events from the agent: (event, data) pairs, until `stop` says so or the
/// stream ends.
fn read_events(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    mut stop: impl FnMut(&[(String, String)]) -> bool,
) -> (Vec<(String, String)>, bool) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    // Head.
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let (mut events, mut event, mut data) = (Vec::new(), String::new(), String::new());
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return (events, true),
            Ok(_) => {}
        }
        // Chunked framing: sizes are hex-only lines; SSE fields have a colon.
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(v) = l.strip_prefix("event: ") {
            event = v.to_owned();
        } else if let Some(v) = l.strip_prefix("data: ") {
            data = v.to_owned();
        } else if l.is_empty() && !event.is_empty() {
            events.push((std::mem::take(&mut event), std::mem::take(&mut data)));
            if events.last().is_some_and(|(e, _)| e == "end") {
                return (events, true);
            }
            if stop(&events) {
                return (events, false);
            }
        }
    }
}

#[test]
fn logs_tail_follow_long_lines_and_the_end_of_the_stream() {
    let socket = engine();
    let name = format!("vigil-t-logs-{}", std::process::id());
    let c = TestContainer::run(
        socket,
        &name,
        &["--label", "vigil.case=logs"],
        "for i in $(seq 1 20); do echo line $i; done; head -c 40000 /dev/zero | tr '\\0' x; echo; \
         echo line 21; sleep 0.2; echo oops >&2; exec sleep 3600",
    );
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_on(dir.path(), socket, &[]);
    agent.wait_for("/api/v1/containers/health", "the container", WAIT, |d| {
        d["containers"].as_array().is_some_and(|a| a.iter().any(|e| e["name"] == name.as_str()))
    });
    // The container has printed everything once the long line is there.
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8_lossy(&support::docker::docker(socket, &["logs", &name]).stderr).contains("oops")
    {
        assert!(Instant::now() < deadline, "the container did not print its lines");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (events, ended) =
        read_events(agent.addr, &format!("/api/v1/containers/{name}/logs?tail=5"), WAIT, |_| false);
    assert!(ended, "without follow the stream ends");
    let lines: Vec<Value> =
        events.iter().filter(|(e, _)| e == "log").map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(lines.len(), 5, "tail=5: {lines:?}");
    let messages: Vec<&str> = lines.iter().map(|l| l["message"].as_str().unwrap()).collect();
    // Docker cuts the 40,000-character line into 16 KiB pieces (three log entries); it arrives
    // whole, and counts as one of the five.
    assert_eq!(&messages[..2], ["line 19", "line 20"]);
    assert_eq!(messages[2].len(), 40_000);
    assert!(messages[2].bytes().all(|b| b == b'x'));
    assert_eq!(&messages[3..], ["line 21", "oops"]);
    assert_eq!(lines[4]["stream"], "stderr");
    assert_eq!(lines[0]["stream"], "stdout");
    assert!(lines[0]["timestamp"].as_str().unwrap().parse::<jiff::Timestamp>().is_ok(), "{}", lines[0]);

    // follow: a new line arrives within a second of being written.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = format!("/api/v1/containers/{name}/logs?tail=0&follow=true");
    let reader = {
        let addr = agent.addr;
        std::thread::spawn(move || {
            read_events(addr, &path, Duration::from_secs(30), |events| {
                let found = events.iter().any(|(e, d)| e == "log" && d.contains("marker"));
                if found {
                    tx.send(Instant::now()).unwrap();
                }
                found
            })
        })
    };
    // Give the stream a moment to be attached, then write.
    std::thread::sleep(Duration::from_millis(500));
    let written = Instant::now();
    c.exec("echo marker > /proc/1/fd/1");
    let seen = rx.recv_timeout(Duration::from_secs(10)).expect("the followed line never arrived");
    let latency = seen.duration_since(written);
    assert!(latency < Duration::from_secs(1), "followed line took {latency:?}");
    reader.join().unwrap();

    // The followed stream ends cleanly when the container stops.
    let path = format!("/api/v1/containers/{name}/logs?tail=1&follow=true");
    let ender = {
        let addr = agent.addr;
        std::thread::spawn(move || read_events(addr, &path, Duration::from_secs(30), |_| false))
    };
    std::thread::sleep(Duration::from_millis(500));
    docker_ok(socket, &["stop", "-t", "1", &name]);
    let (events, ended) = ender.join().unwrap();
    assert!(ended, "the stream must end when the container stops");
    assert_eq!(events.last().unwrap().0, "end", "{events:?}");

    // Bad queries are refused with the field named.
    let (status, body) =
        request(agent.addr, "GET", &format!("/api/v1/containers/{name}/logs?tail=many"), &[]).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tail"), "{body}");
}

#[test]
fn stats_move_when_a_container_burns_cpu_and_allocates_memory() {
    let socket = engine();
    let name = format!("vigil-t-stats-{}", std::process::id());
    let c = TestContainer::run(socket, &name, &["--label", "vigil.case=stats"], "exec sleep 3600");
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_on(dir.path(), socket, &["--docker-stats-interval", "1s"]);
    let path = format!("/api/v1/containers/{name}/stats");
    let idle = agent.wait_for(&path, "a CPU figure", WAIT, |d| d["resources"]["cpuPercent"].is_number());
    let idle_cpu = idle["resources"]["cpuPercent"].as_f64().unwrap();
    let idle_mem = idle["resources"]["memoryUsageMB"].as_f64().unwrap();
    assert!(idle_cpu < 20.0, "{idle}");
    assert!(idle["resources"]["pids"].as_u64().unwrap() >= 1, "{idle}");
    // Block I/O: a figure from the API or the cgroup, or null where neither has one — never
    // a made-up zero from empty arrays.
    for key in ["blockReadMB", "blockWriteMB"] {
        let figure = idle["resources"].get(key).unwrap_or_else(|| panic!("{key} missing: {idle}"));
        assert!(figure.is_number() || figure.is_null(), "{key}: {figure}");
    }

    // Burn a CPU.
    c.exec("(while :; do :; done) >/dev/null 2>&1 & echo started");
    agent.wait_for(&path, "CPU above 50%", WAIT, |d| d["resources"]["cpuPercent"].as_f64() > Some(50.0));
    // Hold 64 MiB: busybox `tail` keeps a line without newline in memory.
    c.exec("(head -c 67108864 /dev/zero | tail -c 67108864 | sleep 3600) >/dev/null 2>&1 & echo started");
    agent.wait_for(&path, "memory to grow by 50 MiB", WAIT, |d| {
        d["resources"]["memoryUsageMB"].as_f64() > Some(idle_mem + 50.0)
    });
}

#[test]
fn a_dead_daemon_is_insufficient_data_and_never_a_restart() {
    let second = SecondEngine::start("vigil-t-kill");
    let name = "vigil-t-second";
    let c = TestContainer::run(
        &second.socket,
        name,
        &["--label", "vigil.case=second", "--health-cmd", "true", "--health-interval", "1s"],
        "exec sleep 3600",
    );
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_on(dir.path(), &second.socket, &[]);
    agent.write_check(
        "c.yaml",
        &container_check(
            "second",
            "second",
            "    docker: {}\n    periodSeconds: 1\n    failureThreshold: 2",
            "  action:\n    type: restartContainer\n    backoff: {initialSeconds: 0}",
        ),
    );
    let id = instance_id(name);
    agent.wait_status(&id, "default/second", "ok", WAIT);

    second.kill9();
    let lost = agent.wait_status(&id, "default/second", "insufficient-data", WAIT);
    assert_eq!(lost["status"]["systemStatus"]["status"], "impaired", "{}", lost["status"]);
    let daemon = lost["status"]["systemStatus"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "docker-daemon")
        .unwrap()
        .clone();
    assert_eq!(daemon["status"], "impaired");
    assert!(daemon["impairedSince"].is_string(), "{daemon}");
    assert_eq!(restarts(&lost), 0, "a lost daemon is no reason to restart anything");
    let health = agent.json("/v1/health");
    assert_eq!(health["status"], "degraded");
    assert!(health["reasons"].to_string().contains("Docker daemon"), "{health}");
    let (_, metrics) = agent.get("/metrics");
    assert!(metrics.contains("vigil_docker_daemon_up 0"), "{metrics}");
    assert!(!agent.logs().contains("taking action"), "{}", agent.logs());
    drop(c);
}

#[test]
fn exec_and_network_probes_reach_the_container_and_mounts_are_watched() {
    let socket = engine();
    let name = format!("vigil-t-probes-{}", std::process::id());
    let data = tempfile::tempdir().unwrap();
    let mount = format!("{}:/data:ro", data.path().display());
    let c = TestContainer::run(
        socket,
        &name,
        &["--label", "vigil.case=probes", "-v", &mount],
        "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www",
    );
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_on(dir.path(), socket, &["--docker-stats-interval", "1s"]);
    agent.write_check(
        "c.yaml",
        &[
            container_check("inside", "probes", "    exec:\n      command: [sh, -c, 'test -f /www/healthz']\n    periodSeconds: 1\n    timeoutSeconds: 2", ""),
            container_check("slow", "probes", "    exec:\n      command: [sleep, '30']\n    periodSeconds: 1\n    timeoutSeconds: 1\n    failureThreshold: 1", ""),
            container_check("web", "probes", "    http: {path: /healthz, port: 8080}\n    periodSeconds: 1", ""),
            container_check("neighbour", "probes", "    arp: {}\n    periodSeconds: 1", ""),
            container_check("ping", "probes", "    icmp: {}\n    periodSeconds: 1", ""),
        ]
        .join("---\n"),
    );
    let id = instance_id(&name);
    let ok = agent.wait_status(&id, "default/inside", "ok", WAIT);
    assert_eq!(check_of(&ok, "default/inside").unwrap()["probe"], "exec");
    let web = agent.wait_status(&id, "default/web", "ok", WAIT);
    assert_eq!(check_of(&web, "default/web").unwrap()["message"], "HTTP 200 OK");
    // The container on the bridge answers ARP and ICMP.
    let arp = agent.wait_status(&id, "default/neighbour", "ok", WAIT);
    let arp = check_of(&arp, "default/neighbour").unwrap()["message"].as_str().unwrap().to_owned();
    let mac = c.inspect("{{range .NetworkSettings.Networks}}{{.MacAddress}}{{end}}");
    assert!(arp.contains(&format!("is at {mac} on docker0")), "{mac}: {arp}");
    let ping = agent.wait_status(&id, "default/ping", "ok", WAIT);
    assert!(check_of(&ping, "default/ping").unwrap()["message"].as_str().unwrap().contains("3/3 replies"));
    let slow = agent.wait_status(&id, "default/slow", "impaired", WAIT);
    let slow = check_of(&slow, "default/slow").unwrap();
    assert_eq!(slow["reason"], "timeout", "{slow}");
    // The timed-out exec was killed, not left running in the container.
    let deadline = Instant::now() + WAIT;
    while c.exec("ps -o args | grep -c '^sleep 30' || true").parse::<u32>().unwrap_or(0) > 1 {
        assert!(Instant::now() < deadline, "timed-out execs pile up:\n{}", c.exec("ps -o pid,args"));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Attached volumes: the bind mount's source is watched.
    let volumes = &agent.instance(&id)["status"]["attachedVolumeStatus"];
    assert_eq!(volumes["status"], "ok", "{volumes}");
    assert_eq!(volumes["details"][0]["name"], "/data", "{volumes}");

    // An exec failing inside the container is unhealthy with its exit code.
    c.exec("rm /www/healthz");
    let failed = agent.wait_status(&id, "default/inside", "impaired", WAIT);
    assert_eq!(check_of(&failed, "default/inside").unwrap()["reason"], "exit-code");
    let web = agent.wait_status(&id, "default/web", "impaired", WAIT);
    assert_eq!(check_of(&web, "default/web").unwrap()["reason"], "status");

    // The mount's source vanishes from the host: Attached volumes impaired.
    std::fs::remove_dir_all(data.path()).unwrap();
    agent.wait_for(&format!("/v1/instances/{id}"), "attached volumes impaired", WAIT, |d| {
        d["data"]["status"]["attachedVolumeStatus"]["status"] == "impaired"
    });
}

#[test]
fn a_container_stopped_or_paused_by_its_owner_is_left_alone() {
    let socket = engine();
    let name = format!("vigil-t-owner-{}", std::process::id());
    let c = TestContainer::run(socket, &name, &["--label", "vigil.case=owner"], "exec sleep 3600");
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_on(dir.path(), socket, &[]);
    agent.write_check(
        "c.yaml",
        &container_check(
            "owner",
            "owner",
            "    docker: {}\n    periodSeconds: 1\n    failureThreshold: 1",
            "  action:\n    type: restartContainer\n    backoff: {initialSeconds: 0}",
        ),
    );
    let id = instance_id(&name);
    agent.wait_status(&id, "default/owner", "ok", WAIT);

    docker_ok(socket, &["pause", &name]);
    let paused = agent.wait_status(&id, "default/owner", "not-applicable", WAIT);
    assert_eq!(paused["status"]["state"], "paused");
    docker_ok(socket, &["unpause", &name]);
    agent.wait_status(&id, "default/owner", "ok", WAIT);

    docker_ok(socket, &["stop", "-t", "1", &name]);
    let stopped = agent.wait_status(&id, "default/owner", "not-applicable", WAIT);
    assert_eq!(stopped["status"]["state"], "stopped");
    assert_eq!(restarts(&stopped), 0);
    // DescribeInstanceStatus's default: running instances only.
    let listed = |query: &str| {
        let doc = agent.json(&format!("/v1/instances{query}"));
        doc["data"].as_array().unwrap().iter().any(|d| d["spec"]["instance"]["id"] == id.as_str())
    };
    assert!(listed("?kind=Container") && !listed("?kind=Container&includeAll=false"), "a stopped container");
    assert_eq!(c.inspect("{{.State.Running}}"), "false", "vigil must not start it again");

    // A crash (killed from inside, no stop by its owner) is vigil's to restart.
    docker_ok(socket, &["start", &name]);
    agent.wait_status(&id, "default/owner", "ok", WAIT);
    c.exec("kill -9 $(pidof sleep)");
    let restarted = agent.wait_for(&format!("/v1/instances/{id}"), "a restart after the crash", WAIT, |d| {
        restarts(&d["data"]) >= 1
    });
    assert!(
        restarted["data"]["status"]["restarts"]["lastReason"].as_str().unwrap().contains("not-running"),
        "{}",
        restarted["data"]["status"]["restarts"]
    );
    agent.wait_status(&id, "default/owner", "ok", WAIT);
}

/// A node's Docker may start after the agent (the DaemonSet's pod comes up first on boot): a
/// socket that is not there yet is waited for, not a reason to stop or to give up on Docker.
#[test]
fn an_agent_started_before_the_docker_socket_exists_watches_docker_once_it_appears() {
    let name = "vigil-t-late-socket";
    let c = TestContainer::run(
        engine(),
        name,
        &["--label", "vigil.case=late", "--health-cmd", "true", "--health-interval", "1s"],
        "exec sleep 3600",
    );
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("docker.sock");
    let agent = agent_on(dir.path(), socket.to_str().unwrap(), &["--inventory-sync-timeout", "1s"]);
    agent.write_check("c.yaml", &container_check("late", "late", "    docker: {}\n    periodSeconds: 1", ""));
    let health =
        agent.wait_for("/v1/health", "Docker reported unreachable", WAIT, |h| h["status"] == "degraded");
    assert!(health["reasons"].to_string().contains("Docker daemon"), "{health}");
    let (_, metrics) = agent.get("/metrics");
    assert!(metrics.contains("vigil_docker_daemon_up 0"), "{metrics}");

    // Docker comes up: its socket appears where the agent was told to look.
    std::os::unix::fs::symlink(engine(), &socket).unwrap();
    let id = instance_id(name);
    agent.wait_status(&id, "default/late", "ok", WAIT);
    let (_, metrics) = agent.get("/metrics");
    assert!(metrics.contains("vigil_docker_daemon_up 1"), "{metrics}");
    drop(c);
}
