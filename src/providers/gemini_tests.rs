//! Gemini CLI's translator, login screen and credential file, on output recorded from the real
//! CLI (`recorded/`).

use super::*;
use crate::providers::GEMINI_CLI;
use crate::providers::common::replay;

#[test]
fn a_recorded_answer_streams_its_chunks() {
    let (events, outcome) = replay::run(
        GEMINI_CLI,
        include_str!("recorded/gemini-success.jsonl"),
        Some(0),
    );
    assert_eq!(replay::text(&events), "Hello from the fake model.");
    assert_eq!(replay::kinds(&events), ["init", "usage"]);
    assert!(matches!(outcome, Outcome::Success { .. }));
}

#[test]
fn an_error_result_fails_even_with_exit_status_0() {
    let (events, outcome) = replay::run(
        GEMINI_CLI,
        include_str!("recorded/gemini-server-error.jsonl"),
        Some(0),
    );
    assert_eq!(
        replay::text(&events),
        "",
        "the user's own message is not the answer"
    );
    match outcome {
        Outcome::Failure { message, .. } => {
            assert!(
                message.contains("the fake model server failed"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_result_line_is_a_failure() {
    let (_, outcome) = replay::run(GEMINI_CLI, "not json\n", Some(0));
    assert!(matches!(outcome, Outcome::Failure { code, .. } if code == "cli_failed"));
}

#[test]
fn gemini_login_url_and_prompt() {
    let signals = replay::login(GEMINI_CLI, include_bytes!("recorded/gemini-login-ok.txt"));
    let action = replay::awaiting(&signals);
    let url = action.auth_url.as_deref().unwrap();
    assert!(url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?"));
    assert!(url.ends_with(".apps.googleusercontent.com"), "{url}");
    assert!(action.expects_code);
    assert!(!signals.iter().any(|s| matches!(s, LoginSignal::Failed(_))));
}

#[test]
fn gemini_wrong_code_fails_at_the_first_refusal() {
    let signals = replay::login(
        GEMINI_CLI,
        include_bytes!("recorded/gemini-login-bad-code.txt"),
    );
    // The CLI starts over with a second URL; the relay stops at the first refusal.
    replay::awaiting(&signals);
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
fn commands_use_the_login_home() {
    let gemini = GEMINI_CLI.login_command("/tmp/x");
    assert_eq!(gemini.env["NO_BROWSER"], "true");
    assert!(gemini.files[0].1.contains("oauth-personal"));
}

#[test]
fn the_recorded_file_is_complete_with_its_expiry() {
    let gemini = GeminiCli
        .inspect_credential(include_bytes!("recorded/gemini-oauth-creds.json"))
        .unwrap();
    assert_eq!(gemini.expires_at_ms, Some(1_795_760_645_065));
}

#[test]
fn incomplete_files_do_not_count_as_written() {
    assert!(
        GeminiCli
            .inspect_credential(b"{\"token_type\":\"Bearer\"}")
            .is_err()
    );
}

fn invocation<'a>(resume: Option<&'a str>) -> Invocation<'a> {
    Invocation {
        prompt: "-hi",
        model: None,
        home: "/home/u",
        cwd: "/work/p",
        resume,
        endpoint: None,
    }
}

#[test]
fn a_resumed_session_names_its_id_before_the_prompt() {
    let fixed = [
        "gemini",
        "-m",
        DEFAULT_MODEL,
        "--output-format",
        "stream-json",
    ];
    assert_eq!(
        GeminiCli.command(&invocation(None)).argv,
        [&fixed[..], &["--prompt=-hi"]].concat()
    );
    assert_eq!(
        GeminiCli.command(&invocation(Some("807c"))).argv,
        [&fixed[..], &["--resume", "807c", "--prompt=-hi"]].concat()
    );
}

const RECORDED_ID: &str = "807c84c7-e650-4efa-ad29-2e16d510b48d";

#[test]
fn the_session_id_is_inits() {
    let recorded = include_str!("recorded/gemini-success.jsonl");
    assert_eq!(
        replay::session_id(GEMINI_CLI, recorded).as_deref(),
        Some(RECORDED_ID)
    );
    let (id, outcome) = replay::resumed(GEMINI_CLI, RECORDED_ID, recorded, "", Some(0));
    assert_eq!(id.as_deref(), Some(RECORDED_ID));
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
}

#[test]
fn an_unknown_session_is_an_expired_conversation() {
    // stdout is empty, the error is on stderr only, exit 42 (research §2).
    let asked = "0d6c3a52-1b7e-4f0a-9c55-2f1d8e7b6a90";
    for first in [
        format!("Error resuming session: Invalid session identifier \"{asked}\"."),
        "Error resuming session: No previous sessions found for this project.".to_string(),
    ] {
        let stderr = format!(
            "{first}\nSearched for sessions in /home/u/.gemini/tmp/p/chats.\nUse --list-sessions to see the sessions.\n"
        );
        let (id, outcome) = replay::resumed(GEMINI_CLI, asked, "", &stderr, Some(42));
        assert_eq!(id, None);
        assert_eq!(
            outcome,
            Outcome::Failure {
                code: crate::providers::CONVERSATION_EXPIRED.into(),
                message: first,
            }
        );
    }
}
