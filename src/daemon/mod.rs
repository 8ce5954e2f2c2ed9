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

use crate::api::rate_limit::{AuthFailures, RateLimiter};
use crate::api::{self, ApiContext, ListenerLimits, auth::Authenticator};
use crate::auth::{AuthError, AuthService, VaultError};
use crate::config::{Config, ConfigError};
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::net::{NetError, Netlink, RtNetlink};
use crate::prompts::{PromptDeps, PromptError, PromptService};
use crate::store::{Store, StoreError};
use crate::sync::SinkError;
use crate::tokens::{TokenError, TokenSigner};
use crate::users::{TokenEpochs, UserService};
use crate::vms::golden::{self, Golden, GoldenError, GoldenMeta};
use crate::vms::{VmError, VmHost, VmManager, VmSettings};
use crate::watchdog::Watchdog;
use crate::workspace::WorkspaceService;

mod derived;
pub mod hypervisor;
mod services;

use services::{open_vault, start_egress, start_mirror, start_tasks};

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
    #[error("guest network: {0}")]
    Network(#[from] NetError),
    #[error("reconcile: {0}")]
    Reconcile(#[from] VmError),
    #[error(transparent)]
    Golden(#[from] GoldenError),
    #[error("prompts: {0}")]
    Prompts(#[from] PromptError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("the Supabase client cannot start: {0}")]
    Mirror(SinkError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("background tasks: {0}")]
    Tasks(#[from] crate::tasks::TaskError),
    #[error("egress: {0}")]
    Egress(#[from] crate::net::egress::EgressError),
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

/// Opens the store, reconciles the VMs, and binds the listeners; does not notify systemd.
pub async fn start(config: &Config, watchdog: &Watchdog) -> Result<Running, DaemonError> {
    start_with(config, watchdog, None).await
}

/// [`start`] with the VM host given (tests drive the manager with a fake hypervisor).
pub async fn start_with(
    config: &Config,
    watchdog: &Watchdog,
    host: Option<VmHost>,
) -> Result<Running, DaemonError> {
    config.require_admin_token()?;
    create_data_dir(&config.data_dir).await?;

    watchdog.status("opening the state store");
    watchdog.extend_timeout(STARTUP_EXTENSION);
    let store = Store::open(&config.data_dir).await?;
    let signer = {
        let key = config.api.token_signing_key.clone();
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || TokenSigner::load(key.as_ref(), &dir))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??
    };

    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    metrics.seed_prompt_series();
    let events = EventHub::new(config.api.ws_queue_len);
    let mut settings = config.vms.clone();
    let host = match host {
        Some(host) => host,
        None => real_host(config, &settings).await?,
    };
    if let Some(snapshot) = &config.golden_snapshot {
        let golden = Golden::load(
            snapshot,
            config.golden_memory.as_deref(),
            host.hypervisor.name(),
            &settings,
        )?;
        tracing::info!(snapshot = %snapshot.display(), "creates restore from the golden snapshot");
        settings.golden = Some(golden);
    }
    let vms = VmManager::new(
        store.clone(),
        host,
        events.clone(),
        metrics.clone(),
        settings,
    );
    let tracker = TaskTracker::new();
    // Before reconcile: a reservation checks `max_vms` against the record counters.
    derived::prepare(&store).await?;
    if vms.settings().kernel.is_some() {
        watchdog.status("reconciling VMs");
        let report = vms.reconcile(&|line| watchdog.status(line)).await?;
        tracing::info!(?report, "reconciled VMs");
        tracker.spawn(vms.clone().poll_health(cancel.clone()));
        tracker.spawn(vms.clone().cap_logs(cancel.clone()));
    }
    let settled = crate::prompts::settle_interrupted(&store).await?;
    if settled > 0 {
        tracing::warn!(
            settled,
            "prompts left running by the last daemon are marked failed"
        );
    }
    watchdog.status("opening the credential vault");
    let vault = open_vault(config, &store).await?;
    let auth = AuthService::new(
        store.clone(),
        vms.clone(),
        events.clone(),
        metrics.clone(),
        config.auth.clone(),
        vault,
        tracker.clone(),
    );
    let settled = auth.settle_interrupted().await?;
    if settled > 0 {
        tracing::warn!(
            settled,
            "logins left running by the last daemon are marked failed"
        );
    }
    let conversations = crate::conversations::ConversationService::new(store.clone());
    let prompts = PromptService::new(
        PromptDeps {
            store: store.clone(),
            vms: vms.clone(),
            events: events.clone(),
            metrics: metrics.clone(),
            auth: auth.clone(),
            conversations: conversations.clone(),
        },
        config.prompts.clone(),
        tracker.clone(),
    );
    let workspace = Arc::new(WorkspaceService::new(vms.clone(), config.workspace.clone()));
    let host = crate::tasks::HostProbe::new(config.data_dir.clone());
    let guests_configured = vms.settings().kernel.is_some();
    let (egress, proxy_health) = start_egress(
        config,
        &store,
        &metrics,
        guests_configured,
        &tracker,
        &cancel,
    )
    .await?;
    let tasks = start_tasks(
        config,
        &store,
        &vms,
        &prompts,
        &auth,
        &workspace,
        &host,
        &metrics,
        proxy_health,
        &tracker,
        &cancel,
    )?;
    let sync = start_mirror(config, &store, &metrics, &tracker, &cancel)?;
    let epochs = Arc::new(TokenEpochs::load(&store).await?);
    let ctx = Arc::new(ApiContext {
        users: UserService::with_token_epochs(store.clone(), epochs.clone()),
        vms,
        prompts,
        conversations,
        workspace,
        tasks,
        host,
        oauth: auth,
        sync,
        egress,
        store,
        events,
        metrics,
        auth: Authenticator::new(
            config.api.admin_token.as_ref(),
            config.api.service_token.as_ref(),
            signer,
            epochs,
        ),
        limiter: RateLimiter::new(
            config.api.rate_limit_per_second,
            config.api.rate_limit_burst,
        ),
        auth_failures: AuthFailures::new(
            config.api.auth_failures_per_minute,
            config.api.auth_failure_burst,
        ),
        limits: config.api.limits.clone(),
        ready: AtomicBool::new(false),
        started: Instant::now(),
        ws_connections: AtomicUsize::new(0),
        shutdown: cancel.clone(),
        routes: Default::default(),
    });

    let main_listener = bind(config.api.listen).await?;
    let addr = local_addr(&main_listener, config.api.listen)?;
    let listener_limits = config.api.listener;
    // Port 0 means "any free port", so two such addresses are two listeners.
    let separate_metrics = config
        .api
        .metrics_listen
        .filter(|m| *m != config.api.listen || m.port() == 0);
    let mut servers = vec![(
        addr,
        spawn_server(
            &tracker,
            &cancel,
            main_listener,
            api::routes(&ctx, separate_metrics.is_none()),
            listener_limits,
        ),
    )];
    let mut metrics_addr = None;
    if let Some(wanted) = separate_metrics {
        let listener = bind(wanted).await?;
        let bound = local_addr(&listener, wanted)?;
        servers.push((
            bound,
            spawn_server(
                &tracker,
                &cancel,
                listener,
                api::metrics_routes(&ctx),
                listener_limits,
            ),
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
    let status = if running.ctx.sync.is_configured() {
        format!("serving on {}", running.addr)
    } else {
        format!(
            "serving on {}; SUPABASE_URL unset, changes accumulate in the outbox",
            running.addr
        )
    };
    tracing::info!(addr = %running.addr, metrics = ?running.metrics_addr, "master-controller ready");
    watchdog.ready(&status);

    running.ctx.metrics.ops.watchdog_interval.set(
        watchdog
            .ping_interval()
            .map_or(0.0, |interval| interval.as_secs_f64()),
    );
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
                    running.ctx.metrics.ops.main_loop_ok();
                    if !healthy {
                        watchdog.status(&status);
                    }
                } else {
                    tracing::error!("the state store does not answer; withholding the watchdog ping");
                    watchdog.status("degraded: the state store does not answer");
                }
                healthy = store_answers;
                running.ctx.limiter.prune();
                running.ctx.auth_failures.prune();
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
        self.ctx.oauth.cancel_all();
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

/// `master-controller golden-snapshot`: boots one VM as configured and saves it where
/// `GOLDEN_SNAPSHOT` (and `GOLDEN_MEMORY`) point.
pub async fn build_golden(config: &Config) -> Result<GoldenMeta, DaemonError> {
    let snapshot = config.golden_snapshot.clone().ok_or_else(|| {
        GoldenError::Config("set GOLDEN_SNAPSHOT to where the snapshot is to be written".into())
    })?;
    let settings = config.vms.clone();
    if settings.kernel.is_none() {
        return Err(GoldenError::Config("set GOLDEN_KERNEL to the guest kernel".into()).into());
    }
    create_data_dir(&config.data_dir).await?;
    let host = real_host(config, &settings).await?;
    let progress = |line: &str| println!("golden-snapshot: {line}");
    Ok(golden::build(
        &settings,
        &host,
        &snapshot,
        config.golden_memory.as_deref(),
        &progress,
    )
    .await?)
}

/// The host's hypervisor and links. With VMs configured, the bridge is ensured here.
async fn real_host(config: &Config, settings: &VmSettings) -> Result<VmHost, DaemonError> {
    let netlink = RtNetlink::connect()?;
    let probe = match (&settings.kernel, &settings.initrd) {
        (Some(kernel), Some(initrd)) => Some(crate::vmm::VmSpec {
            vm_id: "accel-probe".into(),
            dir: config.data_dir.join("accel-probe"),
            vcpus: 1,
            memory_mib: 256,
            kernel: kernel.clone(),
            initrd: Some(initrd.clone()),
            boot_args: String::new(),
            disks: Vec::new(),
            net: None,
            agent_token: "accelprobe".into(),
        }),
        _ => None,
    };
    if settings.kernel.is_some() {
        let subnet = settings.limits.subnet;
        netlink
            .ensure_bridge(
                &settings.bridge,
                crate::net::BRIDGE_MAC,
                subnet.gateway,
                subnet.prefix,
            )
            .await?;
    }
    let hypervisor = if settings.kernel.is_some() {
        hypervisor::hypervisor(&config.hypervisor, probe).await
    } else {
        hypervisor::hypervisor(&config.hypervisor, None).await
    };
    Ok(VmHost {
        hypervisor,
        netlink: Arc::new(netlink),
    })
}

async fn create_data_dir(path: &std::path::Path) -> Result<(), DaemonError> {
    crate::vms::create_private_dir(path)
        .await
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
    limits: ListenerLimits,
) -> tokio::task::JoinHandle<()> {
    let shutdown = cancel.clone().cancelled_owned();
    tracker.spawn(api::serve::serve(listener, routes, limits, shutdown))
}
