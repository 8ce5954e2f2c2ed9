//! The WebSocket hub, on `/` and `/ws`. Clients subscribe to the channels their token may see
//! and receive `{"type":"event","channel":...,"data":{...}}`. Each connection reads from the
//! bounded event broadcast; a client that falls behind it, or stops reading, is closed with a
//! reason. The hub pings every connection each `ws_ping_interval_secs` and closes one that has
//! not answered the previous ping by the next.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tracing::Instrument;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::reply::Response;

use super::ApiContext;
use super::auth::Principal;
use super::error::ApiError;
use crate::events::{ADMIN_CHANNEL, Event};

const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// A send that cannot complete in this time means the client stopped reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// RFC 6455 close codes.
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TRY_AGAIN: u16 = 1013;

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(websocket_root, websocket))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    ctx.routes.record("GET", "/");
    ctx.routes.record("GET", "/ws");
    let ctx = ctx.clone();
    let hub = || warp::path::end().or(warp::path!("ws")).unify();
    // A GET that is not a WebSocket upgrade (no `Connection: Upgrade`, no key): its token is
    // checked as an upgrade's would be, then it is refused with what the route wants (warp's
    // rejection would name a header).
    let plain_ctx = ctx.clone();
    let not_an_upgrade = hub()
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::ext::optional::<super::PeerAddr>())
        .map(
            move |authorization: Option<String>, query: HashMap<String, String>, peer| {
                let principal = plain_ctx.authorize(
                    peer,
                    authorization.as_deref(),
                    query.get("token").map(String::as_str),
                );
                let error = match principal {
                    Err(e) => e,
                    Ok(_) => ApiError::BadRequest {
                        code: "websocket_upgrade_required",
                        message: "this route takes only WebSocket upgrades (GET with \
                            Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13 \
                            and a Sec-WebSocket-Key)"
                            .into(),
                    },
                };
                error.into_response()
            },
        );
    hub()
        .and(warp::ws())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::ext::optional::<super::PeerAddr>())
        .map(
            move |ws: Ws, authorization: Option<String>, query: HashMap<String, String>, peer| {
                upgrade(ctx.clone(), ws, authorization, query, peer)
            },
        )
        .or(not_an_upgrade)
        .unify()
        .boxed()
}

/// What the document says of both routes.
const HUB: &str = "Switching Protocols: the connection is a WebSocket. The client sends JSON \
    text messages `{\"type\":\"subscribe\",\"payload\":{\"channel\":\"...\"}}`, \
    `{\"type\":\"unsubscribe\",\"payload\":{\"channel\":\"...\"}}` and \
    `{\"type\":\"ping\"}`; the hub answers `subscribed`/`unsubscribed` (with the channel in \
    `payload`), `pong`, or `{\"type\":\"error\",\"payload\":{\"code\",\"message\",\
    \"channel\"}}`, and sends each event of a subscribed channel as \
    `{\"type\":\"event\",\"channel\":\"...\",\"data\":{...}}`. A user token may \
    subscribe to `user:{userId}` of its user, the service token to any `user:...`, the admin \
    token to any channel (`admin` included). The hub pings each connection and \
    closes it with 1008 when a ping goes unanswered or the token is revoked, with 1013 when the \
    client falls behind, and with 1001 at shutdown. A GET that is not an upgrade answers 400 \
    (`websocket_upgrade_required`) once its token is accepted.";

/// The WebSocket hub on `/`.
#[utoipa::path(
    get,
    path = "/",
    tag = "websocket",
    operation_id = "websocket_root",
    params(("token" = Option<String>, Query,
        description = "The token, for clients that cannot set `Authorization` (which wins when both are given)")),
    responses((status = 101, description = HUB))
)]
#[allow(dead_code)] // the document's entry; `routes` serves it
fn websocket_root() {}

/// The WebSocket hub on `/ws`.
#[utoipa::path(
    get,
    path = "/ws",
    tag = "websocket",
    operation_id = "websocket",
    params(("token" = Option<String>, Query,
        description = "The token, for clients that cannot set `Authorization` (which wins when both are given)")),
    responses((status = 101, description = HUB))
)]
#[allow(dead_code)] // the document's entry; `routes` serves it
fn websocket() {}

fn upgrade(
    ctx: Arc<ApiContext>,
    ws: Ws,
    authorization: Option<String>,
    query: HashMap<String, String>,
    peer: Option<super::PeerAddr>,
) -> Response {
    let principal = ctx.authorize(
        peer,
        authorization.as_deref(),
        query.get("token").map(String::as_str),
    );
    let principal = match principal {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Some(slot) = ConnectionSlot::take(&ctx) else {
        return ApiError::Unavailable {
            code: "too_many_connections",
            message: format!(
                "the hub already has {} WebSocket connections",
                ctx.limits.ws_max_connections
            ),
        }
        .into_response();
    };
    // The connection outlives the upgrade request; it keeps the request's span (its id), so
    // the connection's log lines can be told apart.
    let span = tracing::Span::current();
    warp::Reply::into_response(
        ws.max_message_size(MAX_MESSAGE_BYTES)
            .on_upgrade(move |socket| {
                async move {
                    serve_connection(&ctx, socket, principal).await;
                    drop(slot);
                }
                .instrument(span)
            }),
    )
}

/// One counted hub connection. It is taken before the upgrade and moved into the upgrade
/// callback, so it is given back when the callback ends or when the callback is dropped
/// without running (an HTTP/1.0 request, a client that never completes the upgrade); counting
/// by hand in the callback leaked a slot for each of those.
struct ConnectionSlot(Arc<ApiContext>);

impl ConnectionSlot {
    fn take(ctx: &Arc<ApiContext>) -> Option<ConnectionSlot> {
        let max = ctx.limits.ws_max_connections;
        ctx.ws_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(ctx.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.ws_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
enum ClientMessage {
    Subscribe { channel: String },
    Unsubscribe { channel: String },
    Ping,
}

enum Outcome {
    Continue,
    Close(u16, String),
}

async fn serve_connection(ctx: &ApiContext, socket: WebSocket, principal: Principal) {
    let (mut sink, mut incoming) = socket.split();
    let mut events = ctx.events.subscribe();
    let mut channels: HashSet<String> = HashSet::new();
    let revoked = ctx.auth.revoked(&principal);
    tokio::pin!(revoked);
    // A peer that vanished without a FIN (a laptop lid shut, a NAT that forgot the flow) would
    // hold its slot and its broadcast receiver for ever: each tick pings, and a tick that finds
    // the previous ping unanswered closes. The first tick is one interval in.
    let interval = ctx.limits.ws_ping_interval;
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut awaiting_pong = false;
    loop {
        let outcome = tokio::select! {
            () = ctx.shutdown.cancelled() => Outcome::Close(CLOSE_GOING_AWAY, "server shutting down".into()),
            () = &mut revoked => Outcome::Close(CLOSE_POLICY, "token revoked".into()),
            _ = pings.tick() => if awaiting_pong {
                Outcome::Close(
                    CLOSE_POLICY,
                    format!("no pong within {} s", interval.as_secs()),
                )
            } else {
                awaiting_pong = true;
                send_message(&mut sink, Message::ping(Vec::new())).await
            },
            message = incoming.next() => match message {
                Some(Ok(message)) if message.is_close() => break,
                Some(Ok(message)) if message.is_pong() => {
                    awaiting_pong = false;
                    Outcome::Continue
                }
                Some(Ok(message)) => match reply_to(ctx, &principal, &mut channels, &message) {
                    Some(reply) => send(&mut sink, reply).await,
                    None => Outcome::Continue,
                },
                Some(Err(_)) | None => break,
            },
            event = events.recv() => match event {
                Ok(event) if wants(&principal, &channels, &event) => {
                    send(&mut sink, json!({ "type": "event", "channel": event.channel, "data": event.data })).await
                }
                Ok(_) => Outcome::Continue,
                Err(RecvError::Lagged(missed)) => Outcome::Close(
                    CLOSE_TRY_AGAIN,
                    format!("slow consumer: fell {missed} events behind the hub's queue"),
                ),
                Err(RecvError::Closed) => Outcome::Close(CLOSE_TRY_AGAIN, "server shutting down".into()),
            },
        };
        if let Outcome::Close(code, reason) = outcome {
            tracing::info!(code, %reason, "closing WebSocket");
            let _ =
                tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::close_with(code, reason)))
                    .await;
            break;
        }
    }
}

fn wants(principal: &Principal, channels: &HashSet<String>, event: &Event) -> bool {
    channels.contains(&event.channel)
        || (*principal == Principal::Admin && channels.contains(ADMIN_CHANNEL))
}

async fn send(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    value: Value,
) -> Outcome {
    send_message(sink, Message::text(value.to_string())).await
}

async fn send_message(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    message: Message,
) -> Outcome {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
        Ok(Ok(())) => Outcome::Continue,
        Ok(Err(_)) => Outcome::Close(CLOSE_POLICY, "send failed".into()),
        Err(_) => Outcome::Close(CLOSE_TRY_AGAIN, "slow consumer: not reading".into()),
    }
}

/// Handles one client message; returns the reply to send, if any.
fn reply_to(
    ctx: &ApiContext,
    principal: &Principal,
    channels: &mut HashSet<String>,
    message: &Message,
) -> Option<Value> {
    if message.is_ping() || message.is_pong() {
        return None;
    }
    let Ok(text) = message.to_str() else {
        return Some(error_reply(
            "bad_message",
            "messages must be JSON text",
            None,
        ));
    };
    let parsed: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return Some(error_reply("bad_message", &e.to_string(), None)),
    };
    Some(match parsed {
        ClientMessage::Ping => json!({ "type": "pong" }),
        ClientMessage::Subscribe { channel } => {
            if !principal.may_see_channel(&channel) {
                error_reply(
                    "forbidden",
                    "this token may not subscribe to that channel",
                    Some(&channel),
                )
            } else if channels.len() >= ctx.limits.ws_max_subscriptions
                && !channels.contains(&channel)
            {
                error_reply(
                    "too_many_subscriptions",
                    "subscription limit reached",
                    Some(&channel),
                )
            } else {
                channels.insert(channel.clone());
                json!({ "type": "subscribed", "payload": { "channel": channel } })
            }
        }
        ClientMessage::Unsubscribe { channel } => {
            channels.remove(&channel);
            json!({ "type": "unsubscribed", "payload": { "channel": channel } })
        }
    })
}

fn error_reply(code: &str, message: &str, channel: Option<&str>) -> Value {
    json!({ "type": "error", "payload": { "code": code, "message": message, "channel": channel } })
}
