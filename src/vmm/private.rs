//! Hibernation images hold a guest's whole memory (its secrets included): they are mode 0600 in
//! 0700 directories, and they are written only under fresh names and then renamed into place.
//! An existing path in a snapshot directory is never opened for writing, since it may be a link
//! to the shared golden snapshot (`vms::golden`), whose files every later VM is created from.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents as 0700, and tightens `dir` itself to 0700 if it was
/// already there with a looser mode.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o7777 != DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Removes whatever is at `path` (a file or a link, not what it points to), so that a writer
/// that creates `path` next makes a new file.
pub fn discard(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes the finished file `partial` private and durable and gives it its final name, which
/// replaces whatever was there (a link included) without writing through it. Returns its size.
pub fn publish(partial: &Path, path: &Path) -> std::io::Result<u64> {
    let meta = std::fs::symlink_metadata(partial)?;
    if !meta.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            partial.display()
        )));
    }
    let file = std::fs::File::open(partial)?;
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    file.sync_all()?;
    std::fs::rename(partial, path)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(meta.len())
}

/// Writes `bytes` to a new file at `path` (removing what was there first), mode 0600, durably.
pub fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    discard(path)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_looser_directory_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("vms/vm1");
        private_dir(&vm).unwrap();
        assert_eq!(mode(&vm), 0o700);
        std::fs::set_permissions(&vm, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&vm).unwrap();
        assert_eq!(mode(&vm), 0o700);
    }

    #[test]
    fn publishing_replaces_a_link_without_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let golden = dir.path().join("golden");
        std::fs::write(&golden, b"golden").unwrap();
        let state = dir.path().join("state");
        std::os::unix::fs::symlink(&golden, &state).unwrap();
        let partial = dir.path().join("state.partial");
        write_new(&partial, b"mine").unwrap();
        assert_eq!(publish(&partial, &state).unwrap(), 4);
        assert_eq!(std::fs::read(&golden).unwrap(), b"golden");
        assert_eq!(std::fs::read(&state).unwrap(), b"mine");
        assert!(std::fs::symlink_metadata(&state).unwrap().is_file());
        assert_eq!(mode(&state), 0o600);
        // A link at the fresh name is removed, not written through.
        std::os::unix::fs::symlink(&golden, &partial).unwrap();
        write_new(&partial, b"again").unwrap();
        assert_eq!(std::fs::read(&golden).unwrap(), b"golden");
    }
}
