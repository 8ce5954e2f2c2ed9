//! One prompt's run: make sure the user's VM runs, start the provider's CLI through the agent,
//! translate its output into the run's event log, and settle the record, the metrics and the
//! events once it ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::PromptSettings;
use super::events::PromptEvent;
use super::lines::{LineSplitter, MAX_LINE_BYTES};
use super::run::{PromptRequest, PromptRun};
use super::{MAX_RESPONSE_BYTES, PromptError, records};
use crate::auth::AuthService;
use crate::events::{Channel, EventHub, HubEvent};
use crate::guest::client::{AgentClient, ExecEvent, GuestError};
use crate::guest::messages::ExecRequest;
use crate::metrics::Metrics;
use crate::metrics::{PromptLabels, ProviderLabels};
use crate::model::{PromptStatus, Status, now_ms};
use crate::providers::{CliCommand, Invocation, Outcome};
use crate::store::Store;
use crate::vms::{VmError, VmService, VmStep};

/// The most stderr lines passed on as `metadata`; the rest are counted.
const MAX_STDERR_LINES: usize = 200;
/// How long the host waits for the guest to end a CLI past its timeout or a cancel.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How a run ended.
enum Ending {
    Completed { usage: Option<serde_json::Value> },
    Failed { code: String, message: String },
    Cancelled,
}

/// What the run gathered for its record.
#[derive(Default)]
struct Gathered {
    response: String,
    truncated: bool,
    first_content: Option<Duration>,
    exit_code: Option<i32>,
    vm_id: Option<String>,
}

impl Gathered {
    fn observe(&mut self, event: &PromptEvent, started: Instant) {
        if let PromptEvent::Content { text } = event {
            self.first_content.get_or_insert_with(|| started.elapsed());
            let room = MAX_RESPONSE_BYTES.saturating_sub(self.response.len());
            if text.len() > room {
                self.truncated = true;
                let mut cut = room;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                self.response.push_str(&text[..cut]);
            } else {
                self.response.push_str(text);
            }
        }
    }
}

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
}

impl Runner {
    pub(super) fn new(
        store: Store,
        vms: VmService,
        events: EventHub,
        metrics: Arc<Metrics>,
        settings: PromptSettings,
        auth: Arc<AuthService>,
    ) -> Runner {
        Runner {
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
        timeout: Duration,
        turn: Arc<Semaphore>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let started = Instant::now();
        run.log.push(PromptEvent::Connected {
            prompt_id: run.id.clone(),
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
        self.execute(run, &request, timeout, &mut gathered, started).await
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
        let command = request.provider.command(&Invocation {
            prompt: &request.prompt,
            model: request.model.as_deref(),
            home: &settings.cli.home,
            cwd: &settings.cli.home,
            resume: None,
            endpoint: settings.endpoint.as_ref(),
        });
        for file in &command.files {
            agent
                .write_file(&file.path, file.contents.as_bytes(), file.mode)
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
        let streamed = self
            .stream_cli(
                run, &agent, request, &command, timeout, gathered, started, &vm.id,
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
        let (cancelling, timed_out, outcome) = match streamed? {
            Ok(flags) => flags,
            Err(ending) => return Ok(ending),
        };
        if cancelling {
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

    /// Runs the CLI and streams its output into the run's log; `(cancelled, timed_out, outcome)`
    /// when it ended, or the run's ending when it could not start.
    #[allow(clippy::too_many_arguments)]
    async fn stream_cli(
        &self,
        run: &Arc<PromptRun>,
        agent: &AgentClient,
        request: &PromptRequest,
        command: &CliCommand,
        timeout: Duration,
        gathered: &mut Gathered,
        started: Instant,
        vm_id: &str,
    ) -> Result<Result<(bool, bool, Outcome), Ending>, PromptError> {
        let settings = &self.settings;
        let unavailable = |e: GuestError| {
            PromptError::Vm(VmError::AgentUnavailable {
                id: vm_id.to_string(),
                reason: e.to_string(),
            })
        };
        let mut env = settings.cli.env();
        env.extend(command.env.clone());
        let exec = agent
            .exec(ExecRequest {
                argv: command.argv.clone(),
                env,
                cwd: Some(settings.cli.home.clone()),
                timeout_sec: Some(timeout.as_secs().max(1)),
                ..ExecRequest::default()
            })
            .await;
        let mut stream = match exec {
            Ok(stream) => stream,
            Err(GuestError::Agent(body)) if body.code == "spawn_failed" => {
                return Ok(Err(Ending::Failed {
                    code: "cli_not_found".into(),
                    message: format!(
                        "the {} CLI cannot start: {}",
                        request.provider, body.message
                    ),
                }));
            }
            Err(e) => return Err(unavailable(e)),
        };
        let mut translator = request.provider.cli().translator(None);
        let mut stdout = LineSplitter::new(MAX_LINE_BYTES);
        let mut stderr = LineSplitter::new(MAX_LINE_BYTES);
        let mut stderr_lines = 0usize;
        let mut cancelling = false;
        let mut timed_out = false;
        let emit = |events: Vec<PromptEvent>, gathered: &mut Gathered| {
            for event in events {
                gathered.observe(&event, started);
                run.log.push(event);
            }
        };
        // The guest enforces the timeout; the host stops listening `CANCEL_GRACE` after it, or
        // after a cancel, even if the guest never answers.
        let give_up = tokio::time::sleep(timeout + CANCEL_GRACE);
        tokio::pin!(give_up);
        loop {
            let event = tokio::select! {
                _ = run.cancel.cancelled(), if !cancelling => {
                    cancelling = true;
                    // Not awaited: its answer would queue behind the output nobody reads then.
                    stream.cancel_nowait();
                    give_up.as_mut().reset(tokio::time::Instant::now() + CANCEL_GRACE);
                    continue;
                }
                _ = &mut give_up => {
                    stream.cancel_nowait();
                    tracing::warn!(prompt = %run.id, "the guest did not end the CLI in time; the host stops listening");
                    timed_out = !cancelling;
                    break;
                }
                event = stream.next() => event,
            };
            match event {
                None => break,
                Some(Ok(ExecEvent::Stdout(chunk))) => {
                    for line in stdout.push(&chunk) {
                        emit(translator.line(&line), gathered);
                    }
                }
                Some(Ok(ExecEvent::Stderr(chunk))) => {
                    for line in stderr.push(&chunk) {
                        translator.stderr_line(&line);
                        stderr_lines += 1;
                        if stderr_lines <= MAX_STDERR_LINES && !line.trim().is_empty() {
                            run.log
                                .push(PromptEvent::metadata("stderr", json!({ "line": line })));
                        }
                    }
                }
                Some(Ok(ExecEvent::Exit(status))) => {
                    gathered.exit_code = status.code;
                    timed_out = status.timed_out;
                }
                Some(Err(e)) => return Err(unavailable(e)),
            }
        }
        if let Some(line) = stdout.finish() {
            emit(translator.line(&line), gathered);
        }
        if let Some(line) = stderr.finish() {
            translator.stderr_line(&line);
        }
        let outcome = translator.finish(gathered.exit_code);
        Ok(Ok((cancelling, timed_out, outcome)))
    }
}
