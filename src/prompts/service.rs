//! The prompt service: checks a request, records the prompt, and starts its run; keeps each
//! run's event log for streams to read and re-attach to; cancels runs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use super::WhenBusy;
use super::conversation::{self, InFlight};
use super::log::EventLog;
use super::run::{PromptRequest, PromptRun};
use super::runner::Runner;
use super::{PromptError, PromptSettings, records};
use crate::auth::AuthService;
use crate::conversations::ConversationService;
use crate::events::EventHub;
use crate::guest::workspace::check_relative;
use crate::metrics::Metrics;
use crate::model::{Prompt, PromptStatus, now_ms};
use crate::store::Store;
use crate::vms::VmService;

pub struct PromptService {
    store: Store,
    vms: VmService,
    conversations: ConversationService,
    in_flight: Arc<InFlight>,
    settings: PromptSettings,
    runner: Arc<Runner>,
    runs: Mutex<HashMap<String, Arc<PromptRun>>>,
    /// Finished runs, oldest first, evicted past `retained_runs`.
    finished: Mutex<VecDeque<String>>,
    /// One semaphore per user (one CLI VM per user), `per_vm` permits each.
    turns: Mutex<HashMap<String, Arc<Semaphore>>>,
    tracker: TaskTracker,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The services prompts use.
#[derive(Clone)]
pub struct PromptDeps {
    pub store: Store,
    pub vms: VmService,
    pub events: EventHub,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<AuthService>,
    pub conversations: ConversationService,
}

impl PromptService {
    pub fn new(
        deps: PromptDeps,
        settings: PromptSettings,
        tracker: TaskTracker,
    ) -> Arc<PromptService> {
        let runner = Arc::new(Runner::new(deps.clone(), settings.clone()));
        Arc::new(PromptService {
            store: deps.store,
            vms: deps.vms,
            conversations: deps.conversations,
            in_flight: Arc::default(),
            settings,
            runner,
            runs: Mutex::new(HashMap::new()),
            finished: Mutex::new(VecDeque::new()),
            turns: Mutex::new(HashMap::new()),
            tracker,
        })
    }

    fn validate(&self, request: &PromptRequest) -> Result<Duration, PromptError> {
        let invalid = |field, reason: String| PromptError::Invalid { field, reason };
        if request.prompt.trim().is_empty() {
            return Err(invalid("prompt", "must not be empty".into()));
        }
        if request.prompt.len() as u64 > self.settings.max_prompt_bytes {
            return Err(invalid(
                "prompt",
                format!(
                    "is {} bytes; the limit is {} (MC_MAX_PROMPT_BYTES)",
                    request.prompt.len(),
                    self.settings.max_prompt_bytes
                ),
            ));
        }
        if request.prompt.contains('\0') {
            return Err(invalid("prompt", "must not contain NUL".into()));
        }
        if let Some(cwd) = &request.cwd {
            check_relative(cwd).map_err(|e| invalid("cwd", e.to_string()))?;
        }
        if let Some(model) = &request.model {
            let plain = !model.is_empty()
                && model.len() <= 100
                && model
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._:/@".contains(&b));
            if !plain {
                return Err(invalid("model", format!("{model:?} is not a model name")));
            }
        }
        match request.timeout_sec {
            None => Ok(self.settings.default_timeout),
            Some(secs) if secs >= 1 && Duration::from_secs(secs) <= self.settings.max_timeout => {
                Ok(Duration::from_secs(secs))
            }
            Some(_) => Err(invalid(
                "timeoutSec",
                format!(
                    "must be from 1 to {} (MC_PROMPT_MAX_TIMEOUT_SECS)",
                    self.settings.max_timeout.as_secs()
                ),
            )),
        }
    }

    fn turn(&self, user_id: &str) -> Arc<Semaphore> {
        lock(&self.turns)
            .entry(user_id.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.per_vm as usize)))
            .clone()
    }

    /// Records the prompt and starts it; the run's log starts with `connected`.
    pub async fn execute(
        self: &Arc<Self>,
        request: PromptRequest,
    ) -> Result<Arc<PromptRun>, PromptError> {
        let timeout = self.validate(&request)?;
        let turn = self.turn(&request.user_id);
        let permit: Option<OwnedSemaphorePermit> = match self.settings.when_busy {
            WhenBusy::Reject => {
                Some(
                    turn.clone()
                        .try_acquire_owned()
                        .map_err(|_| PromptError::Busy {
                            limit: self.settings.per_vm,
                        })?,
                )
            }
            WhenBusy::Queue => None,
        };
        let (conversation, hold) =
            conversation::open(&self.conversations, &self.vms, &self.in_flight, &request).await?;
        let now = now_ms();
        let prompt = records::insert(
            &self.store,
            Prompt {
                id: uuid::Uuid::now_v7().to_string(),
                user_id: request.user_id.clone(),
                vm_id: None,
                provider: request.provider,
                status: PromptStatus::Pending,
                created_at_ms: now,
                started_at_ms: None,
                completed_at_ms: None,
                exit_code: None,
                error: None,
                version: 1,
                model: request.model.clone(),
                prompt_bytes: request.prompt.len() as u64,
                response_text: String::new(),
                response_truncated: false,
                first_content_ms: None,
                duration_ms: None,
                usage_json: None,
                conversation_id: Some(conversation.id.clone()),
            },
        )
        .await?;
        let conversation = self
            .conversations
            .add_prompt(&conversation.id, &prompt.id)
            .await?;
        let run = Arc::new(PromptRun::new(
            prompt.id.clone(),
            prompt.user_id.clone(),
            EventLog::new(self.settings.log_bounds),
            request.cancel_on_disconnect,
        ));
        lock(&self.runs).insert(run.id.clone(), run.clone());
        let service = self.clone();
        let task_run = run.clone();
        self.tracker.spawn(async move {
            let runner = service.runner.clone();
            runner
                .run(&task_run, request, conversation, timeout, turn, permit)
                .await;
            drop(hold);
            task_run.mark_finished();
            service.retire(&task_run.id);
        });
        Ok(run)
    }

    /// Keeps a finished run's events for re-attach, within the bound.
    fn retire(&self, id: &str) {
        let mut finished = lock(&self.finished);
        finished.push_back(id.to_string());
        while finished.len() > self.settings.retained_runs {
            if let Some(old) = finished.pop_front() {
                lock(&self.runs).remove(&old);
            }
        }
    }

    /// Whether the user has a prompt that has not finished (queued or running).
    pub fn has_running(&self, user_id: &str) -> bool {
        lock(&self.runs)
            .values()
            .any(|run| run.user_id == user_id && !run.is_finished())
    }

    /// The run of a prompt whose events are still in memory.
    pub fn run(&self, id: &str) -> Option<Arc<PromptRun>> {
        lock(&self.runs).get(id).cloned()
    }

    /// Removes finished prompts that ended before `cutoff_ms`, with any event log still in
    /// memory; returns how many.
    pub async fn prune_before(&self, cutoff_ms: i64) -> Result<usize, PromptError> {
        let pruned = super::retention::prune_before(&self.store, cutoff_ms).await?;
        {
            let mut runs = lock(&self.runs);
            let mut finished = lock(&self.finished);
            for id in &pruned {
                if runs.get(id).is_some_and(|run| run.is_finished()) {
                    runs.remove(id);
                    finished.retain(|kept| kept != id);
                }
            }
        }
        if !pruned.is_empty() {
            tracing::info!(pruned = pruned.len(), "pruned prompts past their retention");
        }
        Ok(pruned.len())
    }

    pub async fn get(&self, id: &str) -> Result<Prompt, PromptError> {
        records::get(&self.store, id).await
    }

    /// The user's newest `limit` prompts, and how many the user has in all.
    pub async fn history(
        &self,
        user_id: &str,
        limit: usize,
    ) -> Result<(Vec<Prompt>, u64), PromptError> {
        records::for_user(&self.store, user_id, limit).await
    }

    /// Stops a running prompt; its streams end with `done` and its record says `cancelled`.
    pub async fn cancel(&self, id: &str) -> Result<Prompt, PromptError> {
        let prompt = self.get(id).await?;
        if matches!(
            prompt.status,
            PromptStatus::Completed | PromptStatus::Failed | PromptStatus::Cancelled
        ) {
            return Err(PromptError::Finished {
                id: prompt.id,
                status: prompt.status,
            });
        }
        let run = self
            .run(id)
            .ok_or_else(|| PromptError::NotStreaming(id.to_string()))?;
        run.cancel.cancel();
        // The run settles the record once the process group is gone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !run.is_finished() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.get(id).await
    }
}
