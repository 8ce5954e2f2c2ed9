//! Codex's command, translator, login screen and credential file, on output recorded from the
//! real CLI (`recorded/`).

use super::*;
use crate::providers::common::replay;
use crate::providers::{CODEX, Endpoint};

#[test]
fn a_recorded_answer_is_one_content_event() {
    let (events, outcome) =
        replay::run(CODEX, include_str!("recorded/codex-success.jsonl"), Some(0));
    assert_eq!(replay::text(&events), "Hello from the fake model.");
    assert_eq!(replay::kinds(&events), ["init", "progress", "usage"]);
    assert!(matches!(outcome, Outcome::Success { usage: Some(_) }));
}

#[test]
fn a_recorded_failed_turn_is_a_failure_with_its_message() {
    let (_, outcome) = replay::run(
        CODEX,
        include_str!("recorded/codex-server-error.jsonl"),
        Some(1),
    );
    match outcome {
        Outcome::Failure { message, .. } => {
            assert!(message.contains("high demand"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_custom_endpoint_is_a_custom_provider() {
    let endpoint = Endpoint {
        base_url: "http://10.0.0.1:9/".into(),
        api_key: "k\"ey".into(),
    };
    let command = Codex.command(&Invocation {
        prompt: "hi",
        model: None,
        home: "/home/u",
        cwd: "/home/u",
        resume: None,
        endpoint: Some(&endpoint),
    });
    let config = &command.files[0];
    assert_eq!(config.path, "/home/u/.codex/config.toml");
    assert!(
        config
            .contents
            .contains("base_url = \"http://10.0.0.1:9/v1\"")
    );
    assert!(config.contents.contains("model_provider = \"custom\""));
    assert!(
        !config.contents.contains("k\"ey"),
        "the key stays in the environment"
    );
    assert_eq!(command.env["MC_MODEL_API_KEY"], "k\"ey");
    assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
}

#[test]
fn codex_device_code_and_success() {
    let signals = replay::login(CODEX, include_bytes!("recorded/codex-device-ok.txt"));
    let action = replay::awaiting(&signals);
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
    let signals = replay::login(CODEX, include_bytes!("recorded/codex-device-denied.txt"));
    replay::awaiting(&signals);
    assert_eq!(
        signals.last(),
        Some(&LoginSignal::Failed(
            "Error logging in: device auth failed with status 400 Bad Request".into()
        ))
    );
}

#[test]
fn commands_use_the_login_home() {
    let codex = CODEX.login_command("/tmp/mc-login-1");
    assert_eq!(codex.argv, ["codex", "login", "--device-auth"]);
    assert_eq!(codex.env["CODEX_HOME"], "/tmp/mc-login-1/.codex");
    assert_eq!(codex.env["HOME"], "/tmp/mc-login-1");
}

#[test]
fn the_status_command_reads_codex_home() {
    assert_eq!(
        Codex.status_command("/home/u"),
        StatusCommand::Run {
            argv: vec!["codex".into(), "login".into(), "status".into()],
            env: BTreeMap::from([("CODEX_HOME".to_string(), "/home/u/.codex".to_string())]),
        }
    );
}

#[test]
fn the_recorded_file_is_complete_with_its_expiry() {
    let codex = Codex
        .inspect_credential(include_bytes!("recorded/codex-auth.json"))
        .unwrap();
    // The recorded id/access token carries exp = 4102444800 (2100-01-01).
    assert_eq!(codex.expires_at_ms, Some(4_102_444_800_000));
    assert!(codex.refreshable);
}

#[test]
fn incomplete_files_do_not_count_as_written() {
    assert!(
        Codex
            .inspect_credential(b"{\"auth_mode\":\"chatgpt\",\"tokens\":{}}")
            .is_err()
    );
}

fn invocation<'a>(resume: Option<&'a str>) -> Invocation<'a> {
    Invocation {
        prompt: "-hi",
        model: Some("m"),
        home: "/home/u",
        cwd: "/work/p",
        resume,
        endpoint: None,
    }
}

#[test]
fn the_cwd_comes_before_resume_and_the_prompt_after_dashes() {
    let fixed = [
        "codex",
        "exec",
        "--json",
        "--skip-git-repo-check",
        "-C",
        "/work/p",
    ];
    let tail = ["--model", "m", "--", "-hi"];
    assert_eq!(
        Codex.command(&invocation(None)).argv,
        [&fixed[..], &tail].concat()
    );
    assert_eq!(
        Codex.command(&invocation(Some("01a2"))).argv,
        [&fixed[..], &["resume", "01a2"], &tail].concat()
    );
}

const RECORDED_ID: &str = "01a21b12-9ff0-7512-b417-61e12be1fe52";

#[test]
fn the_session_id_is_the_thread_id() {
    let recorded = include_str!("recorded/codex-success.jsonl");
    assert_eq!(
        replay::session_id(CODEX, recorded).as_deref(),
        Some(RECORDED_ID)
    );
    let (id, outcome) = replay::resumed(CODEX, RECORDED_ID, recorded, "", Some(0));
    assert_eq!(id.as_deref(), Some(RECORDED_ID));
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
}

#[test]
fn an_unknown_thread_is_an_expired_conversation() {
    // stdout is empty, the error is on stderr only, exit 1 (research §2).
    let stderr = "Error: thread/resume: thread/resume failed: no rollout found for thread id \
                  01a24cb1-6eb4-7a12-8144-3d9dd54dc956 (code -32600)\n";
    let (id, outcome) = replay::resumed(
        CODEX,
        "01a24cb1-6eb4-7a12-8144-3d9dd54dc956",
        "",
        stderr,
        Some(1),
    );
    assert_eq!(id, None);
    assert_eq!(
        outcome,
        Outcome::Failure {
            code: crate::providers::CONVERSATION_EXPIRED.into(),
            message: stderr.trim().into(),
        }
    );
}

#[test]
fn a_new_thread_instead_of_the_asked_one_is_an_expired_conversation() {
    // What an unknown thread name gets: a fresh thread, an answer, exit 0.
    let asked = "01a24cb1-6eb4-7a12-8144-3d9dd54dc956";
    let mut translator = Codex.translator(Some(asked));
    let events: Vec<_> = include_str!("recorded/codex-success.jsonl")
        .lines()
        .flat_map(|l| translator.line(l))
        .collect();
    assert_eq!(events, [], "an answer without the conversation's history");
    match translator.finish(Some(0)) {
        Outcome::Failure { code, message } => {
            assert_eq!(code, crate::providers::CONVERSATION_EXPIRED);
            assert!(
                message.contains(asked) && message.contains(RECORDED_ID),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(translator.session_id(), None);
}
