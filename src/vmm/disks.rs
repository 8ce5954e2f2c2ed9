//! Per-VM disks: the shared base rootfs is attached read-only; each VM gets its own writable
//! data disk, created sparse and formatted ext4, which survives hibernation (the VM manager
//! deletes it with the VM).

use std::path::Path;

use super::VmmError;

/// Creates a sparse `size_mib` data disk at `path` with an ext4 filesystem on it.
pub async fn create_data_disk(path: &Path, size_mib: u64) -> Result<(), VmmError> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| VmmError::io(dir, e))?;
    }
    let file = tokio::fs::File::create(path)
        .await
        .map_err(|e| VmmError::io(path, e))?;
    file.set_len(size_mib << 20)
        .await
        .map_err(|e| VmmError::io(path, e))?;
    drop(file);
    let output = tokio::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "mc-data",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(path)
        .output()
        .await
        .map_err(|source| VmmError::Spawn {
            binary: "mkfs.ext4".into(),
            source,
        })?;
    if !output.status.success() {
        return Err(VmmError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            ),
        });
    }
    Ok(())
}
