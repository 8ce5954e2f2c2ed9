//! `/api/conversations` routes and a user's conversation list.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Call, endpoint};
use super::error::ApiError;
use super::views::{ConversationView, PromptView};
use crate::conversations::MAX_PAGE;

/// A page's size when the caller names none.
const DEFAULT_PAGE: usize = 50;

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let list = warp::path!("api" / "users" / String / "conversations")
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/users/:userId/conversations",
        ))
        .and(warp::query::<HashMap<String, String>>())
        .then(list);
    let get = warp::path!("api" / "conversations" / String)
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/conversations/:conversationId",
        ))
        .and(warp::query::<HashMap<String, String>>())
        .then(get);
    let delete = warp::path!("api" / "conversations" / String)
        .and(endpoint(
            ctx.clone(),
            Method::DELETE,
            "/api/conversations/:conversationId",
        ))
        .then(delete);
    list.or(get).unify().or(delete).unify().boxed()
}

/// `limit` and `cursor` of a paged route; any other parameter is refused.
fn page(query: &HashMap<String, String>) -> Result<(usize, Option<&str>), ApiError> {
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "limit" | "cursor"))
    {
        return Err(ApiError::BadRequest {
            code: "unknown_query_parameter",
            message: format!("unknown query parameter {unknown:?}; expected limit or cursor"),
        });
    }
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_field("limit", format!("must be from 1 to {MAX_PAGE}"))
            })?,
    };
    let cursor = query.get("cursor").map(String::as_str);
    if cursor.is_some_and(str::is_empty) {
        return Err(ApiError::invalid_field("cursor", "must not be empty"));
    }
    Ok((limit, cursor))
}

/// The user's conversations, newest first.
async fn list(user_id: String, call: Call, query: HashMap<String, String>) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        let (limit, cursor) = page(&query)?;
        let (conversations, next) = call.ctx.conversations.list(&user_id, cursor, limit).await?;
        let views: Vec<ConversationView> =
            conversations.iter().map(ConversationView::from).collect();
        Ok(json!({ "conversations": views, "nextCursor": next }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

/// The conversation and a page of its prompts in turn order (the cursor is a turn number).
async fn get(id: String, call: Call, query: HashMap<String, String>) -> Response {
    let result = async {
        let principal = call.principal()?;
        let conversation = call.ctx.conversations.get(&id).await?;
        principal.require_user(&conversation.user_id)?;
        let (limit, cursor) = page(&query)?;
        let from_turn = match cursor {
            None => 0,
            Some(raw) => raw
                .parse::<u32>()
                .map_err(|_| ApiError::invalid_field("cursor", "must be a turn number"))?,
        };
        let (prompts, next) = call
            .ctx
            .conversations
            .prompts(&id, from_turn, limit)
            .await?;
        let mut body = json!(ConversationView::from(&conversation));
        body["prompts"] = json!(prompts.iter().map(PromptView::from).collect::<Vec<_>>());
        body["nextCursor"] = json!(next.map(|turn| turn.to_string()));
        Ok(body)
    }
    .await;
    call.respond(StatusCode::OK, result)
}

/// Deletes the conversation; its prompts stay in the user's history.
async fn delete(id: String, call: Call) -> Response {
    let result = async {
        let principal = call.principal()?;
        let conversation = call.ctx.conversations.get(&id).await?;
        principal.require_user(&conversation.user_id)?;
        call.ctx.conversations.delete(&id).await?;
        Ok(json!({ "conversationId": id, "deleted": true }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}
