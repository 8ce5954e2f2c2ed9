//! Watching running VMs: each process's exit (a crash marks the VM failed at once and releases
//! what it held), and the agent's health on a schedule.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::VmManager;
use super::host::agent_info;
use crate::events::{Channel, HubEvent};
use crate::metrics::ResourceLabels;
use crate::model::tables;
use crate::model::{VmStatus, now_ms};
use crate::store;
use crate::vmm::ExitInfo;

const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// The `resource` labels of `polydev_vm_resource_usage`.
const USAGE_RESOURCES: [&str; 4] = [
    "memory_used_bytes",
    "memory_total_bytes",
    "disk_used_bytes",
    "load1",
];

impl VmManager {
    /// When the process of `generation` exits while still installed, the exit was not ours:
    /// the VM failed.
    pub(super) fn watch_exit(
        self: &Arc<Self>,
        vm_id: String,
        generation: u64,
        exit: impl Future<Output = ExitInfo> + Send + 'static,
    ) {
        let manager = Arc::downgrade(self);
        tokio::spawn(async move {
            let info = exit.await;
            let Some(manager) = manager.upgrade() else {
                return;
            };
            manager.on_exit(&vm_id, generation, info).await;
        });
    }

    async fn on_exit(&self, vm_id: &str, generation: u64, info: ExitInfo) {
        let slot = self.slot(vm_id);
        // Held until the failure is recorded, so no operation starts on a half-settled VM.
        let mut live = slot.lock().await;
        if live.generation != generation || live.handle.is_none() {
            return;
        }
        live.handle = None;
        live.agent = None;
        tracing::warn!(vm = vm_id, %info, "VM process exited unexpectedly");
        let reason = format!("the hypervisor process exited unexpectedly ({info})");
        let tap = self.get(vm_id).await.ok().and_then(|vm| vm.tap_device);
        self.remove_tap(tap.as_deref()).await;
        match self.mark_failed(vm_id, &reason).await {
            Ok(vm) => {
                self.note_crash(&vm.user_id);
                self.events.publish(
                    &Channel::user(&vm.user_id),
                    HubEvent::VmCrashed {
                        vm_id: vm.id.clone(),
                        user_id: vm.user_id.clone(),
                        reason,
                    },
                );
            }
            Err(e) => tracing::error!(vm = vm_id, error = %e, "cannot record a VM crash"),
        }
    }

    /// Polls every running VM's agent until `cancel`.
    pub async fn poll_health(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (vm_id, slot) in self.slots() {
                // A VM in the middle of an operation is checked next time.
                let agent = match slot.try_lock() {
                    Ok(live) if live.handle.is_some() => live.agent.clone(),
                    _ => continue,
                };
                let agent = match agent.filter(|a| a.is_connected()) {
                    Some(agent) => agent,
                    None => match self.agent(&vm_id).await {
                        Ok(agent) => agent,
                        Err(e) => {
                            tracing::warn!(vm = %vm_id, error = %e, "health check: no agent");
                            self.note_health(&vm_id, false);
                            continue;
                        }
                    },
                };
                let answered = match tokio::time::timeout(HEALTH_TIMEOUT, agent.health()).await {
                    Ok(Ok(health)) => {
                        self.record_health(&vm_id, &health).await;
                        true
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(vm = %vm_id, error = %e, "health check failed");
                        false
                    }
                    Err(_) => {
                        tracing::warn!(vm = %vm_id, "health check timed out");
                        false
                    }
                };
                // Counted for the `vm_health` task, which fails a VM that keeps missing.
                self.note_health(&vm_id, answered);
            }
        }
    }

    /// Drops a VM's resource series once it no longer runs.
    pub(super) fn forget_usage(&self, vm_id: &str) {
        for resource in USAGE_RESOURCES {
            self.metrics.vm_resource_usage.remove(&ResourceLabels {
                vm_id: vm_id.to_string(),
                resource: resource.to_string(),
            });
        }
    }

    pub(super) async fn record_health(
        &self,
        vm_id: &str,
        health: &crate::guest::messages::HealthReport,
    ) {
        let usage = [
            (
                "memory_used_bytes",
                health
                    .mem_total_kib
                    .saturating_sub(health.mem_available_kib) as f64
                    * 1024.0,
            ),
            ("memory_total_bytes", health.mem_total_kib as f64 * 1024.0),
            (
                "disk_used_bytes",
                health
                    .disk_total_bytes
                    .saturating_sub(health.disk_free_bytes) as f64,
            ),
            ("load1", health.load[0]),
        ];
        for (resource, value) in usage {
            self.metrics
                .vm_resource_usage
                .get_or_create(&ResourceLabels {
                    vm_id: vm_id.to_string(),
                    resource: resource.to_string(),
                })
                .set(value);
        }
        let id = vm_id.to_string();
        let info = agent_info(health);
        let written = self
            .store
            .write(move |tx| {
                let mut vms = tx.open_table(tables::VMS)?;
                if let Some(mut vm) = store::get::<crate::model::Vm, _>(&vms, &id)?
                    && vm.status == VmStatus::Running
                {
                    vm.agent = Some(info);
                    vm.last_heartbeat_ms = Some(now_ms());
                    vm.touch();
                    store::put(&mut vms, &id, &vm)?;
                    crate::sync::outbox::record_change(tx, &id, &vm)?;
                }
                Ok::<_, super::VmError>(())
            })
            .await;
        if let Err(e) = written {
            tracing::warn!(vm = vm_id, error = %e, "cannot record a health check");
        }
    }
}
