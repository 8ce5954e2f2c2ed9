//! Gemini CLI: `gemini -m MODEL --output-format stream-json -p …`. Assistant `message` lines
//! with `delta: true` are the text; the `result` line's `status` decides success, since the CLI
//! can exit 0 with an error result.

use serde_json::json;

use super::{CliCommand, ConfigFile, Invocation, Outcome, Translator, json_line, no_result};
use crate::prompts::events::PromptEvent;

/// Passing a model skips the CLI's model-routing call.
const DEFAULT_MODEL: &str = "gemini-2.5-flash";

pub fn command(invocation: &Invocation<'_>) -> CliCommand {
    let argv = vec![
        "gemini".to_string(),
        "-m".into(),
        invocation.model.unwrap_or(DEFAULT_MODEL).to_string(),
        "--output-format".into(),
        "stream-json".into(),
        // The `=` form keeps a prompt that starts with `-` the prompt.
        format!("--prompt={}", invocation.prompt),
    ];
    let mut env = std::collections::BTreeMap::from([
        ("GEMINI_CLI_TRUST_WORKSPACE".to_string(), "true".to_string()),
        ("GEMINI_CLI_NO_RELAUNCH".to_string(), "true".to_string()),
    ]);
    let auth = match invocation.endpoint {
        Some(endpoint) => {
            env.insert("GEMINI_API_KEY".into(), endpoint.api_key.clone());
            env.insert("GOOGLE_GEMINI_BASE_URL".into(), endpoint.base_url.clone());
            "gemini-api-key"
        }
        None => "oauth-personal",
    };
    // Environment variables alone are not enough: without settings it exits 41.
    let settings = json!({
        "security": {"auth": {"selectedType": auth}},
        "privacy": {"usageStatisticsEnabled": false},
        "general": {
            "enableAutoUpdate": false,
            "enableAutoUpdateNotification": false,
            "maxAttempts": 1
        }
    });
    CliCommand {
        argv,
        env,
        files: vec![ConfigFile {
            path: format!("{}/.gemini/settings.json", invocation.home),
            contents: settings.to_string(),
            mode: 0o600,
        }],
    }
}

#[derive(Default)]
pub struct GeminiTranslator {
    outcome: Option<Outcome>,
}

impl Translator for GeminiTranslator {
    fn line(&mut self, line: &str) -> Vec<PromptEvent> {
        let Some(value) = json_line(line) else {
            return Vec::new();
        };
        match value["type"].as_str().unwrap_or_default() {
            "init" => vec![PromptEvent::metadata(
                "init",
                json!({"model": value["model"], "sessionId": value["session_id"]}),
            )],
            "message" if value["role"] == "assistant" => {
                vec![PromptEvent::content(
                    value["content"].as_str().unwrap_or_default(),
                )]
            }
            "tool_use" => vec![PromptEvent::metadata(
                "tool_use",
                json!({"name": value["tool_name"], "id": value["tool_id"]}),
            )],
            "tool_result" => vec![PromptEvent::metadata(
                "tool_result",
                json!({"id": value["tool_id"], "status": value["status"]}),
            )],
            "result" => {
                let stats = value.get("stats").cloned();
                self.outcome = Some(if value["status"] == "success" {
                    Outcome::Success {
                        usage: stats.clone(),
                    }
                } else {
                    Outcome::Failure {
                        code: "model_error".into(),
                        message: value["error"]["message"]
                            .as_str()
                            .unwrap_or("Gemini CLI reported an error")
                            .to_string(),
                    }
                });
                stats
                    .map(|s| vec![PromptEvent::metadata("usage", json!({ "usage": s }))])
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    fn finish(&mut self, exit_code: Option<i32>) -> Outcome {
        self.outcome.take().unwrap_or_else(|| no_result(exit_code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Provider;
    use crate::prompts::providers::replay;

    #[test]
    fn a_recorded_answer_streams_its_chunks() {
        let (events, outcome) = replay::run(
            Provider::GeminiCli,
            include_str!("recorded/gemini-success.jsonl"),
            Some(0),
        );
        assert_eq!(replay::text(&events), "Hello from the fake model.");
        assert_eq!(replay::kinds(&events), ["init", "usage"]);
        assert!(matches!(outcome, Outcome::Success { .. }));
    }

    #[test]
    fn an_error_result_fails_even_with_exit_status_0() {
        let (events, outcome) = replay::run(
            Provider::GeminiCli,
            include_str!("recorded/gemini-server-error.jsonl"),
            Some(0),
        );
        assert_eq!(
            replay::text(&events),
            "",
            "the user's own message is not the answer"
        );
        match outcome {
            Outcome::Failure { message, .. } => {
                assert!(
                    message.contains("the fake model server failed"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_result_line_is_a_failure() {
        let (_, outcome) = replay::run(Provider::GeminiCli, "not json\n", Some(0));
        assert!(matches!(outcome, Outcome::Failure { code, .. } if code == "cli_failed"));
    }
}
