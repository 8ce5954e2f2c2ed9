//! A prompt's request and its run: what the service hands the runner, and what streams read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::log::{EventLog, Reader};
use crate::model::Provider;

/// The body of `POST /api/prompts/execute`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromptRequest {
    pub user_id: String,
    pub provider: Provider,
    pub prompt: String,
    pub model: Option<String>,
    pub timeout_sec: Option<u64>,
    #[serde(default)]
    pub cancel_on_disconnect: bool,
    /// The conversation this prompt continues; a new one when absent.
    pub conversation_id: Option<String>,
    /// Where the CLI runs, relative to the workspace root: a new conversation's directory (a
    /// follow-up runs where its conversation does).
    pub cwd: Option<String>,
}

/// A prompt being run (or recently run): its events, and the means to stop it.
pub struct PromptRun {
    pub id: String,
    pub user_id: String,
    pub log: Arc<EventLog>,
    pub cancel: CancellationToken,
    pub cancel_on_disconnect: bool,
    finished: AtomicBool,
}

impl PromptRun {
    pub(super) fn new(
        id: String,
        user_id: String,
        log: Arc<EventLog>,
        cancel_on_disconnect: bool,
    ) -> PromptRun {
        PromptRun {
            id,
            user_id,
            log,
            cancel: CancellationToken::new(),
            cancel_on_disconnect,
            finished: AtomicBool::new(false),
        }
    }
}

impl PromptRun {
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    pub(super) fn mark_finished(&self) {
        self.finished.store(true, Ordering::Release);
    }

    /// A stream of this run's events after `last_event_id`.
    pub fn reader(&self, last_event_id: u64) -> Reader {
        self.log.reader(last_event_id)
    }
}
