//! Remediation bookkeeping of one instance: the actions taken on it (the budget and the backoff
//! are computed from them), how many in all, and whether one is running now.

use std::collections::VecDeque;

use jiff::Timestamp;

use super::{ActionRecord, Decision, HISTORY_LIMIT, decide};
use crate::model::{CheckKey, RestartPolicy};

/// The actions of one instance.
#[derive(Debug, Default)]
pub struct Book {
    history: VecDeque<ActionRecord>,
    count: u32,
    /// An action decided on this instance has not finished: no other is started meanwhile
    /// (another worker of the same instance, or this one replaced while it runs).
    acting: bool,
}

impl Book {
    /// A book read back from an earlier run: `count` actions in all, the latest of them in
    /// `history` (oldest first).
    pub fn restored(count: u32, history: Vec<ActionRecord>) -> Book {
        let mut history: VecDeque<ActionRecord> = history.into();
        while history.len() > HISTORY_LIMIT {
            history.pop_front();
        }
        Book { history, count, acting: false }
    }

    /// The policy's verdict on acting for `check` now. Only one action runs at a time per
    /// instance.
    pub fn decide(&self, policy: &RestartPolicy, check: &CheckKey, now: Timestamp) -> Decision {
        let history: Vec<&ActionRecord> = self.history.iter().filter(|r| &r.check == check).collect();
        match decide(policy, &history, now) {
            Decision::Act if self.acting => Decision::InProgress,
            decision => decision,
        }
    }

    /// An action was decided and starts now.
    pub fn begin(&mut self) {
        self.acting = true;
    }

    /// The action that was running finished with `record`.
    pub fn finish(&mut self, record: ActionRecord) {
        self.acting = false;
        self.count = self.count.saturating_add(1);
        self.history.push_back(record);
        while self.history.len() > HISTORY_LIMIT {
            self.history.pop_front();
        }
    }

    /// Actions taken in all.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The latest actions, oldest first.
    pub fn history(&self) -> impl ExactSizeIterator<Item = &ActionRecord> + DoubleEndedIterator {
        self.history.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 2,
            window: Duration::from_secs(3600),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(60),
            multiplier: 2,
        }
    }

    fn done(check: &CheckKey, s: i64) -> ActionRecord {
        ActionRecord {
            at: at(s),
            check: check.clone(),
            action: "exec".into(),
            succeeded: true,
            message: String::new(),
        }
    }

    #[test]
    fn one_action_at_a_time_and_each_check_its_own_budget() {
        let (a, b) = (CheckKey::new("ns", "a"), CheckKey::new("ns", "b"));
        let mut book = Book::default();
        assert_eq!(book.decide(&policy(), &a, at(0)), Decision::Act);
        book.begin();
        assert_eq!(book.decide(&policy(), &b, at(0)), Decision::InProgress);
        book.finish(done(&a, 0));
        book.begin();
        book.finish(done(&a, 100));
        assert!(matches!(book.decide(&policy(), &a, at(200)), Decision::BudgetExhausted { count: 2, .. }));
        assert_eq!(book.decide(&policy(), &b, at(200)), Decision::Act, "b's budget is untouched");
        assert_eq!(book.count(), 2);
    }

    #[test]
    fn history_is_bounded_and_the_count_is_not() {
        let a = CheckKey::new("ns", "a");
        let records = (0..40).map(|s| done(&a, s)).collect();
        let mut book = Book::restored(40, records);
        assert_eq!(book.history().len(), HISTORY_LIMIT);
        book.finish(done(&a, 41));
        assert_eq!(book.history().len(), HISTORY_LIMIT);
        assert_eq!(book.history().next_back().map(|r| r.at), Some(at(41)));
        assert_eq!(book.count(), 41);
    }
}
