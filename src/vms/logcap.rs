//! The job that keeps each VM's growing files (console, hypervisor log and metrics) under
//! `vm_log_max_bytes` while the VM runs (see [`crate::vmm::logcap`]).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::records::Records;
use super::{VmError, VmFilter, VmSettings, ledger};
use crate::model::VmStatus;
use crate::vmm::Hypervisor;
use crate::vmm::logcap::{self, Trimmed};

/// How often the files are measured. A guest prints at most a few MB/s through an emulated
/// UART, so a file exceeds its cap by at most a few seconds' output between two checks.
pub const LOG_CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub(super) struct LogCap {
    records: Arc<Records>,
    hypervisor: Arc<dyn Hypervisor>,
    settings: Arc<VmSettings>,
}

impl LogCap {
    pub(super) fn new(
        records: Arc<Records>,
        hypervisor: Arc<dyn Hypervisor>,
        settings: Arc<VmSettings>,
    ) -> LogCap {
        LogCap {
            records,
            hypervisor,
            settings,
        }
    }

    /// Trims every live VM's growing files once per [`LOG_CHECK_INTERVAL`] until `cancel`.
    pub(super) async fn run(&self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(LOG_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.once().await {
                tracing::warn!(error = %e, "cannot list VMs to cap their logs");
            }
        }
    }

    /// One pass over the VMs whose process may be writing (a resume runs while the record still
    /// says hibernated). Returns how many files were trimmed.
    pub(super) async fn once(&self) -> Result<usize, VmError> {
        let max = self.settings.log_max_bytes;
        let mut files = Vec::new();
        for vm in self.records.list(VmFilter::default()).await? {
            if !(ledger::holds_process(vm.status) || vm.status == VmStatus::Hibernated) {
                continue;
            }
            let Ok(spec) = self.settings.spec_of(&vm) else {
                continue;
            };
            files.extend(self.hypervisor.growing_files(&spec));
        }
        let trimmed = tokio::task::spawn_blocking(move || {
            let mut trimmed = 0;
            for file in files {
                match logcap::trim(&file, max) {
                    Ok(Trimmed::Within) => {}
                    Ok(Trimmed::Cut(bytes)) => {
                        tracing::debug!(file = %file.display(), bytes, "trimmed a VM's log");
                        trimmed += 1;
                    }
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "cannot trim a VM's log")
                    }
                }
            }
            trimmed
        })
        .await
        .unwrap_or(0);
        Ok(trimmed)
    }
}
