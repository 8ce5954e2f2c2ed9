//! Applying a diff snapshot's memory file onto the full memory file it was taken against, so a
//! restore always loads one whole file.
//!
//! Firecracker writes a diff's memory file at the size of the guest's memory, with the pages
//! dirtied since the last load (or boot) at their offsets and holes everywhere else. The merge
//! copies each data region (found with `lseek(SEEK_DATA/SEEK_HOLE)`) to the same offsets of the
//! base and fsyncs it, so it costs what the guest dirtied, not its memory size. Copying the same
//! diff again writes the same bytes at the same places: a merge cut short is finished by running
//! it again.
//!
//! The holes are what tell the pages the guest left alone from the pages it zeroed, so a diff is
//! only written where the filesystem reports holes page by page ([`holes_are_page_granular`]).
//! There is no "whole file is data" fallback: copying a diff's unwritten pages would write zeros
//! over the base, silently.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::{Whence, lseek};

/// Firecracker dirties and dumps guest memory in 4 KiB pages.
pub const PAGE: u64 = 4096;
const COPY_CHUNK: u64 = 1 << 20;

/// What a merge copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Runs of contiguous data in the diff.
    pub regions: u64,
    pub bytes: u64,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Opens a regular file without following a link in its last component: a jailed Firecracker
/// owns the directory its diff is written to and could leave a link there for the daemon (root)
/// to read or write through.
fn open_regular(path: &Path, write: bool) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(invalid(format!("{} is not a regular file", path.display())));
    }
    Ok(file)
}

fn offset(value: u64) -> io::Result<i64> {
    i64::try_from(value).map_err(|_| invalid(format!("offset {value} is out of range")))
}

/// The data regions `[start, end)` of `file` (of length `len`), in order.
struct DataRegions<'a> {
    file: &'a File,
    len: u64,
    next: u64,
}

impl Iterator for DataRegions<'_> {
    type Item = io::Result<(u64, u64)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.len {
            return None;
        }
        let region = offset(self.next).and_then(|from| {
            let start = match lseek(self.file, from, Whence::SeekData) {
                Ok(start) => start,
                // No data past `from`: the rest is a hole.
                Err(Errno::ENXIO) => return Ok(None),
                Err(Errno::EINVAL) => {
                    return Err(invalid(
                        "the filesystem does not report holes (SEEK_DATA), so the diff's \
                         dirtied pages cannot be told from the pages it never wrote"
                            .into(),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            let end = lseek(self.file, start, Whence::SeekHole)?;
            Ok(Some((start as u64, (end as u64).min(self.len))))
        });
        match region {
            Ok(Some((start, end))) => {
                self.next = end.max(start + 1);
                Some(Ok((start, end)))
            }
            Ok(None) => {
                self.next = self.len;
                None
            }
            Err(e) => {
                self.next = self.len;
                Some(Err(e))
            }
        }
    }
}

fn data_regions(file: &File, len: u64) -> DataRegions<'_> {
    DataRegions { file, len, next: 0 }
}

/// The bytes of `path` that hold data (what a diff carries).
pub fn data_bytes(path: &Path) -> io::Result<u64> {
    let file = open_regular(path, false)?;
    let len = file.metadata()?.len();
    data_regions(&file, len).try_fold(0, |sum, region| region.map(|(s, e)| sum + (e - s)))
}

/// Copies every data region of `diff` to the same offsets of `base`, then fsyncs `base`.
/// Idempotent; `diff` is left in place (the caller removes it once the merge is durable).
pub fn merge(diff: &Path, base: &Path) -> io::Result<MergeStats> {
    let source = open_regular(diff, false)?;
    let target = open_regular(base, true)?;
    let (diff_len, base_len) = (source.metadata()?.len(), target.metadata()?.len());
    if diff_len != base_len {
        return Err(invalid(format!(
            "the diff {} is {diff_len} bytes but the base memory {} is {base_len}: it is not a \
             diff of that memory",
            diff.display(),
            base.display()
        )));
    }
    let mut stats = MergeStats::default();
    let mut buffer = vec![0u8; COPY_CHUNK as usize];
    for region in data_regions(&source, diff_len) {
        let (start, end) = region?;
        // Firecracker writes whole pages; anything else is not one of its diffs.
        if start % PAGE != 0 || (end % PAGE != 0 && end != diff_len) {
            return Err(invalid(format!(
                "{}: data at [{start}, {end}) is not whole pages",
                diff.display()
            )));
        }
        let mut at = start;
        while at < end {
            let chunk = &mut buffer[..(end - at).min(COPY_CHUNK) as usize];
            source.read_exact_at(chunk, at)?;
            target.write_all_at(chunk, at)?;
            at += chunk.len() as u64;
        }
        stats.regions += 1;
        stats.bytes += end - start;
    }
    target.sync_all()?;
    Ok(stats)
}

/// Whether the filesystem holding `dir` reports holes page by page: a page written in the
/// middle of a hole must come back as exactly one page of data. A filesystem without
/// `SEEK_DATA` (which then reports the whole file as data) or with blocks larger than a page
/// (whose unwritten neighbours would read as zeros) fails, and the VM hibernates in full there.
pub fn holes_are_page_granular(dir: &Path) -> io::Result<bool> {
    let probe = dir.join(".hole-probe");
    crate::vmm::private::discard(&probe)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(crate::vmm::private::FILE_MODE)
        .open(&probe)?;
    let outcome = (|| {
        file.set_len(3 * PAGE)?;
        file.write_all_at(&[0xa5; PAGE as usize], PAGE)?;
        let mut regions = data_regions(&file, 3 * PAGE);
        Ok(match (regions.next(), regions.next()) {
            (Some(Ok(first)), None) => first == (PAGE, 2 * PAGE),
            _ => false,
        })
    })();
    drop(file);
    std::fs::remove_file(&probe)?;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGES: u64 = 64;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE as usize]
    }

    /// A base of `PAGES` pages, page `i` filled with `i`.
    fn base(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("memory");
        let bytes: Vec<u8> = (0..PAGES).flat_map(|i| page(i as u8)).collect();
        std::fs::write(&path, bytes).expect("base");
        path
    }

    /// A diff as Firecracker writes it: the memory's size, the given pages and holes.
    fn diff(dir: &Path, len: u64, pages: &[(u64, u8)]) -> std::path::PathBuf {
        let path = dir.join("memory.diff");
        let file = File::create(&path).expect("diff");
        file.set_len(len).expect("set_len");
        for (index, fill) in pages {
            file.write_all_at(&page(*fill), index * PAGE)
                .expect("write page");
        }
        path
    }

    fn expected(pages: &[(u64, u8)]) -> Vec<u8> {
        (0..PAGES)
            .flat_map(|i| {
                let fill = pages
                    .iter()
                    .rev()
                    .find(|(p, _)| *p == i)
                    .map_or(i as u8, |(_, f)| *f);
                page(fill)
            })
            .collect()
    }

    fn page_granular() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            holes_are_page_granular(dir.path()).expect("probe"),
            "these tests need a filesystem with page-sized holes (ext4, XFS, btrfs, tmpfs)"
        );
        assert!(!dir.path().join(".hole-probe").exists());
        dir
    }

    #[test]
    fn a_merge_copies_the_dirty_regions_and_leaves_the_holes() {
        let dir = page_granular();
        let base = base(dir.path());
        // Three regions: one page, a run of three (one of them zeroed by the guest), and the
        // last page.
        let dirtied = [
            (1, 0xee),
            (10, 0x11),
            (11, 0x00),
            (12, 0x22),
            (PAGES - 1, 0xff),
        ];
        let diff = diff(dir.path(), PAGES * PAGE, &dirtied);
        assert_eq!(data_bytes(&diff).expect("data"), 5 * PAGE);
        let stats = merge(&diff, &base).expect("merge");
        assert_eq!(
            stats,
            MergeStats {
                regions: 3,
                bytes: 5 * PAGE
            }
        );
        assert_eq!(std::fs::read(&base).expect("read"), expected(&dirtied));
    }

    #[test]
    fn a_diff_of_holes_only_leaves_the_base_untouched() {
        let dir = page_granular();
        let base = base(dir.path());
        let diff = diff(dir.path(), PAGES * PAGE, &[]);
        assert_eq!(merge(&diff, &base).expect("merge"), MergeStats::default());
        assert_eq!(std::fs::read(&base).expect("read"), expected(&[]));
    }

    #[test]
    fn merging_again_changes_nothing() {
        let dir = page_granular();
        let base = base(dir.path());
        let dirtied = [(0, 0x77), (33, 0x88)];
        let diff = diff(dir.path(), PAGES * PAGE, &dirtied);
        // A first merge cut short: only the first region reached the base.
        {
            let target = open_regular(&base, true).expect("open");
            target.write_all_at(&page(0x77), 0).expect("write");
        }
        let first = merge(&diff, &base).expect("merge");
        let after_first = std::fs::read(&base).expect("read");
        let second = merge(&diff, &base).expect("merge again");
        assert_eq!(first, second);
        assert_eq!(std::fs::read(&base).expect("read"), after_first);
        assert_eq!(after_first, expected(&dirtied));
    }

    #[test]
    fn the_bytes_copied_are_the_bytes_dirtied() {
        let dir = page_granular();
        let base = base(dir.path());
        for count in [1u64, 7, 32] {
            // Every other page, so each is its own region.
            let dirtied: Vec<(u64, u8)> = (0..count).map(|i| ((i * 2) % PAGES, 0x5a)).collect();
            let diff = diff(dir.path(), PAGES * PAGE, &dirtied);
            let stats = merge(&diff, &base).expect("merge");
            assert_eq!(stats.bytes, count * PAGE, "{count} pages");
            assert_eq!(stats.regions, count);
        }
    }

    #[test]
    fn a_diff_of_another_size_is_refused() {
        let dir = page_granular();
        let base = base(dir.path());
        for len in [(PAGES + 1) * PAGE, (PAGES - 1) * PAGE] {
            let diff = diff(dir.path(), len, &[(0, 0x01)]);
            let error = merge(&diff, &base).expect_err("refused");
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            assert!(
                error
                    .to_string()
                    .contains("it is not a diff of that memory"),
                "{error}"
            );
            assert_eq!(std::fs::read(&base).expect("read"), expected(&[]));
        }
    }

    #[test]
    fn links_are_not_followed() {
        let dir = page_granular();
        let base = base(dir.path());
        let diff = diff(dir.path(), PAGES * PAGE, &[(2, 0x02)]);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&base, &link).expect("symlink");
        assert!(merge(&diff, &link).is_err());
        let diff_link = dir.path().join("diff-link");
        std::os::unix::fs::symlink(&diff, &diff_link).expect("symlink");
        assert!(merge(&diff_link, &base).is_err());
        assert_eq!(std::fs::read(&base).expect("read"), expected(&[]));
    }
}
