//! Create: the intent and reservations first, then the VM's directory and data disk, then a
//! cold boot or a restore of the golden snapshot, up to the agent's first answer.

use std::sync::Arc;
use std::time::Instant;

use super::host::{Start, Started, agent_token};
use super::ledger;
use super::{VmError, VmManager};
use crate::events::{Channel, HubEvent};
use crate::model::{Vm, VmOp, VmStatus, VmType, now_ms};
use crate::net::tap_name;

impl VmManager {
    /// Creates the user's VM: reserves its address, tap and directory with the intent, then
    /// boots it and waits for its agent. A failed create leaves a `failed` record that holds
    /// nothing but its console tail. A user in a crash loop is refused first.
    pub async fn create(self: &Arc<Self>, user_id: &str) -> Result<Vm, VmError> {
        let started = Instant::now();
        self.require_vms()?;
        let limit = self.settings.crash_limit;
        if let Some(wait) = self.crashes.refusal(user_id, started, limit) {
            return Err(VmError::CrashLoop {
                user_id: user_id.to_string(),
                max: limit.max,
                window_minutes: limit.window.as_secs() / 60,
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let (image, golden) = match &self.settings.golden {
            Some(golden) => (golden.meta.image.clone(), Some(golden.reference())),
            None => {
                // Resolving the links reads the disk: off the async workers.
                let settings = self.settings.clone();
                let image = tokio::task::spawn_blocking(move || settings.image_files())
                    .await
                    .map_err(|e| VmError::host(&id, VmOp::Create, e))?
                    .map_err(|e| VmError::host(&id, VmOp::Create, e))?;
                (Some(image), None)
            }
        };
        let vm = Vm {
            tap_device: Some(tap_name(&id)),
            id,
            user_id: user_id.to_string(),
            vm_type: VmType::Cli,
            status: VmStatus::Creating,
            ip_address: None,
            vcpus: self.settings.vcpus,
            memory_mib: self.settings.memory_mib,
            created_at_ms: now,
            updated_at_ms: now,
            last_heartbeat_ms: None,
            hibernated_at_ms: None,
            version: 1,
            mac_address: None,
            pid: None,
            agent_token: agent_token()?,
            agent: None,
            needs_readdress: false,
            error: None,
            image,
            golden,
        };
        let vm_id = vm.id.clone();
        let slot = self.slot(&vm_id);
        let mut live = slot.lock().await;
        let dir = self.dir_of(&vm_id).display().to_string();
        let limits = self.settings.limits;
        let reserved = self
            .store
            .write(move |tx| ledger::reserve_create(tx, vm, &dir, &limits))
            .await;
        let reserved = match reserved {
            Ok(reserved) => reserved,
            Err(e) => {
                drop(live);
                self.forget(&vm_id);
                return Err(e);
            }
        };
        let vm = reserved.vm;
        self.publish_reclaimed(&reserved.reclaimed);
        self.events.publish(
            &Channel::user(&vm.user_id),
            HubEvent::VmStatusChanged {
                vm_id: vm.id.clone(),
                user_id: vm.user_id.clone(),
                status: vm.status,
                previous_status: None,
            },
        );
        crate::failpoint::hit("vm.create.after_reserve");
        match self.bring_up(&vm).await {
            Ok(up) => {
                // A golden restore leaves links to the shared golden files, which the process
                // no longer needs. They go before the VM is recorded running, so no crash can
                // leave them for its later hibernations to write through.
                self.remove_dir(&self.dir_of(&vm.id).join("snapshot")).await;
                let vm = self.commit_running(&vm, &mut live, up).await?;
                crate::failpoint::hit("vm.create.after_commit");
                self.metrics
                    .vm_create_duration
                    .observe(started.elapsed().as_secs_f64());
                Ok(vm)
            }
            Err(e) => {
                self.remove_tap(vm.tap_device.as_deref()).await;
                self.mark_failed(&vm.id, &e.to_string()).await?;
                Err(e)
            }
        }
    }

    /// The host half of a create: directory and data disk, then a cold boot or a restore of
    /// the golden snapshot, up to the agent's first answer.
    async fn bring_up(&self, vm: &Vm) -> Result<Started, VmError> {
        let spec = self.spec(vm)?;
        self.prepare_dir(&spec).await?;
        match &self.settings.golden {
            Some(golden) => {
                golden
                    .stage(&spec.snapshot_dir())
                    .await
                    .map_err(|e| VmError::host(&vm.id, VmOp::Create, e))?;
                self.start(vm, &spec, Start::Golden, true).await
            }
            None => self.start(vm, &spec, Start::Boot, true).await,
        }
    }
}
