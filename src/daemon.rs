//! `serve`: start-up, the main loop, and shutdown. One supervisor owns the cancellation token
//! and the task tracker; shutdown cancels, waits with a deadline, and closes the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiContext, ApiLimits, auth::Authenticator, rate_limit::RateLimiter};
use crate::config::{Config, ConfigError};
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::tokens::{TokenError, TokenSigner};
use crate::users::UserService;
use crate::vms::VmService;
use crate::watchdog::Watchdog;

/// The main loop's period when systemd arms no watchdog.
const DEFAULT_TICK: Duration = Duration::from_secs(5);
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Head room asked of systemd while the store opens (repair after a crash can be slow).
const STARTUP_EXTENSION: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the HTTP server on {0} stopped unexpectedly")]
    ServerDied(SocketAddr),
}

/// A started daemon: listeners bound, store open, requests served.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub ctx: Arc<ApiContext>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    servers: Vec<(SocketAddr, tokio::task::JoinHandle<()>)>,
    shutdown_timeout: Duration,
}

/// Opens the store and binds the listeners; does not notify systemd.
pub async fn start(config: &Config, watchdog: &Watchdog) -> Result<Running, DaemonError> {
    config.require_admin_token()?;
    create_data_dir(&config.data_dir).await?;

    watchdog.status("opening the state store");
    watchdog.extend_timeout(STARTUP_EXTENSION);
    let store = Store::open(&config.data_dir).await?;
    let signer = {
        let key = config.token_signing_key.clone();
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || TokenSigner::load(key.as_ref(), &dir))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??
    };

    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    metrics.seed_prompt_series();
    let ctx = Arc::new(ApiContext {
        users: UserService::new(store.clone()),
        vms: VmService::new(store.clone()),
        store,
        events: EventHub::new(config.ws_queue_len),
        metrics,
        auth: Authenticator::new(
            config.admin_token.as_ref(),
            config.service_token.as_ref(),
            signer,
        ),
        limiter: RateLimiter::new(config.rate_limit_per_second, config.rate_limit_burst),
        limits: ApiLimits {
            max_body_bytes: config.max_body_bytes,
            user_token_ttl_secs: config.user_token_ttl_secs,
            ws_max_connections: config.ws_max_connections,
            ws_max_subscriptions: config.ws_max_subscriptions,
        },
        ready: AtomicBool::new(false),
        started: Instant::now(),
        ws_connections: AtomicUsize::new(0),
        shutdown: cancel.clone(),
    });

    let tracker = TaskTracker::new();
    let main_listener = bind(config.listen).await?;
    let addr = local_addr(&main_listener, config.listen)?;
    // Port 0 means "any free port", so two such addresses are two listeners.
    let separate_metrics = config
        .metrics_listen
        .filter(|m| *m != config.listen || m.port() == 0);
    let mut servers = vec![(
        addr,
        spawn_server(
            &tracker,
            &cancel,
            main_listener,
            api::routes(&ctx, separate_metrics.is_none()),
        ),
    )];
    let mut metrics_addr = None;
    if let Some(wanted) = separate_metrics {
        let listener = bind(wanted).await?;
        let bound = local_addr(&listener, wanted)?;
        servers.push((
            bound,
            spawn_server(&tracker, &cancel, listener, api::metrics_routes(&ctx)),
        ));
        metrics_addr = Some(bound);
    }
    ctx.ready.store(true, Ordering::Release);
    Ok(Running {
        addr,
        metrics_addr,
        ctx,
        cancel,
        tracker,
        servers,
        shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
    })
}

/// `master-controller serve`: start, notify systemd, run the main loop until SIGTERM or SIGINT,
/// then shut down.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let watchdog = Watchdog::from_env();
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let running = start(&config, &watchdog).await?;
    let status = format!("serving on {}", running.addr);
    tracing::info!(addr = %running.addr, metrics = ?running.metrics_addr, "master-controller ready");
    watchdog.ready(&status);

    let mut tick = tokio::time::interval(watchdog.ping_interval().unwrap_or(DEFAULT_TICK));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    let outcome = loop {
        tokio::select! {
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
            _ = tick.tick() => {
                if let Some((addr, _)) = running.servers.iter().find(|(_, task)| task.is_finished()) {
                    break Err(DaemonError::ServerDied(*addr));
                }
                let store_answers = matches!(
                    tokio::time::timeout(STORE_PING_TIMEOUT, running.ctx.store.ping()).await,
                    Ok(Ok(()))
                );
                if store_answers {
                    watchdog.ping();
                    if !healthy {
                        watchdog.status(&status);
                    }
                } else {
                    tracing::error!("the state store does not answer; withholding the watchdog ping");
                    watchdog.status("degraded: the state store does not answer");
                }
                healthy = store_answers;
                running.ctx.limiter.prune();
            }
        }
    };
    watchdog.stopping("draining requests and closing the store");
    watchdog.extend_timeout(running.shutdown_timeout + Duration::from_secs(5));
    running.shutdown().await;
    outcome
}

impl Running {
    /// Stops accepting, lets in-flight requests finish within the deadline, and closes the store.
    pub async fn shutdown(self) {
        self.ctx.ready.store(false, Ordering::Release);
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("requests still open at the shutdown deadline; aborting them");
            for (_, task) in &self.servers {
                task.abort();
            }
        }
        let store = self.ctx.store.clone();
        drop(self.servers);
        drop(self.ctx);
        if !store.close(self.shutdown_timeout).await {
            tracing::warn!("store still referenced at the shutdown deadline; it closes on exit");
        }
        tracing::info!("master-controller stopped");
    }
}

async fn create_data_dir(path: &std::path::Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
    })
    .await
    .map_err(|e| StoreError::Task(e.to_string()))?
    .map_err(|source| DaemonError::DataDir {
        path: path.display().to_string(),
        source,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, wanted: SocketAddr) -> Result<SocketAddr, DaemonError> {
    listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: wanted,
        source,
    })
}

fn spawn_server(
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    listener: TcpListener,
    routes: warp::filters::BoxedFilter<(warp::reply::Response,)>,
) -> tokio::task::JoinHandle<()> {
    let shutdown = cancel.clone().cancelled_owned();
    tracker.spawn(api::serve(listener, routes, shutdown))
}
