//! A minimal QMP client: one command at a time over the monitor's Unix socket. The `qapi`
//! crate would bring the whole generated QMP schema (a long compile) for the handful of
//! commands used here.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::VmmError;

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

const LINE_LIMIT: usize = 1 << 20;

impl Qmp {
    /// Connects (waiting up to `deadline` for the socket to appear) and negotiates capabilities.
    pub async fn connect(path: &Path, deadline: Duration) -> Result<Qmp, VmmError> {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(stream) => break stream,
                Err(e) if started.elapsed() >= deadline => {
                    return Err(VmmError::Control(format!(
                        "QMP socket {}: {e}",
                        path.display()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let (reader, writer) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(reader),
            writer,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(VmmError::Control(format!(
                "unexpected QMP greeting {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, VmmError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|e| VmmError::Control(format!("QMP read: {e}")))?;
        if n == 0 {
            return Err(VmmError::Control("QMP connection closed".into()));
        }
        if line.len() > LINE_LIMIT {
            return Err(VmmError::Control("QMP message too long".into()));
        }
        serde_json::from_str(&line).map_err(|e| VmmError::Control(format!("QMP JSON: {e}")))
    }

    /// Runs a command and returns its `return` value; events in between are skipped.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, VmmError> {
        let mut message = json!({ "execute": command });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let mut line = message.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| VmmError::Control(format!("QMP write: {e}")))?;
        self.reply(command).await
    }

    /// Hands QEMU an open descriptor under `name` (`getfd`, the descriptor riding along with the
    /// command as SCM_RIGHTS). QEMU then uses it as `fd:<name>` without opening anything itself:
    /// under `-runas` it could not open the daemon's files, and under `-sandbox spawn=deny` it
    /// cannot run `exec:` helpers.
    pub async fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), VmmError> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let mut line = json!({ "execute": "getfd", "arguments": { "fdname": name } }).to_string();
        line.push('\n');
        let stream: &UnixStream = self.writer.as_ref();
        let write_error = |e: std::io::Error| VmmError::Control(format!("QMP getfd: {e}"));
        let sent = loop {
            stream.writable().await.map_err(write_error)?;
            let attempt = stream.try_io(tokio::io::Interest::WRITABLE, || {
                let fds = [fd.as_raw_fd()];
                let rights = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(
                    stream.as_raw_fd(),
                    &[std::io::IoSlice::new(line.as_bytes())],
                    &rights,
                    MsgFlags::empty(),
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match attempt {
                Ok(sent) => break sent,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(write_error(e)),
            }
        };
        // The descriptor went with the first byte; the rest of a short write follows plainly.
        self.writer
            .write_all(&line.as_bytes()[sent..])
            .await
            .map_err(write_error)?;
        self.reply("getfd").await.map(|_| ())
    }

    /// Reads up to the answer to `command`; events in between are skipped.
    async fn reply(&mut self, command: &str) -> Result<Value, VmmError> {
        loop {
            let reply = self.read_message().await?;
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                return Err(VmmError::Qmp {
                    command: command.to_string(),
                    message: error["desc"]
                        .as_str()
                        .unwrap_or("unknown error")
                        .to_string(),
                });
            }
        }
    }

    /// The run state (`running`, `paused`, `inmigrate`, ...).
    pub async fn status(&mut self) -> Result<String, VmmError> {
        let status = self.execute("query-status", None).await?;
        Ok(status["status"].as_str().unwrap_or_default().to_string())
    }
}
