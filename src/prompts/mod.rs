//! Prompt execution: the provider CLIs run through the agent in the user's VM, their output
//! translated into one normalised event stream that SSE clients read, leave and re-attach to.

pub mod by_user;
mod cli_stream;
mod conversation;
pub mod counts;
pub mod events;
pub mod lines;
pub mod log;
mod records;
pub mod retention;
mod run;
mod runner;
mod service;

use std::time::Duration;

use crate::conversations::ConversationError;
use crate::model::{ModelError, PromptStatus};
use crate::store::StoreError;
use crate::vms::VmError;

pub use records::settle_interrupted;
pub use retention::prune_before;
pub use run::{PromptRequest, PromptRun};
pub use service::{PromptDeps, PromptService};

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("user {0} not found")]
    UserNotFound(String),
    #[error("prompt {0} not found")]
    NotFound(String),
    #[error("the VM already runs {limit} prompt(s) (MC_PROMPTS_PER_VM); retry when it finishes")]
    Busy { limit: u32 },
    #[error("prompt {id} is already {status}")]
    Finished { id: String, status: PromptStatus },
    #[error("prompt {0} is no longer streaming; read its status instead")]
    NotStreaming(String),
    #[error("conversation {0} has a turn running; send the next one when it ends")]
    ConversationBusy(String),
    #[error(
        "conversation {0} has expired: its CLI session is gone (its VM was destroyed); start a new one"
    )]
    ConversationExpired(String),
    #[error(transparent)]
    Conversation(#[from] ConversationError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Transition(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::lift_redb_errors!(PromptError);

/// What a prompt meets when its VM already runs as many as it may (`MC_PROMPT_WHEN_BUSY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenBusy {
    /// Wait for a turn.
    Queue,
    /// Answer 429 at once.
    Reject,
}

/// How prompts run on this host.
#[derive(Debug, Clone)]
pub struct PromptSettings {
    pub max_prompt_bytes: u64,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub per_vm: u32,
    pub when_busy: WhenBusy,
    pub endpoint: Option<crate::providers::Endpoint>,
    pub cli: crate::vms::CliEnvironment,
    pub log_bounds: log::LogBounds,
    /// Finished prompts whose events stay in memory for re-attach.
    pub retained_runs: usize,
}

/// The most of an answer's text a prompt record keeps.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
