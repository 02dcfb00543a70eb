//! `make bench-docker`: the agent watching N running containers (default 50) of the local Docker
//! engine with stats sampled every 10 s. Prints the latency of the container summary
//! (`/api/v1/containers/health`, sequential requests) and the agent's CPU and memory while it
//! monitors them. Then the cost of an `exec` check inside a container: Docker's own HEALTHCHECK
//! exec against vigil's `exec` probe (through the Engine's exec API), each on
//! `VIGIL_BENCH_EXEC_CONTAINERS` (default 4) containers at a 1 s period, CPU of the whole machine
//! over a baseline of the same containers unchecked. Not a test: it prints figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "vigil-test/busybox:latest";
const LABEL: &str = "vigil.bench=1";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn remove_bench_containers() {
    let ids = docker(&["ps", "-aq", "--filter", &format!("label={LABEL}")]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        docker(&args);
    }
}

struct Containers;

impl Drop for Containers {
    fn drop(&mut self) {
        remove_bench_containers();
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn get(addr: SocketAddr, path: &str) -> (String, usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let len = out.len();
    (out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default(), len)
}

/// CPU seconds the whole machine spent busy (every state but idle and iowait) since boot.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<f64> =
        stat.lines().next().unwrap().split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    let total: f64 = f.iter().take(8).sum();
    (total - f[3] - f[4]) / 100.0
}

/// Busy CPU seconds of the machine over `window`, and the execs that ended meanwhile in
/// containers whose name starts with `prefix` (a HEALTHCHECK run and a vigil probe are both one),
/// counted from the Engine's event stream as it happens: a query of past events afterwards would
/// see only the last 256 the Engine keeps.
fn busy_over(window: Duration, prefix: &str) -> (f64, usize) {
    // Start on a second boundary, so the event stream's whole seconds match the window.
    let start = unix_now() + 1;
    let until = start + window.as_secs();
    let events = Command::new("docker")
        .args(["events", "--since", &start.to_string(), "--until", &until.to_string()])
        .args(["--filter", "type=container", "--filter", "event=exec_die"])
        .args(["--format", "{{.Actor.Attributes.name}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while unix_now() < start {
        std::thread::sleep(Duration::from_millis(5));
    }
    let b0 = machine_busy_seconds();
    std::thread::sleep(window);
    let busy = machine_busy_seconds() - b0;
    // The stream ends by itself at `until`.
    let out = events.wait_with_output().unwrap();
    let execs = String::from_utf8_lossy(&out.stdout).lines().filter(|name| name.starts_with(prefix)).count();
    (busy, execs)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A standalone agent on the local Engine with `healthcheck` (one document) in its checks folder
/// and `args` besides: its folders (gone with the directory), the process and its address.
fn start_agent(healthcheck: &str, args: &[&str]) -> (tempfile::TempDir, std::process::Child, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let checks = dir.path().join("checks");
    std::fs::create_dir_all(&checks).unwrap();
    std::fs::write(checks.join("check.yaml"), healthcheck).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let agent = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["agent", "--node-name", "bench", "--log-level", "warn"])
        .args(args)
        .args(["--docker-socket", "/var/run/docker.sock", "--listen", &addr.to_string()])
        .arg("--checks-dir")
        .arg(&checks)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (dir, agent, addr)
}

fn run_containers(prefix: &str, n: usize, health: bool) {
    for i in 0..n {
        let name = format!("{prefix}{i}");
        let mut args =
            vec!["run", "-d", "--init", "--label", LABEL, "--label", "vigil.exec=1", "--name", &name];
        if health {
            args.extend(["--health-cmd", "true", "--health-interval", "1s", "--health-start-period", "0s"]);
        }
        args.extend([IMAGE, "sleep", "3600"]);
        docker(&args);
    }
}

/// Docker's HEALTHCHECK exec against vigil's exec probe, per check, in CPU of the machine.
fn exec_cost(window: Duration) {
    let n: usize = env_or("VIGIL_BENCH_EXEC_CONTAINERS", "4").parse().unwrap();
    println!();
    println!("exec checks in {n} containers, period 1 s, window {}s:", window.as_secs());
    // Baseline: the containers, unchecked.
    run_containers("vigil-exec-plain-", n, false);
    std::thread::sleep(Duration::from_secs(3));
    let (baseline, _) = busy_over(window, "vigil-exec-plain-");
    // Docker's own HEALTHCHECK, `true` every second.
    run_containers("vigil-exec-docker-", n, true);
    std::thread::sleep(Duration::from_secs(5));
    let (busy, checks) = busy_over(window, "vigil-exec-docker-");
    let docker_ms = (busy - baseline) * 1e3 / checks as f64;
    println!(
        "  Docker HEALTHCHECK exec: {checks} checks, {docker_ms:.1} ms of machine CPU per check (dockerd, containerd, shim, runc)"
    );
    for i in 0..n {
        docker(&["rm", "-f", &format!("vigil-exec-docker-{i}")]);
    }
    // vigil's exec probe in the same (unchecked) containers, through the Engine's exec API.
    let (_dir, mut agent, _) = start_agent(
        "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata: {name: exec}\nspec:\n  target: {containers: {selector: {matchLabels: {vigil.exec: \"1\"}}}}\n  probe: {exec: {command: [\"true\"]}, periodSeconds: 1}\n",
        &[],
    );
    // A baseline of the idle agent would need the agent without the check; its idle cost is a
    // fraction of a millisecond per second, counted here as part of the probes' cost.
    std::thread::sleep(Duration::from_secs(8));
    let pid = agent.id();
    let a0 = cpu_seconds(pid);
    let (busy, probes) = busy_over(window, "vigil-exec-plain-");
    let agent_cpu = cpu_seconds(pid) - a0;
    let _ = agent.kill();
    let _ = agent.wait();
    let vigil_ms = (busy - baseline) * 1e3 / probes as f64;
    println!(
        "  vigil exec probe (Engine exec API): {probes} probes, {vigil_ms:.1} ms of machine CPU per probe, of which the agent {:.2} ms",
        agent_cpu * 1e3 / probes as f64
    );
    println!("  vigil / Docker HEALTHCHECK, per check: {:.2}", vigil_ms / docker_ms);
    println!(
        "  (machine CPU: busy time from /proc/stat less a {}s baseline of the unchecked containers,",
        window.as_secs()
    );
    println!(
        "  {:.1}% of one core; checks counted from the Engine's exec_die events)",
        baseline / window.as_secs_f64() * 100.0
    );
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn main() {
    let n: usize = env_or("VIGIL_BENCH_CONTAINERS", "50").parse().unwrap();
    let window = Duration::from_secs(env_or("VIGIL_BENCH_WINDOW", "60").parse().unwrap());
    remove_bench_containers();
    let _cleanup = Containers;
    let started = Instant::now();
    for i in 0..n {
        docker(&[
            "run",
            "-d",
            "--init",
            "--label",
            LABEL,
            "--label",
            "vigil.test=1",
            "--name",
            &format!("vigil-bench-{i}"),
            "--health-cmd",
            "true",
            "--health-interval",
            "10s",
            IMAGE,
            "sleep",
            "3600",
        ]);
    }
    println!(
        "vigil {} — {n} running containers (started in {:.1}s)",
        env!("CARGO_PKG_VERSION"),
        started.elapsed().as_secs_f64()
    );

    let (_dir, mut agent, addr) = start_agent(
        "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata: {name: bench}\nspec:\n  target: {containers: {selector: {matchLabels: {vigil.bench: \"1\"}}}}\n  probe: {docker: {}, periodSeconds: 10}\n",
        &["--docker-stats-interval", "10s"],
    );
    let pid = agent.id();
    // Ready when every container has its first stats sample.
    let deadline = Instant::now() + Duration::from_secs(120);
    let t0 = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ =
                write!(s, "GET /api/v1/containers/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(body)
                && let Some(list) = v["containers"].as_array()
                && list
                    .iter()
                    .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("vigil-bench-")))
                    .count()
                    == n
                && list.iter().all(|c| !c["resources"]["cpuPercent"].is_null())
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the agent did not sample every container");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "first CPU figure for all {n} containers {:.1}s after the agent started",
        t0.elapsed().as_secs_f64()
    );

    let cpu0 = cpu_seconds(pid);
    let w0 = Instant::now();
    // Summary latency, sequential requests, spread over the window (some land during a stats round).
    let mut latencies = Vec::new();
    let mut size = 0;
    while w0.elapsed() < window {
        let t = Instant::now();
        let (body, len) = get(addr, "/api/v1/containers/health");
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        size = len;
        assert!(body.contains("\"total\""), "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = w0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    // The requests cost CPU too: measure them alone to separate monitoring from serving.
    latencies.sort_by(f64::total_cmp);
    println!(
        "/api/v1/containers/health: {} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} bytes",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap(),
        size
    );
    println!(
        "agent CPU over {elapsed:.0}s (monitoring + those requests): {:.2}% of one core, {:.1} ms per container per minute; RSS {:.1} MiB",
        cpu / elapsed * 100.0,
        cpu * 1e3 / n as f64 / (elapsed / 60.0),
        rss_mib(pid)
    );
    // Monitoring alone: the same window with no requests.
    let cpu0 = cpu_seconds(pid);
    let w1 = Instant::now();
    std::thread::sleep(window);
    let quiet = cpu_seconds(pid) - cpu0;
    let elapsed = w1.elapsed().as_secs_f64();
    println!(
        "agent CPU monitoring alone over {elapsed:.0}s: {:.2}% of one core, {:.1} ms per container per minute",
        quiet / elapsed * 100.0,
        quiet * 1e3 / n as f64 / (elapsed / 60.0)
    );
    let _ = agent.kill();
    let _ = agent.wait();
    remove_bench_containers();
    if env_or("VIGIL_BENCH_EXEC", "1") != "0" {
        exec_cost(Duration::from_secs(env_or("VIGIL_BENCH_EXEC_WINDOW", "30").parse().unwrap()));
    }
}
