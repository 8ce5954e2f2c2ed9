//! Codex: `codex login --device-auth` prints the vendor's device page and a one-time code, then
//! polls until the user has entered the code there. Nothing is pasted back. It ends with
//! `Successfully logged in` or `Error logging in: <reason>`.

use std::collections::BTreeMap;

use super::{LoginCommand, LoginSignal, ScreenRules, UserAction, url_in};

pub fn command(home: &str) -> LoginCommand {
    LoginCommand {
        argv: vec!["codex".into(), "login".into(), "--device-auth".into()],
        env: BTreeMap::from([("CODEX_HOME".to_string(), format!("{home}/.codex"))]),
        files: Vec::new(),
        dirs: vec![".codex".into()],
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
pub struct Rules {
    expecting: Expecting,
    url: Option<String>,
    code: Option<String>,
    announced: bool,
}

impl ScreenRules for Rules {
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
