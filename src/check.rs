//! `vigil check`: one probe now, its outcome printed, the exit code telling healthy (0),
//! unhealthy (1) or could not run (2).

use std::io::Write;
use std::time::Duration;

use http::Uri;

use crate::cli::CheckArgs;
use crate::engine::planner::{self, NodeInfo, Sources};
use crate::inventory::Instance;
use crate::model;
use crate::probe::exec::ExecSpec;
use crate::probe::grpc::GrpcSpec;
use crate::probe::http::{BodyMatcher, HttpSpec};
use crate::probe::icmp::IcmpSpec;
use crate::probe::tcp::TcpSpec;
use crate::probe::{Outcome, PortRef, ProbeSpec, Prober, Report, Target, human};
use crate::source::folder;

/// Exit code: healthy.
pub const EXIT_HEALTHY: i32 = 0;
/// Exit code: unhealthy.
pub const EXIT_UNHEALTHY: i32 = 1;
/// Exit code: the probe could not run.
pub const EXIT_UNKNOWN: i32 = 2;

/// Parses a target given on the command line into a probe and where it goes.
pub fn parse_target(target: &str, args: &CheckArgs) -> Result<(ProbeSpec, Target, String), String> {
    if let Some(command) = target.strip_prefix("exec:") {
        let argv: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        if argv.is_empty() {
            return Err("exec: needs a command, e.g. exec:/bin/true".to_owned());
        }
        return Ok((
            ProbeSpec::Exec(ExecSpec { command: argv }),
            Target::new("127.0.0.1"),
            target.to_owned(),
        ));
    }
    let uri: Uri = target.parse().map_err(|e| format!("{target:?} is not a URL: {e}"))?;
    let scheme = uri.scheme_str().ok_or_else(|| {
        format!(
            "{target:?} has no scheme: use http://, https://, tcp://, icmp://, grpc://, grpcs:// or exec:"
        )
    })?;
    let authority = uri.authority().ok_or_else(|| format!("{target:?} has no host"))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = authority.port_u16();
    let mut t = Target::new(host);
    t.port = port;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let spec = match scheme {
        "http" | "https" => {
            let mut spec = HttpSpec::get(if path.is_empty() { "/" } else { path });
            spec.tls = scheme == "https";
            spec.insecure_skip_verify = args.insecure;
            if let Some(expect) = &args.expect_status {
                spec.expected = expect.parse().map_err(|e| format!("--expect-status: {e}"))?;
            }
            spec.body = args.expect_body.clone().map(BodyMatcher::Contains);
            ProbeSpec::Http(spec)
        }
        "tcp" => {
            if port.is_none() {
                return Err(format!("{target:?}: tcp:// needs a port"));
            }
            ProbeSpec::Tcp(TcpSpec { port: None })
        }
        "icmp" => {
            if port.is_some() {
                return Err(format!("{target:?}: icmp:// takes no port"));
            }
            ProbeSpec::Icmp(IcmpSpec::default())
        }
        "arp" => {
            if port.is_some() {
                return Err(format!("{target:?}: arp:// takes no port"));
            }
            ProbeSpec::Arp
        }
        "grpc" | "grpcs" => {
            if port.is_none() {
                return Err(format!("{target:?}: {scheme}:// needs a port"));
            }
            ProbeSpec::Grpc(GrpcSpec {
                port: port.map(PortRef::Number),
                service: path.trim_start_matches('/').to_owned(),
                tls: scheme == "grpcs",
                insecure_skip_verify: args.insecure,
            })
        }
        other => {
            return Err(format!(
                "unknown scheme {other:?}: use http, https, tcp, icmp, grpc, grpcs or exec:"
            ));
        }
    };
    Ok((spec, t, target.to_owned()))
}

fn code(outcome: &Outcome) -> i32 {
    match outcome {
        Outcome::Healthy { .. } => EXIT_HEALTHY,
        Outcome::Unhealthy { .. } => EXIT_UNHEALTHY,
        Outcome::Unknown { .. } => EXIT_UNKNOWN,
    }
}

/// Combines exit codes: any unhealthy target wins, then any that could not run.
fn combine(a: i32, b: i32) -> i32 {
    match (a, b) {
        (EXIT_UNHEALTHY, _) | (_, EXIT_UNHEALTHY) => EXIT_UNHEALTHY,
        (EXIT_UNKNOWN, _) | (_, EXIT_UNKNOWN) => EXIT_UNKNOWN,
        _ => EXIT_HEALTHY,
    }
}

fn print(out: &mut impl Write, what: &str, report: &Report) {
    let (word, detail) = match &report.outcome {
        Outcome::Healthy { message } => ("healthy".to_owned(), message.clone()),
        Outcome::Unhealthy { reason, message } => (format!("unhealthy ({reason})"), message.clone()),
        Outcome::Unknown { cause, error } => (format!("could not run ({cause})"), error.clone()),
    };
    let _ = writeln!(out, "{word}  {what}  {detail}  [{}]", human(report.duration));
    for step in &report.steps {
        let _ = writeln!(out, "  {:<11} {:>9}  {}", step.name, human(step.at), step.detail);
    }
}

/// Runs the command; returns the exit code.
pub async fn run(args: CheckArgs) -> i32 {
    let prober = Prober::new();
    let mut out = std::io::stdout();
    if let Some(target) = &args.target {
        let (spec, t, what) = match parse_target(target, &args) {
            Ok(parsed) => parsed,
            Err(e) => {
                eprintln!("vigil check: {e}");
                return EXIT_UNKNOWN;
            }
        };
        let timeout = args.timeout.unwrap_or(Duration::from_secs(5));
        let report = prober.run(&spec, &t, timeout, args.verbose).await;
        print(&mut out, &what, &report);
        return code(&report.outcome);
    }
    let Some(file) = &args.file else {
        eprintln!("vigil check: give a URL or -f FILE");
        return EXIT_UNKNOWN;
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vigil check: cannot read {}: {e}", file.display());
            return EXIT_UNKNOWN;
        }
    };
    let label = file.display().to_string();
    let (objects, errors) = folder::parse(&label, &text);
    let mut exit = if errors.is_empty() { EXIT_HEALTHY } else { EXIT_UNKNOWN };
    for e in &errors {
        eprintln!("vigil check: {e}");
    }
    let node = NodeInfo { name: "local".to_owned(), labels: Default::default() };
    for loaded in objects {
        let key = loaded.key.clone();
        let def = match model::validate_spec(loaded.key, 1, loaded.spec) {
            Ok(def) => std::sync::Arc::new(def),
            Err(errors) => {
                eprintln!(
                    "vigil check: {}: HealthCheck {key} is invalid: {}",
                    loaded.origin,
                    crate::source::join(&errors)
                );
                exit = combine(exit, EXIT_UNKNOWN);
                continue;
            }
        };
        let plan =
            planner::plan(&node, std::slice::from_ref(&def), &[Instance::host("local")], Sources::default());
        if let Some(note) = plan.notes.get(&key) {
            eprintln!("vigil check: HealthCheck {key}: {note}");
            exit = combine(exit, EXIT_UNKNOWN);
        }
        let timeout = args.timeout.unwrap_or(def.timing.timeout);
        for a in plan.assignments {
            let report = prober.run(&def.probe, &a.target, timeout, args.verbose).await;
            let what = match a.target.port {
                Some(p) => format!("{key} → {}:{p}", a.target.host),
                None => format!("{key} → {}", a.target.host),
            };
            print(&mut out, &what, &report);
            exit = combine(exit, code(&report.outcome));
        }
    }
    exit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> CheckArgs {
        CheckArgs {
            target: None,
            file: None,
            timeout: None,
            verbose: false,
            insecure: false,
            expect_status: None,
            expect_body: None,
        }
    }

    #[test]
    fn targets_parse() {
        let (spec, t, _) = parse_target("http://127.0.0.1:8080/healthz?x=1", &args()).unwrap();
        assert!(matches!(&spec, ProbeSpec::Http(h) if h.path == "/healthz?x=1" && !h.tls));
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", Some(8080)));
        let (spec, t, _) = parse_target("https://example.com", &args()).unwrap();
        assert!(matches!(&spec, ProbeSpec::Http(h) if h.tls && h.path == "/"));
        assert_eq!(t.port, None);
        let (spec, _, _) = parse_target("grpc://[::1]:50051/my.Service", &args()).unwrap();
        assert!(matches!(&spec, ProbeSpec::Grpc(g) if g.service == "my.Service"));
        assert!(
            matches!(parse_target("exec:/bin/true -x", &args()).unwrap().0, ProbeSpec::Exec(e) if e.command.len() == 2)
        );
        assert!(parse_target("tcp://host", &args()).unwrap_err().contains("needs a port"));
        assert!(parse_target("ftp://host:21", &args()).unwrap_err().contains("unknown scheme"));
        assert!(parse_target("localhost:80", &args()).is_err());
    }

    #[test]
    fn exit_codes_combine() {
        assert_eq!(combine(EXIT_HEALTHY, EXIT_HEALTHY), EXIT_HEALTHY);
        assert_eq!(combine(EXIT_UNKNOWN, EXIT_HEALTHY), EXIT_UNKNOWN);
        assert_eq!(combine(EXIT_UNKNOWN, EXIT_UNHEALTHY), EXIT_UNHEALTHY);
    }
}
