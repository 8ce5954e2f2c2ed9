//! Reconcile at start, before READY: finish or roll back every half-done intent, adopt every
//! VM whose process survived the restart, settle the ones whose process is gone, and sweep
//! what no record owns (taps on the bridge, VM directories, hypervisor processes, leases).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::host::snapshot_marker;
use super::ledger::{self, holds_process};
use super::{VmError, VmFilter, VmManager};
use crate::model::{Vm, VmIntent, VmOp, VmStatus};
use crate::net::is_tap_name;

const ADOPT_AGENT_DEADLINE: Duration = Duration::from_secs(10);
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// What the orphan sweep removed.
#[derive(Debug, Default, Clone, Serialize)]
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

impl VmManager {
    /// Brings the store and the host into agreement. `progress` receives one line per step,
    /// for systemd's `STATUS=`.
    pub async fn reconcile(
        self: &Arc<Self>,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ReconcileReport, VmError> {
        let mut report = ReconcileReport::default();
        let intents: Vec<VmIntent> = self.store.read(ledger::intents).await?;
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
            .list(VmFilter::default())
            .await?
            .into_iter()
            .filter(|vm| holds_process(vm.status))
            .collect();
        for (n, vm) in running.iter().enumerate() {
            if self.slot(&vm.id).lock().await.handle.is_some() {
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
        report.images = self.sweep_images().await?;
        Ok(report)
    }

    async fn settle_intent(self: &Arc<Self>, intent: &VmIntent) -> Result<&'static str, VmError> {
        let vm = self.get(&intent.vm_id).await?;
        let dir = Path::new(&intent.dir);
        match intent.op {
            VmOp::Create => {
                self.remove_tap(Some(&intent.tap)).await;
                self.mark_failed(&vm.id, "the create was interrupted by a restart")
                    .await?;
                Ok("rolled back")
            }
            VmOp::Hibernate => {
                let spec = self.spec(&vm)?;
                if snapshot_marker(&spec).exists() {
                    kill_processes_in(dir).await;
                    self.remove_tap(Some(&intent.tap)).await;
                    self.commit_hibernated(&vm.id).await?;
                    return Ok("finished");
                }
                if self.adopt(&vm).await {
                    self.close_intent(&vm.id).await?;
                    return Ok("rolled back (the VM still runs)");
                }
                self.remove_tap(Some(&intent.tap)).await;
                self.mark_failed(&vm.id, "the hibernation was interrupted by a restart")
                    .await?;
                Ok("failed")
            }
            VmOp::Resume => {
                // The hibernation image is removed only after a resume commits, so it is intact.
                kill_processes_in(dir).await;
                self.remove_tap(Some(&intent.tap)).await;
                self.close_intent(&vm.id).await?;
                Ok("rolled back (hibernated)")
            }
            VmOp::Destroy => {
                kill_processes_in(dir).await;
                self.finish_destroy(&vm).await?;
                Ok("finished")
            }
        }
    }

    pub(super) async fn close_intent(&self, vm_id: &str) -> Result<Vm, VmError> {
        let id = vm_id.to_string();
        self.store
            .write(move |tx| ledger::finish(tx, &id, |_| Ok(())))
            .await
    }

    /// Takes over the VM's process if it is still the one the record names.
    async fn adopt(self: &Arc<Self>, vm: &Vm) -> bool {
        let (Some(pid), Ok(spec)) = (vm.pid, self.spec(vm)) else {
            return false;
        };
        // The binding is kernel state that outlives the daemon, but not every restart of the
        // host's firewall: it is laid again before the guest is trusted with its tap. A VM
        // whose tap cannot be bound is not adopted.
        if let Some(tap) = &vm.tap_device
            && let Err(e) = self.bind_tap(vm, tap).await
        {
            tracing::error!(vm = %vm.id, tap, error = %e, "cannot bind the tap of a VM to adopt");
            return false;
        }
        let Ok(handle) = self.host.hypervisor.adopt(&spec, pid).await else {
            return false;
        };
        let endpoint = handle.agent.clone();
        let slot = self.slot(&vm.id);
        let mut live = slot.lock().await;
        self.install(&vm.id, &mut live, handle, None);
        let deadline = self.settings.agent_timeout.min(ADOPT_AGENT_DEADLINE);
        match crate::guest::client::AgentClient::connect(&endpoint, &vm.agent_token, deadline).await
        {
            Ok(agent) => {
                if let Ok(health) = agent.health().await {
                    drop(live);
                    self.record_health(&vm.id, &health).await;
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

    async fn adopt_or_settle(self: &Arc<Self>, vm: &Vm) -> Result<VmStatus, VmError> {
        if vm.status == VmStatus::Running && self.adopt(vm).await {
            tracing::info!(vm = %vm.id, pid = ?vm.pid, "adopted a running VM");
            return Ok(VmStatus::Running);
        }
        self.remove_tap(vm.tap_device.as_deref()).await;
        let spec = self.spec(vm)?;
        if vm.status == VmStatus::Running && snapshot_marker(&spec).exists() {
            return Ok(self.commit_hibernated(&vm.id).await?.status);
        }
        kill_processes_in(&spec.dir).await;
        let vm = self
            .mark_failed(&vm.id, "its process was gone after a restart")
            .await?;
        Ok(vm.status)
    }

    /// Removes the taps, directories, processes and leases no live VM owns.
    pub async fn sweep_orphans(&self) -> Result<OrphanReport, VmError> {
        let vms = self.list(VmFilter::default()).await?;
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
            .host
            .netlink
            .bridge_ports(&self.settings.bridge)
            .await
            .unwrap_or_default();
        for tap in ports {
            if is_tap_name(&tap) && !owned_taps.contains(tap.as_str()) {
                self.remove_tap(Some(&tap)).await;
                report.taps.push(tap);
            }
        }
        // Bindings whose tap went without them (a crash between the two removals).
        let bound = self.host.netlink.bound_taps().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list the taps' bindings");
            Vec::new()
        });
        for tap in bound {
            if !owned_taps.contains(tap.as_str()) {
                if let Err(e) = self.host.netlink.unbind_tap(&tap).await {
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
                    self.remove_dir(&entry.path()).await;
                    report.dirs.push(name);
                }
            }
        }

        report.leases = self.store.write(ledger::stray_leases).await?;
        if report.taps.len() + report.dirs.len() + report.processes.len() + report.leases.len() > 0
        {
            tracing::info!(?report, "removed orphaned resources");
        }
        Ok(report)
    }
}

/// Processes whose command line names a path under `root`, with the VM id that path names.
/// Reading `/proc` is blocking file I/O, so it runs off the async workers.
async fn hypervisor_processes(root: std::path::PathBuf) -> Vec<(u32, String)> {
    tokio::task::spawn_blocking(move || scan_processes(&root))
        .await
        .unwrap_or_default()
}

fn scan_processes(root: &Path) -> Vec<(u32, String)> {
    let prefix = format!("{}/", root.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw);
        if let Some(at) = cmdline.find(&prefix) {
            let rest = &cmdline[at + prefix.len()..];
            let vm_id: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !vm_id.is_empty() {
                found.push((pid, vm_id));
            }
        }
    }
    found
}

/// Kills every process that runs from `dir` (a VM's hypervisor left behind by a crash).
pub(super) async fn kill_processes_in(dir: &Path) {
    let Some(root) = dir.parent() else { return };
    let Some(id) = dir.file_name().map(|n| n.to_string_lossy().to_string()) else {
        return;
    };
    for (pid, vm_id) in hypervisor_processes(root.to_path_buf()).await {
        if vm_id == id {
            kill_and_reap(pid).await;
        }
    }
}

async fn kill_and_reap(pid: u32) {
    let target = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
    let started = std::time::Instant::now();
    while alive(pid) && started.elapsed() < KILL_DEADLINE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` exists and is not a zombie waiting for its parent.
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}
