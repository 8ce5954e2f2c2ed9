//! `exec`: runs a command in its own process group (or session, under a PTY), streams its
//! output in chunks, and kills the whole group on cancel or timeout.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::{Notify, mpsc};

use super::AgentError;
use crate::guest::messages::{AGENT_SELF, ExecRequest, ExitStatus};
use crate::guest::{Frame, FrameKind};

const CHUNK: usize = 32 * 1024;
/// After SIGTERM, how long the group has before SIGKILL.
const TERM_GRACE: Duration = Duration::from_millis(500);
/// After the process exits, how long its output may still drain (a background child can hold
/// the pipe open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

enum Ending {
    Exited(std::process::ExitStatus),
    TimedOut,
    Cancelled,
}

pub async fn run(
    id: u64,
    request: ExecRequest,
    out: &mpsc::Sender<Frame>,
    stdin: Option<mpsc::Receiver<Bytes>>,
    cancel: Arc<Notify>,
) -> Result<ExitStatus, AgentError> {
    let Some(program) = request.argv.first() else {
        return Err(AgentError::request("bad_request", "argv is empty"));
    };
    // The agent's own binary: the workspace file helper, as the exec's user like any exec.
    let mut command = if program == AGENT_SELF {
        Command::new(std::env::current_exe().map_err(|e| {
            AgentError::request("spawn_failed", format!("the agent's own binary: {e}"))
        })?)
    } else {
        Command::new(program)
    };
    command
        .args(&request.argv[1..])
        .env_clear()
        .env("PATH", DEFAULT_PATH);
    command.env(
        "HOME",
        if request.uid.unwrap_or(0) == 0 {
            "/root"
        } else {
            "/tmp"
        },
    );
    command.envs(&request.env);
    if let Some(cwd) = &request.cwd {
        command.current_dir(cwd);
    }
    if let Some(uid) = request.uid {
        command.uid(uid);
    }
    if let Some(gid) = request.gid.or(request.uid) {
        command.gid(gid);
    }
    let pty = match request.pty {
        Some(size) => Some(attach_pty(&mut command, size)?),
        None => {
            command.process_group(0);
            command
                .stdin(if request.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };
    let mut child = command
        .spawn()
        .map_err(|e| AgentError::request("spawn_failed", format!("{program}: {e}")))?;
    drop(command);
    let pgid = child.id().map(|pid| Pid::from_raw(pid as i32));
    let _ = out
        .send(Frame::json(
            FrameKind::Response,
            id,
            &crate::guest::messages::Response::ExecStarted {
                pid: child.id().unwrap_or(0),
            },
        ))
        .await;

    let mut pumps = tokio::task::JoinSet::new();
    match pty {
        Some(master) => {
            let reader =
                tokio::fs::File::from_std(std::fs::File::from(master.try_clone().map_err(io)?));
            pumps.spawn(pump(reader, FrameKind::Stdout, id, out.clone()));
            if let Some(stdin) = stdin {
                let writer = tokio::fs::File::from_std(std::fs::File::from(master));
                tokio::spawn(feed(writer, stdin));
            }
        }
        None => {
            if let Some(stdout) = child.stdout.take() {
                pumps.spawn(pump(stdout, FrameKind::Stdout, id, out.clone()));
            }
            if let Some(stderr) = child.stderr.take() {
                pumps.spawn(pump(stderr, FrameKind::Stderr, id, out.clone()));
            }
            if let (Some(pipe), Some(stdin)) = (child.stdin.take(), stdin) {
                tokio::spawn(feed(pipe, stdin));
            }
        }
    }

    let timeout = request
        .timeout_sec
        .map(Duration::from_secs)
        .unwrap_or(Duration::MAX);
    let ending = tokio::select! {
        status = child.wait() => Ending::Exited(status.map_err(io)?),
        () = tokio::time::sleep(timeout) => Ending::TimedOut,
        () = cancel.notified() => Ending::Cancelled,
    };
    let status = match ending {
        Ending::Exited(status) => status,
        Ending::TimedOut | Ending::Cancelled => {
            if let Some(pgid) = pgid {
                let _ = killpg(pgid, Signal::SIGTERM);
                if tokio::time::timeout(TERM_GRACE, child.wait())
                    .await
                    .is_err()
                {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
            }
            child.wait().await.map_err(io)?
        }
    };
    let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
        while pumps.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        pumps.abort_all();
    }
    Ok(ExitStatus {
        code: status.code(),
        signal: status.signal(),
        timed_out: matches!(ending, Ending::TimedOut),
        cancelled: matches!(ending, Ending::Cancelled),
    })
}

fn io(e: std::io::Error) -> AgentError {
    AgentError::request("io", e.to_string())
}

/// Opens a PTY, makes its slave the child's controlling terminal and stdio, and returns the
/// master.
fn attach_pty(
    command: &mut Command,
    size: crate::guest::messages::PtySize,
) -> Result<OwnedFd, AgentError> {
    let winsize = nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&winsize), None)
        .map_err(|e| AgentError::request("io", format!("openpty: {e}")))?;
    let slave = pty.slave;
    command
        .stdin(Stdio::from(slave.try_clone().map_err(io)?))
        .stdout(Stdio::from(slave.try_clone().map_err(io)?))
        .stderr(Stdio::from(slave));
    // SAFETY: between fork and exec only async-signal-safe calls are made: setsid(2) and
    // ioctl(2) on the child's own stdin.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc_ioctl_set_ctty(std::io::stdin().as_raw_fd()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(pty.master)
}

nix::ioctl_write_int_bad!(tiocsctty, nix::libc::TIOCSCTTY);

fn libc_ioctl_set_ctty(fd: i32) -> i32 {
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal) and `fd` is the child's stdin,
    // open on the PTY slave.
    match unsafe { tiocsctty(fd, 0) } {
        Ok(_) => 0,
        Err(_) => -1,
    }
}

/// Copies a child's output into frames until EOF (a PTY master reports EIO once the child and
/// its terminal are gone; that is EOF too).
async fn pump(
    mut source: impl AsyncRead + Unpin,
    kind: FrameKind,
    id: u64,
    out: mpsc::Sender<Frame>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match source.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out
                    .send(Frame::new(kind, id, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
}

/// Writes stdin chunks from the host; an empty chunk closes stdin.
async fn feed(mut sink: impl tokio::io::AsyncWrite + Unpin, mut chunks: mpsc::Receiver<Bytes>) {
    while let Some(chunk) = chunks.recv().await {
        if chunk.is_empty() || sink.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = sink.shutdown().await;
}
