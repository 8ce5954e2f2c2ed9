//! The memory file a diff snapshot is merged onto. It lives in `<vm dir>/memory-base/`, out of
//! `snapshot/`, which the VM manager empties after each resume and before each hibernation:
//! - `memory`: the VM's latest whole guest memory. While the VM is hibernated it is the same file
//!   (a hard link) as `snapshot/memory`; while the VM runs, its process maps it, privately.
//! - `memory.diff`: a diff Firecracker wrote, durable and not yet merged.
//! - `loaded.json`: the `memory` (device, inode, size) the running process was restored from,
//!   with dirty page tracking on. Without it the next hibernation is Full.
//!
//! A hibernation is a Diff only when `loaded.json` names `memory`, `memory` has no other name
//! (nothing shares it, the golden snapshot least of all), no older diff is pending and the
//! filesystem reports holes page by page. Otherwise it is Full, the base is dropped, and the
//! next resume makes the new full file the base.
//!
//! The crash story, each step durable before the next:
//! 1. [`MemoryBase::plan`] removes `loaded.json` first: the snapshot consumes the process's dirty
//!    log, so after any failure or crash from here on the next hibernation is Full.
//! 2. Firecracker writes `snapshot/vmstate.partial` and `snapshot/memory.diff.partial`. The
//!    backend publishes `vmstate`, moves the diff to `memory-base/memory.diff`
//!    ([`MemoryBase::commit`], the commit point: `memory` + `memory.diff` is the image now), then
//!    writes `meta.json` with `diff: true`. `snapshot/memory` is absent until the merge is done,
//!    so a half-merged file is never under the name a restore loads.
//! 3. The process is killed (it maps `memory`, which must not change under it), then
//!    [`MemoryBase::finish`] merges the diff into `memory`, fsyncs it, links it as
//!    `snapshot/memory`, and removes the diff, in that order.
//!
//! A crash or an error in 3 leaves `memory.diff` in place, and every resume of a `diff: true`
//! snapshot runs [`MemoryBase::finish`] before it loads: the merge is idempotent, and the diff
//! goes only once the merged memory is durable and linked. (Under the VM manager, a daemon crash
//! before the hibernation returned fails the VM, as for any hibernation cut short after its
//! process stopped; what is on disk stays consistent.)

use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::api::SnapshotType;
use super::merge::{self, MergeStats};
use crate::vmm::{VmSpec, private};

#[derive(Debug, Clone)]
pub(super) struct MemoryBase {
    dir: PathBuf,
}

/// What the running process was restored from.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Loaded {
    dev: u64,
    ino: u64,
    len: u64,
}

impl Loaded {
    fn of(meta: &Metadata) -> Loaded {
        Loaded {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
        }
    }
}

fn same_file(a: &Metadata, b: &Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    match std::fs::File::open(dir) {
        Ok(dir) => dir.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut text = path.as_os_str().to_os_string();
    text.push(suffix);
    PathBuf::from(text)
}

impl MemoryBase {
    pub(super) fn of(spec: &VmSpec) -> MemoryBase {
        MemoryBase::at(spec.dir.join("memory-base"))
    }

    fn at(dir: PathBuf) -> MemoryBase {
        MemoryBase { dir }
    }

    fn memory(&self) -> PathBuf {
        self.dir.join("memory")
    }

    fn pending(&self) -> PathBuf {
        self.dir.join("memory.diff")
    }

    fn loaded(&self) -> PathBuf {
        self.dir.join("loaded.json")
    }

    /// Durably removes one of the base's files.
    fn forget(&self, path: &Path) -> io::Result<()> {
        private::discard(path)?;
        sync_dir(&self.dir)
    }

    /// A cold boot: the new process was restored from no file.
    pub(super) fn forget_process(&self) -> io::Result<()> {
        self.forget(&self.loaded())
    }

    /// Before a restore from `snapshot_memory`: makes that file the base and records it, when it
    /// is the VM's own. Returns whether it did.
    pub(super) fn track(&self, snapshot_memory: &Path) -> io::Result<bool> {
        self.forget(&self.loaded())?;
        let memory = self.memory();
        let restored = match std::fs::symlink_metadata(snapshot_memory) {
            Ok(meta) if meta.is_file() => meta,
            // A link to the golden snapshot is never written to, so it is never a base.
            _ => {
                self.forget(&memory)?;
                return Ok(false);
            }
        };
        private::private_dir(&self.dir)?;
        let current = std::fs::symlink_metadata(&memory).ok();
        if !current.is_some_and(|meta| same_file(&meta, &restored)) {
            private::discard(&memory)?;
            if let Err(e) = std::fs::hard_link(snapshot_memory, &memory) {
                // A jail on another filesystem, say: without a base, every hibernation is Full.
                tracing::warn!(file = %snapshot_memory.display(), error = %e,
                    "cannot keep the restored memory as a diff base; hibernations stay full");
                return Ok(false);
            }
        }
        let linked = std::fs::symlink_metadata(&memory)?;
        // The snapshot's name and this one, and no other: nothing else shares what a merge writes.
        if !same_file(&linked, &restored) || linked.nlink() != 2 {
            self.forget(&memory)?;
            return Ok(false);
        }
        let record = serde_json::to_vec(&Loaded::of(&linked)).map_err(io::Error::other)?;
        let partial = with_suffix(&self.loaded(), ".partial");
        private::write_new(&partial, &record)?;
        private::publish(&partial, &self.loaded())?;
        Ok(true)
    }

    /// At a hibernation, before the snapshot: Diff when the running process was restored from
    /// the base with dirty page tracking and the base is the VM's alone, else Full (and the base
    /// goes). `snapshot_memory` is removed either way: it is older than what is being written.
    pub(super) fn plan(
        &self,
        snapshot_dir: &Path,
        snapshot_memory: &Path,
    ) -> io::Result<SnapshotType> {
        let loaded = std::fs::read(self.loaded())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Loaded>(&bytes).ok());
        self.forget(&self.loaded())?;
        private::discard(snapshot_memory)?;
        if let Some(loaded) = loaded
            && self.can_diff(&loaded, snapshot_dir)?
        {
            return Ok(SnapshotType::Diff);
        }
        private::discard(&self.pending())?;
        self.forget(&self.memory())?;
        Ok(SnapshotType::Full)
    }

    fn can_diff(&self, loaded: &Loaded, snapshot_dir: &Path) -> io::Result<bool> {
        let Ok(base) = std::fs::symlink_metadata(self.memory()) else {
            return Ok(false);
        };
        if !base.is_file() || Loaded::of(&base) != *loaded || base.nlink() != 1 {
            return Ok(false);
        }
        if std::fs::symlink_metadata(self.pending()).is_ok() {
            return Ok(false);
        }
        merge::holes_are_page_granular(snapshot_dir)
    }

    /// Makes the diff Firecracker wrote at `written` durable as the pending diff: from here the
    /// base plus the diff is the VM's memory. Returns the bytes of data the diff holds.
    pub(super) fn commit(&self, written: &Path) -> io::Result<u64> {
        private::publish(written, &self.pending())?;
        merge::data_bytes(&self.pending())
    }

    /// Merges a pending diff into the base, then gives the snapshot its memory under
    /// `snapshot_memory` (the base itself, linked), then removes the diff. Safe to run again
    /// after a crash at any point, and when nothing is pending. Returns what was merged.
    pub(super) fn finish(&self, snapshot_memory: &Path) -> io::Result<Option<MergeStats>> {
        let memory = self.memory();
        // A link left by a finish cut short between its link and its rename.
        let partial = with_suffix(snapshot_memory, ".partial");
        private::discard(&partial)?;
        let base = std::fs::symlink_metadata(&memory)?;
        let linked = std::fs::symlink_metadata(snapshot_memory)
            .ok()
            .is_some_and(|meta| same_file(&meta, &base));
        // Written to only while it is the VM's own: no name but this one and the snapshot's.
        if !base.is_file() || base.nlink() != 1 + u64::from(linked) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is shared with another file: a diff is not merged into it",
                    memory.display()
                ),
            ));
        }
        let pending = self.pending();
        let stats = match std::fs::symlink_metadata(&pending) {
            Ok(_) => Some(merge::merge(&pending, &memory)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if !linked {
            std::fs::hard_link(&memory, &partial)?;
            std::fs::rename(&partial, snapshot_memory)?;
            if let Some(dir) = snapshot_memory.parent() {
                sync_dir(dir)?;
            }
        }
        self.forget(&pending)?;
        Ok(stats)
    }
}

#[cfg(test)]
#[path = "base_tests.rs"]
mod tests;
