//! The real CLIs (Claude Code, Codex, Gemini CLI at the versions pinned in
//! `image/cli-tools.txt`) run through the real `vm-agent` (on a host Unix socket: the guest's
//! Node-based CLIs are too heavy for the small test image) against the fake model server, with
//! the provider modules' commands and translators: the answer arrives as content, the CLI's
//! own result line decides success, and a failing model server is a failure with its message.
//!
//! `scripts/test.sh` installs the CLIs (`scripts/install-cli-tools.sh`) and names them in
//! `MC_TEST_CLI_TOOLS`; without it this test skips, saying so, unless `MC_REQUIRE_GUESTS=1`.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use master_controller::guest::client::{AgentClient, ExecEvent};
use master_controller::guest::messages::ExecRequest;
use master_controller::model::Provider;
use master_controller::prompts::events::PromptEvent;
use master_controller::prompts::lines::{LineSplitter, MAX_LINE_BYTES};
use master_controller::providers::{self, Endpoint, Invocation, Outcome};
use support::local_agent::LocalAgent;
use support::model_server::{Behaviour, ModelServer};

const API_KEY: &str = "test-model-key";

fn tools_dir() -> Option<String> {
    let dir = std::env::var("MC_TEST_CLI_TOOLS").ok()?;
    std::path::Path::new(&dir)
        .join("node_modules/.bin/claude")
        .exists()
        .then_some(dir)
}

/// Runs `provider`'s CLI through the agent and translates its output.
async fn run(
    client: &AgentClient,
    tools: &str,
    provider: Provider,
    server: &ModelServer,
    prompt: &str,
) -> (Vec<PromptEvent>, Outcome, Option<i32>) {
    let home = tempfile::tempdir().expect("home");
    let home_path = home.path().display().to_string();
    let endpoint = Endpoint {
        base_url: server.base_url(),
        api_key: API_KEY.into(),
    };
    let command = provider.command(&Invocation {
        prompt,
        model: None,
        home: &home_path,
        cwd: &home_path,
        resume: None,
        endpoint: Some(&endpoint),
    });
    for file in &command.files {
        client
            .write_file(&file.path, file.contents.as_bytes(), file.mode)
            .await
            .expect("write the CLI's configuration");
    }
    let mut env = command.env.clone();
    env.insert(
        "PATH".into(),
        format!("{tools}/node_modules/.bin:/usr/local/bin:/usr/bin:/bin"),
    );
    // Gemini CLI writes an error report into the temporary directory when its model fails:
    // the test's own, not the host's /tmp.
    env.insert("TMPDIR".into(), home_path.clone());
    let mut stream = client
        .exec(ExecRequest {
            argv: command.argv.clone(),
            env,
            cwd: Some(home_path.clone()),
            timeout_sec: Some(120),
            ..ExecRequest::default()
        })
        .await
        .expect("exec");
    let mut translator = provider.cli().translator(None);
    let mut lines = LineSplitter::new(MAX_LINE_BYTES);
    let mut events = Vec::new();
    let mut exit_code = None;
    while let Some(event) = stream.next().await {
        match event.expect("exec event") {
            ExecEvent::Stdout(chunk) => {
                for line in lines.push(&chunk) {
                    events.extend(translator.line(&line));
                }
            }
            ExecEvent::Stderr(_) => {}
            ExecEvent::Exit(status) => exit_code = status.code,
        }
    }
    if let Some(line) = lines.finish() {
        events.extend(translator.line(&line));
    }
    let outcome = translator.finish(exit_code);
    (events, outcome, exit_code)
}

fn text(events: &[PromptEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            PromptEvent::Content { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_clis_through_the_agent() {
    let Some(tools) = tools_dir() else {
        if std::env::var("MC_REQUIRE_GUESTS").as_deref() == Ok("1") {
            panic!("MC_TEST_CLI_TOOLS does not name installed CLIs (scripts/install-cli-tools.sh)");
        }
        eprintln!(
            "SKIPPED: MC_TEST_CLI_TOOLS does not name installed CLIs (scripts/install-cli-tools.sh)"
        );
        return;
    };
    let server = ModelServer::start(
        &["Hello", " from", " the", " fake", " model."],
        Duration::from_millis(20),
    )
    .await;
    let agent = LocalAgent::start();
    let client = agent.connect().await;
    // A prompt that looks like a flag must still reach the model as the prompt.
    let prompt = "-v: say hello";
    for (provider, key_header) in [
        (providers::CLAUDE_CODE, ("x-api-key", API_KEY.to_string())),
        (
            providers::CODEX,
            ("authorization", format!("Bearer {API_KEY}")),
        ),
        (
            providers::GEMINI_CLI,
            ("x-goog-api-key", API_KEY.to_string()),
        ),
    ] {
        server.set_behaviour(Behaviour::Stream);
        let (events, outcome, exit) = run(&client, &tools, provider, &server, prompt).await;
        eprintln!("    {provider}: {} events, exit {exit:?}", events.len());
        assert_eq!(text(&events), server.text(), "{provider}: {events:?}");
        assert!(
            matches!(outcome, Outcome::Success { .. }),
            "{provider}: {outcome:?}"
        );
        assert_eq!(exit, Some(0), "{provider}");
        let model_call = server
            .seen()
            .into_iter()
            .rev()
            .find(|r| r.method == "POST")
            .expect("the CLI called the model");
        assert!(
            model_call.body.contains(prompt),
            "{provider} sent the prompt as the prompt"
        );
        assert!(
            model_call
                .headers
                .iter()
                .any(|(k, v)| k == key_header.0 && *v == key_header.1),
            "{provider} sent its key as {}: {:?}",
            key_header.0,
            model_call.headers
        );

        server.set_behaviour(Behaviour::Fail);
        let (events, outcome, exit) = run(&client, &tools, provider, &server, "say hello").await;
        assert_eq!(text(&events), "", "{provider}: {events:?}");
        match outcome {
            Outcome::Failure { message, .. } => {
                eprintln!("    {provider} against a failing server: exit {exit:?}: {message}")
            }
            other => panic!("{provider} against a failing server: {other:?}"),
        }
    }
}
