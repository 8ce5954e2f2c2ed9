//! The auth service: starts and steers logins, keeps the credentials sealed, writes them into
//! guests before prompts and captures what the CLIs refreshed afterwards, and validates them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroize::Zeroizing;

use super::relay::{self, CodeSubmission, LoginControl};
use super::vault::Vault;
use super::{AuthError, AuthSettings, channel, files, records};
use crate::events::EventHub;
use crate::guest::client::AgentClient;
use crate::guest::messages::ExecRequest;
use crate::metrics::{AuthSessionLabels, Metrics, ProviderLabels};
use crate::model::{AuthSession, AuthSessionStatus, Credential, Provider, now_ms};
use crate::store::Store;
use crate::vms::VmService;

/// The longest code accepted; real ones are well under 200 characters.
const MAX_CODE_BYTES: usize = 2048;

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub session_id: String,
    pub user_id: String,
    pub provider: Provider,
    pub status: AuthSessionStatus,
    pub auth_url: Option<String>,
    pub device_code: Option<String>,
    pub verification_url: Option<String>,
    pub instructions: Option<String>,
    pub error: Option<String>,
    pub rotation: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    pub expires_at: i64,
}

/// A credential as the API shows it: metadata only, never a secret.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    pub credential_id: String,
    pub provider: Provider,
    pub is_valid: bool,
    pub reason: Option<String>,
    pub last_verified: Option<i64>,
    pub expires_at: Option<i64>,
    pub updated_at: i64,
}

impl From<&Credential> for CredentialView {
    fn from(c: &Credential) -> Self {
        CredentialView {
            credential_id: c.id.clone(),
            provider: c.provider,
            is_valid: c.is_valid,
            reason: c.reason.clone(),
            last_verified: c.last_verified_ms,
            expires_at: c.expires_at_ms,
            updated_at: c.updated_at_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    pub valid: bool,
    pub reason: String,
    pub expires_at: Option<i64>,
    pub last_verified: Option<i64>,
    /// The check run in the VM with `?live=true`.
    pub live: Option<LiveCheck>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveCheck {
    pub ok: bool,
    pub detail: String,
}

/// What was written into a guest before a prompt, to compare with what is there after it.
#[derive(Debug, Clone)]
pub struct Injected {
    provider: Provider,
    digest: [u8; 32],
}

pub struct AuthService {
    pub(super) store: Store,
    pub(super) vms: VmService,
    pub(super) events: EventHub,
    pub(super) settings: AuthSettings,
    pub(super) metrics: Arc<Metrics>,
    vault: Option<Vault>,
    live: Mutex<HashMap<String, LoginControl>>,
    tracker: TaskTracker,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl AuthService {
    pub fn new(
        store: Store,
        vms: VmService,
        events: EventHub,
        metrics: Arc<Metrics>,
        settings: AuthSettings,
        vault: Option<Vault>,
        tracker: TaskTracker,
    ) -> Arc<AuthService> {
        Arc::new(AuthService {
            store,
            vms,
            events,
            metrics,
            settings,
            vault,
            live: Mutex::new(HashMap::new()),
            tracker,
        })
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LoginControl>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn vault(&self) -> Result<&Vault, AuthError> {
        self.vault.as_ref().ok_or(AuthError::VaultUnavailable)
    }

    pub fn view(&self, session: &AuthSession) -> SessionView {
        SessionView {
            session_id: session.id.clone(),
            user_id: session.user_id.clone(),
            provider: session.provider,
            status: session.status,
            auth_url: session.auth_url.clone(),
            device_code: session.device_code.clone(),
            verification_url: session.verification_url.clone(),
            instructions: session.instructions.clone(),
            error: session.error.clone(),
            rotation: session.rotation,
            created_at: session.created_at_ms,
            updated_at: session.updated_at_ms,
            completed_at: session.completed_at_ms,
            expires_at: session.last_activity_ms + self.settings.session_timeout.as_millis() as i64,
        }
    }

    /// Starts a login; it goes on in the background. A rotation needs a credential to replace,
    /// which stays in use until the new login completes.
    pub async fn start(
        self: &Arc<Self>,
        user_id: &str,
        provider: Provider,
        rotation: bool,
    ) -> Result<AuthSession, AuthError> {
        self.vault()?;
        if rotation
            && records::get_credential(&self.store, user_id, provider)
                .await?
                .is_none()
        {
            return Err(AuthError::NoCredential {
                user_id: user_id.to_string(),
                provider,
            });
        }
        let now = now_ms();
        let session = records::insert_session(
            &self.store,
            AuthSession {
                id: uuid::Uuid::now_v7().to_string(),
                user_id: user_id.to_string(),
                provider,
                status: AuthSessionStatus::Created,
                created_at_ms: now,
                updated_at_ms: now,
                error: None,
                version: 1,
                vm_id: None,
                auth_url: None,
                device_code: None,
                verification_url: None,
                instructions: None,
                last_activity_ms: now,
                completed_at_ms: None,
                rotation,
            },
        )
        .await?;
        let (codes_tx, codes) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        self.lock_live().insert(
            session.id.clone(),
            LoginControl {
                codes: codes_tx,
                cancel: cancel.clone(),
            },
        );
        self.progress(&session);
        self.tracker
            .spawn(relay::run(self.clone(), session.clone(), codes, cancel));
        Ok(session)
    }

    pub async fn session(&self, id: &str) -> Result<AuthSession, AuthError> {
        records::get_session(&self.store, id).await
    }

    /// Writes the user's code to the login; answers once it has been written.
    pub async fn submit_code(&self, id: &str, code: &str) -> Result<AuthSession, AuthError> {
        let code = code.trim();
        if code.is_empty() || code.len() > MAX_CODE_BYTES {
            return Err(AuthError::BadCode(format!(
                "a code is 1 to {MAX_CODE_BYTES} bytes"
            )));
        }
        // A line break would end the code early and feed the rest to the CLI as more input.
        if code.chars().any(char::is_control) {
            return Err(AuthError::BadCode(
                "a code has no control characters".into(),
            ));
        }
        let session = self.session(id).await?;
        let sender = self.lock_live().get(id).map(|c| c.codes.clone());
        let Some(sender) = sender else {
            return Err(AuthError::NotAwaitingCode {
                id: id.to_string(),
                status: session.status,
            });
        };
        let (reply, answer) = oneshot::channel();
        let submission = CodeSubmission {
            code: Zeroizing::new(code.to_string()),
            reply,
        };
        if sender.send(submission).await.is_err() {
            return Err(AuthError::NotAwaitingCode {
                id: id.to_string(),
                status: self.session(id).await?.status,
            });
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(AuthError::NotAwaitingCode {
                id: id.to_string(),
                status: self.session(id).await?.status,
            }),
        }
    }

    /// Stops a login; the relay kills its process and removes its HOME.
    pub async fn cancel(&self, id: &str) -> Result<AuthSession, AuthError> {
        let session = self.session(id).await?;
        let control = self.lock_live().get(id).map(|c| c.cancel.clone());
        match control {
            Some(cancel) => {
                cancel.cancel();
                // The relay settles the record; wait for it briefly so the answer shows it.
                for _ in 0..100 {
                    let now = self.session(id).await?;
                    if now.status.is_terminal() {
                        return Ok(now);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                self.session(id).await
            }
            None => Ok(session),
        }
    }

    pub(super) fn forget(&self, id: &str) {
        self.lock_live().remove(id);
    }

    pub(super) fn progress(&self, session: &AuthSession) {
        self.events
            .publish(&channel(&session.user_id), relay::progress_event(session));
        if session.status.is_terminal() {
            self.metrics
                .auth_sessions
                .get_or_create(&AuthSessionLabels {
                    provider: session.provider.to_string(),
                    status: session.status.to_string(),
                })
                .inc();
        }
    }

    /// Seals a login's credential file and completes its session in one transaction, then
    /// writes the credential into the CLIs' HOME.
    pub(super) async fn complete(
        &self,
        session: &AuthSession,
        plaintext: &[u8],
    ) -> Result<(), AuthError> {
        let facts =
            files::inspect(session.provider, plaintext).map_err(AuthError::BadCredential)?;
        let sealed = self.vault()?.seal(plaintext)?;
        let now = now_ms();
        let credential = Credential {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: session.user_id.clone(),
            provider: session.provider,
            ciphertext: sealed.ciphertext,
            key_id: sealed.key_id,
            is_valid: true,
            reason: None,
            expires_at_ms: facts.expires_at_ms,
            last_verified_ms: Some(now),
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
        };
        let credential =
            records::put_credential(&self.store, credential, Some(session.id.clone())).await?;
        let completed = self.session(&session.id).await?;
        self.progress(&completed);
        self.events.publish(
            &channel(&session.user_id),
            json!({"event": "auth_completed", "sessionId": session.id,
                "provider": session.provider, "credentialId": credential.id,
                "rotation": session.rotation}),
        );
        if let Some(vm_id) = &completed.vm_id
            && let Ok(agent) = self.vms.agent(vm_id).await
            && let Err(e) = self.write_into(&agent, session.provider, plaintext).await
        {
            tracing::warn!(session = %session.id, error = %e, "cannot write a new credential into its VM");
        }
        Ok(())
    }

    async fn write_into(
        &self,
        agent: &AgentClient,
        provider: Provider,
        plaintext: &[u8],
    ) -> Result<(), AuthError> {
        let cli = &self.settings.cli;
        agent
            .write_file_owned(
                &files::path_in(provider, &cli.home),
                plaintext,
                0o600,
                cli.owner,
            )
            .await?;
        Ok(())
    }

    /// Writes the user's credential for `provider` into the guest before a prompt. `None`
    /// when the user has none (the CLI then runs as configured without it).
    pub async fn inject(
        &self,
        user_id: &str,
        provider: Provider,
        agent: &AgentClient,
    ) -> Result<Option<Injected>, AuthError> {
        let Some(credential) = records::get_credential(&self.store, user_id, provider).await?
        else {
            return Ok(None);
        };
        let plaintext = self
            .vault()?
            .unseal(&credential.key_id, &credential.ciphertext)?;
        self.write_into(agent, provider, &plaintext).await?;
        Ok(Some(Injected {
            provider,
            digest: digest(&plaintext),
        }))
    }

    /// Reads the credential file back after a prompt; a version the CLI refreshed is sealed
    /// and stored, so the vault never keeps a spent refresh token. True when it was.
    pub async fn capture(
        &self,
        user_id: &str,
        injected: &Injected,
        agent: &AgentClient,
    ) -> Result<bool, AuthError> {
        let path = files::path_in(injected.provider, &self.settings.cli.home);
        let now_there = Zeroizing::new(agent.read_file(&path, files::MAX_FILE_BYTES).await?);
        if digest(&now_there) == injected.digest {
            return Ok(false);
        }
        let facts =
            files::inspect(injected.provider, &now_there).map_err(AuthError::BadCredential)?;
        let Some(mut credential) =
            records::get_credential(&self.store, user_id, injected.provider).await?
        else {
            return Ok(false);
        };
        let sealed = self.vault()?.seal(&now_there)?;
        credential.ciphertext = sealed.ciphertext;
        credential.key_id = sealed.key_id;
        credential.expires_at_ms = facts.expires_at_ms;
        credential.is_valid = true;
        credential.reason = None;
        credential.updated_at_ms = now_ms();
        records::put_credential(&self.store, credential, None).await?;
        self.metrics
            .credential_refreshes
            .get_or_create(&ProviderLabels {
                provider: injected.provider.to_string(),
            })
            .inc();
        self.events.publish(
            &channel(user_id),
            json!({"event": "auth_credential_refreshed", "provider": injected.provider}),
        );
        Ok(true)
    }

    pub async fn credentials(&self, user_id: &str) -> Result<Vec<CredentialView>, AuthError> {
        Ok(records::credentials_of(&self.store, user_id)
            .await?
            .iter()
            .map(CredentialView::from)
            .collect())
    }

    /// Judges the stored credential by its own expiry fields; `live` also asks the CLI in the
    /// user's VM whether it accepts the credential.
    pub async fn validate(
        &self,
        user_id: &str,
        provider: Provider,
        live: bool,
    ) -> Result<Validation, AuthError> {
        let credential = records::get_credential(&self.store, user_id, provider)
            .await?
            .ok_or_else(|| AuthError::NoCredential {
                user_id: user_id.to_string(),
                provider,
            })?;
        let plaintext = self
            .vault()?
            .unseal(&credential.key_id, &credential.ciphertext)?;
        let verdict = files::judge(provider, &plaintext);
        let live = if live {
            Some(self.live_check(user_id, provider).await?)
        } else {
            None
        };
        let valid = verdict.valid && live.as_ref().is_none_or(|l| l.ok);
        let reason = match &live {
            Some(check) if !check.ok && verdict.valid => "rejected_by_cli".to_string(),
            _ => verdict.reason.to_string(),
        };
        let updated = records::mark_verified(
            &self.store,
            user_id,
            provider,
            valid,
            (!valid || reason != "ok").then(|| reason.clone()),
            verdict.expires_at_ms,
        )
        .await?;
        Ok(Validation {
            valid,
            reason,
            expires_at: verdict.expires_at_ms,
            last_verified: updated.and_then(|c| c.last_verified_ms),
            live,
        })
    }

    /// Runs the CLI's own status command with the credential in place.
    async fn live_check(&self, user_id: &str, provider: Provider) -> Result<LiveCheck, AuthError> {
        let argv: Vec<String> = match provider {
            Provider::ClaudeCode => vec!["claude".into(), "auth".into(), "status".into()],
            Provider::Codex => vec!["codex".into(), "login".into(), "status".into()],
            Provider::GeminiCli => {
                return Ok(LiveCheck {
                    ok: true,
                    detail: "Gemini CLI has no status command; judged by the file alone".into(),
                });
            }
        };
        let vm = self.vms.ensure_running(user_id, |_| {}).await?;
        let agent = self.vms.agent(&vm.id).await?;
        self.inject(user_id, provider, &agent).await?;
        let cli = &self.settings.cli;
        let mut env = cli.env();
        if provider == Provider::Codex {
            env.insert("CODEX_HOME".into(), format!("{}/.codex", cli.home));
        }
        let output = agent
            .exec(ExecRequest {
                argv,
                env,
                cwd: Some(cli.home.clone()),
                uid: cli.owner.map(|(uid, _)| uid),
                gid: cli.owner.map(|(_, gid)| gid),
                timeout_sec: Some(self.settings.live_check_timeout.as_secs().max(1)),
                ..ExecRequest::default()
            })
            .await?
            .collect_output()
            .await?;
        let ok = output.status.as_ref().is_some_and(|s| s.code == Some(0));
        let text = String::from_utf8_lossy(&output.stdout);
        let detail = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("WARNING"))
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        Ok(LiveCheck { ok, detail })
    }

    /// Sessions a restart cut off end as failed.
    pub async fn settle_interrupted(&self) -> Result<usize, AuthError> {
        records::settle_interrupted(&self.store).await
    }

    /// Cancels every running login (at shutdown).
    pub fn cancel_all(&self) {
        for control in self.lock_live().values() {
            control.cancel.cancel();
        }
    }
}
