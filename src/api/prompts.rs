//! `/api/prompts` routes: execute (an SSE stream), re-attach, cancel, status; and a user's
//! prompt history.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::auth::Principal;
use super::endpoint::{Body, Call, body, endpoint, sse_event_schema, sse_retry};
use super::error::{ApiError, IntoResponseInner};
use super::views::PromptView;
use crate::prompts::log::{Next, Reader};
use crate::prompts::{PromptRequest, PromptRun};
use crate::providers::PromptEvent;

const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The most `GET /api/users/:userId/prompts` answers with; its document entry repeats it.
const MAX_HISTORY: usize = 500;

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(execute, reattach, cancel, status, history))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let execute = warp::path!("api" / "prompts" / "execute")
        .and(endpoint(ctx.clone(), Method::POST, "/api/prompts/execute"))
        .and(body())
        .then(execute);
    let stream = warp::path!("api" / "prompts" / String / "stream")
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/prompts/:promptId/stream",
        ))
        .and(warp::header::optional::<String>("last-event-id"))
        .then(reattach);
    let cancel = warp::path!("api" / "prompts" / String / "cancel")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/prompts/:promptId/cancel",
        ))
        .then(cancel);
    let status = warp::path!("api" / "prompts" / String / "status")
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/prompts/:promptId/status",
        ))
        .then(status);
    let history = warp::path!("api" / "users" / String / "prompts")
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/users/:userId/prompts",
        ))
        .and(warp::query::<HashMap<String, String>>())
        .then(history);
    execute
        .or(stream)
        .unify()
        .or(cancel)
        .unify()
        .or(status)
        .unify()
        .or(history)
        .unify()
        .boxed()
}

/// Cancels the run when its client goes away, if the prompt asked for that; a stream that
/// delivered the final event leaves the run alone.
struct Attachment {
    run: Arc<PromptRun>,
    reader: Reader,
    ended: bool,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.ended && self.run.cancel_on_disconnect && !self.run.is_finished() {
            tracing::info!(prompt = %self.run.id, "client disconnected; cancelling as asked");
            self.run.cancel.cancel();
        }
    }
}

/// The prompt's events as SSE, from after `after`, until the run ends or the caller's token is
/// revoked.
fn sse(call: &Call, principal: &Principal, run: Arc<PromptRun>, after: u64) -> Response {
    let attachment = Attachment {
        reader: run.reader(after),
        run,
        ended: false,
    };
    let events = futures_util::stream::unfold(attachment, |mut attachment| async move {
        let event = match attachment.reader.next().await? {
            Next::Event(id, event) => {
                attachment.ended = event.is_final();
                warp::sse::Event::default()
                    .id(id.to_string())
                    .event(event.name())
                    .data(serde_json::to_string(&*event).unwrap_or_else(|_| "{}".into()))
            }
            Next::Missed { from, to } => warp::sse::Event::default().event("metadata").data(
                json!({"type": "metadata", "kind": "missed", "from": from, "to": to}).to_string(),
            ),
        };
        Some((Ok::<_, Infallible>(event), attachment))
    });
    let (ctx, principal) = (call.ctx.clone(), principal.clone());
    let events = events.take_until(async move { ctx.auth.revoked(&principal).await });
    let events = futures_util::stream::once(async { Ok(sse_retry()) }).chain(events);
    let reply = warp::sse::reply(warp::sse::keep_alive().interval(KEEP_ALIVE).stream(events));
    warp::reply::with_header(reply, "x-accel-buffering", "no").into_response_inner()
}

/// The document's schema of an event of a prompt stream.
struct PromptStreamEvent;

impl utoipa::PartialSchema for PromptStreamEvent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        sse_event_schema(
            &["connected", "content", "metadata", "done", "error"],
            utoipa::openapi::Ref::from_schema_name(<PromptEvent as utoipa::ToSchema>::name())
                .into(),
        )
    }
}

impl utoipa::ToSchema for PromptStreamEvent {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            <PromptEvent as utoipa::ToSchema>::name().into(),
            <PromptEvent as utoipa::PartialSchema>::schema(),
        ));
        <PromptEvent as utoipa::ToSchema>::schemas(schemas);
    }
}

/// The events of a prompt stream, for the document.
const PROMPT_STREAM: &str = "Server-sent events. The first frame carries only `retry:`. \
    Each event has an `id:` (its sequence number, for `Last-Event-ID`), an `event:` name and \
    one JSON `data:` line whose `type` is that name: `connected` \
    (`{\"type\":\"connected\",\"promptId\",\"conversationId\"}`), `content` \
    (`{\"type\":\"content\",\"text\"}`, a piece of the answer), `metadata` \
    (`{\"type\":\"metadata\",\"kind\",...}`: progress, tool use, usage, stderr; \
    `kind: missed` with `from`/`to` when events were dropped from the bounded log), then one \
    final `done` (`{\"type\":\"done\",\"exitCode\",\"usage\",\"durationMs\"}`) or \
    `error` (`{\"type\":\"error\",\"code\",\"message\"}`). Comments keep the stream \
    alive every 15 s. The stream ends after the final event, or when the token is revoked.";

#[utoipa::path(
    post,
    path = "/api/prompts/execute",
    tag = "prompts",
    operation_id = "execute_prompt",
    request_body = PromptRequest,
    responses((status = 200, description = PROMPT_STREAM, content_type = "text/event-stream", body = PromptStreamEvent))
)]
async fn execute(call: Call, body: Body) -> Response {
    let result = async {
        let principal = call.principal()?;
        let request: PromptRequest = body.json(call.ctx.limits.max_body_bytes).await?;
        principal.require_user(&request.user_id)?;
        let run = call.ctx.prompts.execute(request).await?;
        Ok(sse(&call, principal, run, 0))
    }
    .await;
    call.respond_with(result)
}

#[utoipa::path(
    get,
    path = "/api/prompts/{promptId}/stream",
    tag = "prompts",
    operation_id = "reattach_prompt_stream",
    params(
        ("promptId" = String, Path),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = "^[0-9]{1,19}$",
            description = "The id of the last event received; the stream resumes after it \
                (from the start when absent)"),
    ),
    responses((status = 200, description = PROMPT_STREAM, content_type = "text/event-stream", body = PromptStreamEvent))
)]
async fn reattach(id: String, call: Call, last_event_id: Option<String>) -> Response {
    let result = async {
        let principal = call.principal()?;
        let prompt = call.ctx.prompts.get(&id).await?;
        principal.require_user(&prompt.user_id)?;
        let after = match last_event_id {
            None => 0,
            Some(raw) => raw
                .trim()
                .parse::<u64>()
                .map_err(|_| ApiError::invalid_field("Last-Event-ID", "must be an event id"))?,
        };
        let run = call
            .ctx
            .prompts
            .run(&id)
            .ok_or(crate::prompts::PromptError::NotStreaming(id))?;
        Ok(sse(&call, principal, run, after))
    }
    .await;
    call.respond_with(result)
}

#[utoipa::path(
    post,
    path = "/api/prompts/{promptId}/cancel",
    tag = "prompts",
    operation_id = "cancel_prompt",
    params(("promptId" = String, Path)),
    responses((status = 200, description = "The prompt, cancelled (or as it ended, if it already had)", body = PromptView))
)]
async fn cancel(id: String, call: Call) -> Response {
    let result = async {
        let principal = call.principal()?;
        let prompt = call.ctx.prompts.get(&id).await?;
        principal.require_user(&prompt.user_id)?;
        Ok(PromptView::from(&call.ctx.prompts.cancel(&id).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    get,
    path = "/api/prompts/{promptId}/status",
    tag = "prompts",
    operation_id = "get_prompt",
    params(("promptId" = String, Path)),
    responses((status = 200, description = "The prompt", body = PromptView))
)]
async fn status(id: String, call: Call) -> Response {
    let result = async {
        let principal = call.principal()?;
        let prompt = call.ctx.prompts.get(&id).await?;
        principal.require_user(&prompt.user_id)?;
        Ok(PromptView::from(&prompt))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

/// The answer to `GET /api/users/:userId/prompts`.
#[derive(Serialize, utoipa::ToSchema)]
struct PromptHistoryView {
    /// The newest prompts, newest first.
    prompts: Vec<PromptView>,
    /// All the user's prompts, not only those of this answer.
    total: u64,
}

#[utoipa::path(
    get,
    path = "/api/users/{userId}/prompts",
    tag = "prompts",
    operation_id = "list_user_prompts",
    params(
        ("userId" = String, Path),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500,
            description = "How many of the newest prompts to answer with (default 50)"),
    ),
    responses((status = 200, description = "The user's newest prompts", body = PromptHistoryView))
)]
async fn history(user_id: String, call: Call, query: HashMap<String, String>) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        if let Some(unknown) = query.keys().find(|k| k.as_str() != "limit") {
            return Err(ApiError::BadRequest {
                code: "unknown_query_parameter",
                message: format!("unknown query parameter {unknown:?}; expected limit"),
            });
        }
        let limit = match query.get("limit") {
            None => 50,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_HISTORY).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid_field("limit", format!("must be from 1 to {MAX_HISTORY}"))
                })?,
        };
        let (prompts, total) = call.ctx.prompts.history(&user_id, limit).await?;
        let views: Vec<PromptView> = prompts.iter().map(PromptView::from).collect();
        // `total` counts all the user's prompts, as in every list, not this page.
        Ok(PromptHistoryView {
            prompts: views,
            total,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}
