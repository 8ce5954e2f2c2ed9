//! How `serve` builds each service from the configuration: the VM manager's settings, the
//! credential vault, the Supabase mirror's worker, the scheduler, and the CLIs' environment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::DaemonError;
use crate::auth::{AuthService, AuthSettings, MasterKey, Vault, VaultError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::egress::health::HealthChecker;
use crate::net::egress::{EgressService, Gateway};
use crate::prompts::{PromptService, PromptSettings};
use crate::store::{Store, StoreError};
use crate::sync::rows::RowOptions;
use crate::sync::{PostgRest, SyncService, SyncSettings, SyncWorker};
use crate::tasks::{Builtins, HostProbe, Scheduler, register_builtins};
use crate::vms::{CliEnvironment, Limits, VmService, VmSettings};

pub(super) fn vm_settings(config: &Config) -> VmSettings {
    VmSettings {
        root: config.data_dir.join("vms"),
        kernel: config.golden_kernel.clone(),
        initrd: config.initrd.clone(),
        rootfs: config.golden_rootfs.clone(),
        vcpus: config.vm_vcpus,
        memory_mib: config.vm_memory_mib,
        data_disk_mib: config.vm_data_disk_mib,
        bridge: config.bridge.clone(),
        limits: Limits {
            max_running: config.max_vms,
            subnet: config.bridge_subnet,
            pool_limit: config.ip_pool_limit,
            ports: config.egress.lease_range(),
        },
        agent_timeout: Duration::from_secs(config.vm_agent_timeout_secs),
        health_interval: Duration::from_secs(config.vm_health_interval_secs),
        crash_limit: crate::vms::CrashLimit {
            max: config.vm_crash_limit,
            window: Duration::from_secs(config.vm_crash_window_minutes * 60),
        },
        log_max_bytes: config.vm_log_max_bytes,
        golden: None,
    }
}

/// The Supabase mirror's worker, when `SUPABASE_URL` is configured; without it the outbox
/// only accumulates (doctor and STATUS= say so).
pub(super) fn start_mirror(
    config: &Config,
    store: &Store,
    metrics: &Arc<Metrics>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<SyncService, DaemonError> {
    let (Some(url), Some(key)) = (&config.supabase_url, &config.supabase_service_key) else {
        tracing::warn!("SUPABASE_URL unset: changes accumulate in the local outbox");
        return Ok(SyncService::new(store.clone(), Default::default(), false));
    };
    let sink = PostgRest::new(url, key.clone()).map_err(DaemonError::Mirror)?;
    let settings = SyncSettings {
        max_attempts: config.outbox_max_attempts,
        rows: RowOptions {
            credential_ciphertexts: config.supabase_mirror_ciphertexts,
        },
        ..SyncSettings::default()
    };
    let worker = SyncWorker::new(store.clone(), Arc::new(sink), settings, metrics.clone());
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
    host: &Arc<HostProbe>,
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
    );
    register_builtins(
        &scheduler,
        Builtins {
            store: store.clone(),
            vms: vms.clone(),
            prompts: prompts.clone(),
            auth: auth.clone(),
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

pub(super) fn auth_settings(config: &Config) -> AuthSettings {
    AuthSettings {
        cli: cli_environment(config),
        session_timeout: Duration::from_secs(config.auth_session_timeout_secs),
        live_check_timeout: Duration::from_secs(60),
    }
}

pub(super) fn cli_environment(config: &Config) -> CliEnvironment {
    CliEnvironment {
        home: config.cli_home.clone(),
        path: config.cli_path.clone(),
        egress_proxy: match config.egress.upstream {
            Some(_) => Some(format!("http://{}", gateway_addr(config))),
            None => config.egress_proxy.clone(),
        },
        owner: None,
        secrets_dir: config.cli_secrets_dir.clone(),
    }
}

/// The gateway proxy listens on the bridge's own address, the guests' default gateway.
fn gateway_addr(config: &Config) -> SocketAddr {
    SocketAddr::from((config.bridge_subnet.gateway, config.egress.gateway_port))
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
        gateway_addr(config),
        upstream,
        settings.bypass.clone(),
        settings.limits,
        store.clone(),
        metrics.clone(),
    )
    .await?;
    let addr = gateway.local_addr().map_err(|source| DaemonError::Bind {
        addr: gateway_addr(config),
        source,
    })?;
    tracing::info!(%addr, bypass = %settings.bypass, strict = settings.strict, "gateway proxy listening");
    tracker.spawn(gateway.serve(cancel.clone()));
    Ok((
        EgressService::new(store.clone(), settings.clone(), Some(addr)),
        checker,
    ))
}

pub(super) fn prompt_settings(config: &Config) -> PromptSettings {
    use secrecy::ExposeSecret;
    PromptSettings {
        max_prompt_bytes: config.max_prompt_bytes,
        default_timeout: Duration::from_secs(config.prompt_timeout_secs),
        max_timeout: Duration::from_secs(config.prompt_max_timeout_secs),
        per_vm: config.prompts_per_vm,
        when_busy: config.prompt_when_busy,
        endpoint: match (&config.model_base_url, &config.model_api_key) {
            (Some(base_url), Some(key)) => Some(crate::providers::Endpoint {
                base_url: base_url.clone(),
                api_key: key.expose_secret().to_string(),
            }),
            _ => None,
        },
        cli: cli_environment(config),
        log_bounds: crate::prompts::log::LogBounds {
            max_events: 20_000,
            max_bytes: 8 << 20,
        },
        retained_runs: 256,
    }
}
