//! `POST /api/users/:userId/exec`: a command in the user's workspace, as the CLI user, its
//! output streamed over SSE (`started`, `stdout`/`stderr` chunks, `exit`). The command is
//! cancelled when the client goes away, by `POST /api/exec/:execId/cancel`, or at its timeout.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Body, Call, body, endpoint, sse_retry};
use super::error::IntoResponseInner;
use crate::workspace::ExecSpec;

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths())]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let exec = warp::path!("api" / "users" / String / "exec")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/users/:userId/exec",
        ))
        .and(body())
        .then(exec);
    let cancel = warp::path!("api" / "exec" / String / "cancel")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/exec/:execId/cancel",
        ))
        .then(cancel);
    exec.or(cancel).unify().boxed()
}

async fn exec(user_id: String, call: Call, body: Body) -> Response {
    let result = async {
        let principal = call.principal()?.clone();
        principal.require_user(&user_id)?;
        let spec: ExecSpec = body.json(call.ctx.limits.max_body_bytes).await?;
        let run = call.ctx.workspace.exec(&user_id, spec).await?;
        let cancel = run.cancel.clone();
        let frames = tokio_stream_of(run.frames).enumerate().map(|(n, frame)| {
            Ok::<_, Infallible>(
                warp::sse::Event::default()
                    .id((n + 1).to_string())
                    .event(frame.name())
                    .data(serde_json::to_string(&frame).unwrap_or_else(|_| "{}".into())),
            )
        });
        let ctx = call.ctx.clone();
        // A revoked token ends the stream, and with it the command.
        let frames = frames.take_until(async move {
            ctx.auth.revoked(&principal).await;
            cancel.cancel();
        });
        let frames = futures_util::stream::once(async { Ok(sse_retry()) }).chain(frames);
        let reply = warp::sse::reply(warp::sse::keep_alive().interval(KEEP_ALIVE).stream(frames));
        Ok(warp::reply::with_header(reply, "x-accel-buffering", "no").into_response_inner())
    }
    .await;
    call.respond_with(result)
}

fn tokio_stream_of<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

async fn cancel(exec_id: String, call: Call) -> Response {
    let result = async {
        let principal = call.principal()?;
        let owner = call.ctx.workspace.exec_owner(&exec_id)?;
        principal.require_user(&owner)?;
        call.ctx.workspace.cancel_exec(&exec_id)?;
        Ok(json!({ "execId": exec_id, "cancelled": true }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}
