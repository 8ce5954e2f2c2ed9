//! Claude Code: `claude auth login` prints an authorize URL whose redirect is the vendor's
//! code page, then `Paste code here if prompted >` and reads `code#state`. It ends with
//! `Login successful.` or `Login failed: <reason>`.

use std::collections::BTreeMap;

use super::{LoginCommand, LoginSignal, ScreenRules, UrlAndCode, url_in};

const PROMPT: &str = "Paste code here if prompted";

pub fn command() -> LoginCommand {
    LoginCommand {
        argv: vec!["claude".into(), "auth".into(), "login".into()],
        env: BTreeMap::from([
            ("DISABLE_AUTOUPDATER".to_string(), "1".to_string()),
            ("DISABLE_TELEMETRY".to_string(), "1".to_string()),
        ]),
        files: Vec::new(),
        dirs: Vec::new(),
    }
}

const INSTRUCTIONS: &str = "Open authUrl, sign in to Claude, then paste the code the page shows \
                           (code#state) into this session's code endpoint.";

#[derive(Default)]
pub struct Rules {
    prompt: UrlAndCode,
}

impl ScreenRules for Rules {
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
