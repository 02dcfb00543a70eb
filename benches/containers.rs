//! `make bench-docker`: the agent watching N running containers (default 50) of the local Docker
//! engine with stats sampled every 10 s. Prints the latency of the container summary
//! (`/api/v1/containers/health`, sequential requests) and the agent's CPU and memory while it
//! monitors them. Not a test: it prints figures.

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

    let dir = tempfile::tempdir().unwrap();
    let checks = dir.path().join("checks");
    std::fs::create_dir_all(&checks).unwrap();
    std::fs::write(
        checks.join("containers.yaml"),
        "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata: {name: bench}\nspec:\n  target: {containers: {selector: {matchLabels: {vigil.bench: \"1\"}}}}\n  probe: {docker: {}, periodSeconds: 10}\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["agent", "--node-name", "bench", "--log-level", "warn", "--docker-stats-interval", "10s"])
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
}
