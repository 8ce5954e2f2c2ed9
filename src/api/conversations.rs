//! `/api/conversations` routes and a user's conversation list.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Call, endpoint};
use super::error::ApiError;
use super::paging::{NumberedPageParams, PageParams, page};
use super::views::{ConversationView, PromptView};

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(list, get, delete))]
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

/// A page of `GET /api/users/:userId/conversations`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ConversationListView {
    conversations: Vec<ConversationView>,
    /// The next page's `cursor`; `null` on the last page.
    next_cursor: Option<String>,
}

/// The answer to `GET /api/conversations/:conversationId`: the conversation's fields and a
/// page of its prompts.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ConversationDetailView {
    #[serde(flatten)]
    conversation: ConversationView,
    /// The prompts of this page, in turn order.
    prompts: Vec<PromptView>,
    /// The next page's `cursor` (a turn number); `null` on the last page.
    next_cursor: Option<String>,
}

/// The answer to `DELETE /api/conversations/:conversationId`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct DeletedConversationView {
    conversation_id: String,
    deleted: bool,
}

/// The user's conversations, newest first.
#[utoipa::path(
    get,
    path = "/api/users/{userId}/conversations",
    tag = "conversations",
    operation_id = "list_user_conversations",
    params(("userId" = String, Path), PageParams),
    responses((status = 200, description = "A page of the user's conversations, newest first", body = ConversationListView))
)]
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
        Ok(ConversationListView {
            conversations: views,
            next_cursor: next,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}

/// The conversation and a page of its prompts in turn order (the cursor is a turn number).
#[utoipa::path(
    get,
    path = "/api/conversations/{conversationId}",
    tag = "conversations",
    operation_id = "get_conversation",
    params(("conversationId" = String, Path), NumberedPageParams),
    responses((status = 200, description = "The conversation and a page of its prompts in turn order; \
        the cursor is a turn number", body = ConversationDetailView))
)]
async fn get(id: String, call: Call, query: HashMap<String, String>) -> Response {
    let result = async {
        let principal = call.principal()?;
        let conversation = call.ctx.conversations.get(&id).await?;
        principal.require_user(&conversation.user_id)?;
        let page = page(&query, &[])?;
        let from_turn = match page.cursor {
            None => 0,
            // Digits only: `parse` would also take a sign.
            Some(raw) => Some(raw)
                .filter(|r| r.len() <= 9 && r.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|r| r.parse::<u32>().ok())
                .ok_or_else(|| ApiError::invalid_field("cursor", "must be a turn number"))?,
        };
        let (prompts, next) = call
            .ctx
            .conversations
            .prompts(&id, from_turn, page.limit)
            .await?;
        Ok(ConversationDetailView {
            conversation: ConversationView::from(&conversation),
            prompts: prompts.iter().map(PromptView::from).collect(),
            next_cursor: next.map(|turn| turn.to_string()),
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}

/// Deletes the conversation; its prompts stay in the user's history.
#[utoipa::path(
    delete,
    path = "/api/conversations/{conversationId}",
    tag = "conversations",
    operation_id = "delete_conversation",
    params(("conversationId" = String, Path)),
    responses((status = 200, description = "The conversation, deleted; its prompts stay in the user's history", body = DeletedConversationView))
)]
async fn delete(id: String, call: Call) -> Response {
    let result = async {
        let principal = call.principal()?;
        let conversation = call.ctx.conversations.get(&id).await?;
        principal.require_user(&conversation.user_id)?;
        call.ctx.conversations.delete(&id).await?;
        Ok(DeletedConversationView {
            conversation_id: id,
            deleted: true,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}
