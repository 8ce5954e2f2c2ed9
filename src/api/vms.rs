//! `/api/vms` routes (read-only, plus heartbeat). The list is paged by VM id (`cursor` is the
//! last id of the previous page) and hides destroyed VMs unless asked.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Required, Schema};
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
    #[openapi(paths(list_vms, summary, get_vm, heartbeat))]
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

/// A page of VMs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmListView {
    pub vms: Vec<VmView>,
    /// Every match of the filters, on every page.
    pub total: u64,
    /// The `cursor` of the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// The query of `GET /api/vms`, for the document: the filters' values come from the model, so
/// they cannot drift from what the handler accepts.
struct ListVmsQuery;

impl utoipa::IntoParams for ListVmsQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut params = page_params("The last VM id of the previous page (its `nextCursor`)");
        params.extend([
            query_param(
                "status",
                enum_schema(VmStatus::ALL.iter().map(|s| s.as_str())),
                "Only VMs with this status (`destroyed` includes destroyed VMs)",
            ),
            query_param(
                "type",
                enum_schema(VmType::ALL.iter().map(|t| t.as_str())),
                "Only VMs of this type",
            ),
            query_param(
                "userId",
                ObjectBuilder::new().schema_type(Type::String),
                "Only this user's VM (a user token sees only its own anyway)",
            ),
            query_param(
                "include",
                enum_schema(["destroyed"]),
                "`destroyed` lists destroyed VMs too; they are left out otherwise",
            ),
        ]);
        params
    }
}

/// A VM's status, for the document.
pub(super) fn vm_status_schema() -> utoipa::openapi::schema::Object {
    enum_schema(VmStatus::ALL.iter().map(|s| s.as_str())).build()
}

/// A VM's type, for the document.
pub(super) fn vm_type_schema() -> utoipa::openapi::schema::Object {
    enum_schema(VmType::ALL.iter().map(|t| t.as_str())).build()
}

/// An optional query parameter, for the document.
pub(super) fn query_param(name: &str, schema: ObjectBuilder, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(Schema::Object(schema.build())))
        .build()
}

/// A string that is one of `values`, for the document.
pub(super) fn enum_schema<'a>(values: impl IntoIterator<Item = &'a str>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
}

/// `limit` and `cursor` as `paging::page` reads them, for the document.
pub(super) fn page_params(cursor: &str) -> Vec<Parameter> {
    vec![
        query_param(
            "limit",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(super::paging::MAX_PAGE as u64)),
            &format!(
                "The page's size; {} when absent",
                super::paging::DEFAULT_PAGE
            ),
        ),
        query_param(
            "cursor",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1)),
            cursor,
        ),
    ]
}

#[utoipa::path(
    get,
    path = "/api/vms",
    tag = "vms",
    operation_id = "list_vms",
    params(ListVmsQuery),
    responses((status = 200, description = "A page of VMs, by id; a user token sees only its own", body = VmListView))
)]
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
        Ok(VmListView {
            vms: views,
            total: listed.total,
            next_cursor: listed.next_cursor,
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}

#[utoipa::path(
    get,
    path = "/api/vms/{vmId}",
    tag = "vms",
    operation_id = "get_vm",
    params(("vmId" = String, Path)),
    responses((status = 200, description = "The VM", body = VmView))
)]
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

#[utoipa::path(
    post,
    path = "/api/vms/{vmId}/heartbeat",
    tag = "vms",
    operation_id = "vm_heartbeat",
    params(("vmId" = String, Path)),
    responses((status = 200, description = "The VM, its heartbeat recorded", body = VmView))
)]
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

#[utoipa::path(
    get,
    path = "/api/vms/statistics/summary",
    tag = "vms",
    operation_id = "vm_statistics_summary",
    responses((status = 200, description = "Every VM counted by status and type", body = VmSummaryView))
)]
async fn summary(call: Call) -> Response {
    let result = async {
        call.principal()?.require_service()?;
        let inventory = Inventory::take(&call.ctx.store, call.ctx.vms.ip_pool_size()).await?;
        Ok(VmSummaryView::new(&inventory))
    }
    .await;
    call.respond(StatusCode::OK, result)
}

/// The VMs counted: `GET /api/vms/statistics/summary`, and `vms` in the system stats.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmSummaryView {
    pub total: u64,
    /// VMs that hold a guest: running or being created.
    pub active: u64,
    /// Every status, counted (zero included).
    pub by_status: BTreeMap<String, u64>,
    /// Every type, counted (zero included).
    pub by_type: BTreeMap<String, u64>,
    pub ip_pool_available: u64,
}

impl VmSummaryView {
    pub fn new(inventory: &Inventory) -> VmSummaryView {
        VmSummaryView {
            total: inventory.vms_by_status_type.values().sum::<u64>(),
            active: inventory.active_vms(),
            by_status: VmStatus::ALL
                .iter()
                .map(|s| (s.as_str().to_string(), inventory.vms_with_status(*s)))
                .collect(),
            by_type: VmType::ALL
                .iter()
                .map(|t| {
                    (
                        t.as_str().to_string(),
                        VmStatus::ALL.iter().map(|s| inventory.vms(*s, *t)).sum(),
                    )
                })
                .collect(),
            ip_pool_available: inventory.ip_pool_available(),
        }
    }
}
