//! Choosing the hypervisor for `MC_HYPERVISOR` (here, not in `vmm`, because it reads the
//! configuration, which sits above the services): Firecracker in production, QEMU's microvm
//! where Firecracker cannot run (KVM when a guest really boots under it, else TCG).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::vmm::firecracker::{FirecrackerBackend, FirecrackerConfig};
use crate::vmm::qemu::{Accel, QemuBackend, QemuConfig, probe_accel};
use crate::vmm::{Hypervisor, VmSpec};
use crate::vmm::{HypervisorChoice, HypervisorSettings};

const PROBE_DEADLINE: Duration = Duration::from_secs(30);

/// The Firecracker binary: `FIRECRACKER_BASE` (the binary or the directory holding it), else
/// `firecracker` on the PATH.
pub fn firecracker_binary(settings: &HypervisorSettings) -> Option<PathBuf> {
    let candidate = match &settings.firecracker_base {
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
pub async fn hypervisor(
    settings: &HypervisorSettings,
    probe: Option<VmSpec>,
) -> Arc<dyn Hypervisor> {
    let firecracker = firecracker_binary(settings);
    let use_firecracker = match settings.choice {
        HypervisorChoice::Firecracker => true,
        HypervisorChoice::Qemu => false,
        HypervisorChoice::Auto => firecracker.is_some() && Path::new("/dev/kvm").exists(),
    };
    if use_firecracker {
        return Arc::new(FirecrackerBackend::new(FirecrackerConfig {
            binary: firecracker.unwrap_or_else(|| PathBuf::from("firecracker")),
            jailer: settings.jailer.clone(),
        }));
    }
    let accel = match (settings.qemu_accel, probe) {
        (Some(accel), _) => accel,
        (None, Some(probe)) => {
            probe_accel(
                &settings.qemu_binary,
                settings.qemu_user.clone(),
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
        binary: settings.qemu_binary.clone(),
        accel,
        user: settings.qemu_user.clone(),
    }))
}

#[cfg(test)]
#[path = "hypervisor_tests.rs"]
mod tests;
