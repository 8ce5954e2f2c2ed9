//! What a prompt asks of a CLI, the process that answers it, and how that process's output is
//! read. Success is judged by the CLI's own result line, not its exit status: Claude Code
//! reports a failed API call as a `result` with `is_error`, and Gemini CLI can exit 0 with an
//! error result.

use std::collections::BTreeMap;

use serde_json::Value;

use super::event::PromptEvent;

/// A model server other than the vendor's (a gateway, or the fake one in tests), with the key
/// the CLI sends it.
#[derive(Clone)]
pub struct Endpoint {
    pub base_url: String,
    pub api_key: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// What the prompt asks of the CLI.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub prompt: &'a str,
    pub model: Option<&'a str>,
    /// The CLI's HOME, where its configuration, credentials and sessions live.
    pub home: &'a str,
    /// The directory the CLI works in. The caller runs the process there too: Claude Code and
    /// Gemini CLI look a session up only among those of their working directory, so every turn
    /// of a conversation must run in the same one.
    pub cwd: &'a str,
    /// The CLI's own id of the session to continue; `None` starts a new one.
    pub resume: Option<&'a str>,
    pub endpoint: Option<&'a Endpoint>,
}

/// A file the CLI needs before it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    pub path: String,
    pub contents: String,
    pub mode: u32,
}

/// The process to run.
#[derive(Debug, Clone, PartialEq)]
pub struct CliCommand {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub files: Vec<ConfigFile>,
}

/// The [`Outcome::Failure`] code for a session the CLI no longer has (or never had): the
/// conversation cannot go on, a new one has to start.
pub const CONVERSATION_EXPIRED: &str = "conversation_expired";

/// How the CLI's run ended, by its own account.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Success { usage: Option<Value> },
    Failure { code: String, message: String },
}

/// Turns a CLI's output lines into events, and its end into an outcome. One translator reads
/// one run; it is made knowing which session the run was asked to resume.
pub trait Translator: Send {
    /// The events one line of stdout stands for (often none).
    fn line(&mut self, line: &str) -> Vec<PromptEvent>;
    /// One line of stderr. Some CLIs say only there that the session to resume is gone.
    fn stderr_line(&mut self, _line: &str) {}
    /// The CLI's id of the session this run's prompt went into, as its output said; `None`
    /// before the CLI has said, and when the asked-for session turned out to be gone (a run
    /// that ends in [`CONVERSATION_EXPIRED`] has no session to continue).
    fn session_id(&self) -> Option<String>;
    /// The outcome once the process has exited with `exit_code`.
    fn finish(&mut self, exit_code: Option<i32>) -> Outcome;
}
