//! Where a VM lives on the host: its directory, its data disk, the marker that makes its
//! snapshot directory a hibernation image, and the spec built from its record and this host's
//! settings. Plain functions of the settings and the disk; no part's state.

use std::path::{Path, PathBuf};

use crate::model::{GuestImage, Vm};
use crate::vmm::{DiskSpec, NetSpec, VmSpec};

use super::{VmError, VmSettings};

const DATA_DISK: &str = "data.ext4";
/// Written once a hibernation's files are complete; reconcile trusts nothing else.
const SNAPSHOT_COMPLETE: &str = "complete";

impl VmSettings {
    /// The configured image with every link resolved, so that it names one image version (an
    /// `images/<id>/` directory of `image/build-golden.sh` behind its `current` link) for as
    /// long as a VM uses it.
    /// A file that is not there stays as it is named: the hypervisor's start reports it.
    pub fn image_files(&self) -> Result<GuestImage, String> {
        let resolve = |path: &Path| match std::fs::canonicalize(path) {
            Ok(resolved) => Ok(resolved),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_path_buf()),
            Err(e) => Err(format!("the guest image file {}: {e}", path.display())),
        };
        let kernel = self
            .kernel
            .as_deref()
            .ok_or("no guest kernel (set GOLDEN_KERNEL)")?;
        Ok(GuestImage {
            kernel: resolve(kernel)?,
            initrd: self.initrd.as_deref().map(resolve).transpose()?,
            rootfs: self.rootfs.as_deref().map(resolve).transpose()?,
        })
    }

    /// The configured image as it is named, for records from before images were recorded.
    pub(super) fn configured_image(&self) -> Result<GuestImage, VmError> {
        Ok(GuestImage {
            kernel: self.kernel.clone().ok_or(VmError::NotConfigured(
                "no guest kernel (set GOLDEN_KERNEL)",
            ))?,
            initrd: self.initrd.clone(),
            rootfs: self.rootfs.clone(),
        })
    }

    /// The spec of a VM on this host, booting `image`. Golden snapshots are built with it too,
    /// so that their devices are the ones every VM has.
    pub fn spec(
        &self,
        vm_id: &str,
        image: &GuestImage,
        vcpus: u32,
        memory_mib: u32,
        net: Option<NetSpec>,
        agent_token: &str,
    ) -> Result<VmSpec, VmError> {
        let dir = self.root.join(vm_id);
        let mut disks = Vec::new();
        if let Some(rootfs) = &image.rootfs {
            disks.push(DiskSpec {
                id: "rootfs".into(),
                path: rootfs.clone(),
                read_only: true,
                root: true,
            });
        }
        disks.push(DiskSpec {
            id: "data".into(),
            path: dir.join(DATA_DISK),
            read_only: false,
            root: false,
        });
        Ok(VmSpec {
            vm_id: vm_id.to_string(),
            dir,
            vcpus,
            memory_mib,
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            boot_args: String::new(),
            disks,
            net,
            agent_token: agent_token.to_string(),
        })
    }

    pub(super) fn dir_of(&self, vm_id: &str) -> PathBuf {
        self.root.join(vm_id)
    }

    /// The spec a VM boots or resumes with, from its record and this host's settings.
    pub(super) fn spec_of(&self, vm: &Vm) -> Result<VmSpec, VmError> {
        let net = match (&vm.tap_device, &vm.mac_address) {
            (Some(tap), Some(mac)) => Some(NetSpec {
                tap: tap.clone(),
                mac: mac.clone(),
            }),
            _ => None,
        };
        let image = match &vm.image {
            Some(image) => image.clone(),
            None => self.configured_image()?,
        };
        self.spec(
            &vm.id,
            &image,
            vm.vcpus,
            vm.memory_mib,
            net,
            &vm.agent_token,
        )
    }
}

pub(super) fn snapshot_marker(spec: &VmSpec) -> PathBuf {
    spec.snapshot_dir().join(SNAPSHOT_COMPLETE)
}

/// Empties a running VM's snapshot directory before it hibernates, and makes it and the VM's
/// directory 0700. What is there is stale for a running VM: links to the golden snapshot a
/// create left, or the image a resume restored, with its marker.
pub(super) async fn fresh_snapshot_dir(spec: &VmSpec) -> std::io::Result<()> {
    let (vm_dir, dir) = (spec.dir.clone(), spec.snapshot_dir());
    tokio::task::spawn_blocking(move || {
        crate::vmm::private::private_dir(&vm_dir)?;
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        crate::vmm::private::private_dir(&dir)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Records, durably, that the snapshot directory holds a whole hibernation image.
pub(super) async fn write_marker(path: &Path) -> std::io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        crate::vmm::private::write_new(&path, b"")?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Durably withdraws the marker: the image is no longer the VM's current state.
pub(super) async fn remove_marker(spec: &VmSpec) -> std::io::Result<()> {
    let path = snapshot_marker(spec);
    tokio::task::spawn_blocking(move || {
        crate::vmm::private::discard(&path)?;
        if let Some(dir) = path.parent()
            && let Ok(dir) = std::fs::File::open(dir)
        {
            dir.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

pub(super) fn data_disk(spec: &VmSpec) -> Result<&DiskSpec, &'static str> {
    spec.disks
        .iter()
        .find(|d| !d.read_only)
        .ok_or("the spec has no data disk")
}

/// Creates `dir` and its parents, readable by root only; an existing `dir` is tightened to 0700.
pub(crate) async fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || crate::vmm::private::private_dir(&dir))
        .await
        .map_err(std::io::Error::other)?
}

/// Removes a VM's directory, or one in it. A failure is logged, not returned: whatever is left
/// goes with the VM's directory at its destroy or in the orphan sweep.
pub(super) async fn remove_dir(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove VM directory")
        }
    }
}
