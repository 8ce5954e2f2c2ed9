//! The auth service: starts and steers logins (the credentials' side is in `credentials.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroize::Zeroizing;

use super::relay::{self, CodeSubmission, LoginControl, LoginHost};
use super::vault::Vault;
use super::{AuthError, AuthSettings, records};
use crate::events::{Channel, EventHub, HubEvent};
use crate::metrics::{AuthSessionLabels, Metrics};
use crate::model::tables;
use crate::model::{AuthSession, AuthSessionStatus, Credential, Provider, now_ms};
use crate::store::{self, Store};
use crate::vms::VmService;

/// The longest code accepted; real ones are well under 200 characters.
pub const MAX_CODE_CHARS: usize = 2048;

/// A session as the API shows it. Times are Unix milliseconds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub session_id: String,
    pub user_id: String,
    #[schema(schema_with = provider_schema)]
    pub provider: Provider,
    #[schema(schema_with = session_status_schema)]
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

/// A provider's API name, for the API document.
pub fn provider_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(crate::providers::all().map(|p| p.as_str())))
        .description(Some("The CLI"))
        .build()
}

fn session_status_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(AuthSessionStatus::ALL.iter().map(|s| s.as_str())))
        .build()
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

    pub(super) fn vault(&self) -> Result<&Vault, AuthError> {
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
                user_id: user_id.to_string(),
                codes: codes_tx,
                cancel: cancel.clone(),
                expired: Arc::new(AtomicBool::new(false)),
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
        if code.is_empty() || code.chars().count() > MAX_CODE_CHARS {
            return Err(AuthError::BadCode(format!(
                "a code is 1 to {MAX_CODE_CHARS} characters"
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
        self.events.publish(
            &Channel::user(&session.user_id),
            HubEvent::AuthProgress {
                session_id: session.id.clone(),
                provider: session.provider,
                status: session.status,
                error: session.error.clone(),
            },
        );
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

    /// Sessions a restart cut off end as failed.
    pub async fn settle_interrupted(&self) -> Result<usize, AuthError> {
        records::settle_interrupted(&self.store).await
    }

    /// Whether the user has a login whose relay is still running.
    pub fn has_live_login(&self, user_id: &str) -> bool {
        self.lock_live().values().any(|c| c.user_id == user_id)
    }

    pub(super) fn was_expired(&self, id: &str) -> bool {
        self.lock_live()
            .get(id)
            .is_some_and(|c| c.expired.load(Ordering::Acquire))
    }

    /// Ends every login started more than `age` ago and still open as `timeout`: a live one
    /// is cancelled (its relay kills the login and removes its HOME, then records the end); a
    /// record whose relay is gone is marked directly. Answers how many were ended.
    pub async fn expire_older_than(&self, age: Duration) -> Result<usize, AuthError> {
        let cutoff = now_ms().saturating_sub(age.as_millis() as i64);
        let old: Vec<AuthSession> = self
            .store
            .read(move |tx| {
                let all: Vec<AuthSession> = store::all(&tx.open_table(tables::AUTH_SESSIONS)?)?;
                Ok::<_, AuthError>(
                    all.into_iter()
                        .filter(|s| !s.status.is_terminal() && s.created_at_ms < cutoff)
                        .collect(),
                )
            })
            .await?;
        let mut ended = 0;
        for session in old {
            let control = self
                .lock_live()
                .get(&session.id)
                .map(|c| (c.cancel.clone(), c.expired.clone()));
            let result = match control {
                Some((cancel, expired)) => {
                    expired.store(true, Ordering::Release);
                    cancel.cancel();
                    // The relay reports the end itself.
                    self.wait_terminal(&session.id).await
                }
                None => records::update_session(&self.store, &session.id, |s| {
                    s.status = AuthSessionStatus::Timeout;
                    s.error = Some("ended by the daemon: the login was open too long".into());
                    Ok(())
                })
                .await
                .inspect(|s| self.progress(s)),
            };
            match result {
                Ok(s) if s.status == AuthSessionStatus::Timeout => ended += 1,
                // It ended some other way meanwhile.
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(session = %session.id, error = %e, "cannot expire a login")
                }
            }
        }
        Ok(ended)
    }

    /// The session once its relay has settled it (or as it stands after a few seconds).
    async fn wait_terminal(&self, id: &str) -> Result<AuthSession, AuthError> {
        for _ in 0..100 {
            let now = self.session(id).await?;
            if now.status.is_terminal() {
                return Ok(now);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.session(id).await
    }

    /// Every stored credential, as (user id, provider).
    pub async fn stored_credentials(&self) -> Result<Vec<(String, Provider)>, AuthError> {
        self.store
            .read(|tx| {
                let all: Vec<Credential> = store::all(&tx.open_table(tables::CREDENTIALS)?)?;
                Ok::<_, AuthError>(all.into_iter().map(|c| (c.user_id, c.provider)).collect())
            })
            .await
    }

    /// Cancels every running login (at shutdown).
    pub fn cancel_all(&self) {
        for control in self.lock_live().values() {
            control.cancel.cancel();
        }
    }
}

impl LoginHost for AuthService {
    fn store(&self) -> &Store {
        &self.store
    }

    fn vms(&self) -> &VmService {
        &self.vms
    }

    fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    fn was_expired(&self, id: &str) -> bool {
        AuthService::was_expired(self, id)
    }

    fn forget(&self, id: &str) {
        AuthService::forget(self, id)
    }

    fn progress(&self, session: &AuthSession) {
        AuthService::progress(self, session)
    }

    async fn complete(&self, session: &AuthSession, plaintext: &[u8]) -> Result<(), AuthError> {
        AuthService::complete(self, session, plaintext).await
    }
}
