//! A user's workspace in their VM: files in and out, streamed both ways and never held whole,
//! and commands run there, their output streamed as it comes. Both run as the CLI user under
//! the workspace root (`CliEnvironment::workspace`), resolved in the guest so that a path, or
//! a symlink the user made, cannot lead out of it. Each call resumes a hibernated VM as a
//! prompt does.

mod busy;
mod exec;
mod service;

use std::time::Duration;

use crate::guest::workspace as guest_files;
use crate::vms::{CliEnvironment, VmError};

pub use exec::{ExecFrame, ExecRun, ExecSpec};
pub use guest_files::Download;
pub use service::WorkspaceService;

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Files(#[from] guest_files::WorkspaceError),
    #[error("the body is larger than the {max} bytes a file may have (MC_FILES_MAX_BYTES)")]
    TooLarge { max: u64 },
    #[error("exec {0} not found")]
    ExecNotFound(String),
    #[error("{limit} commands already run (the host's limit); retry when one ends")]
    Busy { limit: usize },
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// How the files API and exec behave on this host.
#[derive(Debug, Clone)]
pub struct WorkspaceSettings {
    pub cli: CliEnvironment,
    /// The largest file an upload may write (`MC_FILES_MAX_BYTES`).
    pub max_file_bytes: u64,
    pub exec_default_timeout: Duration,
    pub exec_max_timeout: Duration,
    /// Commands running at once over all users.
    pub max_execs: usize,
}
