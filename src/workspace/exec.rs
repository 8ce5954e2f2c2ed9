//! A command in the user's workspace (`POST /api/users/:userId/exec`): `git clone`, a test run,
//! a build step. It runs as the CLI user in a directory under the workspace root, and its output
//! streams out as it comes, as SSE frames of the same framing as a prompt's: `started`, then
//! `stdout` and `stderr` chunks, then `exit` (or `error`). A pump task moves the agent's frames
//! into a small queue the response reads; when the client goes away the queue closes and the
//! command is cancelled, as it is by `POST /api/exec/:execId/cancel` or its timeout.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::guest::client::{ExecEvent, ExecStream};

/// Frames waiting for the client; a slow client slows the pump, which slows the guest.
pub(super) const FRAME_QUEUE: usize = 32;
/// How long the host keeps listening after a cancel or the timeout for the guest's exit.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// The body of `POST /api/users/:userId/exec`: a shell command line, or an argv (exactly one of
/// them).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecSpec {
    /// A command line, run by `/bin/sh -c`.
    pub command: Option<String>,
    /// A program and its arguments, run as they are.
    pub argv: Option<Vec<String>>,
    /// Relative to the workspace root; the root when absent.
    #[serde(default)]
    pub cwd: String,
    /// The command's time limit in seconds (at most [`MAX_TIMEOUT_SECS`]), capped at the
    /// configured maximum; the configured default when absent.
    #[serde(default, deserialize_with = "crate::model::whole_number")]
    pub timeout_sec: Option<u64>,
}

/// The longest `timeoutSec` an exec may ask (a day); the configured maximum then caps it.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

// By hand: exactly one of `command` (not blank) and `argv` (its program named) is given.
impl utoipa::PartialSchema for ExecSpec {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AdditionalProperties, AllOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder,
            OneOfBuilder, SchemaFormat, SchemaType, Type,
        };
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let null = || ObjectBuilder::new().schema_type(Type::Null);
        let fields = ObjectBuilder::new()
            .property(
                "command",
                ObjectBuilder::new()
                    .schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
                    .description(Some("A command line, run by `/bin/sh -c`")),
            )
            .property(
                "argv",
                ArrayBuilder::new()
                    .schema_type(SchemaType::Array(vec![Type::Array, Type::Null]))
                    .items(string())
                    .description(Some("A program and its arguments, run as they are")),
            )
            .property(
                "cwd",
                string()
                    .pattern(Some(crate::guest::workspace::RELATIVE_PATTERN))
                    .description(Some(
                        "Relative to the workspace root, without a `..` component; the root \
                         when absent",
                    )),
            )
            .property(
                "timeoutSec",
                ObjectBuilder::new()
                    .schema_type(SchemaType::Array(vec![Type::Integer, Type::Null]))
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(1))
                    .maximum(Some(MAX_TIMEOUT_SECS as f64))
                    .description(Some(
                        "The time limit in seconds, capped at the configured maximum; the \
                         configured default when absent",
                    )),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        let command_line = ObjectBuilder::new()
            .property(
                "command",
                string().pattern(Some(
                    r"[^\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]",
                )),
            )
            .property("argv", null())
            .required("command");
        let program = ObjectBuilder::new()
            .property(
                "argv",
                ArrayBuilder::new()
                    .schema_type(Type::Array)
                    .min_items(Some(1))
                    .prefix_items([string().min_length(Some(1))])
                    .items(string()),
            )
            .property("command", null())
            .required("argv");
        AllOfBuilder::new()
            .item(fields)
            .item(OneOfBuilder::new().item(command_line).item(program))
            .description(Some(
                "A command in the workspace: a shell command line, or an argv (exactly one)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ExecSpec {}

impl ExecSpec {
    /// The argv to run: `command` through `/bin/sh -c`, or `argv` itself; exactly one is given.
    pub(super) fn argv(&self) -> Result<Vec<String>, &'static str> {
        match (&self.command, &self.argv) {
            (Some(command), None) if !command.trim().is_empty() => {
                Ok(vec!["/bin/sh".into(), "-c".into(), command.clone()])
            }
            (None, Some(argv)) if argv.first().is_some_and(|a| !a.is_empty()) => Ok(argv.clone()),
            (Some(_), Some(_)) => Err("give command or argv, not both"),
            _ => Err("a non-empty command or argv is required"),
        }
    }
}

/// One SSE frame of an exec: its `data`, whose `type` is the frame's `event`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ExecFrame {
    #[schema(rename_all = "camelCase")] // as serde's rename_all_fields
    Started {
        exec_id: String,
        cwd: String,
    },
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    #[schema(rename_all = "camelCase")] // as serde's rename_all_fields
    Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
        cancelled: bool,
        duration_ms: u64,
    },
    Error {
        code: String,
        message: String,
    },
}

impl ExecFrame {
    pub fn name(&self) -> &'static str {
        match self {
            ExecFrame::Started { .. } => "started",
            ExecFrame::Stdout { .. } => "stdout",
            ExecFrame::Stderr { .. } => "stderr",
            ExecFrame::Exit { .. } => "exit",
            ExecFrame::Error { .. } => "error",
        }
    }
}

/// A running exec, as its route holds it: its frames, and its cancel.
pub struct ExecRun {
    pub id: String,
    pub frames: mpsc::Receiver<ExecFrame>,
    pub cancel: CancellationToken,
}

/// Text of a byte stream cut anywhere: a UTF-8 sequence split between two chunks waits for
/// its end; bytes that are not UTF-8 become U+FFFD.
#[derive(Default)]
pub(super) struct Utf8Carry {
    held: Vec<u8>,
}

impl Utf8Carry {
    pub(super) fn push(&mut self, chunk: &[u8]) -> String {
        self.held.extend_from_slice(chunk);
        let keep = match std::str::from_utf8(&self.held) {
            Ok(_) => 0,
            // An incomplete sequence at the end: keep it for the next chunk.
            Err(e) if e.error_len().is_none() => self.held.len() - e.valid_up_to(),
            Err(_) => 0,
        };
        let rest = self.held.split_off(self.held.len() - keep);
        let text = String::from_utf8_lossy(&self.held).into_owned();
        self.held = rest;
        text
    }

    pub(super) fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.held).into_owned();
        self.held.clear();
        text
    }
}

/// Moves the exec's output into `frames` until it exits, is cancelled, or the client leaves.
/// `_use` keeps the user busy (no idle hibernation) for as long as the command runs.
pub(super) async fn pump(
    mut stream: ExecStream,
    frames: mpsc::Sender<ExecFrame>,
    cancel: CancellationToken,
    timeout: Duration,
    _use: super::busy::Use,
) {
    let started = Instant::now();
    let (mut stdout, mut stderr) = (Utf8Carry::default(), Utf8Carry::default());
    let mut cancelling = false;
    let give_up = tokio::time::sleep(timeout + CANCEL_GRACE);
    tokio::pin!(give_up);
    let ending = loop {
        let event = tokio::select! {
            _ = cancel.cancelled(), if !cancelling => {
                cancelling = true;
                stream.cancel_nowait();
                give_up.as_mut().reset(tokio::time::Instant::now() + CANCEL_GRACE);
                continue;
            }
            _ = frames.closed(), if !cancelling => {
                // The client left; nobody reads the output any more.
                cancelling = true;
                stream.cancel_nowait();
                give_up.as_mut().reset(tokio::time::Instant::now() + CANCEL_GRACE);
                continue;
            }
            _ = &mut give_up => {
                stream.cancel_nowait();
                break ExecFrame::Error {
                    code: "agent_unresponsive".into(),
                    message: "the guest did not end the command in time; the host stopped listening".into(),
                };
            }
            event = stream.next() => event,
        };
        let frame = match event {
            Some(Ok(ExecEvent::Stdout(chunk))) => ExecFrame::Stdout {
                text: stdout.push(&chunk),
            },
            Some(Ok(ExecEvent::Stderr(chunk))) => ExecFrame::Stderr {
                text: stderr.push(&chunk),
            },
            Some(Ok(ExecEvent::Exit(status))) => {
                for (carry, stdout) in [(&mut stdout, true), (&mut stderr, false)] {
                    let text = carry.finish();
                    if !text.is_empty() {
                        let frame = if stdout {
                            ExecFrame::Stdout { text }
                        } else {
                            ExecFrame::Stderr { text }
                        };
                        let _ = frames.send(frame).await;
                    }
                }
                break ExecFrame::Exit {
                    exit_code: status.code,
                    signal: status.signal,
                    timed_out: status.timed_out,
                    cancelled: status.cancelled || cancelling,
                    duration_ms: started.elapsed().as_millis() as u64,
                };
            }
            Some(Err(e)) => {
                break ExecFrame::Error {
                    code: "agent_unavailable".into(),
                    message: e.to_string(),
                };
            }
            None => {
                break ExecFrame::Error {
                    code: "agent_unavailable".into(),
                    message: "the agent ended the command's stream without its exit".into(),
                };
            }
        };
        if frame_is_empty(&frame) {
            continue;
        }
        if frames.send(frame).await.is_err() && !cancelling {
            cancelling = true;
            stream.cancel_nowait();
            give_up
                .as_mut()
                .reset(tokio::time::Instant::now() + CANCEL_GRACE);
        }
    };
    let _ = frames.send(ending).await;
}

fn frame_is_empty(frame: &ExecFrame) -> bool {
    matches!(frame, ExecFrame::Stdout { text } | ExecFrame::Stderr { text } if text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_between_chunks_comes_out_whole() {
        let mut carry = Utf8Carry::default();
        let bytes = "añb€".as_bytes();
        let mut text = String::new();
        for byte in bytes {
            text.push_str(&carry.push(&[*byte]));
        }
        text.push_str(&carry.finish());
        assert_eq!(text, "añb€");
        assert_eq!(carry.push(&[0xff, b'x']), "\u{fffd}x");
    }

    #[test]
    fn a_spec_gives_command_or_argv() {
        let spec = |command: Option<&str>, argv: Option<Vec<&str>>| ExecSpec {
            command: command.map(str::to_string),
            argv: argv.map(|a| a.into_iter().map(str::to_string).collect()),
            cwd: String::new(),
            timeout_sec: None,
        };
        assert_eq!(
            spec(Some("ls -la"), None).argv().unwrap(),
            ["/bin/sh", "-c", "ls -la"]
        );
        assert_eq!(
            spec(None, Some(vec!["ls", "-l"])).argv().unwrap(),
            ["ls", "-l"]
        );
        assert!(spec(Some("ls"), Some(vec!["ls"])).argv().is_err());
        assert!(spec(None, None).argv().is_err());
        assert!(spec(Some("  "), None).argv().is_err());
        assert!(spec(None, Some(vec![])).argv().is_err());
    }
}
