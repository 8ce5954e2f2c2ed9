//! Tests of `golden`.
use super::*;

fn meta(data_disk_mib: Option<u64>) -> GoldenMeta {
    GoldenMeta {
        hypervisor: "qemu".into(),
        vcpus: 1,
        memory_mib: 256,
        agent_token: "token".into(),
        state_file: "state".into(),
        memory_file: None,
        sidecars: Vec::new(),
        data_disk_mib,
        image: None,
        created_at_ms: 1,
    }
}

fn write(snapshot: &Path, meta: &GoldenMeta) {
    std::fs::write(snapshot, b"state").unwrap();
    std::fs::write(meta_path(snapshot), serde_json::to_vec(meta).unwrap()).unwrap();
}

#[test]
fn a_snapshot_without_its_build_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("state");
    // From before clones copied the build VM's disk.
    write(&snapshot, &meta(None));
    let refused = Golden::inspect(&snapshot).unwrap_err().to_string();
    assert!(refused.contains("no data disk"), "{refused}");
    // Recorded, but the file is gone.
    write(&snapshot, &meta(Some(64)));
    let refused = Golden::inspect(&snapshot).unwrap_err().to_string();
    assert!(refused.contains("state.data.ext4 is missing"), "{refused}");
    std::fs::write(data_disk_path(&snapshot), b"disk").unwrap();
    assert_eq!(Golden::inspect(&snapshot).unwrap().data_disk_mib, Some(64));
}
