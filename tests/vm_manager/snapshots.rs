//! A guest that floods its console, and the crash windows around hibernation images.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::daemon_proc::processes_naming;
use crate::world::{World, destroy, id_of};

/// The cap the flood case configures, and what the file may exceed it by between two checks of
/// the daemon's trim job (a second's output under TCG is about 0.5 MB; four times that, for a
/// noisy host).
const CAP: u64 = 256 * 1024;
const SLACK: u64 = 2 << 20;
/// What the guest writes: 32 times the cap, more than the cap and the slack together.
const FLOOD: u64 = 8 << 20;

pub fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

pub async fn a_console_flood_stays_capped(world: &mut World) {
    world.daemon.stop().await;
    let cap = CAP.to_string();
    world
        .daemon
        .start(&[("MC_VM_LOG_MAX_BYTES", cap.as_str())])
        .await;
    let user = world.new_user().await;
    let vm = world.create_vm(&user).await;
    let id = id_of(&vm);
    let console = PathBuf::from(world.vm_dir(&id)).join("console.log");

    // Sampled apart from the exec calls, which wait on the busy guest.
    let largest = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (largest, done, console) = (largest.clone(), done.clone(), console.clone());
        async move {
            while !done.load(Ordering::SeqCst) {
                if let Ok(meta) = std::fs::metadata(&console) {
                    largest.fetch_max(meta.len(), Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let flood = format!(
        "setsid sh -c 'yes console-flood-0123456789abcdefghijklmnopqrstuvwxyz | head -c {FLOOD} > /dev/ttyS0; \
         echo console-flood-done > /dev/ttyS0; touch /tmp/console-flood-done' \
         < /dev/null > /dev/null 2>&1 &"
    );
    let (code, out) = world.exec(&id, &flood).await;
    assert_eq!(code, 0, "{out}");
    let started = Instant::now();
    loop {
        let (code, _) = world.exec(&id, "test -f /tmp/console-flood-done").await;
        if code == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the guest did not finish writing"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // One more check of the job's after the last write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    done.store(true, Ordering::SeqCst);
    sampler.await.expect("sampler");
    let largest = largest.load(Ordering::SeqCst);
    eprintln!(
        "    {FLOOD} bytes written to the console in {:.0} s; console.log peaked at {largest} bytes (cap {CAP})",
        started.elapsed().as_secs_f64()
    );
    assert!(
        largest <= CAP + SLACK,
        "console.log reached {largest} bytes, past the cap {CAP} + {SLACK}"
    );
    let now = std::fs::metadata(&console).expect("console").len();
    assert!(now <= CAP, "{now}");

    // The VM and the daemon are fine, and the tail holds the newest output.
    let (code, out) = world.exec(&id, "echo still-here").await;
    assert_eq!((code, out.trim()), (0, "still-here"));
    let lines = world.console_tail(&id).await;
    assert!(lines.contains("console-flood-done"), "{lines}");
    destroy(world, &user).await;
    world.assert_gone(&vm);
    world.daemon.stop().await;
    world.daemon.start(&[]).await;
}

/// A resume that crashed after it committed must not leave its image looking whole: with the
/// process gone at the next restart, the VM would be taken as hibernated and later resumed
/// into memory older than its disk. Also: the image is 0600 in 0700 directories, a looser VM
/// directory included.
pub async fn an_interrupted_resume_leaves_no_stale_image(world: &mut World) {
    let user = world.new_user().await;
    let vm = world.create_vm(&user).await;
    let id = id_of(&vm);
    let dir = PathBuf::from(world.vm_dir(&id));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (status, body) = world.user_vm(&user, "hibernate", "POST").await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(mode(&dir), 0o700, "the VM directory is tightened");
    assert_eq!(mode(&dir.join("snapshot")), 0o700);
    assert_eq!(mode(&dir.join("snapshot/state")), 0o600);
    assert!(dir.join("snapshot/complete").exists());

    world.daemon.stop().await;
    world
        .daemon
        .start(&[("MC_FAILPOINT", "vm.resume.after_commit")])
        .await;
    world
        .daemon
        .call_expecting_crash("POST", &format!("/api/users/{user}/vm/resume"))
        .await;
    world.daemon.wait_exit(Duration::from_secs(60)).await;
    // The resumed process outlived the daemon; it dies too before the next start.
    let needle = world.vm_dir(&id);
    for pid in processes_naming(&needle) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let started = Instant::now();
    while !processes_naming(&needle).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "QEMU lingers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    world.daemon.start(&[]).await;
    let (_, settled) = world.user_vm(&user, "", "GET").await;
    assert_eq!(
        settled["status"], "failed",
        "the image the VM was resumed from is stale: {settled:?}"
    );
    assert!(!dir.join("snapshot/complete").exists());
    destroy(world, &user).await;
    world.assert_gone(&vm);
}
