//! Wall-clock time, injectable. The state machine and the remediation policy take the time as an
//! argument; the workers read it from a [`Clock`].

use std::fmt::Debug;

use jiff::Timestamp;

/// Where the current wall-clock time comes from.
pub trait Clock: Send + Sync + Debug {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}
