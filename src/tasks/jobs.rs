//! The built-in jobs. Each is a thin loop over one service call per item; the services own the
//! rules (what counts as idle, how a login is ended, ...).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::host::HostProbe;
use super::scheduler::{Job, Scheduler};
use super::{
    DESTROY_INACTIVE, EXPIRE_AUTH_SESSIONS, HIBERNATE_IDLE, METRICS_SAMPLE, PROXY_HEALTH,
    PRUNE_PROMPTS, Tally, TaskError, TaskSettings, VALIDATE_CREDENTIALS, VM_HEALTH, samples,
};
use crate::auth::{AuthError, AuthService};
use crate::inventory::Inventory;
use crate::model::{MetricsSample, PromptStatus, VmStatus};
use crate::net::egress::health::HealthChecker;
use crate::prompts::PromptService;
use crate::providers;
use crate::store::Store;
use crate::vms::{VmFilter, VmService};
use crate::workspace::WorkspaceService;

/// Health checks a running VM's agent may miss in a row before `vm_health` marks it failed
/// (with checks every `MC_VM_HEALTH_INTERVAL_SECS`, 30 s by default: 90 s of silence).
pub const MISSED_HEALTH_LIMIT: u32 = 3;

/// What the built-in jobs work on.
pub struct Builtins {
    pub store: Store,
    pub vms: VmService,
    pub prompts: Arc<PromptService>,
    pub auth: Arc<AuthService>,
    pub workspace: Arc<WorkspaceService>,
    pub host: Arc<HostProbe>,
    /// Checks the upstream ports; `None` where egress is not configured.
    pub proxy_health: Option<Arc<HealthChecker>>,
    pub settings: TaskSettings,
}

/// Registers the built-in jobs with their configured schedules: seven, and `proxy_health` where
/// there is an upstream.
pub fn register_builtins(scheduler: &Arc<Scheduler>, b: Builtins) -> Result<(), TaskError> {
    let s = &b.settings;
    let jobs: [(&str, _, Arc<dyn Job>); 7] = [
        (
            HIBERNATE_IDLE,
            s.hibernate_idle,
            Arc::new(HibernateIdle {
                vms: b.vms.clone(),
                prompts: b.prompts.clone(),
                auth: b.auth.clone(),
                workspace: b.workspace.clone(),
                idle_after: s.idle_hibernate_after,
            }),
        ),
        (
            DESTROY_INACTIVE,
            s.destroy_inactive,
            Arc::new(DestroyInactive {
                vms: b.vms.clone(),
                days: s.inactive_destroy_after_days,
            }),
        ),
        (
            METRICS_SAMPLE,
            s.metrics_sample,
            Arc::new(SampleMetrics {
                store: b.store.clone(),
                vms: b.vms.clone(),
                host: b.host.clone(),
                clock: scheduler.clock(),
                kept: s.metrics_samples_kept,
            }),
        ),
        (
            EXPIRE_AUTH_SESSIONS,
            s.expire_auth_sessions,
            Arc::new(ExpireAuthSessions {
                auth: b.auth.clone(),
                max_age: s.auth_session_max_age,
            }),
        ),
        (
            VALIDATE_CREDENTIALS,
            s.validate_credentials,
            Arc::new(ValidateCredentials {
                auth: b.auth.clone(),
            }),
        ),
        (
            VM_HEALTH,
            s.vm_health,
            Arc::new(VmHealth { vms: b.vms.clone() }),
        ),
        (
            PRUNE_PROMPTS,
            s.prune_prompts,
            Arc::new(PrunePrompts {
                prompts: b.prompts.clone(),
                clock: scheduler.clock(),
                retention: Duration::from_secs(u64::from(s.prompt_retention_days) * 24 * 3600),
            }),
        ),
    ];
    for (name, schedule, job) in jobs {
        scheduler.register(name, schedule, job)?;
    }
    if let Some(checker) = b.proxy_health {
        scheduler.register(
            PROXY_HEALTH,
            s.proxy_health,
            Arc::new(ProxyHealth { checker }),
        )?;
    }
    Ok(())
}

/// Hibernates running VMs nobody has used for `idle_after`: no prompt, login, exec or file
/// transfer. A VM whose user has one of these in progress is never hibernated, however long
/// it runs.
struct HibernateIdle {
    vms: VmService,
    prompts: Arc<PromptService>,
    auth: Arc<AuthService>,
    workspace: Arc<WorkspaceService>,
    idle_after: Duration,
}

#[async_trait::async_trait]
impl Job for HibernateIdle {
    async fn run(&self, cancel: &CancellationToken) -> Result<u64, TaskError> {
        let running = self.vms.list(running()).await?;
        let mut tally = Tally::default();
        for vm in running {
            if cancel.is_cancelled() {
                break;
            }
            let user = vm.user_id.as_str();
            let busy = || {
                self.prompts.has_running(user)
                    || self.auth.has_live_login(user)
                    || self.workspace.has_running(user)
            };
            match self
                .vms
                .hibernate_if_idle(&vm.id, self.idle_after, busy)
                .await
            {
                Ok(Some(_)) => tally.touched(),
                Ok(None) => tally.skipped(),
                Err(e) => tally.failed(format!("VM {}: {e}", vm.id)),
            }
        }
        tally.finish()
    }
}

fn running() -> VmFilter {
    VmFilter {
        status: Some(VmStatus::Running),
        ..VmFilter::default()
    }
}

/// Destroys VMs inactive for `days` days, each with a `vm_destroyed_inactive` event.
struct DestroyInactive {
    vms: VmService,
    days: u32,
}

#[async_trait::async_trait]
impl Job for DestroyInactive {
    async fn run(&self, _cancel: &CancellationToken) -> Result<u64, TaskError> {
        Ok(self.vms.destroy_inactive(self.days).await?.len() as u64)
    }
}

/// Adds one sample of the host and the daemon to the metrics ring.
struct SampleMetrics {
    store: Store,
    vms: VmService,
    host: Arc<HostProbe>,
    clock: super::Clock,
    kept: usize,
}

#[async_trait::async_trait]
impl Job for SampleMetrics {
    async fn run(&self, _cancel: &CancellationToken) -> Result<u64, TaskError> {
        let inventory = Inventory::take(&self.store, self.vms.ip_pool_size()).await?;
        let host = self.host.read().await;
        let prompts_running = providers::all()
            .flat_map(|p| [(p, PromptStatus::Pending), (p, PromptStatus::Streaming)])
            .filter_map(|key| inventory.prompts_by_provider_status.get(&key))
            .sum();
        let sample = MetricsSample {
            at_ms: self.clock.now_ms(),
            cpu_percent: host.cpu_percent,
            load1: host.load1,
            memory_used_bytes: host.memory_used_bytes,
            memory_total_bytes: host.memory_total_bytes,
            disk_used_bytes: host.disk_used_bytes,
            disk_total_bytes: host.disk_total_bytes,
            vms_by_status: VmStatus::ALL
                .iter()
                .map(|s| (s.to_string(), inventory.vms_with_status(*s)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            prompts_running,
            ip_pool_free: inventory.ip_pool_available(),
            outbox_depth: inventory.outbox_depth,
        };
        samples::record(&self.store, sample, self.kept).await?;
        Ok(1)
    }
}

/// Removes finished prompts older than the retention period (see `prompts::retention`).
struct PrunePrompts {
    prompts: Arc<PromptService>,
    clock: super::Clock,
    retention: Duration,
}

#[async_trait::async_trait]
impl Job for PrunePrompts {
    async fn run(&self, _cancel: &CancellationToken) -> Result<u64, TaskError> {
        let retention_ms = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = self.clock.now_ms().saturating_sub(retention_ms);
        self.prompts
            .prune_before(cutoff)
            .await
            .map(|n| n as u64)
            .map_err(|e| TaskError::Failed(e.to_string()))
    }
}

/// Ends logins older than `max_age` as `timeout` and removes their login processes.
struct ExpireAuthSessions {
    auth: Arc<AuthService>,
    max_age: Duration,
}

#[async_trait::async_trait]
impl Job for ExpireAuthSessions {
    async fn run(&self, _cancel: &CancellationToken) -> Result<u64, TaskError> {
        Ok(self.auth.expire_older_than(self.max_age).await? as u64)
    }
}

/// Judges every stored credential by its own expiry fields, with no user, login or VM: an
/// expired one is marked invalid.
struct ValidateCredentials {
    auth: Arc<AuthService>,
}

#[async_trait::async_trait]
impl Job for ValidateCredentials {
    async fn run(&self, cancel: &CancellationToken) -> Result<u64, TaskError> {
        let mut tally = Tally::default();
        for (user_id, provider) in self.auth.stored_credentials().await? {
            if cancel.is_cancelled() {
                break;
            }
            match self.auth.validate(&user_id, provider, false).await {
                Ok(_) => tally.touched(),
                // Removed since the list was read.
                Err(AuthError::NoCredential { .. }) => tally.skipped(),
                Err(e) => tally.failed(format!("{user_id} {provider}: {e}")),
            }
        }
        tally.finish()
    }
}

/// The exit watch's backstop: running VMs whose process is gone, or whose agent has stopped
/// answering health checks, are marked failed.
struct VmHealth {
    vms: VmService,
}

#[async_trait::async_trait]
impl Job for VmHealth {
    async fn run(&self, _cancel: &CancellationToken) -> Result<u64, TaskError> {
        let sweep = self.vms.fail_unhealthy(MISSED_HEALTH_LIMIT).await?;
        let mut tally = Tally::default();
        sweep.failed.iter().for_each(|_| tally.touched());
        sweep.errors.into_iter().for_each(|e| tally.failed(e));
        tally.finish()
    }
}

/// Checks every leased upstream port through the echo service; a port found unhealthy fails
/// the run, so it shows in the task list as well as in the port list and the metrics.
struct ProxyHealth {
    checker: Arc<HealthChecker>,
}

#[async_trait::async_trait]
impl Job for ProxyHealth {
    async fn run(&self, cancel: &CancellationToken) -> Result<u64, TaskError> {
        let round = self.checker.check_all(cancel).await?;
        if round.unhealthy > 0 {
            return Err(TaskError::Incomplete {
                attempted: round.checked,
                failed: round.unhealthy,
                touched: round.checked,
                first_error: format!(
                    "{} of {} upstream ports unhealthy (GET /api/admin/proxy-ports)",
                    round.unhealthy, round.checked
                ),
            });
        }
        Ok(round.checked)
    }
}
