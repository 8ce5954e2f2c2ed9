//! The made-up CLI's translator, login screen and file, and its prompt script run by `/bin/sh`
//! in a temporary HOME: sessions that persist, resume, and fail when unknown.

use super::*;
use crate::providers::by_name;
use crate::providers::common::replay;

#[test]
fn its_own_lines_become_events() {
    let provider = by_name("made_up").unwrap();
    let (events, outcome) = replay::run(
        provider,
        "made-up CLI 0.1 (made-up-1)\n{\"kind\":\"word\",\"text\":\"Hi \"}\n\
         {\"kind\":\"word\",\"text\":\"there.\"}\n{\"kind\":\"end\",\"ok\":true,\"usage\":{\"words\":2}}\n",
        Some(0),
    );
    assert_eq!(replay::text(&events), "Hi there.");
    assert_eq!(replay::kinds(&events), ["usage"]);
    assert!(matches!(outcome, Outcome::Success { usage: Some(_) }));
    let (_, outcome) = replay::run(provider, "{\"kind\":\"end\",\"ok\":false}\n", Some(1));
    assert!(matches!(outcome, Outcome::Failure { code, .. } if code == "model_error"));
}

#[test]
fn its_login_screen_and_file() {
    let provider = by_name("made_up").unwrap();
    let signals = replay::login(
        provider,
        b"Visit https://login.made-up.example/device and type the code shown there:\r\n\
          made-up: logged in\r\n",
    );
    let action = replay::awaiting(&signals);
    assert_eq!(
        action.auth_url.as_deref(),
        Some("https://login.made-up.example/device")
    );
    assert_eq!(signals.last(), Some(&LoginSignal::Succeeded));
    let facts = MadeUp
        .inspect_credential(br#"{"token":"t","expires_ms":5,"refresh":"r"}"#)
        .unwrap();
    assert_eq!((facts.expires_at_ms, facts.refreshable), (Some(5), true));
    assert!(MadeUp.inspect_credential(br#"{"token":""}"#).is_err());
}

/// Runs the made-up prompt script as the runner would (files written, HOME and cwd set):
/// `(stdout, stderr, exit code)`.
fn run_script(home: &std::path::Path, resume: Option<&str>) -> (String, String, Option<i32>) {
    let home_path = home.display().to_string();
    let command = by_name("made_up").unwrap().command(&Invocation {
        prompt: "say hello",
        model: None,
        home: &home_path,
        cwd: &home_path,
        resume,
        endpoint: None,
    });
    for file in &command.files {
        let path = std::path::Path::new(&file.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &file.contents).unwrap();
    }
    let output = std::process::Command::new(&command.argv[0])
        .args(&command.argv[1..])
        .env_clear()
        .envs(&command.env)
        .env("PATH", "/usr/bin:/bin")
        .current_dir(home)
        .output()
        .unwrap();
    (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
        output.status.code(),
    )
}

/// Translates one run of the script that resumed `resume`.
fn translate(
    resume: Option<&str>,
    run: &(String, String, Option<i32>),
) -> (Option<String>, Outcome) {
    let mut translator = MadeUp.translator(resume);
    for line in run.0.lines() {
        translator.line(line);
    }
    for line in run.1.lines() {
        translator.stderr_line(line);
    }
    let outcome = translator.finish(run.2);
    (translator.session_id(), outcome)
}

#[test]
fn its_sessions_persist_resume_and_expire() {
    let home = tempfile::tempdir().unwrap();
    let first = run_script(home.path(), None);
    let (id, outcome) = translate(None, &first);
    assert!(matches!(outcome, Outcome::Success { .. }), "{first:?}");
    let id = id.expect("a new session's id");

    let second = run_script(home.path(), Some(&id));
    let (resumed, outcome) = translate(Some(&id), &second);
    assert!(matches!(outcome, Outcome::Success { .. }), "{second:?}");
    assert_eq!(resumed.as_deref(), Some(id.as_str()));
    let kept = std::fs::read_to_string(home.path().join(".made-up/sessions").join(&id)).unwrap();
    assert_eq!(kept, "say hello\nsay hello\n", "both turns in one session");

    let gone = run_script(home.path(), Some("mu-gone"));
    assert_eq!((gone.0.as_str(), gone.2), ("", Some(3)), "{gone:?}");
    let (none, outcome) = translate(Some("mu-gone"), &gone);
    assert_eq!(none, None);
    assert_eq!(
        outcome,
        Outcome::Failure {
            code: crate::providers::CONVERSATION_EXPIRED.into(),
            message: "made-up: no session mu-gone".into(),
        }
    );
}
