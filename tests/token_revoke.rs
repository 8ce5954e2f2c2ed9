//! Token revocation (issue 15, item 12): a deleted user's tokens stop working, the admin revoke
//! route kills every token of a user minted so far, and the SSE and WebSocket streams opened
//! with a revoked token end. The VMs are fakes (`support::fake_vmm`): a prompt's CLI runs,
//! silent, until cancelled, which holds its SSE stream open.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::scheduled::{MASTER_KEY, start};
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};
use tokio_tungstenite::tungstenite::Message;

/// Generous: the host is shared and slow; nothing here asserts on speed.
const DEADLINE: Duration = Duration::from_secs(60);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn user_socket(d: &TestDaemon, token: &str) -> Socket {
    tokio_tungstenite::connect_async(d.ws_request(token))
        .await
        .expect("the user's WebSocket")
        .0
}

/// Waits for the socket to close (a close frame or the end of the stream).
async fn closes(socket: &mut Socket) -> Option<String> {
    tokio::time::timeout(DEADLINE, async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| f.reason.to_string()),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the revoked token's WebSocket ends")
}

async fn own_user(d: &TestDaemon, user: &str, token: &str) -> u16 {
    d.call("GET", &format!("/api/users/{user}"), Some(token), None)
        .await
        .status
}

#[tokio::test]
async fn deleting_a_user_kills_their_tokens_and_their_websocket() {
    let d = TestDaemon::start().await;
    let user = d.create_user("leaving@example.com").await;
    let token = d.user_token(&user).await;
    assert_eq!(own_user(&d, &user, &token).await, 200);
    let mut socket = user_socket(&d, &token).await;

    let deleted = d
        .call(
            "DELETE",
            &format!("/api/users/{user}"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.json);
    let reply = d.call("GET", "/api/vms", Some(&token), None).await;
    assert_eq!(reply.status, 401, "{:?}", reply.json);
    let reason = closes(&mut socket).await;
    assert_eq!(reason.as_deref(), Some("token revoked"));
    d.shutdown().await;
}

#[tokio::test]
async fn the_admin_revoke_route_kills_tokens_minted_so_far() {
    let d = TestDaemon::start().await;
    let user = d.create_user("revoked@example.com").await;
    let other = d.create_user("bystander@example.com").await;
    let token = d.user_token(&user).await;
    let others_token = d.user_token(&other).await;
    let route = format!("/api/admin/users/{user}/revoke-tokens");
    assert_eq!(
        d.call("POST", &route, Some(SERVICE_TOKEN), None)
            .await
            .status,
        403
    );
    assert_eq!(d.call("POST", &route, Some(&token), None).await.status, 403);
    let unknown = "/api/admin/users/nobody/revoke-tokens";
    assert_eq!(
        d.call("POST", unknown, Some(ADMIN_TOKEN), None)
            .await
            .status,
        404
    );

    let revoked = d.call("POST", &route, Some(ADMIN_TOKEN), None).await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.json);
    assert_eq!(revoked.json["tokenEpoch"], 1);
    let reply = d
        .call("GET", &format!("/api/users/{user}"), Some(&token), None)
        .await;
    assert_eq!(reply.status, 401);
    assert!(
        reply.json["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("revoked")
    );
    assert_eq!(
        own_user(&d, &other, &others_token).await,
        200,
        "another user's token"
    );
    let fresh = d.user_token(&user).await;
    assert_eq!(
        own_user(&d, &user, &fresh).await,
        200,
        "a token minted after"
    );
    d.shutdown().await;
}

#[tokio::test]
async fn a_revoked_tokens_prompt_stream_ends() {
    // A short header timeout too: it must not cut a response that streams longer than it.
    let (d, _fake) = start(&[
        ("ENCRYPTION_MASTER_KEY", MASTER_KEY),
        ("MC_API_HEADER_READ_TIMEOUT_SECS", "1"),
    ])
    .await;
    let user = d.create_user("streaming@example.com").await;
    d.ctx.vms.create(&user).await.expect("VM");
    let token = d.user_token(&user).await;
    let response = d
        .client
        .post(d.url("/api/prompts/execute"))
        .bearer_auth(&token)
        .json(&json!({"userId": user, "provider": "claude_code", "prompt": "a long task"}))
        .send()
        .await
        .expect("execute");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let open_for = tokio::time::Instant::now() + Duration::from_secs(4);
    while let Ok(chunk) = tokio::time::timeout_at(open_for, body.next()).await {
        assert!(
            matches!(chunk, Some(Ok(_))),
            "the stream ended before the revocation"
        );
    }

    let revoked = d
        .call(
            "POST",
            &format!("/api/admin/users/{user}/revoke-tokens"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.json);
    // The CLI never ends by itself (the fake runs it until cancelled), so only the revocation
    // ends this stream.
    tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await
    .expect("the revoked token's SSE stream ends");
    d.shutdown().await;
}
