//! A real Docker engine for the tests (made ready by `tests/fixtures/docker-engine.sh`, which
//! `make test` runs), and containers that remove themselves.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The label every container made by a test carries (the fixture's `down` relies on it).
pub const TEST_LABEL: &str = "vigil.test=1";
/// The local image the fixture imports.
pub const IMAGE: &str = "vigil-test/busybox:latest";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docker-engine.sh")
}

fn fixture(args: &[&str]) -> String {
    let out = Command::new(script()).args(args).output().expect("run docker-engine.sh");
    assert!(
        out.status.success(),
        "docker-engine.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The main engine's socket, after making sure it answers and has the test image.
pub fn engine() -> &'static str {
    static SOCKET: OnceLock<String> = OnceLock::new();
    SOCKET.get_or_init(|| fixture(&["ensure"]).lines().last().unwrap_or("/var/run/docker.sock").to_owned())
}

/// `docker -H unix://<socket> args…`.
pub fn docker(socket: &str, args: &[&str]) -> Output {
    Command::new("docker").arg("-H").arg(format!("unix://{socket}")).args(args).output().expect("run docker")
}

/// `docker …`, which must succeed; its standard output, trimmed.
pub fn docker_ok(socket: &str, args: &[&str]) -> String {
    let out = docker(socket, args);
    assert!(out.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A container made by a test; removed when dropped, also when the test fails.
pub struct TestContainer {
    /// Engine socket.
    pub socket: String,
    /// Name.
    pub name: String,
    /// Full id.
    pub id: String,
}

impl TestContainer {
    /// `docker run -d --init --label vigil.test=1 --name <name> <options…> IMAGE sh -c <script>`.
    pub fn run(socket: &str, name: &str, options: &[&str], script: &str) -> TestContainer {
        let _ = docker(socket, &["rm", "-f", name]);
        let mut args = vec!["run", "-d", "--init", "--label", TEST_LABEL, "--name", name];
        args.extend_from_slice(options);
        args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
        let id = docker_ok(socket, &args);
        TestContainer { socket: socket.to_owned(), name: name.to_owned(), id }
    }

    /// `docker exec <name> sh -c <script>`; must succeed.
    pub fn exec(&self, script: &str) -> String {
        docker_ok(&self.socket, &["exec", &self.name, "sh", "-c", script])
    }

    /// `docker inspect -f <format>`.
    pub fn inspect(&self, format: &str) -> String {
        docker_ok(&self.socket, &["inspect", "-f", format, &self.name])
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = docker(&self.socket, &["rm", "-f", &self.name]);
    }
}

/// A second, independent engine (its own data, exec root, socket and bridge), stopped and
/// cleaned up when dropped.
pub struct SecondEngine {
    name: String,
    /// Its socket.
    pub socket: String,
}

impl SecondEngine {
    /// Starts it (with the test image imported).
    pub fn start(name: &str) -> SecondEngine {
        engine();
        let socket = fixture(&["second-daemon-up", name]).lines().last().unwrap().to_owned();
        SecondEngine { name: name.to_owned(), socket }
    }

    /// Kills its dockerd with SIGKILL, as a crash would.
    pub fn kill9(&self) {
        let pidfile = Path::new(&self.socket).with_file_name("dockerd.pid");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["second-daemon-down", &self.name]).output();
    }
}
