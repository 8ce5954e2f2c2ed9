//! `write-file` (atomic: a temporary file in the same directory, fsync, rename) and
//! `read-file` (refused above the caller's cap).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::AgentError;
use crate::guest::messages::{
    FileStamp, ReadFileRequest, Response, WATCH_MAX_MS, WatchFileRequest, WriteFileRequest,
};

/// Polling rather than inotify: a CLI may create the directory as well as the file, and may
/// write by rename; a stat every 100 ms catches all of it with nothing to set up or leak.
const WATCH_POLL: std::time::Duration = std::time::Duration::from_millis(100);

fn io_error(path: &Path, e: std::io::Error) -> AgentError {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => "not_found",
        std::io::ErrorKind::PermissionDenied => "permission_denied",
        _ => "io",
    };
    AgentError::request(code, format!("{}: {e}", path.display()))
}

fn absolute(path: &str) -> Result<PathBuf, AgentError> {
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(AgentError::request(
            "bad_request",
            format!("{} is not absolute", path.display()),
        ));
    }
    Ok(path)
}

pub async fn write(request: WriteFileRequest) -> Result<(), AgentError> {
    let path = absolute(&request.path)?;
    let data = STANDARD
        .decode(request.data_base64.as_bytes())
        .map_err(|e| AgentError::request("bad_request", format!("dataBase64: {e}")))?;
    tokio::task::spawn_blocking(move || write_atomically(&path, &data, &request))
        .await
        .map_err(|e| AgentError::request("io", e.to_string()))?
}

fn write_atomically(
    path: &Path,
    data: &[u8],
    request: &WriteFileRequest,
) -> Result<(), AgentError> {
    let dir = path
        .parent()
        .ok_or_else(|| AgentError::request("bad_request", "path has no parent directory"))?;
    create_parents(dir, request.uid, request.gid).map_err(|e| io_error(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.mc-tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(request.mode)
            .open(&temp)?;
        file.write_all(data)?;
        // The umask may have narrowed the mode given at open.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(request.mode))?;
        if request.uid.is_some() || request.gid.is_some() {
            std::os::unix::fs::fchown(&file, request.uid, request.gid)?;
        }
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(path, e));
    }
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Makes `dir` and its missing parents. With an owner, the directories made here are given to
/// it (only those: a parent that already existed keeps its owner), so a file written for the
/// CLI user does not land in a root-owned directory that user cannot write.
fn create_parents(dir: &Path, uid: Option<u32>, gid: Option<u32>) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|path| std::fs::symlink_metadata(path).is_err())
        .collect();
    for path in missing.into_iter().rev() {
        match std::fs::create_dir(path) {
            Ok(()) if uid.is_some() || gid.is_some() => std::os::unix::fs::lchown(path, uid, gid)?,
            Ok(()) => {}
            // Made meanwhile by someone else: theirs, not ours to give away.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    Ok(())
}

fn stamp_of(meta: &std::fs::Metadata) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    FileStamp {
        inode: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    }
}

pub async fn watch(request: WatchFileRequest) -> Result<Response, AgentError> {
    let path = absolute(&request.path)?;
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(request.timeout_ms.min(WATCH_MAX_MS));
    loop {
        if let Ok(meta) = tokio::fs::metadata(&path).await
            && meta.is_file()
            && Some(stamp_of(&meta)) != request.since
        {
            let stamp = stamp_of(&meta);
            let read = read(ReadFileRequest {
                path: request.path.clone(),
                max_bytes: request.max_bytes,
            })
            .await?;
            if let Response::File { data_base64, .. } = read {
                return Ok(Response::WatchedFile { data_base64, stamp });
            }
        }
        if tokio::time::Instant::now() + WATCH_POLL > deadline {
            return Err(AgentError::request(
                "timed_out",
                format!("{} did not change", path.display()),
            ));
        }
        tokio::time::sleep(WATCH_POLL).await;
    }
}

pub async fn read(request: ReadFileRequest) -> Result<Response, AgentError> {
    let path = absolute(&request.path)?;
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| io_error(&path, e))?;
    if !meta.is_file() {
        return Err(AgentError::request(
            "bad_request",
            format!("{} is not a regular file", path.display()),
        ));
    }
    if meta.len() > request.max_bytes {
        return Err(AgentError::request(
            "too_large",
            format!(
                "{} is {} bytes; the cap is {}",
                path.display(),
                meta.len(),
                request.max_bytes
            ),
        ));
    }
    let data = tokio::fs::read(&path)
        .await
        .map_err(|e| io_error(&path, e))?;
    if data.len() as u64 > request.max_bytes {
        return Err(AgentError::request(
            "too_large",
            format!("{} grew past the cap", path.display()),
        ));
    }
    Ok(Response::File {
        size: data.len() as u64,
        data_base64: STANDARD.encode(&data),
    })
}

#[cfg(test)]
#[path = "files_tests.rs"]
mod tests;
