//! The engine: which check applies to which instance (planner), every probe on time (scheduler),
//! thresholds turning outcomes into transitions (state machine), the shared view of it all
//! (store) and what to do about failures (remediation).

pub mod aggregate;
pub mod clock;
pub mod feed;
pub mod planner;
pub mod remediation;
pub mod scheduler;
pub mod state;
pub mod store;
