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
    /// The CLI's HOME, where its configuration and credentials live.
    pub home: &'a str,
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

/// How the CLI's run ended, by its own account.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Success { usage: Option<Value> },
    Failure { code: String, message: String },
}

/// Turns a CLI's stdout lines into events, and its end into an outcome.
pub trait Translator: Send {
    /// The events one line of stdout stands for (often none).
    fn line(&mut self, line: &str) -> Vec<PromptEvent>;
    /// The outcome once the process has exited with `exit_code`.
    fn finish(&mut self, exit_code: Option<i32>) -> Outcome;
}
