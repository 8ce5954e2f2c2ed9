//! Probes and metrics: `/health` (liveness), `/ready`, `/metrics` and `/metrics/json`. These
//! take no token; `/metrics` is served on the metrics listener, which is the main one unless
//! `--metrics-listen` names another address.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{StatusCode, header};
use warp::reply::Response;

use super::ApiContext;
use super::error::ApiError;
use crate::inventory::Inventory;

pub fn health(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
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

pub fn metrics(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    let text_ctx = ctx.clone();
    let text = warp::path!("metrics").and(warp::get()).then(move || {
        let ctx = text_ctx.clone();
        async move {
            match refreshed_text(&ctx).await {
                Ok(text) => warp::Reply::into_response(warp::reply::with_header(
                    text,
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )),
                Err(e) => e.into_response(),
            }
        }
    });
    let json_ctx = ctx.clone();
    let json = warp::path!("metrics" / "json")
        .and(warp::get())
        .then(move || {
            let ctx = json_ctx.clone();
            async move {
                match refreshed_text(&ctx).await {
                    Ok(text) => warp::Reply::into_response(warp::reply::with_status(
                        warp::reply::json(&crate::metrics::text_to_json(&text)),
                        StatusCode::OK,
                    )),
                    Err(e) => e.into_response(),
                }
            }
        });
    text.or(json).unify().boxed()
}

async fn refreshed_text(ctx: &ApiContext) -> Result<String, ApiError> {
    let inventory = Inventory::take(&ctx.store, ctx.vms.ip_pool_size()).await?;
    ctx.metrics.refresh(&inventory);
    ctx.metrics
        .ws_connections
        .set(ctx.ws_connections.load(Ordering::Relaxed) as i64);
    Ok(ctx.metrics.render_text())
}
