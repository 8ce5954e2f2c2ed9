//! `/api/users/:userId/files/*path`: a user's workspace files. An upload streams the request
//! body into the guest and a download streams the file out, so neither is ever held whole in
//! the daemon; a directory answers with its listing as JSON. User tokens reach their own
//! user's files only; the service and admin tokens any user's.

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode, header};
use warp::path::Tail;
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Body, Call, body, endpoint};
use super::error::ApiError;
use crate::workspace::Download;

const ROUTE: &str = "/api/users/:userId/files/*path";

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths())]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let files = || warp::path!("api" / "users" / String / "files" / ..).and(warp::path::tail());
    let upload = files()
        .and(endpoint(ctx.clone(), Method::PUT, ROUTE))
        .and(warp::header::optional::<u64>("content-length"))
        .and(body())
        .then(upload);
    let download = files()
        .and(endpoint(ctx.clone(), Method::GET, ROUTE))
        .then(download);
    let remove = files()
        .and(endpoint(ctx.clone(), Method::DELETE, ROUTE))
        .then(remove);
    upload.or(download).unify().or(remove).unify().boxed()
}

/// The path under the workspace root, percent-decoded.
fn workspace_path(tail: &Tail) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(tail.as_str())
        .decode_utf8()
        .map(|path| path.trim_end_matches('/').to_string())
        .map_err(|_| ApiError::BadRequest {
            code: "bad_path",
            message: "the path is not UTF-8 once decoded".into(),
        })
}

async fn upload(
    user_id: String,
    tail: Tail,
    call: Call,
    declared: Option<u64>,
    body: Body,
) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        let path = workspace_path(&tail)?;
        let written = call
            .ctx
            .workspace
            .upload(&user_id, &path, declared, body.into_stream())
            .await?;
        Ok(json!({ "path": path, "size": written }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

async fn download(user_id: String, tail: Tail, call: Call) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        let path = workspace_path(&tail)?;
        let reply = match call.ctx.workspace.download(&user_id, &path).await? {
            Download::File { size, body } => {
                let mut response = Response::new(Default::default());
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(size));
                let body = body.map(|chunk| chunk.map_err(std::io::Error::other));
                super::serve::streamed(response, body.boxed())
            }
            Download::Directory { entries, truncated } => {
                warp::Reply::into_response(warp::reply::json(
                    &json!({ "path": path, "entries": entries, "truncated": truncated }),
                ))
            }
        };
        Ok(reply)
    }
    .await;
    call.respond_with(result)
}

async fn remove(user_id: String, tail: Tail, call: Call) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        let path = workspace_path(&tail)?;
        call.ctx.workspace.remove(&user_id, &path).await?;
        Ok(json!({ "path": path, "deleted": true }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}
