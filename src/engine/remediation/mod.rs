//! Remediation: whether an impaired target may be acted on now. The actions themselves are
//! carried out by [`crate::action`] executors.
//!
//! The policy is pure: it reads the target's recent actions and the time. An action is taken
//! only on an impaired target whose last probe failed (never on `insufficient-data`), at most
//! `maxRestarts` times within `window`, each at least the backoff delay after the previous one,
//! and not at all while more targets of the check than `maxUnhealthy` are impaired.

pub mod book;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::model::{CheckKey, Limit, RestartPolicy};

/// Actions remembered per instance (the budget is computed from these).
pub const HISTORY_LIMIT: usize = 32;

/// One action taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionRecord {
    /// When.
    pub at: Timestamp,
    /// Which check asked for it.
    pub check: CheckKey,
    /// Which action (`exec`, `restartContainer`…).
    pub action: String,
    /// Whether it worked.
    pub succeeded: bool,
    /// What happened.
    pub message: String,
}

/// What the policy says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Act now.
    Act,
    /// Wait for the backoff delay.
    Backoff {
        /// The earliest time of the next action.
        until: Timestamp,
    },
    /// `maxRestarts` actions were taken within the window.
    BudgetExhausted {
        /// Actions in the window.
        count: u32,
        /// The window.
        window: Duration,
    },
    /// An action on this target is still running.
    InProgress,
    /// The controller, which sees the whole fleet, has not allowed remediation for this check
    /// (or what it said is not known here).
    Withheld {
        /// Why, for a person.
        why: String,
    },
    /// Too many targets of the check are impaired: a platform problem.
    MassFailure {
        /// Impaired targets.
        unhealthy: u32,
        /// All targets.
        total: u32,
        /// The limit.
        limit: Limit,
    },
}

impl Decision {
    /// Why no action is taken, for a person; `None` for `Act`.
    pub fn explain(&self) -> Option<String> {
        match self {
            Decision::Act => None,
            Decision::Backoff { until } => Some(format!("backing off until {until}")),
            Decision::InProgress => Some("an action on this target is still running".to_owned()),
            Decision::BudgetExhausted { count, window } => Some(format!(
                "{count} actions within {}s (maxRestarts): leaving it alone until the window moves on",
                window.as_secs()
            )),
            Decision::Withheld { why } => Some(why.clone()),
            Decision::MassFailure { unhealthy, total, limit } => Some(format!(
                "{unhealthy} of {total} targets are impaired, above maxUnhealthy {limit}: not acting on any"
            )),
        }
    }
}

/// Decides whether to act on one target, given the actions `history` of this check on it.
pub fn decide(policy: &RestartPolicy, history: &[&ActionRecord], now: Timestamp) -> Decision {
    let window = SignedDuration::try_from(policy.window).unwrap_or(SignedDuration::MAX);
    let in_window: Vec<&&ActionRecord> =
        history.iter().filter(|r| now.duration_since(r.at) < window).collect();
    let count = u32::try_from(in_window.len()).unwrap_or(u32::MAX);
    if count >= policy.max_restarts {
        return Decision::BudgetExhausted { count, window: policy.window };
    }
    if let Some(last) = in_window.iter().map(|r| r.at).max() {
        let delay = backoff_delay(policy, count);
        let until =
            last.checked_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX)).unwrap_or(last);
        if now < until {
            return Decision::Backoff { until };
        }
    }
    Decision::Act
}

/// The delay after the `n`-th action in the window (n ≥ 1): initial × multiplier^(n-1), capped.
pub fn backoff_delay(policy: &RestartPolicy, n: u32) -> Duration {
    let mut delay = policy.backoff_initial;
    for _ in 1..n {
        delay = delay.saturating_mul(policy.multiplier);
        if delay >= policy.backoff_max {
            break;
        }
    }
    delay.min(policy.backoff_max)
}

/// Whether more targets than `limit` are impaired.
pub fn mass_failure(limit: Option<Limit>, unhealthy: u32, total: u32) -> Option<Decision> {
    let limit = limit?;
    limit.exceeded(unhealthy, total).then_some(Decision::MassFailure { unhealthy, total, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn record(s: i64) -> ActionRecord {
        ActionRecord {
            at: at(s),
            check: CheckKey::new("ns", "c"),
            action: "exec".into(),
            succeeded: true,
            message: String::new(),
        }
    }

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(3600),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(25),
            multiplier: 2,
        }
    }

    #[test]
    fn first_action_is_immediate() {
        assert_eq!(decide(&policy(), &[], at(0)), Decision::Act);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy();
        assert_eq!(backoff_delay(&p, 1), Duration::from_secs(10));
        assert_eq!(backoff_delay(&p, 2), Duration::from_secs(20));
        assert_eq!(backoff_delay(&p, 3), Duration::from_secs(25));
        assert_eq!(backoff_delay(&p, 30), Duration::from_secs(25));
        let r1 = record(0);
        assert_eq!(decide(&p, &[&r1], at(5)), Decision::Backoff { until: at(10) });
        assert_eq!(decide(&p, &[&r1], at(10)), Decision::Act);
        let r2 = record(10);
        assert_eq!(decide(&p, &[&r1, &r2], at(29)), Decision::Backoff { until: at(30) });
        assert_eq!(decide(&p, &[&r1, &r2], at(30)), Decision::Act);
    }

    #[test]
    fn budget_is_counted_within_the_window() {
        let p = policy();
        let (a, b, c) = (record(0), record(100), record(200));
        assert_eq!(
            decide(&p, &[&a, &b, &c], at(300)),
            Decision::BudgetExhausted { count: 3, window: Duration::from_secs(3600) }
        );
        // An hour after the first action, it no longer counts.
        assert_eq!(decide(&p, &[&a, &b, &c], at(3600)), Decision::Act);
    }

    #[test]
    fn mass_failure_blocks() {
        assert_eq!(mass_failure(None, 10, 10), None);
        assert_eq!(mass_failure(Some(Limit::Count(2)), 2, 10), None);
        assert!(matches!(mass_failure(Some(Limit::Count(2)), 3, 10), Some(Decision::MassFailure { .. })));
        assert!(matches!(mass_failure(Some(Limit::Percent(40)), 2, 4), Some(Decision::MassFailure { .. })));
        let explained = mass_failure(Some(Limit::Percent(40)), 2, 4).unwrap().explain().unwrap();
        assert!(explained.contains("2 of 4") && explained.contains("40%"), "{explained}");
    }
}
