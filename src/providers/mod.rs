//! Everything the daemon knows about each AI coding CLI, one file per CLI behind the [`Cli`]
//! trait: how a prompt runs it, how its output lines become [`PromptEvent`]s, how its login
//! starts and how its login screen reads, where its credential file lives and what it says
//! about itself, and which hosts it talks to. Nothing outside this module tells the CLIs apart;
//! the rest of the daemon holds a [`Provider`] and asks it.
//!
//! Adding a CLI: one file in `src/providers/` and one line in [`REGISTRY`]. `made_up.rs` (a
//! made-up CLI, built with the `made-up-cli` feature for `tests/made_up_provider.rs`) is one.
//!
//! This module sits just above `store`: it imports none of the daemon's services, so `model`,
//! `auth`, `prompts` and `net` can all depend on it.

mod claude;
mod codex;
mod common;
mod event;
mod gemini;
pub mod login;
#[cfg(feature = "made-up-cli")]
mod made_up;
mod prompt;
mod provider;

use std::collections::BTreeMap;

pub use event::PromptEvent;
pub use login::{LoginCommand, LoginScreen, LoginSignal, ScreenRules, UserAction};
pub use prompt::{
    CONVERSATION_EXPIRED, CliCommand, ConfigFile, Endpoint, Invocation, Outcome, Translator,
};
pub use provider::{
    CLAUDE_CODE, CODEX, GEMINI_CLI, Provider, UnknownProvider, all, by_name, named,
};

/// Every CLI the daemon can run. A record stores a provider as its position here, so the list
/// only ever grows at its end.
static REGISTRY: &[&dyn Cli] = &[
    &claude::ClaudeCode,
    &codex::Codex,
    &gemini::GeminiCli,
    #[cfg(feature = "made-up-cli")]
    &made_up::MadeUp,
];

/// One AI coding CLI, as the daemon drives it.
pub trait Cli: Send + Sync {
    /// The name the API, the records, the metrics and the credential keys use (`claude_code`).
    fn name(&self) -> &'static str;

    /// Shorter names an operator may write for it in the egress bypass list (`claude`), the
    /// first being the one error messages suggest.
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }

    /// The hosts it talks to (its model API and its login), as egress bypass entries: a host
    /// name, or a `.domain` suffix.
    fn endpoints(&self) -> &'static [&'static str];

    /// The non-interactive run of one prompt, in a session the CLI keeps (a new one, or
    /// `invocation.resume`). `HOME` is added by [`Provider::command`].
    fn command(&self, invocation: &Invocation<'_>) -> CliCommand;

    /// A fresh reader of one run's output, for a run that resumes `resume` (the same id as the
    /// invocation's): it fails the run as [`CONVERSATION_EXPIRED`] when that session is gone.
    fn translator(&self, resume: Option<&str>) -> Box<dyn Translator>;

    /// The CLI's own check of its credential, run with the credential in place in `home`.
    fn status_command(&self, home: &str) -> StatusCommand;

    /// The headless login in a fresh `home`. `HOME` is added by [`Provider::login_command`].
    fn login_command(&self, home: &str) -> LoginCommand;

    /// A fresh reader of one login's screen.
    fn login_rules(&self) -> Box<dyn ScreenRules>;

    /// The credential file's path relative to the CLI's HOME.
    fn credential_file(&self) -> &'static str;

    /// Checks that a credential file is complete (it parses and holds the fields the CLI
    /// needs) and reads its expiry. The error names what is missing, never a value.
    fn inspect_credential(&self, bytes: &[u8]) -> Result<Facts, String>;
}

/// What a complete credential file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// Milliseconds since the Unix epoch; `None` for a credential that does not expire.
    pub expires_at_ms: Option<i64>,
    /// Whether the CLI can get a new access token by itself.
    pub refreshable: bool,
}

/// How to ask a CLI whether it accepts its credential.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusCommand {
    /// Exit status 0 means accepted. `env` goes on top of the CLIs' common environment.
    Run {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// The CLI has no such command; the file's own fields decide, and this says so.
    Unavailable(&'static str),
}

#[cfg(test)]
mod tests;
