//! One prompt's run: make sure the user's VM runs, start the provider's CLI through the agent,
//! translate its output into the run's event log, and settle the record, the metrics and the
//! events once it ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::cli_stream::{CliRun, Ended, Ending, Gathered, stream_cli};
use super::events::PromptEvent;
use super::run::{PromptRequest, PromptRun};
use super::service::PromptDeps;
use super::{PromptError, PromptSettings, records};
use crate::auth::AuthService;
use crate::conversations::ConversationService;
use crate::events::{Channel, EventHub, HubEvent};
use crate::guest::client::GuestError;
use crate::guest::workspace::resolve_dir;
use crate::metrics::Metrics;
use crate::metrics::{PromptLabels, ProviderLabels};
use crate::model::{Conversation, PromptStatus, Status, now_ms};
use crate::providers::{CONVERSATION_EXPIRED, Invocation, Outcome};
use crate::store::Store;
use crate::vms::{VmError, VmService, VmStep};

fn progress(run: &PromptRun, stage: &str) {
    run.log
        .push(PromptEvent::metadata("progress", json!({ "stage": stage })));
}

fn error_code(error: &PromptError) -> &'static str {
    match error {
        PromptError::Vm(e) => e.code(),
        _ => "internal",
    }
}

/// What a run needs, handed over by the service once.
pub(super) struct Runner {
    store: Store,
    vms: VmService,
    events: EventHub,
    metrics: Arc<Metrics>,
    settings: PromptSettings,
    auth: Arc<AuthService>,
    conversations: ConversationService,
}

impl Runner {
    pub(super) fn new(deps: PromptDeps, settings: PromptSettings) -> Runner {
        let PromptDeps {
            store,
            vms,
            events,
            metrics,
            auth,
            conversations,
        } = deps;
        Runner {
            conversations,
            store,
            vms,
            events,
            metrics,
            settings,
            auth,
        }
    }

    pub(super) async fn run(
        &self,
        run: &Arc<PromptRun>,
        request: PromptRequest,
        conversation: Conversation,
        timeout: Duration,
        turn: Arc<Semaphore>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let started = Instant::now();
        run.log.push(PromptEvent::Connected {
            prompt_id: run.id.clone(),
            conversation_id: conversation.id.clone(),
        });
        let channel = Channel::user(&run.user_id);
        self.events.publish(
            &channel,
            HubEvent::PromptStarted {
                prompt_id: run.id.clone(),
                provider: request.provider,
            },
        );
        let mut gathered = Gathered::default();
        let ending = async {
        let _permit = match permit {
            Some(permit) => permit,
            None => {
                if turn.available_permits() == 0 {
                    progress(run, "queued");
                }
                tokio::select! {
                    permit = turn.acquire_owned() => permit.map_err(|_| PromptError::Busy { limit: 0 })?,
                    _ = run.cancel.cancelled() => return Ok(Ending::Cancelled),
                }
            }
        };
        self.execute(run, &request, &conversation, timeout, &mut gathered, started).await
    }
    .await;
        let ending = ending.unwrap_or_else(|e| Ending::Failed {
            code: error_code(&e).into(),
            message: e.to_string(),
        });
        let duration = started.elapsed();
        let (status, final_event, error, usage) = match ending {
            Ending::Completed { usage } => (
                PromptStatus::Completed,
                PromptEvent::Done {
                    exit_code: gathered.exit_code,
                    usage: usage.clone(),
                    duration_ms: duration.as_millis() as u64,
                },
                None,
                usage,
            ),
            Ending::Cancelled => (
                PromptStatus::Cancelled,
                PromptEvent::Done {
                    exit_code: gathered.exit_code,
                    usage: None,
                    duration_ms: duration.as_millis() as u64,
                },
                Some("cancelled".to_string()),
                None,
            ),
            Ending::Failed { code, message } => (
                PromptStatus::Failed,
                PromptEvent::Error {
                    code,
                    message: message.clone(),
                },
                Some(message),
                None,
            ),
        };
        let record = {
            let exit_code = gathered.exit_code;
            let response = std::mem::take(&mut gathered.response);
            let truncated = gathered.truncated;
            let first_content = gathered.first_content.map(|d| d.as_millis() as u64);
            let vm_id = gathered.vm_id.clone();
            let usage_json = usage.map(|u| u.to_string());
            records::update(&self.store, &run.id, move |prompt| {
                prompt.status.transition(status)?;
                prompt.completed_at_ms = Some(now_ms());
                prompt.exit_code = exit_code;
                prompt.error = error;
                prompt.response_text = response;
                prompt.response_truncated = truncated;
                prompt.first_content_ms = first_content;
                prompt.duration_ms = Some(duration.as_millis() as u64);
                prompt.usage_json = usage_json;
                if vm_id.is_some() {
                    prompt.vm_id = vm_id;
                }
                Ok(())
            })
            .await
        };
        if let Err(e) = record {
            tracing::error!(prompt = %run.id, error = %e, "cannot record a finished prompt");
        }
        self.settle_conversation(&conversation, &final_event, &gathered)
            .await;
        if let Err(e) = records::count_for_user(&self.store, &run.user_id).await {
            tracing::warn!(prompt = %run.id, error = %e, "cannot count a prompt on its user");
        }
        let provider = request.provider.to_string();
        self.metrics
            .prompts
            .get_or_create(&PromptLabels {
                provider: provider.clone(),
                status: status.to_string(),
            })
            .inc();
        let labels = ProviderLabels { provider };
        self.metrics
            .prompt_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        if let Some(first) = gathered.first_content {
            self.metrics
                .prompt_first_content
                .get_or_create(&labels)
                .observe(first.as_secs_f64());
        }
        if let Some(vm_id) = &gathered.vm_id {
            // The idle period of the VM starts when its prompt ends, not when it began.
            self.vms.touch(vm_id);
        }
        run.log.push(final_event);
        self.events.publish(
            &channel,
            HubEvent::PromptCompleted {
                prompt_id: run.id.clone(),
                status,
                exit_code: gathered.exit_code,
            },
        );
    }

    async fn execute(
        &self,
        run: &Arc<PromptRun>,
        request: &PromptRequest,
        conversation: &Conversation,
        timeout: Duration,
        gathered: &mut Gathered,
        started: Instant,
    ) -> Result<Ending, PromptError> {
        let vm = self
            .vms
            .ensure_running(&run.user_id, |step| {
                progress(
                    run,
                    match step {
                        VmStep::Resuming => "resuming_vm",
                        VmStep::Creating => "creating_vm",
                    },
                )
            })
            .await?;
        if run.cancel.is_cancelled() {
            return Ok(Ending::Cancelled);
        }
        gathered.vm_id = Some(vm.id.clone());
        // The VM was replaced after the request was checked: the CLI session went with it.
        if conversation.vm_id.as_ref().is_some_and(|id| *id != vm.id) {
            return Ok(Ending::Failed {
                code: CONVERSATION_EXPIRED.into(),
                message: format!(
                    "conversation {} has expired: its VM was replaced",
                    conversation.id
                ),
            });
        }
        progress(run, "vm_ready");
        let vm_id = vm.id.clone();
        records::update(&self.store, &run.id, move |prompt| {
            prompt.status.transition(PromptStatus::Streaming)?;
            prompt.started_at_ms = Some(now_ms());
            prompt.vm_id = Some(vm_id);
            Ok(())
        })
        .await?;
        let agent = self.vms.agent(&vm.id).await?;
        let unavailable = |e: GuestError| {
            PromptError::Vm(VmError::AgentUnavailable {
                id: vm.id.clone(),
                reason: e.to_string(),
            })
        };
        let settings = &self.settings;
        let workspace = settings.cli.workspace();
        let cwd = match resolve_dir(&agent, &workspace, &conversation.cwd, true).await {
            Ok(cwd) => cwd,
            Err(e) => {
                return Ok(Ending::Failed {
                    code: e.code().into(),
                    message: format!("the conversation's directory: {e}"),
                });
            }
        };
        let command = request.provider.command(&Invocation {
            prompt: &request.prompt,
            model: request.model.as_deref(),
            home: &settings.cli.home,
            cwd: &cwd,
            resume: conversation.cli_session_id.as_deref(),
            endpoint: settings.endpoint.as_ref(),
        });
        for file in &command.files {
            agent
                .write_file_owned(
                    &file.path,
                    file.contents.as_bytes(),
                    file.mode,
                    settings.cli.owner,
                )
                .await
                .map_err(unavailable)?;
        }
        // Without its credential the CLI would fail anyway; the failure says why.
        let injected = match self
            .auth
            .inject(&run.user_id, request.provider, &agent)
            .await
        {
            Ok(injected) => injected,
            Err(e) => {
                return Ok(Ending::Failed {
                    code: "credential_unavailable".into(),
                    message: format!("cannot write the {} credential: {e}", request.provider),
                });
            }
        };
        if injected.is_some() {
            progress(run, "credential_written");
        }
        let streamed = stream_cli(
            CliRun {
                run,
                agent: &agent,
                provider: request.provider,
                command: &command,
                cli: &settings.cli,
                cwd: &cwd,
                resume: conversation.cli_session_id.as_deref(),
                timeout,
                started,
                vm_id: &vm.id,
            },
            gathered,
        )
        .await;
        // Whatever the run's end, the refresh is captured and the credential leaves the guest.
        if let Some(injected) = &injected {
            match self.auth.release(&run.user_id, injected, &agent).await {
                Ok(true) => progress(run, "credential_refreshed"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(prompt = %run.id, error = %e, "cannot capture or remove a credential")
                }
            }
        }
        let Ended {
            cancelled,
            timed_out,
            outcome,
        } = match streamed? {
            Ok(ended) => ended,
            Err(ending) => return Ok(ending),
        };
        if cancelled {
            return Ok(Ending::Cancelled);
        }
        if timed_out {
            return Ok(Ending::Failed {
                code: "timeout".into(),
                message: format!("the prompt ran past its {} s timeout", timeout.as_secs()),
            });
        }
        Ok(match outcome {
            Outcome::Success { usage } => Ending::Completed { usage },
            Outcome::Failure { code, message } => Ending::Failed { code, message },
        })
    }

    /// After a turn: the conversation learns its CLI session (and the VM it lives on), or
    /// learns that it has gone.
    async fn settle_conversation(
        &self,
        conversation: &Conversation,
        final_event: &PromptEvent,
        gathered: &Gathered,
    ) {
        let result = match (final_event, &gathered.session_id, &gathered.vm_id) {
            (PromptEvent::Error { code, .. }, _, _) if code == CONVERSATION_EXPIRED => {
                self.conversations.expire(&conversation.id).await
            }
            (_, Some(session), Some(vm_id)) => {
                self.conversations
                    .bind_session(&conversation.id, session, vm_id)
                    .await
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(conversation = %conversation.id, error = %e, "cannot record a conversation's turn");
        }
    }
}
