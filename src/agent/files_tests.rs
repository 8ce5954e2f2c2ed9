//! `write_file` with an owner: the directories it makes are the owner's, the ones it found are
//! left as they were.

use std::os::unix::fs::MetadataExt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::*;

fn owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).expect("metadata");
    (meta.uid(), meta.gid())
}

#[tokio::test]
async fn parents_made_for_an_owner_are_the_owners() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: chown needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).expect("existing");
    let file = existing.join("new/newer/file.txt");
    write(WriteFileRequest {
        path: file.display().to_string(),
        data_base64: STANDARD.encode(b"owned"),
        mode: 0o600,
        uid: Some(65534),
        gid: Some(65533),
    })
    .await
    .expect("write");
    assert_eq!(owner(&file), (65534, 65533));
    assert_eq!(owner(&existing.join("new")), (65534, 65533));
    assert_eq!(owner(&existing.join("new/newer")), (65534, 65533));
    assert_eq!(owner(&existing), (0, 0));
    assert_eq!(owner(dir.path()), (0, 0));

    // Without an owner, what is made stays root's.
    let plain = dir.path().join("plain/file");
    write(WriteFileRequest {
        path: plain.display().to_string(),
        data_base64: STANDARD.encode(b"root's"),
        mode: 0o600,
        uid: None,
        gid: None,
    })
    .await
    .expect("write");
    assert_eq!(owner(&dir.path().join("plain")), (0, 0));

    // A parent that is a file is an error, not a silent success.
    let blocked = file.join("below");
    let result = write(WriteFileRequest {
        path: blocked.display().to_string(),
        data_base64: STANDARD.encode(b"x"),
        mode: 0o600,
        uid: Some(65534),
        gid: Some(65534),
    })
    .await;
    assert!(result.is_err());
}
