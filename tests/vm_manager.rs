//! The VM manager end to end, through the daemon binary's HTTP API, with real guests: the test
//! image on QEMU under TCG, inside a network namespace this process creates for itself (the
//! daemon creates its bridge there). The daemon is a child process, so the cases can SIGKILL
//! and restart it. Cases run one after another: TCG is CPU-heavy.
//!
//! Without QEMU, the image or root, the binary says what is missing and skips; with
//! `MC_REQUIRE_GUESTS=1` (set by scripts/test.sh) a missing prerequisite is a failure instead.

mod support;

#[path = "vm_manager/confinement.rs"]
mod confinement;
#[path = "vm_manager/crash_loop.rs"]
mod crash_loop;
#[path = "vm_manager/golden.rs"]
mod golden;
#[path = "vm_manager/hardening.rs"]
mod hardening;
#[path = "vm_manager/lifecycle.rs"]
mod lifecycle;
#[path = "vm_manager/logins.rs"]
mod logins;
#[path = "vm_manager/prompts.rs"]
mod prompts;
#[path = "vm_manager/recovery.rs"]
mod recovery;
#[path = "vm_manager/snapshots.rs"]
mod snapshots;
#[path = "vm_manager/world.rs"]
mod world;

use std::process::ExitCode;

use support::daemon_proc::DaemonProc;
use support::{harness, vmhost};
use world::{BRIDGE, CRASH_LIMIT, GATEWAY, POOL_SIZE, World};

type Case = harness::Case<World>;

fn main() -> ExitCode {
    if let Some(reason) = vmhost::missing_prerequisite() {
        return harness::missing("vm_manager", &reason);
    }
    vmhost::enter_private_namespace();
    let runtime = harness::runtime();
    let dir = tempfile::Builder::new()
        .prefix("mcv")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let mut env = vmhost::guest_daemon_env(BRIDGE, GATEWAY);
    env.extend([
        ("MC_VM_HEALTH_INTERVAL_SECS", "2".into()),
        ("ENCRYPTION_MASTER_KEY", world::MASTER_KEY.into()),
        ("MC_AUTH_SESSION_TIMEOUT_SECS", "20".into()),
        ("MC_VM_CRASH_LIMIT", CRASH_LIMIT.to_string()),
        (confinement::CANARY_NAME, confinement::CANARY_VALUE.into()),
    ]);
    let daemon = DaemonProc::new(dir.path(), &env);
    let mut world = World {
        daemon,
        users: 0,
        kept: Vec::new(),
        _dir: dir,
    };
    runtime.block_on(world.daemon.start(&[]));
    assert_eq!(runtime.block_on(world.pool_available()), POOL_SIZE);
    let cases: Vec<(&str, Case)> = vec![
        (
            "create, hibernate, resume (same boot), destroy through the API; nothing left; \
             QEMU confined before and after the resume (no daemon env, no token in argv, \
             seccomp, not root)",
            |w| Box::pin(lifecycle::whole_api_path(w)),
        ),
        (
            "two users' guests cannot reach each other, only the gateway",
            |w| Box::pin(lifecycle::guests_are_isolated(w)),
        ),
        (
            "SIGKILL of the daemon: the VM is adopted, no second process",
            |w| Box::pin(lifecycle::daemon_crash_adopts_the_vm(w)),
        ),
        (
            "SIGKILL of QEMU: failed, vm_crashed within 2 s, IP back",
            |w| Box::pin(lifecycle::vm_crash_is_seen(w)),
        ),
        (
            "interrupted hibernate and create are settled at restart",
            |w| Box::pin(recovery::interrupted_intents_are_settled(w)),
        ),
        (
            "an orphan tap and VM directory are removed at restart",
            |w| Box::pin(recovery::reconcile_removes_orphans(w)),
        ),
        (
            "pool of 3: a 4th create is refused, a hibernated IP is reclaimed",
            |w| Box::pin(recovery::pool_pressure(w)),
        ),
        (
            "a prompt resumes the hibernated VM and streams; a missing CLI is a clear error",
            |w| Box::pin(prompts::a_prompt_resumes_the_vm_and_streams(w)),
        ),
        (
            "a claude login in a real guest: wrong code, cancel, timeout, second start, completed; not left in the guest, staged for a prompt, refresh captured; no token in the clear",
            |w| Box::pin(logins::a_login_in_a_real_guest(w)),
        ),
        (
            "a guest that crashes itself: only its console tail is kept; past the limit, 429 crash_loop",
            |w| Box::pin(crash_loop::a_guest_that_keeps_crashing_itself_is_refused(w)),
        ),
        (
            "hardening: stolen disk: a prompt's credential (refreshed by rename) never reaches data.ext4",
            |w| Box::pin(hardening::credentials_never_reach_the_disk(w)),
        ),
        (
            "hardening: guest output flood and ignored cancel: collect_output and admin exec are bounded",
            |w| Box::pin(hardening::guest_output_is_bounded(w)),
        ),
        (
            "a guest flooding its console: console.log stays under its cap, the VM stays up",
            |w| Box::pin(snapshots::a_console_flood_stays_capped(w)),
        ),
        (
            "a resume interrupted after its commit leaves no stale image; images 0600 in 0700",
            |w| Box::pin(snapshots::an_interrupted_resume_leaves_no_stale_image(w)),
        ),
        (
            "two VMs from a golden snapshot: own address, MAC, hostname, token",
            |w| Box::pin(golden::golden_snapshot_clones(w)),
        ),
    ];
    let outcome = harness::run(&runtime, &mut world, cases, |world| {
        println!("{}", world.daemon.log_tail());
        true
    });
    world.daemon.kill_with_vms();
    outcome
}
