//! The OAuth login relay and the credential endpoints (`/api/auth/...`). Every route checks
//! that the caller may act for the session's or credential's user.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Required, Schema};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Body, Call, body, endpoint};
use super::error::ApiError;
use crate::auth::{CredentialView, SessionView, Validation, provider_schema};
use crate::model::Provider;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StartRequest {
    user_id: String,
    #[schema(schema_with = provider_schema)]
    provider: Provider,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CodeRequest {
    /// What the provider's page showed after the user signed in: white space around it is
    /// dropped; what is left is 1 to 2048 characters with no control character.
    #[schema(
        min_length = 1,
        max_length = 2048,
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]([^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    code: String,
}

/// The provider in the path and `live` in the query of `GET
/// /api/auth/validate/:userId/:provider`, for the document.
struct ValidateParams;

// The document's bound on a code is a literal.
const _: () = assert!(crate::auth::MAX_CODE_CHARS == 2048);

impl utoipa::IntoParams for ValidateParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("provider")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(Schema::Object(provider_schema())))
                .build(),
            ParameterBuilder::new()
                .name("live")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(
                    "`true` also asks the CLI in the user's VM whether it accepts the \
                     credential (starting the VM if need be); `false` when absent",
                ))
                .schema(Some(Schema::Object(
                    ObjectBuilder::new().schema_type(Type::Boolean).build(),
                )))
                .build(),
        ]
    }
}

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(
        start_login,
        rotate_login,
        get_session,
        submit_code,
        cancel_session,
        list_credentials,
        validate_credential
    ))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let start = warp::path!("api" / "auth" / "start")
        .and(endpoint(ctx.clone(), Method::POST, "/api/auth/start"))
        .and(body())
        .then(start_login);
    let rotate = warp::path!("api" / "auth" / "rotate")
        .and(endpoint(ctx.clone(), Method::POST, "/api/auth/rotate"))
        .and(body())
        .then(rotate_login);
    let session = warp::path!("api" / "auth" / "session" / String)
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/auth/session/:sessionId",
        ))
        .then(get_session);
    let code = warp::path!("api" / "auth" / "session" / String / "code")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/auth/session/:sessionId/code",
        ))
        .and(body())
        .then(submit_code);
    let cancel = warp::path!("api" / "auth" / "session" / String / "cancel")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/auth/session/:sessionId/cancel",
        ))
        .then(cancel_session);
    let credentials = warp::path!("api" / "auth" / "credentials" / String)
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/auth/credentials/:userId",
        ))
        .then(list_credentials);
    let validate = warp::path!("api" / "auth" / "validate" / String / Provider)
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/auth/validate/:userId/:provider",
        ))
        .and(warp::query::<HashMap<String, String>>())
        .then(validate_credential);
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

#[utoipa::path(
    post,
    path = "/api/auth/start",
    tag = "logins",
    operation_id = "start_login",
    request_body = StartRequest,
    responses((status = 202, description = "The login is under way: follow its session", body = SessionView))
)]
/// Starts a login of the CLI in the user's VM, relayed to the user.
async fn start_login(call: Call, body: Body) -> Response {
    begin(call, body, false).await
}

#[utoipa::path(
    post,
    path = "/api/auth/rotate",
    tag = "logins",
    operation_id = "rotate_login",
    request_body = StartRequest,
    responses((status = 202, description = "The login is under way: follow its session", body = SessionView))
)]
/// Starts a new login that replaces the stored credential when it completes.
async fn rotate_login(call: Call, body: Body) -> Response {
    begin(call, body, true).await
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

#[utoipa::path(
    get,
    path = "/api/auth/session/{sessionId}",
    tag = "logins",
    operation_id = "get_login_session",
    params(("sessionId" = String, Path)),
    responses((status = 200, description = "The login session", body = SessionView))
)]
async fn get_session(id: String, call: Call) -> Response {
    let result = async {
        let principal = call.principal()?;
        let session = call.ctx.oauth.session(&id).await?;
        principal.require_user(&session.user_id)?;
        Ok(call.ctx.oauth.view(&session))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    post,
    path = "/api/auth/session/{sessionId}/code",
    tag = "logins",
    operation_id = "submit_login_code",
    params(("sessionId" = String, Path)),
    request_body = CodeRequest,
    responses((status = 202, description = "The code is passed to the CLI; the session goes on verifying", body = SessionView))
)]
async fn submit_code(id: String, call: Call, body: Body) -> Response {
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

#[utoipa::path(
    post,
    path = "/api/auth/session/{sessionId}/cancel",
    tag = "logins",
    operation_id = "cancel_login_session",
    params(("sessionId" = String, Path)),
    responses((status = 200, description = "The session, cancelled", body = SessionView))
)]
async fn cancel_session(id: String, call: Call) -> Response {
    let result = async {
        let principal = call.principal()?;
        let session = call.ctx.oauth.session(&id).await?;
        principal.require_user(&session.user_id)?;
        Ok(call.ctx.oauth.view(&call.ctx.oauth.cancel(&id).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    get,
    path = "/api/auth/credentials/{userId}",
    tag = "logins",
    operation_id = "list_credentials",
    params(("userId" = String, Path)),
    responses((status = 200, description = "The user's stored credentials: metadata, never a secret", body = Vec<CredentialView>))
)]
async fn list_credentials(user_id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        Ok(call.ctx.oauth.credentials(&user_id).await?)
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    get,
    path = "/api/auth/validate/{userId}/{provider}",
    tag = "logins",
    operation_id = "validate_credential",
    params(("userId" = String, Path), ValidateParams),
    responses((status = 200, description = "The stored credential, judged", body = Validation))
)]
async fn validate_credential(
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
