//! Guest image versions on disk. `image/build-golden.sh` writes each image into a directory of
//! its own, `images/<id>/` with an `image.json`, and points `current` at the newest. A VM
//! records the files it was created on ([`GuestImage`], links resolved), and keeps them across
//! hibernation; a version is removed once neither the configuration, the golden snapshot nor
//! any live VM uses it. Images that are not laid out this way are never touched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::records::Records;
use super::{VmError, VmFilter, VmSettings};
use crate::model::{GuestImage, Vm};

/// What marks a directory as one image version.
const MANIFEST: &str = "image.json";

/// The version directory `file` belongs to: its parent, when that holds a manifest.
fn version_dir(file: &Path) -> Option<PathBuf> {
    let dir = file.parent()?;
    dir.join(MANIFEST).is_file().then(|| dir.to_path_buf())
}

/// The image versions beside `configured`'s that neither it nor anything in `in_use` names.
pub fn unused(configured: &GuestImage, in_use: &[GuestImage]) -> Vec<PathBuf> {
    let Some(root) =
        version_dir(&configured.kernel).and_then(|d| d.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    let keep: BTreeSet<PathBuf> = in_use
        .iter()
        .chain(std::iter::once(configured))
        .flat_map(|image| image.files().filter_map(version_dir).collect::<Vec<_>>())
        .collect();
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut unused: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|dir| dir.join(MANIFEST).is_file() && !keep.contains(dir))
        .collect();
    unused.sort();
    unused
}

/// The sweep of image versions nothing uses, after a destroy and at reconcile.
pub(super) struct ImageSweep {
    records: Arc<Records>,
    settings: Arc<VmSettings>,
}

impl ImageSweep {
    pub(super) fn new(records: Arc<Records>, settings: Arc<VmSettings>) -> ImageSweep {
        ImageSweep { records, settings }
    }

    /// Removes the guest image versions that neither the configuration, the golden snapshot
    /// nor a live VM uses. Returns what it removed; a failure is logged and left for the next
    /// sweep.
    pub(super) async fn sweep(&self) -> Result<Vec<PathBuf>, VmError> {
        let mut in_use: Vec<_> = self
            .records
            .list(VmFilter::default())
            .await?
            .into_iter()
            .filter(Vm::is_live)
            .filter_map(|vm| vm.image)
            .collect();
        in_use.extend(
            self.settings
                .golden
                .as_ref()
                .and_then(|golden| golden.meta.image.clone()),
        );
        // Resolving the configured links and listing the versions read the disk.
        let settings = self.settings.clone();
        let unused = tokio::task::spawn_blocking(move || match settings.image_files() {
            Ok(configured) => unused(&configured, &in_use),
            Err(_) => Vec::new(),
        })
        .await
        .map_err(|e| VmError::Corrupt(format!("the image sweep panicked: {e}")))?;
        let mut removed = Vec::new();
        for dir in unused {
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {
                    tracing::info!(image = %dir.display(), "removed a guest image no VM uses");
                    removed.push(dir);
                }
                Err(e) => {
                    tracing::warn!(image = %dir.display(), error = %e, "cannot remove an unused guest image")
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(root: &Path, id: &str) -> GuestImage {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["vmlinux", "initramfs.cpio.gz", "rootfs.ext4", MANIFEST] {
            std::fs::write(dir.join(file), id).unwrap();
        }
        GuestImage {
            kernel: dir.join("vmlinux"),
            initrd: Some(dir.join("initramfs.cpio.gz")),
            rootfs: Some(dir.join("rootfs.ext4")),
        }
    }

    #[test]
    fn a_version_is_unused_once_nothing_names_it() {
        let root = tempfile::tempdir().unwrap();
        let old = version(root.path(), "old");
        let hibernated = version(root.path(), "mid");
        let current = version(root.path(), "new");
        // Not an image version: no manifest.
        std::fs::create_dir(root.path().join("notes")).unwrap();
        assert_eq!(
            unused(&current, std::slice::from_ref(&hibernated)),
            vec![root.path().join("old")]
        );
        assert!(unused(&current, &[old, hibernated.clone()]).is_empty());
        assert_eq!(
            unused(&current, &[]),
            vec![root.path().join("mid"), root.path().join("old")]
        );
    }

    #[test]
    fn an_image_outside_a_version_directory_sweeps_nothing() {
        let root = tempfile::tempdir().unwrap();
        version(root.path(), "other");
        let loose = GuestImage {
            kernel: root.path().join("vmlinux"),
            initrd: None,
            rootfs: None,
        };
        assert!(unused(&loose, &[]).is_empty());
    }
}
