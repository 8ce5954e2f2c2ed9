//! How each provider's CLI is run non-interactively (argv, environment, config files) and how
//! its JSON lines become [`PromptEvent`]s. One module per provider; each is tested on output
//! recorded from the real CLI (`recorded/`). Success is judged by the CLI's own result line,
//! not its exit status: Claude Code reports a failed API call as a `result` with `is_error`,
//! and Gemini CLI can exit 0 with an error result.

mod claude;
mod codex;
mod gemini;

use std::collections::BTreeMap;

use serde_json::Value;

use super::events::PromptEvent;
use crate::model::Provider;

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

pub fn command(provider: Provider, invocation: &Invocation<'_>) -> CliCommand {
    let mut command = match provider {
        Provider::ClaudeCode => claude::command(invocation),
        Provider::Codex => codex::command(invocation),
        Provider::GeminiCli => gemini::command(invocation),
    };
    command
        .env
        .insert("HOME".into(), invocation.home.to_string());
    command
}

pub fn translator(provider: Provider) -> Box<dyn Translator> {
    match provider {
        Provider::ClaudeCode => Box::new(claude::ClaudeTranslator::default()),
        Provider::Codex => Box::new(codex::CodexTranslator::default()),
        Provider::GeminiCli => Box::new(gemini::GeminiTranslator::default()),
    }
}

/// `fixed`, then `--model` when one is asked for, then the prompt after `--` (so a prompt that
/// starts with `-` is still the prompt).
fn argv(fixed: &[&str], invocation: &Invocation<'_>) -> Vec<String> {
    let mut argv: Vec<String> = fixed.iter().map(|a| a.to_string()).collect();
    if let Some(model) = invocation.model {
        argv.extend(["--model".into(), model.to_string()]);
    }
    argv.extend(["--".into(), invocation.prompt.to_string()]);
    argv
}

/// Parses a line as a JSON object; CLIs also print plain text (banners, warnings).
fn json_line(line: &str) -> Option<Value> {
    let value: Value = serde_json::from_str(line.trim()).ok()?;
    value.is_object().then_some(value)
}

/// The outcome when the CLI printed no result line of its own.
fn no_result(exit_code: Option<i32>) -> Outcome {
    Outcome::Failure {
        code: "cli_failed".into(),
        message: match exit_code {
            Some(code) => format!("the CLI exited with status {code} without a result"),
            None => "the CLI was killed before it printed a result".into(),
        },
    }
}

#[cfg(test)]
pub(crate) mod replay {
    //! Runs a recorded output through a translator.

    use super::*;

    pub fn run(
        provider: Provider,
        recorded: &str,
        exit_code: Option<i32>,
    ) -> (Vec<PromptEvent>, Outcome) {
        let mut translator = translator(provider);
        let events = recorded.lines().flat_map(|l| translator.line(l)).collect();
        (events, translator.finish(exit_code))
    }

    pub fn text(events: &[PromptEvent]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                PromptEvent::Content { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn kinds(events: &[PromptEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                PromptEvent::Metadata { kind, .. } => Some(kind.clone()),
                _ => None,
            })
            .collect()
    }
}
