//! A fourth CLI added the way the providers module says one is: `src/providers/made_up.rs` and
//! one line in its registry, built with the `made-up-cli` feature. Its prompt runs through the
//! daemon's whole HTTP/SSE path into a VM that is the real `vm-agent` run as a host process
//! (`support::host_agent`, in network, UTS and mount namespaces of this process's own, as in
//! `tests/prompts.rs`); its answer, in a line format of its own, must arrive as content frames
//! and complete the prompt's record. Its login command and screen rules are run too, on the
//! host, with its credential file read back through the same module.
//!
//! Needs root for the namespaces; without it this says so and skips, unless
//! `MC_REQUIRE_GUESTS=1`. Run with `cargo test --features made-up-cli --test made_up_provider`.

mod support;

use std::io::Write;
use std::process::{ExitCode, Stdio};

use master_controller::net::egress::Bypass;
use master_controller::providers::{self, LoginScreen, LoginSignal, Provider};
use serde_json::json;
use support::host_agent;
use support::sse::SseStream;
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon, harness};

/// The words of the made-up CLI's config file, then what it says about the prompt below.
const ANSWER: &str = "Hello from the made-up CLI, asked 9 bytes.";
const PROMPT: &str = "say hello";

struct World {
    daemon: TestDaemon,
    http: reqwest::Client,
    _home: tempfile::TempDir,
    _secrets: tempfile::TempDir,
}

fn made_up() -> Provider {
    providers::by_name("made_up").expect("the made-up CLI is in the registry")
}

async fn a_prompt_streams_its_answer_through_the_daemon(world: &mut World) {
    let user = world
        .daemon
        .create_user("made-up-prompter@example.com")
        .await;
    let response = world
        .http
        .post(world.daemon.url("/api/prompts/execute"))
        .bearer_auth(SERVICE_TOKEN)
        .json(&json!({"userId": user, "provider": "made_up", "prompt": PROMPT}))
        .send()
        .await
        .expect("execute");
    let stream = SseStream::new(response);
    assert_eq!(stream.status, 200);
    let frames = stream.collect().await;
    let contents: Vec<&str> = frames
        .iter()
        .filter(|f| f.kind() == "content")
        .filter_map(|f| f.data["text"].as_str())
        .collect();
    assert_eq!(contents.len(), 6, "one frame per word: {frames:?}");
    assert_eq!(contents.concat(), ANSWER, "{frames:?}");
    let usage = frames
        .iter()
        .find(|f| f.kind() == "metadata" && f.data["kind"] == "usage")
        .expect("the CLI's usage line");
    assert_eq!(usage.data["usage"]["words"], 6);
    let done = frames.last().expect("a last frame");
    assert_eq!(done.kind(), "done", "{done:?}");
    assert_eq!(done.data["exitCode"], 0);

    let id = frames[0].data["promptId"].as_str().expect("promptId");
    let record = world
        .daemon
        .call(
            "GET",
            &format!("/api/prompts/{id}/status"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(record.status, 200, "{:?}", record.json);
    assert_eq!(record.json["status"], "completed");
    assert_eq!(record.json["provider"], "made_up");
    assert_eq!(record.json["responseText"], ANSWER);

    let metrics = world
        .daemon
        .call("GET", "/metrics", Some(ADMIN_TOKEN), None)
        .await;
    let text = metrics.json.as_str().unwrap_or_default();
    assert!(
        text.contains("polydev_prompts_total{provider=\"made_up\",status=\"completed\"} 1"),
        "counted under its own name"
    );
}

/// Runs the made-up login in `home` with `code` typed in, reading its screen as the relay does.
fn login(home: &std::path::Path, code: &str) -> Vec<LoginSignal> {
    let command = made_up().login_command(&home.display().to_string());
    for dir in &command.dirs {
        std::fs::create_dir_all(home.join(dir)).expect("login dir");
    }
    let mut child = std::process::Command::new(&command.argv[0])
        .args(&command.argv[1..])
        .env_clear()
        .envs(&command.env)
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the made-up login");
    writeln!(child.stdin.take().expect("stdin"), "{code}").expect("type the code");
    let output = child.wait_with_output().expect("the login's end");
    let mut screen = LoginScreen::new(made_up());
    screen.feed(&output.stdout)
}

async fn its_login_credential_and_endpoints(_world: &mut World) {
    let home = tempfile::tempdir().expect("login home");
    let signals = login(home.path(), "1234");
    let Some(LoginSignal::AwaitingUser(action)) = signals.first() else {
        panic!("no prompt for the user: {signals:?}");
    };
    assert_eq!(
        action.auth_url.as_deref(),
        Some("https://login.made-up.example/device")
    );
    assert_eq!(signals.last(), Some(&LoginSignal::Succeeded));
    let path = made_up().credential_path(&home.path().display().to_string());
    let written = std::fs::read(&path).expect("the credential file");
    let facts = made_up()
        .cli()
        .inspect_credential(&written)
        .expect("a complete file");
    assert_eq!(facts.expires_at_ms, Some(4_102_444_800_000));

    let refused = login(tempfile::tempdir().expect("home").path(), "9");
    assert_eq!(
        refused.last(),
        Some(&LoginSignal::Failed("refused: wrong code".into()))
    );

    let bypass = Bypass::parse("made-up").expect("its short name");
    assert!(bypass.matches("api.made-up.example"));
    assert!(!bypass.matches("api.anthropic.com"));
    assert_eq!(providers::all().last(), Some(made_up()), "appended last");
    assert_eq!(serde_json::to_value(made_up()).unwrap(), "made_up");
}

type Case = harness::Case<World>;

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return harness::missing(
            "made_up_provider",
            "needs root for network and UTS namespaces",
        );
    }
    host_agent::enter_namespaces();
    let runtime = harness::runtime();
    let home = tempfile::tempdir().expect("home");
    let mut world = runtime.block_on(async {
        let (daemon, secrets) =
            host_agent::start_daemon(home.path(), "mc-made-up-secrets-", &[]).await;
        World {
            daemon,
            http: reqwest::Client::new(),
            _home: home,
            _secrets: secrets,
        }
    });
    let cases: Vec<(&str, Case)> = vec![
        (
            "the made-up CLI answers a prompt through the daemon and a host agent",
            |w| Box::pin(a_prompt_streams_its_answer_through_the_daemon(w)),
        ),
        (
            "its login, its credential file and its endpoints, from its one file",
            |w| Box::pin(its_login_credential_and_endpoints(w)),
        ),
    ];
    harness::run(&runtime, &mut world, cases, |_| true)
}
