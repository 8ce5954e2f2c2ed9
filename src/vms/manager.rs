//! The manager's operations. Each takes the VM's slot for its whole length, so operations on
//! one VM never interleave, while different VMs proceed in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::host::{
    Start, Started, agent_info, fresh_snapshot_dir, remove_marker, snapshot_marker, write_marker,
};
use super::ledger::{self, Reclaimed};
use super::{VmError, VmFilter, VmHost, VmSettings};
use crate::events::{Channel, EventHub, HubEvent};
use crate::guest::client::AgentClient;
use crate::metrics::Metrics;
use crate::model::tables;
use crate::model::{Status, Vm, VmOp, VmStatus, now_ms};
use crate::store::{self, Store};
use crate::vmm::VmHandle;

/// A VM's live parts. `generation` changes whenever the process does, so an exit watch that
/// fires late for an older process changes nothing.
#[derive(Default)]
pub(super) struct Live {
    pub handle: Option<VmHandle>,
    pub agent: Option<Arc<AgentClient>>,
    pub generation: u64,
    /// Health checks missed in a row by this process's agent.
    pub missed_health: u32,
}

pub(super) type Slot = Arc<tokio::sync::Mutex<Live>>;

pub struct VmManager {
    pub(super) store: Store,
    pub(super) host: VmHost,
    pub(super) events: EventHub,
    pub(super) metrics: Arc<Metrics>,
    pub(super) settings: VmSettings,
    slots: Mutex<HashMap<String, Slot>>,
    /// Each VM's last use by a person (see `activity`).
    pub(super) activity: super::activity::Activity,
    /// Each user's recent VM crashes (see `failed`).
    pub(super) crashes: super::failed::CrashLog,
}

impl VmManager {
    pub fn new(
        store: Store,
        host: VmHost,
        events: EventHub,
        metrics: Arc<Metrics>,
        settings: VmSettings,
    ) -> Arc<VmManager> {
        Arc::new(VmManager {
            store,
            host,
            events,
            metrics,
            settings,
            slots: Mutex::new(HashMap::new()),
            activity: super::activity::Activity::default(),
            crashes: super::failed::CrashLog::default(),
        })
    }

    pub fn settings(&self) -> &VmSettings {
        &self.settings
    }

    pub fn ip_pool_size(&self) -> u64 {
        self.settings.limits.pool_size()
    }

    pub(super) fn slot(&self, vm_id: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(vm_id.to_string()).or_default().clone()
    }

    pub(super) fn slots(&self) -> Vec<(String, Slot)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub(super) fn forget(&self, vm_id: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(vm_id);
        drop(slots);
        self.activity.forget(vm_id);
    }

    pub async fn list(&self, filter: VmFilter) -> Result<Vec<Vm>, VmError> {
        self.store
            .read(move |tx| {
                let vms = store::all(&tx.open_table(tables::VMS)?)?;
                Ok(vms.into_iter().filter(|vm| filter.matches(vm)).collect())
            })
            .await
    }

    pub async fn get(&self, id: &str) -> Result<Vm, VmError> {
        let id = id.to_string();
        self.store
            .read(move |tx| {
                store::get(&tx.open_table(tables::VMS)?, &id)?.ok_or(VmError::NotFound(id))
            })
            .await
    }

    /// The user's current VM: the live one, else the most recently created.
    pub async fn user_vm(&self, user_id: &str) -> Result<Vm, VmError> {
        let filter = VmFilter {
            user_id: Some(user_id.to_string()),
            ..VmFilter::default()
        };
        let vms = self.list(filter).await?;
        let live = vms.iter().find(|vm| vm.is_live()).cloned();
        live.or_else(|| {
            vms.into_iter()
                .filter(|vm| vm.status != VmStatus::Destroyed)
                .max_by_key(|vm| vm.created_at_ms)
        })
        .ok_or_else(|| VmError::NoVm(user_id.to_string()))
    }

    /// Records that the VM (or the web backend on its behalf) saw it alive.
    pub async fn heartbeat(&self, id: &str) -> Result<Vm, VmError> {
        let id = id.to_string();
        self.store
            .write(move |tx| {
                let mut vms = tx.open_table(tables::VMS)?;
                let mut vm: Vm =
                    store::get(&vms, &id)?.ok_or_else(|| VmError::NotFound(id.clone()))?;
                if !matches!(vm.status, VmStatus::Running | VmStatus::Creating) {
                    return Err(VmError::NotAlive {
                        id,
                        status: vm.status,
                    });
                }
                vm.last_heartbeat_ms = Some(now_ms());
                vm.touch();
                store::put(&mut vms, &vm.id, &vm)?;
                crate::sync::outbox::record_change(tx, &vm.id, &vm)?;
                Ok(vm)
            })
            .await
    }

    /// Writes a VM record as it is; tests and the benchmark use it to set up VMs.
    pub async fn insert(&self, vm: Vm) -> Result<(), VmError> {
        self.store
            .write(move |tx| {
                store::put(&mut tx.open_table(tables::VMS)?, &vm.id, &vm)?;
                crate::sync::outbox::record_change(tx, &vm.id, &vm)?;
                Ok(())
            })
            .await
    }

    pub(super) fn publish_status(&self, vm: &Vm, previous: VmStatus) {
        if vm.status == previous {
            return;
        }
        self.events.publish(
            &Channel::user(&vm.user_id),
            HubEvent::VmStatusChanged {
                vm_id: vm.id.clone(),
                user_id: vm.user_id.clone(),
                status: vm.status,
                previous_status: Some(previous),
            },
        );
    }

    pub(super) fn publish_reclaimed(&self, reclaimed: &Option<Reclaimed>) {
        if let Some(r) = reclaimed {
            tracing::info!(vm = %r.vm.id, ip = %r.ip, "reclaimed the address of a hibernated VM");
            self.events.publish(
                &Channel::user(&r.vm.user_id),
                HubEvent::VmIpReclaimed {
                    vm_id: r.vm.id.clone(),
                    ip: r.ip.clone(),
                },
            );
        }
    }

    /// Installs a started process in the slot, records the VM as running, and watches its exit.
    pub(super) async fn commit_running(
        self: &Arc<Self>,
        vm: &Vm,
        live: &mut Live,
        up: Started,
    ) -> Result<Vm, VmError> {
        let pid = up.handle.pid;
        let info = agent_info(&up.health);
        let previous = vm.status;
        let written = self
            .store
            .write({
                let id = vm.id.clone();
                move |tx| {
                    ledger::finish(tx, &id, |vm| {
                        vm.set_status(VmStatus::Running)?;
                        vm.pid = Some(pid);
                        vm.agent = Some(info);
                        vm.last_heartbeat_ms = Some(now_ms());
                        vm.needs_readdress = false;
                        vm.error = None;
                        Ok(())
                    })
                }
            })
            .await;
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                // Unrecorded, the process would run with nothing owning it; the intent stays
                // for reconcile.
                let mut handle = up.handle;
                let _ = self.host.hypervisor.kill(&mut handle).await;
                return Err(e);
            }
        };
        self.install(&written.id, live, up.handle, Some(up.agent));
        self.touch(&written.id);
        self.publish_status(&written, previous);
        Ok(written)
    }

    /// Puts a process in the slot under a new generation and starts its exit watch.
    pub(super) fn install(
        self: &Arc<Self>,
        vm_id: &str,
        live: &mut Live,
        handle: VmHandle,
        agent: Option<Arc<AgentClient>>,
    ) {
        live.generation += 1;
        live.missed_health = 0;
        let exit = handle.exit_watch();
        live.handle = Some(handle);
        live.agent = agent;
        self.watch_exit(vm_id.to_string(), live.generation, exit);
    }

    /// Refuses operations that need a guest kernel before any intent is written.
    pub(super) fn require_vms(&self) -> Result<(), VmError> {
        match self.settings.kernel {
            Some(_) => Ok(()),
            None => Err(VmError::NotConfigured(
                "no guest kernel (set GOLDEN_KERNEL)",
            )),
        }
    }

    /// Saves the VM to disk and stops its process. Its address stays leased.
    pub async fn hibernate(self: &Arc<Self>, vm_id: &str) -> Result<Vm, VmError> {
        let slot = self.slot(vm_id);
        let mut live = slot.lock().await;
        self.hibernate_locked(vm_id, &mut live).await
    }

    /// [`VmManager::hibernate`] with the VM's slot already held.
    pub(super) async fn hibernate_locked(
        self: &Arc<Self>,
        vm_id: &str,
        live: &mut Live,
    ) -> Result<Vm, VmError> {
        let started = Instant::now();
        self.require_vms()?;
        let vm = self
            .begin(vm_id, VmOp::Hibernate, &[VmStatus::Running])
            .await?;
        let spec = self.spec(&vm)?;
        let Some(handle) = live.handle.take() else {
            let vm = self
                .mark_failed(vm_id, "no hypervisor process to hibernate")
                .await?;
            return Err(VmError::host(&vm.id, VmOp::Hibernate, "no process"));
        };
        live.agent = None;
        let marker = snapshot_marker(&spec);
        if let Err(e) = fresh_snapshot_dir(&spec).await {
            self.install(vm_id, live, handle, None);
            self.close_intent(vm_id).await?;
            return Err(VmError::host(vm_id, VmOp::Hibernate, e));
        }
        let pid = handle.pid;
        if let Err(e) = self.host.hypervisor.hibernate(&spec, handle).await {
            let error = VmError::host(vm_id, VmOp::Hibernate, &e);
            // The process may have survived a failed save: keep the VM running if it did.
            match self.host.hypervisor.adopt(&spec, pid).await {
                Ok(handle) => {
                    // The save may have stopped the guest's CPUs before it failed.
                    if let Err(e) = self.host.hypervisor.unpause(&handle).await {
                        tracing::warn!(vm = vm_id, error = %e, "cannot unpause after a failed hibernation");
                    }
                    self.install(vm_id, live, handle, None);
                    self.close_intent(vm_id).await?;
                }
                Err(_) => {
                    self.remove_tap(vm.tap_device.as_deref()).await;
                    self.mark_failed(vm_id, &error.to_string()).await?;
                }
            }
            return Err(error);
        }
        write_marker(&marker)
            .await
            .map_err(|e| VmError::host(vm_id, VmOp::Hibernate, e))?;
        crate::failpoint::hit("vm.hibernate.after_snapshot");
        self.remove_tap(vm.tap_device.as_deref()).await;
        let vm = self.commit_hibernated(vm_id).await?;
        self.metrics
            .vm_hibernate_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(vm)
    }

    pub(super) async fn commit_hibernated(&self, vm_id: &str) -> Result<Vm, VmError> {
        let id = vm_id.to_string();
        let vm = self
            .store
            .write(move |tx| {
                ledger::finish(tx, &id, |vm| {
                    vm.set_status(VmStatus::Hibernated)?;
                    vm.pid = None;
                    vm.hibernated_at_ms = Some(now_ms());
                    Ok(())
                })
            })
            .await?;
        self.forget_usage(vm_id);
        self.publish_status(&vm, VmStatus::Running);
        Ok(vm)
    }

    /// Starts the VM from its hibernation image. A VM whose address was reclaimed gets a new
    /// one, which the agent applies in the guest.
    pub async fn resume(self: &Arc<Self>, vm_id: &str) -> Result<Vm, VmError> {
        let started = Instant::now();
        self.require_vms()?;
        let slot = self.slot(vm_id);
        let mut live = slot.lock().await;
        let vm = self
            .begin(vm_id, VmOp::Resume, &[VmStatus::Hibernated])
            .await?;
        let spec = self.spec(&vm)?;
        match self
            .start(&vm, &spec, Start::Resume, vm.needs_readdress)
            .await
        {
            Ok(mut up) => {
                // The process holds the image now. Once the VM is recorded running, a marker
                // left by a crash here would make a later restart without the process take the
                // stale image for a hibernation; without it, the image still resumes.
                if let Err(e) = remove_marker(&spec).await {
                    let _ = self.host.hypervisor.kill(&mut up.handle).await;
                    self.remove_tap(vm.tap_device.as_deref()).await;
                    self.close_intent(vm_id).await?;
                    return Err(VmError::host(vm_id, VmOp::Resume, e));
                }
                let vm = self.commit_running(&vm, &mut live, up).await?;
                crate::failpoint::hit("vm.resume.after_commit");
                self.remove_dir(&spec.snapshot_dir()).await;
                self.metrics
                    .vm_resume_duration
                    .observe(started.elapsed().as_secs_f64());
                Ok(vm)
            }
            Err(e) => {
                // The hibernation image is intact: the VM stays hibernated.
                self.remove_tap(vm.tap_device.as_deref()).await;
                self.close_intent(vm_id).await?;
                Err(e)
            }
        }
    }

    /// Stops the VM's process if any, removes its tap and directory, and releases its address.
    pub async fn destroy(self: &Arc<Self>, vm_id: &str) -> Result<Vm, VmError> {
        let slot = self.slot(vm_id);
        let mut live = slot.lock().await;
        let from: Vec<VmStatus> = VmStatus::ALL
            .iter()
            .copied()
            .filter(|s| *s != VmStatus::Destroyed)
            .collect();
        let vm = self.begin(vm_id, VmOp::Destroy, &from).await?;
        live.agent = None;
        match live.handle.take() {
            Some(mut handle) => {
                let _ = self.host.hypervisor.kill(&mut handle).await;
            }
            // A process the record names but this daemon does not hold is stopped all the same.
            None if vm.pid.is_some() => {
                super::reconcile::kill_processes_in(&self.dir_of(vm_id)).await
            }
            None => {}
        }
        crate::failpoint::hit("vm.destroy.after_kill");
        let vm = self.finish_destroy(&vm).await?;
        drop(live);
        self.forget(vm_id);
        if let Err(e) = self.sweep_images().await {
            tracing::warn!(error = %e, "the guest image sweep failed; the next destroy retries");
        }
        Ok(vm)
    }

    /// The host half of a destroy after the process is gone, and its record.
    pub(super) async fn finish_destroy(&self, vm: &Vm) -> Result<Vm, VmError> {
        self.remove_tap(vm.tap_device.as_deref()).await;
        self.remove_dir(&self.dir_of(&vm.id)).await;
        let previous = vm.status;
        let id = vm.id.clone();
        self.forget_usage(&id);
        let vm = self
            .store
            .write(move |tx| {
                ledger::finish(tx, &id, |vm| {
                    if !vm.status.can_transition_to(VmStatus::Destroyed) {
                        vm.status.transition(VmStatus::Stopping)?;
                    }
                    vm.set_status(VmStatus::Destroyed)?;
                    ledger::strip(vm);
                    Ok(())
                })
            })
            .await?;
        self.publish_status(&vm, previous);
        Ok(vm)
    }

    /// Records `op`'s intent (with a new address for a resume that needs one).
    async fn begin(&self, vm_id: &str, op: VmOp, from: &[VmStatus]) -> Result<Vm, VmError> {
        let id = vm_id.to_string();
        let from = from.to_vec();
        let dir = self.dir_of(vm_id).display().to_string();
        let limits = self.settings.limits;
        let reserved = self
            .store
            .write(move |tx| ledger::begin(tx, &id, op, &from, &dir, &limits))
            .await?;
        self.publish_reclaimed(&reserved.reclaimed);
        Ok(reserved.vm)
    }

    /// The connected agent of a running VM, reconnecting if the connection dropped.
    pub async fn agent(&self, vm_id: &str) -> Result<Arc<AgentClient>, VmError> {
        let slot = self.slot(vm_id);
        let mut live = slot.lock().await;
        if let Some(agent) = live.agent.as_ref().filter(|a| a.is_connected()) {
            return Ok(agent.clone());
        }
        let unavailable = |reason: String| VmError::AgentUnavailable {
            id: vm_id.to_string(),
            reason,
        };
        let endpoint = match &live.handle {
            Some(handle) => handle.agent.clone(),
            None => return Err(unavailable("the VM is not running".into())),
        };
        let vm = self.get(vm_id).await?;
        let agent = AgentClient::connect(&endpoint, &vm.agent_token, self.settings.agent_timeout)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let agent = Arc::new(agent);
        live.agent = Some(agent.clone());
        Ok(agent)
    }
}
