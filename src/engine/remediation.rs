//! Remediation: whether an impaired target may be acted on now, and who acts.
//!
//! The policy is pure: it reads the target's recent actions and the time. An action is taken
//! only on an impaired target whose last probe failed (never on `insufficient-data`), at most
//! `maxRestarts` times within `window`, each at least the backoff delay after the previous one,
//! and not at all while more targets of the check than `maxUnhealthy` are impaired.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::api::InstanceKind;
use crate::model::{ActionKind, CheckKey, Limit, RestartPolicy};
use crate::probe::Trace;
use crate::probe::exec::{self, Exit};

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

/// What an action needs to know.
#[derive(Clone, Debug)]
pub struct ActionRequest {
    /// Which action.
    pub kind: ActionKind,
    /// Which check asked.
    pub check: CheckKey,
    /// Target instance id.
    pub instance_id: String,
    /// Target instance name.
    pub instance_name: String,
    /// Target instance kind.
    pub instance_kind: InstanceKind,
    /// Why, from the probe.
    pub reason: String,
    /// For `exec`: command and timeout.
    pub exec: Option<(Vec<String>, Duration)>,
}

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// This agent cannot perform this kind of action.
    #[error("{action} is not available: {why}")]
    Unsupported {
        /// The action.
        action: &'static str,
        /// What is missing.
        why: String,
    },
    /// The action ran and failed.
    #[error("{0}")]
    Failed(String),
}

/// A boxed future returned by executors.
pub type ActionFuture<'a> = Pin<Box<dyn Future<Output = Result<String, ActionError>> + Send + 'a>>;

/// Carries out actions. Container, VM and pod actions come with their runtimes; the `exec` action
/// is [`ExecAction`].
pub trait ActionExecutor: Send + Sync + Debug {
    /// Performs the action; on success returns what was done.
    fn execute<'a>(&'a self, request: &'a ActionRequest) -> ActionFuture<'a>;
}

/// Runs the `exec` action on this host, with the instance described in its environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecAction;

impl ActionExecutor for ExecAction {
    fn execute<'a>(&'a self, request: &'a ActionRequest) -> ActionFuture<'a> {
        Box::pin(async move {
            let Some((command, timeout)) = &request.exec else {
                return Err(ActionError::Failed("exec action without a command".to_owned()));
            };
            let env = vec![
                ("VIGIL_INSTANCE_ID".to_owned(), request.instance_id.clone()),
                ("VIGIL_INSTANCE_NAME".to_owned(), request.instance_name.clone()),
                ("VIGIL_INSTANCE_KIND".to_owned(), request.instance_kind.as_str().to_owned()),
                ("VIGIL_CHECK".to_owned(), request.check.to_string()),
                ("VIGIL_REASON".to_owned(), request.reason.clone()),
            ];
            let finished = exec::run(command, &env, *timeout, &mut Trace::new(false))
                .await
                .map_err(|e| ActionError::Failed(e.to_string()))?;
            let output = finished.output_text();
            let suffix = if output.is_empty() { String::new() } else { format!(": {output}") };
            match finished.exit {
                Exit::Code(0) => Ok(format!("command exited 0{suffix}")),
                Exit::Code(code) => Err(ActionError::Failed(format!("command exited {code}{suffix}"))),
                Exit::Signal(sig) => {
                    Err(ActionError::Failed(format!("command killed by signal {sig}{suffix}")))
                }
                Exit::TimedOut => Err(ActionError::Failed(format!(
                    "command still running after {}s; killed",
                    timeout.as_secs()
                ))),
            }
        })
    }
}

/// The executors of one agent, by action kind. A kind without an executor fails with a message
/// saying what is missing.
#[derive(Clone, Debug, Default)]
pub struct Executors {
    /// `exec`.
    pub exec: Option<std::sync::Arc<dyn ActionExecutor>>,
    /// `restartContainer`.
    pub container: Option<std::sync::Arc<dyn ActionExecutor>>,
    /// `restartVM`.
    pub vm: Option<std::sync::Arc<dyn ActionExecutor>>,
    /// `evictPod`.
    pub pod: Option<std::sync::Arc<dyn ActionExecutor>>,
}

impl Executors {
    /// Runs `request` with the executor of its kind.
    pub async fn execute(&self, request: &ActionRequest) -> Result<String, ActionError> {
        let (executor, why) = match request.kind {
            ActionKind::Exec => (&self.exec, "exec actions are disabled on this agent"),
            ActionKind::RestartContainer => (&self.container, "this agent has no Docker runtime"),
            ActionKind::RestartVm => (&self.vm, "this agent has no QEMU runtime"),
            ActionKind::EvictPod => (&self.pod, "this agent is not connected to Kubernetes"),
        };
        match executor {
            Some(executor) => executor.execute(request).await,
            None => Err(ActionError::Unsupported { action: request.kind.as_str(), why: why.to_owned() }),
        }
    }
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

    #[tokio::test]
    async fn exec_action_gets_the_instance_in_its_environment() {
        let request = ActionRequest {
            kind: ActionKind::Exec,
            check: CheckKey::new("default", "web"),
            instance_id: "endpoint-x".into(),
            instance_name: "x".into(),
            instance_kind: InstanceKind::Endpoint,
            reason: "refused".into(),
            exec: Some((
                vec!["sh".into(), "-c".into(), "echo $VIGIL_CHECK $VIGIL_INSTANCE_ID $VIGIL_REASON".into()],
                Duration::from_secs(5),
            )),
        };
        let out = ExecAction.execute(&request).await.unwrap();
        assert!(out.contains("default/web endpoint-x refused"), "{out}");
        let failing =
            ActionRequest { exec: Some((vec!["false".into()], Duration::from_secs(5))), ..request.clone() };
        assert!(
            matches!(ExecAction.execute(&failing).await, Err(ActionError::Failed(m)) if m.contains("exited 1"))
        );
        let executors = Executors::default();
        let err = executors
            .execute(&ActionRequest { kind: ActionKind::RestartContainer, ..request })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no Docker runtime"), "{err}");
    }
}
