//! Helpers more than one CLI's file uses.

use serde_json::Value;

use super::prompt::{Invocation, Outcome};

/// `fixed`, then `--model` when one is asked for, then the prompt after `--` (so a prompt that
/// starts with `-` is still the prompt).
pub fn argv(fixed: &[&str], invocation: &Invocation<'_>) -> Vec<String> {
    let mut argv: Vec<String> = fixed.iter().map(|a| a.to_string()).collect();
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
        let mut translator = provider.cli().translator();
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
