//! Helpers more than one CLI's file uses.

use serde_json::Value;

use super::prompt::{CONVERSATION_EXPIRED, Invocation, Outcome};

/// `fixed`, then `resume` followed by the session id when the invocation resumes one, then
/// `--model` when one is asked for, then the prompt after `--` (so a prompt that starts with
/// `-` is still the prompt).
pub fn argv(fixed: &[&str], resume: &str, invocation: &Invocation<'_>) -> Vec<String> {
    let mut argv: Vec<String> = fixed.iter().map(|a| a.to_string()).collect();
    if let Some(id) = invocation.resume {
        argv.extend([resume.to_string(), id.to_string()]);
    }
    if let Some(model) = invocation.model {
        argv.extend(["--model".into(), model.to_string()]);
    }
    argv.extend(["--".into(), invocation.prompt.to_string()]);
    argv
}

/// Parses a line as a JSON object; CLIs also print plain text (banners, warnings).
pub fn json_line(line: &str) -> Option<Value> {
    let value: Value = serde_json::from_str(line.trim()).ok()?;
    value.is_object().then_some(value)
}

/// The outcome when the CLI printed no result line of its own.
pub fn no_result(exit_code: Option<i32>) -> Outcome {
    Outcome::Failure {
        code: "cli_failed".into(),
        message: match exit_code {
            Some(code) => format!("the CLI exited with status {code} without a result"),
            None => "the CLI was killed before it printed a result".into(),
        },
    }
}

/// What one run says about the CLI's session: the id it reported, and whether the session it
/// was asked to resume is gone. Every CLI's translator holds one.
#[derive(Debug, Default)]
pub struct Session {
    asked: Option<String>,
    seen: Option<String>,
    expired: Option<String>,
}

impl Session {
    pub fn new(resume: Option<&str>) -> Session {
        Session {
            asked: resume.map(str::to_string),
            ..Session::default()
        }
    }

    /// The session id on an output line. Each CLI keeps the id when it resumes (tested on all
    /// three), so another id means it started afresh: Codex does that, exit 0, for a thread
    /// *name* it does not know.
    pub fn seen(&mut self, id: &Value) {
        let Some(id) = id.as_str().filter(|id| !id.is_empty()) else {
            return;
        };
        if self.seen.is_some() {
            return;
        }
        self.seen = Some(id.to_string());
        if let Some(asked) = self.asked.as_deref().filter(|asked| *asked != id) {
            self.expired(format!(
                "the CLI did not resume session {asked}: it started a new session {id} instead"
            ));
        }
    }

    /// The CLI said the session to resume does not exist; the first reason is kept.
    pub fn expired(&mut self, message: String) {
        self.expired.get_or_insert(message);
    }

    pub fn is_expired(&self) -> bool {
        self.expired.is_some()
    }

    pub fn id(&self) -> Option<String> {
        match self.expired {
            Some(_) => None,
            None => self.seen.clone(),
        }
    }

    /// `outcome`, unless the session was gone: then the run answered nothing of the
    /// conversation, whatever else it printed.
    pub fn outcome(&self, outcome: Outcome) -> Outcome {
        match &self.expired {
            Some(message) => Outcome::Failure {
                code: CONVERSATION_EXPIRED.into(),
                message: message.clone(),
            },
            None => outcome,
        }
    }
}

/// A credential file as JSON; the error gives the line, never the contents.
pub fn json_file(bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("not JSON (line {})", e.line()))
}

/// Whether `v` has a non-empty string at `key`.
pub fn has_text(v: &Value, key: &str) -> bool {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .is_some()
}

/// Environment variables from literal pairs.
pub fn env(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
pub(crate) mod replay {
    //! Runs a recorded output through a provider's translator, and a recorded login screen
    //! through its rules.

    use crate::providers::{LoginScreen, LoginSignal, Outcome, PromptEvent, Provider, UserAction};

    pub fn run(
        provider: Provider,
        recorded: &str,
        exit_code: Option<i32>,
    ) -> (Vec<PromptEvent>, Outcome) {
        let mut translator = provider.cli().translator(None);
        let events = recorded.lines().flat_map(|l| translator.line(l)).collect();
        (events, translator.finish(exit_code))
    }

    /// What a run asked to resume `resume` ends as: its session id and outcome, from its
    /// recorded stdout and stderr.
    pub fn resumed(
        provider: Provider,
        resume: &str,
        stdout: &str,
        stderr: &str,
        exit_code: Option<i32>,
    ) -> (Option<String>, Outcome) {
        let mut translator = provider.cli().translator(Some(resume));
        for line in stdout.lines() {
            translator.line(line);
        }
        for line in stderr.lines() {
            translator.stderr_line(line);
        }
        let outcome = translator.finish(exit_code);
        (translator.session_id(), outcome)
    }

    /// The session id a new session's run reports.
    pub fn session_id(provider: Provider, recorded: &str) -> Option<String> {
        let mut translator = provider.cli().translator(None);
        for line in recorded.lines() {
            translator.line(line);
        }
        translator.session_id()
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

    pub fn login(provider: Provider, transcript: &[u8]) -> Vec<LoginSignal> {
        let mut screen = LoginScreen::new(provider);
        // Split at awkward places, as a PTY does.
        transcript
            .chunks(37)
            .flat_map(|chunk| screen.feed(chunk))
            .collect()
    }

    pub fn awaiting(signals: &[LoginSignal]) -> &UserAction {
        let found: Vec<_> = signals
            .iter()
            .filter_map(|s| match s {
                LoginSignal::AwaitingUser(action) => Some(action),
                _ => None,
            })
            .collect();
        assert_eq!(found.len(), 1, "one prompt for the user: {signals:?}");
        found[0]
    }
}
