//! Caps the files a running VM makes grow: its serial console (which the guest writes at will)
//! and Firecracker's log and metrics. A guest that prints without end would otherwise fill
//! `data_dir`, and then the store's writes fail for every user.
//!
//! A file past its cap is trimmed in place to its newest part, while the hypervisor keeps
//! writing to it. On ext4 and XFS the head is cut off with `FALLOC_FL_COLLAPSE_RANGE`, which the
//! filesystem applies atomically against concurrent writes: an `O_APPEND` writer (QEMU's
//! `append=on` console, and the console file the daemon gives Firecracker as stdout) carries on
//! at the new end. Firecracker opens its log and metrics without `O_APPEND`, so it keeps writing
//! at its old offset after a trim; the gap reads as a hole, which takes no disk space and is cut
//! off at the next trim. Elsewhere (tmpfs) the newest part is copied to the front and the file
//! truncated, which may drop the few lines written in between.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};

/// What one trim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trimmed {
    /// The file was within its cap, or is not there.
    Within,
    /// This many bytes of the file's head were removed.
    Cut(u64),
}

/// Trims `path` to about half of `max_bytes` (its newest bytes) when it holds more than
/// `max_bytes`. Half, so that a file is trimmed once per `max_bytes / 2` written, not at every
/// check, and what stays is a useful tail for diagnostics.
pub fn trim(path: &Path, max_bytes: u64) -> std::io::Result<Trimmed> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        // The daemon made these files; a link in their place is not followed.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Trimmed::Within),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Trimmed::Within);
    }
    // A file written without O_APPEND after a trim is sparse: what counts against the disk is
    // the larger of its allocated blocks and its length past the last cut, so both are bounded
    // by looking at the length.
    let len = meta.len();
    if len <= max_bytes {
        return Ok(Trimmed::Within);
    }
    let keep = (max_bytes / 2).max(1);
    let block = meta.blksize().max(1);
    let head = (len - keep) / block * block;
    if head == 0 {
        return Ok(Trimmed::Within);
    }
    match fallocate(
        &file,
        FallocateFlags::FALLOC_FL_COLLAPSE_RANGE,
        0,
        off(head)?,
    ) {
        Ok(()) => Ok(Trimmed::Cut(head)),
        Err(Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOSYS) => copy_tail(&file, len, keep),
        Err(e) => Err(e.into()),
    }
}

/// The fallback: the last `keep` bytes moved to the front, the rest cut off.
fn copy_tail(file: &File, len: u64, keep: u64) -> std::io::Result<Trimmed> {
    let mut tail = vec![0u8; usize::try_from(keep).unwrap_or(usize::MAX)];
    let start = len - keep;
    let mut read = 0;
    while read < tail.len() {
        match file.read_at(&mut tail[read..], start + read as u64)? {
            0 => break,
            n => read += n,
        }
    }
    tail.truncate(read);
    file.set_len(0)?;
    file.write_all_at(&tail, 0)?;
    Ok(Trimmed::Cut(start))
}

/// Whether the filesystem holding `dir` cuts a file's head in place (`doctor` reports it): a
/// probe file of three blocks loses its first one.
pub fn trims_in_place(dir: &Path) -> std::io::Result<bool> {
    let probe = dir.join(format!(".logcap-probe-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&probe)?;
    let outcome = (|| {
        let block = file.metadata()?.blksize().max(1);
        file.write_all_at(
            &vec![b'x'; usize::try_from(3 * block).unwrap_or(3 * 4096)],
            0,
        )?;
        match fallocate(
            &file,
            FallocateFlags::FALLOC_FL_COLLAPSE_RANGE,
            0,
            off(block)?,
        ) {
            Ok(()) => Ok(true),
            Err(Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOSYS) => Ok(false),
            Err(e) => Err(e.into()),
        }
    })();
    let _ = std::fs::remove_file(&probe);
    outcome
}

fn off(n: u64) -> std::io::Result<i64> {
    i64::try_from(n).map_err(|_| std::io::Error::other("file offset out of range"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn fill(path: &Path, lines: usize) -> std::fs::File {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for n in 0..lines {
            writeln!(
                file,
                "line {n:08} of the guest's console output, padded out a bit"
            )
            .unwrap();
        }
        file
    }

    #[test]
    fn a_file_within_its_cap_or_absent_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        assert_eq!(trim(&path, 1024).unwrap(), Trimmed::Within);
        fill(&path, 10);
        let before = std::fs::read(&path).unwrap();
        assert_eq!(trim(&path, 1 << 20).unwrap(), Trimmed::Within);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn an_appending_writer_carries_on_at_the_new_end_and_the_tail_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let cap = 64 * 1024;
        let mut writer = fill(&path, 10_000);
        assert!(std::fs::metadata(&path).unwrap().len() > cap);
        assert!(matches!(trim(&path, cap).unwrap(), Trimmed::Cut(_)));
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= cap, "{len}");
        writeln!(writer, "after the trim").unwrap();
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_string();
        assert!(text.contains("line 00009999 "), "the newest lines stay");
        assert!(!text.contains("line 00000000 "), "the oldest are gone");
        assert!(text.ends_with("after the trim\n"), "appended at the end");
        assert!(!text.contains('\0'), "no hole in an appended file");
    }

    #[test]
    fn a_positioned_writer_leaves_only_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firecracker.log");
        let cap = 64 * 1024;
        drop(fill(&path, 10_000));
        // As Firecracker opens its log: read-write, not appending, at its own offset.
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let offset = std::fs::metadata(&path).unwrap().len();
        trim(&path, cap).unwrap();
        writer.write_all_at(b"late line\n", offset).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.blocks() * 512 <= cap + 2 * meta.blksize(), "{meta:?}");
        // The next trim cuts the hole off too.
        trim(&path, cap).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.len() <= cap, "{}", meta.len());
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.ends_with(b"late line\n"));
    }

    #[test]
    fn the_copy_fallback_keeps_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        drop(fill(&path, 1000));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let len = file.metadata().unwrap().len();
        assert_eq!(copy_tail(&file, len, 100).unwrap(), Trimmed::Cut(len - 100));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 100);
        assert!(String::from_utf8_lossy(&bytes).contains("line 00000999 "));
    }

    #[test]
    fn the_probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        // ext4 and XFS collapse ranges; tmpfs does not. Either answer is fine here.
        trims_in_place(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_link_in_place_of_the_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        drop(fill(&target, 10_000));
        let link = dir.path().join("console.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(trim(&link, 1024).is_err());
        assert!(std::fs::metadata(&target).unwrap().len() > 1024);
    }
}
