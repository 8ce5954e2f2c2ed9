//! The fake Firecracker's guest memory. Each page's bytes are a function of its index and of how
//! many times the guest wrote it, so the fake writes memory files the way Firecracker does (a
//! Full snapshot: every page; a Diff: a sparse file the size of the memory with only the pages
//! dirtied since the last boot, load or snapshot) and can check any memory file against the
//! guest without keeping a copy of it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GuestMemory {
    pub size: u64,
    /// How many times each page was written since boot; pages never written are absent.
    pub writes: BTreeMap<u64, u64>,
    /// What KVM's dirty log would hold: the pages written since the last boot, load or snapshot.
    #[serde(skip)]
    pub dirty: BTreeSet<u64>,
}

/// What a snapshot's memory file took on disk.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// The bytes the fake wrote into it.
    pub bytes: u64,
    /// The blocks the file holds, as the filesystem counts them.
    pub allocated: u64,
    pub len: u64,
}

/// The bytes of page `index` after `generation` writes.
pub fn page_bytes(index: u64, generation: u64) -> Vec<u8> {
    let seed = index.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ generation.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ 0xa5a5_a5a5_a5a5_a5a5;
    let mut page = vec![0u8; PAGE as usize];
    let mut word = seed;
    for chunk in page.chunks_exact_mut(8) {
        chunk.copy_from_slice(&word.to_le_bytes());
        word = word.wrapping_add(0x1656_67b1_9e37_79f9);
    }
    page
}

impl GuestMemory {
    pub fn new(mem_size_mib: u64) -> GuestMemory {
        GuestMemory {
            size: mem_size_mib * MIB,
            ..GuestMemory::default()
        }
    }

    pub fn pages(&self) -> u64 {
        self.size / PAGE
    }

    fn page(&self, index: u64) -> Vec<u8> {
        page_bytes(index, self.writes.get(&index).copied().unwrap_or(0))
    }

    /// The guest writes to `pages`.
    pub fn write(&mut self, pages: &[u64]) -> Result<(), String> {
        if let Some(page) = pages.iter().find(|p| **p >= self.pages()) {
            return Err(format!(
                "page {page} is past the guest's {} pages",
                self.pages()
            ));
        }
        for page in pages {
            *self.writes.entry(*page).or_default() += 1;
            self.dirty.insert(*page);
        }
        Ok(())
    }

    /// A Full snapshot's memory: every page, through any link at `path`, as Firecracker opens
    /// it (create, truncate).
    pub fn dump_full(&self, path: &Path) -> std::io::Result<Written> {
        let mut file =
            std::io::BufWriter::with_capacity(MIB as usize, std::fs::File::create(path)?);
        for index in 0..self.pages() {
            file.write_all(&self.page(index))?;
        }
        file.flush()?;
        written(path, self.size)
    }

    /// A Diff snapshot's memory: the memory's size, the dirty pages at their offsets, holes
    /// elsewhere.
    pub fn dump_diff(&self, path: &Path) -> std::io::Result<Written> {
        let file = std::fs::File::create(path)?;
        file.set_len(self.size)?;
        for index in &self.dirty {
            file.write_all_at(&self.page(*index), index * PAGE)?;
        }
        written(path, self.dirty.len() as u64 * PAGE)
    }

    /// Whether the file at `path` holds exactly this memory; else the first page that differs.
    pub fn check(&self, path: &Path) -> Result<(), String> {
        let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len != self.size {
            return Err(format!(
                "{} is {len} bytes, the guest's memory {}",
                path.display(),
                self.size
            ));
        }
        let mut page = vec![0u8; PAGE as usize];
        for index in 0..self.pages() {
            file.read_exact(&mut page).map_err(|e| e.to_string())?;
            if page != self.page(index) {
                return Err(format!(
                    "{}: page {index} is not the guest's (written {} times)",
                    path.display(),
                    self.writes.get(&index).copied().unwrap_or(0)
                ));
            }
        }
        Ok(())
    }

    /// The snapshot's state file (Firecracker's holds the devices; the fake's, the memory's
    /// history).
    pub fn save_state(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::json!({ "fake_firecracker_vmstate": self });
        std::fs::write(path, text.to_string())
    }

    pub fn load_state(path: &Path) -> Result<GuestMemory, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| format!("{} is not a snapshot the fake wrote", path.display()))?;
        serde_json::from_value(value["fake_firecracker_vmstate"].clone())
            .map_err(|_| format!("{} is not a snapshot the fake wrote", path.display()))
    }
}

fn written(path: &Path, bytes: u64) -> std::io::Result<Written> {
    let meta = std::fs::metadata(path)?;
    Ok(Written {
        bytes,
        allocated: meta.blocks() * 512,
        len: meta.len(),
    })
}
