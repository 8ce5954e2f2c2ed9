//! Files in a user's workspace: a directory tree in the guest (`/home/dev/work` in the golden
//! image) owned by the unprivileged CLI user, read and written without ever leaving it.
//!
//! The work is done in the guest by the agent's own binary run as an exec
//! (`argv[0] = `[`AGENT_SELF`]`, "files", op, ...`; see `agent::workspace` for the ops), as the
//! workspace's owner, so file permissions protect everything else in the guest and the exec's
//! streaming carries bodies of any size in bounded memory. This half is what both sides share:
//! the path rules, the error codes and the JSON the helper prints. The host's calls are in
//! `workspace_host.rs` (daemon builds only).
//!
//! [`AGENT_SELF`]: super::messages::AGENT_SELF

use serde::{Deserialize, Serialize};

/// The longest relative path accepted (Linux's `PATH_MAX`).
pub const MAX_REL_BYTES: usize = 4096;
/// The most entries a directory listing carries; more are flagged `truncated`.
pub const MAX_LISTING: usize = 10_000;
/// The subcommand of `vm-agent` that runs the ops.
pub const FILES_SUBCOMMAND: &str = "files";

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{0}")]
    BadPath(String),
    #[error("{0}")]
    Escapes(String),
    #[error("{0}")]
    NotFound(String),
    #[error("larger than the cap of {max} bytes")]
    TooLarge { max: u64 },
    #[error("{0}")]
    NotADirectory(String),
    #[error("{0}")]
    IsADirectory(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[cfg(feature = "daemon")]
    #[error(transparent)]
    Guest(#[from] super::client::GuestError),
    /// Anything else (an I/O error in the guest, a helper that broke the protocol); code `io`.
    #[error("{0}")]
    Failed(String),
}

impl WorkspaceError {
    /// The stable code for API clients and for the helper's error line.
    pub fn code(&self) -> &'static str {
        match self {
            WorkspaceError::BadPath(_) => "bad_path",
            WorkspaceError::Escapes(_) => "path_escapes",
            WorkspaceError::NotFound(_) => "not_found",
            WorkspaceError::TooLarge { .. } => "too_large",
            WorkspaceError::NotADirectory(_) => "not_a_directory",
            WorkspaceError::IsADirectory(_) => "is_a_directory",
            WorkspaceError::PermissionDenied(_) => "permission_denied",
            #[cfg(feature = "daemon")]
            WorkspaceError::Guest(_) => "guest",
            WorkspaceError::Failed(_) => "io",
        }
    }

    /// The line the helper prints on stderr.
    pub fn to_wire(&self) -> WireError {
        WireError {
            code: self.code().to_string(),
            message: self.to_string(),
            max: match self {
                WorkspaceError::TooLarge { max } => Some(*max),
                _ => None,
            },
        }
    }

    /// The helper's error line back into an error; an unknown code is kept in the message.
    pub fn from_wire(wire: WireError) -> WorkspaceError {
        let WireError { code, message, max } = wire;
        match code.as_str() {
            "bad_path" => WorkspaceError::BadPath(message),
            "path_escapes" => WorkspaceError::Escapes(message),
            "not_found" => WorkspaceError::NotFound(message),
            "too_large" => WorkspaceError::TooLarge {
                max: max.unwrap_or(0),
            },
            "not_a_directory" => WorkspaceError::NotADirectory(message),
            "is_a_directory" => WorkspaceError::IsADirectory(message),
            "permission_denied" => WorkspaceError::PermissionDenied(message),
            "io" => WorkspaceError::Failed(message),
            other => WorkspaceError::Failed(format!("{other}: {message}")),
        }
    }
}

/// The helper's error: one JSON line on stderr, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}

/// What `get` prints first: for a file this line, then exactly `size` raw bytes; for a
/// directory this line alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum GetHeader {
    File {
        size: u64,
    },
    Dir {
        entries: Vec<Entry>,
        truncated: bool,
    },
}

/// What `put` prints once the file is in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReply {
    pub size: u64,
}

/// An entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "daemon", derive(utoipa::ToSchema), schema(as = WorkspaceEntry))]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Lossy where the name is not UTF-8.
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits only (`0o7777`).
    pub mode: u32,
    pub modified_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "daemon", derive(utoipa::ToSchema), schema(as = WorkspaceEntryKind))]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The syntactic rules for a path inside the workspace, checked before any syscall on either
/// side: relative, no `..` component, no NUL, at most [`MAX_REL_BYTES`]. Empty and `.`
/// components are fine (the empty path is the root itself). Symlinks are the guest's business:
/// only resolution beneath the root can judge them.
/// [`check_relative`]'s rules but the length as a JSON Schema (ECMA-262) pattern, for the API
/// document.
pub const RELATIVE_PATTERN: &str = r"^(?:(?:\.|[^./\x00][^/\x00]*|\.[^./\x00][^/\x00]*|\.\.[^/\x00]+)(?:/(?:\.|[^./\x00][^/\x00]*|\.[^./\x00][^/\x00]*|\.\.[^/\x00]+)?)*)?$";

pub fn check_relative(rel: &str) -> Result<(), WorkspaceError> {
    if rel.len() > MAX_REL_BYTES {
        return Err(WorkspaceError::BadPath(format!(
            "the path is {} bytes; at most {MAX_REL_BYTES} are allowed",
            rel.len()
        )));
    }
    if rel.contains('\0') {
        return Err(WorkspaceError::BadPath("the path contains NUL".into()));
    }
    if rel.starts_with('/') {
        return Err(WorkspaceError::BadPath(format!(
            "{rel:?} is absolute; paths are relative to the workspace"
        )));
    }
    if rel.split('/').any(|c| c == "..") {
        return Err(WorkspaceError::BadPath(format!(
            "{rel:?} has a `..` component"
        )));
    }
    Ok(())
}

/// The path's components without the empty and `.` ones (after [`check_relative`]).
pub fn components(rel: &str) -> Vec<&str> {
    rel.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

#[cfg(feature = "daemon")]
#[path = "workspace_host.rs"]
mod host;
#[cfg(feature = "daemon")]
pub use host::{Download, Workspace, download, remove, resolve_dir, upload};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_only() {
        for good in [
            "",
            ".",
            "a",
            "a/b/c.txt",
            "./a//b/",
            "a/.hidden",
            "a/..b",
            "b../c",
        ] {
            check_relative(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        for bad in ["/etc/passwd", "..", "a/../b", "a/..", "../a", "a\0b", "/"] {
            let e = check_relative(bad).expect_err(bad);
            assert_eq!(e.code(), "bad_path", "{bad:?}");
        }
        assert!(check_relative(&"a".repeat(MAX_REL_BYTES)).is_ok());
        assert!(check_relative(&"a".repeat(MAX_REL_BYTES + 1)).is_err());
        assert_eq!(components("./a//b/./c/"), ["a", "b", "c"]);
        assert!(components("./").is_empty());
    }

    #[test]
    fn errors_cross_the_wire() {
        for error in [
            WorkspaceError::Escapes("x leaves".into()),
            WorkspaceError::TooLarge { max: 7 },
            WorkspaceError::IsADirectory("d".into()),
        ] {
            let line = serde_json::to_string(&error.to_wire()).unwrap();
            let back = WorkspaceError::from_wire(serde_json::from_str(&line).unwrap());
            assert_eq!(back.code(), error.code());
            assert_eq!(back.to_string(), error.to_string());
        }
        let header = serde_json::to_string(&GetHeader::File { size: 3 }).unwrap();
        assert_eq!(header, r#"{"kind":"file","size":3}"#);
    }
}
