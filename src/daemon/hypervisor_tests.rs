//! The jailer setting, end to end up to the process: a fake jailer records what it is given.

use std::path::Path;

use crate::config::{Config, Settings};
use crate::vmm::{DiskSpec, VmSpec};

const TOKEN: &str = "agenttokenthatmuststayoffargv";

fn write_fake_jailer(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("jailer");
    let record = dir.join("record");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > {0}.env\nprintf '%s\\n' \"$@\" > {0}.args\nexit 7\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[tokio::test]
async fn the_jailer_setting_runs_firecracker_under_the_jailer_with_a_clean_environment() {
    let dir = tempfile::tempdir().unwrap();
    let jailer = write_fake_jailer(dir.path());
    let firecracker = dir.path().join("firecracker");
    std::fs::write(&firecracker, b"").unwrap();
    std::fs::write(dir.path().join("vmlinux"), b"kernel").unwrap();
    std::fs::write(dir.path().join("data.img"), b"data").unwrap();
    let me = nix::unistd::getuid().as_raw().max(1).to_string();
    let settings: Vec<(&str, String)> = vec![
        ("MC_ADMIN_TOKEN", "admin-token-for-jailer-test".into()),
        ("MC_HYPERVISOR", "firecracker".into()),
        ("MC_FIRECRACKER_BASE", firecracker.display().to_string()),
        ("MC_JAILER_BINARY", jailer.display().to_string()),
        ("MC_JAILER_UID", me.clone()),
        ("MC_JAILER_GID", me.clone()),
        (
            "MC_JAILER_CHROOT_BASE",
            dir.path().join("jails").display().to_string(),
        ),
        ("MC_JAILER_CGROUP", "mc-test".into()),
    ];
    let lookup = |name: &str| {
        settings
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    let config = Config::load(None, &lookup, Settings::default()).expect("config");
    let backend = super::hypervisor(&config.hypervisor, None).await;
    assert_eq!(backend.name(), "firecracker");
    let spec = VmSpec {
        vm_id: "vmjail".into(),
        dir: dir.path().join("vmjail"),
        vcpus: 1,
        memory_mib: 128,
        kernel: dir.path().join("vmlinux"),
        initrd: None,
        boot_args: String::new(),
        disks: vec![DiskSpec {
            id: "data".into(),
            path: dir.path().join("data.img"),
            read_only: false,
            root: false,
        }],
        net: None,
        agent_token: TOKEN.into(),
    };
    let error = backend
        .boot(&spec)
        .await
        .err()
        .expect("the fake jailer exits");
    assert!(error.to_string().contains("exit code 7"), "{error}");
    let args = std::fs::read_to_string(dir.path().join("record.args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    let after = |flag: &str| {
        let at = args
            .iter()
            .position(|a| *a == flag)
            .unwrap_or_else(|| panic!("{flag} in {args:?}"));
        args[at + 1]
    };
    assert_eq!(after("--exec-file"), firecracker.display().to_string());
    assert_eq!((after("--uid"), after("--gid")), (me.as_str(), me.as_str()));
    assert_eq!(
        after("--chroot-base-dir"),
        dir.path().join("jails").display().to_string()
    );
    assert_eq!(after("--parent-cgroup"), "mc-test");
    assert!(!args.iter().any(|a| a.contains(TOKEN)), "{args:?}");
    // Jailed, Firecracker writes its log and metrics as the jail's user.
    let root = dir.path().join("jails/firecracker/vmjail/root");
    for file in ["firecracker.log", "firecracker.metrics"] {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(root.join(file)).unwrap().uid();
        assert_eq!(owner.to_string(), me, "{file}");
    }
    // The jailer (and the Firecracker it execs) gets nothing of the daemon's environment.
    let env = std::fs::read_to_string(dir.path().join("record.env")).unwrap();
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    assert!(
        names
            .iter()
            .all(|n| ["PATH", "PWD", "SHLVL", "_"].contains(n)),
        "{env}"
    );
}
