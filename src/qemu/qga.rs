//! The QEMU guest agent, spoken over its host-side socket.
//!
//! Written here rather than through `qapi`'s guest-agent stream, whose `guest_sync` sends
//! `guest-sync` and takes the first reply as the answer: this socket keeps replies meant for a
//! client that left and hands them to the next one, so every exchange must start with
//! `guest-sync-delimited` and skip everything up to the `0xFF` byte and the reply carrying our id.
//! While the guest's port is closed (agent down, guest paused or rebooting) the socket accepts
//! writes and answers nothing: a timeout is the only signal.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Why a guest-agent exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    /// The socket could not be opened.
    #[error("cannot connect to the guest-agent socket: {0}")]
    Connect(#[source] std::io::Error),
    /// No answer in time: the agent is not running, or the guest is paused or rebooting.
    #[error("the guest agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The socket failed or closed.
    #[error("guest-agent socket: {0}")]
    Io(#[from] std::io::Error),
    /// The agent answered something that is not its protocol.
    #[error("the guest agent answered garbage: {0}")]
    Protocol(String),
    /// The agent refused the command.
    #[error("the guest agent refused {command}: {message}")]
    Refused {
        /// The command.
        command: String,
        /// Its error.
        message: String,
    },
}

/// Runs one guest-agent command (after the sync) and returns its `return` value.
pub async fn execute(
    socket: &Path,
    command: &str,
    arguments: Option<Value>,
    timeout: Duration,
) -> Result<Value, QgaError> {
    tokio::time::timeout(timeout, exchange(socket, command, arguments))
        .await
        .map_err(|_| QgaError::Timeout(timeout))?
}

async fn exchange(socket: &Path, command: &str, arguments: Option<Value>) -> Result<Value, QgaError> {
    let stream = UnixStream::connect(socket).await.map_err(QgaError::Connect)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let id = u32::from(fastrand::u16(1..)) + 1_000_000;
    // 0xFF first resets the agent's parser; it answers that with an error, skipped below.
    let mut sync = vec![0xFF];
    sync.extend_from_slice(
        json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}).to_string().as_bytes(),
    );
    sync.push(b'\n');
    write.write_all(&sync).await?;
    // Skip to the delimiter, then to the reply carrying our id.
    loop {
        let byte = read.read_u8().await?;
        if byte != 0xFF {
            continue;
        }
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Err(QgaError::Protocol("the socket closed during the sync".to_owned()));
        }
        match serde_json::from_str::<Value>(line.trim()) {
            Ok(v) if v["return"] == json!(id) => break,
            // A stale delimiter and reply of an earlier client: keep looking.
            _ => continue,
        }
    }
    let mut request = json!({"execute": command});
    if let Some(arguments) = arguments {
        request["arguments"] = arguments;
    }
    let mut line = request.to_string();
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut reply = String::new();
    loop {
        reply.clear();
        if read.read_line(&mut reply).await? == 0 {
            return Err(QgaError::Protocol("the socket closed before the reply".to_owned()));
        }
        if !reply.trim().is_empty() {
            break;
        }
    }
    let value: Value = serde_json::from_str(reply.trim())
        .map_err(|e| QgaError::Protocol(format!("{e}: {}", reply.trim())))?;
    if let Some(error) = value.get("error") {
        return Err(QgaError::Refused {
            command: command.to_owned(),
            message: error["desc"].as_str().unwrap_or("no description").to_owned(),
        });
    }
    value.get("return").cloned().ok_or_else(|| QgaError::Protocol(reply.trim().to_owned()))
}
