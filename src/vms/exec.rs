//! Running one command in a VM through its agent, with bounded output and a deadline: what
//! operators (and the quick start) use to look inside a guest.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use super::{VmError, VmManager};
use crate::guest::client::ExecEvent;
use crate::guest::messages::ExecRequest;

/// Each of stdout and stderr is cut at this many bytes.
pub const MAX_EXEC_OUTPUT: usize = 1 << 20;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub timed_out: bool,
}

fn append(buffer: &mut Vec<u8>, chunk: &[u8], truncated: &mut bool) {
    let room = MAX_EXEC_OUTPUT.saturating_sub(buffer.len());
    if chunk.len() > room {
        *truncated = true;
    }
    buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

impl VmManager {
    /// Runs `argv` in the VM and collects its output, stopping it at `timeout`.
    pub async fn exec(
        self: &Arc<Self>,
        vm_id: &str,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecResult, VmError> {
        let agent = self.agent(vm_id).await?;
        self.touch(vm_id);
        let unavailable = |e: crate::guest::client::GuestError| VmError::AgentUnavailable {
            id: vm_id.to_string(),
            reason: e.to_string(),
        };
        let mut stream = agent
            .exec(ExecRequest {
                argv,
                ..ExecRequest::default()
            })
            .await
            .map_err(unavailable)?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut result = ExecResult {
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            timed_out: false,
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                _ = &mut deadline, if !result.timed_out => {
                    result.timed_out = true;
                    agent.cancel(stream.id).await.map_err(unavailable)?;
                    continue;
                }
            };
            match event {
                None => break,
                Some(Err(e)) => return Err(unavailable(e)),
                Some(Ok(ExecEvent::Stdout(chunk))) => {
                    append(&mut stdout, &chunk, &mut result.truncated)
                }
                Some(Ok(ExecEvent::Stderr(chunk))) => {
                    append(&mut stderr, &chunk, &mut result.truncated)
                }
                Some(Ok(ExecEvent::Exit(status))) => {
                    result.exit_code = status.code;
                    result.signal = status.signal;
                }
            }
        }
        self.touch(vm_id);
        result.stdout = String::from_utf8_lossy(&stdout).into_owned();
        result.stderr = String::from_utf8_lossy(&stderr).into_owned();
        Ok(result)
    }
}
