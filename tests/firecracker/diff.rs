//! Diff snapshots through the fake: from a VM's second hibernation on, the backend asks for a
//! Diff (which the fake refuses without dirty page tracking), the memory written is what the
//! guest dirtied since it resumed, and once merged the VM's memory file is what a Full snapshot
//! would hold (the fake checks every restore against its guest).

use std::path::Path;
use std::time::Duration;

use master_controller::vmm::firecracker::api::{self, ApiRequest, FirecrackerApi, Layout};
use master_controller::vmm::{Hypervisor, VmSpec, VmmError};
use serde_json::{Value, json};

use super::support::firecracker_fake::{self, guest::GuestMemory, guest::PAGE};
use super::{fake_backend, last_create, spec};

const MEMORY_MIB: u32 = 64;

/// The test's guest writes to `pages` (the fake's control, not Firecracker's API).
async fn guest_writes(socket: &Path, pages: &[u64]) -> Result<Value, VmmError> {
    FirecrackerApi::new(socket)
        .send(&ApiRequest {
            method: hyper::Method::PUT,
            path: "/fake/guest-writes".into(),
            body: Some(json!({ "pages": pages })),
        })
        .await
}

/// The image in `vm_dir/snapshot` is one memory file holding the guest its state describes.
fn check_image(vm_dir: &Path) {
    let snapshot = vm_dir.join("snapshot");
    let guest = GuestMemory::load_state(&snapshot.join("vmstate")).expect("the fake's vmstate");
    guest
        .check(&snapshot.join("memory"))
        .unwrap_or_else(|e| panic!("the memory file is not the guest's: {e}"));
    assert!(
        !vm_dir.join("memory-base/memory.diff").exists(),
        "a diff is left unmerged"
    );
}

struct Row {
    label: String,
    kind: String,
    written: u64,
    allocated: u64,
    merged: u64,
}

pub async fn diff_hibernations_write_what_the_guest_dirtied() {
    let run = fake_backend();
    let vm_dir = run.dir.path().join("vm");
    let vm_spec = VmSpec {
        memory_mib: MEMORY_MIB,
        ..spec(&vm_dir, "mc-tap-a")
    };
    let socket = vm_dir.join("firecracker.sock");
    let memory_size = u64::from(MEMORY_MIB) << 20;
    let pages = memory_size / PAGE;

    let vm = run.backend.boot(&vm_spec).await.expect("boot");
    guest_writes(&socket, &[0, 1, 2])
        .await
        .expect("guest writes");
    let saved = run
        .backend
        .hibernate(&vm_spec, vm)
        .await
        .expect("hibernate");
    let create = last_create(&run.log);
    assert_eq!(create["body"]["snapshot_type"], "Full", "no base yet");
    assert_eq!(create["memory_written"], memory_size);
    assert_eq!(saved.state_bytes, memory_size);
    check_image(&vm_dir);
    let mut rows = vec![Row {
        label: "first hibernation (3 dirtied since boot)".into(),
        kind: "Full".into(),
        written: memory_size,
        allocated: create["memory_allocated"].as_u64().unwrap_or(0),
        merged: 0,
    }];

    for dirtied in [1u64, 16, 256] {
        let loads_before = loads(&run.log);
        let vm = run.backend.resume(&vm_spec).await.expect("resume");
        // One memory file per restore: the merged one, loaded with dirty page tracking on.
        let load = firecracker_fake::logged(&run.log)
            .into_iter()
            .filter(|e| e["path"] == "/snapshot/load")
            .nth(loads_before)
            .expect("a snapshot/load");
        assert_eq!(load["ok"], true, "the fake refused the restore: {load}");
        assert_eq!(load["body"]["track_dirty_pages"], true);
        assert_eq!(
            load["body"]["mem_backend"]["backend_path"],
            json!(vm_dir.join("snapshot/memory").display().to_string())
        );
        assert!(load["body"]["mem_file_path"].is_null());

        // Spread over the whole memory, so each page is a region of its own.
        let stride = pages / dirtied;
        let written: Vec<u64> = (0..dirtied).map(|k| k * stride + 5).collect();
        guest_writes(&socket, &written).await.expect("guest writes");
        let saved = run
            .backend
            .hibernate(&vm_spec, vm)
            .await
            .expect("hibernate");
        let create = last_create(&run.log);
        let kind = create["body"]["snapshot_type"].as_str().unwrap_or("Full");
        let bytes = create["memory_written"].as_u64().unwrap_or(0);
        assert_eq!(
            kind, "Diff",
            "after a resume the hibernation wrote a {kind} snapshot of {bytes} bytes"
        );
        assert_eq!(bytes, dirtied * PAGE, "{dirtied} pages dirtied");
        assert_ne!(
            create["body"]["mem_file_path"],
            json!(vm_dir.join("snapshot/memory").display().to_string()),
            "a diff goes to a file of its own"
        );
        // What the backend found in the diff and copied onto the base: the same pages.
        assert_eq!(saved.state_bytes, dirtied * PAGE, "bytes merged");
        let allocated = create["memory_allocated"].as_u64().unwrap_or(u64::MAX);
        assert!(
            allocated < memory_size / 8,
            "the diff file takes {allocated} bytes on disk"
        );
        check_image(&vm_dir);
        rows.push(Row {
            label: format!("after a resume, {dirtied} dirtied"),
            kind: kind.into(),
            written: bytes,
            allocated,
            merged: saved.state_bytes,
        });
    }
    // The last merged image restores too (the fake checks it against its guest).
    let mut vm = run.backend.resume(&vm_spec).await.expect("resume");
    run.backend.kill(&mut vm).await.expect("kill");

    eprintln!("    guest memory {memory_size} bytes ({pages} pages of {PAGE})");
    eprintln!("    | hibernation | type | bytes written | diff file on disk | bytes merged |");
    for row in &rows {
        eprintln!(
            "    | {} | {} | {} | {} | {} |",
            row.label, row.kind, row.written, row.allocated, row.merged
        );
    }
}

fn loads(log: &Path) -> usize {
    firecracker_fake::logged(log)
        .iter()
        .filter(|e| e["path"] == "/snapshot/load")
        .count()
}

/// Firecracker's rules for a Diff, on a process the test drives by hand: the guest must be
/// paused, and dirty page tracking must have been on since the process started.
pub async fn a_diff_needs_dirty_page_tracking() {
    let run = fake_backend();
    let dir = run.dir.path();
    let socket = dir.join("fc.sock");
    let mut fake = tokio::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("--api-sock")
        .arg(&socket)
        .kill_on_drop(true)
        .spawn()
        .expect("start the fake");
    let firecracker = FirecrackerApi::new(&socket);
    firecracker
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("the fake's API");
    let vm_spec = VmSpec {
        memory_mib: 16,
        ..spec(dir, "mc-tap-a")
    };
    let layout = Layout::at(dir);
    std::fs::create_dir_all(layout.snapshot_dir()).expect("snapshot dir");
    // The backend's boot, with dirty page tracking left out.
    let mut boot = api::boot_requests(&vm_spec, &layout, 3, "console=ttyS0");
    for request in &mut boot {
        if let Some(Value::Object(body)) = request.body.as_mut()
            && request.path == "/machine-config"
        {
            body.remove("track_dirty_pages");
        }
    }
    firecracker.send_all(&boot).await.expect("boot");
    let diff = api::snapshot_create(&layout, api::SnapshotType::Diff);
    let refused = |result: Result<Value, VmmError>, fault: &str| match result {
        Err(VmmError::Firecracker {
            status: 400,
            fault: message,
            ..
        }) => assert!(message.contains(fault), "{message}"),
        other => panic!("not refused ({fault}): {other:?}"),
    };
    refused(firecracker.send(&diff).await, "not paused");
    guest_writes(&socket, &[1])
        .await
        .expect("a running guest writes");
    firecracker
        .send(&api::set_state("Paused"))
        .await
        .expect("pause");
    refused(
        guest_writes(&socket, &[2]).await,
        "not running writes nothing",
    );
    refused(
        firecracker.send(&diff).await,
        "dirty page tracking disabled",
    );
    // A Full snapshot needs no tracking, and writes every page.
    firecracker
        .send(&api::snapshot_create(&layout, api::SnapshotType::Full))
        .await
        .expect("full snapshot");
    assert_eq!(last_create(&run.log)["memory_written"], 16u64 << 20);
    let _ = fake.kill().await;
}

/// A hibernation cut short after its diff was committed and before the merge (a crash, or a
/// merge that failed): the image is the base plus the pending diff, and the resume merges it
/// before it loads.
pub async fn a_resume_merges_a_diff_left_pending() {
    use std::os::unix::fs::FileExt;
    let run = fake_backend();
    let vm_dir = run.dir.path().join("vm");
    let vm_spec = VmSpec {
        memory_mib: 16,
        ..spec(&vm_dir, "mc-tap-a")
    };
    let socket = vm_dir.join("firecracker.sock");
    let (base, pending) = (
        vm_dir.join("memory-base/memory"),
        vm_dir.join("memory-base/memory.diff"),
    );
    let vm = run.backend.boot(&vm_spec).await.expect("boot");
    run.backend
        .hibernate(&vm_spec, vm)
        .await
        .expect("hibernate");
    let vm = run.backend.resume(&vm_spec).await.expect("resume");
    let before = run.dir.path().join("base-before");
    std::fs::copy(&base, &before).expect("copy the base");
    let dirtied = [7u64, 8, 100];
    guest_writes(&socket, &dirtied).await.expect("guest writes");
    run.backend
        .hibernate(&vm_spec, vm)
        .await
        .expect("hibernate");
    assert_eq!(last_create(&run.log)["body"]["snapshot_type"], "Diff");

    // Back to the moment before the merge: the old base, the diff pending, no snapshot memory.
    let merged = std::fs::File::open(&base).expect("merged base");
    let diff = std::fs::File::create(&pending).expect("diff");
    diff.set_len(u64::from(vm_spec.memory_mib) << 20)
        .expect("set_len");
    for page in dirtied {
        let mut bytes = vec![0u8; PAGE as usize];
        merged.read_exact_at(&mut bytes, page * PAGE).expect("read");
        diff.write_all_at(&bytes, page * PAGE).expect("write");
    }
    std::fs::remove_file(vm_dir.join("snapshot/memory")).expect("unlink");
    std::fs::remove_file(&base).expect("unlink");
    std::fs::rename(&before, &base).expect("old base");

    let mut vm = run.backend.resume(&vm_spec).await.expect("resume");
    let load = firecracker_fake::logged(&run.log)
        .into_iter()
        .rev()
        .find(|e| e["path"] == "/snapshot/load")
        .expect("a snapshot/load");
    assert_eq!(load["ok"], true, "the fake refused the restore: {load}");
    assert!(!pending.exists(), "the diff was merged and removed");
    run.backend.kill(&mut vm).await.expect("kill");
}
