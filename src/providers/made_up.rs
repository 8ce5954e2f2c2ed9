//! A made-up CLI, built only with the `made-up-cli` feature: the proof that a fourth CLI is this
//! one file plus one line in the registry. It is `/bin/sh` running the scripts below, so it runs
//! in any guest and on a test's host agent.
//!
//! - Prompts: it says the words of its config file and how many bytes it was asked, one JSON
//!   line per word (`{"kind":"word","text":…}`), then `{"kind":"end","ok":…}` with its usage or
//!   its error. A banner line that is not JSON comes first, then `{"kind":"session","id":…}`.
//! - Sessions: one file per session under `.made-up/sessions/`, holding its prompts.
//!   `--resume ID` before the prompt continues one; an unknown id says `made-up: no session
//!   ID` on stderr and exits 3.
//! - Login: it shows a page and a code (`Visit https://… and type the code shown there:`), reads
//!   the code, and writes its token file, or says `made-up: refused: <reason>`.
//! - Credential: `.made-up/token.json`, `{"token", "expires_ms", "refresh"}`.
//! - Status: `test -s` on its token file.

use serde_json::{Value, json};

use super::common::{Session, env, has_text, json_file, json_line, no_result};
use super::login::{LoginCommand, LoginSignal, ScreenRules, UrlAndCode, url_in};
use super::{
    Cli, CliCommand, ConfigFile, Facts, Invocation, Outcome, PromptEvent, StatusCommand, Translator,
};

/// The arguments are `[--resume ID] PROMPT`. The words come from the config file the command
/// writes first.
const PROMPT_SCRIPT: &str = r#"set -eu
sessions="$HOME/.made-up/sessions"
if [ "$1" = --resume ]; then
  id=$2
  shift 2
  if [ ! -f "$sessions/$id" ]; then
    echo "made-up: no session $id" >&2
    exit 3
  fi
else
  mkdir -p "$sessions"
  id="mu-$(date +%s)-$$"
fi
printf '%s\n' "$1" >>"$sessions/$id"
echo "made-up CLI 0.1 (${MADE_UP_MODEL})"
printf '{"kind":"session","id":"%s"}\n' "$id"
n=0
for word in $(cat "$HOME/.made-up/words"); do
  printf '{"kind":"word","text":"%s "}\n' "$word"
  n=$((n + 1))
done
printf '{"kind":"word","text":"asked %s bytes."}\n' "${#1}"
printf '{"kind":"end","ok":true,"usage":{"words":%s}}\n' "$((n + 1))"
"#;

/// The code `1234` is the right one.
const LOGIN_SCRIPT: &str = r#"set -eu
echo "Visit https://login.made-up.example/device and type the code shown there:"
read -r code
if [ "$code" = 1234 ]; then
  mkdir -p "$HOME/.made-up"
  printf '{"token":"mu-%s","expires_ms":4102444800000,"refresh":"r"}' "$code" >"$HOME/.made-up/token.json"
  echo "made-up: logged in"
else
  echo "made-up: refused: wrong code"
  exit 1
fi
"#;

const INSTRUCTIONS: &str = "Open authUrl and paste the code it shows into this session's code \
                            endpoint.";

pub struct MadeUp;

impl Cli for MadeUp {
    fn name(&self) -> &'static str {
        "made_up"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["made-up"]
    }

    fn endpoints(&self) -> &'static [&'static str] {
        &[".made-up.example"]
    }

    fn command(&self, invocation: &Invocation<'_>) -> CliCommand {
        let model = invocation.model.unwrap_or("made-up-1");
        let mut argv: Vec<String> = ["/bin/sh", "-c", PROMPT_SCRIPT, "made-up"]
            .map(String::from)
            .to_vec();
        if let Some(id) = invocation.resume {
            argv.extend(["--resume".into(), id.to_string()]);
        }
        argv.push(invocation.prompt.to_string());
        CliCommand {
            argv,
            env: env(&[("MADE_UP_MODEL", model)]),
            files: vec![ConfigFile {
                path: format!("{}/.made-up/words", invocation.home),
                contents: "Hello from the made-up CLI,".into(),
                mode: 0o600,
            }],
        }
    }

    fn translator(&self, resume: Option<&str>) -> Box<dyn Translator> {
        Box::new(MadeUpTranslator {
            outcome: None,
            session: Session::new(resume),
        })
    }

    fn status_command(&self, home: &str) -> StatusCommand {
        StatusCommand::Run {
            argv: ["test", "-s", &format!("{home}/.made-up/token.json")]
                .map(String::from)
                .to_vec(),
            env: Default::default(),
        }
    }

    fn login_command(&self, _home: &str) -> LoginCommand {
        LoginCommand {
            argv: ["/bin/sh", "-c", LOGIN_SCRIPT].map(String::from).to_vec(),
            env: Default::default(),
            files: Vec::new(),
            dirs: vec![".made-up".into()],
        }
    }

    fn login_rules(&self) -> Box<dyn ScreenRules> {
        Box::<LoginRules>::default()
    }

    fn credential_file(&self) -> &'static str {
        ".made-up/token.json"
    }

    fn inspect_credential(&self, bytes: &[u8]) -> Result<Facts, String> {
        let json = json_file(bytes)?;
        if !has_text(&json, "token") {
            return Err("token is missing".into());
        }
        Ok(Facts {
            expires_at_ms: json.get("expires_ms").and_then(Value::as_i64),
            refreshable: has_text(&json, "refresh"),
        })
    }
}

struct MadeUpTranslator {
    outcome: Option<Outcome>,
    session: Session,
}

impl Translator for MadeUpTranslator {
    fn line(&mut self, line: &str) -> Vec<PromptEvent> {
        let Some(value) = json_line(line) else {
            return Vec::new();
        };
        match value["kind"].as_str() {
            Some("session") => {
                self.session.seen(&value["id"]);
                vec![PromptEvent::metadata(
                    "init",
                    json!({"sessionId": value["id"]}),
                )]
            }
            Some("word") => vec![PromptEvent::content(
                value["text"].as_str().unwrap_or_default(),
            )],
            Some("end") if value["ok"] == true => {
                let usage = value.get("usage").cloned();
                self.outcome = Some(Outcome::Success {
                    usage: usage.clone(),
                });
                usage
                    .map(|u| vec![PromptEvent::metadata("usage", json!({ "usage": u }))])
                    .unwrap_or_default()
            }
            Some("end") => {
                self.outcome = Some(Outcome::Failure {
                    code: "model_error".into(),
                    message: value["error"]
                        .as_str()
                        .unwrap_or("the made-up CLI reported an error")
                        .to_string(),
                });
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn stderr_line(&mut self, line: &str) {
        if line.starts_with("made-up: no session") {
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

const PROMPT: &str = "type the code shown there:";

#[derive(Default)]
struct LoginRules {
    prompt: UrlAndCode,
}

impl ScreenRules for LoginRules {
    fn line(&mut self, line: &str) -> Option<LoginSignal> {
        if let Some((_, reason)) = line.split_once("made-up: refused:") {
            return Some(LoginSignal::Failed(format!("refused: {}", reason.trim())));
        }
        if line.contains("made-up: logged in") {
            return Some(LoginSignal::Succeeded);
        }
        if line.starts_with("Visit ") {
            self.prompt.url = url_in(line);
        }
        if line.contains(PROMPT) {
            return self.prompt.seen(INSTRUCTIONS);
        }
        None
    }
}

#[cfg(test)]
#[path = "made_up_tests.rs"]
mod tests;
