//! One host session: authenticate, then dispatch requests concurrently, each answered on the
//! shared writer under its request id.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::FramedRead;

use super::channel::{OnEof, Reader, Writer};
use super::{AgentError, exec, files, system};
use crate::guest::messages::{ErrorBody, Hello, HelloOk, InterruptedWork, Request, Response};
use crate::guest::{Frame, FrameCodec, FrameKind};

/// Frames waiting for the channel; a full queue slows the producers (exec output) down.
const OUTBOUND_QUEUE: usize = 64;
const STDIN_QUEUE: usize = 16;
const WRITER_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

pub enum SessionEnd {
    /// The host was not there (a virtio-serial port with no host reads EOF at once).
    Idle,
    Disconnected,
    Malformed(String),
    Unauthenticated,
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEnd::Idle => f.write_str("no host"),
            SessionEnd::Disconnected => f.write_str("host disconnected"),
            SessionEnd::Malformed(reason) => write!(f, "malformed frame: {reason}"),
            SessionEnd::Unauthenticated => f.write_str("host failed to authenticate"),
        }
    }
}

/// Work in flight: what `cancel` and the end of a session need to reach it.
struct Running {
    op: &'static str,
    session: u64,
    cancel: Arc<Notify>,
    stdin: Option<mpsc::Sender<Bytes>>,
}

pub struct Agent {
    /// Replaced by `SetIdentity` in clones of a golden snapshot.
    token: std::sync::RwLock<String>,
    boot_id: String,
    running: Mutex<HashMap<u64, Running>>,
    interrupted: Mutex<Vec<InterruptedWork>>,
    sessions: std::sync::atomic::AtomicU64,
}

fn same_token(a: &str, b: &str) -> bool {
    // Constant-time for equal lengths; the length of a per-VM token is not a secret.
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Agent {
    pub fn new(token: String) -> Agent {
        Agent {
            token: std::sync::RwLock::new(token),
            boot_id: system::boot_id(),
            running: Mutex::default(),
            interrupted: Mutex::default(),
            sessions: Default::default(),
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Running>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Serves one session until the host goes away or misbehaves.
    pub async fn serve(
        self: &Arc<Self>,
        reader: Reader,
        writer: Writer,
        on_eof: OnEof,
    ) -> SessionEnd {
        let mut frames = FramedRead::new(reader, FrameCodec::default());
        let (out, writer_task) = crate::guest::frame::spawn_writer(writer, OUTBOUND_QUEUE);
        let mut session: Option<u64> = None;
        let mut got_anything = false;
        let end = loop {
            let frame = match frames.next().await {
                None => match (on_eof, session) {
                    (OnEof::Poll(pause), Some(_)) => {
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    _ if got_anything => break SessionEnd::Disconnected,
                    _ => break SessionEnd::Idle,
                },
                Some(Err(e)) => {
                    let _ = out.send(error_frame(0, "bad_frame", &e.to_string())).await;
                    break SessionEnd::Malformed(e.to_string());
                }
                Some(Ok(frame)) => frame,
            };
            got_anything = true;
            match (frame.kind, session) {
                (FrameKind::Hello, _) => {
                    // A new Hello on a live session is a new host (after a resume the serial port
                    // never saw a disconnect): whatever the old one started is interrupted.
                    if let Some(old) = session.take() {
                        self.interrupt_session(old, "the host reconnected");
                    }
                    match self.authenticate(&frame).await {
                        Ok(hello_ok) => {
                            let id = self
                                .sessions
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                                + 1;
                            session = Some(id);
                            let _ = out
                                .send(Frame::json(FrameKind::HelloOk, frame.request_id, &hello_ok))
                                .await;
                        }
                        Err(body) => {
                            let _ = out
                                .send(Frame::json(FrameKind::Error, frame.request_id, &body))
                                .await;
                            break SessionEnd::Unauthenticated;
                        }
                    }
                }
                (_, None) => {
                    let _ = out
                        .send(error_frame(
                            frame.request_id,
                            "unauthenticated",
                            "send Hello with the VM's token first",
                        ))
                        .await;
                    break SessionEnd::Unauthenticated;
                }
                (FrameKind::Request, Some(id)) => self.dispatch(id, frame, out.clone()),
                (FrameKind::Stdin, Some(_)) => self.forward_stdin(frame, &out).await,
                (kind, Some(_)) => {
                    let _ = out
                        .send(error_frame(
                            frame.request_id,
                            "bad_frame",
                            &format!("a host may not send {kind:?}"),
                        ))
                        .await;
                }
            }
        };
        if let Some(id) = session {
            self.interrupt_session(id, &end.to_string());
        }
        drop(out);
        // Let the last frames (an error, say) go out, but a writer stuck on a port whose host
        // has gone is not waited for.
        let mut writer_task = writer_task;
        if tokio::time::timeout(WRITER_DRAIN, &mut writer_task)
            .await
            .is_err()
        {
            writer_task.abort();
        }
        end
    }

    async fn authenticate(&self, frame: &Frame) -> Result<HelloOk, ErrorBody> {
        let hello: Hello = frame
            .parse()
            .map_err(|e| ErrorBody::new("bad_frame", e.to_string()))?;
        let expected = self.token.read().unwrap_or_else(|p| p.into_inner()).clone();
        if !same_token(&hello.token, &expected) {
            return Err(ErrorBody::new("unauthenticated", "wrong token"));
        }
        let clock_error = match hello.host_time_ms.map(system::sync_clock) {
            Some(Err(e)) => {
                let message = e.body().message;
                eprintln!("vm-agent: cannot set the clock from the host: {message}");
                Some(message)
            }
            _ => None,
        };
        // After the clock: the report's figures are read as of now.
        let health = match system::health(&self.boot_id).await {
            Ok(health) => Some(health),
            Err(e) => {
                eprintln!("vm-agent: no health for the greeting: {}", e.body().message);
                None
            }
        };
        let interrupted =
            std::mem::take(&mut *self.interrupted.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(HelloOk {
            nonce: hello.nonce,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            boot_id: self.boot_id.clone(),
            interrupted,
            health,
            clock_error,
        })
    }

    /// Stops the work a session started and records it for the next `HelloOk`.
    fn interrupt_session(&self, session: u64, reason: &str) {
        let mut running = self.lock_running();
        let ids: Vec<u64> = running
            .iter()
            .filter(|(_, r)| r.session == session)
            .map(|(id, _)| *id)
            .collect();
        let mut interrupted = self.interrupted.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            if let Some(work) = running.remove(&id) {
                work.cancel.notify_one();
                interrupted.push(InterruptedWork {
                    request_id: id,
                    op: work.op.to_string(),
                    reason: reason.to_string(),
                });
            }
        }
    }

    async fn forward_stdin(&self, frame: Frame, out: &mpsc::Sender<Frame>) {
        let sender = self
            .lock_running()
            .get(&frame.request_id)
            .and_then(|r| r.stdin.clone());
        match sender {
            Some(sender) => {
                let _ = sender.send(frame.payload).await;
            }
            None => {
                let _ = out
                    .send(error_frame(
                        frame.request_id,
                        "not_found",
                        "no running exec takes stdin under that id",
                    ))
                    .await;
            }
        }
    }

    fn dispatch(self: &Arc<Self>, session: u64, frame: Frame, out: mpsc::Sender<Frame>) {
        let id = frame.request_id;
        let request: Request = match frame.parse() {
            Ok(r) => r,
            Err(e) => {
                tokio::spawn(async move {
                    let _ = out
                        .send(error_frame(id, "bad_request", &e.to_string()))
                        .await;
                });
                return;
            }
        };
        let agent = self.clone();
        tokio::spawn(async move {
            let result = agent.handle(session, id, request, &out).await;
            let frame = match result {
                Ok(Some(response)) => Frame::json(FrameKind::Response, id, &response),
                Ok(None) => return,
                Err(e) => Frame::json(FrameKind::Error, id, &e.body()),
            };
            let _ = out.send(frame).await;
        });
    }

    /// Runs one request. Exec streams its own frames and returns `None`.
    async fn handle(
        self: &Arc<Self>,
        session: u64,
        id: u64,
        request: Request,
        out: &mpsc::Sender<Frame>,
    ) -> Result<Option<Response>, AgentError> {
        match request {
            Request::Health => Ok(Some(Response::Health(system::health(&self.boot_id).await?))),
            Request::Exec(exec_request) => {
                let cancel = Arc::new(Notify::new());
                let (stdin_tx, stdin_rx) = if exec_request.stdin {
                    let (tx, rx) = mpsc::channel(STDIN_QUEUE);
                    (Some(tx), Some(rx))
                } else {
                    (None, None)
                };
                {
                    let mut running = self.lock_running();
                    if running.contains_key(&id) {
                        return Err(AgentError::request(
                            "bad_request",
                            "request id already in use",
                        ));
                    }
                    running.insert(
                        id,
                        Running {
                            op: "exec",
                            session,
                            cancel: cancel.clone(),
                            stdin: stdin_tx,
                        },
                    );
                }
                let result = exec::run(id, exec_request, out, stdin_rx, cancel).await;
                let still_ours = self.lock_running().remove(&id).is_some();
                match result {
                    // An interrupted exec was already reported; its host is gone.
                    Ok(status) if still_ours => {
                        let _ = out.send(Frame::json(FrameKind::Exit, id, &status)).await;
                        Ok(None)
                    }
                    Ok(_) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Request::WriteFile(request) => {
                files::write(request).await.map(|()| Some(Response::Done))
            }
            Request::ReadFile(request) => files::read(request).await.map(Some),
            Request::WatchFile(request) => files::watch(request).await.map(Some),
            Request::ConfigureNetwork(config) => system::configure_network(config)
                .await
                .map(|()| Some(Response::Done)),
            Request::SetClock { unix_ms } => {
                system::set_clock(unix_ms).map(|()| Some(Response::Done))
            }
            Request::SetIdentity { token, seed_base64 } => {
                if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(AgentError::request(
                        "bad_request",
                        "the token must be non-empty and alphanumeric",
                    ));
                }
                system::mix_entropy(&seed_base64).await?;
                *self.token.write().unwrap_or_else(|p| p.into_inner()) = token;
                Ok(Some(Response::Done))
            }
            Request::Cancel { request_id } => {
                let cancel = self
                    .lock_running()
                    .get(&request_id)
                    .map(|r| r.cancel.clone());
                match cancel {
                    Some(cancel) => {
                        cancel.notify_one();
                        Ok(Some(Response::Done))
                    }
                    None => Err(AgentError::request(
                        "not_found",
                        format!("no running request {request_id}"),
                    )),
                }
            }
        }
    }
}

fn error_frame(request_id: u64, code: &str, message: &str) -> Frame {
    Frame::json(FrameKind::Error, request_id, &ErrorBody::new(code, message))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use bytes::BytesMut;
    use tokio::io::{AsyncRead, ReadBuf};
    use tokio_util::codec::Encoder;

    use super::*;

    /// A port that reads the given chunks in order; `None` reads as EOF once, as a
    /// virtio-serial port does while the guest believes no host is connected.
    struct ScriptedPort(VecDeque<Option<Vec<u8>>>);

    impl AsyncRead for ScriptedPort {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(Some(chunk)) = self.0.pop_front() {
                buf.put_slice(&chunk);
            }
            Poll::Ready(Ok(()))
        }
    }

    fn bytes(frame: Frame) -> Vec<u8> {
        let mut buf = BytesMut::new();
        FrameCodec::default().encode(frame, &mut buf).unwrap();
        buf.to_vec()
    }

    /// The race after a resume: the new host's `Hello` arrives, then the port reads EOF
    /// (the news that the host connected comes later), then the host's first request.
    async fn first_answer_after_a_stale_eof(on_eof: OnEof) -> Option<FrameKind> {
        let hello = Hello {
            token: "sessiontoken".into(),
            nonce: 7,
            host_time_ms: None,
        };
        let port = ScriptedPort(VecDeque::from([
            Some(bytes(Frame::json(FrameKind::Hello, 1, &hello))),
            None,
            Some(bytes(Frame::json(FrameKind::Request, 2, &Request::Health))),
        ]));
        let (host, guest) = tokio::io::duplex(1 << 16);
        let agent = Arc::new(Agent::new("sessiontoken".into()));
        let served =
            tokio::spawn(async move { agent.serve(Box::new(port), Box::new(guest), on_eof).await });
        let mut from_agent = FramedRead::new(host, FrameCodec::default());
        let mut answer = None;
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_secs(2), from_agent.next()).await
        {
            if frame.request_id == 2 {
                answer = Some(frame.kind);
                break;
            }
        }
        served.abort();
        answer
    }

    #[tokio::test]
    async fn a_serial_port_keeps_the_session_across_a_stale_eof() {
        assert_eq!(
            first_answer_after_a_stale_eof(OnEof::Poll(Duration::from_millis(5))).await,
            Some(FrameKind::Response)
        );
        // Where EOF means the host has gone, the request is left to the next session, which
        // refuses it until a Hello.
        assert_eq!(
            first_answer_after_a_stale_eof(OnEof::EndSession).await,
            None
        );
    }
}
