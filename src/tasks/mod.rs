//! The background scheduler: jobs that keep the appliance tidy without a caller. Each job runs
//! on an interval or at a daily local time, each run a little jittered so jobs never fire in
//! lockstep, and each run is recorded in `TASK_RUNS`. A failed run is recorded and the job
//! runs again at its next time; the other jobs go on.
//!
//! The jobs: `hibernate_idle`, `destroy_inactive`, `metrics_sample`, `expire_auth_sessions`,
//! `validate_credentials`, `vm_health`, `prune_prompts`, and `proxy_health` where egress is configured (see
//! `jobs`).

mod host;
mod jobs;
mod runs;
pub mod samples;
pub mod schedule;
mod scheduler;

use std::time::Duration;

use crate::auth::AuthError;
use crate::store::StoreError;
use crate::vms::VmError;

pub use host::{HostProbe, HostStats};
pub use jobs::{Builtins, register_builtins};
pub use schedule::{Clock, Schedule};
pub use scheduler::{Job, JobStatus, Scheduler, TasksSummary};

pub const HIBERNATE_IDLE: &str = "hibernate_idle";
pub const DESTROY_INACTIVE: &str = "destroy_inactive";
pub const METRICS_SAMPLE: &str = "metrics_sample";
pub const EXPIRE_AUTH_SESSIONS: &str = "expire_auth_sessions";
pub const VALIDATE_CREDENTIALS: &str = "validate_credentials";
pub const VM_HEALTH: &str = "vm_health";
pub const PROXY_HEALTH: &str = "proxy_health";
pub const PRUNE_PROMPTS: &str = "prune_prompts";

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("no background job named {0:?}")]
    UnknownJob(String),
    #[error("the job {0} is already running")]
    AlreadyRunning(String),
    #[error("a job named {0:?} is already registered")]
    Duplicate(String),
    /// Some items failed; the others were done.
    #[error("{failed} of {attempted} items failed; the first: {first_error}")]
    Incomplete {
        attempted: u64,
        failed: u64,
        touched: u64,
        first_error: String,
    },
    #[error("the job stopped unexpectedly: {0}")]
    Panicked(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Egress(#[from] crate::net::egress::EgressError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::lift_redb_errors!(TaskError);

impl TaskError {
    /// What a run touched even though it failed.
    pub fn touched(&self) -> u64 {
        match self {
            TaskError::Incomplete { touched, .. } => *touched,
            _ => 0,
        }
    }
}

/// Gathers per-item failures of one run: the run fails when any item did, and says how many.
#[derive(Debug, Default)]
pub struct Tally {
    attempted: u64,
    touched: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Tally {
    pub fn touched(&mut self) {
        self.attempted += 1;
        self.touched += 1;
    }

    pub fn skipped(&mut self) {
        self.attempted += 1;
    }

    pub fn failed(&mut self, error: impl std::fmt::Display) {
        self.attempted += 1;
        self.failed += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }

    pub fn finish(self) -> Result<u64, TaskError> {
        match self.first_error {
            None => Ok(self.touched),
            Some(first_error) => Err(TaskError::Incomplete {
                attempted: self.attempted,
                failed: self.failed,
                touched: self.touched,
                first_error,
            }),
        }
    }
}

/// How the jobs run (`MC_TASK_*` and the thresholds).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSettings {
    /// Off: no job runs by itself; `POST /api/admin/tasks/:name/run` still runs one.
    pub enabled: bool,
    pub hibernate_idle: Schedule,
    pub destroy_inactive: Schedule,
    pub metrics_sample: Schedule,
    pub expire_auth_sessions: Schedule,
    pub validate_credentials: Schedule,
    pub vm_health: Schedule,
    pub proxy_health: Schedule,
    /// A running VM with no prompt, login or exec for this long is hibernated.
    pub idle_hibernate_after: Duration,
    /// A VM with no activity for this many days is destroyed.
    pub inactive_destroy_after_days: u32,
    /// A login still open after this long is ended as `timeout`.
    pub auth_session_max_age: Duration,
    /// The metrics ring keeps this many samples.
    pub metrics_samples_kept: usize,
    pub prune_prompts: Schedule,
    /// Finished prompts older than this are removed (`prune_prompts`).
    pub prompt_retention_days: u32,
}

impl Default for TaskSettings {
    fn default() -> Self {
        TaskSettings {
            enabled: true,
            hibernate_idle: Schedule::Every(Duration::from_secs(5 * 60)),
            destroy_inactive: Schedule::DailyAt { hour: 2, minute: 0 },
            metrics_sample: Schedule::Every(Duration::from_secs(10 * 60)),
            expire_auth_sessions: Schedule::Every(Duration::from_secs(3600)),
            validate_credentials: Schedule::Every(Duration::from_secs(6 * 3600)),
            vm_health: Schedule::Every(Duration::from_secs(60)),
            proxy_health: Schedule::Every(Duration::from_secs(5 * 60)),
            idle_hibernate_after: Duration::from_secs(30 * 60),
            inactive_destroy_after_days: 14,
            auth_session_max_age: Duration::from_secs(2 * 3600),
            // Seven days of ten-minute samples.
            metrics_samples_kept: 1008,
            prune_prompts: Schedule::DailyAt {
                hour: 3,
                minute: 30,
            },
            prompt_retention_days: 30,
        }
    }
}
