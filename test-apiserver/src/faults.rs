//! Fault injection and request counting.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A fault to inject into matching requests.
#[derive(Debug, Clone)]
pub struct Fault {
    verb: Option<String>,
    resource: Option<String>,
    action: Action,
    remaining: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Answer(u16),
    Delay(Duration),
}

impl Fault {
    /// Answer with this HTTP code (409, 429, 500, 503…) and a `Status`.
    pub fn answer(code: u16) -> Self {
        Fault { verb: None, resource: None, action: Action::Answer(code), remaining: None }
    }

    /// Hold the request this long before answering it.
    pub fn delay(by: Duration) -> Self {
        Fault { verb: None, resource: None, action: Action::Delay(by), remaining: None }
    }

    /// Only for this verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`).
    pub fn verb(mut self, verb: &str) -> Self {
        self.verb = Some(verb.to_owned());
        self
    }

    /// Only for this resource (`instancestatuses`, `instancestatuses/status`, `leases`).
    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_owned());
        self
    }

    /// Only the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.remaining = Some(n);
        self
    }

    fn matches(&self, verb: &str, resource: &str) -> bool {
        self.verb.as_deref().is_none_or(|v| v == verb)
            && self.resource.as_deref().is_none_or(|r| r == resource)
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Serve it.
    Pass,
    /// Refuse the connection.
    Refuse,
    /// Answer with this code.
    Answer(u16),
    /// Serve it after a while.
    Delay(Duration),
}

/// The faults in force and the counts.
#[derive(Debug, Default)]
pub struct Faults {
    unavailable_until: Option<Instant>,
    rules: Vec<Fault>,
    counts: BTreeMap<(String, String), u64>,
}

impl Faults {
    /// Refuse every connection for this long.
    pub fn unavailable_for(&mut self, d: Duration) {
        self.unavailable_until = Some(Instant::now() + d);
    }

    /// Back to serving at once.
    pub fn clear(&mut self) {
        self.unavailable_until = None;
        self.rules.clear();
    }

    /// Adds a fault.
    pub fn add(&mut self, fault: Fault) {
        self.rules.push(fault);
    }

    /// Requests counted so far, by (verb, resource).
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        self.counts.clone()
    }

    /// Counts a request and says what to do with it.
    pub fn consult(&mut self, verb: &str, resource: &str) -> Verdict {
        if !resource.is_empty() {
            *self.counts.entry((verb.to_owned(), resource.to_owned())).or_default() += 1;
        }
        if self.unavailable_until.is_some_and(|t| Instant::now() < t) {
            return Verdict::Refuse;
        }
        let Some(i) = self.rules.iter().position(|f| f.matches(verb, resource)) else { return Verdict::Pass };
        let fault = &mut self.rules[i];
        let action = fault.action;
        if let Some(n) = fault.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.rules.remove(i);
            }
        }
        match action {
            Action::Answer(code) => Verdict::Answer(code),
            Action::Delay(d) => Verdict::Delay(d),
        }
    }
}
