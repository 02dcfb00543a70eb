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

/// A clock the tests set and move: it starts at 2023-11-14T22:13:20Z, a whole second, as
/// documents keep times.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct ManualClock(std::sync::Mutex<Timestamp>);

#[cfg(test)]
impl ManualClock {
    pub(crate) fn new() -> ManualClock {
        ManualClock(std::sync::Mutex::new(
            Timestamp::from_second(1_700_000_000).unwrap_or_else(|e| panic!("{e}")),
        ))
    }

    /// Moves the time on by `secs`.
    pub(crate) fn advance(&self, secs: i64) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t = t.checked_add(jiff::SignedDuration::from_secs(secs)).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
