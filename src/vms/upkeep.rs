//! Operator-facing VM work: the console tail for diagnostics, the cleanup of inactive VMs, and
//! the removal of guest image versions nothing uses any more.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{VmError, VmFilter, VmManager};
use crate::events::{Channel, HubEvent};
use crate::model::{Vm, VmStatus, now_ms};

/// The most console lines one diagnostics request returns.
pub const MAX_DIAGNOSTIC_LINES: usize = 2000;
/// Only the end of the console log is read, however large the file has grown.
const CONSOLE_TAIL_BYTES: u64 = 256 * 1024;
const DAY_MS: i64 = 24 * 3600 * 1000;

impl VmManager {
    /// The last `lines` lines of the VM's console log (empty if it has none yet).
    pub async fn console_tail(&self, vm_id: &str, lines: usize) -> Result<Vec<String>, VmError> {
        let lines = lines.min(MAX_DIAGNOSTIC_LINES);
        let path = self.dir_of(vm_id).join("console.log");
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
    pub async fn destroy_inactive(self: &Arc<Self>, days: u32) -> Result<Vec<Vm>, VmError> {
        let cutoff = now_ms() - i64::from(days) * DAY_MS;
        let stale: Vec<Vm> = self
            .list(VmFilter::default())
            .await?
            .into_iter()
            .filter(|vm| vm.status != VmStatus::Destroyed)
            .filter(|vm| vm.last_heartbeat_ms.unwrap_or(0).max(vm.updated_at_ms) < cutoff)
            .collect();
        let mut destroyed = Vec::new();
        for vm in stale {
            match self.destroy(&vm.id).await {
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

    /// Removes the guest image versions that neither the configuration, the golden snapshot nor
    /// a live VM uses (see [`super::images`]). Returns what it removed; a failure is logged and
    /// left for the next sweep.
    pub async fn sweep_images(&self) -> Result<Vec<std::path::PathBuf>, VmError> {
        let mut in_use: Vec<_> = self
            .list(VmFilter::default())
            .await?
            .into_iter()
            .filter(Vm::is_live)
            .filter_map(|vm| vm.image)
            .collect();
        in_use.extend(
            self.settings
                .golden
                .as_ref()
                .and_then(|golden| golden.meta.image.clone()),
        );
        // Resolving the configured links and listing the versions read the disk.
        let settings = self.settings.clone();
        let unused = tokio::task::spawn_blocking(move || match settings.image_files() {
            Ok(configured) => super::images::unused(&configured, &in_use),
            Err(_) => Vec::new(),
        })
        .await
        .map_err(|e| VmError::Corrupt(format!("the image sweep panicked: {e}")))?;
        let mut removed = Vec::new();
        for dir in unused {
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {
                    tracing::info!(image = %dir.display(), "removed a guest image no VM uses");
                    removed.push(dir);
                }
                Err(e) => {
                    tracing::warn!(image = %dir.display(), error = %e, "cannot remove an unused guest image")
                }
            }
        }
        Ok(removed)
    }
}
