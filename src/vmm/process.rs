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

/// The last bytes a process wrote, bounded. Kept as bytes and decoded only at the end: a cut
/// at a byte count can fall inside a multi-byte character, where slicing a `String` panics
/// (and a panic here lost the exit watch: a running VM was marked failed, its process orphaned).
#[derive(Default)]
struct StderrTail {
    bytes: Vec<u8>,
}

impl StderrTail {
    const KEEP: usize = 4096;

    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > 2 * Self::KEEP {
            self.bytes.drain(..self.bytes.len() - Self::KEEP);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// The only variable a hypervisor gets (the jailer looks up nothing; QEMU needs none).
const HYPERVISOR_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Spawns `command` with its stdout going to `stdout`, and returns its pid and the watch on its
/// exit.
pub fn spawn_supervised(
    mut command: Command,
    binary: &str,
    stdout: Stdio,
) -> Result<(u32, watch::Receiver<Option<ExitInfo>>), VmmError> {
    // A hypervisor runs the guest's devices: it gets none of the daemon's environment, which
    // holds the daemon's secrets (admin token, service keys) when they come from an env file.
    command
        .env_clear()
        .env("PATH", HYPERVISOR_PATH)
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
            let mut tail = StderrTail::default();
            if let Some(mut stderr) = stderr {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tail.push(&buf[..n]);
                }
            }
            tail.text()
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

/// Watches a process that is not our child (found again after a daemon restart). Its pidfd
/// becomes readable when it exits; how it exited cannot be known.
pub fn watch_adopted(pid: u32) -> Result<watch::Receiver<Option<ExitInfo>>, VmmError> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let io = |source: std::io::Error| VmmError::Io {
        path: format!("/proc/{pid}").into(),
        source,
    };
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid as nix::libc::pid_t, 0) };
    if fd < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by pidfd_open and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns `pidfd`, which stays open and unchanged until it is dropped.
    let readable = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| io(e.into_parts().1))?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let _ = readable.readable().await;
        let _ = tx.send(Some(ExitInfo::unknown()));
    });
    Ok(rx)
}

/// The process's command line, as its arguments.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).to_string())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> Command {
        let mut command = Command::new("sleep");
        command.arg("1000");
        command
    }

    #[tokio::test]
    async fn a_child_killed_by_a_signal_is_reported() {
        let (pid, exited) = spawn_supervised(sleeper(), "sleep", Stdio::null()).unwrap();
        assert!(exited.borrow().is_none());
        let info = kill_and_wait(pid, exited).await;
        assert_eq!(info.signal, Some(9));
        assert_eq!(info.to_string(), "killed by signal 9");
    }

    #[test]
    fn the_stderr_tail_is_bounded_and_cut_anywhere() {
        let mut tail = StderrTail::default();
        // 3-byte characters: a cut at `len - 4096` never falls on a character boundary.
        for _ in 0..10 {
            tail.push("€".repeat(1000).as_bytes());
        }
        assert!(tail.bytes.len() <= 2 * StderrTail::KEEP);
        assert!(tail.text().ends_with("€€€"));
    }

    #[tokio::test]
    async fn multi_byte_stderr_across_the_tail_boundary_still_publishes_the_exit() {
        let mut command = Command::new("sh");
        // 9,000 bytes of 3-byte characters, more than the tail keeps, then a distinctive exit.
        command
            .arg("-c")
            .arg("printf '€%.0s' $(seq 3000) >&2; exit 3");
        let (_pid, exited) = spawn_supervised(command, "sh", Stdio::null()).unwrap();
        let info = tokio::time::timeout(std::time::Duration::from_secs(60), wait_exited(exited))
            .await
            .expect("the exit is published");
        // A panic in the supervising task drops the sender: the exit would read as unknown.
        assert_eq!(info.code, Some(3), "{info}");
    }

    #[tokio::test]
    async fn a_hypervisor_gets_none_of_the_daemon_environment() {
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new("env");
        command.env("MC_ADMIN_TOKEN", "set-on-the-command");
        let (_pid, exited) =
            spawn_supervised(command, "env", Stdio::from(out.reopen().unwrap())).unwrap();
        assert_eq!(wait_exited(exited).await.code, Some(0));
        let seen = std::fs::read_to_string(out.path()).unwrap();
        // The test runner's own environment (CARGO_*, HOME, ...) is the daemon's here.
        assert!(std::env::vars().count() > 1);
        assert_eq!(seen.trim(), format!("PATH={HYPERVISOR_PATH}"));
    }

    #[tokio::test]
    async fn an_adopted_process_exit_is_seen_through_its_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = child.id();
        // Another test's spawn in this process can leave the new child briefly without its
        // command line; give exec a moment.
        let mut args = Vec::new();
        for _ in 0..100 {
            args = cmdline(pid).unwrap_or_default();
            if !args.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(args.contains(&"1000".to_string()), "{args:?}");
        let mut exited = watch_adopted(pid).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            exited.borrow().is_none(),
            "a live process reported as exited"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), exited.changed())
            .await
            .expect("pidfd fires")
            .unwrap();
        assert_eq!(*exited.borrow(), Some(ExitInfo::unknown()));
        assert!(watch_adopted(pid).is_err(), "a gone pid cannot be watched");
    }
}
