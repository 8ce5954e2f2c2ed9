//! Reconcile at start, before READY: finish or roll back every half-done intent, adopt every
//! VM whose process survived the restart, settle the ones whose process is gone, and sweep
//! what no record owns (taps on the bridge, VM directories, hypervisor processes, leases).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::failed::Failures;
use super::host::BringUp;
use super::images::ImageSweep;
use super::layout::{remove_dir, snapshot_marker};
use super::ledger::holds_process;
use super::lifecycle::Lifecycle;
use super::procs::{hypervisor_processes, kill_and_reap, kill_processes_in};
use super::records::Records;
use super::slots::Slots;
use super::watch::Watch;
use super::{VmError, VmFilter, VmSettings};
use crate::model::{Vm, VmIntent, VmOp, VmStatus};
use crate::net::{Netlink, is_tap_name};
use crate::vmm::Hypervisor;

const ADOPT_AGENT_DEADLINE: Duration = Duration::from_secs(10);

/// What the orphan sweep removed.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrphanReport {
    pub taps: Vec<String>,
    pub dirs: Vec<String>,
    pub processes: Vec<u32>,
    pub leases: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    /// `<vm id>: <op> <outcome>` for every intent found.
    pub intents: Vec<String>,
    pub adopted: Vec<String>,
    pub hibernated: Vec<String>,
    pub failed: Vec<String>,
    pub orphans: OrphanReport,
    /// Guest image versions removed because nothing uses them any more.
    pub images: Vec<std::path::PathBuf>,
}

pub(super) struct Reconcile {
    records: Arc<Records>,
    slots: Arc<Slots>,
    host: Arc<BringUp>,
    lifecycle: Arc<Lifecycle>,
    failures: Arc<Failures>,
    watch: Arc<Watch>,
    images: Arc<ImageSweep>,
    hypervisor: Arc<dyn Hypervisor>,
    netlink: Arc<dyn Netlink>,
    settings: Arc<VmSettings>,
}

/// The parts reconcile settles the store and the host through.
pub(super) struct ReconcileDeps {
    pub records: Arc<Records>,
    pub slots: Arc<Slots>,
    pub host: Arc<BringUp>,
    pub lifecycle: Arc<Lifecycle>,
    pub failures: Arc<Failures>,
    pub watch: Arc<Watch>,
    pub images: Arc<ImageSweep>,
    pub hypervisor: Arc<dyn Hypervisor>,
    pub netlink: Arc<dyn Netlink>,
    pub settings: Arc<VmSettings>,
}

impl Reconcile {
    pub(super) fn new(d: ReconcileDeps) -> Reconcile {
        Reconcile {
            records: d.records,
            slots: d.slots,
            host: d.host,
            lifecycle: d.lifecycle,
            failures: d.failures,
            watch: d.watch,
            images: d.images,
            hypervisor: d.hypervisor,
            netlink: d.netlink,
            settings: d.settings,
        }
    }

    /// Brings the store and the host into agreement. `progress` receives one line per step,
    /// for systemd's `STATUS=`.
    pub(super) async fn reconcile(
        &self,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ReconcileReport, VmError> {
        let mut report = ReconcileReport::default();
        let intents: Vec<VmIntent> = self.records.intents().await?;
        for (n, intent) in intents.iter().enumerate() {
            progress(&format!(
                "reconciling intent {}/{}: {} of VM {}",
                n + 1,
                intents.len(),
                intent.op,
                intent.vm_id
            ));
            let outcome = self.settle_intent(intent).await?;
            report
                .intents
                .push(format!("{}: {} {outcome}", intent.vm_id, intent.op));
        }
        let running: Vec<Vm> = self
            .records
            .list(VmFilter::default())
            .await?
            .into_iter()
            .filter(|vm| holds_process(vm.status))
            .collect();
        for (n, vm) in running.iter().enumerate() {
            if self.slots.slot(&vm.id).lock().await.handle.is_some() {
                // Already taken over while its intent was rolled back.
                report.adopted.push(vm.id.clone());
                continue;
            }
            progress(&format!(
                "adopting VM {}/{}: {}",
                n + 1,
                running.len(),
                vm.id
            ));
            match self.adopt_or_settle(vm).await? {
                VmStatus::Running => report.adopted.push(vm.id.clone()),
                VmStatus::Hibernated => report.hibernated.push(vm.id.clone()),
                _ => report.failed.push(vm.id.clone()),
            }
        }
        progress("sweeping orphaned taps, directories and processes");
        report.orphans = self.sweep_orphans().await?;
        progress("sweeping guest images no VM uses");
        report.images = self.images.sweep().await?;
        Ok(report)
    }

    async fn settle_intent(&self, intent: &VmIntent) -> Result<&'static str, VmError> {
        let vm = self.records.get(&intent.vm_id).await?;
        let dir = Path::new(&intent.dir);
        match intent.op {
            VmOp::Create => {
                self.host.remove_tap(Some(&intent.tap)).await;
                self.failures
                    .mark_failed(&vm.id, "the create was interrupted by a restart")
                    .await?;
                Ok("rolled back")
            }
            VmOp::Hibernate => {
                let spec = self.settings.spec_of(&vm)?;
                if snapshot_marker(&spec).exists() {
                    kill_processes_in(dir).await;
                    self.host.remove_tap(Some(&intent.tap)).await;
                    self.lifecycle.commit_hibernated(&vm.id).await?;
                    return Ok("finished");
                }
                if self.adopt(&vm).await {
                    self.records.close_intent(&vm.id).await?;
                    return Ok("rolled back (the VM still runs)");
                }
                self.host.remove_tap(Some(&intent.tap)).await;
                self.failures
                    .mark_failed(&vm.id, "the hibernation was interrupted by a restart")
                    .await?;
                Ok("failed")
            }
            VmOp::Resume => {
                // The hibernation image is removed only after a resume commits, so it is intact.
                kill_processes_in(dir).await;
                self.host.remove_tap(Some(&intent.tap)).await;
                self.records.close_intent(&vm.id).await?;
                Ok("rolled back (hibernated)")
            }
            VmOp::Destroy => {
                kill_processes_in(dir).await;
                self.lifecycle.finish_destroy(&vm).await?;
                Ok("finished")
            }
        }
    }

    /// Takes over the VM's process if it is still the one the record names.
    async fn adopt(&self, vm: &Vm) -> bool {
        let (Some(pid), Ok(spec)) = (vm.pid, self.settings.spec_of(vm)) else {
            return false;
        };
        // The binding is kernel state that outlives the daemon, but not every restart of the
        // host's firewall: it is laid again before the guest is trusted with its tap. A VM
        // whose tap cannot be bound is not adopted.
        if let Some(tap) = &vm.tap_device
            && let Err(e) = self.host.bind_tap(vm, tap).await
        {
            tracing::error!(vm = %vm.id, tap, error = %e, "cannot bind the tap of a VM to adopt");
            return false;
        }
        let Ok(handle) = self.hypervisor.adopt(&spec, pid).await else {
            return false;
        };
        let endpoint = handle.agent.clone();
        let slot = self.slots.slot(&vm.id);
        let mut live = slot.lock().await;
        self.watch.install(&vm.id, &mut live, handle, None);
        let deadline = self.settings.agent_timeout.min(ADOPT_AGENT_DEADLINE);
        match crate::guest::client::AgentClient::connect(&endpoint, &vm.agent_token, deadline).await
        {
            Ok(agent) => {
                if let Ok(health) = agent.health().await {
                    drop(live);
                    self.watch.record_health(&vm.id, &health).await;
                    live = slot.lock().await;
                }
                live.agent = Some(Arc::new(agent));
            }
            Err(e) => {
                tracing::warn!(vm = %vm.id, error = %e, "adopted VM's agent does not answer yet")
            }
        }
        true
    }

    async fn adopt_or_settle(&self, vm: &Vm) -> Result<VmStatus, VmError> {
        if vm.status == VmStatus::Running && self.adopt(vm).await {
            tracing::info!(vm = %vm.id, pid = ?vm.pid, "adopted a running VM");
            return Ok(VmStatus::Running);
        }
        self.host.remove_tap(vm.tap_device.as_deref()).await;
        let spec = self.settings.spec_of(vm)?;
        if vm.status == VmStatus::Running && snapshot_marker(&spec).exists() {
            return Ok(self.lifecycle.commit_hibernated(&vm.id).await?.status);
        }
        kill_processes_in(&spec.dir).await;
        let vm = self
            .failures
            .mark_failed(&vm.id, "its process was gone after a restart")
            .await?;
        Ok(vm.status)
    }

    /// Removes the taps, directories, processes and leases no live VM owns.
    pub(super) async fn sweep_orphans(&self) -> Result<OrphanReport, VmError> {
        let vms = self.records.list(VmFilter::default()).await?;
        let with_process: HashSet<&str> = vms
            .iter()
            .filter(|vm| holds_process(vm.status))
            .map(|vm| vm.id.as_str())
            .collect();
        let owned_taps: HashSet<&str> = vms
            .iter()
            .filter(|vm| holds_process(vm.status))
            .filter_map(|vm| vm.tap_device.as_deref())
            .collect();
        let kept_dirs: HashSet<&str> = vms
            .iter()
            .filter(|vm| vm.status != VmStatus::Destroyed)
            .map(|vm| vm.id.as_str())
            .collect();
        let mut report = OrphanReport::default();

        let ports = self
            .netlink
            .bridge_ports(&self.settings.bridge)
            .await
            .unwrap_or_default();
        for tap in ports {
            if is_tap_name(&tap) && !owned_taps.contains(tap.as_str()) {
                self.host.remove_tap(Some(&tap)).await;
                report.taps.push(tap);
            }
        }
        // Bindings whose tap went without them (a crash between the two removals).
        let bound = self.netlink.bound_taps().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list the taps' bindings");
            Vec::new()
        });
        for tap in bound {
            if !owned_taps.contains(tap.as_str()) {
                if let Err(e) = self.netlink.unbind_tap(&tap).await {
                    tracing::warn!(tap, error = %e, "cannot remove an orphaned tap binding");
                }
                if !report.taps.contains(&tap) {
                    report.taps.push(tap);
                }
            }
        }

        for (pid, vm_id) in hypervisor_processes(self.settings.root.clone()).await {
            if !with_process.contains(vm_id.as_str()) {
                kill_and_reap(pid).await;
                report.processes.push(pid);
            }
        }

        if let Ok(mut entries) = tokio::fs::read_dir(&self.settings.root).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let name = entry.file_name().to_string_lossy().to_string();
                if !kept_dirs.contains(name.as_str()) {
                    remove_dir(&entry.path()).await;
                    report.dirs.push(name);
                }
            }
        }

        report.leases = self.records.stray_leases().await?;
        if report.taps.len() + report.dirs.len() + report.processes.len() + report.leases.len() > 0
        {
            tracing::info!(?report, "removed orphaned resources");
        }
        Ok(report)
    }
}
