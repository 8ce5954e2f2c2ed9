//! The host's calls on a user's workspace: each runs the agent's file helper as an exec, as
//! the workspace's owner, and streams file bodies through the exec's stdin and stdout without
//! holding a whole file.
//!
//! Every exec this starts is cancelled when the call (or a download's body) is abandoned, so a
//! helper never waits on its timeout with a half-written temporary file. The timeouts given to
//! the agent are only a backstop for a helper that hangs: a transfer is paced by the HTTP client
//! on the other side, and 100 MiB over a slow TCG virtio-serial channel to a slow client may
//! take many minutes.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};

use super::{
    Entry, FILES_SUBCOMMAND, GetHeader, PutReply, WireError, WorkspaceError, check_relative,
};
use crate::guest::client::{
    AgentClient, CANCEL_GRACE, ExecEvent, ExecOutput, ExecStream, GuestError, OutputBounds,
};
use crate::guest::messages::{AGENT_SELF, ExecRequest, ExitStatus};

/// A user's workspace in the guest: `root` is an absolute guest path, and every op runs as
/// `uid`/`gid` (the CLI user, who owns the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub root: String,
    pub uid: u32,
    pub gid: u32,
}

pub enum Download {
    /// `body` yields exactly `size` bytes, or ends with an error.
    File {
        size: u64,
        body: BoxStream<'static, Result<Bytes, WorkspaceError>>,
    },
    Directory {
        entries: Vec<Entry>,
        truncated: bool,
    },
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Download::File { size, .. } => f.debug_struct("File").field("size", size).finish(),
            Download::Directory { entries, truncated } => f
                .debug_struct("Directory")
                .field("entries", &entries.len())
                .field("truncated", truncated)
                .finish(),
        }
    }
}

/// Stdin goes in chunks of this size, well under a frame's cap.
const STDIN_CHUNK: usize = 64 * 1024;
/// Ops with short answers (resolve, rm, a directory listing's end).
const QUICK_TIMEOUT: Duration = Duration::from_secs(300);
/// The agent's backstop for a transfer (see the module's doc).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);
/// Enough for a path, an error line or a size.
const SMALL_OUTPUT: usize = 64 * 1024;
/// A listing of `MAX_LISTING` entries with long names.
const MAX_HEADER: usize = 8 << 20;

/// An exec of the helper, cancelled when dropped before its exit was seen.
struct Helper {
    stream: ExecStream,
    exited: bool,
    stderr: Vec<u8>,
}

impl Drop for Helper {
    fn drop(&mut self) {
        if !self.exited {
            self.stream.cancel_detached();
        }
    }
}

/// The exec of one op of the helper, as the workspace's owner.
fn helper_request(
    ws: &Workspace,
    args: &[&str],
    stdin: bool,
    timeout: Duration,
) -> Result<ExecRequest, WorkspaceError> {
    if !ws.root.starts_with('/') || ws.root.contains('\0') {
        return Err(WorkspaceError::BadPath(format!(
            "the workspace root {:?} is not an absolute path",
            ws.root
        )));
    }
    let mut argv = vec![AGENT_SELF.to_string(), FILES_SUBCOMMAND.to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    Ok(ExecRequest {
        argv,
        // The agent's own directory may be closed to the user.
        cwd: Some("/".into()),
        uid: Some(ws.uid),
        gid: Some(ws.gid),
        stdin,
        timeout_sec: Some(timeout.as_secs()),
        ..ExecRequest::default()
    })
}

impl Helper {
    async fn start(
        agent: &AgentClient,
        ws: &Workspace,
        args: &[&str],
        stdin: bool,
        timeout: Duration,
    ) -> Result<Helper, WorkspaceError> {
        let request = helper_request(ws, args, stdin, timeout)?;
        Ok(Helper {
            stream: agent.exec(request).await?,
            exited: false,
            stderr: Vec::new(),
        })
    }

    /// The next stdout chunk, or the exit; stderr is kept (bounded) for the error.
    async fn next(&mut self) -> Result<Step, WorkspaceError> {
        loop {
            match self.stream.next().await {
                None => return Err(GuestError::Disconnected.into()),
                Some(Ok(ExecEvent::Stdout(chunk))) => return Ok(Step::Stdout(chunk)),
                Some(Ok(ExecEvent::Stderr(chunk))) => {
                    let room = SMALL_OUTPUT.saturating_sub(self.stderr.len());
                    self.stderr
                        .extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Some(Ok(ExecEvent::Exit(status))) => {
                    self.exited = true;
                    return Ok(Step::Exit(status));
                }
                Some(Err(e)) => {
                    // The helper's own error line explains more than what followed it (the
                    // agent refusing stdin for an exec that has already ended).
                    self.exited = true;
                    return Err(wire_error(&self.stderr).unwrap_or(e.into()));
                }
            }
        }
    }

    /// Cancels the exec and waits (briefly) for it to end, so that its clean-up is done when
    /// the caller hears `error`.
    async fn abandon(mut self, error: WorkspaceError) -> WorkspaceError {
        self.stream.cancel_detached();
        let _ = tokio::time::timeout(CANCEL_GRACE, async {
            while let Ok(Step::Stdout(_)) = self.next().await {}
        })
        .await;
        self.exited = true;
        error
    }
}

enum Step {
    Stdout(Bytes),
    Exit(ExitStatus),
}

fn wire_error(stderr: &[u8]) -> Option<WorkspaceError> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    serde_json::from_str::<WireError>(line)
        .ok()
        .map(WorkspaceError::from_wire)
}

/// The error of a helper that did not succeed.
fn failure(status: Option<&ExitStatus>, stderr: &[u8]) -> WorkspaceError {
    if let Some(error) = wire_error(stderr) {
        return error;
    }
    let text = String::from_utf8_lossy(&stderr[..stderr.len().min(1024)]);
    WorkspaceError::Failed(format!(
        "the file helper failed ({status:?}): {}",
        text.trim()
    ))
}

fn succeeded(status: &ExitStatus) -> bool {
    status.code == Some(0)
}

/// Runs an op whose answer is small, and returns its stdout.
async fn run_small(
    agent: &AgentClient,
    ws: &Workspace,
    args: &[&str],
) -> Result<Vec<u8>, WorkspaceError> {
    let request = helper_request(ws, args, false, QUICK_TIMEOUT)?;
    // collect_output cancels the exec itself when it passes its bounds.
    let output: ExecOutput = agent
        .exec(request)
        .await?
        .collect_output(OutputBounds {
            max_bytes: SMALL_OUTPUT,
            deadline: QUICK_TIMEOUT + CANCEL_GRACE,
            grace: CANCEL_GRACE,
        })
        .await?;
    match &output.status {
        Some(status) if succeeded(status) && !output.truncated => Ok(output.stdout),
        status => Err(failure(status.as_ref(), &output.stderr)),
    }
}

/// The absolute guest path of directory `rel` beneath the root (created, with its parents and
/// the root itself, as the workspace's owner when `create`): a prompt's or an exec's cwd.
pub async fn resolve_dir(
    agent: &AgentClient,
    ws: &Workspace,
    rel: &str,
    create: bool,
) -> Result<String, WorkspaceError> {
    check_relative(rel)?;
    let mut args = vec!["resolve", ws.root.as_str(), rel];
    if create {
        args.push("--create");
    }
    let stdout = run_small(agent, ws, &args).await?;
    let path = String::from_utf8(stdout)
        .map_err(|_| WorkspaceError::Failed("the resolved path is not UTF-8".into()))?;
    Ok(path.trim_end_matches('\n').to_string())
}

/// Writes `body` to `rel` atomically (parents created), with permission bits `mode & 0o777`,
/// owned by the workspace's user. The body goes out as it comes, each chunk awaited; past
/// `max_bytes` nothing more is sent, the helper is cancelled (its temporary file removed, the
/// target untouched) and the answer is `TooLarge`. Returns the size written.
pub async fn upload<S, E>(
    agent: &AgentClient,
    ws: &Workspace,
    rel: &str,
    mode: u32,
    max_bytes: u64,
    mut body: S,
) -> Result<u64, WorkspaceError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    check_relative(rel)?;
    let mode = format!("{:o}", mode & 0o777);
    let max = max_bytes.to_string();
    let args = ["put", ws.root.as_str(), rel, mode.as_str(), max.as_str()];
    let mut helper = Helper::start(agent, ws, &args, true, TRANSFER_TIMEOUT).await?;
    let stdin = helper.stream.stdin();
    let mut sent = 0u64;
    let mut body_done = false;
    let mut stdout = Vec::new();
    let status = loop {
        tokio::select! {
            step = helper.next() => match step? {
                Step::Stdout(chunk) => {
                    let room = SMALL_OUTPUT.saturating_sub(stdout.len());
                    stdout.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Step::Exit(status) => break status,
            },
            chunk = body.next(), if !body_done => match chunk {
                Some(Ok(bytes)) => {
                    if sent + bytes.len() as u64 > max_bytes {
                        return Err(helper.abandon(WorkspaceError::TooLarge { max: max_bytes }).await);
                    }
                    sent += bytes.len() as u64;
                    let mut rest = bytes;
                    while !rest.is_empty() {
                        let piece = rest.split_to(rest.len().min(STDIN_CHUNK));
                        stdin.write(piece).await?;
                    }
                }
                Some(Err(e)) => {
                    let error = WorkspaceError::Failed(format!("the upload broke off: {e}"));
                    return Err(helper.abandon(error).await);
                }
                None => {
                    stdin.write(Bytes::new()).await?;
                    body_done = true;
                }
            },
        }
    };
    if !succeeded(&status) {
        return Err(failure(Some(&status), &helper.stderr));
    }
    if !body_done {
        return Err(WorkspaceError::Failed(
            "the file helper finished before the upload did".into(),
        ));
    }
    let reply: PutReply = serde_json::from_slice(&stdout)
        .map_err(|e| WorkspaceError::Failed(format!("the file helper's answer: {e}")))?;
    if reply.size != sent {
        return Err(WorkspaceError::Failed(format!(
            "sent {sent} bytes but the guest wrote {}",
            reply.size
        )));
    }
    Ok(reply.size)
}

/// A file as a stream of its bytes (in the exec's chunks, as they arrive), or a directory's
/// listing.
pub async fn download(
    agent: &AgentClient,
    ws: &Workspace,
    rel: &str,
) -> Result<Download, WorkspaceError> {
    check_relative(rel)?;
    let args = ["get", ws.root.as_str(), rel];
    let mut helper = Helper::start(agent, ws, &args, false, TRANSFER_TIMEOUT).await?;
    let mut head = BytesMut::new();
    let newline = loop {
        match helper.next().await? {
            Step::Stdout(chunk) => {
                let searched = head.len();
                head.extend_from_slice(&chunk);
                if let Some(at) = head[searched..].iter().position(|b| *b == b'\n') {
                    break searched + at;
                }
                if head.len() > MAX_HEADER {
                    let error =
                        WorkspaceError::Failed("the file helper's header is too long".into());
                    return Err(helper.abandon(error).await);
                }
            }
            Step::Exit(status) => return Err(failure(Some(&status), &helper.stderr)),
        }
    };
    let line = head.split_to(newline + 1);
    let header: GetHeader = serde_json::from_slice(&line)
        .map_err(|e| WorkspaceError::Failed(format!("the file helper's header: {e}")))?;
    match header {
        GetHeader::Dir { entries, truncated } => match helper.next().await? {
            Step::Exit(status) if succeeded(&status) => {
                Ok(Download::Directory { entries, truncated })
            }
            Step::Exit(status) => Err(failure(Some(&status), &helper.stderr)),
            Step::Stdout(_) => Err(helper
                .abandon(WorkspaceError::Failed(
                    "the file helper wrote past its listing".into(),
                ))
                .await),
        },
        GetHeader::File { size } => Ok(Download::File {
            size,
            body: file_body(helper, size, head.freeze()),
        }),
    }
}

/// The rest of a `get`: `first` (what came with the header), then each stdout chunk, checked
/// against `size`; the helper's exit ends it.
fn file_body(
    helper: Helper,
    size: u64,
    first: Bytes,
) -> BoxStream<'static, Result<Bytes, WorkspaceError>> {
    struct State {
        helper: Option<Helper>,
        first: Option<Bytes>,
        received: u64,
        size: u64,
    }
    let state = State {
        helper: Some(helper),
        first: (!first.is_empty()).then_some(first),
        received: 0,
        size,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let chunk = match state.first.take() {
            Some(chunk) => Ok(Step::Stdout(chunk)),
            None => state.helper.as_mut()?.next().await,
        };
        let item = match chunk {
            Ok(Step::Stdout(chunk)) => {
                state.received += chunk.len() as u64;
                if state.received > state.size {
                    state.helper = None;
                    Err(WorkspaceError::Failed(
                        "the file grew while it was read".into(),
                    ))
                } else {
                    Ok(chunk)
                }
            }
            Ok(Step::Exit(status)) => {
                let helper = state.helper.take()?;
                if succeeded(&status) && state.received == state.size {
                    return None;
                }
                Err(if succeeded(&status) {
                    WorkspaceError::Failed("the file shrank while it was read".into())
                } else {
                    failure(Some(&status), &helper.stderr)
                })
            }
            Err(e) => {
                state.helper = None;
                Err(e)
            }
        };
        Some((item, state))
    })
    .boxed()
}

/// Removes a file or a symlink (never what it points to), or a directory with everything in
/// it. The root itself is refused.
pub async fn remove(agent: &AgentClient, ws: &Workspace, rel: &str) -> Result<(), WorkspaceError> {
    check_relative(rel)?;
    run_small(agent, ws, &["rm", ws.root.as_str(), rel])
        .await
        .map(|_| ())
}
