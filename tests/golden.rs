//! The production guest end to end: a golden image built by `image/build-golden.sh` (Debian 13,
//! Node.js 20, the three pinned CLIs), its golden snapshot, and VMs of it created through the
//! daemon binary's API on QEMU under TCG, in a network namespace this process creates for
//! itself. The real CLIs in the guests answer from the fake model server. Cases run one after
//! another: TCG is CPU-heavy.
//!
//! Without QEMU, root or a built golden image, the binary says what is missing and skips; with
//! `MC_REQUIRE_GUESTS=1` (set by scripts/test.sh) a missing prerequisite is a failure instead.

mod support;

#[path = "golden/cases.rs"]
mod cases;
#[path = "golden/conversations.rs"]
mod conversations;
#[path = "golden/workspace.rs"]
mod workspace;
#[path = "golden/world.rs"]
mod world;

use std::process::ExitCode;

use support::{harness, vmhost};
use world::World;

type Case = harness::Case<World>;

fn main() -> ExitCode {
    if let Some(reason) = vmhost::missing_golden_prerequisite() {
        return harness::missing("golden", &reason);
    }
    vmhost::enter_private_namespace();
    let runtime = harness::runtime();
    let mut world = runtime.block_on(World::start());
    let cases: Vec<(&str, Case)> = vec![
        (
            "the golden snapshot of the golden image builds and keeps its data disk",
            |w| Box::pin(cases::golden_snapshot_builds(w)),
        ),
        (
            "a golden-image VM from the API: / is writable, writes land on its data disk",
            |w| Box::pin(cases::the_root_is_writable_and_lands_on_the_data_disk(w)),
        ),
        (
            "conversations: claude, codex and gemini resume their own sessions over SSE across \
             hibernate, a daemon restart and the idle job",
            |w| Box::pin(conversations::each_cli_resumes_its_own_session(w)),
        ),
        (
            "files: 50 MiB up and down byte-identical, streamed, owned by the CLI user",
            |w| Box::pin(workspace::files_round_trip_streamed_as_the_cli_user(w)),
        ),
        (
            "files: .., absolute paths and escaping symlinks refused; another user's token 403",
            |w| Box::pin(workspace::paths_that_leave_the_workspace_are_refused(w)),
        ),
        (
            "workspace: exec and a prompt's CLI run in the cwd as the CLI user and see the file",
            |w| Box::pin(workspace::exec_and_a_prompt_work_in_the_directory_as_the_cli_user(w)),
        ),
        (
            "conversations: a destroyed VM's conversations answer conversation_expired",
            |w| Box::pin(conversations::a_destroyed_vm_expires_its_conversations(w)),
        ),
        (
            "two clones of one golden snapshot: own files, e2fsck-clean disks",
            |w| Box::pin(cases::clones_of_one_golden_snapshot_never_share_a_filesystem(w)),
        ),
        ("the shared base rootfs file is unchanged", |w| {
            Box::pin(cases::the_shared_base_rootfs_is_unchanged(w))
        }),
        (
            "a new image while a VM hibernates: it resumes on its own, creates get the new one",
            |w| Box::pin(cases::image_versions_roll_over(w)),
        ),
        (
            "each provider's login reaches the user's turn from the real CLI in the guest",
            |w| Box::pin(cases::each_login_reaches_the_users_turn(w)),
        ),
    ];
    let code = harness::run(&runtime, &mut world, cases, |w| {
        eprintln!("daemon log tail:\n{}", w.daemon.log_tail());
        true
    });
    world.daemon.kill_with_vms();
    code
}
