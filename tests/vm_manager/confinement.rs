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

    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
    for (name, value) in &world.daemon.env {
        if name == "PATH" {
            continue;
        }
        assert!(
            !environ.contains(&format!("{name}=")),
            "{name} reached the hypervisor:\n{environ}"
        );
        if value.len() >= 16 {
            assert!(
                !environ.contains(value.as_str()),
                "{name}'s value reached it"
            );
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
    assert!(
        !cmdline.contains(token),
        "the agent token is on QEMU's command line: {cmdline}"
    );
    let config = format!("{}qemu.cfg", world.vm_dir(vm_id));
    assert!(
        !std::path::Path::new(&config).exists(),
        "the kernel command line file outlived the start"
    );

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert_eq!(status_field(&status, "Seccomp"), ["2"], "no seccomp filter");
    for id in ["Uid", "Gid"] {
        let ids = status_field(&status, id);
        assert!(ids.iter().all(|i| *i != "0"), "{id}: {ids:?}");
    }
    assert_eq!(status_field(&status, "CapEff"), ["0000000000000000"]);
}
