//! The health watch over running VMs: each process's exit (a crash marks the VM failed at once
//! and releases what it held), the agent's health on a schedule, and the sweep that fails VMs
//! whose process is gone or whose agent stopped answering. It installs every process in its
//! slot, since that is where the exit watch starts.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::failed::Failures;
use super::gauges::Gauges;
use super::host::{BringUp, agent_info};
use super::records::Records;
use super::slots::{Live, Slots};
use super::{VmError, VmFilter, VmSettings};
use crate::events::{Channel, EventHub, HubEvent};
use crate::guest::client::AgentClient;
use crate::guest::messages::HealthReport;
use crate::model::{Vm, VmStatus};
use crate::vmm::{ExitInfo, Hypervisor, VmHandle};

/// The deadline of one VM's health check, a reconnect included.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Health checks in flight at once.
const HEALTH_CONCURRENCY: usize = 32;

/// What one `fail_unhealthy` sweep did.
#[derive(Debug, Default)]
pub struct HealthSweep {
    /// VMs marked failed.
    pub failed: Vec<Vm>,
    /// VMs that could not be settled, with why.
    pub errors: Vec<String>,
}

pub(super) struct Watch {
    slots: Arc<Slots>,
    records: Arc<Records>,
    host: Arc<BringUp>,
    failures: Arc<Failures>,
    gauges: Arc<Gauges>,
    hypervisor: Arc<dyn Hypervisor>,
    events: EventHub,
    settings: Arc<VmSettings>,
}

/// The parts the watch works through.
pub(super) struct WatchDeps {
    pub slots: Arc<Slots>,
    pub records: Arc<Records>,
    pub host: Arc<BringUp>,
    pub failures: Arc<Failures>,
    pub gauges: Arc<Gauges>,
    pub hypervisor: Arc<dyn Hypervisor>,
    pub events: EventHub,
    pub settings: Arc<VmSettings>,
}

impl Watch {
    pub(super) fn new(d: WatchDeps) -> Arc<Watch> {
        Arc::new(Watch {
            slots: d.slots,
            records: d.records,
            host: d.host,
            failures: d.failures,
            gauges: d.gauges,
            hypervisor: d.hypervisor,
            events: d.events,
            settings: d.settings,
        })
    }

    /// Puts a process in the slot under a new generation and starts its exit watch.
    pub(super) fn install(
        self: &Arc<Self>,
        vm_id: &str,
        live: &mut Live,
        handle: VmHandle,
        agent: Option<Arc<AgentClient>>,
    ) {
        let exit = handle.exit_watch();
        let generation = live.install(handle, agent);
        self.watch_exit(vm_id.to_string(), generation, exit);
    }

    /// When the process of `generation` exits while still installed, the exit was not ours:
    /// the VM failed.
    fn watch_exit(
        self: &Arc<Self>,
        vm_id: String,
        generation: u64,
        exit: impl Future<Output = ExitInfo> + Send + 'static,
    ) {
        // Weak, so a dropped manager's exit watches change nothing.
        let watch = Arc::downgrade(self);
        tokio::spawn(async move {
            let info = exit.await;
            let Some(watch) = watch.upgrade() else {
                return;
            };
            watch.on_exit(&vm_id, generation, info).await;
        });
    }

    async fn on_exit(&self, vm_id: &str, generation: u64, info: ExitInfo) {
        let slot = self.slots.slot(vm_id);
        // Held until the failure is recorded, so no operation starts on a half-settled VM.
        let mut live = slot.lock().await;
        if !live.holds(generation) {
            return;
        }
        live.handle = None;
        live.agent = None;
        tracing::warn!(vm = vm_id, %info, "VM process exited unexpectedly");
        let reason = format!("the hypervisor process exited unexpectedly ({info})");
        let tap = self
            .records
            .get(vm_id)
            .await
            .ok()
            .and_then(|vm| vm.tap_device);
        self.host.remove_tap(tap.as_deref()).await;
        if let Err(e) = self.record_crash(vm_id, reason).await {
            tracing::error!(vm = vm_id, error = %e, "cannot record a VM crash");
        }
    }

    /// Polls every running VM's agent until `cancel`.
    pub(super) async fn poll_health(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Concurrent and each bounded by a deadline: a mute guest costs its own check, not
            // everyone's.
            let watch = &*self;
            futures_util::stream::iter(self.slots.all())
                .for_each_concurrent(HEALTH_CONCURRENCY, |(vm_id, slot)| async move {
                    // A VM in the middle of an operation is checked next time.
                    let agent = match slot.try_lock() {
                        Ok(live) if live.handle.is_some() => live.agent.clone(),
                        _ => return,
                    };
                    let answered = match tokio::time::timeout(
                        HEALTH_TIMEOUT,
                        watch.check(&vm_id, agent),
                    )
                    .await
                    {
                        Ok(answered) => answered,
                        Err(_) => {
                            tracing::warn!(vm = %vm_id, "health check timed out");
                            false
                        }
                    };
                    // Counted for the `vm_health` task, which fails a VM that keeps missing.
                    watch.note_health(&vm_id, answered);
                })
                .await;
        }
    }

    /// One health check of a running VM through `agent`, or a new connection when that one has
    /// gone. Whether the agent answered.
    async fn check(&self, vm_id: &str, agent: Option<Arc<AgentClient>>) -> bool {
        let agent = match agent.filter(|a| a.is_connected()) {
            Some(agent) => agent,
            None => match self.slots.agent(vm_id).await {
                Ok(agent) => agent,
                Err(e) => {
                    tracing::warn!(vm = %vm_id, error = %e, "health check: no agent");
                    return false;
                }
            },
        };
        match agent.health().await {
            Ok(health) => {
                self.record_health(vm_id, &health).await;
                true
            }
            Err(e) => {
                tracing::warn!(vm = %vm_id, error = %e, "health check failed");
                false
            }
        }
    }

    /// Counts a health check of the VM's current process: answered, or missed.
    fn note_health(&self, vm_id: &str, answered: bool) {
        // A VM in the middle of an operation is not counted either way.
        if let Ok(mut live) = self.slots.slot(vm_id).try_lock() {
            live.note_health(answered);
        }
    }

    pub(super) async fn record_health(&self, vm_id: &str, health: &HealthReport) {
        self.gauges.set(vm_id, health);
        if let Err(e) = self.records.record_agent(vm_id, agent_info(health)).await {
            tracing::warn!(vm = vm_id, error = %e, "cannot record a health check");
        }
    }

    /// Marks failed every running VM whose process has gone, or whose agent has missed
    /// `missed_limit` health checks in a row (its process is then stopped), and publishes
    /// `vm_crashed` for each. The exit watch normally sees a process end first; this catches
    /// what it cannot (a hung guest, an exit it missed).
    pub(super) async fn fail_unhealthy(&self, missed_limit: u32) -> Result<HealthSweep, VmError> {
        let mut sweep = HealthSweep::default();
        if self.settings.kernel.is_none() {
            return Ok(sweep);
        }
        let running = self
            .records
            .list(VmFilter {
                status: Some(VmStatus::Running),
                ..VmFilter::default()
            })
            .await?;
        for vm in running {
            match self.fail_if_unhealthy(&vm.id, missed_limit).await {
                Ok(Some(vm)) => sweep.failed.push(vm),
                Ok(None) => {}
                Err(e) => sweep.errors.push(format!("VM {}: {e}", vm.id)),
            }
        }
        Ok(sweep)
    }

    async fn fail_if_unhealthy(
        &self,
        vm_id: &str,
        missed_limit: u32,
    ) -> Result<Option<Vm>, VmError> {
        let slot = self.slots.slot(vm_id);
        let Ok(mut live) = slot.try_lock() else {
            return Ok(None);
        };
        let vm = self.records.get(vm_id).await?;
        if vm.status != VmStatus::Running {
            return Ok(None);
        }
        let reason = match &live.handle {
            None => "no hypervisor process runs for it".to_string(),
            Some(handle) if handle.has_exited() => "its hypervisor process has exited".into(),
            Some(_) if live.missed_health() >= missed_limit => format!(
                "its agent missed {} health checks in a row",
                live.missed_health()
            ),
            Some(_) => return Ok(None),
        };
        tracing::warn!(vm = vm_id, %reason, "marking an unhealthy VM failed");
        live.agent = None;
        if let Some(mut handle) = live.handle.take() {
            let _ = self.hypervisor.kill(&mut handle).await;
        }
        self.host.remove_tap(vm.tap_device.as_deref()).await;
        Ok(Some(self.record_crash(vm_id, reason).await?))
    }

    /// Marks the VM failed for `reason`, counts the crash against its user, and announces it.
    async fn record_crash(&self, vm_id: &str, reason: String) -> Result<Vm, VmError> {
        let vm = self.failures.mark_failed(vm_id, &reason).await?;
        self.failures.note_crash(&vm.user_id);
        self.events.publish(
            &Channel::user(&vm.user_id),
            HubEvent::VmCrashed {
                vm_id: vm.id.clone(),
                user_id: vm.user_id.clone(),
                reason,
            },
        );
        Ok(vm)
    }
}
