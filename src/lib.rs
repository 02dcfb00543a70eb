//! vigil keeps watch over pods, Docker containers, QEMU virtual machines and the nodes under
//! them, and reports their health the way a cloud provider reports its instances: a System, an
//! Instance and an Attached-volume status check per instance, each `ok`, `impaired`,
//! `insufficient-data` or `initializing`.
//!
//! The agent's data flow, one module per step:
//!
//! ```text
//! source (folder | API)  ─┐
//!                         ├─> engine::planner ─> engine::scheduler ─> probe ─> engine::state
//! inventory (host, …)    ─┘        (which check on          (on time,      (one probe,   (thresholds,
//!                                   which instance)          bounded)       one outcome)  transitions)
//!                                                                                  │
//!        report (state folder | API) <── engine::store ──> http API, metrics <─────┘
//!                                             └──> engine::remediation (policy ─> executors)
//! ```
//!
//! `api` holds the resource types and imports nothing else of the crate; `model` is the
//! validated form of a HealthCheck that the engine runs.
#![forbid(unsafe_code)]

pub mod action;
pub mod agent;
pub mod api;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod controller;
pub mod crd;
pub mod docker;
pub mod engine;
pub mod health;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod qemu;
pub mod report;
pub mod source;
pub mod supervise;
pub mod telemetry;
