//! `POST /api/users/:userId/exec`: a command in the user's workspace, as the CLI user, its
//! output streamed over SSE (`started`, `stdout`/`stderr` chunks, `exit`). The command is
//! cancelled when the client goes away, by `POST /api/exec/:execId/cancel`, or at its timeout.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Body, Call, body, endpoint, sse_event_schema, sse_retry};
use super::error::IntoResponseInner;
use crate::workspace::{ExecFrame, ExecSpec};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(exec, cancel))]
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

/// The document's schema of an event of an exec's stream.
struct ExecStreamEvent;

impl utoipa::PartialSchema for ExecStreamEvent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        sse_event_schema(
            &["started", "stdout", "stderr", "exit", "error"],
            utoipa::openapi::Ref::from_schema_name(<ExecFrame as utoipa::ToSchema>::name()).into(),
        )
    }
}

impl utoipa::ToSchema for ExecStreamEvent {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            <ExecFrame as utoipa::ToSchema>::name().into(),
            <ExecFrame as utoipa::PartialSchema>::schema(),
        ));
        <ExecFrame as utoipa::ToSchema>::schemas(schemas);
    }
}

/// The answer to `POST /api/exec/:execId/cancel`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CancelledExecView {
    exec_id: String,
    cancelled: bool,
}

#[utoipa::path(
    post,
    path = "/api/users/{userId}/exec",
    tag = "workspace",
    operation_id = "exec_command",
    params(("userId" = String, Path)),
    request_body = ExecSpec,
    responses((status = 200, content_type = "text/event-stream", body = ExecStreamEvent,
        description = "Server-sent events. The first frame carries only `retry:`. Each event \
            has an `id:` (1, 2, ...), an `event:` name and one JSON `data:` line whose `type` \
            is that name: `started` (`{\"type\":\"started\",\"execId\",\"cwd\"}`; the \
            id is for `POST /api/exec/{execId}/cancel`), then `stdout` and `stderr` chunks \
            (`{\"type\":\"stdout\",\"text\"}`), then one final `exit` \
            (`{\"type\":\"exit\",\"exitCode\",\"signal\",\"timedOut\",\"cancelled\",\
            \"durationMs\"}`) or `error` (`{\"type\":\"error\",\"code\",\"message\"}`). \
            Comments keep the stream alive every 15 s. The command is cancelled when the \
            client goes away or the token is revoked."))
)]
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

#[utoipa::path(
    post,
    path = "/api/exec/{execId}/cancel",
    tag = "workspace",
    operation_id = "cancel_exec",
    params(("execId" = String, Path)),
    responses((status = 200, description = "The command, cancelled; its stream ends with `exit`", body = CancelledExecView))
)]
async fn cancel(exec_id: String, call: Call) -> Response {
    let result = async {
        let principal = call.principal()?;
        let owner = call.ctx.workspace.exec_owner(&exec_id)?;
        principal.require_user(&owner)?;
        call.ctx.workspace.cancel_exec(&exec_id)?;
        Ok(CancelledExecView {
            exec_id,
            cancelled: true,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}
