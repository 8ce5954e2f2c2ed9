//! The CLI's process of one prompt: started through the agent as the CLI user in the
//! conversation's directory, its stdout translated line by line into the run's events, its
//! stderr passed on (and shown to the translator, where some CLIs say a session is gone), until
//! it exits, is cancelled, or the guest stops answering.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use super::MAX_RESPONSE_BYTES;
use super::PromptError;
use super::events::PromptEvent;
use super::lines::{LineSplitter, MAX_LINE_BYTES};
use super::run::PromptRun;
use crate::guest::client::{AgentClient, ExecEvent, GuestError};
use crate::guest::messages::ExecRequest;
use crate::model::Provider;
use crate::providers::{CliCommand, Outcome};
use crate::vms::{CliEnvironment, VmError};

/// The most stderr lines passed on as `metadata`; the rest are counted.
const MAX_STDERR_LINES: usize = 200;
/// How long the host waits for the guest to end a CLI past its timeout or a cancel.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How a run ended.
pub(super) enum Ending {
    Completed { usage: Option<serde_json::Value> },
    Failed { code: String, message: String },
    Cancelled,
}

/// What the run gathered for its record.
#[derive(Default)]
pub(super) struct Gathered {
    pub(super) response: String,
    pub(super) truncated: bool,
    pub(super) first_content: Option<Duration>,
    pub(super) exit_code: Option<i32>,
    pub(super) vm_id: Option<String>,
    /// The CLI's own session id, as its output told it.
    pub(super) session_id: Option<String>,
}

impl Gathered {
    pub(super) fn observe(&mut self, event: &PromptEvent, started: Instant) {
        if let PromptEvent::Content { text } = event {
            self.first_content.get_or_insert_with(|| started.elapsed());
            let room = MAX_RESPONSE_BYTES.saturating_sub(self.response.len());
            if text.len() > room {
                self.truncated = true;
                let mut cut = room;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                self.response.push_str(&text[..cut]);
            } else {
                self.response.push_str(text);
            }
        }
    }
}

/// One CLI process to run.
pub(super) struct CliRun<'a> {
    pub run: &'a Arc<PromptRun>,
    pub agent: &'a AgentClient,
    pub provider: Provider,
    pub command: &'a CliCommand,
    pub cli: &'a CliEnvironment,
    /// The directory in the guest it runs in.
    pub cwd: &'a str,
    /// The CLI session it continues.
    pub resume: Option<&'a str>,
    pub timeout: Duration,
    pub started: Instant,
    pub vm_id: &'a str,
}

/// How the CLI ended: whether it was cancelled, whether it timed out, and its own account.
pub(super) struct Ended {
    pub cancelled: bool,
    pub timed_out: bool,
    pub outcome: Outcome,
}

/// Runs the CLI and streams its output into the run's log; how it ended, or the run's ending
/// when it could not start.
pub(super) async fn stream_cli(
    spec: CliRun<'_>,
    gathered: &mut Gathered,
) -> Result<Result<Ended, Ending>, PromptError> {
    let CliRun {
        run,
        agent,
        provider,
        command,
        cli,
        cwd,
        resume,
        timeout,
        started,
        vm_id,
    } = spec;
    let unavailable = |e: GuestError| {
        PromptError::Vm(VmError::AgentUnavailable {
            id: vm_id.to_string(),
            reason: e.to_string(),
        })
    };
    let mut env = cli.env();
    env.extend(command.env.clone());
    let exec = agent
        .exec(ExecRequest {
            argv: command.argv.clone(),
            env,
            cwd: Some(cwd.to_string()),
            uid: cli.owner.map(|(uid, _)| uid),
            gid: cli.owner.map(|(_, gid)| gid),
            timeout_sec: Some(timeout.as_secs().max(1)),
            ..ExecRequest::default()
        })
        .await;
    let mut stream = match exec {
        Ok(stream) => stream,
        Err(GuestError::Agent(body)) if body.code == "spawn_failed" => {
            return Ok(Err(Ending::Failed {
                code: "cli_not_found".into(),
                message: format!("the {} CLI cannot start: {}", provider, body.message),
            }));
        }
        Err(e) => return Err(unavailable(e)),
    };
    let mut translator = provider.cli().translator(resume);
    let mut stdout = LineSplitter::new(MAX_LINE_BYTES);
    let mut stderr = LineSplitter::new(MAX_LINE_BYTES);
    let mut stderr_lines = 0usize;
    let mut cancelling = false;
    let mut timed_out = false;
    let emit = |events: Vec<PromptEvent>, gathered: &mut Gathered| {
        for event in events {
            gathered.observe(&event, started);
            run.log.push(event);
        }
    };
    // The guest enforces the timeout; the host stops listening `CANCEL_GRACE` after it, or
    // after a cancel, even if the guest never answers.
    let give_up = tokio::time::sleep(timeout + CANCEL_GRACE);
    tokio::pin!(give_up);
    loop {
        let event = tokio::select! {
            _ = run.cancel.cancelled(), if !cancelling => {
                cancelling = true;
                // Not awaited: its answer would queue behind the output nobody reads then.
                stream.cancel_nowait();
                give_up.as_mut().reset(tokio::time::Instant::now() + CANCEL_GRACE);
                continue;
            }
            _ = &mut give_up => {
                stream.cancel_nowait();
                tracing::warn!(prompt = %run.id, "the guest did not end the CLI in time; the host stops listening");
                timed_out = !cancelling;
                break;
            }
            event = stream.next() => event,
        };
        match event {
            None => break,
            Some(Ok(ExecEvent::Stdout(chunk))) => {
                for line in stdout.push(&chunk) {
                    emit(translator.line(&line), gathered);
                }
            }
            Some(Ok(ExecEvent::Stderr(chunk))) => {
                for line in stderr.push(&chunk) {
                    translator.stderr_line(&line);
                    stderr_lines += 1;
                    if stderr_lines <= MAX_STDERR_LINES && !line.trim().is_empty() {
                        run.log
                            .push(PromptEvent::metadata("stderr", json!({ "line": line })));
                    }
                }
            }
            Some(Ok(ExecEvent::Exit(status))) => {
                gathered.exit_code = status.code;
                timed_out = status.timed_out;
            }
            Some(Err(e)) => return Err(unavailable(e)),
        }
    }
    if let Some(line) = stdout.finish() {
        emit(translator.line(&line), gathered);
    }
    if let Some(line) = stderr.finish() {
        translator.stderr_line(&line);
    }
    let outcome = translator.finish(gathered.exit_code);
    gathered.session_id = translator.session_id();
    Ok(Ok(Ended {
        cancelled: cancelling,
        timed_out,
        outcome,
    }))
}
