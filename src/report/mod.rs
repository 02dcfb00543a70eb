//! Reporters: where observed state goes. Standalone, the local state folder; in a cluster, the
//! API server. Metrics are updated by the store itself.

pub mod statedir;
