//! `GET /api/admin/proxy-ports`: the upstream port pool, who holds each port, and what its last
//! health check found. Admin only.

use std::sync::Arc;

use serde::Serialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Call, endpoint};
use super::views::rfc3339;
use crate::model::{PortHealth, PortLease};

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(proxy_ports))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "admin" / "proxy-ports")
        .and(endpoint(ctx.clone(), Method::GET, "/api/admin/proxy-ports"))
        .then(proxy_ports)
        .boxed()
}

/// A port's last health check.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct HealthView {
    healthy: bool,
    checked_at: String,
    latency_ms: u64,
    external_ip: Option<String>,
    error: Option<String>,
}

/// A leased port.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct PortView {
    port: u16,
    user_id: String,
    leased_at: String,
    /// `None` until the first check.
    health: Option<HealthView>,
}

impl From<PortLease> for PortView {
    fn from(lease: PortLease) -> Self {
        PortView {
            port: lease.port,
            user_id: lease.user_id,
            leased_at: rfc3339(lease.leased_at_ms),
            health: lease.health.map(|h: PortHealth| HealthView {
                healthy: h.healthy,
                checked_at: rfc3339(h.checked_at_ms),
                latency_ms: h.latency_ms,
                external_ip: h.external_ip,
                error: h.error,
            }),
        }
    }
}

/// The answer to `GET /api/admin/proxy-ports`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ProxyPortsView {
    /// Whether an upstream proxy is configured.
    configured: bool,
    upstream_host: Option<String>,
    /// Where the gateway proxy listens, when it runs.
    gateway: Option<String>,
    strict: bool,
    echo_url: String,
    range: PortRangeView,
    /// How many ports the range holds.
    size: u32,
    used: usize,
    free: usize,
    /// Leased ports whose last check failed.
    unhealthy: usize,
    ports: Vec<PortView>,
}

/// The port range, both ends included.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct PortRangeView {
    start: u16,
    end: u16,
}

#[utoipa::path(
    get,
    path = "/api/admin/proxy-ports",
    tag = "egress",
    operation_id = "list_proxy_ports",
    responses((status = 200, description = "The port pool, its leases and their health", body = ProxyPortsView))
)]
async fn proxy_ports(call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let report = call.ctx.egress.ports().await?;
        Ok(ProxyPortsView {
            configured: report.upstream_host.is_some(),
            gateway: report.gateway.map(|a| a.to_string()),
            strict: report.strict,
            range: PortRangeView {
                start: report.range.start,
                end: report.range.end,
            },
            size: report.range.size(),
            used: report.leases.len(),
            free: report.free(),
            unhealthy: report.unhealthy(),
            upstream_host: report.upstream_host,
            echo_url: report.echo_url,
            ports: report.leases.into_iter().map(PortView::from).collect(),
        })
    }
    .await;
    call.respond(StatusCode::OK, result)
}
