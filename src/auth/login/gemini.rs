//! Gemini CLI: only the interactive screen logs in. With `NO_BROWSER=true` and OAuth selected in
//! its settings it prints an authorize URL and `Enter the authorization code:`. A wrong code
//! prints `Failed to authenticate with authorization code:<reason>` and starts over with a new
//! URL; success prints nothing and the screen moves on, so the credential file decides.

use std::collections::BTreeMap;

use serde_json::json;

use super::{LoginCommand, LoginSignal, ScreenRules, UrlAndCode, url_in};

const PROMPT: &str = "Enter the authorization code:";

pub fn command() -> LoginCommand {
    let settings = json!({
        "security": {"auth": {"selectedType": "oauth-personal"}},
        "privacy": {"usageStatisticsEnabled": false},
        "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false}
    });
    LoginCommand {
        argv: vec!["gemini".into()],
        env: BTreeMap::from([
            ("NO_BROWSER".to_string(), "true".to_string()),
            ("GEMINI_CLI_TRUST_WORKSPACE".to_string(), "true".to_string()),
            ("GEMINI_CLI_NO_RELAUNCH".to_string(), "true".to_string()),
        ]),
        files: vec![(".gemini/settings.json".into(), settings.to_string())],
        dirs: Vec::new(),
    }
}

const INSTRUCTIONS: &str = "Open authUrl, sign in with Google, then paste the authorization code \
                           the page shows into this session's code endpoint.";

#[derive(Default)]
pub struct Rules {
    prompt: UrlAndCode,
}

impl ScreenRules for Rules {
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
