//! Real guests on this host: the test image, a private network namespace with a bridge, and a
//! VM spec for the QEMU backend under TCG.

use std::path::{Path, PathBuf};
use std::process::Command;

use master_controller::vmm::{DiskSpec, NetSpec, VmSpec};

pub const BRIDGE: &str = "mcbr0";
pub const BRIDGE_ADDR: &str = "10.213.0.1";
pub const BRIDGE_CIDR: &str = "10.213.0.1/24";

/// Where the test image is: `MC_TEST_IMAGE_DIR`, else `image/out/test` in the repository.
pub fn image_dir() -> PathBuf {
    std::env::var_os("MC_TEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("image/out/test"))
}

/// The unprivileged user QEMU runs as in tests (the appliance creates `mc-vmm`).
pub const TEST_QEMU_USER: &str = "nobody";

/// The daemon settings that boot the test image under QEMU/TCG, small, on `bridge` with the
/// address `gateway`/24; a binary adds its own on top.
pub fn guest_daemon_env(bridge: &str, gateway: &str) -> Vec<(&'static str, String)> {
    let image = image_dir();
    vec![
        ("MC_HYPERVISOR", "qemu".into()),
        ("MC_QEMU_ACCEL", "tcg".into()),
        ("MC_QEMU_USER", TEST_QEMU_USER.into()),
        ("GOLDEN_KERNEL", image.join("vmlinux").display().to_string()),
        (
            "MC_INITRD",
            image.join("initramfs.cpio.gz").display().to_string(),
        ),
        ("MC_BRIDGE", bridge.into()),
        ("MC_BRIDGE_CIDR", format!("{gateway}/24")),
        ("MC_VM_VCPUS", "1".into()),
        ("MC_VM_MEMORY_MIB", "256".into()),
        ("MC_VM_DATA_DISK_MIB", "64".into()),
        ("MC_VM_AGENT_TIMEOUT_SECS", "120".into()),
        // The busybox test image has no unprivileged user; its CLIs (scripts) run as root.
        ("MC_CLI_HOME", "/root".into()),
        ("MC_CLI_USER", "root".into()),
    ]
}

/// The daemon settings that run VMs of the golden image in `image` (a version directory, or its
/// `current` link) under QEMU/TCG on `bridge` with the address `gateway`/24. Node.js CLIs want
/// room, and two vCPUs use both host cores under TCG.
pub fn golden_daemon_env(image: &Path, bridge: &str, gateway: &str) -> Vec<(&'static str, String)> {
    let file = |name: &str| image.join(name).display().to_string();
    vec![
        ("MC_HYPERVISOR", "qemu".into()),
        ("MC_QEMU_ACCEL", "tcg".into()),
        ("MC_QEMU_USER", TEST_QEMU_USER.into()),
        ("GOLDEN_KERNEL", file("vmlinux")),
        ("MC_INITRD", file("initramfs.cpio.gz")),
        ("GOLDEN_ROOTFS", file("rootfs.ext4")),
        ("MC_BRIDGE", bridge.into()),
        ("MC_BRIDGE_CIDR", format!("{gateway}/24")),
        ("MC_VM_VCPUS", "2".into()),
        ("MC_VM_MEMORY_MIB", "1024".into()),
        ("MC_VM_DATA_DISK_MIB", "2048".into()),
        ("MC_VM_AGENT_TIMEOUT_SECS", "300".into()),
        ("MC_TASKS_ENABLED", "false".into()),
    ]
}

/// Why real guests cannot run here, if they cannot.
pub fn missing_prerequisite() -> Option<String> {
    let image = image_dir();
    if !image.join("vmlinux").is_file() || !image.join("initramfs.cpio.gz").is_file() {
        return Some(format!(
            "no test image in {} (build it with image/build-test-image.sh)",
            image.display()
        ));
    }
    missing_host_prerequisite()
}

/// Why no guest can run on this host, if none can: QEMU and root.
fn missing_host_prerequisite() -> Option<String> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some(
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into(),
        );
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("real-guest tests need root for network namespaces and taps".into());
    }
    None
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {} failed", args.join(" "));
}

/// Why golden-image guests cannot run here, if they cannot: the test image's prerequisites,
/// and the base rootfs that `image/build-golden.sh` caches (the tests build their own image
/// versions from it).
pub fn missing_golden_prerequisite() -> Option<String> {
    if let Some(reason) = missing_host_prerequisite() {
        return Some(reason);
    }
    let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let cache = var("MC_GOLDEN_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("master-controller/golden")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/master-controller/golden")))?;
    let built = std::fs::read_dir(&cache).ok().is_some_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with("rootfs-") && name.ends_with(".ext4")
        })
    });
    if !built {
        return Some(format!(
            "no golden base rootfs in {} (build it with image/build-golden.sh)",
            cache.display()
        ));
    }
    None
}

/// Moves this process into a network namespace of its own (it disappears with the process) and
/// creates the bridge there. Must run before any other thread starts, so that every thread and
/// every child inherits the namespace.
pub fn enter_private_network() {
    enter_private_namespace();
    ip(&["link", "add", BRIDGE, "type", "bridge"]);
    // A bridge without an address of its own takes the lowest port MAC, so it would change when
    // taps come and go, and guests would keep sending to the stale gateway MAC.
    ip(&["link", "set", BRIDGE, "address", "02:6d:63:00:00:01"]);
    ip(&["addr", "add", BRIDGE_CIDR, "dev", BRIDGE]);
    ip(&["link", "set", BRIDGE, "up"]);
}

/// Moves this process into a network namespace of its own with only loopback up. Must run
/// before any other thread starts.
pub fn enter_private_namespace() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    ip(&["link", "set", "lo", "up"]);
}

/// Creates a tap on the bridge.
pub fn add_tap(name: &str) {
    ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
    ip(&["link", "set", name, "master", BRIDGE, "up"]);
}

pub fn remove_tap(name: &str) {
    let _ = Command::new("ip").args(["link", "del", name]).status();
}

/// A spec for the test image with a data disk and a NIC on `tap`.
pub fn test_spec(dir: &Path, tap: &str, data_disk: &Path) -> VmSpec {
    let image = image_dir();
    VmSpec {
        vm_id: "test-vm".into(),
        dir: dir.to_path_buf(),
        vcpus: 1,
        memory_mib: 256,
        kernel: image.join("vmlinux"),
        initrd: Some(image.join("initramfs.cpio.gz")),
        boot_args: "mc.hostname=guest-one".into(),
        disks: vec![DiskSpec {
            id: "data".into(),
            path: data_disk.to_path_buf(),
            read_only: false,
            root: false,
        }],
        net: Some(NetSpec {
            tap: tap.to_string(),
            mac: "06:00:0a:d5:00:02".into(),
        }),
        agent_token: "guesttesttoken0123456789".into(),
    }
}

/// Runs an nftables script in this process's namespace.
pub fn nft(script: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write the script");
    assert!(child.wait().expect("nft").success(), "nft: {script}");
}

/// The daemon's binding of `tap` to its VM's addresses as `nft` lists it (empty: none).
pub fn tap_binding(tap: &str) -> String {
    let output = Command::new("nft")
        .args(["list", "chain", "netdev", "master_controller_taps", tap])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&output.stdout).to_string()
}
