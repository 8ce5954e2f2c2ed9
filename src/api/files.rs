//! `/api/users/:userId/files/*path`: a user's workspace files. An upload streams the request
//! body into the guest and a download streams the file out, so neither is ever held whole in
//! the daemon; a directory answers with its listing as JSON. User tokens reach their own
//! user's files only; the service and admin tokens any user's.

use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode, header};
use warp::path::Tail;
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Body, Call, body, endpoint};
use super::error::ApiError;
use crate::guest::workspace::Entry;
use crate::workspace::Download;

const ROUTE: &str = "/api/users/:userId/files/*path";

/// The document's `path` parameter: the rest of the URL path.
const PATH_PARAM: &str = "The path under the workspace root, percent-encoded: the rest of \
    the URL path, so it may hold `/` (literally or as `%2F`); relative, without `..`";

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(upload, download, remove))]
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

/// A file's raw bytes, for the document.
struct FileBytes;

impl utoipa::PartialSchema for FileBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .content_media_type("application/octet-stream")
            .into()
    }
}

impl utoipa::ToSchema for FileBytes {}

/// The answer to an upload.
#[derive(Serialize, utoipa::ToSchema)]
struct UploadedFileView {
    /// The file's path under the workspace root.
    path: String,
    /// The bytes written.
    size: u64,
}

/// A directory's listing.
#[derive(Serialize, utoipa::ToSchema)]
struct DirectoryListingView {
    /// The directory's path under the workspace root (empty for the root).
    path: String,
    entries: Vec<Entry>,
    /// Whether the listing stopped short of the directory's entries at the agent's bound.
    truncated: bool,
}

/// The answer to a removal.
#[derive(Serialize, utoipa::ToSchema)]
struct DeletedFileView {
    path: String,
    deleted: bool,
}

#[utoipa::path(
    put,
    path = "/api/users/{userId}/files/{path}",
    tag = "workspace",
    operation_id = "upload_workspace_file",
    params(
        ("userId" = String, Path),
        ("path" = String, Path, description = PATH_PARAM),
    ),
    request_body(content = inline(Option<FileBytes>), content_type = "application/octet-stream",
        description = "The file's bytes (none: an empty file); it replaces any file at the path, and missing \
            parent directories are made"),
    responses((status = 200, description = "The file, written", body = UploadedFileView))
)]
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
        Ok(UploadedFileView {
            path,
            size: written,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    get,
    path = "/api/users/{userId}/files/{path}",
    tag = "workspace",
    operation_id = "download_workspace_file",
    params(
        ("userId" = String, Path),
        ("path" = String, Path, description = PATH_PARAM),
    ),
    responses((status = 200, description = "A file's bytes, streamed, or a directory's listing as JSON",
        content(
            (inline(FileBytes) = "application/octet-stream"),
            (DirectoryListingView = "application/json"),
        )))
)]
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
                warp::Reply::into_response(warp::reply::json(&DirectoryListingView {
                    path,
                    entries,
                    truncated,
                }))
            }
        };
        Ok(reply)
    }
    .await;
    call.respond_with(result)
}

#[utoipa::path(
    delete,
    path = "/api/users/{userId}/files/{path}",
    tag = "workspace",
    operation_id = "delete_workspace_file",
    params(
        ("userId" = String, Path),
        ("path" = String, Path, description = PATH_PARAM),
    ),
    responses((status = 200, description = "The file or directory, removed with what it held", body = DeletedFileView))
)]
async fn remove(user_id: String, tail: Tail, call: Call) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        let path = workspace_path(&tail)?;
        call.ctx.workspace.remove(&user_id, &path).await?;
        Ok(DeletedFileView {
            path,
            deleted: true,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}
