//! `/api/admin` routes: admin token only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Call, endpoint};
use super::error::ApiError;
use super::views::UserView;
use crate::inventory::Inventory;
use crate::users::MAX_PAGE_SIZE;

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
    users.or(stats).unify().boxed()
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
        if let Some(unknown) = query
            .keys()
            .find(|k| !["page", "limit"].contains(&k.as_str()))
        {
            return Err(ApiError::BadRequest {
                code: "unknown_query_parameter",
                message: format!("unknown query parameter {unknown:?}; expected page or limit"),
            });
        }
        let page = page_param(&query, "page", 1, usize::MAX)?;
        let limit = page_param(&query, "limit", 50, MAX_PAGE_SIZE)?;
        let listed = call.ctx.users.list(page, limit).await?;
        let users: Vec<UserView> = listed.users.iter().map(UserView::from).collect();
        Ok(json!({ "users": users, "total": listed.total, "page": page, "limit": limit }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

async fn system_stats(call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let ctx = &call.ctx;
        let inventory = Inventory::take(&ctx.store).await?;
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
            "decodoPortsUsed": inventory.port_leases,
            "outbox": { "depth": inventory.outbox_depth },
            "websocket": { "connections": ctx.ws_connections.load(Ordering::Relaxed) },
            "store": { "sizeBytes": store_bytes },
        }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}
