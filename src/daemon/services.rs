//! How `serve` starts the services that need more than their settings: the credential vault,
//! the Supabase mirror's worker, the scheduler, and the egress gateway.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::DaemonError;
use crate::auth::{AuthService, MasterKey, Vault, VaultError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::egress::health::HealthChecker;
use crate::net::egress::{EgressService, Gateway};
use crate::prompts::PromptService;
use crate::store::{Store, StoreError};
use crate::sync::{PostgRest, SyncService, SyncWorker};
use crate::tasks::{Builtins, HostProbe, Scheduler, register_builtins};
use crate::vms::VmService;
use crate::workspace::WorkspaceService;

/// The Supabase mirror's worker, when `SUPABASE_URL` is configured; without it the outbox
/// only accumulates (doctor and STATUS= say so).
pub(super) fn start_mirror(
    config: &Config,
    store: &Store,
    metrics: &Arc<Metrics>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<SyncService, DaemonError> {
    let (Some(url), Some(key)) = (&config.mirror.url, &config.mirror.service_key) else {
        tracing::warn!("SUPABASE_URL unset: changes accumulate in the local outbox");
        return Ok(SyncService::new(store.clone(), Default::default(), false));
    };
    let sink = PostgRest::new(url, key.clone()).map_err(DaemonError::Mirror)?;
    let worker = SyncWorker::new(
        store.clone(),
        Arc::new(sink),
        config.mirror.worker,
        metrics.clone(),
    );
    let service = SyncService::new(store.clone(), worker.waker(), true);
    tracker.spawn(worker.run(cancel.clone()));
    Ok(service)
}

/// The vault, when a master key is configured. A malformed key, or one that does not match the
/// vault's stored key, stops the start: running on would lock every credential out.
pub(super) async fn open_vault(
    config: &Config,
    store: &Store,
) -> Result<Option<Vault>, DaemonError> {
    let Some(text) = &config.encryption_master_key else {
        tracing::warn!(
            "no ENCRYPTION_MASTER_KEY: logins and stored credentials are disabled (see doctor)"
        );
        return Ok(None);
    };
    use secrecy::ExposeSecret;
    let master = MasterKey::parse(text.expose_secret())?;
    let store = store.clone();
    let vault = tokio::task::spawn_blocking(move || {
        let vault = Vault::open(&store, &master)?;
        let foreign = vault.foreign_records(&store)?;
        Ok::<_, VaultError>((vault, foreign))
    })
    .await
    .map_err(|e| StoreError::Task(e.to_string()))??;
    if vault.1 > 0 {
        tracing::warn!(
            records = vault.1,
            "credentials are sealed under another master key; finish `master-controller vault rotate-key`"
        );
    }
    Ok(Some(vault.0))
}

/// The background scheduler with the built-in jobs; their loops run under the daemon's token
/// and tracker (none when `MC_TASKS_ENABLED` is false).
#[allow(clippy::too_many_arguments)]
pub(super) fn start_tasks(
    config: &Config,
    store: &Store,
    vms: &VmService,
    prompts: &Arc<PromptService>,
    auth: &Arc<AuthService>,
    workspace: &Arc<WorkspaceService>,
    host: &Arc<HostProbe>,
    metrics: &Arc<Metrics>,
    proxy_health: Option<Arc<HealthChecker>>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<Arc<Scheduler>, DaemonError> {
    let scheduler = Scheduler::new(
        store.clone(),
        crate::tasks::schedule::local_zone(),
        config.tasks.enabled,
        cancel.clone(),
        tracker.clone(),
        metrics.clone(),
    );
    register_builtins(
        &scheduler,
        Builtins {
            store: store.clone(),
            vms: vms.clone(),
            prompts: prompts.clone(),
            auth: auth.clone(),
            workspace: workspace.clone(),
            host: host.clone(),
            proxy_health,
            settings: config.tasks.clone(),
        },
    )?;
    if !config.tasks.enabled {
        tracing::warn!(
            "MC_TASKS_ENABLED=false: background tasks run only when asked through the API"
        );
    }
    Ok(scheduler)
}

/// The gateway proxy, where an upstream is configured and guests run here, with the health
/// checker of the upstream ports; and the admin view of both.
pub(super) async fn start_egress(
    config: &Config,
    store: &Store,
    metrics: &Arc<Metrics>,
    guests_configured: bool,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<(EgressService, Option<Arc<HealthChecker>>), DaemonError> {
    let settings = &config.egress;
    metrics.egress.ports_total.set(
        settings
            .lease_range()
            .map_or(0, |range| i64::from(range.size())),
    );
    let Some(upstream) = settings.upstream.clone() else {
        return Ok((
            EgressService::new(store.clone(), settings.clone(), None),
            None,
        ));
    };
    let checker = HealthChecker::new(settings, store.clone(), metrics.clone()).map(Arc::new);
    if !guests_configured {
        tracing::warn!("DECODO_HOST is set but no guest kernel is: the gateway proxy does not run");
        return Ok((
            EgressService::new(store.clone(), settings.clone(), None),
            checker,
        ));
    }
    let gateway = Gateway::bind(
        config.gateway_addr(),
        upstream,
        settings.bypass.clone(),
        settings.limits,
        store.clone(),
        metrics.clone(),
    )
    .await?;
    let addr = gateway.local_addr().map_err(|source| DaemonError::Bind {
        addr: config.gateway_addr(),
        source,
    })?;
    tracing::info!(%addr, bypass = %settings.bypass, strict = settings.strict, "gateway proxy listening");
    tracker.spawn(gateway.serve(cancel.clone()));
    Ok((
        EgressService::new(store.clone(), settings.clone(), Some(addr)),
        checker,
    ))
}
