//! `/api/vms` routes (read-only, plus heartbeat). The list is paged by VM id (`cursor` is the
//! last id of the previous page) and hides destroyed VMs unless asked.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Call, endpoint};
use super::error::ApiError;
use super::paging::page;
use super::views::VmView;
use crate::inventory::Inventory;
use crate::model::{VmStatus, VmType};
use crate::vms::VmFilter;

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths())]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let list = warp::path!("api" / "vms")
        .and(endpoint(ctx.clone(), Method::GET, "/api/vms"))
        .and(warp::query::<HashMap<String, String>>())
        .then(list_vms);
    let summary = warp::path!("api" / "vms" / "statistics" / "summary")
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/vms/statistics/summary",
        ))
        .then(summary);
    let get = warp::path!("api" / "vms" / String)
        .and(endpoint(ctx.clone(), Method::GET, "/api/vms/:vmId"))
        .then(get_vm);
    let heartbeat = warp::path!("api" / "vms" / String / "heartbeat")
        .and(endpoint(
            ctx.clone(),
            Method::POST,
            "/api/vms/:vmId/heartbeat",
        ))
        .then(heartbeat);
    list.or(summary)
        .unify()
        .or(get)
        .unify()
        .or(heartbeat)
        .unify()
        .boxed()
}

/// The list's filters. Destroyed VMs are left out unless `include=destroyed` or
/// `status=destroyed` asks for them.
fn parse_filter(query: &HashMap<String, String>) -> Result<VmFilter, ApiError> {
    let mut filter = VmFilter {
        hide_destroyed: true,
        ..VmFilter::default()
    };
    for (key, value) in query {
        match key.as_str() {
            "include" => match value.as_str() {
                "destroyed" => filter.hide_destroyed = false,
                _ => return Err(ApiError::invalid_field("include", "must be destroyed")),
            },
            "status" => {
                filter.status = Some(
                    value
                        .parse::<VmStatus>()
                        .map_err(|e| ApiError::invalid_field("status", e))?,
                )
            }
            "type" => {
                filter.vm_type = Some(
                    value
                        .parse::<VmType>()
                        .map_err(|e| ApiError::invalid_field("type", e))?,
                )
            }
            "userId" => filter.user_id = Some(value.clone()),
            // Checked by `paging::page`.
            _ => {}
        }
    }
    Ok(filter)
}

async fn list_vms(call: Call, query: HashMap<String, String>) -> Response {
    let result = async {
        let principal = call.principal()?;
        let page = page(&query, &["status", "type", "userId", "include"])?;
        let mut filter = parse_filter(&query)?;
        if let Some(asked) = &filter.user_id {
            principal.require_user(asked)?;
        }
        if let Some(own) = principal.user_scope() {
            filter.user_id = Some(own.to_string());
        }
        let listed = call
            .ctx
            .vms
            .list_page(filter, page.cursor, page.limit)
            .await?;
        let views: Vec<VmView> = listed.vms.iter().map(VmView::from).collect();
        Ok(json!({ "vms": views, "total": listed.total, "nextCursor": listed.next_cursor }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

async fn get_vm(id: String, call: Call) -> Response {
    let result = async {
        let principal = call.principal()?;
        let vm = call.ctx.vms.get(&id).await?;
        principal.require_user(&vm.user_id)?;
        Ok(VmView::from(&vm))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

async fn heartbeat(id: String, call: Call) -> Response {
    let result = async {
        let principal = call.principal()?;
        let vm = call.ctx.vms.get(&id).await?;
        principal.require_user(&vm.user_id)?;
        Ok(VmView::from(&call.ctx.vms.heartbeat(&id).await?))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

async fn summary(call: Call) -> Response {
    let result = async {
        call.principal()?.require_service()?;
        let inventory = Inventory::take(&call.ctx.store, call.ctx.vms.ip_pool_size()).await?;
        Ok(summary_json(&inventory))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

pub fn summary_json(inventory: &Inventory) -> serde_json::Value {
    let by_status: HashMap<&str, u64> = VmStatus::ALL
        .iter()
        .map(|s| (s.as_str(), inventory.vms_with_status(*s)))
        .collect();
    let by_type: HashMap<&str, u64> = VmType::ALL
        .iter()
        .map(|t| {
            (
                t.as_str(),
                VmStatus::ALL.iter().map(|s| inventory.vms(*s, *t)).sum(),
            )
        })
        .collect();
    json!({
        "total": inventory.vms_by_status_type.values().sum::<u64>(),
        "active": inventory.active_vms(),
        "byStatus": by_status,
        "byType": by_type,
        "ipPoolAvailable": inventory.ip_pool_available(),
    })
}
