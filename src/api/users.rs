//! `/api/users` routes.

use std::sync::Arc;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Body, Call, body, endpoint};
use super::error::ApiError;
use super::views::{
    CreateUserBody, DeletedUserView, MintTokenBody, MintedToken, PatchUserBody, UserStatsView,
    UserView, rfc3339,
};
use crate::model::now_ms;
use crate::users::{NewUser, UserPatch};

/// The longest-lived user token the API mints.
const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(get_user, create_user, patch_user, delete_user, user_stats, mint_token))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let get = warp::path!("api" / "users" / String)
        .and(endpoint(ctx.clone(), Method::GET, "/api/users/:userId"))
        .then(get_user);
    let create = warp::path!("api" / "users")
        .and(endpoint(ctx.clone(), Method::POST, "/api/users"))
        .and(body())
        .then(create_user);
    let patch = warp::path!("api" / "users" / String)
        .and(endpoint(ctx.clone(), Method::PATCH, "/api/users/:userId"))
        .and(body())
        .then(patch_user);
    let delete = warp::path!("api" / "users" / String)
        .and(endpoint(ctx.clone(), Method::DELETE, "/api/users/:userId"))
        .then(delete_user);
    let stats = warp::path!("api" / "users" / String / "stats")
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/users/:userId/stats",
        ))
        .then(user_stats);
    let mint = warp::path!("api" / "users" / String / "tokens")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/users/:userId/tokens",
        ))
        .and(body())
        .then(mint_token);
    get.or(create)
        .unify()
        .or(patch)
        .unify()
        .or(delete)
        .unify()
        .or(stats)
        .unify()
        .or(mint)
        .unify()
        .boxed()
}

#[utoipa::path(
    get,
    path = "/api/users/{userId}",
    tag = "users",
    params(("userId" = String, Path)),
    responses((status = 200, description = "The user", body = UserView))
)]
async fn get_user(id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_user(&id)?;
        Ok(UserView::from(&call.ctx.users.get(&id).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    post,
    path = "/api/users",
    tag = "users",
    request_body = CreateUserBody,
    responses((status = 201, description = "The user, created", body = UserView))
)]
async fn create_user(call: Call, body: Body) -> Response {
    let result = async {
        call.principal()?.require_service()?;
        let body: CreateUserBody = body.json(call.ctx.limits.max_body_bytes).await?;
        let user = call
            .ctx
            .users
            .create(NewUser {
                email: body.email,
                supabase_auth_id: body.supabase_auth_id,
            })
            .await?;
        Ok(UserView::from(&user))
    }
    .await;
    call.respond(StatusCode::CREATED, result)
}

#[utoipa::path(
    patch,
    path = "/api/users/{userId}",
    tag = "users",
    params(("userId" = String, Path)),
    request_body = PatchUserBody,
    responses((status = 200, description = "The user, updated", body = UserView))
)]
async fn patch_user(id: String, call: Call, body: Body) -> Response {
    let result = async {
        call.principal()?.require_service()?;
        let body: PatchUserBody = body.json(call.ctx.limits.max_body_bytes).await?;
        let patch = UserPatch {
            plan: body
                .plan
                .map(|p| p.parse())
                .transpose()
                .map_err(|e| ApiError::invalid_field("plan", e))?,
            status: body
                .status
                .map(|s| s.parse())
                .transpose()
                .map_err(|e| ApiError::invalid_field("status", e))?,
        };
        // An empty patch changes nothing and answers the user as it is.
        if patch.plan.is_none() && patch.status.is_none() {
            return Ok(UserView::from(&call.ctx.users.get(&id).await?));
        }
        Ok(UserView::from(&call.ctx.users.update(&id, patch).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    delete,
    path = "/api/users/{userId}",
    tag = "users",
    params(("userId" = String, Path)),
    responses((status = 200, description = "The user, deleted with everything they owned", body = DeletedUserView))
)]
/// Deletes the user and everything they own; their VM is destroyed first.
async fn delete_user(id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_service()?;
        let deleted = call.ctx.users.delete(&id, &call.ctx.vms).await?;
        Ok(DeletedUserView::from(&deleted))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    get,
    path = "/api/users/{userId}/stats",
    tag = "users",
    params(("userId" = String, Path)),
    responses((status = 200, description = "The user's statistics", body = UserStatsView))
)]
async fn user_stats(id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_user(&id)?;
        Ok(UserStatsView::from(&call.ctx.users.stats(&id).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    post,
    path = "/api/users/{userId}/tokens",
    tag = "users",
    params(("userId" = String, Path)),
    request_body(content = Option<MintTokenBody>, description = "The token's lifetime; an empty body takes the default"),
    responses((status = 201, description = "A token scoped to the user", body = MintedToken))
)]
async fn mint_token(id: String, call: Call, body: Body) -> Response {
    let result = async {
        call.principal()?.require_service()?;
        let body: MintTokenBody = body.json_or_default(call.ctx.limits.max_body_bytes).await?;
        let ttl = body.ttl_sec.unwrap_or(call.ctx.limits.user_token_ttl_secs);
        if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
            return Err(ApiError::invalid_field(
                "ttlSec",
                format!("must be between 1 and {MAX_TOKEN_TTL_SECS}"),
            ));
        }
        let user = call.ctx.users.get(&id).await?;
        let now_secs = now_ms() / 1000;
        let token = call.ctx.auth.mint(&user.id, now_secs, ttl);
        Ok(MintedToken {
            token,
            user_id: user.id,
            expires_at: rfc3339((now_secs + ttl as i64) * 1000),
        })
    }
    .await;
    call.respond(StatusCode::CREATED, result)
}
