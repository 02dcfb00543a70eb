//! Reporters: where observed state goes. Standalone, the local state folder; in a cluster, the
//! API server. Both read the store's change feed and render its views here ([`render`]);
//! metrics are scraped from the store directly.

pub mod apiserver;
pub mod events;
pub mod render;
pub mod restore;
pub mod statedir;
