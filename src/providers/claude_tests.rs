//! Claude Code's command, translator, login screen and credential file, on output recorded
//! from the real CLI (`recorded/`).

use super::*;
use crate::providers::CLAUDE_CODE;
use crate::providers::common::replay;

#[test]
fn a_recorded_answer_streams_its_deltas_once() {
    let (events, outcome) = replay::run(
        CLAUDE_CODE,
        include_str!("recorded/claude-success.jsonl"),
        Some(0),
    );
    assert_eq!(replay::text(&events), "Hello from the fake model.");
    let contents = events
        .iter()
        .filter(|e| matches!(e, PromptEvent::Content { .. }))
        .count();
    assert_eq!(contents, 5, "one per delta; the assistant line adds none");
    assert_eq!(replay::kinds(&events), ["init", "progress", "usage"]);
    assert!(
        matches!(outcome, Outcome::Success { usage: Some(_) }),
        "{outcome:?}"
    );
}

#[test]
fn a_recorded_server_error_is_a_failure_despite_subtype_success() {
    let (events, outcome) = replay::run(
        CLAUDE_CODE,
        include_str!("recorded/claude-server-error.jsonl"),
        Some(1),
    );
    assert_eq!(
        replay::text(&events),
        "",
        "the synthetic assistant text is not the answer"
    );
    match outcome {
        Outcome::Failure { code, message } => {
            assert_eq!(code, "model_error");
            assert!(message.contains("500"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_command_keeps_the_prompt_a_prompt() {
    let command = ClaudeCode.command(&Invocation {
        prompt: "--help me",
        model: Some("claude-sonnet-4-5"),
        home: "/home/u",
        cwd: "/home/u",
        resume: None,
        endpoint: None,
    });
    let n = command.argv.len();
    assert_eq!(command.argv[n - 2..], ["--", "--help me"]);
    assert!(
        command
            .argv
            .windows(2)
            .any(|w| w == ["--model", "claude-sonnet-4-5"])
    );
    assert!(!command.env.contains_key("ANTHROPIC_BASE_URL"));
}

#[test]
fn claude_login_url_prompt_and_success() {
    let signals = replay::login(CLAUDE_CODE, include_bytes!("recorded/claude-login-ok.txt"));
    let action = replay::awaiting(&signals);
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
        let signals = replay::login(CLAUDE_CODE, transcript);
        replay::awaiting(&signals);
        assert_eq!(
            signals.last(),
            Some(&LoginSignal::Failed(reason.to_string()))
        );
    }
}

#[test]
fn the_recorded_file_is_complete_with_its_expiry() {
    let claude = ClaudeCode
        .inspect_credential(include_bytes!("recorded/claude-credentials.json"))
        .unwrap();
    assert_eq!(claude.expires_at_ms, Some(1_795_786_056_788));
    assert!(claude.refreshable);
}

#[test]
fn incomplete_files_do_not_count_as_written() {
    assert!(
        ClaudeCode
            .inspect_credential(b"{\"claudeAiOauth\":{")
            .is_err()
    );
    assert!(
        ClaudeCode
            .inspect_credential(b"{\"claudeAiOauth\":{\"accessToken\":\"\"}}")
            .is_err()
    );
    let error = ClaudeCode
        .inspect_credential(b"{\"claudeAiOauth\":{\"refreshToken\":\"secret-x\"}}")
        .unwrap_err();
    assert!(!error.contains("secret-x"));
}

fn invocation<'a>(resume: Option<&'a str>) -> Invocation<'a> {
    Invocation {
        prompt: "hi",
        model: Some("m"),
        home: "/home/u",
        cwd: "/work/p",
        resume,
        endpoint: None,
    }
}

const FIXED: [&str; 6] = [
    "claude",
    "-p",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
];

#[test]
fn a_new_session_persists_and_a_resumed_one_names_its_id() {
    let new = ClaudeCode.command(&invocation(None)).argv;
    let tail = ["--model", "m", "--", "hi"];
    assert_eq!(new, [&FIXED[..], &tail].concat());
    let resumed = ClaudeCode.command(&invocation(Some("93024dd7"))).argv;
    assert_eq!(
        resumed,
        [&FIXED[..], &["--resume", "93024dd7"], &tail].concat()
    );
}

const RECORDED_ID: &str = "93024dd7-de82-46e1-a3fa-50c502dc2af6";

#[test]
fn the_session_id_is_the_one_on_its_lines() {
    let recorded = include_str!("recorded/claude-success.jsonl");
    assert_eq!(
        replay::session_id(CLAUDE_CODE, recorded).as_deref(),
        Some(RECORDED_ID)
    );
    // Resuming keeps the id (research §1), and the run succeeds.
    let (id, outcome) = replay::resumed(CLAUDE_CODE, RECORDED_ID, recorded, "", Some(0));
    assert_eq!(id.as_deref(), Some(RECORDED_ID));
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
}

/// The one stdout line of `--resume` with an id its cwd has no session of (research §2; the
/// fields it elides are left out), exit 1.
const NO_CONVERSATION_LINE: &str = r#"{"type":"result","subtype":"error_during_execution","duration_ms":0,"is_error":true,"num_turns":0,"session_id":"5b0f6a39-0c36-4b55-9d6e-8d1f1a0f6c11","total_cost_usd":0,"errors":["No conversation found with session ID: 5b0f6a39-0c36-4b55-9d6e-8d1f1a0f6c11"]}"#;

#[test]
fn an_unknown_session_is_an_expired_conversation() {
    let (id, outcome) = replay::resumed(
        CLAUDE_CODE,
        "5b0f6a39-0c36-4b55-9d6e-8d1f1a0f6c11",
        NO_CONVERSATION_LINE,
        "No conversation found with session ID: 5b0f6a39-0c36-4b55-9d6e-8d1f1a0f6c11",
        Some(1),
    );
    assert_eq!(id, None, "the session is gone");
    assert_eq!(
        outcome,
        Outcome::Failure {
            code: crate::providers::CONVERSATION_EXPIRED.into(),
            message: "No conversation found with session ID: 5b0f6a39-0c36-4b55-9d6e-8d1f1a0f6c11"
                .into(),
        }
    );
}

#[test]
fn an_error_without_result_text_says_its_errors() {
    let (_, outcome) = replay::run(
        CLAUDE_CODE,
        r#"{"type":"result","is_error":true,"errors":["Something else broke"]}"#,
        Some(1),
    );
    assert_eq!(
        outcome,
        Outcome::Failure {
            code: "model_error".into(),
            message: "Something else broke".into(),
        }
    );
}
