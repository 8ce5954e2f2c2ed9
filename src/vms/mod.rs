//! The VM manager: users' VMs from create to destroy. Each VM's operations are serialised by
//! its own slot (an async mutex over its process handle and agent connection); every
//! multi-step operation records its intent and reservations in one redb transaction before it
//! touches the host, and reconcile finishes or rolls back what a crash left half-done.
//!
//! # Parts
//!
//! [`VmManager`] is a facade over parts, each a struct given exactly the parts and shared
//! pieces (store, hypervisor, netlink, events, metrics, settings) it uses; a part calls
//! another's methods and never touches its fields. From the bottom up:
//!
//! - `records`: the VM records and the ledger's transactions, and the status events they publish
//! - `slots`: one slot per VM over its process handle and agent connection
//! - `activity::Uses`: each VM's last use by a person
//! - `gauges`: each running VM's resource series
//! - `host`: bring-up on the host (directory, disk, tap, process, the agent's first answer)
//! - `images`: the sweep of guest image versions nothing uses
//! - `failed`: a VM's failure and the crash-loop guard
//! - `watch`: process exits, agent health, and the sweep of unhealthy VMs
//! - `lifecycle`: create, hibernate, resume and destroy over the ledger
//! - `activity`: the user's VM on demand, exec, idle hibernation
//! - `reconcile`: adoption and the orphan sweep at start
//! - `upkeep` and `logcap`: console tails, inactive VMs, log caps
//!
//! `layout`, `procs`, `ledger` and `exec` hold plain functions the parts share.

mod activity;
pub mod by_user;
mod cli;
mod exec;
mod failed;
mod gauges;
pub mod golden;
mod host;
pub mod images;
mod layout;
pub mod ledger;
mod lifecycle;
mod logcap;
mod manager;
mod procs;
mod reconcile;
mod records;
mod slots;
mod upkeep;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{ModelError, Vm, VmOp, VmStatus, VmType};
use crate::net::Netlink;
use crate::store::StoreError;
use crate::vmm::Hypervisor;

pub use activity::VmStep;
pub use cli::CliEnvironment;
pub use exec::ExecResult;
pub use failed::CrashLimit;
pub(crate) use layout::create_private_dir;
pub use ledger::Limits;
pub use manager::VmManager;
pub use reconcile::{OrphanReport, ReconcileReport};
pub use upkeep::MAX_DIAGNOSTIC_LINES;
pub use watch::HealthSweep;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("VM {0} not found")]
    NotFound(String),
    #[error("user {0} not found")]
    UserNotFound(String),
    #[error("user {0} has no VM")]
    NoVm(String),
    #[error("VM {id} is {status} and takes no heartbeat")]
    NotAlive { id: String, status: VmStatus },
    #[error("user {user_id} already has VM {vm_id} ({status}); one CLI VM per user")]
    AlreadyHasVm {
        user_id: String,
        vm_id: String,
        status: VmStatus,
    },
    #[error("cannot {op} VM {id}: it is {status}")]
    WrongStatus {
        id: String,
        op: VmOp,
        status: VmStatus,
    },
    #[error("VM {id} is busy: a {op} is in progress")]
    Busy { id: String, op: VmOp },
    #[error("the maximum of {max} running VMs is reached (MC_MAX_VMS)")]
    TooManyVms { max: u32 },
    #[error("the IP pool is exhausted: all {size} addresses are leased to running VMs")]
    PoolExhausted { size: u64 },
    #[error(
        "user {user_id}'s VMs crashed more than {max} times in {window_minutes} minutes; \
         a new VM can be created in {retry_after_secs} s"
    )]
    CrashLoop {
        user_id: String,
        max: u32,
        window_minutes: u64,
        retry_after_secs: u64,
    },
    #[error("VMs are not configured on this host: {0}")]
    NotConfigured(&'static str),
    #[error("VM {id}: {op} failed: {reason}")]
    Host {
        id: String,
        op: VmOp,
        reason: String,
    },
    #[error("VM {id} is {status}, no longer running")]
    NotRunning { id: String, status: VmStatus },
    #[error("VM {id} has no agent connection: {reason}")]
    AgentUnavailable { id: String, reason: String },
    #[error("inconsistent state: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Egress(#[from] crate::net::egress::EgressError),
    #[error(transparent)]
    Transition(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::lift_redb_errors!(VmError);

impl VmError {
    /// The machine-readable code clients see for this error, in an API answer and in a prompt's
    /// `error` event alike.
    pub fn code(&self) -> &'static str {
        match self {
            VmError::NotFound(_) | VmError::NoVm(_) => "vm_not_found",
            VmError::UserNotFound(_) => "user_not_found",
            VmError::NotAlive { .. } => "vm_not_alive",
            VmError::NotRunning { .. } => "vm_not_running",
            VmError::AlreadyHasVm { .. } => "vm_exists",
            VmError::WrongStatus { .. } => "vm_status_conflict",
            VmError::Busy { .. } => "vm_busy",
            VmError::TooManyVms { .. } => "vm_limit_reached",
            VmError::PoolExhausted { .. } => "ip_pool_exhausted",
            VmError::NotConfigured(_) => "vms_not_configured",
            VmError::CrashLoop { .. } => "crash_loop",
            VmError::AgentUnavailable { .. } => "agent_unavailable",
            VmError::Host { .. } => "vm_operation_failed",
            VmError::Egress(e) => e.code(),
            VmError::Transition(e) => e.code(),
            VmError::Corrupt(_) | VmError::Store(_) => "internal",
        }
    }

    pub(crate) fn host(id: &str, op: VmOp, reason: impl std::fmt::Display) -> VmError {
        VmError::Host {
            id: id.to_string(),
            op,
            reason: reason.to_string(),
        }
    }
}

/// The OS edge the manager drives: the hypervisor and the host's links.
#[derive(Clone)]
pub struct VmHost {
    pub hypervisor: Arc<dyn Hypervisor>,
    pub netlink: Arc<dyn Netlink>,
}

/// How VMs are built on this host.
#[derive(Debug, Clone)]
pub struct VmSettings {
    /// One directory per VM lives here (`<data-dir>/vms`).
    pub root: PathBuf,
    /// `None` disables VMs: the API answers 503 to creates.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub data_disk_mib: u64,
    pub bridge: String,
    pub limits: Limits,
    pub agent_timeout: Duration,
    pub health_interval: Duration,
    /// A user whose VMs crash more often than this gets no new VM for a while.
    pub crash_limit: CrashLimit,
    /// Each running VM's console, hypervisor log and metrics are trimmed past this size.
    pub log_max_bytes: u64,
    /// Creates restore from this instead of cold-booting.
    pub golden: Option<golden::Golden>,
}

impl VmSettings {
    /// Refuses operations that need a guest kernel before any intent is written.
    fn require_vms(&self) -> Result<(), VmError> {
        match self.kernel {
            Some(_) => Ok(()),
            None => Err(VmError::NotConfigured(
                "no guest kernel (set GOLDEN_KERNEL)",
            )),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct VmFilter {
    pub status: Option<VmStatus>,
    pub vm_type: Option<VmType>,
    /// Set for user-scoped callers, who see only their own VMs.
    pub user_id: Option<String>,
    /// Leaves out destroyed VMs unless `status` asks for them (the API's default; the
    /// daemon's own sweeps see every record).
    pub hide_destroyed: bool,
}

/// One page of a VM list.
#[derive(Debug, Default)]
pub struct VmPage {
    pub vms: Vec<Vm>,
    /// Every match of the filter, on every page.
    pub total: u64,
    /// The `cursor` of the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

impl VmFilter {
    fn matches(&self, vm: &Vm) -> bool {
        let hidden =
            self.hide_destroyed && self.status.is_none() && vm.status == VmStatus::Destroyed;
        !hidden
            && self.status.is_none_or(|s| vm.status == s)
            && self.vm_type.is_none_or(|t| vm.vm_type == t)
            && self.user_id.as_ref().is_none_or(|u| &vm.user_id == u)
    }
}

/// What the API holds: a cheap handle on the manager.
pub type VmService = Arc<VmManager>;
