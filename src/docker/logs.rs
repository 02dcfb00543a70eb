//! Container logs as lines. The Engine sends output in frames (8-byte headers naming the stream,
//! decoded by bollard); a frame is not a line: a line can span frames (Docker cuts lines longer
//! than 16 KiB, and each piece carries its own timestamp) and a frame can hold several lines.
//! [`LineSplitter`] puts lines back together, per stream.

use std::collections::VecDeque;
use std::pin::Pin;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::{Stream, StreamExt};
use serde::Serialize;

use super::DockerError;

/// One log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// When Docker received it (RFC 3339), when known.
    pub timestamp: Option<String>,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The line, without its newline.
    pub message: String,
}

/// Which output a frame belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Standard output (also a TTY's output).
    Stdout,
    /// Standard error.
    Stderr,
}

impl Output {
    fn name(self) -> &'static str {
        match self {
            Output::Stdout => "stdout",
            Output::Stderr => "stderr",
        }
    }
}

/// Lines longer than this are cut (the rest follows as further lines).
pub const MAX_LINE: usize = 256 * 1024;

#[derive(Debug, Default)]
struct Partial {
    timestamp: Option<String>,
    bytes: Vec<u8>,
}

/// Reassembles lines from frames, one partial line per stream. Frames carry timestamps at the
/// start of each piece when asked for (`timestamps=true`).
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: [Partial; 2],
    timestamps: bool,
}

impl LineSplitter {
    /// A splitter for frames with (`timestamps`) or without timestamps.
    pub fn new(timestamps: bool) -> LineSplitter {
        LineSplitter { partial: Default::default(), timestamps }
    }

    /// Takes one frame; complete lines go to `out`.
    pub fn push(&mut self, output: Output, mut frame: &[u8], out: &mut VecDeque<LogLine>) {
        let timestamps = self.timestamps;
        let partial = &mut self.partial[output as usize];
        // Every piece Docker sends starts with its timestamp; the first piece of a line gives
        // the line's, the others are dropped.
        let mut piece_start = true;
        while !frame.is_empty() {
            if timestamps && piece_start {
                let (ts, rest) = split_timestamp(frame);
                if partial.timestamp.is_none() {
                    partial.timestamp = ts;
                }
                frame = rest;
            }
            match frame.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    partial.bytes.extend_from_slice(&frame[..end]);
                    out.push_back(take_line(partial, output));
                    frame = &frame[end + 1..];
                    piece_start = true;
                }
                None => {
                    partial.bytes.extend_from_slice(frame);
                    if partial.bytes.len() >= MAX_LINE {
                        out.push_back(take_line(partial, output));
                    }
                    break;
                }
            }
        }
    }

    /// Takes one frame as bollard decoded it (a TTY's output counts as stdout; stdin is not
    /// output).
    pub fn push_frame(&mut self, frame: &LogOutput, out: &mut VecDeque<LogLine>) {
        match frame {
            LogOutput::StdErr { message } => self.push(Output::Stderr, message, out),
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                self.push(Output::Stdout, message, out)
            }
            LogOutput::StdIn { .. } => {}
        }
    }

    /// Flushes lines that never got their newline (the stream ended).
    pub fn finish(&mut self, out: &mut VecDeque<LogLine>) {
        for (i, output) in [Output::Stdout, Output::Stderr].into_iter().enumerate() {
            let partial = &mut self.partial[i];
            if !partial.bytes.is_empty() {
                out.push_back(take_line(partial, output));
            }
        }
    }
}

fn take_line(partial: &mut Partial, output: Output) -> LogLine {
    let mut bytes = std::mem::take(&mut partial.bytes);
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    LogLine {
        timestamp: partial.timestamp.take(),
        stream: output.name(),
        message: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// `2026-11-22T10:00:00.123456789Z rest` → (timestamp, rest). Without a timestamp, nothing is
/// taken.
fn split_timestamp(frame: &[u8]) -> (Option<String>, &[u8]) {
    if let Some(space) = frame.iter().take(40).position(|&b| b == b' ')
        && let Ok(text) = std::str::from_utf8(&frame[..space])
        && text.parse::<jiff::Timestamp>().is_ok()
    {
        return (Some(text.to_owned()), &frame[space + 1..]);
    }
    (None, frame)
}

/// A stream of log lines; ends when the container stops (with `follow`) or the logs are read.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogLine, DockerError>> + Send>>;

/// The last `tail` lines (all without), then, with `follow`, new lines as they come.
///
/// Docker's own `tail` counts log entries, and a line longer than 16 KiB is several entries: to
/// give exactly the last `tail` lines, the history is read first with a growing entry count
/// until it holds that many lines, and the lines before them are skipped.
pub fn stream(client: &Docker, id: &str, tail: Option<usize>, follow: bool) -> LogStream {
    let (client, id) = (client.clone(), id.to_owned());
    let plan = async move {
        let (entries, skip) = match tail {
            None => (None, 0),
            Some(n) => match entries_for(&client, &id, n).await {
                Ok((entries, lines)) => (Some(entries), lines.saturating_sub(n)),
                Err(e) => return futures_util::stream::iter([Err(e)]).boxed(),
            },
        };
        lines(&client, &id, entries, follow).skip(skip).boxed()
    };
    futures_util::stream::once(plan).flatten().boxed()
}

/// How many entries hold the last `n` lines, and how many lines those entries make.
async fn entries_for(client: &Docker, id: &str, n: usize) -> Result<(usize, usize), DockerError> {
    let mut entries = n.max(1);
    loop {
        let mut frames = client.logs(id, Some(options(Some(entries), false)));
        let (mut splitter, mut out, mut seen) = (LineSplitter::new(true), VecDeque::new(), 0usize);
        while let Some(frame) = frames.next().await {
            let frame = frame.map_err(DockerError::ReadLogs)?;
            seen += 1;
            splitter.push_frame(&frame, &mut out);
        }
        splitter.finish(&mut out);
        // Enough lines, or the whole history is in.
        if n == 0 || out.len() >= n || seen < entries {
            return Ok((entries, out.len()));
        }
        entries = entries.saturating_mul(2);
    }
}

fn options(tail: Option<usize>, follow: bool) -> bollard::query_parameters::LogsOptions {
    LogsOptionsBuilder::default()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .tail(&tail.map_or_else(|| "all".to_owned(), |n| n.to_string()))
        .build()
}

/// Lines of the last `entries` log entries (all without), then new ones with `follow`.
fn lines(client: &Docker, id: &str, entries: Option<usize>, follow: bool) -> LogStream {
    let frames = client.logs(id, Some(options(entries, follow))).boxed();
    let state =
        Lines { frames, splitter: LineSplitter::new(true), ready: VecDeque::new(), error: None, done: false };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(line) = s.ready.pop_front() {
                return Some((Ok(line), s));
            }
            // The error, if any, after the lines that came before it.
            if let Some(error) = s.error.take() {
                return Some((Err(error), s));
            }
            if s.done {
                return None;
            }
            match s.frames.next().await {
                Some(Ok(frame)) => s.splitter.push_frame(&frame, &mut s.ready),
                Some(Err(e)) => {
                    s.done = true;
                    s.splitter.finish(&mut s.ready);
                    s.error = Some(DockerError::ReadLogs(e));
                }
                None => {
                    s.done = true;
                    s.splitter.finish(&mut s.ready);
                }
            }
        }
    })
    .boxed()
}

struct Lines {
    frames: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    splitter: LineSplitter,
    ready: VecDeque<LogLine>,
    error: Option<DockerError>,
    done: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(frames: &[(Output, &str)], timestamps: bool) -> Vec<(String, &'static str, Option<String>)> {
        let mut s = LineSplitter::new(timestamps);
        let mut out = VecDeque::new();
        for (o, f) in frames {
            s.push(*o, f.as_bytes(), &mut out);
        }
        s.finish(&mut out);
        out.into_iter().map(|l| (l.message, l.stream, l.timestamp)).collect()
    }

    #[test]
    fn lines_span_frames_and_frames_hold_lines() {
        let got = lines(
            &[
                (Output::Stdout, "one\ntw"),
                (Output::Stderr, "err "),
                (Output::Stdout, "o\nthree"),
                (Output::Stderr, "line\n"),
                (Output::Stdout, "\n"),
                (Output::Stdout, "tail without newline"),
            ],
            false,
        );
        let messages: Vec<_> = got.iter().map(|(m, s, _)| (m.as_str(), *s)).collect();
        assert_eq!(
            messages,
            [
                ("one", "stdout"),
                ("two", "stdout"),
                ("err line", "stderr"),
                ("three", "stdout"),
                ("tail without newline", "stdout")
            ]
        );
    }

    #[test]
    fn pieces_of_a_long_line_lose_their_own_timestamps() {
        let got = lines(
            &[
                (Output::Stdout, "2026-11-22T10:00:00.000000001Z aaaa"),
                (Output::Stdout, "2026-11-22T10:00:00.000000002Z bbbb"),
                (Output::Stdout, "2026-11-22T10:00:00.000000003Z cc\n2026-11-22T10:00:01Z next\n"),
            ],
            true,
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, "aaaabbbbcc");
        assert_eq!(got[0].2.as_deref(), Some("2026-11-22T10:00:00.000000001Z"));
        assert_eq!(got[1].0, "next");
        assert_eq!(got[1].2.as_deref(), Some("2026-11-22T10:00:01Z"));
    }
}
