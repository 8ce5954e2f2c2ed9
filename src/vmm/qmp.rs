//! A minimal QMP client: one command at a time over the monitor's Unix socket. The `qapi`
//! crate would bring the whole generated QMP schema (a long compile) for the handful of
//! commands used here.

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
