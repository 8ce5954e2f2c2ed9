//! The generic half of a headless login: the command that starts it, and a [`LoginScreen`] that
//! turns the PTY's bytes into lines for a CLI's [`ScreenRules`] (the authorize URL or device
//! code, the prompt for the code, the CLI's own verdict). Each CLI's rules are in its file and
//! tested on transcripts recorded from the real CLI at the pinned version (`recorded/`, see
//! `tests/support/login_recorder/`).

use std::collections::BTreeMap;

use super::Provider;

/// The most of a login's screen kept for the failure message and for parsing a line.
const MAX_LINE_CHARS: usize = 8 * 1024;
const KEPT_LINES: usize = 20;

/// How to start a provider's login in a fresh HOME.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginCommand {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Files written into the login's HOME first: (path relative to HOME, contents).
    pub files: Vec<(String, String)>,
    /// Directories (relative to HOME) the CLI expects to exist.
    pub dirs: Vec<String>,
}

/// What the user must do to finish the login.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserAction {
    pub auth_url: Option<String>,
    pub device_code: Option<String>,
    pub verification_url: Option<String>,
    pub instructions: String,
    /// Whether the CLI reads a code pasted back (false for a device-code flow).
    pub expects_code: bool,
}

/// Something the screen said.
#[derive(Debug, Clone, PartialEq)]
pub enum LoginSignal {
    /// The CLI is waiting for the user.
    AwaitingUser(UserAction),
    /// The CLI reported failure, in its own words.
    Failed(String),
    /// The CLI reported success (the credential file is what counts).
    Succeeded,
}

/// Reads one provider's login screen.
pub trait ScreenRules: Send {
    /// A complete line of the screen (ANSI sequences removed, trimmed at the end).
    fn line(&mut self, line: &str) -> Option<LoginSignal>;
    /// The unfinished last line: prompts end without a newline.
    fn partial(&mut self, _text: &str) -> Option<LoginSignal> {
        None
    }
}

/// A login's screen as it arrives from the PTY, turned into signals.
pub struct LoginScreen {
    rules: Box<dyn ScreenRules>,
    pending: String,
    recent: std::collections::VecDeque<String>,
}

impl LoginScreen {
    pub fn new(provider: Provider) -> LoginScreen {
        LoginScreen {
            rules: provider.cli().login_rules(),
            pending: String::new(),
            recent: Default::default(),
        }
    }

    /// Feeds raw PTY output; returns what it revealed, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<LoginSignal> {
        let text = strip_ansi_escapes::strip_str(String::from_utf8_lossy(bytes));
        self.pending.push_str(&text);
        let mut signals = Vec::new();
        while let Some(end) = self.pending.find(['\n', '\r']) {
            let line: String = self.pending.drain(..=end).collect();
            let line = line.trim_end();
            if line.trim().is_empty() {
                continue;
            }
            let line = truncate(line);
            self.remember(&line);
            signals.extend(self.rules.line(&line));
        }
        if self.pending.len() > MAX_LINE_CHARS {
            let line = truncate(&std::mem::take(&mut self.pending));
            self.remember(&line);
            signals.extend(self.rules.line(&line));
        }
        if !self.pending.trim().is_empty() {
            let partial = self.pending.clone();
            signals.extend(self.rules.partial(&partial));
        }
        signals
    }

    /// The last lines of the screen, for an error when the CLI ends without a verdict.
    pub fn last_line(&self) -> Option<&str> {
        self.recent.back().map(String::as_str)
    }

    fn remember(&mut self, line: &str) {
        if self.recent.len() == KEPT_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(line.to_string());
    }
}

fn truncate(line: &str) -> String {
    let mut cut = line.len().min(MAX_LINE_CHARS);
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    line[..cut].to_string()
}

/// A login that shows an authorize URL and then waits for a pasted code: it is announced once,
/// when the prompt appears after the URL.
#[derive(Default)]
pub struct UrlAndCode {
    pub url: Option<String>,
    announced: bool,
}

impl UrlAndCode {
    pub fn seen(&mut self, instructions: &str) -> Option<LoginSignal> {
        if self.announced {
            return None;
        }
        let url = self.url.clone()?;
        self.announced = true;
        Some(LoginSignal::AwaitingUser(UserAction {
            auth_url: Some(url),
            instructions: instructions.to_string(),
            expects_code: true,
            ..UserAction::default()
        }))
    }
}

/// The first `https://` URL in a line.
pub fn url_in(line: &str) -> Option<String> {
    let start = line.find("https://")?;
    let url = line[start..].split_whitespace().next()?;
    Some(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::CLAUDE_CODE;

    #[test]
    fn a_huge_line_without_newline_is_bounded() {
        let mut screen = LoginScreen::new(CLAUDE_CODE);
        let signals = screen.feed(&vec![b'x'; 3 * MAX_LINE_CHARS]);
        assert!(signals.is_empty());
        assert!(screen.pending.len() <= MAX_LINE_CHARS);
        assert!(
            screen
                .last_line()
                .is_some_and(|l| l.len() <= MAX_LINE_CHARS)
        );
    }
}
