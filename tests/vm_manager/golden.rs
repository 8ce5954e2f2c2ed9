//! Golden snapshots: build one with the script, create two clones, check each is its own VM.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use master_controller::guest::client::{AgentClient, AgentEndpoint, GuestError};
use serde_json::Value;

use crate::snapshots::mode;
use crate::support::daemon_proc::link_exists;
use crate::world::{GATEWAY, World, destroy, id_of};

pub async fn golden_snapshot_clones(world: &mut World) {
    world.daemon.stop().await;
    let golden_dir = world.daemon.data_dir.join("golden");
    let snapshot = golden_dir.join("state");
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/build-golden-snapshot.sh"
    ))
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .envs(&world.daemon.env)
    .env("MC_ENV_FILE", "/nonexistent")
    .env("MC_BIN", env!("CARGO_BIN_EXE_master-controller"))
    .env("GOLDEN_SNAPSHOT", &snapshot)
    .output()
    .expect("run build-golden-snapshot.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprint!(
        "{}",
        stdout
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    assert!(stdout.contains("waiting for the guest agent") && stdout.contains("done:"));
    let meta_file = golden_dir.join("state.json");
    let meta: Value =
        serde_json::from_slice(&std::fs::read(&meta_file).expect("golden description"))
            .expect("JSON");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&meta_file)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the description holds a token: root only");
    assert!(!link_exists("mcgolden"), "the build tap is removed");

    let golden = snapshot.display().to_string();
    world
        .daemon
        .start(&[("GOLDEN_SNAPSHOT", golden.as_str())])
        .await;
    let mut clones = Vec::new();
    for _ in 0..2 {
        let user = world.new_user().await;
        let started = Instant::now();
        let vm = world.create_vm(&user).await;
        eprintln!(
            "    create from the golden snapshot: {:.2} s",
            started.elapsed().as_secs_f64()
        );
        clones.push((user, vm));
    }
    let (a, b) = (&clones[0].1, &clones[1].1);
    assert_ne!(a["ipAddress"], b["ipAddress"]);
    let mut hostnames = BTreeSet::new();
    for (_, vm) in &clones {
        let id = id_of(vm);
        let ip = vm["ipAddress"].as_str().expect("ip");
        let (code, out) = world
            .exec(
                &id,
                "ip -4 -o addr show dev eth0; cat /sys/class/net/eth0/address; hostname",
            )
            .await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("{ip}/24")), "its own address: {out}");
        assert!(
            out.contains(vm["macAddress"].as_str().expect("mac")),
            "its own MAC: {out}"
        );
        hostnames.insert(out.lines().last().unwrap_or_default().to_string());
        let (code, out) = world.exec(&id, &format!("ping -c 1 -W 2 {GATEWAY}")).await;
        assert_eq!(code, 0, "usable: {out}");
    }
    assert_eq!(hostnames.len(), 2, "distinct hostnames: {hostnames:?}");

    // The agent serves one host connection at a time: with the daemon stopped, the golden
    // token must be refused; after the restart the daemon's own per-VM token still works.
    world.daemon.stop().await;
    let old_token = meta["agentToken"].as_str().expect("golden token");
    for (_, vm) in &clones {
        let socket = world
            .daemon
            .data_dir
            .join(format!("vms/{}/agent.sock", id_of(vm)));
        let refused = AgentClient::connect(
            &AgentEndpoint::Unix(socket),
            old_token,
            Duration::from_secs(10),
        )
        .await;
        assert!(
            matches!(refused, Err(GuestError::Refused(_))),
            "the golden token no longer opens a clone"
        );
    }
    world
        .daemon
        .start(&[("GOLDEN_SNAPSHOT", golden.as_str())])
        .await;
    for (_, vm) in &clones {
        let (code, out) = world.exec(&id_of(vm), "echo own-token").await;
        assert_eq!((code, out.trim()), (0, "own-token"));
    }
    clones.push(crash_after_the_commit(world, &snapshot).await);
    for (user, vm) in &clones {
        destroy(world, user).await;
        world.assert_gone(vm);
    }
    world.daemon.stop().await;
    world.daemon.start(&[]).await;
}

fn digest(path: &Path) -> String {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).expect("read");
    format!("{:x}", hasher.finalize())
}

/// A create from the golden snapshot that crashed right after its commit: the adopted VM has no
/// link to the golden files left, and its hibernation leaves them byte-identical. Returns the
/// VM, resumed, for the caller to destroy.
async fn crash_after_the_commit(world: &mut World, snapshot: &Path) -> (String, Value) {
    let golden = snapshot.display().to_string();
    let dir = snapshot.parent().expect("golden dir");
    let files = [
        snapshot.to_path_buf(),
        dir.join("state.data.ext4"),
        dir.join("state.json"),
    ];
    for file in &files[..2] {
        assert_eq!(mode(file), 0o400, "{} is read-only", file.display());
    }
    let before: Vec<String> = files.iter().map(|f| digest(f)).collect();
    let user = world.new_user().await;
    world.daemon.stop().await;
    world
        .daemon
        .start(&[
            ("GOLDEN_SNAPSHOT", golden.as_str()),
            ("MC_FAILPOINT", "vm.create.after_commit"),
        ])
        .await;
    world
        .daemon
        .call_expecting_crash("POST", &format!("/api/users/{user}/vm"))
        .await;
    world.daemon.wait_exit(Duration::from_secs(60)).await;
    world
        .daemon
        .start(&[("GOLDEN_SNAPSHOT", golden.as_str())])
        .await;
    let (_, vm) = world.user_vm(&user, "", "GET").await;
    assert_eq!(vm["status"], "running", "adopted: {vm:?}");
    let vm_dir = PathBuf::from(world.vm_dir(&id_of(&vm)));
    assert!(
        !vm_dir.join("snapshot").exists(),
        "links to the golden files were left in the running VM's snapshot directory"
    );
    let (status, body) = world.user_vm(&user, "hibernate", "POST").await;
    assert_eq!(status, 200, "{body:?}");
    let state = vm_dir.join("snapshot/state");
    assert!(std::fs::symlink_metadata(&state).expect("state").is_file());
    assert_eq!(mode(&state), 0o600);
    let after: Vec<String> = files.iter().map(|f| digest(f)).collect();
    assert_eq!(before, after, "the golden files changed");
    let (status, vm) = world.user_vm(&user, "resume", "POST").await;
    assert_eq!(status, 200, "{vm:?}");
    (user, vm)
}
