//! Who is using a VM, for the background jobs: the last use by a person (a create, resume,
//! prompt, login or exec), idle hibernation, and failing VMs whose process or agent is gone.
//!
//! Uses are kept in memory on tokio's clock. Health checks are not uses (they come from the
//! daemon itself), which is why neither `updated_at` nor `last_heartbeat` of the record can
//! serve. After a restart a VM's last use is unknown and counts as the daemon's start: each VM
//! gets a full idle period before it is hibernated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{VmError, VmFilter, VmManager};
use crate::events::{Channel, HubEvent};
use crate::model::{Vm, VmStatus};

pub(super) struct Activity {
    since: Instant,
    /// One entry per VM used since start; removed with the VM's slot.
    last: Mutex<HashMap<String, Instant>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            since: Instant::now(),
            last: Mutex::new(HashMap::new()),
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn forget(&self, vm_id: &str) {
        self.lock().remove(vm_id);
    }
}

/// What one `fail_unhealthy` sweep did.
#[derive(Debug, Default)]
pub struct HealthSweep {
    /// VMs marked failed.
    pub failed: Vec<Vm>,
    /// VMs that could not be settled, with why.
    pub errors: Vec<String>,
}

impl VmManager {
    /// Records that a person used the VM now.
    pub fn touch(&self, vm_id: &str) {
        self.activity
            .lock()
            .insert(vm_id.to_string(), Instant::now());
    }

    /// How long since the VM was last used (since the daemon started, if not since).
    pub fn idle_for(&self, vm_id: &str) -> Duration {
        let last = self
            .activity
            .lock()
            .get(vm_id)
            .copied()
            .unwrap_or(self.activity.since);
        last.elapsed()
    }

    /// Hibernates the VM if it still runs, has been idle for `idle_after`, and `busy` (asked
    /// under the VM's slot) says no prompt or login is using it. A VM in the middle of an
    /// operation is left alone. `None` when it was left running.
    pub async fn hibernate_if_idle(
        self: &Arc<Self>,
        vm_id: &str,
        idle_after: Duration,
        busy: impl Fn() -> bool,
    ) -> Result<Option<Vm>, VmError> {
        let slot = self.slot(vm_id);
        // Callers that start using a VM take its slot to look at its status (see
        // `ensure_running`), so holding it here means no use can begin unseen.
        let Ok(mut live) = slot.try_lock() else {
            return Ok(None);
        };
        if busy() || self.idle_for(vm_id) < idle_after {
            return Ok(None);
        }
        if self.get(vm_id).await?.status != VmStatus::Running {
            return Ok(None);
        }
        tracing::info!(
            vm = vm_id,
            idle_sec = self.idle_for(vm_id).as_secs(),
            "hibernating an idle VM"
        );
        self.hibernate_locked(vm_id, &mut live).await.map(Some)
    }

    /// Counts a health check of the VM's current process: answered, or missed.
    pub(super) fn note_health(&self, vm_id: &str, answered: bool) {
        // A VM in the middle of an operation is not counted either way.
        if let Ok(mut live) = self.slot(vm_id).try_lock()
            && live.handle.is_some()
        {
            live.missed_health = if answered {
                0
            } else {
                live.missed_health.saturating_add(1)
            };
        }
    }

    /// Marks failed every running VM whose process has gone, or whose agent has missed
    /// `missed_limit` health checks in a row (its process is then stopped), and publishes
    /// `vm_crashed` for each. The exit watch normally sees a process end first; this catches
    /// what it cannot (a hung guest, an exit it missed).
    pub async fn fail_unhealthy(
        self: &Arc<Self>,
        missed_limit: u32,
    ) -> Result<HealthSweep, VmError> {
        let mut sweep = HealthSweep::default();
        if self.settings.kernel.is_none() {
            return Ok(sweep);
        }
        let running = self
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
        self: &Arc<Self>,
        vm_id: &str,
        missed_limit: u32,
    ) -> Result<Option<Vm>, VmError> {
        let slot = self.slot(vm_id);
        let Ok(mut live) = slot.try_lock() else {
            return Ok(None);
        };
        let vm = self.get(vm_id).await?;
        if vm.status != VmStatus::Running {
            return Ok(None);
        }
        let reason = match &live.handle {
            None => "no hypervisor process runs for it".to_string(),
            Some(handle) if handle.has_exited() => "its hypervisor process has exited".into(),
            Some(_) if live.missed_health >= missed_limit => format!(
                "its agent missed {} health checks in a row",
                live.missed_health
            ),
            Some(_) => return Ok(None),
        };
        tracing::warn!(vm = vm_id, %reason, "marking an unhealthy VM failed");
        live.agent = None;
        if let Some(mut handle) = live.handle.take() {
            let _ = self.host.hypervisor.kill(&mut handle).await;
        }
        self.remove_tap(vm.tap_device.as_deref()).await;
        let vm = self.mark_failed(vm_id, &reason).await?;
        self.note_crash(&vm.user_id);
        self.events.publish(
            &Channel::user(&vm.user_id),
            HubEvent::VmCrashed {
                vm_id: vm.id.clone(),
                user_id: vm.user_id.clone(),
                reason,
            },
        );
        Ok(Some(vm))
    }
}
