//! Golden snapshots: one VM booted once, its agent up, saved to disk; creates then restore
//! from it instead of cold-booting, and the agent gives each clone its own identity (token,
//! entropy, address, MAC, hostname).
//!
//! On disk a golden snapshot is the hibernation image's state file at `GOLDEN_SNAPSHOT`, its
//! memory file at `GOLDEN_MEMORY` (Firecracker; QEMU keeps memory in the state file), any other
//! file of the image next to the state file as `<GOLDEN_SNAPSHOT>.<name>`, the build VM's data
//! disk as `<GOLDEN_SNAPSHOT>.data.ext4`, and a description at `<GOLDEN_SNAPSHOT>.json`.
//!
//! The saved kernel has the data disk mounted (the golden image's root is an overlay on it), so
//! each clone starts on its own sparse copy of that very disk, taken while the build VM was
//! stopped: the filesystem in the restored memory and the one on the clone's disk are the same.
//! A clone on a freshly formatted disk would write through a mounted filesystem's cached state
//! onto a disk that never held it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::host::prepare_dir;
use super::{VmHost, VmSettings};
use crate::guest::client::AgentClient;
use crate::model::{GuestImage, now_ms};
use crate::vmm::NetSpec;

/// The name under which the build VM's data disk is stored beside the snapshot.
const DATA_DISK_SUFFIX: &str = "data.ext4";

/// The tap the golden VM boots with; clones get their own.
const BUILD_TAP: &str = "mcgolden";
const BUILD_MAC: &str = "06:00:00:00:00:01";
/// The golden files are read-only, and root's alone (the memory holds the golden agent token).
pub const GOLDEN_FILE_MODE: u32 = 0o400;

#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("golden snapshot: {0}")]
    Config(String),
    #[error("golden snapshot {path}: {reason}")]
    Unusable { path: PathBuf, reason: String },
    #[error("building the golden snapshot: {0}")]
    Build(String),
    #[error("cloning the golden data disk: {0}")]
    Clone(String),
}

/// The description written next to the state file.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GoldenMeta {
    pub hypervisor: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The token the golden VM's agent still expects; each clone replaces it at once.
    pub agent_token: String,
    /// The names the backend gives the state and memory files in a snapshot directory.
    pub state_file: String,
    pub memory_file: Option<String>,
    /// Other files of the image, stored as `<GOLDEN_SNAPSHOT>.<name>`.
    pub sidecars: Vec<String>,
    /// The size of the data disk stored as `<GOLDEN_SNAPSHOT>.data.ext4`. Snapshots made
    /// before clones copied it have none and are refused.
    #[serde(default)]
    pub data_disk_mib: Option<u64>,
    /// The guest image the snapshot was booted from, as resolved when it was built.
    #[serde(default)]
    pub image: Option<GuestImage>,
    pub created_at_ms: i64,
}

impl std::fmt::Debug for GoldenMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoldenMeta")
            .field("hypervisor", &self.hypervisor)
            .field("vcpus", &self.vcpus)
            .field("memory_mib", &self.memory_mib)
            .field("data_disk_mib", &self.data_disk_mib)
            .field("image", &self.image)
            .field("created_at_ms", &self.created_at_ms)
            .finish_non_exhaustive()
    }
}

/// A golden snapshot ready to restore from.
#[derive(Debug, Clone)]
pub struct Golden {
    pub snapshot: PathBuf,
    pub memory: Option<PathBuf>,
    pub meta: GoldenMeta,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut text = path.as_os_str().to_os_string();
    text.push(format!(".{suffix}"));
    PathBuf::from(text)
}

pub fn meta_path(snapshot: &Path) -> PathBuf {
    with_suffix(snapshot, "json")
}

fn data_disk_path(snapshot: &Path) -> PathBuf {
    with_suffix(snapshot, DATA_DISK_SUFFIX)
}

impl Golden {
    /// Reads the snapshot's description and checks that its own files are there: the state
    /// file and the build VM's data disk. (`doctor` stops here; [`Golden::load`] also checks it
    /// against this host's settings.)
    pub fn inspect(snapshot: &Path) -> Result<GoldenMeta, GoldenError> {
        let unusable = |reason: String| GoldenError::Unusable {
            path: snapshot.to_path_buf(),
            reason,
        };
        let meta_file = meta_path(snapshot);
        let text = std::fs::read_to_string(&meta_file)
            .map_err(|e| unusable(format!("{}: {e}", meta_file.display())))?;
        let meta: GoldenMeta = serde_json::from_str(&text)
            .map_err(|e| unusable(format!("{}: {e}", meta_file.display())))?;
        if !snapshot.is_file() {
            return Err(unusable("the state file is missing".into()));
        }
        if meta.data_disk_mib.is_none() {
            return Err(unusable(
                "it has no data disk of its own, so its clones would share a mounted filesystem's state (rebuild it)".into(),
            ));
        }
        let disk = data_disk_path(snapshot);
        if !disk.is_file() {
            return Err(unusable(format!("{} is missing", disk.display())));
        }
        Ok(meta)
    }

    /// [`Golden::inspect`], then checks that the snapshot was made for this host's hypervisor,
    /// VM size, data disk size and image.
    pub fn load(
        snapshot: &Path,
        memory: Option<&Path>,
        hypervisor: &str,
        settings: &VmSettings,
    ) -> Result<Golden, GoldenError> {
        let (vcpus, memory_mib) = (settings.vcpus, settings.memory_mib);
        let unusable = |reason: String| GoldenError::Unusable {
            path: snapshot.to_path_buf(),
            reason,
        };
        let meta = Golden::inspect(snapshot)?;
        if meta.hypervisor != hypervisor {
            return Err(unusable(format!(
                "it was made with {}, but VMs run on {hypervisor}",
                meta.hypervisor
            )));
        }
        if (meta.vcpus, meta.memory_mib) != (vcpus, memory_mib) {
            return Err(unusable(format!(
                "it has {} vCPUs and {} MiB, but VMs are configured with {vcpus} and {memory_mib} (rebuild it)",
                meta.vcpus, meta.memory_mib
            )));
        }
        if let Some(mib) = meta.data_disk_mib
            && mib != settings.data_disk_mib
        {
            return Err(unusable(format!(
                "its data disk has {mib} MiB, but VMs are configured with {} (rebuild it)",
                settings.data_disk_mib
            )));
        }
        if let (Some(built), Ok(configured)) = (&meta.image, settings.image_files())
            && *built != configured
        {
            return Err(unusable(format!(
                "it was booted from {built}, but VMs are configured with {configured} (rebuild it)"
            )));
        }
        let memory = match (&meta.memory_file, memory) {
            (None, _) => None,
            (Some(_), Some(path)) if path.is_file() => Some(path.to_path_buf()),
            (Some(_), _) => {
                return Err(unusable(
                    "GOLDEN_MEMORY must name the snapshot's memory file".into(),
                ));
            }
        };
        Ok(Golden {
            snapshot: snapshot.to_path_buf(),
            memory,
            meta,
        })
    }

    /// How a VM records that it was restored from this snapshot.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.snapshot.display(), self.meta.created_at_ms)
    }

    /// Gives a clone its own copy of the build VM's data disk at `to`: sparse, and a reflink
    /// where the filesystem can, so it costs what the build VM wrote, not the disk's size.
    pub async fn clone_data_disk(&self, to: &Path) -> Result<(), GoldenError> {
        let from = data_disk_path(&self.snapshot);
        let output = tokio::process::Command::new("cp")
            .args(["--sparse=always", "--reflink=auto", "--"])
            .arg(&from)
            .arg(to)
            .output()
            .await
            .map_err(|e| GoldenError::Clone(format!("cannot run cp: {e}")))?;
        if !output.status.success() {
            return Err(GoldenError::Clone(format!(
                "cp {} {}: {}",
                from.display(),
                to.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        // cp gives the copy the read-only golden file's mode; the clone is the VM's own disk.
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(|e| GoldenError::Clone(format!("{}: {e}", to.display())))
    }

    /// Links the snapshot's files into a VM's (empty) snapshot directory, where the backend's
    /// resume looks for its own hibernation image.
    pub async fn stage(&self, snapshot_dir: &Path) -> std::io::Result<()> {
        tokio::fs::create_dir_all(snapshot_dir).await?;
        let mut links = vec![(self.snapshot.clone(), self.meta.state_file.clone())];
        if let (Some(memory), Some(name)) = (&self.memory, &self.meta.memory_file) {
            links.push((memory.clone(), name.clone()));
        }
        for sidecar in &self.meta.sidecars {
            links.push((with_suffix(&self.snapshot, sidecar), sidecar.clone()));
        }
        for (target, name) in links {
            tokio::fs::symlink(&target, snapshot_dir.join(name)).await?;
        }
        Ok(())
    }
}

/// Boots one VM with this host's settings, waits for its agent, hibernates it, and stores the
/// image at `snapshot` (and `memory`). `progress` gets one line per step.
pub async fn build(
    settings: &VmSettings,
    host: &VmHost,
    snapshot: &Path,
    memory: Option<&Path>,
    progress: &dyn Fn(&str),
) -> Result<GoldenMeta, GoldenError> {
    let files = host.hypervisor.snapshot_files();
    if files.memory.is_some() && memory.is_none() {
        return Err(GoldenError::Config(format!(
            "{} keeps memory in its own file: set GOLDEN_MEMORY",
            host.hypervisor.name()
        )));
    }
    let token = super::host::agent_token().map_err(|e| GoldenError::Build(e.to_string()))?;
    // Built beside the VMs' directory, not in it, so a running daemon's orphan sweep leaves it.
    let settings = &VmSettings {
        root: settings.root.with_file_name("golden-build"),
        ..settings.clone()
    };
    let build_id = format!("golden-build-{}", std::process::id());
    let net = NetSpec {
        tap: BUILD_TAP.into(),
        mac: BUILD_MAC.into(),
    };
    let image = settings.image_files().map_err(GoldenError::Config)?;
    let spec = settings
        .spec(
            &build_id,
            &image,
            settings.vcpus,
            settings.memory_mib,
            Some(net),
            &token,
        )
        .map_err(|e| GoldenError::Config(e.to_string()))?;
    let fail = |e: &dyn std::fmt::Display| GoldenError::Build(e.to_string());
    let subnet = settings.limits.subnet;
    host.netlink
        .ensure_bridge(
            &settings.bridge,
            crate::net::BRIDGE_MAC,
            subnet.gateway,
            subnet.prefix,
        )
        .await
        .map_err(|e| fail(&e))?;
    let _ = host.netlink.delete_link(BUILD_TAP).await;
    let outcome = async {
        prepare_dir(&spec, settings.data_disk_mib)
            .await
            .map_err(|e| fail(&e))?;
        host.netlink
            .create_tap(BUILD_TAP, &settings.bridge)
            .await
            .map_err(|e| fail(&e))?;
        progress(&format!(
            "booting {} on {} ({} vCPU, {} MiB)",
            spec.kernel.display(),
            host.hypervisor.name(),
            spec.vcpus,
            spec.memory_mib
        ));
        let started = Instant::now();
        let mut vm = host.hypervisor.boot(&spec).await.map_err(|e| fail(&e))?;
        progress("waiting for the guest agent");
        let agent = match AgentClient::connect(&vm.agent, &token, settings.agent_timeout).await {
            Ok(agent) => agent,
            Err(e) => {
                let _ = host.hypervisor.kill(&mut vm).await;
                return Err(fail(&e));
            }
        };
        let health = agent.health().await.map_err(|e| fail(&e));
        drop(agent);
        if let Err(e) = health {
            let _ = host.hypervisor.kill(&mut vm).await;
            return Err(e);
        }
        progress(&format!(
            "agent up after {:.1} s; saving the snapshot",
            started.elapsed().as_secs_f64()
        ));
        host.hypervisor
            .hibernate(&spec, vm)
            .await
            .map_err(|e| fail(&e))
    }
    .await;
    let _ = host.netlink.delete_link(BUILD_TAP).await;
    let saved = match outcome {
        Ok(saved) => saved,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&spec.dir).await;
            return Err(e);
        }
    };
    let data_disk = spec
        .disks
        .iter()
        .find(|d| !d.read_only)
        .map(|d| d.path.clone());
    let meta = GoldenMeta {
        hypervisor: host.hypervisor.name().to_string(),
        vcpus: settings.vcpus,
        memory_mib: settings.memory_mib,
        agent_token: token.clone(),
        state_file: files.state.to_string(),
        memory_file: files.memory.map(str::to_string),
        sidecars: Vec::new(),
        data_disk_mib: Some(settings.data_disk_mib),
        image: Some(image),
        created_at_ms: now_ms(),
    };
    let meta = store_image(
        &spec.snapshot_dir(),
        data_disk.as_deref(),
        files,
        snapshot,
        memory,
        meta,
    )
    .await;
    let _ = tokio::fs::remove_dir_all(&spec.dir).await;
    let meta = meta?;
    progress(&format!(
        "wrote {} ({} MiB)",
        snapshot.display(),
        saved.state_bytes >> 20
    ));
    Ok(meta)
}

/// Moves the hibernation image's files to their golden places and writes the description
/// last, so a half-written golden snapshot is never taken for a whole one.
async fn store_image(
    dir: &Path,
    data_disk: Option<&Path>,
    files: crate::vmm::SnapshotFiles,
    snapshot: &Path,
    memory: Option<&Path>,
    mut meta: GoldenMeta,
) -> Result<GoldenMeta, GoldenError> {
    let fail = |e: std::io::Error| GoldenError::Build(e.to_string());
    if let Some(parent) = snapshot.parent() {
        super::create_private_dir(parent).await.map_err(fail)?;
    }
    let _ = tokio::fs::remove_file(meta_path(snapshot)).await;
    move_file(&dir.join(files.state), snapshot)
        .await
        .map_err(fail)?;
    if let (Some(name), Some(memory)) = (files.memory, memory) {
        move_file(&dir.join(name), memory).await.map_err(fail)?;
    }
    let data_disk =
        data_disk.ok_or_else(|| GoldenError::Build("the build VM has no data disk".into()))?;
    move_file(data_disk, &data_disk_path(snapshot))
        .await
        .map_err(fail)?;
    let mut entries = tokio::fs::read_dir(dir).await.map_err(fail)?;
    while let Some(entry) = entries.next_entry().await.map_err(fail)? {
        let name = entry.file_name().to_string_lossy().to_string();
        if name == files.state || Some(name.as_str()) == files.memory {
            continue;
        }
        move_file(&entry.path(), &with_suffix(snapshot, &name))
            .await
            .map_err(fail)?;
        meta.sidecars.push(name);
    }
    let text = serde_json::to_vec_pretty(&meta).map_err(|e| GoldenError::Build(e.to_string()))?;
    let path = meta_path(snapshot);
    let partial = with_suffix(&path, "partial");
    write_private(&partial, &text).await.map_err(fail)?;
    tokio::fs::rename(&partial, &path).await.map_err(fail)?;
    Ok(meta)
}

/// Moves one file of the image to its golden place, read-only: every VM is created from it,
/// so no process may write to it (the backends also never open a snapshot path for writing,
/// which is what protects it from root; see `vmm::private`).
async fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match tokio::fs::rename(from, to).await {
        Ok(()) => {}
        // Across filesystems: copy under a fresh name, then rename into place.
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            let partial = with_suffix(to, "partial");
            let _ = tokio::fs::remove_file(&partial).await;
            tokio::fs::copy(from, &partial).await?;
            tokio::fs::rename(&partial, to).await?;
            tokio::fs::remove_file(from).await?;
        }
        Err(e) => return Err(e),
    }
    tokio::fs::set_permissions(to, std::fs::Permissions::from_mode(GOLDEN_FILE_MODE)).await
}

/// The description holds the golden agent's token: root-only.
async fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.to_path_buf();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(&bytes)?;
        file.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
#[path = "golden_tests.rs"]
mod tests;
