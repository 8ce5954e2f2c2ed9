//! Guest image versions on disk. `image/build-golden.sh` writes each image into a directory of
//! its own, `images/<id>/` with an `image.json`, and points `current` at the newest. A VM
//! records the files it was created on ([`GuestImage`], links resolved), and keeps them across
//! hibernation; a version is removed once neither the configuration, the golden snapshot nor
//! any live VM uses it. Images that are not laid out this way are never touched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::model::GuestImage;

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
