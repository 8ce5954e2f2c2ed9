//! The hypervisors' confinement: the user QEMU drops to, and the Firecracker jailer.

use std::os::unix::fs::MetadataExt;

use super::{Check, Level, check};
use crate::config::Config;
use crate::vmm::HypervisorChoice;

pub fn checks(config: &Config) -> Vec<Check> {
    vec![qemu_user(config), jailer(config)]
}

fn qemu_user(config: &Config) -> Check {
    let Some(user) = &config.hypervisor.qemu_user else {
        return check(
            "QEMU user",
            Level::Warn,
            "qemu_user = \"root\": QEMU keeps root; a guest that escapes it owns the host",
        );
    };
    match nix::unistd::User::from_name(user) {
        Ok(Some(found)) if found.uid.is_root() => check(
            "QEMU user",
            Level::Fail,
            format!("{user} has uid 0: QEMU would keep root"),
        ),
        Ok(Some(found)) => check(
            "QEMU user",
            Level::Ok,
            format!("QEMU runs as {user} (uid {}), sandboxed", found.uid),
        ),
        _ => check(
            "QEMU user",
            // Only QEMU needs it; on a Firecracker host it is a warning.
            if config.hypervisor.choice == HypervisorChoice::Firecracker {
                Level::Warn
            } else {
                Level::Fail
            },
            format!(
                "no user {user}: QEMU cannot start (useradd --system --no-create-home \
                 --shell /usr/sbin/nologin {user}, or set qemu_user)"
            ),
        ),
    }
}

/// Whether `serve` would pick Firecracker (see `daemon::hypervisor`).
fn firecracker_runs(config: &Config) -> bool {
    match config.hypervisor.choice {
        HypervisorChoice::Firecracker => true,
        HypervisorChoice::Qemu => false,
        HypervisorChoice::Auto => {
            crate::daemon::hypervisor::firecracker_binary(&config.hypervisor).is_some()
                && std::path::Path::new("/dev/kvm").exists()
        }
    }
}

fn jailer(config: &Config) -> Check {
    let Some(jailer) = &config.hypervisor.jailer else {
        let level = if firecracker_runs(config) {
            Level::Warn
        } else {
            Level::Ok
        };
        return check(
            "jailer",
            level,
            "jailer_binary unset: Firecracker would run as root, unjailed",
        );
    };
    let mut problems = Vec::new();
    match std::fs::metadata(&jailer.binary) {
        Ok(meta) if meta.is_file() && meta.mode() & 0o111 != 0 => {}
        Ok(_) => problems.push(format!("{} is not executable", jailer.binary.display())),
        Err(e) => problems.push(format!("{}: {e}", jailer.binary.display())),
    }
    // The jail hard-links the VM's disks, so it must be on the data directory's filesystem.
    match (
        std::fs::metadata(&jailer.chroot_base),
        std::fs::metadata(&config.data_dir),
    ) {
        (Err(e), _) => problems.push(format!("chroot base {}: {e}", jailer.chroot_base.display())),
        (Ok(base), Ok(data)) if base.dev() != data.dev() => problems.push(format!(
            "chroot base {} is not on the filesystem of {} (disks are hard-linked into jails)",
            jailer.chroot_base.display(),
            config.data_dir.display()
        )),
        _ => {}
    }
    if let Some(parent) = &jailer.parent_cgroup {
        let path = std::path::Path::new("/sys/fs/cgroup").join(parent);
        if !path.is_dir() {
            problems.push(format!("parent cgroup {} does not exist", path.display()));
        }
    }
    if problems.is_empty() {
        check(
            "jailer",
            Level::Ok,
            format!(
                "{} as uid {} gid {}, jails in {}",
                jailer.binary.display(),
                jailer.uid,
                jailer.gid,
                jailer.chroot_base.display()
            ),
        )
    } else {
        let level = if firecracker_runs(config) {
            Level::Fail
        } else {
            Level::Warn
        };
        check("jailer", level, problems.join("; "))
    }
}

#[cfg(test)]
#[path = "confinement_tests.rs"]
mod tests;
