//! Probes and metrics: `/health` (liveness), `/ready`, `/metrics` and `/metrics/json`. The
//! probes take no token. The metrics need the admin or service token on the main listener and
//! none on the separate metrics listener (`metrics_listen`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode, header};
use warp::reply::Response;

use super::ApiContext;
use super::endpoint::{Call, endpoint};
use super::error::ApiError;
use crate::inventory::Inventory;

/// The document entries of these routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths())]
    struct Doc;
    <Doc as utoipa::OpenApi>::openapi()
}

pub fn health(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    ctx.routes.record("GET", "/health");
    ctx.routes.record("GET", "/ready");
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| warp::Reply::into_response(warp::reply::json(&json!({ "status": "ok" }))));
    let ready_ctx = ctx.clone();
    let ready = warp::path!("ready")
        .and(warp::get())
        .then(move || ready(ready_ctx.clone()));
    health.or(ready).unify().boxed()
}

async fn ready(ctx: Arc<ApiContext>) -> Response {
    if !ctx.ready.load(Ordering::Acquire) {
        return not_ready("start-up has not finished, or shutdown has begun");
    }
    match ctx.store.ping().await {
        Ok(()) => warp::Reply::into_response(warp::reply::json(&json!({ "status": "ready" }))),
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
        .then(|ctx: Result<Arc<ApiContext>, ApiError>| async move {
            let ctx = match ctx {
                Ok(ctx) => ctx,
                Err(e) => return e.into_response(),
            };
            match refreshed_text(&ctx).await {
                Ok(text) => warp::Reply::into_response(warp::reply::with_header(
                    text,
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )),
                Err(e) => e.into_response(),
            }
        });
    let json = warp::path!("metrics" / "json")
        .and(gate(ctx, needs_token, "/metrics/json"))
        .then(|ctx: Result<Arc<ApiContext>, ApiError>| async move {
            let ctx = match ctx {
                Ok(ctx) => ctx,
                Err(e) => return e.into_response(),
            };
            match refreshed_text(&ctx).await {
                Ok(text) => warp::Reply::into_response(warp::reply::with_status(
                    warp::reply::json(&crate::metrics::text_to_json(&text)),
                    StatusCode::OK,
                )),
                Err(e) => e.into_response(),
            }
        });
    text.or(json).unify().boxed()
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
