//! The host's CPU, memory and disk, for the metrics samples and the system stats.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sysinfo::System;

use crate::metrics::HostReading;

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostStats {
    /// CPU use of all cores since the previous reading, in percent.
    pub cpu_percent: f64,
    pub cpus: usize,
    pub load1: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// The filesystem holding the data directory (state, VM disks, hibernation images).
    pub disk_path: String,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
}

/// Keeps one `System` between readings: CPU use is the difference between two of them, so
/// each reading covers the time since the one before (ten minutes for the samples).
pub struct HostProbe {
    system: Mutex<System>,
    /// The scrapes' own: a scrape reading from `system` would shorten the samples' CPU window.
    scrape_system: Mutex<System>,
    data_dir: PathBuf,
}

impl HostProbe {
    pub fn new(data_dir: PathBuf) -> Arc<HostProbe> {
        let baseline = || {
            let mut system = System::new();
            // The baseline the first reading's CPU use is measured from.
            system.refresh_cpu_usage();
            Mutex::new(system)
        };
        Arc::new(HostProbe {
            system: baseline(),
            scrape_system: baseline(),
            data_dir,
        })
    }

    /// Reads /proc and the filesystem on a blocking thread.
    pub async fn read(self: &Arc<Self>) -> HostStats {
        let probe = self.clone();
        tokio::task::spawn_blocking(move || probe.read_blocking(&probe.system))
            .await
            .unwrap_or_default()
    }

    /// A reading for the metrics scrape, whose CPU use covers the time since the previous scrape.
    pub async fn read_for_scrape(self: &Arc<Self>) -> HostReading {
        let probe = self.clone();
        let stats = tokio::task::spawn_blocking(move || probe.read_blocking(&probe.scrape_system))
            .await
            .unwrap_or_default();
        HostReading {
            cpu_percent: stats.cpu_percent,
            cpus: stats.cpus as u64,
            load1: stats.load1,
            memory_used_bytes: stats.memory_used_bytes,
            memory_total_bytes: stats.memory_total_bytes,
            disk_used_bytes: stats.disk_used_bytes,
            disk_total_bytes: stats.disk_total_bytes,
        }
    }

    fn read_blocking(&self, system: &Mutex<System>) -> HostStats {
        let mut system = system.lock().unwrap_or_else(|p| p.into_inner());
        system.refresh_cpu_usage();
        system.refresh_memory();
        let mut stats = HostStats {
            // A reading with no time elapsed since the last may not be a number; JSON has none.
            cpu_percent: Some(f64::from(system.global_cpu_usage()))
                .filter(|c| c.is_finite())
                .unwrap_or(0.0),
            cpus: system.cpus().len(),
            load1: System::load_average().one,
            memory_used_bytes: system.used_memory(),
            memory_total_bytes: system.total_memory(),
            disk_path: self.data_dir.display().to_string(),
            ..HostStats::default()
        };
        drop(system);
        // statvfs of the data directory itself names the filesystem it is on, which a match
        // of mount points by prefix can get wrong (bind mounts, nested mounts).
        match nix::sys::statvfs::statvfs(&self.data_dir) {
            Ok(fs) => {
                let unit = fs.fragment_size();
                stats.disk_total_bytes = fs.blocks().saturating_mul(unit);
                let free = fs.blocks_free().saturating_mul(unit);
                stats.disk_used_bytes = stats.disk_total_bytes.saturating_sub(free);
            }
            Err(e) => tracing::debug!(error = %e, "cannot stat the data directory's filesystem"),
        }
        stats
    }
}
