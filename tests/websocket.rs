//! The WebSocket hub: subscribe (allowed and forbidden), receive a published event, ping/pong.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use master_controller::events::{Channel, HubEvent};
use master_controller::model::PromptStatus;
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn crashed(vm_id: &str, user_id: &str) -> HubEvent {
    HubEvent::VmCrashed {
        vm_id: vm_id.into(),
        user_id: user_id.into(),
        reason: "test".into(),
    }
}

async fn connect(d: &TestDaemon, path: &str, token: Option<&str>) -> Result<Socket, u16> {
    let url = format!("{}{path}", d.base.replace("http://", "ws://"));
    let mut request = url.into_client_request().expect("request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("unexpected WebSocket error: {e}"),
    }
}

async fn send(socket: &mut Socket, value: Value) {
    socket
        .send(Message::text(value.to_string()))
        .await
        .expect("send");
}

async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a message within 5 s")
            .expect("stream open")
            .expect("message");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("JSON message");
        }
    }
}

#[tokio::test]
async fn subscribe_receive_and_ping() {
    let d = TestDaemon::start().await;
    let alice = d.create_user("alice@example.com").await;
    let bob = d.create_user("bob@example.com").await;
    let token = d.user_token(&alice).await;
    let mut socket = connect(&d, "/ws", Some(&token)).await.expect("upgrade");

    send(
        &mut socket,
        json!({"type":"subscribe","payload":{"channel": format!("user:{alice}")}}),
    )
    .await;
    let reply = next_json(&mut socket).await;
    assert_eq!(reply["type"], "subscribed");

    send(
        &mut socket,
        json!({"type":"subscribe","payload":{"channel": format!("user:{bob}")}}),
    )
    .await;
    let reply = next_json(&mut socket).await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["payload"]["code"], "forbidden");
    send(
        &mut socket,
        json!({"type":"subscribe","payload":{"channel":"admin"}}),
    )
    .await;
    assert_eq!(next_json(&mut socket).await["payload"]["code"], "forbidden");

    // An event on the forbidden channel must not arrive; the allowed one must.
    d.ctx
        .events
        .publish(&Channel::user(&bob), crashed("b", &bob));
    d.ctx.events.publish(
        &Channel::user(&alice),
        HubEvent::PromptCompleted {
            prompt_id: "p1".into(),
            status: PromptStatus::Completed,
            exit_code: Some(0),
        },
    );
    let event = next_json(&mut socket).await;
    assert_eq!(event["type"], "event");
    assert_eq!(event["channel"], format!("user:{alice}"));
    assert_eq!(event["data"]["event"], "prompt_completed");
    assert_eq!(event["data"]["promptId"], "p1");

    send(&mut socket, json!({"type":"ping"})).await;
    assert_eq!(next_json(&mut socket).await["type"], "pong");

    send(&mut socket, json!({"type":"dance"})).await;
    assert_eq!(
        next_json(&mut socket).await["payload"]["code"],
        "bad_message"
    );

    send(
        &mut socket,
        json!({"type":"unsubscribe","payload":{"channel": format!("user:{alice}")}}),
    )
    .await;
    assert_eq!(next_json(&mut socket).await["type"], "unsubscribed");
    d.ctx
        .events
        .publish(&Channel::user(&alice), crashed("a", &alice));
    send(&mut socket, json!({"type":"ping"})).await;
    assert_eq!(
        next_json(&mut socket).await["type"],
        "pong",
        "no event after unsubscribe"
    );
    drop(socket);
    d.shutdown().await;
}

#[tokio::test]
async fn admin_channel_sees_every_event_and_query_tokens_work() {
    let d = TestDaemon::start().await;
    let mut admin = connect(&d, &format!("/?token={ADMIN_TOKEN}"), None)
        .await
        .expect("upgrade");
    send(
        &mut admin,
        json!({"type":"subscribe","payload":{"channel":"admin"}}),
    )
    .await;
    assert_eq!(next_json(&mut admin).await["type"], "subscribed");
    d.ctx
        .events
        .publish(&Channel::user("someone"), crashed("s", "someone"));
    let event = next_json(&mut admin).await;
    assert_eq!(event["channel"], "user:someone");

    let mut service = connect(&d, "/", Some(SERVICE_TOKEN))
        .await
        .expect("upgrade");
    send(
        &mut service,
        json!({"type":"subscribe","payload":{"channel":"admin"}}),
    )
    .await;
    assert_eq!(
        next_json(&mut service).await["payload"]["code"],
        "forbidden"
    );
    drop((admin, service));
    d.shutdown().await;
}

#[tokio::test]
async fn upgrade_needs_a_valid_token() {
    let d = TestDaemon::start().await;
    assert_eq!(connect(&d, "/ws", None).await.err(), Some(401));
    assert_eq!(
        connect(&d, "/ws", Some("wrong-token-0123456789"))
            .await
            .err(),
        Some(401)
    );
    assert_eq!(connect(&d, "/ws?token=nope", None).await.err(), Some(401));
    d.shutdown().await;
}

#[tokio::test]
async fn connection_limit_is_enforced() {
    let d = TestDaemon::start_with(&[("MC_WS_MAX_CONNECTIONS", "1")]).await;
    let first = connect(&d, "/ws", Some(ADMIN_TOKEN))
        .await
        .expect("first fits");
    assert_eq!(connect(&d, "/ws", Some(ADMIN_TOKEN)).await.err(), Some(503));
    drop(first);
    d.shutdown().await;
}

#[tokio::test]
async fn a_client_that_falls_behind_is_closed_with_a_reason() {
    let d = TestDaemon::start_with(&[("MC_WS_QUEUE_LEN", "4")]).await;
    let user = d.create_user("slow@example.com").await;
    let mut socket = connect(&d, "/ws", Some(ADMIN_TOKEN))
        .await
        .expect("upgrade");
    send(
        &mut socket,
        json!({"type":"subscribe","payload":{"channel": format!("user:{user}")}}),
    )
    .await;
    assert_eq!(next_json(&mut socket).await["type"], "subscribed");
    // Published faster than the connection task can forward them: the queue of 4 overflows.
    for i in 0..64 {
        d.ctx
            .events
            .publish(&Channel::user(&user), crashed(&format!("v{i}"), &user));
    }
    let mut close_reason = None;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(5), socket.next()).await
    {
        if let Message::Close(Some(frame)) = message {
            close_reason = Some((u16::from(frame.code), frame.reason.to_string()));
            break;
        }
    }
    let (code, reason) = close_reason.expect("the hub closes a lagging client");
    assert_eq!(code, 1013);
    assert!(reason.contains("slow consumer"), "{reason}");
    d.shutdown().await;
}

/// Upgrade requests that never become WebSockets (HTTP/1.0, where no upgrade can happen) must
/// not use up the hub's connection slots: 1,025 of them used to lock everyone out.
#[tokio::test]
async fn failed_upgrades_do_not_use_up_the_connection_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = TestDaemon::start_with(&[
        ("MC_WS_MAX_CONNECTIONS", "1024"),
        ("MC_RATE_LIMIT_PER_SECOND", "100000"),
        ("MC_RATE_LIMIT_BURST", "100000"),
    ])
    .await;
    let addr = d.running.as_ref().unwrap().addr;
    let request = format!(
        "GET /ws HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    );
    for i in 0..1025 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("request {i}: the server keeps the connection"))
            .ok();
    }
    let socket = connect(&d, "/ws", Some(ADMIN_TOKEN)).await;
    assert!(
        socket.is_ok(),
        "a real WebSocket after 1,025 failed upgrades: {:?}",
        socket.err()
    );
    d.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed() {
    let d = TestDaemon::start_with(&[("MC_WS_PING_INTERVAL_SECS", "1")]).await;
    let user = d.create_user("quiet@example.com").await;
    let token = d.user_token(&user).await;

    // A reading client answers pings (tokio-tungstenite queues the pong as it reads and sends
    // it on the next read or write), so it outlives several intervals.
    let mut answering = connect(&d, "/ws", Some(&token)).await.expect("upgrade");
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    while let Ok(message) = tokio::time::timeout_at(until, answering.next()).await {
        match message {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("an answering client was sent {other:?}"),
        }
    }
    assert!(pings >= 2, "pinged every second: {pings}");
    send(&mut answering, json!({"type":"ping"})).await;
    assert_eq!(
        next_json(&mut answering).await["type"],
        "pong",
        "still open"
    );

    // A client that never reads never answers: after one unanswered ping the next tick closes.
    let mut silent = connect(&d, "/ws", Some(&token)).await.expect("upgrade");
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let mut close = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), silent.next())
            .await
            .expect("the server ends the connection")
        {
            Some(Ok(Message::Close(frame))) => close = frame,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("no pong"), "{}", close.reason);
    drop(answering);
    d.shutdown().await;
}
