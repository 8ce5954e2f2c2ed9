//! Who is using a VM: the last use by a person (a create, resume, prompt, login or exec), the
//! user's VM made running for a use, a command run in it, and the idle hibernation of a VM
//! nobody uses.
//!
//! Uses are kept in memory on tokio's clock. Health checks are not uses (they come from the
//! daemon itself), which is why neither `updated_at` nor `last_heartbeat` of the record can
//! serve. After a restart a VM's last use is unknown and counts as the daemon's start: each VM
//! gets a full idle period before it is hibernated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::VmError;
use super::exec::{self, ExecResult};
use super::lifecycle::Lifecycle;
use super::records::Records;
use super::slots::Slots;
use crate::model::{Vm, VmOp, VmStatus};

/// How long a caller waits for a VM that another operation is creating or saving.
const VM_SETTLE_DEADLINE: Duration = Duration::from_secs(300);

/// Each VM's last use by a person.
pub(super) struct Uses {
    since: Instant,
    /// One entry per VM used since start; removed with the VM's slot.
    last: Mutex<HashMap<String, Instant>>,
}

impl Default for Uses {
    fn default() -> Self {
        Uses {
            since: Instant::now(),
            last: Mutex::new(HashMap::new()),
        }
    }
}

impl Uses {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that a person used the VM now.
    pub(super) fn touch(&self, vm_id: &str) {
        self.lock().insert(vm_id.to_string(), Instant::now());
    }

    /// How long since the VM was last used (since the daemon started, if not since).
    pub(super) fn idle_for(&self, vm_id: &str) -> Duration {
        let last = self.lock().get(vm_id).copied().unwrap_or(self.since);
        last.elapsed()
    }

    pub(super) fn forget(&self, vm_id: &str) {
        self.lock().remove(vm_id);
    }
}

/// What `ensure_running` is doing, for callers that report progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStep {
    Resuming,
    Creating,
}

pub(super) struct Activity {
    records: Arc<Records>,
    slots: Arc<Slots>,
    uses: Arc<Uses>,
    lifecycle: Arc<Lifecycle>,
}

impl Activity {
    pub(super) fn new(
        records: Arc<Records>,
        slots: Arc<Slots>,
        uses: Arc<Uses>,
        lifecycle: Arc<Lifecycle>,
    ) -> Activity {
        Activity {
            records,
            slots,
            uses,
            lifecycle,
        }
    }

    /// The user's VM, running: resumed if hibernated, created if there is none; waits while
    /// another operation owns it.
    pub(super) async fn ensure_running(
        &self,
        user_id: &str,
        progress: impl Fn(VmStep),
    ) -> Result<Vm, VmError> {
        let deadline = tokio::time::Instant::now() + VM_SETTLE_DEADLINE;
        loop {
            let vm = match self.records.user_vm(user_id).await {
                Ok(vm) => Some(vm),
                Err(VmError::NoVm(_)) => None,
                Err(e) => return Err(e),
            };
            match vm {
                Some(vm) if vm.status == VmStatus::Running => {
                    // Looked at again under the VM's slot, so that an idle hibernation deciding
                    // at this moment either sees this use or has finished (then it resumes).
                    let slot = self.slots.slot(&vm.id);
                    let _live = slot.lock().await;
                    if self.records.get(&vm.id).await?.status == VmStatus::Running {
                        self.uses.touch(&vm.id);
                        return Ok(vm);
                    }
                }
                Some(vm) if vm.status == VmStatus::Hibernated => {
                    progress(VmStep::Resuming);
                    return self.lifecycle.resume(&vm.id).await;
                }
                Some(vm) if vm.is_live() => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(VmError::WrongStatus {
                            id: vm.id,
                            op: VmOp::Resume,
                            status: vm.status,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => {
                    progress(VmStep::Creating);
                    match self.lifecycle.create(user_id).await {
                        // A concurrent caller created it first; wait for that one.
                        Err(VmError::AlreadyHasVm { .. }) => {}
                        other => return other,
                    }
                }
            }
        }
    }

    /// Runs `argv` in the VM and collects its output, stopping it at `timeout`. It is a use at
    /// both ends, so the VM's idle period counts from the command's end.
    pub(super) async fn exec(
        &self,
        vm_id: &str,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecResult, VmError> {
        let agent = self.slots.agent(vm_id).await?;
        self.uses.touch(vm_id);
        let result = exec::run(&agent, vm_id, argv, timeout).await?;
        self.uses.touch(vm_id);
        Ok(result)
    }

    /// Hibernates the VM if it still runs, has been idle for `idle_after`, and `busy` (asked
    /// under the VM's slot) says no prompt or login is using it. A VM in the middle of an
    /// operation is left alone. `None` when it was left running.
    pub(super) async fn hibernate_if_idle(
        &self,
        vm_id: &str,
        idle_after: Duration,
        busy: impl Fn() -> bool,
    ) -> Result<Option<Vm>, VmError> {
        let slot = self.slots.slot(vm_id);
        // Callers that start using a VM take its slot to look at its status (see
        // `ensure_running`), so holding it here means no use can begin unseen.
        let Ok(mut live) = slot.try_lock() else {
            return Ok(None);
        };
        if busy() || self.uses.idle_for(vm_id) < idle_after {
            return Ok(None);
        }
        if self.records.get(vm_id).await?.status != VmStatus::Running {
            return Ok(None);
        }
        tracing::info!(
            vm = vm_id,
            idle_sec = self.uses.idle_for(vm_id).as_secs(),
            "hibernating an idle VM"
        );
        self.lifecycle
            .hibernate_locked(vm_id, &mut live)
            .await
            .map(Some)
    }
}
