//! One exec's side of the agent connection: its output as a stream of events, its stdin, and
//! the collected output.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::client::{GuestError, Pending, lock};
use super::messages::{ErrorBody, ExitStatus, Request};
use super::{Frame, FrameKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(ExitStatus),
}

/// A running exec: its output as a stream of events, ending with `Exit`.
pub struct ExecStream {
    pub id: u64,
    pub pid: u32,
    rx: mpsc::Receiver<Frame>,
    out: mpsc::Sender<Frame>,
    pending: Pending,
    finished: bool,
}

/// The host's own bounds on collecting an exec's output: a hostile guest may stream without
/// end, ignore a cancel, or never send its exit, and none of that may cost the host memory
/// or a task that waits forever.
#[derive(Debug, Clone, Copy)]
pub struct OutputBounds {
    /// Each of stdout and stderr is cut here; reading stops at the first byte past it.
    pub max_bytes: usize,
    /// When the exec is cancelled.
    pub deadline: Duration,
    /// How long after the cancel the exit is awaited before the host stops listening.
    pub grace: Duration,
}

/// Enough for any status or version command; what passes it is cut and flagged.
pub const DEFAULT_MAX_OUTPUT: usize = 1 << 20;
/// How long a cancelled exec gets to report its exit.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

impl OutputBounds {
    pub fn new(deadline: Duration) -> OutputBounds {
        OutputBounds {
            max_bytes: DEFAULT_MAX_OUTPUT,
            deadline,
            grace: CANCEL_GRACE,
        }
    }
}

#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// `None` when the exec was given up (cap or deadline) before it reported its exit.
    pub status: Option<ExitStatus>,
    /// An output passed `max_bytes`: the exec was cancelled and the host stopped reading.
    pub truncated: bool,
    /// The host's deadline passed: the exec was cancelled.
    pub timed_out: bool,
}

/// Request ids with this bit are never allocated by the client (it counts up from 1), so a
/// cancel sent under one needs no route: its answer is dropped by the reader.
const UNROUTED: u64 = 1 << 63;

fn append(buffer: &mut Vec<u8>, chunk: &[u8], max: usize) -> bool {
    let room = max.saturating_sub(buffer.len());
    buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
    chunk.len() > room
}

impl ExecStream {
    pub(super) fn new(
        id: u64,
        pid: u32,
        rx: mpsc::Receiver<Frame>,
        out: mpsc::Sender<Frame>,
        pending: Pending,
    ) -> ExecStream {
        ExecStream {
            id,
            pid,
            rx,
            out,
            pending,
            finished: false,
        }
    }

    /// Sends stdin (for execs started with `stdin: true`); an empty chunk closes it.
    pub async fn write_stdin(&self, chunk: Bytes) -> Result<(), GuestError> {
        self.out
            .send(Frame::new(FrameKind::Stdin, self.id, chunk))
            .await
            .map_err(|_| GuestError::Disconnected)
    }

    /// A handle that writes this exec's stdin while the stream itself is being read (the two
    /// cannot both borrow the stream in one `select!`).
    pub fn stdin(&self) -> ExecStdin {
        ExecStdin {
            id: self.id,
            out: self.out.clone(),
        }
    }

    /// [`ExecStream::cancel_nowait`] that is never skipped: with the outbound queue full (a
    /// stdin upload in flight fills it), a task sends the cancel once there is room. For a
    /// stream being abandoned (dropped), whose exec would otherwise run to its timeout.
    pub fn cancel_detached(&self) {
        let cancel = Request::Cancel {
            request_id: self.id,
        };
        let frame = Frame::json(FrameKind::Request, UNROUTED | self.id, &cancel);
        if let Err(mpsc::error::TrySendError::Full(frame)) = self.out.try_send(frame)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let out = self.out.clone();
            runtime.spawn(async move {
                let _ = out.send(frame).await;
            });
        }
    }

    /// Asks the agent to stop this exec without waiting for its answer: waiting would stop
    /// this stream from being drained, and a reader blocked on a full stream never delivers
    /// the answer. Best effort: with the outbound queue full the cancel is skipped, and the
    /// caller's deadline still ends the wait.
    pub fn cancel_nowait(&self) {
        let cancel = Request::Cancel {
            request_id: self.id,
        };
        let _ = self
            .out
            .try_send(Frame::json(FrameKind::Request, UNROUTED | self.id, &cancel));
    }

    /// Collects the output until the exit, within `bounds`: past `max_bytes` the exec is
    /// cancelled and reading stops at once; past `deadline` it is cancelled and its exit is
    /// awaited for `grace` more, then given up. Both are flagged in the output.
    pub async fn collect_output(mut self, bounds: OutputBounds) -> Result<ExecOutput, GuestError> {
        let mut output = ExecOutput::default();
        let deadline = tokio::time::sleep(bounds.deadline);
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                event = self.next() => event,
                () = &mut deadline => {
                    if output.timed_out {
                        // The guest ignored the cancel: stop listening.
                        break;
                    }
                    output.timed_out = true;
                    self.cancel_nowait();
                    deadline.as_mut().reset(tokio::time::Instant::now() + bounds.grace);
                    continue;
                }
            };
            let over = match event {
                None => break,
                Some(event) => match event? {
                    ExecEvent::Stdout(chunk) => {
                        append(&mut output.stdout, &chunk, bounds.max_bytes)
                    }
                    ExecEvent::Stderr(chunk) => {
                        append(&mut output.stderr, &chunk, bounds.max_bytes)
                    }
                    ExecEvent::Exit(status) => {
                        output.status = Some(status);
                        false
                    }
                },
            };
            if over {
                output.truncated = true;
                self.cancel_nowait();
                break;
            }
        }
        Ok(output)
    }
}

/// Writes one exec's stdin; see [`ExecStream::stdin`].
#[derive(Clone)]
pub struct ExecStdin {
    id: u64,
    out: mpsc::Sender<Frame>,
}

impl ExecStdin {
    /// Sends a chunk (at most a frame's payload); an empty chunk closes stdin. Waits while the
    /// connection's outbound queue is full, which is the back-pressure of an upload.
    pub async fn write(&self, chunk: Bytes) -> Result<(), GuestError> {
        self.out
            .send(Frame::new(FrameKind::Stdin, self.id, chunk))
            .await
            .map_err(|_| GuestError::Disconnected)
    }
}

impl Drop for ExecStream {
    fn drop(&mut self) {
        lock(&self.pending).remove(&self.id);
    }
}

impl Stream for ExecStream {
    type Item = Result<ExecEvent, GuestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let frame = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                self.finished = true;
                return Poll::Ready(Some(Err(GuestError::Disconnected)));
            }
            Poll::Ready(Some(frame)) => frame,
        };
        let event = match frame.kind {
            FrameKind::Stdout => Ok(ExecEvent::Stdout(frame.payload)),
            FrameKind::Stderr => Ok(ExecEvent::Stderr(frame.payload)),
            FrameKind::Exit => {
                self.finished = true;
                frame
                    .parse()
                    .map(ExecEvent::Exit)
                    .map_err(|e| GuestError::Protocol(e.to_string()))
            }
            FrameKind::Error => {
                self.finished = true;
                Err(frame
                    .parse::<ErrorBody>()
                    .map(GuestError::Agent)
                    .unwrap_or_else(|e| GuestError::Protocol(e.to_string())))
            }
            other => Err(GuestError::Protocol(format!(
                "unexpected {other:?} in an exec stream"
            ))),
        };
        Poll::Ready(Some(event))
    }
}

#[cfg(test)]
#[path = "exec_stream_tests.rs"]
mod tests;
