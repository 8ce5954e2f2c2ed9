//! Codex.
//!
//! - Prompts: `codex exec --json --skip-git-repo-check -C CWD [resume ID] …`. It prints whole
//!   items, not token deltas: each `agent_message` item is one `content` event.
//! - Sessions: rollout files under `CODEX_HOME/sessions/`, found from any cwd. The id is
//!   `thread.started`'s `thread_id`; `-C` must come before `resume` or clap refuses it. An
//!   unknown id says `no rollout found for thread id` on stderr only, exit 1; an unknown
//!   thread *name* silently starts a new thread, so a different `thread_id` fails the run too.
//!   On a resumed thread `turn.completed`'s usage is the thread's total so far, not the turn's
//!   (3/5, 6/10, 9/15 over three turns); the turn's own is the difference from the last one.
//! - Login: `codex login --device-auth` prints the vendor's device page and a one-time code,
//!   then polls until the user has entered the code there. Nothing is pasted back. It ends with
//!   `Successfully logged in` or `Error logging in: <reason>`.
//! - Credential: `.codex/auth.json`, either an API key or ChatGPT tokens whose access token is
//!   a JWT. Everything of Codex's lives in `CODEX_HOME`, which is set to `$HOME/.codex`.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Value, json};

use super::common::{Session, argv, has_text, json_file, json_line, no_result};
use super::login::{LoginCommand, LoginSignal, ScreenRules, UserAction, url_in};
use super::{
    Cli, CliCommand, ConfigFile, Facts, Invocation, Outcome, PromptEvent, StatusCommand, Translator,
};

/// The environment variable the custom provider reads its key from.
const KEY_VARIABLE: &str = "MC_MODEL_API_KEY";

pub struct Codex;

fn codex_home(home: &str) -> String {
    format!("{home}/.codex")
}

impl Cli for Codex {
    fn name(&self) -> &'static str {
        "codex"
    }

    fn endpoints(&self) -> &'static [&'static str] {
        &[".openai.com", ".chatgpt.com"]
    }

    fn command(&self, invocation: &Invocation<'_>) -> CliCommand {
        let codex_home = codex_home(invocation.home);
        let argv = argv(
            &[
                "codex",
                "exec",
                "--json",
                "--skip-git-repo-check",
                "-C",
                invocation.cwd,
            ],
            "resume",
            invocation,
        );
        let mut env = BTreeMap::from([("CODEX_HOME".to_string(), codex_home.clone())]);
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

    fn translator(&self, resume: Option<&str>) -> Box<dyn Translator> {
        Box::new(CodexTranslator {
            last_error: None,
            outcome: None,
            session: Session::new(resume),
        })
    }

    fn status_command(&self, home: &str) -> StatusCommand {
        StatusCommand::Run {
            argv: vec!["codex".into(), "login".into(), "status".into()],
            env: BTreeMap::from([("CODEX_HOME".to_string(), codex_home(home))]),
        }
    }

    fn login_command(&self, home: &str) -> LoginCommand {
        LoginCommand {
            argv: vec!["codex".into(), "login".into(), "--device-auth".into()],
            env: BTreeMap::from([("CODEX_HOME".to_string(), codex_home(home))]),
            files: Vec::new(),
            dirs: vec![".codex".into()],
        }
    }

    fn login_rules(&self) -> Box<dyn ScreenRules> {
        Box::<LoginRules>::default()
    }

    fn credential_file(&self) -> &'static str {
        ".codex/auth.json"
    }

    fn inspect_credential(&self, bytes: &[u8]) -> Result<Facts, String> {
        let json = json_file(bytes)?;
        if has_text(&json, "OPENAI_API_KEY") {
            return Ok(Facts {
                expires_at_ms: None,
                refreshable: false,
            });
        }
        let tokens = json.get("tokens").ok_or("no tokens object")?;
        if !has_text(tokens, "access_token") {
            return Err("tokens.access_token is missing".into());
        }
        Ok(Facts {
            // The access token is a JWT; its `exp` claim is in seconds.
            expires_at_ms: tokens
                .get("access_token")
                .and_then(Value::as_str)
                .and_then(jwt_expiry_ms),
            refreshable: has_text(tokens, "refresh_token"),
        })
    }
}

fn jwt_expiry_ms(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()?.checked_mul(1000)
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

/// What its stderr says when `resume` names no thread it has.
const NO_ROLLOUT: &str = "no rollout found for thread id";

struct CodexTranslator {
    last_error: Option<String>,
    outcome: Option<Outcome>,
    session: Session,
}

impl Translator for CodexTranslator {
    fn line(&mut self, line: &str) -> Vec<PromptEvent> {
        let Some(value) = json_line(line) else {
            return Vec::new();
        };
        if value["type"] == "thread.started" {
            self.session.seen(&value["thread_id"]);
        }
        // A new thread instead of the asked one answers without the conversation's history:
        // none of it is shown as the conversation's answer.
        if self.session.is_expired() {
            return Vec::new();
        }
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

    fn stderr_line(&mut self, line: &str) {
        if line.contains(NO_ROLLOUT) {
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

#[derive(Default, PartialEq)]
enum Expecting {
    #[default]
    Nothing,
    Url,
    Code,
}

#[derive(Default)]
struct LoginRules {
    expecting: Expecting,
    url: Option<String>,
    code: Option<String>,
    announced: bool,
}

impl ScreenRules for LoginRules {
    fn line(&mut self, line: &str) -> Option<LoginSignal> {
        if let Some((_, reason)) = line.split_once("Error logging in:") {
            return Some(LoginSignal::Failed(format!(
                "Error logging in: {}",
                reason.trim()
            )));
        }
        if line.contains("Successfully logged in") {
            return Some(LoginSignal::Succeeded);
        }
        if line.contains("Open this link in your browser") {
            self.expecting = Expecting::Url;
            return None;
        }
        if line.contains("Enter this one-time code") {
            self.expecting = Expecting::Code;
            return None;
        }
        match self.expecting {
            Expecting::Url => {
                if let Some(url) = url_in(line) {
                    self.url = Some(url);
                    self.expecting = Expecting::Nothing;
                }
            }
            Expecting::Code => {
                let code = line.trim();
                let plausible = !code.is_empty()
                    && code.len() <= 32
                    && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                if plausible {
                    self.code = Some(code.to_string());
                    self.expecting = Expecting::Nothing;
                }
            }
            Expecting::Nothing => {}
        }
        if self.announced {
            return None;
        }
        let (Some(url), Some(code)) = (&self.url, &self.code) else {
            return None;
        };
        self.announced = true;
        Some(LoginSignal::AwaitingUser(UserAction {
            verification_url: Some(url.clone()),
            device_code: Some(code.clone()),
            instructions: format!(
                "Open {url}, sign in to ChatGPT and enter the code {code}; the login finishes by \
                 itself. The code expires in 15 minutes."
            ),
            expects_code: false,
            ..UserAction::default()
        }))
    }
}

#[cfg(test)]
#[path = "codex_tests.rs"]
mod tests;
