//! The CustomResourceDefinitions, generated from the types in [`crate::api`].

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{HealthCheck, InstanceStatus};

/// Every CRD vigil installs, with the file name it has under `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("healthchecks.vigil.dev.yaml", kubernetes_formats(HealthCheck::crd())),
        ("instancestatuses.vigil.dev.yaml", kubernetes_formats(InstanceStatus::crd())),
    ]
}

/// The CRD as Kubernetes wants it:
/// - the integer formats schemars writes for unsigned Rust types (`uint8`, `uint32`) replaced by
///   the ones Kubernetes knows (`int32`, `int64`): the API server answers every apply of an
///   unknown format with a warning (`unrecognized format "uint32"`). The `minimum: 0` that
///   schemars writes beside them keeps the values unsigned;
/// - descriptions as paragraphs ([`paragraphs`]): `kubectl explain` wraps text itself, and the
///   doc comments' hard line breaks would break its sentences mid-line.
fn kubernetes_formats(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
    fn walk(schema: &mut JSONSchemaProps) {
        if let Some(text) = schema.description.as_mut() {
            *text = paragraphs(text);
        }
        if let Some(format) = schema.format.as_mut() {
            match format.as_str() {
                "uint8" | "uint16" | "int8" | "int16" => *format = "int32".to_owned(),
                "uint32" | "uint64" | "uint" => *format = "int64".to_owned(),
                _ => {}
            }
        }
        for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
            walk(child);
        }
        if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) =
            schema.items.as_mut()
        {
            walk(items);
        }
        if let Some(
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(
                extra,
            ),
        ) = schema.additional_properties.as_mut()
        {
            walk(extra);
        }
        for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
            for child in list.iter_mut().flatten() {
                walk(child);
            }
        }
    }
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            walk(schema);
        }
    }
    crd
}

/// A doc comment as paragraphs: the lines of each paragraph joined with spaces; blank lines
/// between paragraphs, and list items (`- …`) on lines of their own, kept.
pub fn paragraphs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (n, paragraph) in text.split("\n\n").enumerate() {
        if n > 0 {
            out.push_str("\n\n");
        }
        for (i, line) in paragraph.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
            if i > 0 {
                out.push(if line.starts_with("- ") || line.starts_with("* ") { '\n' } else { ' ' });
            }
            out.push_str(line);
        }
    }
    out
}

/// One CRD as the YAML document committed under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser_error::Error> {
    serde_saphyr::to_string(crd)
}

#[cfg(test)]
mod tests {
    use super::paragraphs;

    #[test]
    fn hard_wrapped_lines_become_paragraphs_and_lists_stay() {
        let doc = "An HTTP GET; healthy when the status matches (and the body, if\nasked).\n\nWhich:\n- one\n- two,\n  wrapped";
        assert_eq!(
            paragraphs(doc),
            "An HTTP GET; healthy when the status matches (and the body, if asked).\n\nWhich:\n- one\n- two, wrapped"
        );
        assert_eq!(paragraphs("One line."), "One line.");
    }
}
