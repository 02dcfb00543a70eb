//! The resource types: what users write (`HealthCheck`) and what agents report
//! (`InstanceStatus`).
//!
//! This module imports nothing else of the crate. The current version is re-exported here, so the
//! rest of the crate never names it.

pub mod v1alpha1;

pub use v1alpha1::*;

/// API group of every vigil resource.
pub const GROUP: &str = "vigil.dev";
/// API version served and stored.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "vigil.dev/v1alpha1";

/// Condition types of a HealthCheck.
pub mod conditions {
    /// Probing works: the spec is valid, targets were found and are being probed.
    pub const READY: &str = "Ready";
    /// Some targets are not `ok`.
    pub const DEGRADED: &str = "Degraded";
    /// The spec cannot be run as written.
    pub const INVALID: &str = "Invalid";
}

/// Condition reasons.
pub mod reasons {
    /// Ready: targets are being probed.
    pub const PROBING: &str = "Probing";
    /// Ready false: no target found on this agent.
    pub const NO_TARGETS: &str = "NoTargets";
    /// Ready false: `spec.suspend` is set.
    pub const SUSPENDED: &str = "Suspended";
    /// Ready false / Invalid true: the spec is invalid.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Invalid false.
    pub const VALID_SPEC: &str = "ValidSpec";
    /// Degraded true: targets impaired.
    pub const TARGETS_IMPAIRED: &str = "TargetsImpaired";
    /// Degraded true: targets whose probes cannot run.
    pub const INSUFFICIENT_DATA: &str = "InsufficientData";
    /// Degraded false.
    pub const ALL_OK: &str = "AllOk";
    /// Degraded unknown: targets still initializing.
    pub const INITIALIZING: &str = "Initializing";
}

/// Labels vigil puts on the objects it writes.
pub mod labels {
    /// The node whose agent wrote the object.
    pub const NODE: &str = "vigil.dev/node";
    /// The instance kind of an InstanceStatus.
    pub const KIND: &str = "vigil.dev/kind";
}
