//! The exec prober: runs a command on this host; healthy when it exits 0.
//!
//! The command runs in a process group of its own; on timeout (or when the probe is abandoned)
//! the whole group is killed, not just the first process. Standard output and error share one
//! pipe and the first 4 KiB are kept.

use std::io;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::AsyncReadExt;

use super::{Cause, Outcome, Reason, Target, Trace, human};

/// Bytes of output kept.
pub const OUTPUT_LIMIT: usize = 4096;
/// How long output is still read after the command exits (a background child may hold the
/// pipe open).
const DRAIN_GRACE: Duration = Duration::from_millis(100);

/// A validated exec probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecSpec {
    /// Program and arguments.
    pub command: Vec<String>,
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It ran past its timeout and its process group was killed.
    TimedOut,
}

/// A finished command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// How it ended.
    pub exit: Exit,
    /// The first [`OUTPUT_LIMIT`] bytes of its combined output, lossily decoded.
    pub output: String,
    /// Bytes of output beyond the limit, dropped.
    pub dropped: usize,
}

impl Finished {
    /// The output for a message: trimmed, with a note when cut.
    pub fn output_text(&self) -> String {
        let text = self.output.trim();
        if self.dropped > 0 {
            format!("{text}… ({} more bytes not kept)", self.dropped)
        } else {
            text.to_owned()
        }
    }
}

/// Why a command could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The command list is empty.
    #[error("empty command")]
    Empty,
    /// The program was not found.
    #[error("command not found: {program}")]
    NotFound {
        /// The program asked for.
        program: String,
    },
    /// Another spawn failure (permissions, resources).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program asked for.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The output pipe could not be set up.
    #[error("cannot set up the output pipe")]
    Pipe(#[source] io::Error),
    /// Waiting for the process failed.
    #[error("cannot wait for the command")]
    Wait(#[source] io::Error),
}

pub(crate) async fn probe(spec: &ExecSpec, target: &Target, timeout: Duration, trace: &mut Trace) -> Outcome {
    match run(&spec.command, &target.env, timeout, trace).await {
        Err(e) => Outcome::unknown(Cause::Local, e.to_string()),
        Ok(finished) => judge(&finished, timeout, "process group killed"),
    }
}

/// The outcome of a finished command; `on_timeout` says what was done about one still running.
pub fn judge(finished: &Finished, timeout: Duration, on_timeout: &str) -> Outcome {
    let output = finished.output_text();
    let with_output = |head: String| if output.is_empty() { head } else { format!("{head}: {output}") };
    match finished.exit {
        Exit::Code(0) => Outcome::healthy(with_output("exit code 0".to_owned())),
        Exit::Code(code) => Outcome::unhealthy(Reason::ExitCode, with_output(format!("exit code {code}"))),
        Exit::Signal(sig) => {
            Outcome::unhealthy(Reason::Signal, with_output(format!("killed by signal {sig}")))
        }
        Exit::TimedOut => Outcome::unhealthy(
            Reason::Timeout,
            with_output(format!("still running after {}; {on_timeout}", human(timeout))),
        ),
    }
}

/// Kills the process group when dropped unless disarmed: a probe abandoned half-way leaves no
/// process behind.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            // The group may be gone already; nothing to do then.
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` with `env` added, killing its process group after `timeout`.
pub async fn run(
    command: &[String],
    env: &[(String, String)],
    timeout: Duration,
    trace: &mut Trace,
) -> Result<Finished, RunError> {
    let (program, args) = command.split_first().ok_or(RunError::Empty)?;
    let (reader, writer) = io::pipe().map_err(RunError::Pipe)?;
    let writer2 = writer.try_clone().map_err(RunError::Pipe)?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .process_group(0)
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    // The command keeps our copies of the pipe's write end: drop it, or EOF never comes.
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RunError::NotFound { program: program.clone() });
        }
        Err(source) => return Err(RunError::Spawn { program: program.clone(), source }),
    };
    let mut guard = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()).and_then(Pid::from_raw));
    trace.step("spawn", || format!("started {program} (pid {})", child.id().unwrap_or(0)));
    let mut reader =
        tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(RunError::Pipe)?;

    let mut output = Vec::with_capacity(256);
    let mut dropped = 0usize;
    let mut chunk = [0u8; 4096];
    let mut eof = false;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);

    let mut keep = |data: &[u8], output: &mut Vec<u8>| {
        let room = OUTPUT_LIMIT.saturating_sub(output.len());
        output.extend_from_slice(&data[..data.len().min(room)]);
        dropped += data.len().saturating_sub(room);
    };

    let status: Option<ExitStatus> = loop {
        tokio::select! {
            status = child.wait() => break Some(status.map_err(RunError::Wait)?),
            read = reader.read(&mut chunk), if !eof => match read {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => keep(&chunk[..n], &mut output),
            },
            () = &mut deadline => {
                guard.kill();
                // Reap it; SIGKILL cannot be ignored.
                let _ = child.wait().await;
                break None;
            }
        }
    };
    if status.is_some() {
        // The process is gone: its group is not ours to kill any more.
        guard.0 = None;
    }
    // Whatever is still in the pipe, briefly.
    let drain = async {
        while !eof {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => keep(&chunk[..n], &mut output),
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_GRACE, drain).await;

    let exit = match status {
        None => Exit::TimedOut,
        Some(status) => match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(-1),
        },
    };
    trace.step("exit", || format!("{exit:?}, {} bytes of output", output.len() + dropped));
    Ok(Finished { exit, output: String::from_utf8_lossy(&output).into_owned(), dropped })
}
