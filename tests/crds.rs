//! The CRDs under `crds/` are generated from the Rust types and must be current; the examples
//! must pass the generated schema (structural rules and CEL) and the agent's own validation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use vigil::api::HealthCheck;
use vigil_test_apiserver::schema;

const REGENERATE: &str = "make crds (or VIGIL_UPDATE_CRDS=1 cargo test --test crds)";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_crds_are_current() {
    let update = std::env::var_os("VIGIL_UPDATE_CRDS").is_some();
    // crds/, and the copies the Helm chart and the kustomize base ship (neither can reach
    // outside its own folder).
    for (file, crd) in vigil::crd::all() {
        let fresh = vigil::crd::to_yaml(&crd).unwrap();
        for folder in ["crds", "charts/vigil/crds", "manifests/crds"] {
            let path = root().join(folder).join(file);
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &fresh).unwrap();
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("cannot read {}: {e}; regenerate with {REGENERATE}", path.display())
            });
            assert!(committed == fresh, "{folder}/{file} is stale: regenerate with {REGENERATE}");
        }
    }
}

/// Every `description` under `value`, with its path.
fn descriptions(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("description", Value::String(text)) => out.push((path.to_owned(), text.clone())),
                    _ => descriptions(v, &format!("{path}.{k}"), out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| descriptions(v, path, out)),
        _ => {}
    }
}

/// `kubectl explain` wraps descriptions itself: a line break inside a paragraph (what a doc
/// comment's hard wrapping leaves) would cut its sentences, as in "if⏎ asked)". Only paragraph
/// breaks and list items may start a new line.
#[test]
fn descriptions_are_paragraphs_that_kubectl_explain_can_wrap() {
    let mut found = Vec::new();
    for (file, _) in vigil::crd::all() {
        let text = std::fs::read_to_string(root().join("crds").join(file)).unwrap();
        for doc in documents(&text) {
            descriptions(&doc, file, &mut found);
        }
    }
    assert!(found.len() > 100, "the CRDs describe their fields: {}", found.len());
    let broken: Vec<String> = found
        .iter()
        .filter(|(_, text)| {
            text.split("\n\n").any(|paragraph| {
                paragraph.lines().skip(1).any(|line| !(line.starts_with("- ") || line.starts_with("* ")))
            })
        })
        .map(|(path, text)| format!("{path}: {text:?}"))
        .collect();
    assert!(
        broken.is_empty(),
        "descriptions broken mid-paragraph (regenerate with {REGENERATE}):\n{}",
        broken.join("\n")
    );
    // The example of the issue reads as one sentence now.
    let http = found.iter().find(|(p, t)| p.contains("http") && t.contains("if asked)"));
    assert!(http.is_some(), "the HTTP probe's description keeps its sentence whole");
}

fn healthcheck_schema() -> Value {
    let crd = serde_json::to_value(<HealthCheck as kube::CustomResourceExt>::crd()).unwrap();
    schema::crd_schema(&crd).unwrap().clone()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().and_then(|x| x.to_str()) == Some("yaml") {
            out.push(p);
        }
    }
}

fn documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(text).unwrap()
}

#[test]
fn examples_pass_the_schema_and_the_agent() {
    let schema = healthcheck_schema();
    let mut files = Vec::new();
    yaml_files(&root().join("examples"), &mut files);
    assert!(files.len() >= 5, "examples are missing: {files:?}");
    let mut seen = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, mut doc) in documents(&text).into_iter().enumerate() {
            if doc.get("kind").and_then(Value::as_str) != Some("HealthCheck") {
                continue;
            }
            seen += 1;
            let verdict = schema::validate(&schema, &mut doc);
            assert!(verdict.is_clean(), "{} document {}: {verdict:?}", file.display(), i + 1);
            let mut hc: HealthCheck = serde_json::from_value(doc).unwrap();
            hc.metadata.namespace.get_or_insert_with(|| "default".to_owned());
            if let Err(errors) = vigil::model::validate(&hc) {
                panic!("{} document {}: {}", file.display(), i + 1, vigil::source::join(&errors));
            }
        }
    }
    assert!(seen >= 7, "only {seen} HealthChecks found in the examples");
}

fn check(spec: &str) -> Value {
    let yaml =
        format!("apiVersion: vigil.dev/v1alpha1\nkind: HealthCheck\nmetadata: {{name: t}}\nspec: {spec}\n");
    documents(&yaml).remove(0)
}

#[test]
fn the_schema_refuses_what_the_agent_refuses() {
    let schema = healthcheck_schema();
    let cases = [
        (
            "{target: {host: {}}, probe: {tcp: {port: 1}, http: {}}}",
            "exactly one of http, tcp, grpc, icmp, arp, exec, docker, qmp",
        ),
        (
            "{target: {host: {}, endpoints: {addresses: [a]}}, probe: {tcp: {port: 1}}}",
            "exactly one of pods, containers, vms, host, endpoints",
        ),
        ("{target: {host: {}}, probe: {}}", "exactly one of http, tcp"),
        ("{target: {host: {}}, probe: {tcp: {port: 1}, periodSeconds: 0}}", "spec.probe.periodSeconds"),
        ("{target: {host: {}}, probe: {http: {scheme: FTP}}}", "Unsupported value: \"FTP\""),
        ("{target: {host: {}}, probe: {http: {expectedStatus: '2xx'}}}", "spec.probe.http.expectedStatus"),
        ("{target: {containers: {}}, probe: {docker: {}}}", "set names, selector, or both"),
        (
            "{target: {host: {}}, probe: {tcp: {port: 1}}, action: {type: exec}}",
            "type exec needs the exec field",
        ),
        ("{target: {endpoints: {addresses: []}}, probe: {tcp: {port: 1}}}", "at least 1 items"),
        ("{probe: {tcp: {port: 1}}}", "spec.target: Required value"),
        ("{target: {host: {}}, probe: {icmp: {count: 21}}}", "spec.probe.icmp.count"),
        (
            "{target: {host: {}}, probe: {icmp: {count: 10, intervalMilliseconds: 500}, timeoutSeconds: 2}}",
            "must fit within timeoutSeconds",
        ),
    ];
    for (spec, expected) in cases {
        let mut doc = check(spec);
        let verdict = schema::validate(&schema, &mut doc);
        assert!(
            verdict.errors.iter().any(|e| e.contains(expected)),
            "{spec}: expected an error containing {expected:?}, got {verdict:?}"
        );
        // The agent refuses the same documents (when they parse at all).
        if let Ok(mut hc) = serde_json::from_value::<HealthCheck>(check(spec)) {
            hc.metadata.namespace = Some("default".into());
            assert!(vigil::model::validate(&hc).is_err(), "{spec}: the agent accepted it");
        }
    }
}

#[test]
fn unknown_fields_are_pruned_and_defaults_applied() {
    let schema = healthcheck_schema();
    let mut doc = check("{target: {host: {}}, probe: {tcp: {port: 22}, periodSecond: 5}}");
    let verdict = schema::validate(&schema, &mut doc);
    assert!(verdict.errors.is_empty(), "{verdict:?}");
    assert_eq!(verdict.pruned, vec!["spec.probe.periodSecond".to_owned()]);
    assert_eq!(doc.pointer("/spec/probe/periodSeconds"), Some(&Value::from(10)));
    assert_eq!(doc.pointer("/spec/probe/failureThreshold"), Some(&Value::from(3)));
    assert_eq!(doc.pointer("/spec/probe/timeoutSeconds"), Some(&Value::from(1)));
}

#[test]
fn printer_columns_read_like_a_cloud_console() {
    let crd = serde_json::to_value(<vigil::api::InstanceStatus as kube::CustomResourceExt>::crd()).unwrap();
    let columns: Vec<&str> = crd
        .pointer("/spec/versions/0/additionalPrinterColumns")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("priority").is_none())
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Node", "Kind", "State", "System", "Instance", "Volumes", "Age"]);
    assert_eq!(crd.pointer("/spec/names/shortNames/0"), Some(&Value::from("ist")));
    assert!(crd.pointer("/spec/versions/0/subresources/status").is_some());
    let hc = serde_json::to_value(<HealthCheck as kube::CustomResourceExt>::crd()).unwrap();
    assert_eq!(hc.pointer("/spec/names/shortNames/0"), Some(&Value::from("vhc")));
}
