//! The facade the rest of the daemon holds: it wires the parts together once, with every
//! dependency passed explicitly, and hands each call to the part that owns it. No logic of its
//! own lives here.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::activity::{Activity, Uses, VmStep};
use super::exec::ExecResult;
use super::failed::Failures;
use super::gauges::Gauges;
use super::host::BringUp;
use super::images::ImageSweep;
use super::lifecycle::{Lifecycle, LifecycleDeps};
use super::logcap::LogCap;
use super::reconcile::{OrphanReport, Reconcile, ReconcileDeps, ReconcileReport};
use super::records::Records;
use super::slots::Slots;
use super::upkeep::Upkeep;
use super::watch::{HealthSweep, Watch, WatchDeps};
use super::{VmError, VmFilter, VmHost, VmPage, VmSettings};
use crate::events::EventHub;
use crate::guest::client::AgentClient;
use crate::metrics::Metrics;
use crate::model::Vm;
use crate::store::Store;

/// The VM manager as the API, the services and the daemon see it (see the parts in
/// [`super`]).
pub struct VmManager {
    settings: Arc<VmSettings>,
    records: Arc<Records>,
    slots: Arc<Slots>,
    uses: Arc<Uses>,
    lifecycle: Arc<Lifecycle>,
    activity: Activity,
    watch: Arc<Watch>,
    reconcile: Reconcile,
    upkeep: Upkeep,
    images: Arc<ImageSweep>,
    logcap: LogCap,
}

impl VmManager {
    pub fn new(
        store: Store,
        host: VmHost,
        events: EventHub,
        metrics: Arc<Metrics>,
        settings: VmSettings,
    ) -> Arc<VmManager> {
        let VmHost {
            hypervisor,
            netlink,
        } = host;
        let settings = Arc::new(settings);
        let records = Arc::new(Records::new(store, events.clone(), settings.clone()));
        let slots = Arc::new(Slots::new(records.clone(), settings.clone()));
        let uses = Arc::new(Uses::default());
        let gauges = Arc::new(Gauges::new(metrics.clone()));
        let bring_up = Arc::new(BringUp::new(
            hypervisor.clone(),
            netlink.clone(),
            settings.clone(),
        ));
        let images = Arc::new(ImageSweep::new(records.clone(), settings.clone()));
        let failures = Arc::new(Failures::new(
            records.clone(),
            gauges.clone(),
            settings.clone(),
        ));
        let watch = Watch::new(WatchDeps {
            slots: slots.clone(),
            records: records.clone(),
            host: bring_up.clone(),
            failures: failures.clone(),
            gauges: gauges.clone(),
            hypervisor: hypervisor.clone(),
            events: events.clone(),
            settings: settings.clone(),
        });
        let lifecycle = Arc::new(Lifecycle::new(LifecycleDeps {
            records: records.clone(),
            slots: slots.clone(),
            uses: uses.clone(),
            host: bring_up.clone(),
            failures: failures.clone(),
            watch: watch.clone(),
            gauges,
            images: images.clone(),
            hypervisor: hypervisor.clone(),
            metrics,
            settings: settings.clone(),
        }));
        let activity = Activity::new(
            records.clone(),
            slots.clone(),
            uses.clone(),
            lifecycle.clone(),
        );
        let reconcile = Reconcile::new(ReconcileDeps {
            records: records.clone(),
            slots: slots.clone(),
            host: bring_up,
            lifecycle: lifecycle.clone(),
            failures,
            watch: watch.clone(),
            images: images.clone(),
            hypervisor: hypervisor.clone(),
            netlink,
            settings: settings.clone(),
        });
        let upkeep = Upkeep::new(records.clone(), lifecycle.clone(), events, settings.clone());
        let logcap = LogCap::new(records.clone(), hypervisor, settings.clone());
        Arc::new(VmManager {
            settings,
            records,
            slots,
            uses,
            lifecycle,
            activity,
            watch,
            reconcile,
            upkeep,
            images,
            logcap,
        })
    }

    pub fn settings(&self) -> &VmSettings {
        &self.settings
    }

    pub fn ip_pool_size(&self) -> u64 {
        self.settings.limits.pool_size()
    }

    pub async fn list(&self, filter: VmFilter) -> Result<Vec<Vm>, VmError> {
        self.records.list(filter).await
    }

    /// A page of the VMs that match `filter`, in id order, after the VM id `cursor`.
    pub async fn list_page(
        &self,
        filter: VmFilter,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<VmPage, VmError> {
        self.records.list_page(filter, cursor, limit).await
    }

    pub async fn get(&self, id: &str) -> Result<Vm, VmError> {
        self.records.get(id).await
    }

    /// The user's current VM: the live one, else the most recently created.
    pub async fn user_vm(&self, user_id: &str) -> Result<Vm, VmError> {
        self.records.user_vm(user_id).await
    }

    /// Records that the VM (or the web backend on its behalf) saw it alive.
    pub async fn heartbeat(&self, id: &str) -> Result<Vm, VmError> {
        self.records.heartbeat(id).await
    }

    /// Writes a VM record as it is; tests and the benchmark use it to set up VMs.
    pub async fn insert(&self, vm: Vm) -> Result<(), VmError> {
        self.records.insert(vm).await
    }

    /// Creates the user's VM and waits for its agent; a user in a crash loop is refused.
    pub async fn create(self: &Arc<Self>, user_id: &str) -> Result<Vm, VmError> {
        self.lifecycle.create(user_id).await
    }

    /// Saves the VM to disk and stops its process. Its address stays leased.
    pub async fn hibernate(self: &Arc<Self>, vm_id: &str) -> Result<Vm, VmError> {
        self.lifecycle.hibernate(vm_id).await
    }

    /// Starts the VM from its hibernation image.
    pub async fn resume(self: &Arc<Self>, vm_id: &str) -> Result<Vm, VmError> {
        self.lifecycle.resume(vm_id).await
    }

    /// Stops the VM's process if any, removes its tap and directory, and releases its address.
    pub async fn destroy(self: &Arc<Self>, vm_id: &str) -> Result<Vm, VmError> {
        self.lifecycle.destroy(vm_id).await
    }

    /// The connected agent of a running VM, reconnecting if the connection dropped.
    pub async fn agent(&self, vm_id: &str) -> Result<Arc<AgentClient>, VmError> {
        self.slots.agent(vm_id).await
    }

    /// Records that a person used the VM now.
    pub fn touch(&self, vm_id: &str) {
        self.uses.touch(vm_id);
    }

    /// How long since the VM was last used (since the daemon started, if not since).
    pub fn idle_for(&self, vm_id: &str) -> Duration {
        self.uses.idle_for(vm_id)
    }

    /// The user's VM, running: resumed if hibernated, created if there is none; waits while
    /// another operation owns it.
    pub async fn ensure_running(
        self: &Arc<Self>,
        user_id: &str,
        progress: impl Fn(VmStep),
    ) -> Result<Vm, VmError> {
        self.activity.ensure_running(user_id, progress).await
    }

    /// Runs `argv` in the VM and collects its output, stopping it at `timeout`.
    pub async fn exec(
        self: &Arc<Self>,
        vm_id: &str,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecResult, VmError> {
        self.activity.exec(vm_id, argv, timeout).await
    }

    /// Hibernates the VM if it still runs, has been idle for `idle_after`, and `busy` says no
    /// prompt or login is using it. `None` when it was left running.
    pub async fn hibernate_if_idle(
        self: &Arc<Self>,
        vm_id: &str,
        idle_after: Duration,
        busy: impl Fn() -> bool,
    ) -> Result<Option<Vm>, VmError> {
        self.activity
            .hibernate_if_idle(vm_id, idle_after, busy)
            .await
    }

    /// Marks failed every running VM whose process has gone, or whose agent has missed
    /// `missed_limit` health checks in a row.
    pub async fn fail_unhealthy(
        self: &Arc<Self>,
        missed_limit: u32,
    ) -> Result<HealthSweep, VmError> {
        self.watch.fail_unhealthy(missed_limit).await
    }

    /// Polls every running VM's agent until `cancel`.
    pub async fn poll_health(self: Arc<Self>, cancel: CancellationToken) {
        self.watch.clone().poll_health(cancel).await
    }

    /// Brings the store and the host into agreement. `progress` receives one line per step,
    /// for systemd's `STATUS=`.
    pub async fn reconcile(
        self: &Arc<Self>,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ReconcileReport, VmError> {
        self.reconcile.reconcile(progress).await
    }

    /// Removes the taps, directories, processes and leases no live VM owns.
    pub async fn sweep_orphans(&self) -> Result<OrphanReport, VmError> {
        self.reconcile.sweep_orphans().await
    }

    /// The last `lines` lines of the VM's console log (empty if it has none yet).
    pub async fn console_tail(&self, vm_id: &str, lines: usize) -> Result<Vec<String>, VmError> {
        self.upkeep.console_tail(vm_id, lines).await
    }

    /// Destroys every VM with no activity (heartbeat, status change) for `days` days.
    pub async fn destroy_inactive(self: &Arc<Self>, days: u32) -> Result<Vec<Vm>, VmError> {
        self.upkeep.destroy_inactive(days).await
    }

    /// Removes the guest image versions that neither the configuration, the golden snapshot nor
    /// a live VM uses (see [`super::images`]).
    pub async fn sweep_images(&self) -> Result<Vec<std::path::PathBuf>, VmError> {
        self.images.sweep().await
    }

    /// Trims every live VM's growing files until `cancel`.
    pub async fn cap_logs(self: Arc<Self>, cancel: CancellationToken) {
        self.logcap.run(cancel).await
    }

    /// One pass of [`VmManager::cap_logs`]; returns how many files were trimmed.
    pub async fn cap_logs_once(&self) -> Result<usize, VmError> {
        self.logcap.once().await
    }
}
