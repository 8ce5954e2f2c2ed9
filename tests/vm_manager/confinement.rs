//! Issue 15 item 3, the attacks on a running hypervisor from the host: read its environment
//! for the daemon's secrets, read its command line for the agent's token, and find it
//! unconfined (root, no seccomp).

use crate::support::daemon_proc::processes_naming;
use crate::world::World;

/// A secret the daemon holds only in its environment, as if from an env file.
pub const CANARY_NAME: &str = "SUPABASE_SERVICE_KEY";
pub const CANARY_VALUE: &str = "canary-service-key-0123456789abcdef";

fn status_field<'a>(status: &'a str, name: &str) -> Vec<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status"))
        .split_whitespace()
        .collect()
}

/// The VM's QEMU has none of the daemon's environment, no agent token in its arguments, runs
/// under seccomp, and not as root.
pub async fn assert_confined(world: &World, vm_id: &str) {
    let pids = processes_naming(&world.vm_dir(vm_id));
    assert_eq!(pids.len(), 1, "one hypervisor for {vm_id}: {pids:?}");
    let pid = pids[0];

    // Every finding is collected, so that one run against an unconfined QEMU shows them all.
    let mut found = Vec::new();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
    for (name, value) in &world.daemon.env {
        if name == "PATH" {
            continue;
        }
        if environ.contains(&format!("{name}=")) {
            found.push(format!("{name} reached the hypervisor's environment"));
        }
        if value.len() >= 16 && environ.contains(value.as_str()) {
            found.push(format!(
                "{name}'s value reached the hypervisor's environment"
            ));
        }
    }

    // The guest knows its token from its kernel command line; the host's `ps` must not.
    let (code, guest_cmdline) = world.exec(vm_id, "cat /proc/cmdline").await;
    assert_eq!(code, 0, "{guest_cmdline}");
    let token = guest_cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("mc.token="))
        .expect("the guest got its token");
    assert!(token.len() >= 16, "{token:?}");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if cmdline.contains(token) {
        found.push(format!(
            "the agent token is on QEMU's command line: {cmdline}"
        ));
    }
    let config = format!("{}qemu.cfg", world.vm_dir(vm_id));
    if std::path::Path::new(&config).exists() {
        found.push("the kernel command line file outlived the start".into());
    }

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    if status_field(&status, "Seccomp") != ["2"] {
        found.push("no seccomp filter".into());
    }
    for id in ["Uid", "Gid"] {
        let ids = status_field(&status, id);
        if ids.contains(&"0") {
            found.push(format!("{id}: {ids:?}"));
        }
    }
    if status_field(&status, "CapEff") != ["0000000000000000"] {
        found.push(format!(
            "capabilities {:?}",
            status_field(&status, "CapEff")
        ));
    }
    assert!(
        found.is_empty(),
        "QEMU {pid} is not confined:\n{}",
        found.join("\n")
    );
}
