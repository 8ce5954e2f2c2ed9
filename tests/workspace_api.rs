//! The request rules of conversations, the files API and exec, through a real server whose VMs
//! are the fake hypervisor's (control plane only; `tests/golden.rs` does the same on real
//! guests): what a follow-up may and may not be, paths refused before any VM is touched, a
//! body over the cap refused by its Content-Length, and who may use whose workspace.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::fake_vmm::daemon_with_fake_vms;
use support::sse::{Frame, SseStream};
use support::{SERVICE_TOKEN, TestDaemon};

/// Starts a prompt whose CLI (on the fake agent) runs until cancelled; its first frame.
async fn start_prompt(d: &TestDaemon, body: Value) -> (SseStream, Frame) {
    let response = d
        .client
        .post(d.url("/api/prompts/execute"))
        .bearer_auth(SERVICE_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("execute");
    let mut stream = SseStream::new(response);
    assert_eq!(stream.status, 200);
    let first = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("a first frame in time")
        .expect("a first frame");
    assert_eq!(stream.retry_ms, Some(3000), "the stream opens with retry:");
    (stream, first)
}

async fn execute(d: &TestDaemon, token: &str, body: Value) -> support::Reply {
    d.call(
        "POST",
        "/api/prompts/execute",
        Some(token),
        Some(&body.to_string()),
    )
    .await
}

#[tokio::test]
async fn a_follow_up_must_be_the_same_users_and_providers_and_wait_its_turn() {
    let (d, _fake, _links) = daemon_with_fake_vms(&[("MC_PROMPTS_PER_VM", "4")]).await;
    let alice = d.create_user("alice@example.com").await;
    let bob = d.create_user("bob@example.com").await;
    let (_held, connected) = start_prompt(
        &d,
        json!({"userId": alice, "provider": "claude_code", "prompt": "first", "cwd": "proj/a"}),
    )
    .await;
    assert_eq!(connected.kind(), "connected", "{connected:?}");
    let conversation = connected.data["conversationId"]
        .as_str()
        .expect("conversationId")
        .to_string();
    let follow_up = |extra: Value| {
        let mut body = json!({"userId": alice, "provider": "claude_code",
            "prompt": "next", "conversationId": conversation});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };

    let busy = execute(&d, SERVICE_TOKEN, follow_up(json!({}))).await;
    assert_eq!(
        (busy.status, busy.error_code()),
        (409, "conversation_busy"),
        "{:?}",
        busy.json
    );
    let other_provider = execute(&d, SERVICE_TOKEN, follow_up(json!({"provider": "codex"}))).await;
    assert_eq!(
        (other_provider.status, other_provider.error_code()),
        (409, "conversation_provider_mismatch"),
        "{:?}",
        other_provider.json
    );
    let other_cwd = execute(&d, SERVICE_TOKEN, follow_up(json!({"cwd": "elsewhere"}))).await;
    assert_eq!(
        (other_cwd.status, other_cwd.error_code()),
        (409, "conversation_cwd_mismatch"),
        "{:?}",
        other_cwd.json
    );
    let bobs = execute(&d, SERVICE_TOKEN, follow_up(json!({"userId": bob}))).await;
    assert_eq!(bobs.status, 403, "{:?}", bobs.json);
    let bob_token = d.user_token(&bob).await;
    let as_bob = execute(&d, &bob_token, follow_up(json!({"userId": bob}))).await;
    assert_eq!(as_bob.status, 403, "{:?}", as_bob.json);
    let unknown = execute(
        &d,
        SERVICE_TOKEN,
        follow_up(json!({"conversationId": "no-such-conversation"})),
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (404, "conversation_not_found"),
        "{:?}",
        unknown.json
    );
    for cwd in ["../x", "/etc", "a/../../b"] {
        let escaping = execute(
            &d,
            SERVICE_TOKEN,
            json!({"userId": alice, "provider": "codex", "prompt": "p", "cwd": cwd}),
        )
        .await;
        assert_eq!(escaping.status, 400, "{cwd}: {:?}", escaping.json);
    }

    let listed = d
        .call(
            "GET",
            &format!("/api/conversations/{conversation}"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(listed.status, 200, "{:?}", listed.json);
    assert_eq!(listed.json["turns"], 1, "{:?}", listed.json);
    assert_eq!(listed.json["cwd"], "proj/a", "{:?}", listed.json);
}

#[tokio::test]
async fn files_and_exec_refuse_bad_input_before_touching_a_vm() {
    let (d, fake, _links) = daemon_with_fake_vms(&[("MC_FILES_MAX_BYTES", "1024")]).await;
    let alice = d.create_user("alice@example.com").await;
    let bob = d.create_user("bob@example.com").await;
    let files = |path: &str| format!("/api/users/{alice}/files/{path}");
    for path in [
        "..%2Fetc%2Fpasswd",
        "a/..%2F..%2Fb",
        "%2Fetc%2Fpasswd",
        "a%00b",
    ] {
        for method in ["GET", "PUT", "DELETE"] {
            let reply = d
                .call(method, &files(path), Some(SERVICE_TOKEN), Some("x"))
                .await;
            assert_eq!(
                (reply.status, reply.error_code()),
                (400, "bad_path"),
                "{method} {path}: {:?}",
                reply.json
            );
        }
    }
    let big = "x".repeat(2048);
    let too_big = d
        .call("PUT", &files("big.txt"), Some(SERVICE_TOKEN), Some(&big))
        .await;
    assert_eq!(too_big.status, 413, "{:?}", too_big.json);

    let bob_token = d.user_token(&bob).await;
    for method in ["GET", "PUT", "DELETE"] {
        let reply = d
            .call(method, &files("a.txt"), Some(&bob_token), Some("x"))
            .await;
        assert_eq!(reply.status, 403, "{method}: {:?}", reply.json);
    }
    let exec = |body: Value| {
        let d = &d;
        let path = format!("/api/users/{alice}/exec");
        async move {
            d.call("POST", &path, Some(SERVICE_TOKEN), Some(&body.to_string()))
                .await
        }
    };
    for body in [
        json!({}),
        json!({"command": "ls", "argv": ["ls"]}),
        json!({"command": "  "}),
        json!({"argv": []}),
        json!({"command": "ls", "cwd": "../.."}),
        json!({"command": "ls", "timeoutSec": 0}),
        json!({"command": "ls", "shell": true}),
    ] {
        let reply = exec(body.clone()).await;
        assert_eq!(reply.status, 400, "{body}: {:?}", reply.json);
    }
    let as_bob = d
        .call(
            "POST",
            &format!("/api/users/{alice}/exec"),
            Some(&bob_token),
            Some(r#"{"command":"ls"}"#),
        )
        .await;
    assert_eq!(as_bob.status, 403, "{:?}", as_bob.json);
    let cancel = d
        .call(
            "POST",
            "/api/exec/no-such-exec/cancel",
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(cancel.status, 404, "{:?}", cancel.json);
    assert_eq!(
        fake.boots.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no VM was started for a refused request"
    );
}
