//! The lifecycle core: create, hibernate, resume and destroy as transitions over the ledger.
//! Each takes the VM's slot for its whole length and records its intent before it touches the
//! host; the host steps themselves are bring-up's, failures are `failed`'s, and every process
//! it starts is handed to the watch.

use std::sync::Arc;
use std::time::Instant;

use super::activity::Uses;
use super::failed::Failures;
use super::gauges::Gauges;
use super::host::{BringUp, Start, Started, agent_info};
use super::images::ImageSweep;
use super::layout::{fresh_snapshot_dir, remove_dir, remove_marker, snapshot_marker, write_marker};
use super::records::Records;
use super::slots::{Live, Slots};
use super::watch::Watch;
use super::{VmError, VmSettings, procs};
use crate::metrics::Metrics;
use crate::model::{Vm, VmOp, VmStatus};
use crate::vmm::Hypervisor;

pub(super) struct Lifecycle {
    records: Arc<Records>,
    slots: Arc<Slots>,
    uses: Arc<Uses>,
    host: Arc<BringUp>,
    failures: Arc<Failures>,
    watch: Arc<Watch>,
    gauges: Arc<Gauges>,
    images: Arc<ImageSweep>,
    hypervisor: Arc<dyn Hypervisor>,
    metrics: Arc<Metrics>,
    settings: Arc<VmSettings>,
}

/// The parts the lifecycle drives.
pub(super) struct LifecycleDeps {
    pub records: Arc<Records>,
    pub slots: Arc<Slots>,
    pub uses: Arc<Uses>,
    pub host: Arc<BringUp>,
    pub failures: Arc<Failures>,
    pub watch: Arc<Watch>,
    pub gauges: Arc<Gauges>,
    pub images: Arc<ImageSweep>,
    pub hypervisor: Arc<dyn Hypervisor>,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<VmSettings>,
}

impl Lifecycle {
    pub(super) fn new(d: LifecycleDeps) -> Lifecycle {
        Lifecycle {
            records: d.records,
            slots: d.slots,
            uses: d.uses,
            host: d.host,
            failures: d.failures,
            watch: d.watch,
            gauges: d.gauges,
            images: d.images,
            hypervisor: d.hypervisor,
            metrics: d.metrics,
            settings: d.settings,
        }
    }

    /// Creates the user's VM: reserves its address, tap and directory with the intent, then
    /// boots it and waits for its agent. A failed create leaves a `failed` record that holds
    /// nothing but its console tail. A user in a crash loop is refused first.
    pub(super) async fn create(&self, user_id: &str) -> Result<Vm, VmError> {
        let started = Instant::now();
        self.settings.require_vms()?;
        self.failures.check_crash_loop(user_id, started)?;
        let vm = self.host.new_vm(user_id).await?;
        let vm_id = vm.id.clone();
        let slot = self.slots.slot(&vm_id);
        let mut live = slot.lock().await;
        let vm = match self.records.reserve_create(vm).await {
            Ok(vm) => vm,
            Err(e) => {
                drop(live);
                self.forget(&vm_id);
                return Err(e);
            }
        };
        crate::failpoint::hit("vm.create.after_reserve");
        match self.host.first_boot(&vm).await {
            Ok(up) => {
                // A golden restore leaves links to the shared golden files, which the process
                // no longer needs. They go before the VM is recorded running, so no crash can
                // leave them for its later hibernations to write through.
                remove_dir(&self.settings.dir_of(&vm.id).join("snapshot")).await;
                let vm = self.commit_running(&vm, &mut live, up).await?;
                crate::failpoint::hit("vm.create.after_commit");
                self.metrics
                    .vm_create_duration
                    .observe(started.elapsed().as_secs_f64());
                Ok(vm)
            }
            Err(e) => {
                self.host.remove_tap(vm.tap_device.as_deref()).await;
                self.failures.mark_failed(&vm.id, &e.to_string()).await?;
                Err(e)
            }
        }
    }

    /// Saves the VM to disk and stops its process. Its address stays leased.
    pub(super) async fn hibernate(&self, vm_id: &str) -> Result<Vm, VmError> {
        let slot = self.slots.slot(vm_id);
        let mut live = slot.lock().await;
        self.hibernate_locked(vm_id, &mut live).await
    }

    /// [`Lifecycle::hibernate`] with the VM's slot already held.
    pub(super) async fn hibernate_locked(
        &self,
        vm_id: &str,
        live: &mut Live,
    ) -> Result<Vm, VmError> {
        let started = Instant::now();
        self.settings.require_vms()?;
        let vm = self
            .records
            .begin(vm_id, VmOp::Hibernate, &[VmStatus::Running])
            .await?;
        let spec = self.settings.spec_of(&vm)?;
        let Some(handle) = live.handle.take() else {
            let vm = self
                .failures
                .mark_failed(vm_id, "no hypervisor process to hibernate")
                .await?;
            return Err(VmError::host(&vm.id, VmOp::Hibernate, "no process"));
        };
        live.agent = None;
        let marker = snapshot_marker(&spec);
        if let Err(e) = fresh_snapshot_dir(&spec).await {
            self.watch.install(vm_id, live, handle, None);
            self.records.close_intent(vm_id).await?;
            return Err(VmError::host(vm_id, VmOp::Hibernate, e));
        }
        let pid = handle.pid;
        if let Err(e) = self.hypervisor.hibernate(&spec, handle).await {
            let error = VmError::host(vm_id, VmOp::Hibernate, &e);
            // The process may have survived a failed save: keep the VM running if it did.
            match self.hypervisor.adopt(&spec, pid).await {
                Ok(handle) => {
                    // The save may have stopped the guest's CPUs before it failed.
                    if let Err(e) = self.hypervisor.unpause(&handle).await {
                        tracing::warn!(vm = vm_id, error = %e, "cannot unpause after a failed hibernation");
                    }
                    self.watch.install(vm_id, live, handle, None);
                    self.records.close_intent(vm_id).await?;
                }
                Err(_) => {
                    self.host.remove_tap(vm.tap_device.as_deref()).await;
                    self.failures.mark_failed(vm_id, &error.to_string()).await?;
                }
            }
            return Err(error);
        }
        // The process is gone: its tap goes while the marker is made durable, not after.
        let (marked, ()) = tokio::join!(
            write_marker(&marker),
            self.host.remove_tap(vm.tap_device.as_deref())
        );
        marked.map_err(|e| VmError::host(vm_id, VmOp::Hibernate, e))?;
        crate::failpoint::hit("vm.hibernate.after_snapshot");
        let vm = self.commit_hibernated(vm_id).await?;
        self.metrics
            .vm_hibernate_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(vm)
    }

    pub(super) async fn commit_hibernated(&self, vm_id: &str) -> Result<Vm, VmError> {
        let vm = self.records.hibernated(vm_id).await?;
        self.gauges.forget(vm_id);
        self.records.publish_status(&vm, VmStatus::Running);
        Ok(vm)
    }

    /// Starts the VM from its hibernation image. A VM whose address was reclaimed gets a new
    /// one, which the agent applies in the guest.
    pub(super) async fn resume(&self, vm_id: &str) -> Result<Vm, VmError> {
        let started = Instant::now();
        self.settings.require_vms()?;
        let slot = self.slots.slot(vm_id);
        let mut live = slot.lock().await;
        let vm = self
            .records
            .begin(vm_id, VmOp::Resume, &[VmStatus::Hibernated])
            .await?;
        let spec = self.settings.spec_of(&vm)?;
        match self
            .host
            .start(&vm, &spec, Start::Resume, vm.needs_readdress)
            .await
        {
            Ok(mut up) => {
                // The process holds the image now. Once the VM is recorded running, a marker
                // left by a crash here would make a later restart without the process take the
                // stale image for a hibernation; without it, the image still resumes.
                if let Err(e) = remove_marker(&spec).await {
                    let _ = self.hypervisor.kill(&mut up.handle).await;
                    self.host.remove_tap(vm.tap_device.as_deref()).await;
                    self.records.close_intent(vm_id).await?;
                    return Err(VmError::host(vm_id, VmOp::Resume, e));
                }
                let vm = self.commit_running(&vm, &mut live, up).await?;
                crate::failpoint::hit("vm.resume.after_commit");
                remove_dir(&spec.snapshot_dir()).await;
                self.metrics
                    .vm_resume_duration
                    .observe(started.elapsed().as_secs_f64());
                Ok(vm)
            }
            Err(e) => {
                // The hibernation image is intact: the VM stays hibernated.
                self.host.remove_tap(vm.tap_device.as_deref()).await;
                self.records.close_intent(vm_id).await?;
                Err(e)
            }
        }
    }

    /// Stops the VM's process if any, removes its tap and directory, and releases its address.
    pub(super) async fn destroy(&self, vm_id: &str) -> Result<Vm, VmError> {
        let slot = self.slots.slot(vm_id);
        let mut live = slot.lock().await;
        let from: Vec<VmStatus> = VmStatus::ALL
            .iter()
            .copied()
            .filter(|s| *s != VmStatus::Destroyed)
            .collect();
        let vm = self.records.begin(vm_id, VmOp::Destroy, &from).await?;
        live.agent = None;
        match live.handle.take() {
            Some(mut handle) => {
                let _ = self.hypervisor.kill(&mut handle).await;
            }
            // A process the record names but this daemon does not hold is stopped all the same.
            None if vm.pid.is_some() => {
                procs::kill_processes_in(&self.settings.dir_of(vm_id)).await
            }
            None => {}
        }
        crate::failpoint::hit("vm.destroy.after_kill");
        let vm = self.finish_destroy(&vm).await?;
        drop(live);
        self.forget(vm_id);
        if let Err(e) = self.images.sweep().await {
            tracing::warn!(error = %e, "the guest image sweep failed; the next destroy retries");
        }
        Ok(vm)
    }

    /// The host half of a destroy after the process is gone, and its record.
    pub(super) async fn finish_destroy(&self, vm: &Vm) -> Result<Vm, VmError> {
        self.host.remove_tap(vm.tap_device.as_deref()).await;
        remove_dir(&self.settings.dir_of(&vm.id)).await;
        let previous = vm.status;
        self.gauges.forget(&vm.id);
        let vm = self.records.destroyed(&vm.id).await?;
        self.records.publish_status(&vm, previous);
        Ok(vm)
    }

    /// Installs a started process in the slot, records the VM as running, and watches its exit.
    async fn commit_running(&self, vm: &Vm, live: &mut Live, up: Started) -> Result<Vm, VmError> {
        let info = agent_info(&up.health);
        let previous = vm.status;
        let written = match self.records.running(&vm.id, up.handle.pid, info).await {
            Ok(written) => written,
            Err(e) => {
                // Unrecorded, the process would run with nothing owning it; the intent stays
                // for reconcile.
                let mut handle = up.handle;
                let _ = self.hypervisor.kill(&mut handle).await;
                return Err(e);
            }
        };
        self.watch
            .install(&written.id, live, up.handle, Some(up.agent));
        self.uses.touch(&written.id);
        self.records.publish_status(&written, previous);
        Ok(written)
    }

    /// Drops what this daemon keeps in memory of a VM that is gone.
    fn forget(&self, vm_id: &str) {
        self.slots.forget(vm_id);
        self.uses.forget(vm_id);
    }
}
