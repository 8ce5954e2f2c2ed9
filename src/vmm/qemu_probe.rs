//! What the host offers QEMU, read at run time: the TSC frequency a TCG guest needs, and
//! whether guests really boot under KVM here.

use std::path::Path;

use super::Hypervisor;
use super::VmSpec;
use super::process::wait_exited;
use super::qemu::{Accel, QemuBackend, QemuConfig};

/// The host's TSC frequency in kHz. Under TCG the guest kernel otherwise calibrates it against
/// an emulated timer and hangs in about 40% of boots; it differs between hosts, so it is read
/// at run time.
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|line| line.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// Chooses the accelerator: KVM only if a guest actually boots under it. On hosts with a
/// paravirtual nested KVM, `/dev/kvm` exists but guests die before userspace, so its presence
/// proves nothing. The probe boots `probe` (kernel and initrd, no devices) under KVM and waits
/// for its agent.
pub async fn probe_accel(
    binary: &str,
    user: Option<String>,
    probe: &VmSpec,
    deadline: std::time::Duration,
) -> Accel {
    if !Path::new("/dev/kvm").exists() {
        return Accel::Tcg;
    }
    let backend = QemuBackend::new(QemuConfig {
        binary: binary.to_string(),
        accel: Accel::Kvm,
        user,
    });
    let Ok(mut vm) = backend.boot(probe).await else {
        return Accel::Tcg;
    };
    let answered = tokio::select! {
        client = crate::guest::client::AgentClient::connect(&vm.agent, &probe.agent_token, deadline) => client.is_ok(),
        _ = wait_exited(vm.exited.clone()) => false,
    };
    let _ = backend.kill(&mut vm).await;
    if answered { Accel::Kvm } else { Accel::Tcg }
}
