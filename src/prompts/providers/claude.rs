//! Claude Code: `claude -p … --output-format stream-json --verbose --include-partial-messages`.
//! Text arrives as `stream_event` lines carrying the model's raw `content_block_delta`s; the
//! `assistant` line that follows repeats the whole text and is used only when no delta came.

use serde_json::{Value, json};

use super::{CliCommand, Invocation, Outcome, Translator, argv, json_line, no_result};
use crate::prompts::events::PromptEvent;

pub fn command(invocation: &Invocation<'_>) -> CliCommand {
    let argv = argv(
        &[
            "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--no-session-persistence",
        ],
        invocation,
    );
    let mut env: std::collections::BTreeMap<String, String> = [
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("DISABLE_TELEMETRY", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(endpoint) = invocation.endpoint {
        env.insert("ANTHROPIC_BASE_URL".into(), endpoint.base_url.clone());
        env.insert("ANTHROPIC_API_KEY".into(), endpoint.api_key.clone());
        // Its default retries for minutes against a server that does not answer.
        env.insert("CLAUDE_CODE_MAX_RETRIES".into(), "0".into());
    }
    CliCommand {
        argv,
        env,
        files: Vec::new(),
    }
}

#[derive(Default)]
pub struct ClaudeTranslator {
    streamed_text: bool,
    outcome: Option<Outcome>,
}

impl Translator for ClaudeTranslator {
    fn line(&mut self, line: &str) -> Vec<PromptEvent> {
        let Some(value) = json_line(line) else {
            return Vec::new();
        };
        match value["type"].as_str().unwrap_or_default() {
            "system" => system(&value),
            "stream_event" => {
                let event = &value["event"];
                if event["type"] == "content_block_delta" && event["delta"]["type"] == "text_delta"
                {
                    self.streamed_text = true;
                    let text = event["delta"]["text"].as_str().unwrap_or_default();
                    return vec![PromptEvent::content(text)];
                }
                Vec::new()
            }
            "assistant" => self.assistant(&value),
            "user" => tool_results(&value),
            "result" => {
                let usage = value.get("usage").cloned();
                self.outcome = Some(if value["is_error"] == true {
                    Outcome::Failure {
                        code: "model_error".into(),
                        message: value["result"]
                            .as_str()
                            .unwrap_or("Claude Code reported an error")
                            .to_string(),
                    }
                } else {
                    Outcome::Success {
                        usage: usage.clone(),
                    }
                });
                usage
                    .map(|u| vec![PromptEvent::metadata("usage", json!({ "usage": u }))])
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    fn finish(&mut self, exit_code: Option<i32>) -> Outcome {
        self.outcome.take().unwrap_or_else(|| no_result(exit_code))
    }
}

impl ClaudeTranslator {
    fn assistant(&mut self, value: &Value) -> Vec<PromptEvent> {
        // The CLI's own stand-in for a failed call: the `result` line carries the error.
        if value["message"]["model"] == "<synthetic>" {
            return Vec::new();
        }
        let blocks = value["message"]["content"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut events = Vec::new();
        for block in blocks {
            match block["type"].as_str() {
                Some("text") if !self.streamed_text => events.push(PromptEvent::content(
                    block["text"].as_str().unwrap_or_default(),
                )),
                Some("tool_use") => events.push(PromptEvent::metadata(
                    "tool_use",
                    json!({"name": block["name"], "id": block["id"]}),
                )),
                _ => {}
            }
        }
        // The next turn (after a tool) streams its own deltas.
        self.streamed_text = false;
        events
    }
}

fn system(value: &Value) -> Vec<PromptEvent> {
    match value["subtype"].as_str() {
        Some("init") => vec![PromptEvent::metadata(
            "init",
            json!({"model": value["model"], "sessionId": value["session_id"]}),
        )],
        Some("api_retry") => vec![PromptEvent::metadata("retry", json!({"detail": value}))],
        Some("status") => vec![PromptEvent::metadata(
            "progress",
            json!({"status": value["status"]}),
        )],
        _ => Vec::new(),
    }
}

fn tool_results(value: &Value) -> Vec<PromptEvent> {
    value["message"]["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|block| block["type"] == "tool_result")
        .map(|block| {
            PromptEvent::metadata(
                "tool_result",
                json!({"toolUseId": block["tool_use_id"], "isError": block["is_error"]}),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Provider;
    use crate::prompts::providers::replay;

    #[test]
    fn a_recorded_answer_streams_its_deltas_once() {
        let (events, outcome) = replay::run(
            Provider::ClaudeCode,
            include_str!("recorded/claude-success.jsonl"),
            Some(0),
        );
        assert_eq!(replay::text(&events), "Hello from the fake model.");
        let contents = events
            .iter()
            .filter(|e| matches!(e, PromptEvent::Content { .. }))
            .count();
        assert_eq!(contents, 5, "one per delta; the assistant line adds none");
        assert_eq!(replay::kinds(&events), ["init", "progress", "usage"]);
        assert!(
            matches!(outcome, Outcome::Success { usage: Some(_) }),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_recorded_server_error_is_a_failure_despite_subtype_success() {
        let (events, outcome) = replay::run(
            Provider::ClaudeCode,
            include_str!("recorded/claude-server-error.jsonl"),
            Some(1),
        );
        assert_eq!(
            replay::text(&events),
            "",
            "the synthetic assistant text is not the answer"
        );
        match outcome {
            Outcome::Failure { code, message } => {
                assert_eq!(code, "model_error");
                assert!(message.contains("500"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_keeps_the_prompt_a_prompt() {
        let command = command(&Invocation {
            prompt: "--help me",
            model: Some("claude-sonnet-4-5"),
            home: "/home/u",
            endpoint: None,
        });
        let n = command.argv.len();
        assert_eq!(command.argv[n - 2..], ["--", "--help me"]);
        assert!(
            command
                .argv
                .windows(2)
                .any(|w| w == ["--model", "claude-sonnet-4-5"])
        );
        assert!(!command.env.contains_key("ANTHROPIC_BASE_URL"));
    }
}
