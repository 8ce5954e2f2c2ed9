//! `vm-agent files <op> ...`: the workspace file helper. The host runs it as an exec whose
//! `argv[0]` is `AGENT_SELF`, as the workspace's owner (the CLI user), so the kernel's own
//! permission checks protect everything that user may not touch; this module keeps every op
//! beneath the workspace root as well. It is synchronous and runs before any runtime starts.
//!
//! | argv after `files` | stdout on success |
//! |---|---|
//! | `resolve ROOT REL [--create]` | the absolute path of directory REL, one line (`--create`: it, its parents and ROOT are made first) |
//! | `put ROOT REL MODE MAX_BYTES` | `{"size":N}`: stdin to EOF went to a temporary file beside REL (parents made), was fsynced and renamed over REL; MODE is octal permission bits; past MAX_BYTES nothing is kept |
//! | `get ROOT REL` | a file: `{"kind":"file","size":N}` and a newline, then exactly N raw bytes; a directory: `{"kind":"dir","entries":[...],"truncated":bool}` and a newline |
//! | `rm ROOT REL` | nothing: a file or symlink (never its target) is unlinked, a directory removed with all it holds; REL naming the root is refused |
//!
//! A failure is one JSON line on stderr, `{"code":...,"message":...}` (codes in
//! `guest::workspace::WorkspaceError::code`), and exit status 1.
//!
//! Containment: REL passes `check_relative` first (relative, no `..`, no NUL, bounded). ROOT is
//! opened as a directory, and REL (and each prefix of it, when directories are made) is resolved
//! from that descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: a symlink that
//! leads out, absolute or by `..`, fails with EXDEV (`path_escapes`) however it was made.
//! Directories are made, files created, renamed and removed relative to descriptors opened that
//! way (`mkdirat`, `openat`, `renameat`, `unlinkat`), with the last component never followed.

use std::ffi::{CStr, OsStr};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use crate::guest::workspace::{
    Entry, EntryKind, GetHeader, MAX_LISTING, PutReply, WorkspaceError, check_relative, components,
};

type Result<T> = std::result::Result<T, WorkspaceError>;

const CHUNK: usize = 64 * 1024;
/// Set by SIGTERM (the host cancelled an upload): the read in progress fails with EINTR and
/// the temporary file is removed before exiting.
static TERMINATED: AtomicBool = AtomicBool::new(false);

/// Runs `vm-agent files ARGS`, with the process's stdin and stdout.
pub fn main(args: &[String]) -> ExitCode {
    let (stdin, stdout) = match (dup(0), dup(1)) {
        (Ok(stdin), Ok(stdout)) => (stdin, stdout),
        (Err(e), _) | (_, Err(e)) => return fail(&WorkspaceError::Failed(format!("stdio: {e}"))),
    };
    // Unbuffered: a body is copied in large chunks already, and nothing may be left in a
    // buffer when an error line follows.
    let mut input = std::fs::File::from(stdin);
    let mut output = std::fs::File::from(stdout);
    if args.first().is_some_and(|op| op == "put") {
        on_term_interrupt();
    }
    match run(args, &mut input, &mut output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn dup(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: fds 0 and 1 are open for the whole life of the process (the agent gives the
    // helper pipes or /dev/null); the borrow ends with the duplicate made.
    unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
}

fn fail(error: &WorkspaceError) -> ExitCode {
    let line = serde_json::to_string(&error.to_wire()).unwrap_or_default();
    eprintln!("{line}");
    ExitCode::from(1)
}

/// Dispatches one op; the unit tests call this with buffers for stdin and stdout.
pub fn run(args: &[String], input: &mut dyn Read, output: &mut dyn Write) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let written = match args.as_slice() {
        ["resolve", root, rel] => writeln!(output, "{}", resolve(root, rel, false)?.display()),
        ["resolve", root, rel, "--create"] => {
            writeln!(output, "{}", resolve(root, rel, true)?.display())
        }
        ["put", root, rel, mode, max] => {
            let mode = u32::from_str_radix(mode, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| WorkspaceError::BadPath(format!("bad mode {mode:?}")))?;
            let max = max
                .parse::<u64>()
                .map_err(|_| WorkspaceError::BadPath(format!("bad size cap {max:?}")))?;
            let size = put(root, rel, mode, max, input)?;
            let reply = serde_json::to_string(&PutReply { size }).unwrap_or_default();
            writeln!(output, "{reply}")
        }
        ["get", root, rel] => return get(root, rel, output),
        ["rm", root, rel] => {
            remove(root, rel)?;
            Ok(())
        }
        _ => {
            return Err(WorkspaceError::Failed(format!(
                "usage: vm-agent files (resolve ROOT REL [--create] | put ROOT REL MODE MAX_BYTES \
                 | get ROOT REL | rm ROOT REL); got {args:?}"
            )));
        }
    };
    written.map_err(|e| WorkspaceError::Failed(format!("stdout: {e}")))
}

fn on_term_interrupt() {
    extern "C" fn note(_: nix::libc::c_int) {
        TERMINATED.store(true, Ordering::SeqCst);
    }
    // No SA_RESTART: a blocked read must return EINTR so the upload can clean up.
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(note),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { nix::sys::signal::sigaction(signal, &action) };
    }
}

/// The error for `errno` from an op on `what` (a path relative to the root, for messages).
fn errno_error(what: &str, e: Errno) -> WorkspaceError {
    let what = if what.is_empty() { "." } else { what };
    match e {
        Errno::EXDEV => WorkspaceError::Escapes(format!("{what:?} leads outside the workspace")),
        Errno::ENOENT => WorkspaceError::NotFound(format!("{what:?} does not exist")),
        Errno::ENOTDIR => WorkspaceError::NotADirectory(format!("{what:?}: not a directory")),
        Errno::EISDIR => WorkspaceError::IsADirectory(format!("{what:?} is a directory")),
        Errno::EACCES | Errno::EPERM => {
            WorkspaceError::PermissionDenied(format!("{what:?}: permission denied"))
        }
        Errno::ELOOP => WorkspaceError::BadPath(format!(
            "{what:?}: too many symbolic links, or a link that may not be followed"
        )),
        Errno::ENAMETOOLONG => WorkspaceError::BadPath(format!("{what:?}: name too long")),
        other => WorkspaceError::Failed(format!("{what:?}: {}", other.desc())),
    }
}

fn io_error(what: &str, e: std::io::Error) -> WorkspaceError {
    match e.raw_os_error() {
        Some(code) => errno_error(what, Errno::from_raw(code)),
        None => WorkspaceError::Failed(format!("{what:?}: {e}")),
    }
}

/// Opens `path` beneath `dir` without leaving it, following no magic link.
fn beneath(dir: BorrowedFd<'_>, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let path = if path.is_empty() { "." } else { path };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut tries = 0;
    loop {
        match nix::fcntl::openat2(dir, path, how) {
            // A rename elsewhere in the tree raced the lookup; the kernel asks for another go.
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            result => return result,
        }
    }
}

/// The workspace root, open as a directory (made first when `create`).
fn open_root(root: &str, create: bool) -> Result<OwnedFd> {
    if !root.starts_with('/') || root.contains('\0') {
        return Err(WorkspaceError::BadPath(format!(
            "the workspace root {root:?} is not an absolute path"
        )));
    }
    if create {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root)
            .map_err(|e| io_error(root, e))?;
    }
    nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT => WorkspaceError::NotFound("the workspace does not exist yet".into()),
        other => errno_error(root, other),
    })
}

/// Directory `parts` beneath the root (O_PATH), each missing one made when `create`. Every
/// prefix is resolved from the root again, so a symlink inside is judged where it leads.
fn open_dir(root: &OwnedFd, parts: &[&str], create: bool) -> Result<OwnedFd> {
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    let mut current = beneath(root.as_fd(), ".", dir_flags).map_err(|e| errno_error("", e))?;
    for (i, name) in parts.iter().enumerate() {
        let prefix = parts[..=i].join("/");
        current = match beneath(root.as_fd(), &prefix, dir_flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                match nix::sys::stat::mkdirat(&current, *name, Mode::from_bits_truncate(0o755)) {
                    // EEXIST: made meanwhile, or a dangling symlink, which the open judges.
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(errno_error(&prefix, e)),
                }
                beneath(root.as_fd(), &prefix, dir_flags).map_err(|e| errno_error(&prefix, e))?
            }
            Err(e) => return Err(errno_error(&prefix, e)),
        };
    }
    Ok(current)
}

/// The parent directory of `rel`'s last component and that component (`None` for the root).
fn split(rel: &str) -> Result<(Vec<&str>, Option<&str>)> {
    check_relative(rel)?;
    let mut parts = components(rel);
    let last = parts.pop();
    Ok((parts, last))
}

fn stat_nofollow(dir: &OwnedFd, name: &str) -> nix::Result<FileStat> {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

fn kind_of(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
}

pub fn resolve(root: &str, rel: &str, create: bool) -> Result<PathBuf> {
    check_relative(rel)?;
    let root_fd = open_root(root, create)?;
    let parts = components(rel);
    let dir = open_dir(&root_fd, &parts, create)?;
    // The directory's own name, symlinks inside the workspace resolved.
    let real = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    Ok(real.unwrap_or_else(|_| PathBuf::from(root).join(parts.join("/"))))
}

pub fn put(root: &str, rel: &str, mode: u32, max: u64, input: &mut dyn Read) -> Result<u64> {
    let (parents, name) = split(rel)?;
    let name = name
        .ok_or_else(|| WorkspaceError::IsADirectory("the workspace root is a directory".into()))?;
    let root_fd = open_root(root, true)?;
    let dir = open_dir(&root_fd, &parents, true)?;
    match stat_nofollow(&dir, name) {
        Ok(stat) if kind_of(&stat) == SFlag::S_IFDIR => {
            return Err(errno_error(rel, Errno::EISDIR));
        }
        // The rename replaces the link itself; one that leads out is refused all the same.
        Ok(stat) if kind_of(&stat) == SFlag::S_IFLNK => {
            match beneath(root_fd.as_fd(), rel, OFlag::O_PATH) {
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(errno_error(rel, e)),
            }
        }
        Ok(_) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(errno_error(rel, e)),
    }
    let temp = format!(".mc-upload-{}-{:016x}", std::process::id(), random());
    let file = nix::fcntl::openat(
        &dir,
        temp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )
    .map_err(|e| errno_error(rel, e))?;
    let mut file = std::fs::File::from(file);
    let written = copy_capped(input, &mut file, max, rel).and_then(|size| {
        use std::os::unix::fs::PermissionsExt;
        // The umask may have narrowed the mode given at open.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error(rel, e))?;
        nix::fcntl::renameat(&dir, temp.as_str(), &dir, name).map_err(|e| errno_error(rel, e))?;
        Ok(size)
    });
    if written.is_err() {
        let _ = nix::unistd::unlinkat(&dir, temp.as_str(), UnlinkatFlags::NoRemoveDir);
        return written;
    }
    if let Ok(dir) = beneath(dir.as_fd(), ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
        let _ = nix::unistd::fsync(&dir);
    }
    written
}

fn random() -> u64 {
    let mut bytes = [0u8; 8];
    // Uniqueness only (O_EXCL guards the rest); the clock will do without entropy.
    if getrandom::fill(&mut bytes).is_err() {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    }
    u64::from_le_bytes(bytes)
}

/// Copies `input` to EOF, refusing at the first byte past `max`.
fn copy_capped(input: &mut dyn Read, file: &mut std::fs::File, max: u64, rel: &str) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        if TERMINATED.load(Ordering::SeqCst) {
            return Err(WorkspaceError::Failed("the upload was cancelled".into()));
        }
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(WorkspaceError::Failed(format!("stdin: {e}"))),
        };
        total += n as u64;
        if total > max {
            return Err(WorkspaceError::TooLarge { max });
        }
        file.write_all(&buf[..n]).map_err(|e| io_error(rel, e))?;
    }
}

pub fn get(root: &str, rel: &str, output: &mut dyn Write) -> Result<()> {
    check_relative(rel)?;
    let root_fd = open_root(root, false)?;
    let path = components(rel).join("/");
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let fd = beneath(root_fd.as_fd(), &path, flags).map_err(|e| errno_error(rel, e))?;
    let stat = nix::sys::stat::fstat(&fd).map_err(|e| errno_error(rel, e))?;
    let out = |e: std::io::Error| WorkspaceError::Failed(format!("stdout: {e}"));
    match kind_of(&stat) {
        SFlag::S_IFREG => {
            let size = stat.st_size as u64;
            let header = serde_json::to_string(&GetHeader::File { size }).unwrap_or_default();
            writeln!(output, "{header}").map_err(out)?;
            let mut file = std::fs::File::from(fd);
            let mut buf = vec![0u8; CHUNK];
            let mut left = size;
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = match file.read(&mut buf[..want]) {
                    Ok(0) => {
                        return Err(WorkspaceError::Failed(format!(
                            "{rel:?} shrank while it was read"
                        )));
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_error(rel, e)),
                };
                output.write_all(&buf[..n]).map_err(out)?;
                left -= n as u64;
            }
            output.flush().map_err(out)
        }
        SFlag::S_IFDIR => {
            let (entries, truncated) = list(fd, rel)?;
            let header = serde_json::to_string(&GetHeader::Dir { entries, truncated })
                .map_err(|e| WorkspaceError::Failed(e.to_string()))?;
            writeln!(output, "{header}").map_err(out)?;
            output.flush().map_err(out)
        }
        _ => Err(WorkspaceError::BadPath(format!(
            "{rel:?} is neither a regular file nor a directory"
        ))),
    }
}

fn names(dir: &mut Dir) -> Vec<Vec<u8>> {
    dir.iter()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_bytes().to_vec())
        .filter(|name| name != b"." && name != b"..")
        .collect()
}

fn list(fd: OwnedFd, rel: &str) -> Result<(Vec<Entry>, bool)> {
    let mut dir = Dir::from_fd(fd).map_err(|e| errno_error(rel, e))?;
    let mut seen = Vec::new();
    let mut truncated = false;
    for entry in dir.iter() {
        let entry = entry.map_err(|e| errno_error(rel, e))?;
        let name: &CStr = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        if seen.len() == MAX_LISTING {
            truncated = true;
            break;
        }
        seen.push(name.to_owned());
    }
    let mut listing: Vec<Entry> = seen
        .iter()
        .filter_map(|name| {
            // Gone since the read: left out.
            let stat = nix::sys::stat::fstatat(&dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .ok()?;
            let kind = match kind_of(&stat) {
                SFlag::S_IFREG => EntryKind::File,
                SFlag::S_IFDIR => EntryKind::Dir,
                SFlag::S_IFLNK => EntryKind::Symlink,
                _ => EntryKind::Other,
            };
            Some(Entry {
                name: String::from_utf8_lossy(name.to_bytes()).into_owned(),
                kind,
                size: stat.st_size as u64,
                mode: stat.st_mode & 0o7777,
                modified_ms: stat.st_mtime * 1000 + stat.st_mtime_nsec / 1_000_000,
            })
        })
        .collect();
    listing.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((listing, truncated))
}

pub fn remove(root: &str, rel: &str) -> Result<()> {
    let (parents, name) = split(rel)?;
    let name = name.ok_or_else(|| {
        WorkspaceError::BadPath("the workspace root itself cannot be removed".into())
    })?;
    let root_fd = open_root(root, false)?;
    let dir = open_dir(&root_fd, &parents, false)?;
    let stat = stat_nofollow(&dir, name).map_err(|e| errno_error(rel, e))?;
    if kind_of(&stat) == SFlag::S_IFDIR {
        remove_tree(dir.as_fd(), OsStr::new(name), rel)?;
        nix::unistd::unlinkat(&dir, name, UnlinkatFlags::RemoveDir)
    } else {
        nix::unistd::unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir)
    }
    .map_err(|e| errno_error(rel, e))
}

/// Empties directory `name` of `parent`, never following a symlink (one swapped in for a
/// directory meanwhile fails the open with ELOOP).
fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr, rel: &str) -> Result<()> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd =
        nix::fcntl::openat(parent, name, flags, Mode::empty()).map_err(|e| errno_error(rel, e))?;
    let mut dir = Dir::from_fd(fd).map_err(|e| errno_error(rel, e))?;
    for child in names(&mut dir) {
        let child = OsStr::from_bytes(&child);
        let stat = match nix::sys::stat::fstatat(&dir, child, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(errno_error(rel, e)),
        };
        let result = if kind_of(&stat) == SFlag::S_IFDIR {
            remove_tree(dir.as_fd(), child, rel)?;
            nix::unistd::unlinkat(&dir, child, UnlinkatFlags::RemoveDir)
        } else {
            nix::unistd::unlinkat(&dir, child, UnlinkatFlags::NoRemoveDir)
        };
        match result {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(errno_error(rel, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "workspace_tests.rs"]
mod tests;
