//! A user's VM (`/api/users/:userId/vm`) and a VM's diagnostics: create, hibernate, resume and
//! destroy through the VM manager.

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
use super::views::VmView;
use crate::vms::MAX_DIAGNOSTIC_LINES;

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(get_vm, create_vm, hibernate_vm, resume_vm, destroy_vm, diagnostics))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let get = warp::path!("api" / "users" / String / "vm")
        .and(endpoint(ctx.clone(), Method::GET, "/api/users/:userId/vm"))
        .then(get_vm);
    let create = warp::path!("api" / "users" / String / "vm")
        .and(endpoint(ctx.clone(), Method::POST, "/api/users/:userId/vm"))
        .then(create_vm);
    let hibernate = warp::path!("api" / "users" / String / "vm" / "hibernate")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/users/:userId/vm/hibernate",
        ))
        .then(hibernate_vm);
    let resume = warp::path!("api" / "users" / String / "vm" / "resume")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/users/:userId/vm/resume",
        ))
        .then(resume_vm);
    let destroy = warp::path!("api" / "users" / String / "vm")
        .and(endpoint(
            ctx.clone(),
            Method::DELETE,
            "/api/users/:userId/vm",
        ))
        .then(destroy_vm);
    let diagnostics = warp::path!("api" / "vms" / String / "diagnostics")
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/vms/:vmId/diagnostics",
        ))
        .and(warp::query::<HashMap<String, String>>())
        .then(diagnostics);
    get.or(create)
        .unify()
        .or(hibernate)
        .unify()
        .or(resume)
        .unify()
        .or(destroy)
        .unify()
        .or(diagnostics)
        .unify()
        .boxed()
}

// The document's bound on `lines` is a literal.
const _: () = assert!(MAX_DIAGNOSTIC_LINES == 2000);

/// The answer to `GET /api/vms/:vmId/diagnostics`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct VmDiagnosticsView {
    vm: VmView,
    /// The last lines of the VM's serial console, oldest first.
    console_log: Vec<String>,
    /// The number of lines asked for (fewer when the console has fewer).
    lines: usize,
}

#[utoipa::path(
    get,
    path = "/api/users/{userId}/vm",
    tag = "vms",
    operation_id = "get_user_vm",
    params(("userId" = String, Path)),
    responses((status = 200, description = "The user's VM", body = VmView))
)]
async fn get_vm(user_id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        Ok(VmView::from(&call.ctx.vms.user_vm(&user_id).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    post,
    path = "/api/users/{userId}/vm",
    tag = "vms",
    operation_id = "create_user_vm",
    params(("userId" = String, Path)),
    responses((status = 201, description = "The user's VM, created and booted", body = VmView))
)]
async fn create_vm(user_id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        Ok(VmView::from(&call.ctx.vms.create(&user_id).await?))
    }
    .await;
    call.respond(StatusCode::CREATED, result)
}

#[utoipa::path(
    post,
    path = "/api/users/{userId}/vm/hibernate",
    tag = "vms",
    operation_id = "hibernate_user_vm",
    params(("userId" = String, Path)),
    responses((status = 200, description = "The user's VM, hibernated", body = VmView))
)]
async fn hibernate_vm(user_id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        let vm = call.ctx.vms.user_vm(&user_id).await?;
        Ok(VmView::from(&call.ctx.vms.hibernate(&vm.id).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    post,
    path = "/api/users/{userId}/vm/resume",
    tag = "vms",
    operation_id = "resume_user_vm",
    params(("userId" = String, Path)),
    responses((status = 200, description = "The user's VM, resumed", body = VmView))
)]
async fn resume_vm(user_id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        let vm = call.ctx.vms.user_vm(&user_id).await?;
        Ok(VmView::from(&call.ctx.vms.resume(&vm.id).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    delete,
    path = "/api/users/{userId}/vm",
    tag = "vms",
    operation_id = "destroy_user_vm",
    params(("userId" = String, Path)),
    responses((status = 200, description = "The user's VM, destroyed", body = VmView))
)]
async fn destroy_vm(user_id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_user(&user_id)?;
        let vm = call.ctx.vms.user_vm(&user_id).await?;
        Ok(VmView::from(&call.ctx.vms.destroy(&vm.id).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    get,
    path = "/api/vms/{vmId}/diagnostics",
    tag = "vms",
    operation_id = "get_vm_diagnostics",
    params(
        ("vmId" = String, Path),
        ("lines" = Option<u32>, Query, minimum = 1, maximum = 2000,
            description = "How many lines of the console to answer with (default 100)"),
    ),
    responses((status = 200, description = "The VM and the tail of its serial console", body = VmDiagnosticsView))
)]
async fn diagnostics(vm_id: String, call: Call, query: HashMap<String, String>) -> Response {
    let result = async {
        let principal = call.principal()?;
        let vm = call.ctx.vms.get(&vm_id).await?;
        principal.require_user(&vm.user_id)?;
        let lines = match query.get("lines") {
            None => 100,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_DIAGNOSTIC_LINES).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        "lines",
                        format!("must be an integer from 1 to {MAX_DIAGNOSTIC_LINES}"),
                    )
                })?,
        };
        let console = call.ctx.vms.console_tail(&vm_id, lines).await?;
        Ok(VmDiagnosticsView {
            vm: VmView::from(&vm),
            console_log: console,
            lines,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}
