//! Choosing the hypervisor for `MC_HYPERVISOR` (here, not in `vmm`, because it reads the
//! configuration, which sits above the services): Firecracker in production, QEMU's microvm
//! where Firecracker cannot run (KVM when a guest really boots under it, else TCG).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, HypervisorChoice};
use crate::vmm::firecracker::{FirecrackerBackend, FirecrackerConfig};
use crate::vmm::qemu::{Accel, QemuBackend, QemuConfig, probe_accel};
use crate::vmm::{Hypervisor, VmSpec};

const PROBE_DEADLINE: Duration = Duration::from_secs(30);

/// The Firecracker binary: `FIRECRACKER_BASE` (the binary or the directory holding it), else
/// `firecracker` on the PATH.
pub fn firecracker_binary(config: &Config) -> Option<PathBuf> {
    let candidate = match &config.firecracker_base {
        Some(base) if base.is_dir() => base.join("firecracker"),
        Some(base) => base.clone(),
        None => {
            let paths = std::env::var_os("PATH")?;
            std::env::split_paths(&paths)
                .map(|p| p.join("firecracker"))
                .find(|p| p.is_file())?
        }
    };
    candidate.is_file().then_some(candidate)
}

/// Builds the configured backend. `Auto` takes Firecracker when its binary and `/dev/kvm` are
/// both present.
pub async fn hypervisor(config: &Config, probe: Option<VmSpec>) -> Arc<dyn Hypervisor> {
    let firecracker = firecracker_binary(config);
    let use_firecracker = match config.hypervisor {
        HypervisorChoice::Firecracker => true,
        HypervisorChoice::Qemu => false,
        HypervisorChoice::Auto => firecracker.is_some() && Path::new("/dev/kvm").exists(),
    };
    if use_firecracker {
        return Arc::new(FirecrackerBackend::new(FirecrackerConfig {
            binary: firecracker.unwrap_or_else(|| PathBuf::from("firecracker")),
            jailer: config.jailer.clone(),
        }));
    }
    let accel = match (config.qemu_accel, probe) {
        (Some(accel), _) => accel,
        (None, Some(probe)) => {
            probe_accel(
                &config.qemu_binary,
                config.qemu_user.clone(),
                &probe,
                PROBE_DEADLINE,
            )
            .await
        }
        (None, None) if Path::new("/dev/kvm").exists() => Accel::Kvm,
        (None, None) => Accel::Tcg,
    };
    tracing::info!(?accel, "VMs run on QEMU microvm");
    Arc::new(QemuBackend::new(QemuConfig {
        binary: config.qemu_binary.clone(),
        accel,
        user: config.qemu_user.clone(),
    }))
}

#[cfg(test)]
#[path = "hypervisor_tests.rs"]
mod tests;
