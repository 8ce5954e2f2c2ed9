//! The OAuth login relay and the credential endpoints (`/api/auth/...`). Every route checks
//! that the caller may act for the session's or credential's user.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Body, Call, body, endpoint};
use super::error::ApiError;
use crate::model::Provider;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StartRequest {
    user_id: String,
    provider: Provider,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeRequest {
    code: String,
}

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths())]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let start = warp::path!("api" / "auth" / "start")
        .and(endpoint(ctx.clone(), Method::POST, "/api/auth/start"))
        .and(body())
        .then(|call, body| begin(call, body, false));
    let rotate = warp::path!("api" / "auth" / "rotate")
        .and(endpoint(ctx.clone(), Method::POST, "/api/auth/rotate"))
        .and(body())
        .then(|call, body| begin(call, body, true));
    let session = warp::path!("api" / "auth" / "session" / String)
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/auth/session/:sessionId",
        ))
        .then(session);
    let code = warp::path!("api" / "auth" / "session" / String / "code")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/auth/session/:sessionId/code",
        ))
        .and(body())
        .then(code);
    let cancel = warp::path!("api" / "auth" / "session" / String / "cancel")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/auth/session/:sessionId/cancel",
        ))
        .then(cancel);
    let credentials = warp::path!("api" / "auth" / "credentials" / String)
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/auth/credentials/:userId",
        ))
        .then(credentials);
    let validate = warp::path!("api" / "auth" / "validate" / String / Provider)
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/auth/validate/:userId/:provider",
        ))
        .and(warp::query::<HashMap<String, String>>())
        .then(validate);
    start
        .or(rotate)
        .unify()
        .or(session)
        .unify()
        .or(code)
        .unify()
        .or(cancel)
        .unify()
        .or(credentials)
        .unify()
        .or(validate)
        .unify()
        .boxed()
}

async fn begin(call: Call, body: Body, rotation: bool) -> Response {
    let result = async {
        let principal = call.principal()?;
        let request: StartRequest = body.json(call.ctx.limits.max_body_bytes).await?;
        principal.require_user(&request.user_id)?;
        let session = call
            .ctx
            .oauth
            .start(&request.user_id, request.provider, rotation)
            .await?;
        Ok(call.ctx.oauth.view(&session))
    }
    .await;
    call.respond(StatusCode::ACCEPTED, result)
}

async fn session(id: String, call: Call) -> Response {
    let result = async {
        let principal = call.principal()?;
        let session = call.ctx.oauth.session(&id).await?;
        principal.require_user(&session.user_id)?;
        Ok(call.ctx.oauth.view(&session))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

async fn code(id: String, call: Call, body: Body) -> Response {
    let result = async {
        let principal = call.principal()?;
        let session = call.ctx.oauth.session(&id).await?;
        principal.require_user(&session.user_id)?;
        let request: CodeRequest = body.json(call.ctx.limits.max_body_bytes).await?;
        let code = zeroize::Zeroizing::new(request.code);
        let session = call.ctx.oauth.submit_code(&id, &code).await?;
        Ok(call.ctx.oauth.view(&session))
    }
    .await;
    call.respond(StatusCode::ACCEPTED, result)
}

async fn cancel(id: String, call: Call) -> Response {
    let result = async {
        let principal = call.principal()?;
        let session = call.ctx.oauth.session(&id).await?;
        principal.require_user(&session.user_id)?;
        Ok(call.ctx.oauth.view(&call.ctx.oauth.cancel(&id).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

async fn credentials(user_id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        Ok(call.ctx.oauth.credentials(&user_id).await?)
    }
    .await;
    call.respond(StatusCode::OK, result)
}

async fn validate(
    user_id: String,
    provider: Provider,
    call: Call,
    query: HashMap<String, String>,
) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        if let Some(unknown) = query.keys().find(|k| k.as_str() != "live") {
            return Err(ApiError::invalid_field(
                unknown,
                "unknown query parameter; only live is accepted",
            ));
        }
        let live = match query.get("live").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(ApiError::invalid_field("live", "must be true or false")),
        };
        Ok(call.ctx.oauth.validate(&user_id, provider, live).await?)
    }
    .await;
    call.respond(StatusCode::OK, result)
}
