//! The Kubernetes side of the tests: the real control plane (kube-apiserver, etcd,
//! kube-controller-manager and kwok, from `tests/fixtures/k8s.sh`) and `kubectl` against it or
//! against the stand-in.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[allow(unused_imports)] // each test binary uses its part
pub use vigil_test_apiserver::control_plane::{ControlPlane, RequestCounts, eventually};

/// `kubectl` (the control plane's own version) with its own kubeconfig and discovery cache.
#[derive(Debug)]
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub cache: PathBuf,
}

impl Kubectl {
    /// `kubectl` of the control plane's version, for `kubeconfig`.
    pub fn new(kubeconfig: &Path, cache: &Path) -> Self {
        Kubectl {
            bin: ControlPlane::shared().bin("kubectl"),
            kubeconfig: kubeconfig.to_owned(),
            cache: cache.to_owned(),
        }
    }

    /// Runs it; returns whether it succeeded and what it printed (stdout, then stderr).
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut child = Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (tests/fixtures/k8s.sh build makes it)", self.bin.display()));
        if let Some(text) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Runs and requires success; returns the output.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args, None);
        assert!(ok, "kubectl {} failed:\n{text}", args.join(" "));
        text
    }

    pub fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let (ok, text) = self.run(args, Some(stdin));
        assert!(ok, "kubectl {} failed:\n{text}", args.join(" "));
        text
    }
}

/// The shared control plane, from async code (bringing it up blocks).
pub async fn control_plane() -> &'static ControlPlane {
    tokio::task::spawn_blocking(ControlPlane::shared).await.unwrap()
}
