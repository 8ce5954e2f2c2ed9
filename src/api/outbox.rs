//! The Supabase mirror's outbox for operators: its state, the changes Supabase refused for
//! good (dead letters), and putting them back in line once the cause is fixed. Admin only.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Body, Call, body, endpoint};
use super::error::ApiError;
use super::views::rfc3339;
use crate::inventory::Inventory;
use crate::model::DeadLetter;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(state, dead_letters, retry))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let state = warp::path!("api" / "admin" / "outbox")
        .and(endpoint(ctx.clone(), Method::GET, "/api/admin/outbox"))
        .then(state);
    let letters = warp::path!("api" / "admin" / "outbox" / "dead-letters")
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/admin/outbox/dead-letters",
        ))
        .and(warp::query::<HashMap<String, String>>())
        .then(dead_letters);
    let retry = warp::path!("api" / "admin" / "outbox" / "dead-letters" / "retry")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/admin/outbox/dead-letters/retry",
        ))
        .and(body())
        .then(retry);
    state.or(letters).unify().or(retry).unify().boxed()
}

/// A change Supabase refused for good.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct DeadLetterView {
    /// What `POST /api/admin/outbox/dead-letters/retry` takes.
    key: String,
    table: String,
    entity_id: String,
    entity_version: u64,
    /// Supabase's HTTP status, when it answered.
    status: Option<u16>,
    error: String,
    attempts: u32,
    enqueued_at: String,
    dead_at: String,
}

impl DeadLetterView {
    fn new(key: String, letter: DeadLetter) -> DeadLetterView {
        DeadLetterView {
            key,
            table: letter.entry.table,
            entity_id: letter.entry.entity_id,
            entity_version: letter.entry.entity_version,
            status: letter.status,
            error: letter.error,
            attempts: letter.entry.attempts,
            enqueued_at: rfc3339(letter.entry.enqueued_at_ms),
            dead_at: rfc3339(letter.dead_at_ms),
        }
    }
}

/// The answer to `GET /api/admin/outbox`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct OutboxView {
    /// Whether a Supabase mirror is configured.
    configured: bool,
    /// Changes waiting to be sent.
    pending: u64,
    /// How long the oldest pending change has waited; `null` when none is.
    oldest_age_ms: Option<i64>,
    dead_letters: u64,
}

#[utoipa::path(
    get,
    path = "/api/admin/outbox",
    tag = "outbox",
    operation_id = "outbox_state",
    responses((status = 200, description = "The outbox in figures", body = OutboxView))
)]
async fn state(call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let inventory = Inventory::take(&call.ctx.store, call.ctx.vms.ip_pool_size()).await?;
        Ok(OutboxView {
            configured: call.ctx.sync.is_configured(),
            pending: inventory.outbox_depth,
            oldest_age_ms: inventory.outbox_oldest_age_ms,
            dead_letters: inventory.dead_letters,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    get,
    path = "/api/admin/outbox/dead-letters",
    tag = "outbox",
    operation_id = "list_dead_letters",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "How many dead letters at most; 100 when absent")),
    responses((status = 200, description = "The dead letters", body = Vec<DeadLetterView>))
)]
async fn dead_letters(call: Call, query: HashMap<String, String>) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        if let Some(unknown) = query.keys().find(|k| k.as_str() != "limit") {
            return Err(ApiError::invalid_field(unknown, "unknown query parameter"));
        }
        let limit = match query.get("limit") {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| ApiError::invalid_field("limit", format!("1 to {MAX_LIMIT}")))?,
        };
        let letters = call.ctx.sync.dead_letters(limit).await?;
        Ok(letters
            .into_iter()
            .map(|(key, letter)| DeadLetterView::new(key, letter))
            .collect::<Vec<_>>())
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetryRequest {
    /// One dead letter's key, or every dead letter when absent.
    key: Option<String>,
}

/// The answer to `POST /api/admin/outbox/dead-letters/retry`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct RetriedView {
    /// How many dead letters were put back in the outbox.
    retried: usize,
}

#[utoipa::path(
    post,
    path = "/api/admin/outbox/dead-letters/retry",
    tag = "outbox",
    operation_id = "retry_dead_letters",
    request_body(content = RetryRequest, description = "`{}` retries every dead letter"),
    responses((status = 202, description = "The dead letters are back in the outbox, to be sent again", body = RetriedView))
)]
async fn retry(call: Call, body: Body) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let request: RetryRequest = body.json(call.ctx.limits.max_body_bytes).await?;
        let keys = match request.key {
            Some(key) => vec![key],
            None => call
                .ctx
                .sync
                .dead_letters(usize::MAX)
                .await?
                .into_iter()
                .map(|(key, _)| key)
                .collect(),
        };
        for key in &keys {
            call.ctx.sync.retry(key).await?;
        }
        Ok(RetriedView {
            retried: keys.len(),
        })
    }
    .await;
    call.respond(StatusCode::ACCEPTED, result)
}
