//! The screen rules against transcripts recorded from the real CLIs (see
//! `tests/support/login_recorder/`): raw PTY bytes, ANSI sequences and all.

use super::*;

fn replay(provider: Provider, transcript: &[u8]) -> Vec<LoginSignal> {
    let mut screen = LoginScreen::new(provider);
    // Split at awkward places, as a PTY does.
    transcript
        .chunks(37)
        .flat_map(|chunk| screen.feed(chunk))
        .collect()
}

fn awaiting(signals: &[LoginSignal]) -> &UserAction {
    let found: Vec<_> = signals
        .iter()
        .filter_map(|s| match s {
            LoginSignal::AwaitingUser(action) => Some(action),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "one prompt for the user: {signals:?}");
    found[0]
}

#[test]
fn claude_login_url_prompt_and_success() {
    let signals = replay(
        Provider::ClaudeCode,
        include_bytes!("recorded/claude-login-ok.txt"),
    );
    let action = awaiting(&signals);
    let url = action.auth_url.as_deref().unwrap();
    assert!(url.starts_with("https://claude.com/cai/oauth/authorize?code=true&client_id="));
    assert!(url.contains("&state=") && url.contains("code_challenge="));
    assert!(!url.contains('\r') && !url.contains('\u{1b}'));
    assert!(action.expects_code && action.device_code.is_none());
    assert_eq!(signals.last(), Some(&LoginSignal::Succeeded));
}

#[test]
fn claude_login_failures_carry_the_clis_message() {
    for (transcript, reason) in [
        (
            &include_bytes!("recorded/claude-login-bad-code.txt")[..],
            "Login failed: Request failed with status code 400",
        ),
        (
            &include_bytes!("recorded/claude-login-offline.txt")[..],
            "Login failed: getaddrinfo ENOTFOUND platform.claude.com",
        ),
    ] {
        let signals = replay(Provider::ClaudeCode, transcript);
        awaiting(&signals);
        assert_eq!(
            signals.last(),
            Some(&LoginSignal::Failed(reason.to_string()))
        );
    }
}

#[test]
fn codex_device_code_and_success() {
    let signals = replay(
        Provider::Codex,
        include_bytes!("recorded/codex-device-ok.txt"),
    );
    let action = awaiting(&signals);
    assert_eq!(
        action.verification_url.as_deref(),
        Some("https://auth.openai.com/codex/device")
    );
    assert_eq!(action.device_code.as_deref(), Some("WXYZ-1234"));
    assert!(!action.expects_code && action.auth_url.is_none());
    assert!(action.instructions.contains("WXYZ-1234"));
    assert_eq!(signals.last(), Some(&LoginSignal::Succeeded));
}

#[test]
fn codex_denied_device_code_fails_with_the_clis_message() {
    let signals = replay(
        Provider::Codex,
        include_bytes!("recorded/codex-device-denied.txt"),
    );
    awaiting(&signals);
    assert_eq!(
        signals.last(),
        Some(&LoginSignal::Failed(
            "Error logging in: device auth failed with status 400 Bad Request".into()
        ))
    );
}

#[test]
fn gemini_login_url_and_prompt() {
    let signals = replay(
        Provider::GeminiCli,
        include_bytes!("recorded/gemini-login-ok.txt"),
    );
    let action = awaiting(&signals);
    let url = action.auth_url.as_deref().unwrap();
    assert!(url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?"));
    assert!(url.ends_with(".apps.googleusercontent.com"), "{url}");
    assert!(action.expects_code);
    assert!(!signals.iter().any(|s| matches!(s, LoginSignal::Failed(_))));
}

#[test]
fn gemini_wrong_code_fails_at_the_first_refusal() {
    let signals = replay(
        Provider::GeminiCli,
        include_bytes!("recorded/gemini-login-bad-code.txt"),
    );
    // The CLI starts over with a second URL; the relay stops at the first refusal.
    awaiting(&signals);
    let failures: Vec<_> = signals
        .iter()
        .filter(|s| matches!(s, LoginSignal::Failed(_)))
        .collect();
    assert_eq!(
        failures.first(),
        Some(&&LoginSignal::Failed(
            "Failed to authenticate with authorization code: invalid_grant".into()
        ))
    );
}

#[test]
fn a_huge_line_without_newline_is_bounded() {
    let mut screen = LoginScreen::new(Provider::ClaudeCode);
    let signals = screen.feed(&vec![b'x'; 3 * MAX_LINE_CHARS]);
    assert!(signals.is_empty());
    assert!(screen.pending.len() <= MAX_LINE_CHARS);
    assert!(
        screen
            .last_line()
            .is_some_and(|l| l.len() <= MAX_LINE_CHARS)
    );
}

#[test]
fn commands_use_the_login_home() {
    let codex = command(Provider::Codex, "/tmp/mc-login-1");
    assert_eq!(codex.argv, ["codex", "login", "--device-auth"]);
    assert_eq!(codex.env["CODEX_HOME"], "/tmp/mc-login-1/.codex");
    assert_eq!(codex.env["HOME"], "/tmp/mc-login-1");
    let gemini = command(Provider::GeminiCli, "/tmp/x");
    assert_eq!(gemini.env["NO_BROWSER"], "true");
    assert!(gemini.files[0].1.contains("oauth-personal"));
}
