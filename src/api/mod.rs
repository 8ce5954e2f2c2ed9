//! The HTTP surface on warp: REST routes, the WebSocket hub, probes and metrics. Handlers are
//! thin: parse, authorise, make one service call, map the result.

pub mod access;
mod admin;
pub mod allow;
pub mod auth;
mod conversations;
mod egress;
mod endpoint;
pub mod error;
mod exec;
mod files;
mod logins;
pub mod openapi;
mod outbox;
mod paging;
mod probes;
mod prompts;
pub mod rate_limit;
pub mod serve;
mod system_stats;
mod tasks;
mod user_vm;
mod users;
pub mod views;
mod vms;
mod ws;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::auth::AuthService;
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::prompts::PromptService;
use crate::store::Store;
use crate::sync::SyncService;
use crate::users::UserService;
use crate::vms::VmService;
use crate::workspace::WorkspaceService;

use auth::Authenticator;
use rate_limit::{AuthFailures, RateLimiter};
pub use serve::{ListenerLimits, PeerAddr};

/// The API's listeners, tokens and limits.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: std::net::SocketAddr,
    /// Where `/metrics` is served without a token; `None` means on `listen`, with one.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub admin_token: Option<secrecy::SecretString>,
    pub service_token: Option<secrecy::SecretString>,
    pub token_signing_key: Option<secrecy::SecretString>,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// Failed authentications a source address may make per minute after its burst; 0: no
    /// limit (e.g. behind a proxy that makes every client one address).
    pub auth_failures_per_minute: u32,
    pub auth_failure_burst: u32,
    /// Events a WebSocket subscriber may fall behind by before it is dropped.
    pub ws_queue_len: usize,
    pub limits: ApiLimits,
    pub listener: ListenerLimits,
}

/// Bounds the API enforces.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    pub max_body_bytes: u64,
    pub user_token_ttl_secs: u64,
    pub ws_max_connections: usize,
    pub ws_max_subscriptions: usize,
    /// How often the hub pings a WebSocket; one that has not answered by the next ping is
    /// closed.
    pub ws_ping_interval: std::time::Duration,
}

/// What the handlers reach: the services, and the shared request machinery.
pub struct ApiContext {
    pub store: Store,
    pub users: UserService,
    pub vms: VmService,
    pub prompts: Arc<PromptService>,
    pub workspace: Arc<WorkspaceService>,
    pub conversations: crate::conversations::ConversationService,
    pub oauth: Arc<AuthService>,
    pub tasks: Arc<crate::tasks::Scheduler>,
    pub host: Arc<crate::tasks::HostProbe>,
    pub sync: SyncService,
    pub egress: crate::net::egress::EgressService,
    pub events: EventHub,
    pub metrics: Arc<Metrics>,
    pub auth: Authenticator,
    pub limiter: RateLimiter,
    /// Failed authentications per source address.
    pub auth_failures: AuthFailures,
    pub limits: ApiLimits,
    /// Set once start-up has finished, cleared when shutdown begins.
    pub ready: AtomicBool,
    pub started: Instant,
    pub ws_connections: AtomicUsize,
    /// Cancelled when shutdown begins; long-lived connections end on it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The methods of every route built from this context, for `Allow` on a 405.
    pub routes: allow::RouteTable,
}

impl ApiContext {
    /// Authenticates a request from `peer` by its `Authorization` header, or by `query_token`
    /// when there is no header (WebSocket clients that cannot set headers), then applies the
    /// per-token rate limit. An address whose presented tokens failed too often gets 429 for
    /// every request carrying a token until its bucket refills.
    pub fn authorize(
        &self,
        peer: Option<PeerAddr>,
        authorization: Option<&str>,
        query_token: Option<&str>,
    ) -> Result<auth::Principal, error::ApiError> {
        let peer = peer.map(|PeerAddr(addr)| addr.ip());
        let presented = authorization.is_some() || query_token.is_some();
        if presented {
            self.auth_failures.check(peer)?;
        }
        let principal = match (authorization, query_token) {
            (None, Some(token)) => self.auth.from_token(token),
            _ => self.auth.from_header(authorization),
        };
        if presented && matches!(principal, Err(error::ApiError::Unauthorized(_))) {
            self.auth_failures.record(peer);
        }
        let principal = principal?;
        self.limiter.check(&principal)?;
        Ok(principal)
    }
}

/// The main listener's routes. `/metrics` is included when `with_metrics` (no separate
/// metrics listener), behind the admin or service token.
pub fn routes(ctx: &Arc<ApiContext>, with_metrics: bool) -> BoxedFilter<(Response,)> {
    let api = user_vm::routes(ctx)
        .or(prompts::routes(ctx))
        .unify()
        .or(files::routes(ctx))
        .unify()
        .or(exec::routes(ctx))
        .unify()
        .or(conversations::routes(ctx))
        .unify()
        .or(logins::routes(ctx))
        .unify()
        .or(outbox::routes(ctx))
        .unify()
        .or(egress::routes(ctx))
        .unify()
        .or(users::routes(ctx))
        .unify()
        .or(vms::routes(ctx))
        .unify()
        .or(admin::routes(ctx))
        .unify()
        .or(system_stats::routes(ctx))
        .unify()
        .or(openapi::routes(ctx))
        .unify()
        .or(probes::health(ctx))
        .unify()
        .or(ws::routes(ctx))
        .unify()
        .boxed();
    let api = if with_metrics {
        api.or(probes::metrics(ctx, true)).unify().boxed()
    } else {
        api
    };
    with_recovery(ctx, api)
}

/// The separate metrics listener's routes: probes and metrics, no token.
pub fn metrics_routes(ctx: &Arc<ApiContext>) -> BoxedFilter<(Response,)> {
    with_recovery(
        ctx,
        probes::health(ctx)
            .or(probes::metrics(ctx, false))
            .unify()
            .boxed(),
    )
}

/// Turns warp's rejections into our error body. The request's path is taken first, so a 405
/// can name the methods its path takes in `Allow`.
fn with_recovery(
    ctx: &Arc<ApiContext>,
    routes: BoxedFilter<(Response,)>,
) -> BoxedFilter<(Response,)> {
    let ctx = ctx.clone();
    let caught = routes
        .map(Ok::<Response, warp::Rejection>)
        .or_else(|rejection| async move { Ok::<_, Infallible>((Err(rejection),)) });
    warp::path::full()
        .and(caught)
        .map(
            move |path: warp::path::FullPath, result: Result<Response, warp::Rejection>| {
                let rejection = match result {
                    Ok(response) => return response,
                    Err(rejection) => rejection,
                };
                let mut response = error::from_rejection(&rejection).into_response();
                if response.status() == warp::http::StatusCode::METHOD_NOT_ALLOWED {
                    let allowed = ctx.routes.allowed(path.as_str()).join(", ");
                    if let Ok(value) = warp::http::HeaderValue::from_str(&allowed) {
                        response
                            .headers_mut()
                            .insert(warp::http::header::ALLOW, value);
                    }
                }
                ctx.metrics.observe_http(
                    "ANY",
                    "unmatched",
                    response.status().as_u16(),
                    Default::default(),
                );
                response
            },
        )
        .boxed()
}
