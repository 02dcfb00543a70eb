//! vigil's image (`packaging/image.sh`, which `make test` runs before the tests, and `make
//! image`): `vigil version` and `vigil crd` inside it, a standalone agent that answers `/healthz`
//! from a published port, a non-root user, the labels. The image must have been built: run
//! `make image` (or `make test`) first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

fn image() -> String {
    format!("vigil:{}", env!("CARGO_PKG_VERSION"))
}

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker").args(args).output().unwrap_or_else(|e| panic!("docker: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn docker_ok(args: &[&str]) -> String {
    let (ok, text) = docker(args);
    assert!(ok, "docker {}: {text}", args.join(" "));
    text
}

/// A container removed when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

#[test]
fn the_image_runs_the_agent_and_prints_the_crds() {
    let image = image();
    let (found, text) =
        docker(&["image", "inspect", "-f", "{{.Size}} {{.Config.User}} {{json .Config.Labels}}", &image]);
    assert!(found, "no image {image}: build it with `make image` (make test does): {text}");
    let mut fields = text.trim().splitn(3, ' ');
    let size: u64 = fields.next().unwrap().parse().unwrap();
    eprintln!("measured: image {image} is {:.1} MiB", size as f64 / 1024.0 / 1024.0);
    assert_eq!(fields.next(), Some("65532:65532"), "not root by default");
    let labels: serde_json::Value = serde_json::from_str(fields.next().unwrap()).unwrap();
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"), "{labels}");
    assert!(labels["org.opencontainers.image.revision"].as_str().is_some_and(|r| !r.is_empty()), "{labels}");

    let version = docker_ok(&["run", "--rm", &image, "version"]);
    assert_eq!(version.trim(), format!("vigil {}", env!("CARGO_PKG_VERSION")));
    // The CRDs inside are the ones this tree generates.
    let printed = docker_ok(&["run", "--rm", &image, "crd"]);
    for (file, crd) in vigil::crd::all() {
        let yaml = vigil::crd::to_yaml(&crd).unwrap();
        assert!(printed.contains(yaml.trim_start_matches("---\n").trim()), "{file} differs inside the image");
    }

    // A standalone agent, as `make run` starts one, with its folders on tmpfs.
    let port = support::agent::free_port();
    let name = format!("vigil-image-test-{port}");
    let publish = format!("127.0.0.1:{port}:9733");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &publish,
        "--tmpfs",
        "/checks",
        "--tmpfs",
        "/state:uid=65532",
        &image,
        "agent",
        "--checks-dir",
        "/checks",
        "--state-dir",
        "/state",
        "--listen",
        "0.0.0.0:9733",
        "--no-docker",
    ]);
    let container = Container(name);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match support::agent::request(addr, "GET", "/healthz", &[]) {
            Ok((200, body)) => {
                assert!(body.contains("ok"), "{body}");
                break;
            }
            other => {
                let logs = docker(&["logs", &container.0]).1;
                assert!(
                    Instant::now() < deadline,
                    "no /healthz from the agent in the image: {other:?}\n{logs}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let (code, health) = support::agent::request(addr, "GET", "/v1/health", &[]).unwrap();
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("\"status\":\"healthy\""), "{health}");
}
