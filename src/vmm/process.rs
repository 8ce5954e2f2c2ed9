//! Supervising a hypervisor process: spawn it in its own process group (so it outlives a daemon
//! restart and our signals do not reach it), and publish its exit on a watch channel.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use tokio::process::Command;
use tokio::sync::watch;

use super::VmmError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub fn unknown() -> ExitInfo {
        ExitInfo {
            code: None,
            signal: None,
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => f.write_str("exit status unknown"),
        }
    }
}

/// Spawns `command` with its stdout going to `stdout`, and returns its pid and the watch on its
/// exit.
pub fn spawn_supervised(
    mut command: Command,
    binary: &str,
    stdout: Stdio,
) -> Result<(u32, watch::Receiver<Option<ExitInfo>>), VmmError> {
    command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let mut child = command.spawn().map_err(|source| VmmError::Spawn {
        binary: binary.to_string(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    let (tx, rx) = watch::channel(None);
    let stderr = child.stderr.take();
    let label = binary.to_string();
    tokio::spawn(async move {
        // Keep the last lines of the hypervisor's stderr for the log: they explain a failed start.
        let tail = async {
            let mut tail = String::new();
            if let Some(mut stderr) = stderr {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tail.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if tail.len() > 8192 {
                        tail.drain(..tail.len() - 4096);
                    }
                }
            }
            tail
        };
        let (status, tail) = tokio::join!(child.wait(), tail);
        let info = match status {
            Ok(status) => ExitInfo {
                code: status.code(),
                signal: status.signal(),
            },
            Err(_) => ExitInfo::unknown(),
        };
        if !tail.trim().is_empty() {
            tracing::warn!(pid, binary = %label, %info, stderr = %tail.trim(), "hypervisor exited");
        }
        let _ = tx.send(Some(info));
    });
    Ok((pid, rx))
}

/// Resolves when the watched process has exited.
pub async fn wait_exited(mut exited: watch::Receiver<Option<ExitInfo>>) -> ExitInfo {
    loop {
        if let Some(info) = exited.borrow().clone() {
            return info;
        }
        if exited.changed().await.is_err() {
            return ExitInfo::unknown();
        }
    }
}

/// SIGKILLs `pid` unless it has already exited, and waits for the exit.
pub async fn kill_and_wait(pid: u32, exited: watch::Receiver<Option<ExitInfo>>) -> ExitInfo {
    if exited.borrow().is_none() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    wait_exited(exited).await
}
