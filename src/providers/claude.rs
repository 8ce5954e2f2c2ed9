//! Claude Code.
//!
//! - Prompts: `claude -p … --output-format stream-json --verbose --include-partial-messages
//!   [--resume ID]`. Text arrives as `stream_event` lines carrying the model's raw
//!   `content_block_delta`s; the `assistant` line that follows repeats the whole text and is
//!   used only when no delta came.
//! - Sessions: kept under `~/.claude/projects/<cwd>/` by default; every output line carries
//!   `session_id`, which `--resume` keeps. An unknown id (or one of another cwd) is a lone
//!   `result` line whose `errors` say `No conversation found with session ID: …`, exit 1.
//! - Login: `claude auth login` prints an authorize URL whose redirect is the vendor's code
//!   page, then `Paste code here if prompted >` and reads `code#state`. It ends with
//!   `Login successful.` or `Login failed: <reason>`.
//! - Credential: `.claude/.credentials.json`, the token under `claudeAiOauth`.

use serde_json::{Value, json};

use super::common::{Session, argv, env, has_text, json_file, json_line, no_result};
use super::login::{LoginCommand, LoginSignal, ScreenRules, UrlAndCode, url_in};
use super::{Cli, CliCommand, Facts, Invocation, Outcome, PromptEvent, StatusCommand, Translator};

pub struct ClaudeCode;

impl Cli for ClaudeCode {
    fn name(&self) -> &'static str {
        "claude_code"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["claude"]
    }

    fn endpoints(&self) -> &'static [&'static str] {
        &[
            ".anthropic.com",
            ".claude.ai",
            ".claude.com",
            "statsig.anthropic.com",
        ]
    }

    fn command(&self, invocation: &Invocation<'_>) -> CliCommand {
        let argv = argv(
            &[
                "claude",
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--include-partial-messages",
            ],
            "--resume",
            invocation,
        );
        let mut env = env(&[
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("DISABLE_AUTOUPDATER", "1"),
            ("DISABLE_TELEMETRY", "1"),
        ]);
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

    fn translator(&self, resume: Option<&str>) -> Box<dyn Translator> {
        Box::new(ClaudeTranslator {
            streamed_text: false,
            outcome: None,
            session: Session::new(resume),
        })
    }

    fn status_command(&self, _home: &str) -> StatusCommand {
        StatusCommand::Run {
            argv: vec!["claude".into(), "auth".into(), "status".into()],
            env: Default::default(),
        }
    }

    fn login_command(&self, _home: &str) -> LoginCommand {
        LoginCommand {
            argv: vec!["claude".into(), "auth".into(), "login".into()],
            env: env(&[("DISABLE_AUTOUPDATER", "1"), ("DISABLE_TELEMETRY", "1")]),
            files: Vec::new(),
            dirs: Vec::new(),
        }
    }

    fn login_rules(&self) -> Box<dyn ScreenRules> {
        Box::<LoginRules>::default()
    }

    fn credential_file(&self) -> &'static str {
        ".claude/.credentials.json"
    }

    fn inspect_credential(&self, bytes: &[u8]) -> Result<Facts, String> {
        let json = json_file(bytes)?;
        let oauth = json.get("claudeAiOauth").ok_or("no claudeAiOauth object")?;
        if !has_text(oauth, "accessToken") {
            return Err("claudeAiOauth.accessToken is missing".into());
        }
        Ok(Facts {
            // Milliseconds since the epoch, nested under claudeAiOauth.
            expires_at_ms: oauth.get("expiresAt").and_then(Value::as_i64),
            refreshable: has_text(oauth, "refreshToken"),
        })
    }
}

/// The start of the error a `--resume` of an unknown session ends with.
const NO_CONVERSATION: &str = "No conversation found with session ID";

struct ClaudeTranslator {
    streamed_text: bool,
    outcome: Option<Outcome>,
    session: Session,
}

impl Translator for ClaudeTranslator {
    fn line(&mut self, line: &str) -> Vec<PromptEvent> {
        let Some(value) = json_line(line) else {
            return Vec::new();
        };
        self.session.seen(&value["session_id"]);
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
                    self.error(&value)
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

    fn session_id(&self) -> Option<String> {
        self.session.id()
    }

    fn finish(&mut self, exit_code: Option<i32>) -> Outcome {
        let outcome = self.outcome.take().unwrap_or_else(|| no_result(exit_code));
        self.session.outcome(outcome)
    }
}

impl ClaudeTranslator {
    /// A failed run's `result`: a failed API call says why in `result`; a run that never
    /// reached the model (an unknown session) has no `result` and says why in `errors`.
    fn error(&mut self, value: &Value) -> Outcome {
        let errors: Vec<&str> = value["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let message = value["result"]
            .as_str()
            .or(errors.first().copied())
            .unwrap_or("Claude Code reported an error")
            .to_string();
        if let Some(gone) = errors.iter().find(|e| e.starts_with(NO_CONVERSATION)) {
            self.session.expired(gone.to_string());
        }
        Outcome::Failure {
            code: "model_error".into(),
            message,
        }
    }

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

const PROMPT: &str = "Paste code here if prompted";

const INSTRUCTIONS: &str = "Open authUrl, sign in to Claude, then paste the code the page shows \
                           (code#state) into this session's code endpoint.";

#[derive(Default)]
struct LoginRules {
    prompt: UrlAndCode,
}

impl ScreenRules for LoginRules {
    fn line(&mut self, line: &str) -> Option<LoginSignal> {
        if let Some(reason) = line.split_once("Login failed:").map(|(_, r)| r.trim()) {
            return Some(LoginSignal::Failed(format!("Login failed: {reason}")));
        }
        if line.contains("Login successful") {
            return Some(LoginSignal::Succeeded);
        }
        if line.contains("oauth/authorize") {
            self.prompt.url = url_in(line);
        }
        if line.contains(PROMPT) {
            return self.prompt.seen(INSTRUCTIONS);
        }
        None
    }

    fn partial(&mut self, text: &str) -> Option<LoginSignal> {
        if text.contains(PROMPT) {
            return self.prompt.seen(INSTRUCTIONS);
        }
        None
    }
}

#[cfg(test)]
#[path = "claude_tests.rs"]
mod tests;
