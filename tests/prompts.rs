//! Prompts through the daemon's whole HTTP/SSE path with the real CLIs (the versions pinned in
//! `image/cli-tools.txt`) against the fake model server. The VMs are the real `vm-agent` run
//! as host processes (`support::host_agent`): the Node-based CLIs are too heavy for the small
//! guest image. The process first moves into network and UTS namespaces of its own, since the
//! agent configures `eth0` (a bridge with no ports here) and sets the hostname.
//!
//! Needs root and `MC_TEST_CLI_TOOLS` (set by scripts/test.sh); without them it says so and
//! skips, unless `MC_REQUIRE_GUESTS=1`.

mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::host_agent;
use support::model_server::{Behaviour, ModelServer};
use support::sse::{Frame, SseStream};
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon, harness};

const WORDS: [&str; 5] = ["Hello", " from", " the", " fake", " model."];

struct World {
    daemon: TestDaemon,
    server: ModelServer,
    http: reqwest::Client,
    users: u32,
    _home: tempfile::TempDir,
    _secrets: tempfile::TempDir,
}

impl World {
    async fn user(&mut self) -> String {
        self.users += 1;
        self.daemon
            .create_user(&format!("prompter-{}@example.com", self.users))
            .await
    }

    async fn execute(&self, body: Value, token: &str) -> SseStream {
        let response = self
            .http
            .post(self.daemon.url("/api/prompts/execute"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("execute");
        SseStream::new(response)
    }

    async fn reattach(&self, prompt_id: &str, last_event_id: u64) -> SseStream {
        let response = self
            .http
            .get(self.daemon.url(&format!("/api/prompts/{prompt_id}/stream")))
            .bearer_auth(SERVICE_TOKEN)
            .header("last-event-id", last_event_id.to_string())
            .send()
            .await
            .expect("re-attach");
        SseStream::new(response)
    }

    async fn status(&self, prompt_id: &str) -> Value {
        let reply = self
            .daemon
            .call(
                "GET",
                &format!("/api/prompts/{prompt_id}/status"),
                Some(SERVICE_TOKEN),
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        reply.json
    }
}

fn text(frames: &[Frame]) -> String {
    support::sse::content_text(frames)
}

fn prompt_id(frames: &[Frame]) -> String {
    let connected = frames.first().expect("a first frame");
    assert_eq!(connected.kind(), "connected", "{connected:?}");
    connected.data["promptId"]
        .as_str()
        .expect("promptId")
        .to_string()
}

/// Every frame has an `event:` name equal to its type and ids rise by one.
fn assert_framing(frames: &[Frame]) {
    for pair in frames.windows(2) {
        assert_eq!(pair[1].id, pair[0].id.map(|id| id + 1), "{pair:?}");
    }
    for frame in frames {
        assert_eq!(frame.event.as_deref(), Some(frame.kind()), "{frame:?}");
    }
}

async fn each_cli_streams_its_answer(world: &mut World) {
    let user = world.user().await;
    for provider in ["claude_code", "codex", "gemini_cli"] {
        let started = Instant::now();
        let stream = world
            .execute(
                json!({"userId": user, "provider": provider, "prompt": "-v: say hello"}),
                SERVICE_TOKEN,
            )
            .await;
        assert_eq!(stream.status, 200);
        assert!(stream.content_type.starts_with("text/event-stream"));
        let frames = stream.collect().await;
        eprintln!(
            "    {provider}: {} frames in {:.1} s",
            frames.len(),
            started.elapsed().as_secs_f64()
        );
        assert_framing(&frames);
        let id = prompt_id(&frames);
        assert_eq!(text(&frames), WORDS.concat(), "{provider}: {frames:?}");
        let done = frames.last().expect("a last frame");
        assert_eq!(done.kind(), "done", "{provider}: {done:?}");
        assert_eq!(done.data["exitCode"], 0);
        let record = world.status(&id).await;
        assert_eq!(record["status"], "completed");
        assert_eq!(record["responseText"], WORDS.concat());
        assert_eq!(record["provider"], provider);
    }
    let history = world
        .daemon
        .call(
            "GET",
            &format!("/api/users/{user}/prompts?limit=2"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        history.json["prompts"].as_array().map(Vec::len),
        Some(2),
        "the limit"
    );
    assert_eq!(
        history.json["total"], 3,
        "total counts all the user's prompts"
    );
    assert_eq!(
        history.json["prompts"][0]["provider"], "gemini_cli",
        "newest first"
    );
    let user_record = world
        .daemon
        .call(
            "GET",
            &format!("/api/users/{user}"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(user_record.json["promptCount"], 3, "{:?}", user_record.json);
    let stats = world
        .daemon
        .call(
            "GET",
            &format!("/api/users/{user}/stats"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    for provider in ["claude_code", "codex", "gemini_cli"] {
        let by = &stats.json["promptsByProvider"][provider];
        assert_eq!(by["byStatus"]["completed"], 1, "{:?}", stats.json);
        assert!(by["averageDurationMs"].as_u64().is_some_and(|ms| ms > 0));
    }
    let metrics = world
        .daemon
        .call("GET", "/metrics", Some(ADMIN_TOKEN), None)
        .await;
    let text = metrics.json.as_str().unwrap_or_default();
    assert!(
        text.contains("polydev_prompts_total{provider=\"codex\",status=\"completed\"} 1"),
        "counted once per prompt"
    );
    assert!(
        text.contains("polydev_prompt_first_content_seconds_count{provider=\"claude_code\"} 1")
    );
}

async fn the_first_prompt_creates_the_vm_and_a_hibernated_one_resumes(world: &mut World) {
    let user = world.user().await;
    let body = json!({"userId": user, "provider": "codex", "prompt": "hello"});
    let frames = world
        .execute(body.clone(), SERVICE_TOKEN)
        .await
        .collect()
        .await;
    let stages: Vec<&str> = frames
        .iter()
        .filter(|f| f.data["kind"] == "progress")
        .filter_map(|f| f.data["stage"].as_str())
        .collect();
    assert!(
        stages.starts_with(&["creating_vm", "vm_ready"]),
        "{stages:?}"
    );
    let hibernate = world
        .daemon
        .call(
            "POST",
            &format!("/api/users/{user}/vm/hibernate"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(hibernate.status, 200, "{:?}", hibernate.json);
    let frames = world.execute(body, SERVICE_TOKEN).await.collect().await;
    assert!(
        frames
            .iter()
            .any(|f| f.data["kind"] == "progress" && f.data["stage"] == "resuming_vm"),
        "{frames:?}"
    );
    assert_eq!(text(&frames), WORDS.concat());
}

async fn a_dropped_stream_re_attaches_without_gaps_or_duplicates(world: &mut World) {
    world.server.set_delay(Duration::from_millis(300));
    let user = world.user().await;
    let mut stream = world
        .execute(
            json!({"userId": user, "provider": "claude_code", "prompt": "slowly"}),
            SERVICE_TOKEN,
        )
        .await;
    let mut first = Vec::new();
    while let Some(frame) = stream.next().await {
        let is_content = frame.kind() == "content";
        first.push(frame);
        if is_content {
            break;
        }
    }
    drop(stream);
    let id = prompt_id(&first);
    let last = first.last().and_then(|f| f.id).expect("an id");
    let rest = world.reattach(&id, last).await.collect().await;
    world.server.set_delay(Duration::from_millis(20));
    let mut all = first.clone();
    all.extend(rest);
    assert_framing(&all);
    assert_eq!(text(&all), WORDS.concat());
    assert_eq!(all.last().map(|f| f.kind()), Some("done"));
    let record = world.status(&id).await;
    assert_eq!(
        record["status"], "completed",
        "a disconnect never kills the prompt"
    );
}

async fn cancel_and_timeout_and_failures(world: &mut World) {
    // Cancel: the model server stalls, the CLI waits, the cancel stops it.
    let user = world.user().await;
    world.server.set_behaviour(Behaviour::Stall);
    let mut stream = world
        .execute(
            json!({"userId": user, "provider": "claude_code", "prompt": "stall"}),
            SERVICE_TOKEN,
        )
        .await;
    let connected = stream.next().await.expect("connected");
    let id = connected.data["promptId"].as_str().expect("id").to_string();
    while let Some(frame) = stream.next().await {
        if frame.kind() == "content" {
            break;
        }
    }
    // Nothing moves while the model stalls: the stream stays alive with a comment every 15 s.
    let quiet = tokio::time::timeout(Duration::from_secs(17), stream.next()).await;
    assert!(quiet.is_err(), "no event while the model stalls");
    assert!(stream.comments >= 1, "a keep-alive comment within 17 s");
    let busy = world
        .execute(
            json!({"userId": user, "provider": "codex", "prompt": "second"}),
            SERVICE_TOKEN,
        )
        .await;
    assert_eq!(busy.status, 429, "one running prompt per VM");
    let started = Instant::now();
    let cancelled = world
        .daemon
        .call(
            "POST",
            &format!("/api/prompts/{id}/cancel"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    eprintln!("    cancel answered after {:?}", started.elapsed());
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.json);
    assert_eq!(cancelled.json["status"], "cancelled");
    let rest = stream.collect().await;
    assert_eq!(rest.last().map(|f| f.kind()), Some("done"), "{rest:?}");

    // Timeout: the stall outlasts a 2 s limit.
    let frames = world
        .execute(
            json!({"userId": user, "provider": "gemini_cli", "prompt": "stall", "timeoutSec": 2}),
            SERVICE_TOKEN,
        )
        .await
        .collect()
        .await;
    let last = frames.last().expect("frames");
    assert_eq!(last.kind(), "error", "{last:?}");
    assert_eq!(last.data["code"], "timeout");
    assert_eq!(world.status(&prompt_id(&frames)).await["status"], "failed");

    // A model server that answers 500: the CLI's own error, recorded.
    world.server.set_behaviour(Behaviour::Fail);
    for provider in ["claude_code", "codex", "gemini_cli"] {
        let frames = world
            .execute(
                json!({"userId": user, "provider": provider, "prompt": "fail"}),
                SERVICE_TOKEN,
            )
            .await
            .collect()
            .await;
        let last = frames.last().expect("frames");
        assert_eq!(last.kind(), "error", "{provider}: {last:?}");
        let record = world.status(&prompt_id(&frames)).await;
        assert_eq!(record["status"], "failed");
        assert_eq!(record["error"], last.data["message"]);
    }
    world.server.set_behaviour(Behaviour::Stream);

    // A client that leaves a prompt it asked to be cancelled on disconnect cancels it.
    world.server.set_behaviour(Behaviour::Stall);
    let mut stream = world
        .execute(
            json!({"userId": user, "provider": "claude_code", "prompt": "stall",
                "cancelOnDisconnect": true}),
            SERVICE_TOKEN,
        )
        .await;
    let id = stream.next().await.expect("connected").data["promptId"]
        .as_str()
        .expect("id")
        .to_string();
    while let Some(frame) = stream.next().await {
        if frame.kind() == "content" {
            break;
        }
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while world.status(&id).await["status"] != "cancelled" {
        assert!(Instant::now() < deadline, "cancelled after the disconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    world.server.set_behaviour(Behaviour::Stream);

    // Bad requests.
    let other = world.user().await;
    let token = world.daemon.user_token(&other).await;
    let forbidden = world
        .execute(
            json!({"userId": user, "provider": "codex", "prompt": "x"}),
            &token,
        )
        .await;
    assert_eq!(forbidden.status, 403);
    let unknown = world
        .execute(
            json!({"userId": user, "provider": "cursor", "prompt": "x"}),
            SERVICE_TOKEN,
        )
        .await;
    assert_eq!(unknown.status, 400);
    let empty = world
        .execute(
            json!({"userId": user, "provider": "codex", "prompt": " "}),
            SERVICE_TOKEN,
        )
        .await;
    assert_eq!(empty.status, 400);
    let huge = world
        .execute(
            json!({"userId": user, "provider": "codex", "prompt": "x".repeat(40_000)}),
            SERVICE_TOKEN,
        )
        .await;
    assert_eq!(huge.status, 400, "over MC_MAX_PROMPT_BYTES");
}

async fn prompt_events_reach_the_websocket(world: &mut World) {
    use futures_util::StreamExt;
    let user = world.user().await;
    let mut events = world.daemon.user_events(&user).await;
    let frames = world
        .execute(
            json!({"userId": user, "provider": "codex", "prompt": "hello"}),
            SERVICE_TOKEN,
        )
        .await
        .collect()
        .await;
    let id = prompt_id(&frames);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        let Ok(Some(value)) = tokio::time::timeout(Duration::from_secs(1), events.next()).await
        else {
            continue;
        };
        if value["data"]["promptId"] == id.as_str() {
            seen.push(value["data"].clone());
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0]["event"], "prompt_started");
    assert_eq!(seen[1]["event"], "prompt_completed");
    assert_eq!(seen[1]["status"], "completed");
    assert_eq!(seen[1]["exitCode"], 0);
}

type Case = harness::Case<World>;

fn main() -> ExitCode {
    let tools = std::env::var("MC_TEST_CLI_TOOLS").ok().filter(|dir| {
        std::path::Path::new(dir)
            .join("node_modules/.bin/claude")
            .exists()
    });
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("needs root for network and UTS namespaces".to_string())
    } else if tools.is_none() {
        Some("MC_TEST_CLI_TOOLS does not name installed CLIs (scripts/install-cli-tools.sh)".into())
    } else {
        None
    };
    if let Some(reason) = missing {
        return harness::missing("prompts", &reason);
    }
    let tools = tools.unwrap_or_default();
    host_agent::enter_namespaces();
    let runtime = harness::runtime();
    let home = tempfile::tempdir().expect("home");
    let mut world = runtime.block_on(async {
        let server = ModelServer::start(&WORDS, Duration::from_millis(20)).await;
        let base_url = server.base_url();
        let cli_path = format!("{tools}/node_modules/.bin");
        let (daemon, secrets) = host_agent::start_daemon(
            home.path(),
            "mc-prompt-secrets-",
            &[
                ("MC_MODEL_BASE_URL", base_url.as_str()),
                ("MC_MODEL_API_KEY", "test-model-key"),
                ("MC_CLI_PATH", cli_path.as_str()),
                ("MC_RATE_LIMIT_PER_SECOND", "1000"),
                ("MC_RATE_LIMIT_BURST", "1000"),
            ],
        )
        .await;
        World {
            daemon,
            server,
            http: reqwest::Client::new(),
            users: 0,
            _home: home,
            _secrets: secrets,
        }
    });
    let cases: Vec<(&str, Case)> = vec![
        ("each real CLI streams its answer through the daemon", |w| {
            Box::pin(each_cli_streams_its_answer(w))
        }),
        (
            "the first prompt creates the VM; a hibernated one is resumed",
            |w| Box::pin(the_first_prompt_creates_the_vm_and_a_hibernated_one_resumes(w)),
        ),
        ("a dropped stream re-attaches with Last-Event-ID", |w| {
            Box::pin(a_dropped_stream_re_attaches_without_gaps_or_duplicates(w))
        }),
        (
            "cancel, 429, timeout, a failing model server, bad requests",
            |w| Box::pin(cancel_and_timeout_and_failures(w)),
        ),
        (
            "prompt_started and prompt_completed reach the WebSocket",
            |w| Box::pin(prompt_events_reach_the_websocket(w)),
        ),
    ];
    harness::run(&runtime, &mut world, cases, |_| true)
}
