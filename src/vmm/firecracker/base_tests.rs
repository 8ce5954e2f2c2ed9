use std::os::unix::fs::FileExt;

use super::*;
use crate::vmm::firecracker::merge::PAGE;

const PAGES: u64 = 32;

struct Vm {
    _dir: tempfile::TempDir,
    base: MemoryBase,
    snapshot: PathBuf,
}

impl Vm {
    fn new() -> Vm {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshot = dir.path().join("snapshot");
        private::private_dir(&snapshot).expect("snapshot dir");
        Vm {
            base: MemoryBase::at(dir.path().join("memory-base")),
            snapshot,
            _dir: dir,
        }
    }

    fn memory(&self) -> PathBuf {
        self.snapshot.join("memory")
    }

    /// A full memory file, as the first (Full) hibernation publishes it.
    fn full_snapshot(&self, fill: u8) {
        std::fs::write(self.memory(), vec![fill; (PAGES * PAGE) as usize]).expect("memory");
    }

    /// A diff as Firecracker writes it, at its fresh name in `snapshot/`.
    fn diff(&self, pages: &[(u64, u8)]) -> PathBuf {
        let path = self.snapshot.join("memory.diff.partial");
        let file = std::fs::File::create(&path).expect("diff");
        file.set_len(PAGES * PAGE).expect("set_len");
        for (page, fill) in pages {
            file.write_all_at(&vec![*fill; PAGE as usize], page * PAGE)
                .expect("page");
        }
        path
    }

    fn plan(&self) -> SnapshotType {
        self.base
            .plan(&self.snapshot, &self.memory())
            .expect("plan")
    }
}

fn page_of(path: &Path, page: u64) -> u8 {
    let file = std::fs::File::open(path).expect("open");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, page * PAGE).expect("read");
    byte[0]
}

#[test]
fn a_restored_own_memory_file_makes_the_next_hibernation_a_diff() {
    let vm = Vm::new();
    vm.full_snapshot(1);
    assert!(vm.base.track(&vm.memory()).expect("track"));
    assert!(vm.base.loaded().exists());
    assert_eq!(vm.plan(), SnapshotType::Diff);
    // The record is consumed, and the snapshot's name is free until the merge is done.
    assert!(!vm.base.loaded().exists());
    assert!(!vm.memory().exists());
    // A second plan without a new restore is Full.
    assert_eq!(vm.plan(), SnapshotType::Full);
    assert!(!vm.base.memory().exists());
}

#[test]
fn without_a_restore_record_the_hibernation_is_full() {
    let vm = Vm::new();
    vm.full_snapshot(1);
    assert!(vm.base.track(&vm.memory()).expect("track"));
    vm.base.forget_process().expect("boot");
    assert_eq!(vm.plan(), SnapshotType::Full);
    assert!(!vm.base.memory().exists(), "a stale base is dropped");
}

#[test]
fn a_golden_link_is_never_a_base() {
    let vm = Vm::new();
    let golden = vm.snapshot.with_file_name("golden-memory");
    std::fs::write(&golden, vec![9u8; (PAGES * PAGE) as usize]).expect("golden");
    std::os::unix::fs::symlink(&golden, vm.memory()).expect("link");
    assert!(!vm.base.track(&vm.memory()).expect("track"));
    assert!(!vm.base.loaded().exists());
    assert_eq!(vm.plan(), SnapshotType::Full);
    assert_eq!(page_of(&golden, 0), 9);
}

#[test]
fn a_shared_or_replaced_base_makes_the_hibernation_full() {
    // Shared: another name for the base appeared after the restore.
    let vm = Vm::new();
    vm.full_snapshot(1);
    assert!(vm.base.track(&vm.memory()).expect("track"));
    let other = vm.snapshot.with_file_name("other");
    std::fs::hard_link(vm.base.memory(), &other).expect("link");
    assert_eq!(vm.plan(), SnapshotType::Full);
    assert_eq!(page_of(&other, 0), 1);

    // Replaced: the base is not the file the process was restored from.
    let vm = Vm::new();
    vm.full_snapshot(1);
    assert!(vm.base.track(&vm.memory()).expect("track"));
    std::fs::remove_file(vm.base.memory()).expect("remove");
    std::fs::write(vm.base.memory(), vec![2u8; (PAGES * PAGE) as usize]).expect("replace");
    assert_eq!(vm.plan(), SnapshotType::Full);
}

#[test]
fn a_committed_diff_is_merged_and_linked_as_the_snapshot_memory() {
    let vm = Vm::new();
    vm.full_snapshot(1);
    assert!(vm.base.track(&vm.memory()).expect("track"));
    assert_eq!(vm.plan(), SnapshotType::Diff);
    let written = vm.diff(&[(3, 7), (4, 7), (20, 8)]);
    assert_eq!(vm.base.commit(&written).expect("commit"), 3 * PAGE);
    assert!(!written.exists());
    let stats = vm.base.finish(&vm.memory()).expect("finish");
    assert_eq!(stats.map(|s| s.bytes), Some(3 * PAGE));
    assert!(!vm.base.pending().exists());
    let (memory, base) = (
        std::fs::symlink_metadata(vm.memory()).expect("memory"),
        std::fs::symlink_metadata(vm.base.memory()).expect("base"),
    );
    assert!(same_file(&memory, &base));
    for (page, fill) in [(0, 1), (3, 7), (4, 7), (5, 1), (20, 8), (PAGES - 1, 1)] {
        assert_eq!(page_of(&vm.memory(), page), fill, "page {page}");
    }
    // Nothing pending: finishing again changes nothing.
    assert_eq!(vm.base.finish(&vm.memory()).expect("again"), None);
    assert_eq!(page_of(&vm.memory(), 3), 7);
    // And the merged memory is the base of the next restore.
    assert!(vm.base.track(&vm.memory()).expect("track"));
    assert_eq!(vm.plan(), SnapshotType::Diff);
}

#[test]
fn a_merge_cut_short_is_finished_by_the_next_resume() {
    let vm = Vm::new();
    vm.full_snapshot(1);
    assert!(vm.base.track(&vm.memory()).expect("track"));
    assert_eq!(vm.plan(), SnapshotType::Diff);
    let written = vm.diff(&[(2, 5), (30, 6)]);
    vm.base.commit(&written).expect("commit");
    // A crash mid-merge: one region reached the base, the snapshot has no memory yet.
    std::fs::OpenOptions::new()
        .write(true)
        .open(vm.base.memory())
        .expect("base")
        .write_all_at(&vec![5u8; PAGE as usize], 2 * PAGE)
        .expect("write");
    assert!(!vm.memory().exists());
    vm.base.finish(&vm.memory()).expect("finish");
    assert_eq!(
        (page_of(&vm.memory(), 2), page_of(&vm.memory(), 30)),
        (5, 6)
    );

    // A crash after the link, before the diff went: finishing again is harmless.
    let vm = Vm::new();
    vm.full_snapshot(1);
    assert!(vm.base.track(&vm.memory()).expect("track"));
    assert_eq!(vm.plan(), SnapshotType::Diff);
    let written = vm.diff(&[(9, 4)]);
    vm.base.commit(&written).expect("commit");
    merge::merge(&vm.base.pending(), &vm.base.memory()).expect("merge");
    std::fs::hard_link(vm.base.memory(), vm.memory()).expect("link");
    assert_eq!(
        vm.base
            .finish(&vm.memory())
            .expect("finish")
            .map(|s| s.bytes),
        Some(PAGE)
    );
    assert!(!vm.base.pending().exists());
    assert_eq!(page_of(&vm.memory(), 9), 4);
    assert_eq!(page_of(&vm.memory(), 8), 1);
}

#[test]
fn a_link_left_between_link_and_rename_is_cleared() {
    let vm = Vm::new();
    vm.full_snapshot(1);
    assert!(vm.base.track(&vm.memory()).expect("track"));
    assert_eq!(vm.plan(), SnapshotType::Diff);
    let written = vm.diff(&[(6, 2)]);
    vm.base.commit(&written).expect("commit");
    merge::merge(&vm.base.pending(), &vm.base.memory()).expect("merge");
    // A crash after the fresh link, before its rename.
    let partial = vm.snapshot.join("memory.partial");
    std::fs::hard_link(vm.base.memory(), &partial).expect("link");
    vm.base.finish(&vm.memory()).expect("finish");
    assert!(!partial.exists());
    assert_eq!(page_of(&vm.memory(), 6), 2);
}

#[test]
fn a_shared_base_is_never_merged_into() {
    let vm = Vm::new();
    vm.full_snapshot(1);
    assert!(vm.base.track(&vm.memory()).expect("track"));
    assert_eq!(vm.plan(), SnapshotType::Diff);
    let written = vm.diff(&[(0, 3)]);
    vm.base.commit(&written).expect("commit");
    let other = vm.snapshot.with_file_name("other");
    std::fs::hard_link(vm.base.memory(), &other).expect("link");
    let error = vm.base.finish(&vm.memory()).expect_err("refused");
    assert!(error.to_string().contains("shared"), "{error}");
    assert_eq!(page_of(&other, 0), 1);
    assert!(vm.base.pending().exists(), "the diff is kept");
}
