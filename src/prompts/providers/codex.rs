//! Codex: `codex exec --json --skip-git-repo-check --ephemeral …`. It prints whole items, not
//! token deltas: each `agent_message` item is one `content` event.

use serde_json::{Value, json};

use super::{CliCommand, ConfigFile, Invocation, Outcome, Translator, argv, json_line, no_result};
use crate::prompts::events::PromptEvent;

/// The environment variable the custom provider reads its key from.
const KEY_VARIABLE: &str = "MC_MODEL_API_KEY";

pub fn command(invocation: &Invocation<'_>) -> CliCommand {
    let codex_home = format!("{}/.codex", invocation.home);
    let argv = argv(
        &[
            "codex",
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--ephemeral",
        ],
        invocation,
    );
    let mut env =
        std::collections::BTreeMap::from([("CODEX_HOME".to_string(), codex_home.clone())]);
    // Without these it checks for updates, reports analytics and loads plugins from outside.
    let mut config = String::from(
        "check_for_update_on_startup = false\n\n[analytics]\nenabled = false\n\n[features]\nplugins = false\n",
    );
    if let Some(endpoint) = invocation.endpoint {
        // OPENAI_BASE_URL is ignored; only a custom provider reaches another server.
        config = format!(
            "model_provider = \"custom\"\n{config}\n[model_providers.custom]\nname = \"custom\"\nbase_url = {}\nenv_key = \"{KEY_VARIABLE}\"\nwire_api = \"responses\"\nsupports_websockets = false\nrequest_max_retries = 0\nstream_max_retries = 0\n",
            toml_string(&format!("{}/v1", endpoint.base_url.trim_end_matches('/')))
        );
        env.insert(KEY_VARIABLE.into(), endpoint.api_key.clone());
    }
    CliCommand {
        argv,
        env,
        files: vec![ConfigFile {
            path: format!("{codex_home}/config.toml"),
            contents: config,
            mode: 0o600,
        }],
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let escaped: String = text
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if c.is_control() => format!("\\u{:04X}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

#[derive(Default)]
pub struct CodexTranslator {
    last_error: Option<String>,
    outcome: Option<Outcome>,
}

impl Translator for CodexTranslator {
    fn line(&mut self, line: &str) -> Vec<PromptEvent> {
        let Some(value) = json_line(line) else {
            return Vec::new();
        };
        match value["type"].as_str().unwrap_or_default() {
            "thread.started" => vec![PromptEvent::metadata(
                "init",
                json!({"sessionId": value["thread_id"]}),
            )],
            "turn.started" => vec![PromptEvent::metadata(
                "progress",
                json!({"status": "turn_started"}),
            )],
            "item.started" | "item.updated" => item_progress(&value["item"]),
            "item.completed" => item_completed(&value["item"]),
            "turn.completed" => {
                let usage = value.get("usage").cloned();
                self.outcome = Some(Outcome::Success {
                    usage: usage.clone(),
                });
                usage
                    .map(|u| vec![PromptEvent::metadata("usage", json!({ "usage": u }))])
                    .unwrap_or_default()
            }
            "error" => {
                self.last_error = value["message"].as_str().map(str::to_string);
                vec![PromptEvent::metadata(
                    "retry",
                    json!({"message": value["message"]}),
                )]
            }
            "turn.failed" => {
                let message = value["error"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| self.last_error.clone())
                    .unwrap_or_else(|| "Codex reported a failed turn".into());
                self.outcome = Some(Outcome::Failure {
                    code: "model_error".into(),
                    message,
                });
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn finish(&mut self, exit_code: Option<i32>) -> Outcome {
        self.outcome.take().unwrap_or_else(|| no_result(exit_code))
    }
}

fn item_progress(item: &Value) -> Vec<PromptEvent> {
    match item["type"].as_str() {
        Some("command_execution") => vec![PromptEvent::metadata(
            "tool_use",
            json!({"name": "command", "command": item["command"], "status": item["status"]}),
        )],
        _ => Vec::new(),
    }
}

fn item_completed(item: &Value) -> Vec<PromptEvent> {
    match item["type"].as_str() {
        Some("agent_message") => vec![PromptEvent::content(
            item["text"].as_str().unwrap_or_default(),
        )],
        Some("reasoning") => vec![PromptEvent::metadata(
            "reasoning",
            json!({"text": item["text"]}),
        )],
        Some("command_execution") => vec![PromptEvent::metadata(
            "tool_result",
            json!({"name": "command", "exitCode": item["exit_code"], "status": item["status"]}),
        )],
        Some(other) => vec![PromptEvent::metadata("item", json!({"itemType": other}))],
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Provider;
    use crate::prompts::providers::{Endpoint, replay};

    #[test]
    fn a_recorded_answer_is_one_content_event() {
        let (events, outcome) = replay::run(
            Provider::Codex,
            include_str!("recorded/codex-success.jsonl"),
            Some(0),
        );
        assert_eq!(replay::text(&events), "Hello from the fake model.");
        assert_eq!(replay::kinds(&events), ["init", "progress", "usage"]);
        assert!(matches!(outcome, Outcome::Success { usage: Some(_) }));
    }

    #[test]
    fn a_recorded_failed_turn_is_a_failure_with_its_message() {
        let (_, outcome) = replay::run(
            Provider::Codex,
            include_str!("recorded/codex-server-error.jsonl"),
            Some(1),
        );
        match outcome {
            Outcome::Failure { message, .. } => {
                assert!(message.contains("high demand"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_custom_endpoint_is_a_custom_provider() {
        let endpoint = Endpoint {
            base_url: "http://10.0.0.1:9/".into(),
            api_key: "k\"ey".into(),
        };
        let command = command(&Invocation {
            prompt: "hi",
            model: None,
            home: "/home/u",
            endpoint: Some(&endpoint),
        });
        let config = &command.files[0];
        assert_eq!(config.path, "/home/u/.codex/config.toml");
        assert!(
            config
                .contents
                .contains("base_url = \"http://10.0.0.1:9/v1\"")
        );
        assert!(config.contents.contains("model_provider = \"custom\""));
        assert!(
            !config.contents.contains("k\"ey"),
            "the key stays in the environment"
        );
        assert_eq!(command.env["MC_MODEL_API_KEY"], "k\"ey");
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
