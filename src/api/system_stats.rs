//! `GET /api/admin/system/stats`: the appliance in figures (admin token only).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Call, endpoint};
use super::vms::VmSummaryView;
use crate::inventory::Inventory;
use crate::tasks::{HostStats, TasksSummary};

/// The document entry of this route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(system_stats))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "admin" / "system" / "stats")
        .and(endpoint(
            ctx.clone(),
            Method::GET,
            "/api/admin/system/stats",
        ))
        .then(system_stats)
        .boxed()
}

/// The answer to `GET /api/admin/system/stats`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SystemStatsView {
    /// The daemon's version.
    version: String,
    uptime_sec: u64,
    users: UsersStats,
    vms: VmSummaryView,
    prompts: PromptsStats,
    host: HostStats,
    ip_pool: IpPoolStats,
    decodo_ports_used: u64,
    tasks: TasksSummary,
    /// The Supabase mirror's figures.
    outbox: OutboxStats,
    websocket: WebsocketStats,
    store: StoreStats,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct UsersStats {
    total: u64,
    /// The statuses users have, counted (absent statuses are left out).
    by_status: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct PromptsStats {
    /// `provider:status` → how many prompts.
    by_provider_status: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct IpPoolStats {
    size: u64,
    leased: u64,
    available: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct OutboxStats {
    /// Whether a Supabase mirror is configured.
    configured: bool,
    /// Changes waiting to be sent.
    depth: u64,
    /// How long the oldest pending change has waited; `null` when none is.
    oldest_age_ms: Option<i64>,
    dead_letters: u64,
    /// Send outcome → how many sends.
    sends: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct WebsocketStats {
    connections: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct StoreStats {
    /// The store file's size; 0 when it cannot be read.
    size_bytes: u64,
}

#[utoipa::path(
    get,
    path = "/api/admin/system/stats",
    tag = "admin",
    operation_id = "system_stats",
    responses((status = 200, description = "The appliance in figures", body = SystemStatsView))
)]
async fn system_stats(call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let ctx = &call.ctx;
        let inventory = Inventory::take(&ctx.store, ctx.vms.ip_pool_size()).await?;
        let outbox_sends: BTreeMap<String, u64> = crate::metrics::OUTBOX_SEND_OUTCOMES
            .into_iter()
            .map(|outcome| {
                let labels = crate::metrics::OutboxSendLabels {
                    outcome: outcome.to_string(),
                };
                (
                    outcome.to_string(),
                    ctx.metrics.outbox_sends.get_or_create(&labels).get(),
                )
            })
            .collect();
        let users_by_status: BTreeMap<String, u64> = inventory
            .users_by_status
            .iter()
            .map(|(s, n)| (s.as_str().to_string(), *n))
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
        Ok(SystemStatsView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_sec: ctx.started.elapsed().as_secs(),
            users: UsersStats {
                total: inventory.total_users(),
                by_status: users_by_status,
            },
            vms: VmSummaryView::new(&inventory),
            prompts: PromptsStats {
                by_provider_status: prompts_by_status,
            },
            host,
            ip_pool: IpPoolStats {
                size: inventory.ip_pool_size,
                leased: inventory.ip_leases,
                available: inventory.ip_pool_available(),
            },
            decodo_ports_used: inventory.port_leases,
            tasks,
            outbox: OutboxStats {
                configured: ctx.sync.is_configured(),
                depth: inventory.outbox_depth,
                oldest_age_ms: inventory.outbox_oldest_age_ms,
                dead_letters: inventory.dead_letters,
                sends: outbox_sends,
            },
            websocket: WebsocketStats {
                connections: ctx.ws_connections.load(Ordering::Relaxed),
            },
            store: StoreStats {
                size_bytes: store_bytes,
            },
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}
