//! The golden image's cases: its snapshot, its writable root, the three real CLIs answering in
//! it, and clones of one golden snapshot that never share a filesystem.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::daemon_proc::{SERVICE_TOKEN, processes_naming};
use crate::support::vendor_oauth::{CODEX_HOST, USER_CODE, VendorOAuth};
use crate::world::{GATEWAY, PROVIDERS, World, build_image, id_of, sha256};

pub async fn golden_snapshot_builds(world: &mut World) {
    let started = Instant::now();
    let stdout = world.build_golden_snapshot();
    assert!(stdout.contains("waiting for the guest agent"), "{stdout}");
    eprintln!(
        "    golden snapshot built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let snapshot = world.golden_snapshot();
    let disk = snapshot.with_file_name("state.data.ext4");
    assert!(
        disk.is_file(),
        "the build VM's data disk is kept for its clones"
    );
    let meta: Value = serde_json::from_slice(
        &std::fs::read(snapshot.with_file_name("state.json")).expect("the description"),
    )
    .expect("JSON");
    assert_eq!(meta["dataDiskMib"], 2048, "{meta}");
    assert_eq!(
        meta["image"]["rootfs"],
        world.rootfs.display().to_string(),
        "the snapshot names the image version it booted, links resolved: {meta}"
    );
    world.start_daemon().await;
}

pub async fn the_root_is_writable_and_lands_on_the_data_disk(world: &mut World) {
    let user = world.new_user().await;
    let started = Instant::now();
    let vm = world.create_vm(&user).await;
    eprintln!(
        "    created from the golden snapshot in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let vm_id = id_of(&vm);
    let (code, out) = world
        .exec(
            &vm_id,
            "set -e; echo kept > /root/kept.txt; touch /etc/mc-written /usr/local/mc-written; \
             grep -c nameserver /etc/resolv.conf; \
             ls /run/mc/data/root/upper/etc/mc-written /run/mc/data/root/upper/root/kept.txt; \
             awk '$2 == \"/\" {print $3}' /proc/mounts; node --version; id -u dev",
        )
        .await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "1",
        "the agent wrote resolv.conf on the overlay: {out}"
    );
    assert_eq!(lines[3], "overlay", "{out}");
    assert!(lines[4].starts_with("v20."), "Node.js 20: {out}");
    assert_eq!(lines[5], "1000", "the unprivileged CLI user: {out}");
    world.cli_user = Some(user);
}

/// Copies a hibernated VM's data disk, replays its journal on the copy as a mount would, and
/// checks the copy with `e2fsck -fn`; returns the names in `root/upper/root` on it.
fn check_disk(disk: &Path, scratch: &Path) -> String {
    let copy = scratch.join("check.ext4");
    let status = Command::new("cp")
        .args(["--sparse=always"])
        .arg(disk)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    let replay = Command::new("e2fsck")
        .args(["-E", "journal_only", "-y"])
        .arg(&copy)
        .output()
        .expect("e2fsck");
    assert!(
        replay.status.code().unwrap_or(8) < 4,
        "journal replay: {}",
        String::from_utf8_lossy(&replay.stdout)
    );
    let check = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&copy)
        .output()
        .expect("e2fsck");
    assert_eq!(
        check.status.code(),
        Some(0),
        "e2fsck -fn {}: {}{}",
        disk.display(),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let listing = Command::new("debugfs")
        .args(["-R", "ls -p /root/upper/root"])
        .arg(&copy)
        .output()
        .expect("debugfs");
    let _ = std::fs::remove_file(&copy);
    String::from_utf8_lossy(&listing.stdout).to_string()
}

pub async fn clones_of_one_golden_snapshot_never_share_a_filesystem(world: &mut World) {
    let users = [world.new_user().await, world.new_user().await];
    let mut vms = Vec::new();
    for (n, user) in users.iter().enumerate() {
        let vm = world.create_vm(user).await;
        let id = id_of(&vm);
        let (code, out) = world
            .exec(
                &id,
                &format!("echo {n} > /root/clone-{n}.txt && sync && ls /root"),
            )
            .await;
        assert_eq!(code, 0, "{out}");
        vms.push(id);
    }
    for (n, id) in vms.iter().enumerate() {
        let other = 1 - n;
        let (_, out) = world.exec(id, "ls /root").await;
        assert!(out.contains(&format!("clone-{n}.txt")), "{out}");
        assert!(!out.contains(&format!("clone-{other}.txt")), "{out}");
    }
    for user in &users {
        world.user_vm(user, "hibernate", "POST").await;
    }
    let scratch = world.daemon.data_dir.clone();
    for (n, id) in vms.iter().enumerate() {
        let listing = check_disk(&world.data_disk(id), &scratch);
        assert!(listing.contains(&format!("clone-{n}.txt")), "{listing}");
        assert!(
            !listing.contains(&format!("clone-{}.txt", 1 - n)),
            "{listing}"
        );
    }
    for (n, user) in users.iter().enumerate() {
        world.user_vm(user, "resume", "POST").await;
        let (code, out) = world
            .exec(&vms[n], &format!("cat /root/clone-{n}.txt; ls /root"))
            .await;
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with(&format!("{n}\n")), "{out}");
        assert!(!out.contains(&format!("clone-{}.txt", 1 - n)), "{out}");
    }
    for (n, user) in users.iter().enumerate() {
        world.user_vm(user, "hibernate", "POST").await;
        check_disk(&world.data_disk(&vms[n]), &scratch);
        let destroyed = world.user_vm(user, "", "DELETE").await;
        assert_eq!(destroyed["status"], "destroyed");
        assert!(!world.data_disk(&vms[n]).exists());
    }
}

pub async fn the_shared_base_rootfs_is_unchanged(world: &mut World) {
    assert_eq!(sha256(&world.rootfs), world.rootfs_sha256);
}

/// The `-kernel` file of the QEMU process that runs the VM.
fn running_kernel(world: &World, vm_id: &str) -> PathBuf {
    let dir = world.daemon.data_dir.join(format!("vms/{vm_id}/"));
    let pids = processes_naming(&dir.display().to_string());
    assert_eq!(pids.len(), 1, "one QEMU for {vm_id}: {pids:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).expect("cmdline");
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).to_string())
        .collect();
    let at = args.iter().position(|a| a == "-kernel").expect("-kernel");
    PathBuf::from(&args[at + 1])
}

/// A new image version (a new agent build) and its golden snapshot arrive while a VM is
/// hibernated: that VM resumes on its old image, a new create gets the new one, and the old
/// image is removed once its last VM is destroyed.
pub async fn image_versions_roll_over(world: &mut World) {
    let old_user = world.new_user().await;
    let old_vm = id_of(&world.create_vm(&old_user).await);
    let old_image = running_kernel(world, &old_vm)
        .parent()
        .expect("images/<id>")
        .to_path_buf();
    world.user_vm(&old_user, "hibernate", "POST").await;

    // A new agent build: the same program with other bytes, so a new image version.
    let agent = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/agent/x86_64-unknown-linux-gnu/release/vm-agent");
    let new_agent = world.daemon.data_dir.join("vm-agent-next");
    let mut bytes = std::fs::read(&agent).expect("the agent the image was built with");
    bytes.extend_from_slice(b"next version");
    std::fs::write(&new_agent, bytes).expect("write the new agent");
    let (new_id, _) = build_image(&world.images, Some(&new_agent));
    let new_image = world.images.join("images").join(&new_id);
    assert_ne!(new_image, old_image, "a new agent is a new image version");
    world.daemon.stop().await;
    world.build_golden_snapshot();
    world.start_daemon().await;

    let resumed = world.user_vm(&old_user, "resume", "POST").await;
    assert_eq!(resumed["status"], "running", "{resumed}");
    assert_eq!(
        running_kernel(world, &old_vm).parent(),
        Some(old_image.as_path())
    );
    let (code, _) = world.exec(&old_vm, "true").await;
    assert_eq!(code, 0);

    let new_user = world.new_user().await;
    let new_vm = id_of(&world.create_vm(&new_user).await);
    assert_eq!(
        running_kernel(world, &new_vm).parent(),
        Some(new_image.as_path())
    );

    assert!(old_image.is_dir(), "still used by the resumed VM");
    world.user_vm(&old_user, "", "DELETE").await;
    assert!(!old_image.exists(), "the old image goes with its last VM");
    assert!(new_image.is_dir());
    world.user_vm(&new_user, "", "DELETE").await;
    assert!(new_image.is_dir(), "the configured image stays");
}

/// The login relay drives each real CLI's login inside a golden VM as far as the user's turn.
/// Claude Code and Gemini CLI print their authorize URL offline; Codex's device-code flow asks
/// the vendor for the code first, which the stood-in vendor answers over TLS, through the
/// CLIs' egress proxy, with a CA the guest trusts.
pub async fn each_login_reaches_the_users_turn(world: &mut World) {
    let stub_dir = world.daemon.data_dir.join("vendor-oauth");
    std::fs::create_dir_all(&stub_dir).expect("stub dir");
    let vendor = VendorOAuth::start("0.0.0.0:0", &stub_dir).await;
    let proxy = format!("http://{GATEWAY}:{}", vendor.addr.port());
    let golden = world.golden_snapshot().display().to_string();
    world.daemon.stop().await;
    world
        .daemon
        .start(&[
            ("GOLDEN_SNAPSHOT", golden.as_str()),
            ("MC_EGRESS_PROXY", proxy.as_str()),
        ])
        .await;
    let user = world.new_user().await;
    let vm = id_of(&world.create_vm(&user).await);
    let (code, out) = world
        .exec(
            &vm,
            &format!(
                "printf '%s\\n' '{}' > /usr/local/share/ca-certificates/mc-vendor-stub.crt && \
                 update-ca-certificates >/dev/null && echo trusted",
                vendor.ca_pem.trim()
            ),
        )
        .await;
    assert_eq!((code, out.trim()), (0, "trusted"));

    for provider in PROVIDERS {
        let started = Instant::now();
        let reply = world
            .daemon
            .call(
                "POST",
                "/api/auth/start",
                SERVICE_TOKEN,
                Some(json!({"userId": user, "provider": provider})),
            )
            .await;
        assert!(
            [200, 201, 202].contains(&reply.status),
            "{provider}: {:?}",
            reply.json
        );
        let id = reply.json["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        let session = loop {
            let now = world.daemon.auth_session(&id).await;
            if now["status"] == "awaiting_user" {
                break now;
            }
            assert!(
                now["status"] == "created" || now["status"] == "starting_vm",
                "{provider}: {now}\n{}",
                world.daemon.log_tail()
            );
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "{provider}: no awaiting_user: {now}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        eprintln!(
            "    {provider}: awaiting_user after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        match provider {
            "claude_code" => {
                let url = session["authUrl"].as_str().expect("authUrl");
                assert!(
                    url.starts_with("https://claude.com/cai/oauth/authorize?"),
                    "{url}"
                );
                assert!(url.contains("state="), "{url}");
            }
            "gemini_cli" => {
                let url = session["authUrl"].as_str().expect("authUrl");
                assert!(
                    url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?"),
                    "{url}"
                );
            }
            _ => {
                assert_eq!(session["deviceCode"], USER_CODE, "{session}");
                assert_eq!(
                    session["verificationUrl"], "https://auth.openai.com/codex/device",
                    "{session}"
                );
            }
        }
        let cancelled = world
            .daemon
            .call(
                "POST",
                &format!("/api/auth/session/{id}/cancel"),
                SERVICE_TOKEN,
                None,
            )
            .await;
        assert_eq!(cancelled.status, 200, "{:?}", cancelled.json);
    }
    assert!(
        vendor
            .seen()
            .contains(&format!("{CODEX_HOST} /api/accounts/deviceauth/usercode")),
        "{:?}",
        vendor.seen()
    );
    world.user_vm(&user, "", "DELETE").await;
}
