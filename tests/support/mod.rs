//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod agent;
pub mod schema;
pub mod servers;
