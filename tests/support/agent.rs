//! The real `vigil` binary run as a standalone agent, and a small HTTP client to talk to it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running agent with its own folders.
pub struct Agent {
    child: Option<Child>,
    /// Its HTTP address.
    pub addr: SocketAddr,
    /// Folder of HealthCheck files.
    pub checks: PathBuf,
    /// State folder.
    pub state: PathBuf,
    /// Log file.
    pub log: PathBuf,
    extra: Vec<String>,
    /// The mode's arguments (standalone: the two folders).
    mode: Vec<String>,
    node: String,
}

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Agent {
    /// Starts an agent on folders under `dir` (created when missing) and waits until it is
    /// ready.
    pub fn start(dir: &Path, extra: &[&str]) -> Agent {
        let mut agent = Agent::start_unready(dir, extra);
        agent.wait_ready();
        agent
    }

    /// Starts an agent without waiting for it to be ready.
    pub fn start_unready(dir: &Path, extra: &[&str]) -> Agent {
        let checks = dir.join("checks");
        let state = dir.join("state");
        std::fs::create_dir_all(&checks).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mode = vec![
            "--checks-dir".to_owned(),
            checks.display().to_string(),
            "--state-dir".to_owned(),
            state.display().to_string(),
        ];
        let mut agent = Agent {
            child: None,
            addr,
            checks,
            state,
            log: dir.join("agent.log"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            mode,
            node: "test-node".to_owned(),
        };
        agent.spawn_process();
        agent
    }

    /// Starts an agent in Kubernetes mode for `node`, with `kubeconfig`, its log under `dir`,
    /// and waits until it is ready.
    pub fn start_in_cluster(dir: &Path, kubeconfig: &Path, node: &str, extra: &[&str]) -> Agent {
        std::fs::create_dir_all(dir).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut agent = Agent {
            child: None,
            addr,
            checks: dir.join("unused"),
            state: dir.join("unused"),
            log: dir.join("agent.log"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            mode: vec![
                "--kubernetes".to_owned(),
                "--kubeconfig".to_owned(),
                kubeconfig.display().to_string(),
            ],
            node: node.to_owned(),
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        self.spawn_process();
        self.wait_ready();
    }

    fn spawn_process(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        // Containers of the machine's Docker engine are not these tests' business unless a test
        // names a socket.
        let docker: &[&str] =
            if self.extra.iter().any(|a| a == "--docker-socket") { &[] } else { &["--no-docker"] };
        // Nor is how full the machine's disk happens to be: the System check of the tests'
        // instances turns impaired below 1 % free, not the default 10 %, unless a test says.
        let disk: &[&str] = if self.extra.iter().any(|a| a == "--disk-pressure-percent") {
            &[]
        } else {
            &["--disk-pressure-percent", "1"]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["agent", "--node-name", &self.node, "--host-interval", "1s", "--rescan-interval", "2s"])
            .args(docker)
            .args(disk)
            .args(&self.mode)
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.extra)
            .env("RUST_LOG", "info,vigil=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until `/readyz` answers 200 (20 s at most).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = self.try_get("/readyz") {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("the agent exited with {status}:\n{}", self.logs());
            }
            assert!(Instant::now() < deadline, "the agent did not become ready:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the agent with SIGKILL (no chance to write anything more).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Stops the agent with SIGTERM and waits for it; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the agent again on the same folders and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the agent first");
        self.spawn();
    }

    /// The instance's document in the state folder, as last written.
    pub fn state_doc(&self, id: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.state.join("instances").join(format!("{id}.yaml"))).ok()?;
        serde_saphyr::from_str(&text).ok()
    }

    /// Waits until the state folder holds `id` with `ready` true of it (what a kill -9 keeps).
    pub fn wait_written(&self, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(doc) = self.state_doc(id).filter(|d| ready(d)) {
                return doc;
            }
            assert!(Instant::now() < deadline, "{id}: {what} not written:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Writes a file in the checks folder (atomically, as an editor or a ConfigMap would).
    pub fn write_check(&self, name: &str, yaml: &str) {
        let tmp = self.checks.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, self.checks.join(name)).unwrap();
    }

    /// Removes a file from the checks folder.
    pub fn remove_check(&self, name: &str) {
        std::fs::remove_file(self.checks.join(name)).unwrap();
    }

    /// GET, returning status and body.
    pub fn try_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        request(self.addr, "GET", path, &[])
    }

    /// GET, panicking on connection errors.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path).unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.logs()))
    }

    /// GET of a JSON document.
    pub fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Polls `path` until `done` says yes; returns that document.
    pub fn wait_for(
        &self,
        path: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            // Not there yet (a 404 while a reload is under way) counts as not done.
            let (status, body) = self.get(path);
            let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if status == 200 && done(&doc) {
                return doc;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last {path} ({status}):\n{}\nlog:\n{}",
                serde_json::to_string_pretty(&doc).unwrap_or(body),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The live view of one instance.
    pub fn instance(&self, id: &str) -> Value {
        self.json(&format!("/v1/instances/{id}"))["data"].clone()
    }

    /// Waits until the check `check` on instance `id` has `status`; returns the instance.
    pub fn wait_status(&self, id: &str, check: &str, status: &str, timeout: Duration) -> Value {
        let doc = self.wait_for(
            &format!("/v1/instances/{id}"),
            &format!("{check} on {id} to be {status}"),
            timeout,
            |d| check_of(&d["data"], check).is_some_and(|c| c["status"] == status),
        );
        doc["data"].clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The entry of `check` in an InstanceStatus.
pub fn check_of<'a>(instance: &'a Value, check: &str) -> Option<&'a Value> {
    instance["status"]["checks"].as_array()?.iter().find(|c| c["healthCheck"] == check)
}

/// A minimal HTTP/1.1 request; returns status and body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let (status, _, body) = request_full(addr, method, path, headers)?;
    Ok((status, body))
}

/// A minimal HTTP/1.1 request; returns status, raw head and body.
pub fn request_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Ok((status, head.to_owned(), body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `promtool check metrics` on `text`; fails the test with promtool's words when it objects.
pub fn promtool_check(text: &str) {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/promtool");
    let promtool = if local.exists() { local.display().to_string() } else { "promtool".to_owned() };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is needed (Debian's prometheus package; `make test` installs it): {e}")
        });
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
