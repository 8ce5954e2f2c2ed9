//! Operator-facing VM work: the console tail for diagnostics and the cleanup of inactive VMs.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::lifecycle::Lifecycle;
use super::records::Records;
use super::{VmError, VmFilter, VmSettings};
use crate::events::{Channel, EventHub, HubEvent};
use crate::model::{Vm, VmStatus, now_ms};

/// The most console lines one diagnostics request returns.
pub const MAX_DIAGNOSTIC_LINES: usize = 2000;
/// Only the end of the console log is read, however large the file has grown.
const CONSOLE_TAIL_BYTES: u64 = 256 * 1024;
const DAY_MS: i64 = 24 * 3600 * 1000;

pub(super) struct Upkeep {
    records: Arc<Records>,
    lifecycle: Arc<Lifecycle>,
    events: EventHub,
    settings: Arc<VmSettings>,
}

impl Upkeep {
    pub(super) fn new(
        records: Arc<Records>,
        lifecycle: Arc<Lifecycle>,
        events: EventHub,
        settings: Arc<VmSettings>,
    ) -> Upkeep {
        Upkeep {
            records,
            lifecycle,
            events,
            settings,
        }
    }

    /// The last `lines` lines of the VM's console log (empty if it has none yet).
    pub(super) async fn console_tail(
        &self,
        vm_id: &str,
        lines: usize,
    ) -> Result<Vec<String>, VmError> {
        let lines = lines.min(MAX_DIAGNOSTIC_LINES);
        let path = self.settings.dir_of(vm_id).join("console.log");
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(VmError::Corrupt(format!("{}: {e}", path.display()))),
        };
        let io = |e: std::io::Error| VmError::Corrupt(format!("{}: {e}", path.display()));
        let len = file.metadata().await.map_err(io)?.len();
        let start = len.saturating_sub(CONSOLE_TAIL_BYTES);
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.take(CONSOLE_TAIL_BYTES)
            .read_to_end(&mut bytes)
            .await
            .map_err(io)?;
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        Ok(all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|line| line.to_string())
            .collect())
    }

    /// Destroys every VM with no activity (heartbeat, status change) for `days` days.
    pub(super) async fn destroy_inactive(&self, days: u32) -> Result<Vec<Vm>, VmError> {
        let cutoff = now_ms() - i64::from(days) * DAY_MS;
        let stale: Vec<Vm> = self
            .records
            .list(VmFilter::default())
            .await?
            .into_iter()
            .filter(|vm| vm.status != VmStatus::Destroyed)
            .filter(|vm| vm.last_heartbeat_ms.unwrap_or(0).max(vm.updated_at_ms) < cutoff)
            .collect();
        let mut destroyed = Vec::new();
        for vm in stale {
            match self.lifecycle.destroy(&vm.id).await {
                Ok(vm) => {
                    self.events.publish(
                        &Channel::user(&vm.user_id),
                        HubEvent::VmDestroyedInactive {
                            vm_id: vm.id.clone(),
                            user_id: vm.user_id.clone(),
                            inactive_days: days,
                        },
                    );
                    destroyed.push(vm);
                }
                Err(e) => tracing::warn!(vm = %vm.id, error = %e, "cannot destroy an inactive VM"),
            }
        }
        Ok(destroyed)
    }
}
