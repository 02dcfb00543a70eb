//! The state machine of one (check, instance): thresholds turn probe outcomes into status
//! transitions.
//!
//! - `failureThreshold` unhealthy outcomes in a row make it `impaired`;
//! - `successThreshold` healthy outcomes in a row make it `ok`;
//! - `failureThreshold` outcomes in a row that could not be obtained (`Unknown`) make it
//!   `insufficient-data`. An unknown outcome breaks neither streak: it says nothing about the
//!   target.
//!
//! Time is an argument; nothing here reads a clock or does I/O.

use jiff::Timestamp;

use crate::api::CheckStatus;
use crate::probe::{Outcome, Reason};

/// Longest message kept, in bytes.
pub const MESSAGE_LIMIT: usize = 1024;

/// The thresholds of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Passes in a row to become `ok`.
    pub success: u32,
    /// Failures (or errors) in a row to become `impaired` (or `insufficient-data`).
    pub failure: u32,
}

/// What the last outcome was, without its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastOutcome {
    /// Passed.
    Healthy,
    /// Failed.
    Unhealthy,
    /// Could not run.
    Unknown,
}

/// The state of one check on one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckState {
    /// Current status.
    pub status: CheckStatus,
    /// Unhealthy outcomes in a row.
    pub consecutive_failures: u32,
    /// Healthy outcomes in a row.
    pub consecutive_successes: u32,
    /// Unknown outcomes in a row.
    pub consecutive_errors: u32,
    /// When the last probe ended.
    pub last_probe: Option<Timestamp>,
    /// When `status` last changed.
    pub last_transition: Option<Timestamp>,
    /// When it became impaired, while impaired.
    pub impaired_since: Option<Timestamp>,
    /// Reason of the last failure, while not passing.
    pub reason: Option<Reason>,
    /// What the last probe said.
    pub message: Option<String>,
    /// The last outcome.
    pub last_outcome: Option<LastOutcome>,
    /// Whether any probe ever passed.
    pub ever_passed: bool,
}

/// A change of status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Status before.
    pub from: CheckStatus,
    /// Status after.
    pub to: CheckStatus,
    /// When.
    pub at: Timestamp,
}

impl Default for CheckState {
    fn default() -> Self {
        CheckState::new()
    }
}

impl CheckState {
    /// A check that has not probed yet: `initializing`.
    pub fn new() -> CheckState {
        CheckState {
            status: CheckStatus::Initializing,
            consecutive_failures: 0,
            consecutive_successes: 0,
            consecutive_errors: 0,
            last_probe: None,
            last_transition: None,
            impaired_since: None,
            reason: None,
            message: None,
            last_outcome: None,
            ever_passed: false,
        }
    }

    /// Feeds one outcome; returns the transition it caused, if any.
    pub fn observe(&mut self, outcome: &Outcome, now: Timestamp, t: Thresholds) -> Option<Transition> {
        self.last_probe = Some(now);
        let next = match outcome {
            Outcome::Healthy { message } => {
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                self.consecutive_failures = 0;
                self.consecutive_errors = 0;
                self.ever_passed = true;
                self.reason = None;
                self.set_message(message);
                self.last_outcome = Some(LastOutcome::Healthy);
                (self.consecutive_successes >= t.success).then_some(CheckStatus::Ok)
            }
            Outcome::Unhealthy { reason, message } => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.consecutive_successes = 0;
                self.consecutive_errors = 0;
                self.reason = Some(*reason);
                self.set_message(message);
                self.last_outcome = Some(LastOutcome::Unhealthy);
                (self.consecutive_failures >= t.failure).then_some(CheckStatus::Impaired)
            }
            Outcome::Unknown { error, .. } => {
                self.consecutive_errors = self.consecutive_errors.saturating_add(1);
                self.set_message(error);
                self.last_outcome = Some(LastOutcome::Unknown);
                (self.consecutive_errors >= t.failure).then_some(CheckStatus::InsufficientData)
            }
        };
        match next {
            Some(to) if to != self.status => Some(self.transition(to, now)),
            _ => None,
        }
    }

    fn set_message(&mut self, message: &str) {
        // Most probes say what the last one said: keep the allocation.
        if self.message.as_deref() != Some(message) {
            self.message = Some(cap(message));
        }
    }

    /// Sets the status directly (suspension, resumption); returns the transition if it changed.
    pub fn set_status(&mut self, to: CheckStatus, now: Timestamp) -> Option<Transition> {
        (to != self.status).then(|| self.transition(to, now))
    }

    fn transition(&mut self, to: CheckStatus, now: Timestamp) -> Transition {
        let from = self.status;
        self.status = to;
        self.last_transition = Some(now);
        if to == CheckStatus::Impaired {
            self.impaired_since = Some(now);
        } else {
            self.impaired_since = None;
        }
        Transition { from, to, at: now }
    }

    /// After a remediation action: the streaks start over, so the target must fail
    /// `failureThreshold` times again before the next action. The status stays as it is until
    /// probes say otherwise.
    pub fn reset_streaks(&mut self) {
        self.consecutive_failures = 0;
        self.consecutive_successes = 0;
        self.consecutive_errors = 0;
    }

    /// Whether the faster failing period applies: never passed, or the last probe did not pass.
    pub fn wants_fast_period(&self) -> bool {
        !self.ever_passed || self.last_outcome != Some(LastOutcome::Healthy)
    }
}

fn cap(message: &str) -> String {
    if message.len() <= MESSAGE_LIMIT {
        return message.to_owned();
    }
    let mut end = MESSAGE_LIMIT;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { success: 2, failure: 3 };

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn fail() -> Outcome {
        Outcome::unhealthy(Reason::Refused, "connection refused")
    }

    fn pass() -> Outcome {
        Outcome::healthy("HTTP 200 OK")
    }

    fn unknown() -> Outcome {
        Outcome::unknown(crate::probe::Cause::Local, "command not found: nope")
    }

    #[test]
    fn impaired_after_exactly_failure_threshold_failures() {
        let mut s = CheckState::new();
        assert_eq!(s.observe(&fail(), at(0), T), None);
        assert_eq!(s.observe(&fail(), at(10), T), None);
        assert_eq!(s.status, CheckStatus::Initializing);
        let tr = s.observe(&fail(), at(20), T).unwrap();
        assert_eq!((tr.from, tr.to, tr.at), (CheckStatus::Initializing, CheckStatus::Impaired, at(20)));
        assert_eq!(s.impaired_since, Some(at(20)));
        assert_eq!(s.reason, Some(Reason::Refused));
        // Further failures change nothing.
        assert_eq!(s.observe(&fail(), at(30), T), None);
        assert_eq!(s.consecutive_failures, 4);
        assert_eq!(s.impaired_since, Some(at(20)));
    }

    #[test]
    fn ok_after_exactly_success_threshold_passes() {
        let mut s = CheckState::new();
        for i in 0..3 {
            s.observe(&fail(), at(i), T);
        }
        assert_eq!(s.status, CheckStatus::Impaired);
        assert_eq!(s.observe(&pass(), at(10), T), None);
        assert_eq!(s.status, CheckStatus::Impaired, "one pass is not enough with successThreshold 2");
        let tr = s.observe(&pass(), at(20), T).unwrap();
        assert_eq!((tr.from, tr.to), (CheckStatus::Impaired, CheckStatus::Ok));
        assert_eq!(s.impaired_since, None);
        assert_eq!(s.last_transition, Some(at(20)));
        assert_eq!(s.reason, None);
    }

    #[test]
    fn a_pass_breaks_the_failure_streak() {
        let mut s = CheckState::new();
        s.observe(&fail(), at(0), T);
        s.observe(&fail(), at(1), T);
        s.observe(&pass(), at(2), T);
        s.observe(&fail(), at(3), T);
        s.observe(&fail(), at(4), T);
        assert_ne!(s.status, CheckStatus::Impaired);
        assert!(s.observe(&fail(), at(5), T).is_some());
        assert_eq!(s.status, CheckStatus::Impaired);
    }

    #[test]
    fn unknown_outcomes_give_insufficient_data_and_break_no_streak() {
        let mut s = CheckState::new();
        s.observe(&fail(), at(0), T);
        s.observe(&unknown(), at(1), T);
        s.observe(&fail(), at(2), T);
        assert_eq!(s.consecutive_failures, 2, "an unknown outcome does not reset the failure streak");
        assert_eq!(s.status, CheckStatus::Initializing);
        s.observe(&unknown(), at(3), T);
        s.observe(&unknown(), at(4), T);
        let tr = s.observe(&unknown(), at(5), T).unwrap();
        assert_eq!(tr.to, CheckStatus::InsufficientData);
        assert_eq!(s.impaired_since, None);
        // The target is failing again: impaired at once, since the streak was kept.
        let tr = s.observe(&fail(), at(6), T).unwrap();
        assert_eq!(tr.to, CheckStatus::Impaired);
    }

    #[test]
    fn thresholds_of_one_switch_on_every_outcome() {
        let one = Thresholds { success: 1, failure: 1 };
        let mut s = CheckState::new();
        assert_eq!(s.observe(&pass(), at(0), one).unwrap().to, CheckStatus::Ok);
        assert_eq!(s.observe(&fail(), at(1), one).unwrap().to, CheckStatus::Impaired);
        assert_eq!(s.observe(&pass(), at(2), one).unwrap().to, CheckStatus::Ok);
    }

    #[test]
    fn streaks_reset_after_an_action() {
        let mut s = CheckState::new();
        for i in 0..3 {
            s.observe(&fail(), at(i), T);
        }
        s.reset_streaks();
        assert_eq!(s.status, CheckStatus::Impaired, "the status waits for new evidence");
        assert_eq!(s.consecutive_failures, 0);
        assert_eq!(s.observe(&fail(), at(10), T), None);
    }

    #[test]
    fn fast_period_until_passing() {
        let mut s = CheckState::new();
        assert!(s.wants_fast_period());
        s.observe(&pass(), at(0), T);
        assert!(!s.wants_fast_period());
        s.observe(&fail(), at(1), T);
        assert!(s.wants_fast_period());
    }

    #[test]
    fn long_messages_are_capped_on_a_char_boundary() {
        let mut s = CheckState::new();
        let long = "é".repeat(2000);
        s.observe(&Outcome::unhealthy(Reason::ExitCode, long), at(0), T);
        let m = s.message.unwrap();
        assert!(m.len() <= MESSAGE_LIMIT + '…'.len_utf8());
        assert!(m.ends_with('…'));
    }
}
