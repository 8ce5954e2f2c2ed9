//! QEMU's confinement: its seccomp sandbox and user, its kernel command line (with the agent's
//! token) in a root-only file instead of its arguments, and its disks opened by the daemon.
//!
//! The VM's disks are inherited by QEMU as fd sets (`-add-fd`, `file=/dev/fdset/N`). QEMU runs as an unprivileged user (`-runas`) that cannot open the
//! files under the daemon's 0700 directories, and it reopens a disk after it has switched user:
//! an incoming migration activates its images at `cont`, with write access. From an fd set
//! QEMU dups the descriptor of the access mode it wants instead of opening the path.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::{VmSpec, VmmError};

/// `-sandbox`, and `-runas` when `user` is given.
pub fn sandbox_args(user: Option<&str>) -> Result<Vec<String>, VmmError> {
    // The sandbox forbids what a device emulator never needs: exec (so `exec:` migration is
    // out), obsolete syscalls, and scheduling or resource changes. QEMU 7.2 installs the filter
    // before `-runas` switches user, so `elevateprivileges=deny` would kill it there; after the
    // switch it has no privilege left to raise.
    let elevate = if user.is_some() { "allow" } else { "deny" };
    let mut args = vec![
        "-sandbox".to_string(),
        format!("on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"),
    ];
    if let Some(user) = user {
        let plain = !user.is_empty()
            && user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !plain {
            return Err(VmmError::Spec(format!("{user:?} is not a user name")));
        }
        args.extend(["-runas".to_string(), user.to_string()]);
    }
    Ok(args)
}

/// Writes the kernel command line, which carries the agent's token, into `path` (0600, in the
/// 0700 `dir`) for `-readconfig`: on the command line `ps` would show it to every local user.
/// Since QEMU 6, `-append` is the machine property `append`.
pub fn write_boot_config(dir: &Path, path: &Path, kernel_args: &str) -> Result<(), VmmError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if kernel_args.contains(['"', '\\', '\n', '\r']) {
        return Err(VmmError::Spec(
            "the kernel arguments cannot hold quotes, backslashes or line breaks".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| VmmError::io(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| VmmError::io(dir, e))?;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| VmmError::io(path, e))?;
    write!(file, "[machine]\n  append = \"{kernel_args}\"\n").map_err(|e| VmmError::io(path, e))
}

pub struct DiskFds {
    /// Per disk, in spec order: its fd set number, and its descriptors (read-only, and
    /// read-write unless the disk is read-only).
    sets: Vec<(u32, Vec<OwnedFd>)>,
}

impl DiskFds {
    /// Opens every disk of `spec` as the daemon (root).
    pub fn open(spec: &VmSpec) -> Result<DiskFds, VmmError> {
        let mut sets = Vec::new();
        for (index, disk) in spec.disks.iter().enumerate() {
            let open = |write: bool| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(write)
                    .open(&disk.path)
                    .map(OwnedFd::from)
                    .map_err(|e| VmmError::io(&disk.path, e))
            };
            let mut fds = vec![open(false)?];
            if !disk.read_only {
                fds.push(open(true)?);
            }
            sets.push((index as u32 + 1, fds));
        }
        Ok(DiskFds { sets })
    }

    /// The `-add-fd` arguments, and the `file=` path of each disk, in spec order.
    pub fn args(&self) -> (Vec<String>, Vec<String>) {
        let mut args = Vec::new();
        let mut paths = Vec::new();
        for (set, fds) in &self.sets {
            for fd in fds {
                args.push("-add-fd".to_string());
                args.push(format!("fd={},set={set}", fd.as_raw_fd()));
            }
            paths.push(format!("/dev/fdset/{set}"));
        }
        (args, paths)
    }

    fn raw(&self) -> Vec<RawFd> {
        self.sets
            .iter()
            .flat_map(|(_, fds)| fds.iter().map(|fd| fd.as_raw_fd()))
            .collect()
    }

    /// Lets the child of `command` inherit the descriptors, under the same numbers. Only in the
    /// child: clearing close-on-exec in the daemon would leak them into every other child
    /// spawned meanwhile.
    pub fn inherit(&self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let fds = self.raw();
        // SAFETY: the closure runs in the forked child before exec and calls only fcntl(2),
        // which is async-signal-safe; it allocates nothing (`fds` was built before the fork).
        // The descriptors stay open in the daemon until the spawn has returned.
        unsafe {
            command.pre_exec(move || {
                for fd in &fds {
                    if nix::libc::fcntl(*fd, nix::libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}
