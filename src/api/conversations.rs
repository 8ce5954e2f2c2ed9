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
use super::paging::page;
use super::views::{ConversationView, PromptView};

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths())]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

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

/// The user's conversations, newest first.
async fn list(user_id: String, call: Call, query: HashMap<String, String>) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        let page = page(&query, &[])?;
        let (conversations, next) = call
            .ctx
            .conversations
            .list(&user_id, page.cursor.as_deref(), page.limit)
            .await?;
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
        let page = page(&query, &[])?;
        let from_turn = match page.cursor {
            None => 0,
            Some(raw) => raw
                .parse::<u32>()
                .map_err(|_| ApiError::invalid_field("cursor", "must be a turn number"))?,
        };
        let (prompts, next) = call
            .ctx
            .conversations
            .prompts(&id, from_turn, page.limit)
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
