//! Conversations with the real CLIs in a golden VM: each CLI resumes its own session on a
//! follow-up, across a hibernation, a daemon restart and the idle-hibernation job, and a
//! conversation whose VM was destroyed answers `conversation_expired`. The proof that a CLI
//! resumed is in the fake model server: the request of a later turn carries the earlier
//! turns' words.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::daemon_proc::{ADMIN_TOKEN, SERVICE_TOKEN};
use crate::support::model_server::SeenRequest;
use crate::support::sse::{Frame, content_text};
use crate::world::{PROVIDERS, World};

/// The path of each provider's model API on the fake server.
fn api_path(provider: &str) -> &'static str {
    match provider {
        "claude_code" => "/v1/messages",
        "codex" => "/v1/responses",
        _ => "/v1beta/models/",
    }
}

/// A marker no model or CLI would write by itself.
fn marker(provider: &str, turn: u32) -> String {
    format!("MARK-{provider}-TURN{turn}-7f3a")
}

/// The newest request the provider's CLI made to the fake model server.
fn last_request(seen: &[SeenRequest], provider: &str) -> SeenRequest {
    seen.iter()
        .rev()
        .find(|r| r.method == "POST" && r.path.starts_with(api_path(provider)))
        .cloned()
        .unwrap_or_else(|| panic!("no {provider} request among {} seen", seen.len()))
}

/// One turn: its frames, after checking the answer and the end.
async fn turn(world: &World, user: &str, provider: &str, body: Value) -> Vec<Frame> {
    let started = Instant::now();
    let mut body = body;
    body["userId"] = json!(user);
    body["provider"] = json!(provider);
    let frames = world.daemon.execute_prompt(body).await;
    eprintln!(
        "    {provider}: {} frames in {:.1} s",
        frames.len(),
        started.elapsed().as_secs_f64()
    );
    let done = frames.last().expect("a last frame");
    assert_eq!(
        done.kind(),
        "done",
        "{provider}: {frames:?}\n{}",
        world.daemon.log_tail()
    );
    assert_eq!(content_text(&frames), world.server.text(), "{provider}");
    frames
}

fn conversation_of(frames: &[Frame]) -> String {
    let connected = frames.first().expect("a first frame");
    assert_eq!(connected.kind(), "connected", "{connected:?}");
    connected.data["conversationId"]
        .as_str()
        .expect("conversationId in connected")
        .to_string()
}

/// Turn `n` of each provider's conversation; the model server must see every earlier turn's
/// marker in this turn's request (the CLI sent its own session's history), and none of a later
/// one in the first turn's.
async fn continue_each(world: &World, user: &str, conversations: &[String], n: u32) {
    for (provider, conversation) in PROVIDERS.iter().zip(conversations) {
        let frames = turn(
            world,
            user,
            provider,
            json!({"prompt": format!("say hello {}", marker(provider, n)), "conversationId": conversation}),
        )
        .await;
        assert_eq!(conversation_of(&frames), *conversation);
        let request = last_request(&world.server.seen(), provider);
        for earlier in 1..=n {
            assert!(
                request.body.contains(&marker(provider, earlier)),
                "{provider} turn {n}: the request lacks turn {earlier}'s words: {}",
                &request.body[..request.body.len().min(2000)]
            );
        }
    }
}

pub async fn each_cli_resumes_its_own_session(world: &mut World) {
    let user = world.cli_user.clone().expect("the VM of the previous case");
    let mut conversations = Vec::new();
    for provider in PROVIDERS {
        let frames = turn(
            world,
            &user,
            provider,
            json!({"prompt": format!("say hello {}", marker(provider, 1))}),
        )
        .await;
        let request = last_request(&world.server.seen(), provider);
        assert!(request.body.contains(&marker(provider, 1)));
        assert!(!request.body.contains(&marker(provider, 2)));
        conversations.push(conversation_of(&frames));
    }
    continue_each(world, &user, &conversations, 2).await;

    let hibernated = world.user_vm(&user, "hibernate", "POST").await;
    assert_eq!(hibernated["status"], "hibernated", "{hibernated}");
    // The turn resumes the VM, as any prompt does.
    continue_each(world, &user, &conversations, 3).await;

    world.daemon.stop().await;
    world.start_daemon().await;
    continue_each(world, &user, &conversations, 4).await;
    let vm = crate::world::id_of(&world.user_vm(&user, "", "GET").await);
    let (code, out) = world.exec(&vm, "cat /root/kept.txt").await;
    assert_eq!(
        (code, out.trim()),
        (0, "kept"),
        "the root's file survived it all"
    );

    // The idle job (the VM has been idle longer than MC_IDLE_HIBERNATE_AFTER_SECS).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ran = world
        .daemon
        .call(
            "POST",
            "/api/admin/tasks/hibernate_idle/run",
            ADMIN_TOKEN,
            None,
        )
        .await;
    assert!(ran.status < 300, "{:?}", ran.json);
    let vm = world.user_vm(&user, "", "GET").await;
    assert_eq!(
        vm["status"], "hibernated",
        "the idle job hibernated it: {vm}"
    );
    continue_each(world, &user, &conversations, 5).await;

    let listed = world
        .daemon
        .call(
            "GET",
            &format!("/api/users/{user}/conversations"),
            SERVICE_TOKEN,
            None,
        )
        .await;
    assert_eq!(listed.status, 200, "{:?}", listed.json);
    for conversation in &conversations {
        let entry = listed.json["conversations"]
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|c| c["conversationId"] == conversation.as_str())
            })
            .unwrap_or_else(|| panic!("{conversation} listed: {}", listed.json));
        assert_eq!(entry["turns"], 5, "{entry}");
    }
    world.conversations = conversations;
}

/// After the VM is destroyed every conversation of it answers `conversation_expired`, not a
/// silent fresh start; a prompt without one still works on the new VM.
pub async fn a_destroyed_vm_expires_its_conversations(world: &mut World) {
    let user = world
        .cli_user
        .clone()
        .expect("the VM of the previous cases");
    let destroyed = world.user_vm(&user, "", "DELETE").await;
    assert_eq!(destroyed["status"], "destroyed");
    let before = world.server.seen().len();
    for (provider, conversation) in PROVIDERS.iter().zip(&world.conversations) {
        let reply = world
            .daemon
            .call(
                "POST",
                "/api/prompts/execute",
                SERVICE_TOKEN,
                Some(json!({"userId": user, "provider": provider,
                    "prompt": "anyone there?", "conversationId": conversation})),
            )
            .await;
        assert_eq!(reply.status, 409, "{provider}: {:?}", reply.json);
        assert_eq!(
            reply.json["error"]["code"], "conversation_expired",
            "{:?}",
            reply.json
        );
    }
    assert_eq!(
        world.server.seen().len(),
        before,
        "no CLI ran for an expired conversation"
    );
}
