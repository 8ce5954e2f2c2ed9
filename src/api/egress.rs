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
    #[openapi(paths())]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "admin" / "proxy-ports")
        .and(endpoint(ctx.clone(), Method::GET, "/api/admin/proxy-ports"))
        .then(proxy_ports)
        .boxed()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthView {
    healthy: bool,
    checked_at: String,
    latency_ms: u64,
    external_ip: Option<String>,
    error: Option<String>,
}

#[derive(Serialize)]
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

async fn proxy_ports(call: Call) -> Response {
    let result = async {
        call.principal()?.require_admin()?;
        let report = call.ctx.egress.ports().await?;
        Ok(serde_json::json!({
            "configured": report.upstream_host.is_some(),
            "upstreamHost": report.upstream_host,
            "gateway": report.gateway.map(|a| a.to_string()),
            "strict": report.strict,
            "echoUrl": report.echo_url,
            "range": {"start": report.range.start, "end": report.range.end},
            "size": report.range.size(),
            "used": report.leases.len(),
            "free": report.free(),
            "unhealthy": report.unhealthy(),
            "ports": report.leases.into_iter().map(PortView::from).collect::<Vec<_>>(),
        }))
    }
    .await;
    call.respond(StatusCode::OK, result)
}
