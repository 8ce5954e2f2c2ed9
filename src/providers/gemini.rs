//! Gemini CLI.
//!
//! - Prompts: `gemini -m MODEL --output-format stream-json [--resume ID] --prompt=…`.
//!   Assistant `message` lines with `delta: true` are the text; the `result` line's `status`
//!   decides success, since the CLI can exit 0 with an error result.
//! - Sessions: always kept, per cwd, under `~/.gemini/tmp/<project>/chats/`; the id is `init`'s
//!   `session_id`. An unknown id (or one of another cwd) says `Error resuming session: …` on
//!   stderr only, exit 42. `--resume` also takes `latest` or an index, which are never passed.
//! - Login: only the interactive screen logs in. With `NO_BROWSER=true` and OAuth selected in
//!   its settings it prints an authorize URL and `Enter the authorization code:`. A wrong code
//!   prints `Failed to authenticate with authorization code:<reason>` and starts over with a
//!   new URL; success prints nothing and the screen moves on, so the credential file decides.
//! - Credential: `.gemini/oauth_creds.json`, Google's OAuth token file. There is no status
//!   command.

use serde_json::{Value, json};

use super::common::{Session, env, has_text, json_file, json_line, no_result};
use super::login::{LoginCommand, LoginSignal, ScreenRules, UrlAndCode, url_in};
use super::{
    Cli, CliCommand, ConfigFile, Facts, Invocation, Outcome, PromptEvent, StatusCommand, Translator,
};

/// Passing a model skips the CLI's model-routing call.
const DEFAULT_MODEL: &str = "gemini-2.5-flash";

pub struct GeminiCli;

impl Cli for GeminiCli {
    fn name(&self) -> &'static str {
        "gemini_cli"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["gemini"]
    }

    fn endpoints(&self) -> &'static [&'static str] {
        &[
            "generativelanguage.googleapis.com",
            "cloudcode-pa.googleapis.com",
            "oauth2.googleapis.com",
            "accounts.google.com",
        ]
    }

    fn command(&self, invocation: &Invocation<'_>) -> CliCommand {
        let mut argv = vec![
            "gemini".to_string(),
            "-m".into(),
            invocation.model.unwrap_or(DEFAULT_MODEL).to_string(),
            "--output-format".into(),
            "stream-json".into(),
        ];
        if let Some(id) = invocation.resume {
            argv.extend(["--resume".into(), id.to_string()]);
        }
        // The `=` form keeps a prompt that starts with `-` the prompt.
        argv.push(format!("--prompt={}", invocation.prompt));
        let mut env = env(&[
            ("GEMINI_CLI_TRUST_WORKSPACE", "true"),
            ("GEMINI_CLI_NO_RELAUNCH", "true"),
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

    fn translator(&self, resume: Option<&str>) -> Box<dyn Translator> {
        Box::new(GeminiTranslator {
            outcome: None,
            session: Session::new(resume),
        })
    }

    fn status_command(&self, _home: &str) -> StatusCommand {
        StatusCommand::Unavailable("Gemini CLI has no status command; judged by the file alone")
    }

    fn login_command(&self, _home: &str) -> LoginCommand {
        let settings = json!({
            "security": {"auth": {"selectedType": "oauth-personal"}},
            "privacy": {"usageStatisticsEnabled": false},
            "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false}
        });
        LoginCommand {
            argv: vec!["gemini".into()],
            env: env(&[
                ("NO_BROWSER", "true"),
                ("GEMINI_CLI_TRUST_WORKSPACE", "true"),
                ("GEMINI_CLI_NO_RELAUNCH", "true"),
            ]),
            files: vec![(".gemini/settings.json".into(), settings.to_string())],
            dirs: Vec::new(),
        }
    }

    fn login_rules(&self) -> Box<dyn ScreenRules> {
        Box::<LoginRules>::default()
    }

    fn credential_file(&self) -> &'static str {
        ".gemini/oauth_creds.json"
    }

    fn inspect_credential(&self, bytes: &[u8]) -> Result<Facts, String> {
        let json = json_file(bytes)?;
        if !has_text(&json, "access_token") && !has_text(&json, "refresh_token") {
            return Err("neither access_token nor refresh_token is present".into());
        }
        Ok(Facts {
            // Google's `expiry_date`, milliseconds since the epoch.
            expires_at_ms: json.get("expiry_date").and_then(Value::as_i64),
            refreshable: has_text(&json, "refresh_token"),
        })
    }
}

/// What its stderr's first line says when `--resume` finds no such session.
const RESUME_FAILED: &str = "Error resuming session:";

struct GeminiTranslator {
    outcome: Option<Outcome>,
    session: Session,
}

impl Translator for GeminiTranslator {
    fn line(&mut self, line: &str) -> Vec<PromptEvent> {
        let Some(value) = json_line(line) else {
            return Vec::new();
        };
        match value["type"].as_str().unwrap_or_default() {
            "init" => {
                self.session.seen(&value["session_id"]);
                vec![PromptEvent::metadata(
                    "init",
                    json!({"model": value["model"], "sessionId": value["session_id"]}),
                )]
            }
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

    fn stderr_line(&mut self, line: &str) {
        if line.contains(RESUME_FAILED) {
            self.session.expired(line.trim().to_string());
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

const PROMPT: &str = "Enter the authorization code:";

const INSTRUCTIONS: &str = "Open authUrl, sign in with Google, then paste the authorization code \
                           the page shows into this session's code endpoint.";

#[derive(Default)]
struct LoginRules {
    prompt: UrlAndCode,
}

impl ScreenRules for LoginRules {
    fn line(&mut self, line: &str) -> Option<LoginSignal> {
        if let Some((_, reason)) =
            line.split_once("Failed to authenticate with authorization code:")
        {
            return Some(LoginSignal::Failed(format!(
                "Failed to authenticate with authorization code: {}",
                reason.trim()
            )));
        }
        if line
            .trim_start()
            .starts_with("https://accounts.google.com/")
        {
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
#[path = "gemini_tests.rs"]
mod tests;
