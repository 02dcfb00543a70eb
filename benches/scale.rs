//! `make bench`: the standalone agent probing N targets at a 1 s period, against a loopback
//! nginx, for N = 1,000 and 10,000, HTTP and TCP, in two shapes: N HealthChecks of one target
//! each, and N/100 HealthChecks of 100 targets each. Prints probes/s, the agent's CPU per probe,
//! scheduler lateness p50/p99, RSS and peak, the time to readiness and to steady state, the
//! `/metrics` size and scrape time, and `/v1/health` latency while it runs; then the floors, each
//! measured here in the same run: a Rust client opening a new connection per HTTP request, a
//! connect + close loop with `SO_LINGER 0`, `wrk` when installed, and monit checking
//! `VIGIL_BENCH_MONIT` (default 2,000) HTTP targets when installed.
//!
//! Not a test: it asserts nothing, it measures. Options through the environment:
//! `VIGIL_BENCH_SIZES` (default `1000,10000`), `VIGIL_BENCH_SECONDS` (measured window, default 20),
//! `VIGIL_BENCH_KINDS` (default `http,tcp`), `VIGIL_BENCH_SHAPES` (targets per HealthCheck,
//! default `1,100`), `VIGIL_BENCH_BINARY` (another `vigil` to measure, to compare builds).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The agent measured: this build's, or `VIGIL_BENCH_BINARY` (another build, to compare).
fn binary() -> PathBuf {
    std::env::var_os("VIGIL_BENCH_BINARY")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vigil")), PathBuf::from)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn ticks() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; read it from getconf to be sure.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) of a process.
fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap())
}

/// CPU seconds (user + system) of the threads of `pid` that do not run probes (the probe
/// threads are `vigil-probe-N`): what the agent spends on everything but probing.
fn cpu_seconds_but_probing(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter(|stat| !stat.contains("(vigil-probe-"))
        .map(|stat| stat_cpu_seconds(&stat))
        .sum()
}

/// CPU seconds (user + system) of the calling thread.
fn thread_cpu_seconds() -> f64 {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/thread-self/stat").unwrap())
}

/// User + system CPU seconds in the text of a `/proc/…/stat`.
fn stat_cpu_seconds(stat: &str) -> f64 {
    // Fields after the command: state is [0]; utime is field 14 overall, [11] here.
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks()
}

/// The connect floor: connect and close with `SO_LINGER 0` (no TIME-WAIT, as vigil's probes do)
/// in a loop on this thread for `window`; connections and CPU µs per connection.
fn connect_floor(port: u16, window: Duration) -> (f64, f64) {
    let (cpu0, t0, mut n) = (thread_cpu_seconds(), Instant::now(), 0u64);
    while t0.elapsed() < window {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
        n += 1;
    }
    let cpu = thread_cpu_seconds() - cpu0;
    (n as f64 / t0.elapsed().as_secs_f64(), cpu * 1e6 / n as f64)
}

/// The HTTP floor in Rust (the same exchange as wrk's with a new connection per request): connect,
/// send a GET with `Connection: close`, read the whole answer, close with `SO_LINGER 0`; requests
/// per second and CPU µs per request.
fn http_floor(port: u16, window: Duration) -> (f64, f64) {
    let request = format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let mut buf = [0u8; 1024];
    let (cpu0, t0, mut n) = (thread_cpu_seconds(), Instant::now(), 0u64);
    while t0.elapsed() < window {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        while s.read(&mut buf).unwrap() > 0 {}
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
        n += 1;
    }
    let cpu = thread_cpu_seconds() - cpu0;
    (n as f64 / t0.elapsed().as_secs_f64(), cpu * 1e6 / n as f64)
}

/// `VmRSS` and `VmHWM` of a process, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start() -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = format!(
            "worker_processes 1;\nerror_log {0}/error.log warn;\npid {0}/nginx.pid;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {0};\n  proxy_temp_path {0};\n  fastcgi_temp_path {0};\n  uwsgi_temp_path {0};\n  scgi_temp_path {0};\n  server {{\n    listen {port} reuseport backlog=4096;\n    location = /nginx_status {{ stub_status; }}\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
            dir.path().display()
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .args(["-e", "stderr", "-g", "daemon off;", "-c"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is needed: make bench installs it (Debian's nginx-light)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, port, _dir: dir }
    }

    /// The nginx worker, whose CPU is the target's side of the cost.
    fn worker_pid(&self) -> Option<u32> {
        let children =
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", self.child.id(), self.child.id()))
                .ok()?;
        children.split_whitespace().next()?.parse().ok()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits. SIGKILL would orphan the workers.
        let worker = self.worker_pid();
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let still_nginx =
            |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"nginx"));
        if let Some(worker) = worker.filter(|&pid| still_nginx(pid)) {
            let _ = Command::new("kill").args(["-KILL", &worker.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// Requests nginx has answered since it started (its stub_status), this one included.
fn nginx_requests(port: u16) -> f64 {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let status = get(addr, "/nginx_status");
    // "Active connections: 1\nserver accepts handled requests\n 12 12 12\n…"
    status.lines().nth(2).and_then(|l| l.split_whitespace().nth(2)?.parse().ok()).unwrap_or(f64::NAN)
}

/// monit (Debian's) checking `n` HTTP targets with a 1 s cycle, for `window` after a warm-up:
/// requests per second (counted by nginx), monit's CPU µs per request, and its RSS in MiB.
fn monit(port: u16, n: usize, window: Duration) -> Option<(f64, f64, f64)> {
    let exe =
        [PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/monit"), PathBuf::from("monit")]
            .into_iter()
            .find(|p| Command::new(p).arg("-V").stdout(Stdio::null()).status().is_ok_and(|s| s.success()))?;
    let dir = tempfile::tempdir().ok()?;
    let d = dir.path().display();
    let mut conf = format!(
        "set daemon 1\nset logfile {d}/monit.log\nset pidfile {d}/monit.pid\nset idfile {d}/monit.id\nset statefile {d}/monit.state\n"
    );
    for i in 0..n {
        conf.push_str(&format!(
            "check host bench-{i} with address {}\n  if failed port {port} protocol http request \"/health\" then alert\n",
            loopback(i)
        ));
    }
    let path = dir.path().join("monitrc");
    std::fs::write(&path, conf).ok()?;
    // monit refuses a control file others may read.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).ok()?;
    let mut child = Command::new(&exe)
        .arg("-I")
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_secs(5));
    let (cpu0, req0, t0) = (cpu_seconds(child.id()), nginx_requests(port), Instant::now());
    std::thread::sleep(window);
    let (cpu1, req1, elapsed) = (cpu_seconds(child.id()), nginx_requests(port), t0.elapsed().as_secs_f64());
    let (rss, _) = rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    // Less the stub_status request itself.
    let requests = req1 - req0 - 1.0;
    Some((requests / elapsed, (cpu1 - cpu0) * 1e6 / requests, rss))
}

/// The i-th loopback address: 127.1.0.1, 127.1.0.2, … (all of 127/8 reaches loopback on Linux),
/// so that every target is its own instance.
fn loopback(i: usize) -> String {
    let n = i + 1;
    format!("127.{}.{}.{}", 1 + n / 65536, (n / 256) % 256, n % 256)
}

/// `n` targets in HealthChecks of `per_doc` targets each, a thousand HealthChecks to a file (the
/// agent reads files of up to 1 MiB).
fn write_checks(dir: &Path, kind: &str, n: usize, per_doc: usize, port: u16) {
    std::fs::create_dir_all(dir).unwrap();
    let probe = match kind {
        "http" => "http: {path: /health}",
        _ => "tcp: {}",
    };
    let docs = n.div_ceil(per_doc);
    for file in 0..docs.div_ceil(1000) {
        let mut text = String::new();
        for d in file * 1000..((file + 1) * 1000).min(docs) {
            let addresses: Vec<String> = (d * per_doc..((d + 1) * per_doc).min(n))
                .map(|i| format!("\"{}:{port}\"", loopback(i)))
                .collect();
            text.push_str(&format!(
                "apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata: {{name: bench-{d}}}\nspec:\n  target:\n    endpoints:\n      addresses: [{}]\n  probe:\n    {probe}\n    periodSeconds: 1\n---\n",
                addresses.join(", ")
            ));
        }
        std::fs::write(dir.join(format!("bench-{file}.yaml")), text).unwrap();
    }
}

/// Sum of a metric's samples whose line starts with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// The lateness histogram: (upper bound, cumulative count).
fn lateness_buckets(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|l| l.starts_with("vigil_scheduler_lateness_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// A quantile from bucket deltas, interpolated linearly inside the bucket.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let deltas: Vec<(f64, f64)> = after.iter().zip(before).map(|((le, a), (_, b))| (*le, a - b)).collect();
    let total = deltas.last().map(|d| d.1).unwrap_or(0.0);
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut prev_le = 0.0;
    let mut prev_count = 0.0;
    for (le, count) in deltas {
        if count >= rank {
            if le.is_infinite() {
                return prev_le;
            }
            let inside = count - prev_count;
            let frac = if inside > 0.0 { (rank - prev_count) / inside } else { 0.0 };
            return prev_le + (le - prev_le) * frac;
        }
        prev_le = le;
        prev_count = count;
    }
    prev_le
}

fn fraction_within(before: &[(f64, f64)], after: &[(f64, f64)], bound: f64) -> f64 {
    let total = after.last().unwrap().1 - before.last().unwrap().1;
    let within = after
        .iter()
        .zip(before)
        .find(|((le, _), _)| (*le - bound).abs() < 1e-12)
        .map(|((_, a), (_, b))| a - b);
    within.map(|w| w / total).unwrap_or(f64::NAN)
}

struct Row {
    scenario: String,
    checks: usize,
    ready_s: f64,
    steady_s: f64,
    metrics_bytes: usize,
    startup_late_pct: f64,
    scrape_ms: f64,
    probes_per_s: f64,
    cpu_us: f64,
    p50_ms: f64,
    p99_ms: f64,
    within_2ms: f64,
    rss: f64,
    peak: f64,
    health_p50_ms: f64,
    health_p99_ms: f64,
    nginx_cpu_us: f64,
    reload_ms: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn run_agent(nginx: &Nginx, kind: &str, n: usize, per_check: usize, window: Duration) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let checks = dir.path().join("checks");
    write_checks(&checks, kind, n, per_check, nginx.port);
    let started = Instant::now();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = Command::new(binary())
        .args([
            "agent",
            "--node-name",
            "bench",
            "--log-level",
            "warn",
            "--no-docker",
            "--listen",
            &addr.to_string(),
        ])
        .arg("--checks-dir")
        .arg(&checks)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = agent.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = write!(s, "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the agent did not become ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let ready_s = started.elapsed().as_secs_f64();
    // Steady state: every target probed, and the first write of every instance's state file
    // (a one-time cost at start-up) done.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut m_steady;
    loop {
        let m = get(addr, "/metrics");
        let written = metric_sum(&m, "vigil_status_writes_total{kind=\"instance\",result=\"ok\"}");
        let probed = metric_sum(&m, "vigil_probes_total");
        m_steady = m;
        if written >= n as f64 && probed >= 2.0 * n as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "no steady state after 120 s: {written} files, {probed} probes");
        std::thread::sleep(Duration::from_millis(200));
    }
    let steady_s = started.elapsed().as_secs_f64();
    // Every probe from the start to steady state: the share that started more than a period late.
    let start_buckets = lateness_buckets(&m_steady);
    let zero: Vec<(f64, f64)> = start_buckets.iter().map(|(le, _)| (*le, 0.0)).collect();
    let startup_late_pct = 100.0 - fraction_within(&zero, &start_buckets, 1.0) * 100.0;
    std::thread::sleep(Duration::from_secs(2));

    let m0 = get(addr, "/metrics");
    let cpu0 = cpu_seconds(pid);
    let nginx_pid = nginx.worker_pid();
    let ng0 = nginx_pid.map(cpu_seconds).unwrap_or(0.0);
    let t0 = Instant::now();
    // The measured window: nothing but probing (two scrapes frame it).
    std::thread::sleep(window);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(pid);
    let ng1 = nginx_pid.map(cpu_seconds).unwrap_or(0.0);
    let m1 = get(addr, "/metrics");
    // The scrape: five, timed.
    let mut scrapes: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let _ = get(addr, "/metrics");
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    scrapes.sort_by(f64::total_cmp);
    // Then /v1/health latency while probing goes on: 1,000 requests, one every 5 ms, each on a
    // fresh connection as curl would.
    let mut health = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let start = Instant::now();
        let body = get(addr, "/v1/health");
        health.push(start.elapsed().as_secs_f64() * 1e3);
        assert!(body.contains("\"status\""), "{body}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (rss, peak) = rss_mib(pid);
    let reload_ms = reload_cost(addr, pid, &checks);
    let _ = agent.kill();
    let _ = agent.wait();

    let probes = metric_sum(&m1, "vigil_probes_total") - metric_sum(&m0, "vigil_probes_total");
    let failed = metric_sum(&m1, "vigil_probes_total{outcome=\"unhealthy\"")
        + metric_sum(&m1, "vigil_probes_total{outcome=\"unknown\"");
    if failed > 0.0 {
        eprintln!("warning: {failed} probes did not pass in the {kind} {n} run");
    }
    let (b0, b1) = (lateness_buckets(&m0), lateness_buckets(&m1));
    health.sort_by(f64::total_cmp);
    Row {
        scenario: format!("{kind} {}×{per_check}", n / per_check),
        checks: n,
        ready_s,
        steady_s,
        metrics_bytes: m1.len(),
        startup_late_pct,
        scrape_ms: scrapes[2],
        probes_per_s: probes / elapsed,
        cpu_us: (cpu1 - cpu0) * 1e6 / probes,
        p50_ms: quantile(&b0, &b1, 0.50) * 1e3,
        p99_ms: quantile(&b0, &b1, 0.99) * 1e3,
        within_2ms: fraction_within(&b0, &b1, 0.002) * 100.0,
        rss,
        peak,
        health_p50_ms: percentile(&health, 0.50),
        health_p99_ms: percentile(&health, 0.99),
        nginx_cpu_us: (ng1 - ng0) * 1e6 / probes,
        reload_ms,
    }
}

/// The agent's CPU, in ms, for a reload that edits one HealthCheck (its timeout) in the first
/// file of `checks`: the CPU of its threads but the probe threads over the 5 s after the edit,
/// less theirs over the 5 s before. NaN when the edit was not taken up within those 5 s.
fn reload_cost(addr: SocketAddr, pid: u32, checks: &Path) -> f64 {
    let span = Duration::from_secs(5);
    let c0 = cpu_seconds_but_probing(pid);
    std::thread::sleep(span);
    let c1 = cpu_seconds_but_probing(pid);
    let file = checks.join("bench-0.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen("periodSeconds: 1\n", "periodSeconds: 1\n    timeoutSeconds: 2\n", 1),
    )
    .unwrap();
    std::thread::sleep(span);
    let c2 = cpu_seconds_but_probing(pid);
    let docs: serde_json::Value = serde_json::from_str(&get(addr, "/v1/healthchecks")).unwrap();
    let edited = docs["data"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|doc| doc["metadata"]["name"] == "bench-0" && doc["metadata"]["generation"] == 2);
    if !edited {
        eprintln!("warning: the edit of bench-0 was not taken up within {span:?}");
        return f64::NAN;
    }
    ((c2 - c1) - (c1 - c0)) * 1e3
}

/// wrk with a new connection per request: requests and CPU (user + system) per request.
fn wrk(port: u16) -> Option<(f64, f64, f64)> {
    let script =
        format!("wrk -t1 -c8 -d10s -H 'Connection: close' http://127.0.0.1:{port}/health > \"$0\"; times");
    let out_file = tempfile::NamedTempFile::new().ok()?;
    let out = Command::new("bash").args(["-c", &script]).arg(out_file.path()).output().ok()?;
    let times = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = std::fs::read_to_string(out_file.path()).ok()?;
    let requests: f64 = report
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())?;
    let rate: f64 = report
        .lines()
        .find(|l| l.starts_with("Requests/sec"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())?;
    // `times` prints the shell's own times, then its children's: "0m1.234s 0m0.567s".
    let children = times.lines().nth(1)?;
    let secs = |t: &str| -> Option<f64> {
        let (m, s) = t.trim_end_matches('s').split_once('m')?;
        Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
    };
    let mut parts = children.split_whitespace();
    let cpu = secs(parts.next()?)? + secs(parts.next()?)?;
    Some((requests, rate, cpu * 1e6 / requests))
}

fn main() {
    // `cargo bench` passes --bench; nothing else is read from the command line.
    let list = |name: &str, default: &str| -> Vec<String> {
        env_or(name, default).split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
    };
    let sizes: Vec<usize> =
        list("VIGIL_BENCH_SIZES", "1000,10000").iter().filter_map(|s| s.parse().ok()).collect();
    let shapes: Vec<usize> =
        list("VIGIL_BENCH_SHAPES", "1,100").iter().filter_map(|s| s.parse().ok()).collect();
    let kinds = list("VIGIL_BENCH_KINDS", "http,tcp");
    let window = Duration::from_secs(env_or("VIGIL_BENCH_SECONDS", "20").parse().unwrap_or(20));
    let nginx = Nginx::start();
    println!(
        "vigil {} — scale benchmark against a loopback nginx (1 worker), period 1 s, window {}s",
        env!("CARGO_PKG_VERSION"),
        window.as_secs()
    );
    println!(
        "machine: {} CPUs, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        first_line("/proc/cpuinfo", "model name")
    );
    println!();
    let mut rows = Vec::new();
    for kind in &kinds {
        for &per_check in &shapes {
            for &n in &sizes {
                let row = run_agent(&nginx, kind, n, per_check.max(1), window);
                eprintln!("done: {}", row.scenario);
                rows.push(row);
            }
        }
    }
    println!(
        "{:<16} {:>8} {:>10} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>10} {:>9}",
        "scenario (hc×t)",
        "probes/s",
        "cpu µs/pr",
        "late p50",
        "late p99",
        "≤2ms %",
        "RSS MiB",
        "peak",
        "KiB/tgt",
        "ready s",
        "steady",
        ">1s late",
        "/metrics",
        "B/target",
        "scrape",
        "health50",
        "health99",
        "nginx µs/r",
        "reload ms"
    );
    for r in &rows {
        println!(
            "{:<16} {:>8.0} {:>10.1} {:>7.3}ms {:>7.3}ms {:>7.2} {:>7.1} {:>7.1} {:>7.1} {:>7.2} {:>7.1} {:>8.2}% {:>8.0}K {:>8.0} {:>6.1}ms {:>7.3}ms {:>7.3}ms {:>10.1} {:>9.0}",
            r.scenario,
            r.probes_per_s,
            r.cpu_us,
            r.p50_ms,
            r.p99_ms,
            r.within_2ms,
            r.rss,
            r.peak,
            r.rss * 1024.0 / r.checks as f64,
            r.ready_s,
            r.steady_s,
            r.startup_late_pct,
            r.metrics_bytes as f64 / 1024.0,
            r.metrics_bytes as f64 / r.checks as f64,
            r.scrape_ms,
            r.health_p50_ms,
            r.health_p99_ms,
            r.nginx_cpu_us,
            r.reload_ms,
        );
    }
    println!();
    let floor_window = Duration::from_secs(5);
    let (connects, connect_us) = connect_floor(nginx.port, floor_window);
    println!(
        "connect + close floor (SO_LINGER 0, this process): {connects:.0}/s, {connect_us:.1} µs CPU per connection"
    );
    ratios(&rows, "tcp", "connect floor", connect_us);
    let (requests, http_us) = http_floor(nginx.port, floor_window);
    println!(
        "HTTP floor, Rust client, new connection per request: {requests:.0}/s, {http_us:.1} µs CPU per request"
    );
    ratios(&rows, "http", "Rust client's per request", http_us);
    match wrk(nginx.port) {
        Some((requests, rate, cpu_us)) => {
            println!(
                "wrk, new connection per request: {requests:.0} requests, {rate:.0}/s, {cpu_us:.1} µs CPU per request"
            );
            ratios(&rows, "http", "wrk CPU per request", cpu_us);
        }
        None => println!("wrk not available: no reference figure (make bench installs Debian's wrk)"),
    }
    let monit_checks: usize = env_or("VIGIL_BENCH_MONIT", "2000").parse().unwrap_or(2000);
    match monit(nginx.port, monit_checks, window) {
        Some((rate, cpu_us, rss)) => {
            println!(
                "monit, {monit_checks} HTTP checks, 1 s cycle: {rate:.0} requests/s, {cpu_us:.1} µs CPU per request, RSS {rss:.1} MiB"
            );
            ratios(&rows, "http", "monit's per check", cpu_us);
        }
        None => println!("monit not available: no reference figure (make bench extracts Debian's monit)"),
    }
    println!();
    println!(
        "Lateness quantiles are interpolated inside the histogram buckets of vigil_scheduler_lateness_seconds"
    );
    println!(
        "(0.1, 0.25, 0.5, 1, 2, 5 ms…); '≤2ms %' is exact. CPU is user+system time of the agent process"
    );
    println!("from /proc over the window, divided by the probes it ran (vigil_probes_total). 'ready' is the");
    println!("time from start to /readyz answering 200; 'steady' to every target probed twice and written;");
    println!("'>1s late' the share of the probes until then that started more than a period late.");
    println!("'reload ms' the agent's CPU for a reload that edits one HealthCheck (the file holding it,");
    println!("up to 1,000 HealthChecks, is parsed again): the CPU of its threads but the probe threads");
    println!("over the 5 s after the edit, less theirs over the 5 s before (10 ms clock ticks).");
}

/// For every `kind` scenario: its CPU per probe over a floor's, `what`.
fn ratios(rows: &[Row], kind: &str, what: &str, floor_us: f64) {
    for r in rows.iter().filter(|r| r.scenario.starts_with(kind)) {
        println!(
            "  {}: vigil CPU per {} probe / {what} = {:.2}",
            r.scenario,
            kind.to_uppercase(),
            r.cpu_us / floor_us
        );
    }
}

fn first_line(file: &str, key: &str) -> String {
    std::fs::read_to_string(PathBuf::from(file))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}
