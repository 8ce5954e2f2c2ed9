//! `/api/admin` routes: admin token only.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Body, Call, body, endpoint};
use super::error::ApiError;
use super::paging::page;
use super::views::{UserView, VmView};
use super::vms::{enum_schema, page_params, query_param};
use crate::model::{Plan, UserStatus, VmStatus};
use crate::users::{MAX_PAGE_SIZE, PageStart, UserFilter};
use crate::vms::{ExecResult, OrphanReport};

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(
        list_users,
        force_destroy_vm,
        revoke_tokens,
        cleanup_inactive,
        cleanup_orphans,
        exec_in_vm
    ))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let users = warp::path!("api" / "admin" / "users")
        .and(endpoint(ctx.clone(), Method::GET, "/api/admin/users"))
        .and(warp::query::<HashMap<String, String>>())
        .then(list_users);
    let force_destroy = warp::path!("api" / "admin" / "users" / String / "force-destroy-vm")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/admin/users/:userId/force-destroy-vm",
        ))
        .then(force_destroy_vm);
    let revoke = warp::path!("api" / "admin" / "users" / String / "revoke-tokens")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/admin/users/:userId/revoke-tokens",
        ))
        .then(revoke_tokens);
    let inactive = warp::path!("api" / "admin" / "cleanup" / "inactive-vms")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/admin/cleanup/inactive-vms",
        ))
        .and(body())
        .then(cleanup_inactive);
    let orphans = warp::path!("api" / "admin" / "cleanup" / "orphaned-resources")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/admin/cleanup/orphaned-resources",
        ))
        .then(cleanup_orphans);
    let exec = warp::path!("api" / "admin" / "vms" / String / "exec")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/admin/vms/:vmId/exec",
        ))
        .and(body())
        .then(exec_in_vm);
    users
        .or(force_destroy)
        .unify()
        .or(revoke)
        .unify()
        .or(inactive)
        .unify()
        .or(orphans)
        .unify()
        .or(exec)
        .unify()
        .or(super::tasks::routes(ctx))
        .unify()
        .boxed()
}

/// The answer to `POST /api/admin/users/:userId/revoke-tokens`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct RevokedTokensView {
    user_id: String,
    /// The user's token epoch now; tokens minted before it are refused.
    token_epoch: u64,
}

#[utoipa::path(
    post,
    path = "/api/admin/users/{userId}/revoke-tokens",
    tag = "admin",
    operation_id = "revoke_user_tokens",
    params(("userId" = String, Path)),
    responses((status = 200, description = "Every token of the user minted so far is revoked", body = RevokedTokensView))
)]
/// Revokes every user token of the user minted so far; their open streams end.
async fn revoke_tokens(user_id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let epoch = call.ctx.users.revoke_tokens(&user_id).await?;
        Ok(RevokedTokensView {
            user_id,
            token_epoch: epoch,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    post,
    path = "/api/admin/users/{userId}/force-destroy-vm",
    tag = "admin",
    operation_id = "force_destroy_user_vm",
    params(("userId" = String, Path)),
    responses((status = 200, description = "The user's VM, destroyed", body = VmView))
)]
/// Destroys the user's VM whatever it is doing.
async fn force_destroy_vm(user_id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let vm = call.ctx.vms.user_vm(&user_id).await?;
        Ok(VmView::from(&call.ctx.vms.destroy(&vm.id).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

/// The most days `olderThanDays` may name (the document's bound is this literal).
const MAX_INACTIVE_DAYS: u32 = 36500;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CleanupInactiveBody {
    /// Destroy VMs with no activity for this many days; 14 when absent.
    #[schema(minimum = 1, maximum = 36500)]
    #[serde(default, deserialize_with = "crate::model::whole_number")]
    older_than_days: Option<u32>,
}

/// The answer to `POST /api/admin/cleanup/inactive-vms`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CleanupInactiveView {
    older_than_days: u32,
    destroyed: Vec<VmView>,
    count: usize,
}

#[utoipa::path(
    post,
    path = "/api/admin/cleanup/inactive-vms",
    tag = "admin",
    operation_id = "cleanup_inactive_vms",
    request_body(content = Option<CleanupInactiveBody>, description = "Optional: an empty body destroys VMs inactive for 14 days"),
    responses((status = 200, description = "The VMs destroyed", body = CleanupInactiveView))
)]
/// Destroys every VM with no activity (heartbeat, status change) for `olderThanDays` days.
async fn cleanup_inactive(call: Call, body: Body) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let body: CleanupInactiveBody =
            body.json_or_default(call.ctx.limits.max_body_bytes).await?;
        let days = body.older_than_days.unwrap_or(14);
        if !(1..=MAX_INACTIVE_DAYS).contains(&days) {
            return Err(ApiError::invalid_field(
                "olderThanDays",
                format!("must be from 1 to {MAX_INACTIVE_DAYS}"),
            ));
        }
        let destroyed = call.ctx.vms.destroy_inactive(days).await?;
        let views: Vec<VmView> = destroyed.iter().map(VmView::from).collect();
        Ok(CleanupInactiveView {
            older_than_days: days,
            count: views.len(),
            destroyed: views,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    post,
    path = "/api/admin/cleanup/orphaned-resources",
    tag = "admin",
    operation_id = "cleanup_orphaned_resources",
    responses((status = 200, description = "What the sweep removed", body = OrphanReport))
)]
/// Removes the taps, directories, processes and leases no live VM owns.
async fn cleanup_orphans(call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        Ok(call.ctx.vms.sweep_orphans().await?)
    }
    .await;
    call.respond(StatusCode::OK, result)
}

/// The longest a command run through the admin exec may take.
const MAX_EXEC_TIMEOUT_SECS: u64 = 600;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExecBody {
    /// The program and its arguments.
    #[schema(min_items = 1)]
    argv: Vec<String>,
    /// 30 when absent.
    #[schema(minimum = 1, maximum = 600)]
    #[serde(default, deserialize_with = "crate::model::whole_number")]
    timeout_sec: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/api/admin/vms/{vmId}/exec",
    tag = "admin",
    operation_id = "admin_exec_in_vm",
    params(("vmId" = String, Path)),
    request_body = ExecBody,
    responses((status = 200, description = "The command's outcome, its output bounded; 409 when the VM is not running", body = ExecResult))
)]
/// Runs a command in the VM through its agent, as root, and collects its output.
async fn exec_in_vm(vm_id: String, call: Call, body: Body) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let body: ExecBody = body.json(call.ctx.limits.max_body_bytes).await?;
        if body.argv.is_empty() {
            return Err(ApiError::invalid_field("argv", "must name a program"));
        }
        let timeout = body.timeout_sec.unwrap_or(30);
        if !(1..=MAX_EXEC_TIMEOUT_SECS).contains(&timeout) {
            return Err(ApiError::invalid_field(
                "timeoutSec",
                format!("must be from 1 to {MAX_EXEC_TIMEOUT_SECS}"),
            ));
        }
        // A VM that is not running has no agent to ask: a state the caller can see, not a
        // failure of the daemon.
        let vm = call.ctx.vms.get(&vm_id).await?;
        if vm.status != VmStatus::Running {
            return Err(ApiError::Conflict {
                code: "vm_not_running",
                message: format!("VM {vm_id} is {}; exec needs it running", vm.status),
                extra: None,
            });
        }
        let outcome = call
            .ctx
            .vms
            .exec(&vm_id, body.argv, std::time::Duration::from_secs(timeout))
            .await?;
        Ok(outcome)
    }
    .await;
    call.respond(StatusCode::OK, result)
}

fn page_param(
    query: &HashMap<String, String>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid_field(
                name,
                format!("must be an integer from 1 to {max}"),
            )),
        },
    }
}

/// A page of users.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct UserListView {
    users: Vec<UserView>,
    /// Every match of the filters, on every page.
    total: u64,
    /// The page's size.
    limit: usize,
    /// The `cursor` of the next page; `null` on the last.
    next_cursor: Option<String>,
    /// Only with the older paging style, `page=` (the page's number, from 1; not with
    /// `cursor`), which is still answered but left out of the document.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, nullable = false)]
    page: Option<usize>,
}

/// The query of `GET /api/admin/users`, for the document.
struct ListUsersQuery;

impl utoipa::IntoParams for ListUsersQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut params = page_params("The last user id of the previous page (its `nextCursor`)");
        params.extend([
            query_param(
                "status",
                enum_schema(UserStatus::ALL.iter().map(|s| s.as_str())),
                "Only users with this status",
            ),
            query_param(
                "plan",
                enum_schema(Plan::ALL.iter().map(|p| p.as_str())),
                "Only users on this plan",
            ),
            query_param(
                "email",
                ObjectBuilder::new().schema_type(Type::String),
                "Only the user with this email; empty means no filter",
            ),
        ]);
        params
    }
}

#[utoipa::path(
    get,
    path = "/api/admin/users",
    tag = "admin",
    operation_id = "list_users",
    params(ListUsersQuery),
    responses((status = 200, description = "A page of users, by id", body = UserListView))
)]
async fn list_users(call: Call, query: HashMap<String, String>) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let paged = page(&query, &["page", "status", "plan", "email"])?;
        // `page=` is the older style, still answered; it and `cursor` do not mix.
        let start = match (query.get("page"), paged.cursor) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid_field(
                    "page",
                    "use cursor or page, not both",
                ));
            }
            (Some(_), None) => PageStart::Number(page_param(&query, "page", 1, usize::MAX)?),
            (None, cursor) => PageStart::After(cursor),
        };
        let limit = paged.limit.min(MAX_PAGE_SIZE);
        let filter = UserFilter {
            status: query.get("status").map(|s| s.parse()).transpose()?,
            plan: query.get("plan").map(|s| s.parse()).transpose()?,
            email: query.get("email").filter(|e| !e.is_empty()).cloned(),
        };
        let listed = call.ctx.users.list_filtered(filter, start, limit).await?;
        let users: Vec<UserView> = listed.users.iter().map(UserView::from).collect();
        Ok(UserListView {
            users,
            total: listed.total,
            limit,
            next_cursor: listed.next_cursor,
            page: query.get("page").map(|p| p.parse::<usize>().unwrap_or(1)),
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}
