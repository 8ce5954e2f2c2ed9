//! Hypervisors behind one trait. Both backends give the daemon the same things: a process it
//! supervises (with a watch on its exit), a Unix-socket byte stream to the agent, and hibernate
//! and resume files under the VM's directory.

pub mod disks;
pub mod firecracker;
mod image_file;
pub mod logcap;
pub mod private;
mod process;
pub mod qemu;
mod qemu_confine;
mod qemu_migration;
mod qemu_probe;
mod qmp;

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::guest::client::AgentEndpoint;
pub use process::ExitInfo;

/// Which hypervisor runs the VMs (`MC_HYPERVISOR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypervisorChoice {
    Firecracker,
    Qemu,
    /// Firecracker when its binary is present, else QEMU.
    Auto,
}

/// Which hypervisor runs the VMs and how it is started (`daemon::hypervisor` chooses).
#[derive(Debug, Clone)]
pub struct HypervisorSettings {
    pub choice: HypervisorChoice,
    /// Firecracker's binary, or the directory holding it (`FIRECRACKER_BASE`).
    pub firecracker_base: Option<PathBuf>,
    pub qemu_binary: String,
    /// `None`: probe whether guests boot under KVM, else use TCG.
    pub qemu_accel: Option<qemu::Accel>,
    /// The user QEMU switches to once started (`-runas`); `None`: it stays root.
    pub qemu_user: Option<String>,
    /// Firecracker runs under its jailer when set.
    pub jailer: Option<firecracker::JailerConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("{0} did not come up: {1}")]
    Startup(&'static str, String),
    #[error("QMP {command}: {message}")]
    Qmp { command: String, message: String },
    #[error("hypervisor control channel: {0}")]
    Control(String),
    #[error("no hibernation image in {0}")]
    NoSnapshot(PathBuf),
    #[error("bad VM spec: {0}")]
    Spec(String),
    #[error("the hypervisor process exited: {0}")]
    Exited(ExitInfo),
    #[error("Firecracker answered {status} to {request}: {fault}")]
    Firecracker {
        request: String,
        status: u16,
        fault: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl VmmError {
    pub fn io(path: &Path, source: std::io::Error) -> VmmError {
        VmmError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
    /// The guest's root filesystem (the shared base rootfs of the golden image).
    pub root: bool,
}

#[derive(Debug, Clone)]
pub struct NetSpec {
    pub tap: String,
    pub mac: String,
}

/// Everything needed to boot (or resume) one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub vm_id: String,
    /// Sockets, the console log and the hibernation image live here.
    pub dir: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Extra kernel arguments; the backend adds the console and the agent's token and channel.
    pub boot_args: String,
    pub disks: Vec<DiskSpec>,
    pub net: Option<NetSpec>,
    /// The per-VM secret the agent expects in `Hello`.
    pub agent_token: String,
}

impl VmSpec {
    pub fn snapshot_dir(&self) -> PathBuf {
        self.dir.join("snapshot")
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

/// A running VM's process.
pub struct VmHandle {
    pub pid: u32,
    pub agent: AgentEndpoint,
    /// `None` while the process runs; then how it ended.
    pub exited: watch::Receiver<Option<ExitInfo>>,
    control: PathBuf,
}

impl VmHandle {
    /// A handle on a process some other [`Hypervisor`] started (fakes in tests build theirs
    /// here). `control` is the path its command line names, for adoption.
    pub fn new(
        pid: u32,
        agent: AgentEndpoint,
        exited: watch::Receiver<Option<ExitInfo>>,
        control: PathBuf,
    ) -> VmHandle {
        VmHandle {
            pid,
            agent,
            exited,
            control,
        }
    }

    /// Resolves when the process has exited; does not borrow the handle.
    pub fn exit_watch(&self) -> impl std::future::Future<Output = ExitInfo> + Send + 'static {
        process::wait_exited(self.exited.clone())
    }

    /// Resolves when the process has exited.
    pub async fn wait_exit(&mut self) -> ExitInfo {
        process::wait_exited(self.exited.clone()).await
    }

    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }
}

/// What a hibernation produced.
#[derive(Debug, Clone)]
pub struct Hibernated {
    pub state_bytes: u64,
}

/// The files `hibernate` leaves in the snapshot directory that hold the VM: its device state
/// and, when the backend keeps it apart, its memory. A golden snapshot is these files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotFiles {
    pub state: &'static str,
    pub memory: Option<&'static str>,
}

#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    fn name(&self) -> &'static str;
    fn snapshot_files(&self) -> SnapshotFiles;
    /// The files the VM's process writes for as long as it runs, which the guest can make grow
    /// without end; the daemon caps them (see [`logcap`]).
    fn growing_files(&self, spec: &VmSpec) -> Vec<PathBuf> {
        vec![spec.console_log()]
    }
    /// Cold-boots the spec's kernel.
    async fn boot(&self, spec: &VmSpec) -> Result<VmHandle, VmmError>;
    async fn pause(&self, vm: &VmHandle) -> Result<(), VmmError>;
    async fn unpause(&self, vm: &VmHandle) -> Result<(), VmmError>;
    /// Saves the VM's whole state under `spec.snapshot_dir()` and stops its process.
    async fn hibernate(&self, spec: &VmSpec, vm: VmHandle) -> Result<Hibernated, VmmError>;
    /// Starts a new process from the state under `spec.snapshot_dir()` and lets the guest run.
    /// The spec's tap, disks and sockets may differ from those at hibernation.
    async fn resume(&self, spec: &VmSpec) -> Result<VmHandle, VmmError>;
    /// Stops the process at once.
    async fn kill(&self, vm: &mut VmHandle) -> Result<ExitInfo, VmmError>;
    /// Takes over a running VM after a daemon restart: `pid` must be this spec's hypervisor
    /// (its command line names the spec's control socket), else `Err`.
    async fn adopt(&self, spec: &VmSpec, pid: u32) -> Result<VmHandle, VmmError>;
}

/// Adoption, shared by the backends: the process must exist and its command line must name the
/// VM's control socket, so a recycled pid is never mistaken for the VM.
pub(crate) fn adopt_process(
    pid: u32,
    control: PathBuf,
    agent: AgentEndpoint,
) -> Result<VmHandle, VmmError> {
    let control_text = control.display().to_string();
    let owns_socket =
        process::cmdline(pid).is_some_and(|args| args.iter().any(|a| a.contains(&control_text)));
    if !owns_socket {
        return Err(VmmError::Control(format!(
            "process {pid} is not the hypervisor of {control_text}"
        )));
    }
    Ok(VmHandle {
        pid,
        agent,
        exited: process::watch_adopted(pid)?,
        control,
    })
}

/// A console log past this size is rotated when its VM next starts.
const CONSOLE_LOG_MAX_BYTES: u64 = 1 << 20;

/// The console log is appended to across resumes; it is bounded by keeping one previous
/// generation (`console.log.1`).
pub(crate) async fn rotate_console_log(spec: &VmSpec) {
    let log = spec.console_log();
    if let Ok(meta) = tokio::fs::metadata(&log).await
        && meta.len() > CONSOLE_LOG_MAX_BYTES
    {
        let _ = tokio::fs::rename(&log, spec.dir.join("console.log.1")).await;
    }
}

/// The last lines the guest printed, for error messages.
pub(crate) async fn console_tail(spec: &VmSpec) -> String {
    let text = tokio::fs::read_to_string(spec.console_log())
        .await
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
