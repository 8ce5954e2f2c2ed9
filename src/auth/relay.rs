//! One login, from start to end: the VM running, the provider's login under a PTY in a HOME of
//! its own, its screen read for the URL or device code, the user's code written to it, its
//! credential file watched by the agent, and everything removed at the end.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::secrets::run_quietly;
use super::{AuthError, AuthSettings, files, records};
use crate::guest::client::{AgentClient, ExecEvent, ExecStream, GuestError};
use crate::guest::messages::{ExecRequest, FileStamp, PtySize};
use crate::model::{AuthSession, AuthSessionStatus, Provider, now_ms};
use crate::providers::{LoginCommand, LoginScreen, LoginSignal, UserAction};
use crate::store::Store;
use crate::vms::{VmService, VmStep};

/// Wide enough that a full-screen CLI never wraps an authorize URL.
const PTY: PtySize = PtySize {
    rows: 50,
    cols: 4000,
};
/// Each watch request waits this long; the loop keeps asking until the login ends.
const WATCH_WINDOW: Duration = Duration::from_secs(20);

/// A code from the user, with where to send the verdict.
pub struct CodeSubmission {
    pub code: Zeroizing<String>,
    pub reply: oneshot::Sender<Result<AuthSession, AuthError>>,
}

/// The handles the service keeps on a running login.
pub struct LoginControl {
    pub user_id: String,
    pub codes: mpsc::Sender<CodeSubmission>,
    pub cancel: CancellationToken,
    /// Set with `cancel` when the login is ended for its age: it then ends as `timeout`.
    pub expired: Arc<AtomicBool>,
}

/// How a login ended.
enum Ending {
    Completed(Zeroizing<Vec<u8>>),
    Failed(String),
    Cancelled,
    Timeout,
    /// Ended by the daemon for being open too long (`expire_auth_sessions`).
    Expired,
}

/// What a login's relay needs from the service that started it. The service implements it, so
/// the relay does not depend on the service.
pub(super) trait LoginHost: Send + Sync + 'static {
    fn store(&self) -> &Store;
    fn vms(&self) -> &VmService;
    fn settings(&self) -> &AuthSettings;
    /// Whether the login was ended for its age (its cancel then means `timeout`).
    fn was_expired(&self, id: &str) -> bool;
    /// The login's relay has ended: the service drops its handles.
    fn forget(&self, id: &str);
    /// Announces the session's new state.
    fn progress(&self, session: &AuthSession);
    /// Seals the credential the login produced and completes the session.
    fn complete(
        &self,
        session: &AuthSession,
        plaintext: &[u8],
    ) -> impl Future<Output = Result<(), AuthError>> + Send;
}

pub(super) async fn run<H: LoginHost>(
    service: Arc<H>,
    session: AuthSession,
    mut codes: mpsc::Receiver<CodeSubmission>,
    cancel: CancellationToken,
) {
    let id = session.id.clone();
    // On the guest's tmpfs: the CLI writes the new credential into its HOME.
    let home = super::secrets::login_home(&service.settings().cli, &id);
    let mut login = Login {
        service: service.clone(),
        session,
        home,
        agent: None,
        exec_id: None,
    };
    let ending = login
        .drive(&mut codes, &cancel)
        .await
        .unwrap_or_else(|e| Ending::Failed(e.to_string()));
    let ending = match ending {
        Ending::Cancelled if service.was_expired(&id) => Ending::Expired,
        other => other,
    };
    // A code that raced the end gets the final state.
    codes.close();
    login.finish(ending).await;
    while let Ok(late) = codes.try_recv() {
        let _ = late
            .reply
            .send(records::get_session(service.store(), &id).await);
    }
    if let Some(vm_id) = &login.session.vm_id {
        // The VM's idle period starts when the login ends.
        service.vms().touch(vm_id);
    }
    service.forget(&id);
}

struct Login<H> {
    service: Arc<H>,
    session: AuthSession,
    home: String,
    agent: Option<Arc<AgentClient>>,
    exec_id: Option<u64>,
}

impl<H: LoginHost> Login<H> {
    fn provider(&self) -> Provider {
        self.session.provider
    }

    async fn set_status(
        &mut self,
        status: AuthSessionStatus,
        change: impl FnOnce(&mut AuthSession) + Send + 'static,
    ) -> Result<(), AuthError> {
        let before = self.session.status;
        self.session = records::update_session(self.service.store(), &self.session.id, move |s| {
            change(s);
            s.status = status;
            Ok(())
        })
        .await?;
        if self.session.status != before {
            self.service.progress(&self.session);
        }
        Ok(())
    }

    /// The moment the session has been idle for its timeout.
    fn idle_deadline(&self) -> tokio::time::Instant {
        let timeout_ms = self.service.settings().session_timeout.as_millis() as i64;
        let left_ms = self.session.last_activity_ms + timeout_ms - now_ms();
        tokio::time::Instant::now() + Duration::from_millis(left_ms.max(0) as u64)
    }

    /// Runs the login until it ends. A cancel is heard between the steps that start the VM and
    /// the CLI, never inside them: a VM create dropped half-way would be left to reconcile.
    async fn drive(
        &mut self,
        codes: &mut mpsc::Receiver<CodeSubmission>,
        cancel: &CancellationToken,
    ) -> Result<Ending, AuthError> {
        self.set_status(AuthSessionStatus::StartingVm, |_| {})
            .await?;
        let vm = self
            .service
            .vms()
            .ensure_running(&self.session.user_id, |_: VmStep| {})
            .await?;
        let agent = self.service.vms().agent(&vm.id).await?;
        self.agent = Some(agent.clone());
        if cancel.is_cancelled() {
            return Ok(Ending::Cancelled);
        }
        self.set_status(AuthSessionStatus::StartingVm, move |s| {
            s.vm_id = Some(vm.id)
        })
        .await?;
        let mut stream = match self.start_login(&agent).await? {
            Ok(stream) => stream,
            Err(ending) => return Ok(ending),
        };
        self.exec_id = Some(stream.id);
        if cancel.is_cancelled() {
            return Ok(Ending::Cancelled);
        }

        let (found_tx, mut found) = mpsc::channel(1);
        let _watcher = AbortOnDrop(tokio::spawn(watch_credentials(
            agent.clone(),
            self.provider().credential_path(&self.home),
            self.provider(),
            found_tx,
        )));
        let mut screen = LoginScreen::new(self.provider());
        let mut action: Option<UserAction> = None;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(Ending::Cancelled),
                Some(bytes) = found.recv() => return Ok(Ending::Completed(bytes)),
                event = stream.next() => match event {
                    Some(Ok(ExecEvent::Stdout(chunk) | ExecEvent::Stderr(chunk))) => {
                        for signal in screen.feed(&chunk) {
                            if let Some(ending) = self.on_signal(signal, &mut action).await? {
                                return Ok(ending);
                            }
                        }
                    }
                    Some(Ok(ExecEvent::Exit(status))) => {
                        // The CLI may exit right after writing the file; give the watcher a moment.
                        let late = tokio::time::timeout(Duration::from_secs(2), found.recv()).await;
                        if let Ok(Some(bytes)) = late {
                            return Ok(Ending::Completed(bytes));
                        }
                        let why = screen.last_line().map(str::to_string).unwrap_or_else(|| {
                            format!("the login exited (status {:?}) without writing credentials", status.code)
                        });
                        return Ok(Ending::Failed(why));
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(AuthError::Guest(GuestError::Disconnected)),
                },
                Some(submission) = codes.recv() => {
                    let verdict = self.accept_code(&stream, action.as_ref(), &submission.code).await;
                    let _ = submission.reply.send(verdict);
                }
                _ = tokio::time::sleep_until(self.idle_deadline()) => {
                    if self.idle_deadline() <= tokio::time::Instant::now() {
                        return Ok(Ending::Timeout);
                    }
                }
            }
        }
    }

    /// Starts the provider's login under a PTY in its own HOME. A CLI missing from the VM ends
    /// the session with a message that says so.
    async fn start_login(
        &self,
        agent: &AgentClient,
    ) -> Result<Result<ExecStream, Ending>, AuthError> {
        let command = self.provider().login_command(&self.home);
        self.prepare_home(agent, &command).await?;
        let cli = &self.service.settings().cli;
        let mut env = cli.env();
        env.extend(command.env.clone());
        let started = agent
            .exec(ExecRequest {
                argv: command.argv.clone(),
                env,
                cwd: Some(self.home.clone()),
                uid: cli.owner.map(|(uid, _)| uid),
                gid: cli.owner.map(|(_, gid)| gid),
                pty: Some(PTY),
                stdin: true,
                // A backstop only: the session's own timeout ends it first.
                timeout_sec: Some(self.service.settings().session_timeout.as_secs() * 2 + 60),
            })
            .await;
        match started {
            Ok(stream) => Ok(Ok(stream)),
            Err(GuestError::Agent(body)) if body.code == "spawn_failed" => {
                Ok(Err(Ending::Failed(format!(
                    "the {} CLI cannot start in the VM: {}",
                    self.provider(),
                    body.message
                ))))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Acts on what the screen said; `Some` ends the login.
    async fn on_signal(
        &mut self,
        signal: LoginSignal,
        action: &mut Option<UserAction>,
    ) -> Result<Option<Ending>, AuthError> {
        match signal {
            LoginSignal::AwaitingUser(user_action) => {
                let shown = user_action.clone();
                self.set_status(AuthSessionStatus::AwaitingUser, move |s| {
                    s.auth_url = shown.auth_url;
                    s.device_code = shown.device_code;
                    s.verification_url = shown.verification_url;
                    s.instructions = Some(shown.instructions);
                })
                .await?;
                *action = Some(user_action);
                Ok(None)
            }
            LoginSignal::Failed(message) => Ok(Some(Ending::Failed(message))),
            // The credential file decides; the watcher sees it shortly.
            LoginSignal::Succeeded => Ok(None),
        }
    }

    async fn accept_code(
        &mut self,
        stream: &ExecStream,
        action: Option<&UserAction>,
        code: &str,
    ) -> Result<AuthSession, AuthError> {
        if self.session.status != AuthSessionStatus::AwaitingUser {
            return Err(AuthError::NotAwaitingCode {
                id: self.session.id.clone(),
                status: self.session.status,
            });
        }
        if action.is_some_and(|a| !a.expects_code) {
            return Err(AuthError::NoCodeExpected {
                provider: self.provider(),
            });
        }
        let mut line = Zeroizing::new(Vec::with_capacity(code.len() + 1));
        line.extend_from_slice(code.as_bytes());
        line.push(b'\r');
        stream
            .write_stdin(bytes::Bytes::copy_from_slice(&line))
            .await?;
        self.set_status(AuthSessionStatus::Verifying, |_| {})
            .await?;
        Ok(self.session.clone())
    }

    async fn prepare_home(
        &self,
        agent: &AgentClient,
        command: &LoginCommand,
    ) -> Result<(), AuthError> {
        let owner = self.service.settings().cli.owner;
        super::secrets::prepare(agent, &self.service.settings().cli).await?;
        let mut dirs = vec![self.home.clone()];
        dirs.extend(command.dirs.iter().map(|d| format!("{}/{d}", self.home)));
        let mut argv = vec!["mkdir".to_string(), "-p".into(), "-m".into(), "700".into()];
        argv.extend(dirs.iter().cloned());
        run_quietly(agent, argv).await?;
        if let Some((uid, gid)) = owner {
            let mut chown = vec!["chown".to_string(), "-R".into(), format!("{uid}:{gid}")];
            chown.push(self.home.clone());
            run_quietly(agent, chown).await?;
        }
        for (path, contents) in &command.files {
            agent
                .write_file_owned(
                    &format!("{}/{path}", self.home),
                    contents.as_bytes(),
                    0o600,
                    owner,
                )
                .await?;
        }
        Ok(())
    }

    async fn finish(&mut self, ending: Ending) {
        if let (Some(agent), Some(exec_id)) = (&self.agent, self.exec_id) {
            // Already gone when the CLI exited by itself.
            let _ = agent.cancel(exec_id).await;
        }
        let result = match ending {
            Ending::Completed(bytes) => {
                // A device-code login goes from waiting on the user straight to a written file.
                if self.session.status == AuthSessionStatus::AwaitingUser
                    && let Err(e) = self.set_status(AuthSessionStatus::Verifying, |_| {}).await
                {
                    tracing::warn!(session = %self.session.id, error = %e, "cannot mark a login verifying");
                }
                self.service.complete(&self.session, &bytes).await
            }
            Ending::Failed(message) => self.end(AuthSessionStatus::Failed, Some(message)).await,
            Ending::Cancelled => self.end(AuthSessionStatus::Cancelled, None).await,
            Ending::Timeout => {
                let message = format!(
                    "no answer from the user within {} s",
                    self.service.settings().session_timeout.as_secs()
                );
                self.end(AuthSessionStatus::Timeout, Some(message)).await
            }
            Ending::Expired => {
                let message = "ended by the daemon: the login was open too long".to_string();
                self.end(AuthSessionStatus::Timeout, Some(message)).await
            }
        };
        if let Err(e) = result {
            tracing::error!(session = %self.session.id, error = %e, "cannot settle an auth session");
            let message = e.to_string();
            let _ = self.end(AuthSessionStatus::Failed, Some(message)).await;
        }
        if let Some(agent) = &self.agent
            && let Err(e) =
                run_quietly(agent, vec!["rm".into(), "-rf".into(), self.home.clone()]).await
        {
            tracing::warn!(session = %self.session.id, error = %e, "cannot remove a login's HOME");
        }
    }

    async fn end(
        &mut self,
        status: AuthSessionStatus,
        error: Option<String>,
    ) -> Result<(), AuthError> {
        let current = records::get_session(self.service.store(), &self.session.id).await?;
        if current.status.is_terminal() {
            return Ok(());
        }
        self.set_status(status, move |s| s.error = error).await
    }
}

/// Asks the agent for each new version of the credential file until one is complete.
async fn watch_credentials(
    agent: Arc<AgentClient>,
    path: String,
    provider: Provider,
    found: mpsc::Sender<Zeroizing<Vec<u8>>>,
) {
    let mut since: Option<FileStamp> = None;
    loop {
        match agent
            .watch_file(&path, files::MAX_FILE_BYTES, since, WATCH_WINDOW)
            .await
        {
            Ok(Some((bytes, stamp))) => {
                let bytes = Zeroizing::new(bytes);
                since = Some(stamp);
                // A half-written file is ignored; the next version is awaited.
                if provider.cli().inspect_credential(&bytes).is_ok() {
                    let _ = found.send(bytes).await;
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "credential watch ended");
                return;
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
