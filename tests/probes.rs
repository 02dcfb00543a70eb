//! Probers against real servers on loopback, and real processes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::servers::{self, Behaviour, HttpTarget};
use tonic_health::ServingStatus;
use vigil::probe::exec::ExecSpec;
use vigil::probe::grpc::GrpcSpec;
use vigil::probe::http::{BodyMatcher, HttpSpec};
use vigil::probe::tcp::TcpSpec;
use vigil::probe::{Outcome, PortRef, ProbeSpec, Prober, Reason, Report, Target};

const SECOND: Duration = Duration::from_secs(1);

fn target(addr: std::net::SocketAddr) -> Target {
    let mut t = Target::new(addr.ip().to_string());
    t.port = Some(addr.port());
    t
}

async fn http(spec: HttpSpec, t: &Target) -> Report {
    Prober::new().run(&ProbeSpec::Http(spec), t, SECOND, true).await
}

fn reason(report: &Report) -> Option<Reason> {
    report.outcome.reason()
}

#[tokio::test]
async fn http_healthy_sends_a_user_agent_and_no_keep_alive() {
    let server = HttpTarget::start().await;
    let report = http(HttpSpec::get("/healthz"), &target(server.addr)).await;
    assert_eq!(report.outcome, Outcome::healthy("HTTP 200 OK"));
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/healthz");
    assert_eq!(seen[0].user_agent.as_deref(), Some(concat!("vigil/", env!("CARGO_PKG_VERSION"))));
    assert_eq!(seen[0].connection.as_deref(), Some("close"));
    assert_eq!(seen[0].host.as_deref(), Some(server.address().as_str()));
    let steps: Vec<&str> = report.steps.iter().map(|s| s.name).collect();
    assert_eq!(steps, ["resolve", "connect", "first-byte"]);
}

#[tokio::test]
async fn http_status_outside_the_range_is_unhealthy() {
    let server = HttpTarget::start().await;
    server.set_status(503);
    let report = http(HttpSpec::get("/"), &target(server.addr)).await;
    assert_eq!(reason(&report), Some(Reason::Status), "{report:?}");
    assert!(report.outcome.message().contains("HTTP 503"), "{report:?}");
    let mut spec = HttpSpec::get("/");
    spec.expected = "500-503".parse().unwrap();
    assert!(matches!(http(spec, &target(server.addr)).await.outcome, Outcome::Healthy { .. }));
    server.set_status(404);
    let mut spec = HttpSpec::get("/");
    spec.expected = "200,204".parse().unwrap();
    assert_eq!(reason(&http(spec, &target(server.addr)).await), Some(Reason::Status));
}

#[tokio::test]
async fn http_body_must_match_when_asked() {
    let server = HttpTarget::start().await;
    server.set(Behaviour { body: "{\"status\":\"degraded\"}".into(), ..Behaviour::default() });
    let mut spec = HttpSpec::get("/");
    spec.body = Some(BodyMatcher::Contains("\"ok\"".into()));
    let report = http(spec.clone(), &target(server.addr)).await;
    assert_eq!(reason(&report), Some(Reason::Body), "{report:?}");
    spec.body = Some(BodyMatcher::Regex(regex::Regex::new(r#""status":"(ok|degraded)""#).unwrap()));
    assert!(matches!(http(spec, &target(server.addr)).await.outcome, Outcome::Healthy { .. }));
}

#[tokio::test]
async fn http_headers_are_sent() {
    let server = HttpTarget::start().await;
    let mut spec = HttpSpec::get("/");
    spec.headers = vec![
        ("host".parse().unwrap(), "web.internal".parse().unwrap()),
        ("x-probe".parse().unwrap(), "1".parse().unwrap()),
    ];
    http(spec, &target(server.addr)).await;
    let seen = &server.seen()[0];
    assert_eq!(seen.host.as_deref(), Some("web.internal"));
    assert!(seen.headers.iter().any(|(k, v)| k == "x-probe" && v == "1"));
}

#[tokio::test]
async fn http_redirects_are_followed_on_the_same_host_only() {
    let server = HttpTarget::start().await;
    server.route("/old", Behaviour { status: 302, location: Some("/new".into()), ..Behaviour::default() });
    server.route("/new", Behaviour { status: 500, ..Behaviour::default() });
    // The redirect is followed: the final 500 is what counts.
    let report = http(HttpSpec::get("/old"), &target(server.addr)).await;
    assert_eq!(reason(&report), Some(Reason::Status), "{report:?}");
    assert_eq!(server.seen().iter().map(|s| s.path.as_str()).collect::<Vec<_>>(), ["/old", "/new"]);

    // To another host (here: another name for the same machine), it is not followed, and the
    // 302 itself passes the default 200-399 range, as the kubelet does.
    let elsewhere = HttpTarget::start().await;
    server.route(
        "/away",
        Behaviour {
            status: 302,
            location: Some(format!("http://localhost:{}/", elsewhere.addr.port())),
            ..Behaviour::default()
        },
    );
    let report = http(HttpSpec::get("/away"), &target(server.addr)).await;
    assert_eq!(report.outcome, Outcome::healthy("HTTP 302 Found"));
    assert_eq!(elsewhere.requests(), 0, "the other host was contacted");

    // Without following, the redirect is judged as is.
    let mut spec = HttpSpec::get("/old");
    spec.follow_redirects = false;
    spec.expected = "200".parse().unwrap();
    assert_eq!(reason(&http(spec, &target(server.addr)).await), Some(Reason::Status));

    server.route("/loop", Behaviour { status: 301, location: Some("/loop".into()), ..Behaviour::default() });
    assert_eq!(reason(&http(HttpSpec::get("/loop"), &target(server.addr)).await), Some(Reason::Redirect));
}

#[tokio::test]
async fn http_timeout_refused_dns_and_garbage() {
    let server = HttpTarget::start().await;
    server.set(Behaviour { delay: Duration::from_secs(5), ..Behaviour::default() });
    let started = Instant::now();
    let report = Prober::new()
        .run(&ProbeSpec::Http(HttpSpec::get("/")), &target(server.addr), Duration::from_millis(300), false)
        .await;
    assert_eq!(reason(&report), Some(Reason::Timeout), "{report:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout was not enforced: {:?}",
        started.elapsed()
    );

    let port = servers::closed_port().await;
    let mut t = Target::new("127.0.0.1");
    t.port = Some(port);
    assert_eq!(reason(&http(HttpSpec::get("/"), &t).await), Some(Reason::Refused));

    let mut t = Target::new("no-such-host.invalid");
    t.port = Some(80);
    assert_eq!(reason(&http(HttpSpec::get("/"), &t).await), Some(Reason::Dns));

    let garbage = servers::garbage_server(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    let report = http(HttpSpec::get("/"), &target(garbage)).await;
    assert_eq!(reason(&report), Some(Reason::Protocol), "{report:?}");
}

#[tokio::test]
async fn https_verifies_certificates_unless_told_not_to() {
    let server = HttpTarget::start_with(Some(servers::self_signed_tls())).await;
    let mut spec = HttpSpec::get("/");
    spec.tls = true;
    let report = http(spec.clone(), &target(server.addr)).await;
    assert_eq!(reason(&report), Some(Reason::Tls), "{report:?}");
    spec.insecure_skip_verify = true;
    let report = http(spec, &target(server.addr)).await;
    assert_eq!(report.outcome, Outcome::healthy("HTTP 200 OK"));
    assert!(report.steps.iter().any(|s| s.name == "tls"), "{:?}", report.steps);
}

#[tokio::test]
async fn link_local_targets_are_refused_without_permission() {
    let mut t = Target::new("169.254.169.254");
    t.port = Some(80);
    let report = http(HttpSpec::get("/latest/meta-data/"), &t).await;
    assert!(matches!(report.outcome, Outcome::Unknown { .. }), "{report:?}");
}

#[tokio::test]
async fn probes_leave_no_socket_in_time_wait() {
    let server = HttpTarget::start().await;
    let prober = Prober::new();
    for _ in 0..50 {
        let r = prober.run(&ProbeSpec::Http(HttpSpec::get("/")), &target(server.addr), SECOND, false).await;
        assert!(matches!(r.outcome, Outcome::Healthy { .. }));
        let r =
            prober.run(&ProbeSpec::Tcp(TcpSpec { port: None }), &target(server.addr), SECOND, false).await;
        assert!(matches!(r.outcome, Outcome::Healthy { .. }));
    }
    assert_eq!(servers::time_wait_sockets(server.addr.port()), 0, "probe sockets linger in TIME-WAIT");
}

#[tokio::test]
async fn tcp_connects_or_says_why_not() {
    let server = HttpTarget::start().await;
    let spec = ProbeSpec::Tcp(TcpSpec { port: Some(PortRef::Number(server.addr.port())) });
    let report = Prober::new().run(&spec, &Target::new("127.0.0.1"), SECOND, false).await;
    assert!(matches!(report.outcome, Outcome::Healthy { .. }), "{report:?}");
    let spec = ProbeSpec::Tcp(TcpSpec { port: Some(PortRef::Number(servers::closed_port().await)) });
    let report = Prober::new().run(&spec, &Target::new("127.0.0.1"), SECOND, false).await;
    assert_eq!(reason(&report), Some(Reason::Refused));
    let no_port = Prober::new()
        .run(&ProbeSpec::Tcp(TcpSpec { port: None }), &Target::new("127.0.0.1"), SECOND, false)
        .await;
    assert!(matches!(no_port.outcome, Outcome::Unknown { .. }), "{no_port:?}");
}

#[tokio::test]
async fn grpc_health_serving_not_serving_and_unknown_service() {
    let (addr, reporter) = servers::grpc_health().await;
    let spec = |service: &str| {
        ProbeSpec::Grpc(GrpcSpec {
            port: None,
            service: service.to_owned(),
            tls: false,
            insecure_skip_verify: false,
        })
    };
    reporter.set_service_status("", ServingStatus::Serving).await;
    let report = Prober::new().run(&spec(""), &target(addr), SECOND, false).await;
    assert!(matches!(report.outcome, Outcome::Healthy { .. }), "{report:?}");
    reporter.set_service_status("shop.Cart", ServingStatus::NotServing).await;
    let report = Prober::new().run(&spec("shop.Cart"), &target(addr), SECOND, false).await;
    assert_eq!(reason(&report), Some(Reason::NotServing), "{report:?}");
    let report = Prober::new().run(&spec("no.Such"), &target(addr), SECOND, false).await;
    assert_eq!(reason(&report), Some(Reason::ServiceUnknown), "{report:?}");
    // An HTTP/1 server is not a gRPC server.
    let http = HttpTarget::start().await;
    let report = Prober::new().run(&spec(""), &target(http.addr), SECOND, false).await;
    assert!(matches!(report.outcome, Outcome::Unhealthy { .. }), "{report:?}");
}

fn exec(command: &[&str]) -> ProbeSpec {
    ProbeSpec::Exec(ExecSpec { command: command.iter().map(|s| (*s).to_owned()).collect() })
}

#[tokio::test]
async fn exec_exit_codes_and_output() {
    let host = Target::new("127.0.0.1");
    let report = Prober::new().run(&exec(&["true"]), &host, SECOND, false).await;
    assert!(matches!(report.outcome, Outcome::Healthy { .. }));
    let report =
        Prober::new().run(&exec(&["sh", "-c", "echo disk full >&2; exit 3"]), &host, SECOND, false).await;
    assert_eq!(reason(&report), Some(Reason::ExitCode));
    assert_eq!(report.outcome.message(), "exit code 3: disk full");
    let report = Prober::new().run(&exec(&["sh", "-c", "kill -9 $$"]), &host, SECOND, false).await;
    assert_eq!(reason(&report), Some(Reason::Signal), "{report:?}");
}

#[tokio::test]
async fn exec_that_cannot_start_is_unknown_not_unhealthy() {
    let report = Prober::new()
        .run(&exec(&["/nonexistent/probe-binary"]), &Target::new("127.0.0.1"), SECOND, false)
        .await;
    assert_eq!(
        report.outcome,
        Outcome::unknown(vigil::probe::Cause::Local, "command not found: /nonexistent/probe-binary")
    );
}

#[tokio::test]
async fn exec_output_is_capped_at_4_kib() {
    let report = Prober::new()
        .run(
            &exec(&["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x; exit 1"]),
            &Target::new("127.0.0.1"),
            SECOND,
            false,
        )
        .await;
    let message = report.outcome.message();
    let output = message.strip_prefix("exit code 1: ").unwrap();
    let xs = output.chars().filter(|c| *c == 'x').count();
    assert_eq!(xs, 4096, "{} x kept", xs);
    assert!(message.contains("95904 more bytes not kept"), "{}", &message[message.len() - 60..]);
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let started = Instant::now();
    let report = Prober::new()
        .run(&exec(&["sh", "-c", &script]), &Target::new("127.0.0.1"), Duration::from_millis(500), false)
        .await;
    assert_eq!(reason(&report), Some(Reason::Timeout), "{report:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // The background child was killed with its group (it may linger as a zombie until reaped).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
            s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        });
        match state.as_deref() {
            None | Some("Z") | Some("X") => break,
            Some(other) if Instant::now() > deadline => panic!("the grandchild {pid} is still {other}"),
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn exec_gets_the_target_in_its_environment() {
    let mut t = Target::new("10.1.2.3");
    t.env = vec![("VIGIL_TARGET_HOST".into(), "10.1.2.3".into())];
    let report = Prober::new()
        .run(&exec(&["sh", "-c", "test \"$VIGIL_TARGET_HOST\" = 10.1.2.3"]), &t, SECOND, false)
        .await;
    assert!(matches!(report.outcome, Outcome::Healthy { .. }), "{report:?}");
}
