//! The CustomResourceDefinitions, generated from the types in [`crate::api`].

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{HealthCheck, InstanceStatus};

/// Every CRD vigil installs, with the file name it has under `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("healthchecks.vigil.dev.yaml", HealthCheck::crd()),
        ("instancestatuses.vigil.dev.yaml", InstanceStatus::crd()),
    ]
}

/// One CRD as the YAML document committed under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser_error::Error> {
    serde_saphyr::to_string(crd)
}
