//! Running one command in a VM through its agent, with bounded output and a deadline: what
//! operators (and the quick start) use to look inside a guest.

use std::time::Duration;

use serde::Serialize;

use super::VmError;
use crate::guest::client::{AgentClient, CANCEL_GRACE, OutputBounds};
use crate::guest::messages::ExecRequest;

/// Each of stdout and stderr is cut at this many bytes; reading stops there (the exec is
/// cancelled and `truncated` set).
pub const MAX_EXEC_OUTPUT: usize = 1 << 20;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub timed_out: bool,
}

/// Runs `argv` through the VM's agent and collects its output, stopping it at `timeout`.
pub(super) async fn run(
    agent: &AgentClient,
    vm_id: &str,
    argv: Vec<String>,
    timeout: Duration,
) -> Result<ExecResult, VmError> {
    let unavailable = |e: crate::guest::client::GuestError| VmError::AgentUnavailable {
        id: vm_id.to_string(),
        reason: e.to_string(),
    };
    let stream = agent
        .exec(ExecRequest {
            argv,
            // The guest enforces it too; the host's bound below holds when it does not.
            timeout_sec: Some(timeout.as_secs().max(1)),
            ..ExecRequest::default()
        })
        .await
        .map_err(unavailable)?;
    let output = stream
        .collect_output(OutputBounds {
            max_bytes: MAX_EXEC_OUTPUT,
            deadline: timeout,
            grace: CANCEL_GRACE,
        })
        .await
        .map_err(unavailable)?;
    let status = output.status.as_ref();
    Ok(ExecResult {
        exit_code: status.and_then(|s| s.code),
        signal: status.and_then(|s| s.signal),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        truncated: output.truncated,
        timed_out: output.timed_out || status.is_some_and(|s| s.timed_out),
    })
}
