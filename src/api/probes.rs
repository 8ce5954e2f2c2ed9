//! Probes and metrics: `/health` (liveness), `/ready`, `/metrics` and `/metrics/json`. The
//! probes take no token. The metrics need the admin or service token on the main listener and
//! none on the separate metrics listener (`metrics_listen`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode, header};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Call, endpoint};
use super::error::ApiError;
use crate::inventory::Inventory;
use crate::metrics::MetricsJson;

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(health_probe, ready_probe, metrics_text, metrics_json))]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

/// A probe's answer.
#[derive(Serialize, utoipa::ToSchema)]
struct ProbeView {
    /// `ok` from `/health`, `ready` from `/ready`.
    #[schema(value_type = String)]
    status: &'static str,
}

pub fn health(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    ctx.routes.record("GET", "/health");
    ctx.routes.record("GET", "/ready");
    let health = warp::path!("health").and(warp::get()).map(health_probe);
    let ready_ctx = ctx.clone();
    let ready = warp::path!("ready")
        .and(warp::get())
        .then(move || ready_probe(ready_ctx.clone()));
    health.or(ready).unify().boxed()
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "probes",
    operation_id = "health",
    security(()),
    responses((status = 200, description = "The daemon answers", body = ProbeView))
)]
/// Liveness: the daemon answers. No token.
fn health_probe() -> Response {
    warp::Reply::into_response(warp::reply::json(&ProbeView { status: "ok" }))
}

#[utoipa::path(
    get,
    path = "/ready",
    tag = "probes",
    operation_id = "ready",
    security(()),
    responses((status = 200, description = "Start-up has finished and the store answers; 503 otherwise", body = ProbeView))
)]
/// Readiness: start-up has finished, shutdown has not begun, and the store answers. No token.
async fn ready_probe(ctx: Arc<ApiContext>) -> Response {
    if !ctx.ready.load(Ordering::Acquire) {
        return not_ready("start-up has not finished, or shutdown has begun");
    }
    match ctx.store.ping().await {
        Ok(()) => warp::Reply::into_response(warp::reply::json(&ProbeView { status: "ready" })),
        Err(e) => not_ready(&format!("store does not answer: {e}")),
    }
}

fn not_ready(reason: &str) -> Response {
    ApiError::Unavailable {
        code: "not_ready",
        message: reason.to_string(),
    }
    .into_response()
}

/// `/metrics` and `/metrics/json`. On the main listener (`needs_token`) they take the admin or
/// service token: a scrape is work, and the figures describe every user. On `metrics_listen`
/// they are open, for a Prometheus on a private network.
pub fn metrics(ctx: &Arc<ApiContext>, needs_token: bool) -> BoxedFilter<(Response,)> {
    let text = warp::path!("metrics")
        .and(gate(ctx, needs_token, "/metrics"))
        .then(metrics_text);
    let json = warp::path!("metrics" / "json")
        .and(gate(ctx, needs_token, "/metrics/json"))
        .then(metrics_json);
    text.or(json).unify().boxed()
}

/// The text exposition's content type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    operation_id = "metrics",
    responses((
        status = 200,
        description = "Every metric, in the OpenMetrics text format (admin or service token; \
            none on the separate `metrics_listen` listener)",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body = String
    ))
)]
async fn metrics_text(ctx: Result<Arc<ApiContext>, ApiError>) -> Response {
    let ctx = match ctx {
        Ok(ctx) => ctx,
        Err(e) => return e.into_response(),
    };
    match refreshed_text(&ctx).await {
        Ok(text) => warp::Reply::into_response(warp::reply::with_header(
            text,
            header::CONTENT_TYPE,
            OPENMETRICS,
        )),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/metrics/json",
    tag = "probes",
    operation_id = "metrics_json",
    responses((
        status = 200,
        description = "The same figures as `/metrics`, parsed into JSON (admin or service token; \
            none on the separate `metrics_listen` listener)",
        body = MetricsJson
    ))
)]
async fn metrics_json(ctx: Result<Arc<ApiContext>, ApiError>) -> Response {
    let ctx = match ctx {
        Ok(ctx) => ctx,
        Err(e) => return e.into_response(),
    };
    match refreshed_text(&ctx).await {
        Ok(text) => warp::Reply::into_response(warp::reply::with_status(
            warp::reply::json(&crate::metrics::parse_text(&text)),
            StatusCode::OK,
        )),
        Err(e) => e.into_response(),
    }
}

/// A GET, authorised as admin or service when `needs_token`.
fn gate(
    ctx: &Arc<ApiContext>,
    needs_token: bool,
    route: &'static str,
) -> BoxedFilter<(Result<Arc<ApiContext>, ApiError>,)> {
    if needs_token {
        endpoint(ctx.clone(), Method::GET, route)
            .map(|call: Call| {
                call.principal()
                    .and_then(|p| p.require_service())
                    .map(|()| call.ctx.clone())
            })
            .boxed()
    } else {
        ctx.routes.record("GET", route);
        let ctx = ctx.clone();
        warp::get().map(move || Ok(ctx.clone())).boxed()
    }
}

async fn refreshed_text(ctx: &ApiContext) -> Result<String, ApiError> {
    let inventory = Inventory::take(&ctx.store, ctx.vms.ip_pool_size()).await?;
    ctx.metrics.refresh(&inventory.gauges());
    ctx.metrics.ops.set_host(&ctx.host.read_for_scrape().await);
    ctx.metrics
        .ws_connections
        .set(ctx.ws_connections.load(Ordering::Relaxed) as i64);
    Ok(ctx.metrics.render_text())
}
