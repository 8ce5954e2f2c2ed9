//! One exec's side of the agent connection: its output as a stream of events, its stdin, and
//! the collected output.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::client::{GuestError, Pending, lock};
use super::messages::{ErrorBody, ExitStatus};
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

#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: Option<ExitStatus>,
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

    /// Collects everything until the exit.
    pub async fn collect_output(mut self) -> Result<ExecOutput, GuestError> {
        let mut output = ExecOutput::default();
        while let Some(event) = self.next().await {
            match event? {
                ExecEvent::Stdout(chunk) => output.stdout.extend_from_slice(&chunk),
                ExecEvent::Stderr(chunk) => output.stderr.extend_from_slice(&chunk),
                ExecEvent::Exit(status) => output.status = Some(status),
            }
        }
        Ok(output)
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
