//! `/api/admin` routes: admin token only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Body, Call, body, endpoint};
use super::error::ApiError;
use super::paging::page;
use super::views::{UserView, VmView};
use crate::inventory::Inventory;
use crate::users::{MAX_PAGE_SIZE, PageStart, UserFilter};

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths())]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let users = warp::path!("api" / "admin" / "users")
        .and(endpoint(ctx.clone(), Method::GET, "/api/admin/users"))
        .and(warp::query::<HashMap<String, String>>())
        .then(list_users);
    let stats = warp::path!("api" / "admin" / "system" / "stats")
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/admin/system/stats",
        ))
        .then(system_stats);
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
        .or(stats)
        .unify()
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

/// Revokes every user token of the user minted so far; their open streams end.
async fn revoke_tokens(user_id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let epoch = call.ctx.users.revoke_tokens(&user_id).await?;
        Ok(json!({ "userId": user_id, "tokenEpoch": epoch }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

async fn force_destroy_vm(user_id: String, call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let vm = call.ctx.vms.user_vm(&user_id).await?;
        Ok(VmView::from(&call.ctx.vms.destroy(&vm.id).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CleanupInactiveBody {
    older_than_days: Option<u32>,
}

async fn cleanup_inactive(call: Call, body: Body) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let body: CleanupInactiveBody =
            body.json_or_default(call.ctx.limits.max_body_bytes).await?;
        let days = body.older_than_days.unwrap_or(14);
        if days == 0 {
            return Err(ApiError::invalid_field(
                "olderThanDays",
                "must be at least 1",
            ));
        }
        let destroyed = call.ctx.vms.destroy_inactive(days).await?;
        let views: Vec<VmView> = destroyed.iter().map(VmView::from).collect();
        Ok(json!({ "olderThanDays": days, "destroyed": views, "count": views.len() }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExecBody {
    argv: Vec<String>,
    timeout_sec: Option<u64>,
}

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
        let mut body = json!({
            "users": users,
            "total": listed.total,
            "limit": limit,
            "nextCursor": listed.next_cursor,
        });
        if let Some(page) = query.get("page") {
            body["page"] = json!(page.parse::<usize>().unwrap_or(1));
        }
        Ok(body)
    }
    .await;
    call.respond(StatusCode::OK, result)
}

async fn system_stats(call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let ctx = &call.ctx;
        let inventory = Inventory::take(&ctx.store, ctx.vms.ip_pool_size()).await?;
        let outbox_sends: BTreeMap<&str, u64> = crate::metrics::OUTBOX_SEND_OUTCOMES
            .into_iter()
            .map(|outcome| {
                let labels = crate::metrics::OutboxSendLabels {
                    outcome: outcome.to_string(),
                };
                (
                    outcome,
                    ctx.metrics.outbox_sends.get_or_create(&labels).get(),
                )
            })
            .collect();
        let users_by_status: BTreeMap<&str, u64> = inventory
            .users_by_status
            .iter()
            .map(|(s, n)| (s.as_str(), *n))
            .collect();
        let prompts_by_status: BTreeMap<String, u64> = inventory
            .prompts_by_provider_status
            .iter()
            .map(|((provider, status), n)| (format!("{provider}:{status}"), *n))
            .collect();
        let host = ctx.host.read().await;
        let tasks = ctx.tasks.summary().await?;
        let store_bytes = tokio::fs::metadata(ctx.store.path())
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeSec": ctx.started.elapsed().as_secs(),
            "users": { "total": inventory.total_users(), "byStatus": users_by_status },
            "vms": super::vms::summary_json(&inventory),
            "prompts": { "byProviderStatus": prompts_by_status },
            "host": host,
            "ipPool": {
                "size": inventory.ip_pool_size,
                "leased": inventory.ip_leases,
                "available": inventory.ip_pool_available(),
            },
            "decodoPortsUsed": inventory.port_leases,
            "tasks": tasks,
            // The Supabase mirror's figures live here.
            "outbox": {
                "configured": ctx.sync.is_configured(),
                "depth": inventory.outbox_depth,
                "oldestAgeMs": inventory.outbox_oldest_age_ms,
                "deadLetters": inventory.dead_letters,
                "sends": outbox_sends,
            },
            "websocket": { "connections": ctx.ws_connections.load(Ordering::Relaxed) },
            "store": { "sizeBytes": store_bytes },
        }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}
