//! Actions on instances: what an action needs to know ([`ActionRequest`]) and who carries it out
//! ([`ActionExecutor`]). The runtimes (Docker, QEMU, Kubernetes) implement executors for their
//! instances; [`ExecAction`] runs a command on the host. Whether to act at all is decided by the
//! engine's remediation policy, which this module does not know.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::api::InstanceKind;
use crate::model::{ActionKind, CheckKey};
use crate::probe::Trace;
use crate::probe::exec::{self, Exit};

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
    pub exec: Option<Arc<dyn ActionExecutor>>,
    /// `restartContainer`.
    pub container: Option<Arc<dyn ActionExecutor>>,
    /// `restartVM`.
    pub vm: Option<Arc<dyn ActionExecutor>>,
}

impl Executors {
    /// Runs `request` with the executor of its kind.
    pub async fn execute(&self, request: &ActionRequest) -> Result<String, ActionError> {
        let (executor, why) = match request.kind {
            ActionKind::Exec => (&self.exec, "exec actions are disabled on this agent"),
            ActionKind::RestartContainer => (&self.container, "this agent has no Docker runtime"),
            ActionKind::RestartVm => (&self.vm, "this agent has no QEMU runtime"),
            // Agents never evict: the controller does, paced across the fleet.
            ActionKind::EvictPod => (&None, "evictPod is carried out by the controller"),
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
