//! The host side of the agent channel: connect (with a deadline and backoff), authenticate,
//! and multiplex requests over one connection. Exec output arrives as an async stream of chunks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

pub use super::exec_stream::{
    CANCEL_GRACE, DEFAULT_MAX_OUTPUT, ExecEvent, ExecOutput, ExecStdin, ExecStream, OutputBounds,
};
use super::messages::{
    ErrorBody, ExecRequest, FileStamp, HealthReport, Hello, HelloOk, NetworkConfig,
    ReadFileRequest, Request, Response, WatchFileRequest, WriteFileRequest,
};
use super::{Frame, FrameCodec, FrameKind};

/// How many frames of one request may wait for its consumer before the connection slows down.
const PER_REQUEST_QUEUE: usize = 64;
const OUTBOUND_QUEUE: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub enum AgentEndpoint {
    /// QEMU's virtio-serial chardev socket.
    Unix(PathBuf),
    /// Firecracker's vsock UDS; the host writes `CONNECT <port>\n` and reads `OK <n>\n`.
    HybridVsock { uds: PathBuf, port: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("agent did not answer within {waited:?}: {last}")]
    Unreachable { waited: Duration, last: String },
    #[error("agent refused the connection: {}: {}", .0.code, .0.message)]
    Refused(ErrorBody),
    #[error("agent error {}: {}", .0.code, .0.message)]
    Agent(ErrorBody),
    #[error("agent connection closed")]
    Disconnected,
    #[error("agent protocol error: {0}")]
    Protocol(String),
}

pub(super) type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Frame>>>>;

pub struct AgentClient {
    out: mpsc::Sender<Frame>,
    pending: Pending,
    next_id: AtomicU64,
    hello: HelloOk,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub(super) fn lock(
    pending: &Pending,
) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Frame>>> {
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl AgentClient {
    /// Connects and authenticates, retrying with backoff until `deadline` has passed.
    pub async fn connect(
        endpoint: &AgentEndpoint,
        token: &str,
        deadline: Duration,
    ) -> Result<AgentClient, GuestError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let attempt =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::try_connect(endpoint, token)).await;
            let last = match attempt {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(GuestError::Refused(body))) => return Err(GuestError::Refused(body)),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "handshake timed out".to_string(),
            };
            if started.elapsed() + backoff > deadline {
                return Err(GuestError::Unreachable {
                    waited: started.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn try_connect(endpoint: &AgentEndpoint, token: &str) -> Result<AgentClient, GuestError> {
        let io = |e: std::io::Error| GuestError::Protocol(e.to_string());
        let mut stream = match endpoint {
            AgentEndpoint::Unix(path) => UnixStream::connect(path).await.map_err(io)?,
            AgentEndpoint::HybridVsock { uds, port } => {
                let mut stream = UnixStream::connect(uds).await.map_err(io)?;
                stream
                    .write_all(format!("CONNECT {port}\n").as_bytes())
                    .await
                    .map_err(io)?;
                let line = read_line(&mut stream).await.map_err(io)?;
                if !line.starts_with("OK ") {
                    return Err(GuestError::Protocol(format!(
                        "vsock CONNECT answered {line:?}"
                    )));
                }
                stream
            }
        };
        let nonce = u64::from_le_bytes(random_bytes());
        let hello = Hello {
            token: token.to_string(),
            nonce,
            host_time_ms: Some(now_ms()),
        };
        let mut encoded = bytes::BytesMut::new();
        tokio_util::codec::Encoder::encode(
            &mut FrameCodec::default(),
            Frame::json(FrameKind::Hello, 0, &hello),
            &mut encoded,
        )
        .map_err(|e| GuestError::Protocol(e.to_string()))?;
        stream.write_all(&encoded).await.map_err(io)?;
        let (reader, writer) = stream.into_split();
        // Until the answer to this Hello, skip whatever a previous connection left in the pipe.
        let mut frames = FramedRead::new(reader, FrameCodec { resync: true });
        let hello_ok = loop {
            let frame = frames
                .next()
                .await
                .ok_or(GuestError::Disconnected)?
                .map_err(|e| GuestError::Protocol(e.to_string()))?;
            match frame.kind {
                FrameKind::HelloOk => {
                    let ok: HelloOk = frame
                        .parse()
                        .map_err(|e| GuestError::Protocol(e.to_string()))?;
                    if ok.nonce == nonce {
                        break ok;
                    }
                }
                FrameKind::Error if frame.request_id == 0 => {
                    let body: ErrorBody = frame
                        .parse()
                        .map_err(|e| GuestError::Protocol(e.to_string()))?;
                    if body.code == "unauthenticated" {
                        return Err(GuestError::Refused(body));
                    }
                }
                _ => {}
            }
        };
        frames.decoder_mut().resync = false;
        Ok(Self::start(frames, writer, hello_ok))
    }

    fn start(
        mut frames: FramedRead<tokio::net::unix::OwnedReadHalf, FrameCodec>,
        writer: tokio::net::unix::OwnedWriteHalf,
        hello: HelloOk,
    ) -> AgentClient {
        let pending: Pending = Arc::default();
        let (out, writer_task) = crate::guest::frame::spawn_writer(writer, OUTBOUND_QUEUE);
        let routes = pending.clone();
        let reader_task = tokio::spawn(async move {
            while let Some(Ok(frame)) = frames.next().await {
                let route = lock(&routes).get(&frame.request_id).cloned();
                if let Some(route) = route {
                    let _ = route.send(frame).await;
                }
            }
            // Dropping every route ends every waiting request with `Disconnected`.
            lock(&routes).clear();
        });
        AgentClient {
            out,
            pending,
            next_id: AtomicU64::new(1),
            hello,
            tasks: vec![writer_task, reader_task],
        }
    }

    /// The agent's answer to this connection's Hello: boot id, and work the previous
    /// connection left interrupted.
    pub fn hello(&self) -> &HelloOk {
        &self.hello
    }

    pub fn is_connected(&self) -> bool {
        !self.out.is_closed() && self.tasks.iter().all(|t| !t.is_finished())
    }

    async fn send_request(
        &self,
        request: &Request,
        queue: usize,
    ) -> Result<(u64, mpsc::Receiver<Frame>), GuestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(queue);
        lock(&self.pending).insert(id, tx);
        if self
            .out
            .send(Frame::json(FrameKind::Request, id, request))
            .await
            .is_err()
        {
            lock(&self.pending).remove(&id);
            return Err(GuestError::Disconnected);
        }
        Ok((id, rx))
    }

    async fn call(&self, request: Request) -> Result<Response, GuestError> {
        let (id, mut rx) = self.send_request(&request, 1).await?;
        // A caller may drop this future (a select, a timeout); the route must go with it.
        let _route = RouteGuard {
            pending: &self.pending,
            id,
        };
        let frame = rx.recv().await;
        response_of(frame.ok_or(GuestError::Disconnected)?)
    }

    pub async fn health(&self) -> Result<HealthReport, GuestError> {
        match self.call(Request::Health).await? {
            Response::Health(report) => Ok(report),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn exec(&self, request: ExecRequest) -> Result<ExecStream, GuestError> {
        let (id, mut rx) = self
            .send_request(&Request::Exec(request), PER_REQUEST_QUEUE)
            .await?;
        let first = rx.recv().await.ok_or(GuestError::Disconnected)?;
        match response_of(first) {
            Ok(Response::ExecStarted { pid }) => Ok(ExecStream::new(
                id,
                pid,
                rx,
                self.out.clone(),
                self.pending.clone(),
            )),
            Ok(other) => Err(unexpected(&other)),
            Err(e) => {
                lock(&self.pending).remove(&id);
                Err(e)
            }
        }
    }

    pub async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), GuestError> {
        self.write_file_owned(path, data, mode, None).await
    }

    /// Writes atomically, owned by `owner` (uid, gid) when given.
    pub async fn write_file_owned(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<(), GuestError> {
        let request = Request::WriteFile(WriteFileRequest {
            path: path.to_string(),
            data_base64: STANDARD.encode(data),
            mode,
            uid: owner.map(|(uid, _)| uid),
            gid: owner.map(|(_, gid)| gid),
        });
        self.call(request).await.map(|_| ())
    }

    /// Waits (at most `timeout`) for `path` to exist in a version other than `since`.
    /// `Ok(None)` when it did not change in time.
    pub async fn watch_file(
        &self,
        path: &str,
        max_bytes: u64,
        since: Option<FileStamp>,
        timeout: Duration,
    ) -> Result<Option<(Vec<u8>, FileStamp)>, GuestError> {
        let request = Request::WatchFile(WatchFileRequest {
            path: path.to_string(),
            max_bytes,
            since,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        });
        match self.call(request).await {
            Ok(Response::WatchedFile { data_base64, stamp }) => STANDARD
                .decode(data_base64.as_bytes())
                .map(|data| Some((data, stamp)))
                .map_err(|e| GuestError::Protocol(format!("file data: {e}"))),
            Ok(other) => Err(unexpected(&other)),
            Err(GuestError::Agent(body)) if body.code == "timed_out" => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn read_file(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, GuestError> {
        let request = Request::ReadFile(ReadFileRequest {
            path: path.to_string(),
            max_bytes,
        });
        match self.call(request).await? {
            Response::File { data_base64, .. } => STANDARD
                .decode(data_base64.as_bytes())
                .map_err(|e| GuestError::Protocol(format!("file data: {e}"))),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn configure_network(&self, config: NetworkConfig) -> Result<(), GuestError> {
        self.call(Request::ConfigureNetwork(config))
            .await
            .map(|_| ())
    }

    pub async fn set_clock(&self, unix_ms: i64) -> Result<(), GuestError> {
        self.call(Request::SetClock { unix_ms }).await.map(|_| ())
    }

    /// Gives a golden-snapshot clone its own token (for later connections) and fresh entropy.
    pub async fn set_identity(&self, token: &str, seed: &[u8]) -> Result<(), GuestError> {
        use base64::Engine;
        let request = Request::SetIdentity {
            token: token.to_string(),
            seed_base64: base64::engine::general_purpose::STANDARD.encode(seed),
        };
        match self.call(request).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn cancel(&self, exec_id: u64) -> Result<(), GuestError> {
        self.call(Request::Cancel {
            request_id: exec_id,
        })
        .await
        .map(|_| ())
    }

    /// Sends raw frames; for tests of the agent's defences.
    pub async fn send_raw(&self, frame: Frame) -> Result<(), GuestError> {
        self.out
            .send(frame)
            .await
            .map_err(|_| GuestError::Disconnected)
    }
}

/// Removes a request's route from the pending map when its caller is done or gone.
struct RouteGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for RouteGuard<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

fn response_of(frame: Frame) -> Result<Response, GuestError> {
    match frame.kind {
        FrameKind::Response => frame
            .parse()
            .map_err(|e| GuestError::Protocol(e.to_string())),
        FrameKind::Error => Err(GuestError::Agent(
            frame
                .parse()
                .map_err(|e| GuestError::Protocol(e.to_string()))?,
        )),
        other => Err(GuestError::Protocol(format!(
            "expected a response, got {other:?}"
        ))),
    }
}

fn unexpected(response: &Response) -> GuestError {
    GuestError::Protocol(format!("unexpected response {response:?}"))
}

fn random_bytes() -> [u8; 8] {
    let mut bytes = [0u8; 8];
    // A nonce only needs to differ between connections; the time is a fine fallback.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = (now_ms() as u64).to_le_bytes();
    }
    bytes
}

async fn read_line(stream: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' || line.len() > 64 {
            return Ok(String::from_utf8_lossy(&line).to_string());
        }
        line.push(byte);
    }
}
