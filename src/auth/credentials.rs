//! The credentials' side of the auth service: sealing a login's file, writing it into guests
//! before prompts and capturing what the CLIs refreshed afterwards, listing and validating.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::service::AuthService;
use super::{AuthError, files, records, secrets};
use crate::events::{Channel, HubEvent};
use crate::guest::client::{AgentClient, DEFAULT_MAX_OUTPUT, ExecOutput, OutputBounds};
use crate::guest::messages::ExecRequest;
use crate::metrics::ProviderLabels;
use crate::model::{AuthSession, Credential, Provider, now_ms};
use crate::providers::StatusCommand;

/// A credential as the API shows it: metadata only, never a secret. Times are Unix
/// milliseconds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    pub credential_id: String,
    #[schema(schema_with = super::service::provider_schema)]
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

/// A stored credential judged. Times are Unix milliseconds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    pub valid: bool,
    pub reason: String,
    pub expires_at: Option<i64>,
    pub last_verified: Option<i64>,
    /// The check run in the VM with `?live=true`.
    pub live: Option<LiveCheck>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl AuthService {
    /// Seals a login's credential file and completes its session in one transaction. The
    /// credential is not left in the guest: each prompt stages it on a tmpfs for its run.
    pub(super) async fn complete(
        &self,
        session: &AuthSession,
        plaintext: &[u8],
    ) -> Result<(), AuthError> {
        let facts = session
            .provider
            .cli()
            .inspect_credential(plaintext)
            .map_err(AuthError::BadCredential)?;
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
            &Channel::user(&session.user_id),
            HubEvent::AuthCompleted {
                session_id: session.id.clone(),
                provider: session.provider,
                credential_id: credential.id.clone(),
                rotation: session.rotation,
            },
        );
        Ok(())
    }

    /// Stages the user's credential for `provider` in the guest before a prompt (on a tmpfs,
    /// linked from the CLI's path; see `secrets`). `None` when the user has none (the CLI
    /// then runs as configured without it). The caller must `release` it afterwards.
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
        secrets::stage(agent, &self.settings.cli, provider, &plaintext).await?;
        Ok(Some(Injected {
            provider,
            digest: digest(&plaintext),
        }))
    }

    /// Reads the credential file back after a prompt; a version the CLI refreshed is sealed
    /// and stored, so the vault never keeps a spent refresh token. True when it was.
    async fn capture(
        &self,
        user_id: &str,
        injected: &Injected,
        agent: &AgentClient,
    ) -> Result<bool, AuthError> {
        let path = injected.provider.credential_path(&self.settings.cli.home);
        let now_there = Zeroizing::new(agent.read_file(&path, files::MAX_FILE_BYTES).await?);
        if digest(&now_there) == injected.digest {
            return Ok(false);
        }
        let facts = injected
            .provider
            .cli()
            .inspect_credential(&now_there)
            .map_err(AuthError::BadCredential)?;
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
            &Channel::user(user_id),
            HubEvent::AuthCredentialRefreshed {
                provider: injected.provider,
            },
        );
        Ok(true)
    }

    /// Captures a refresh the CLI made, then removes the credential from the guest, even when
    /// the capture failed (the vault keeps the version it had). True when it was refreshed.
    pub async fn release(
        &self,
        user_id: &str,
        injected: &Injected,
        agent: &AgentClient,
    ) -> Result<bool, AuthError> {
        let captured = self.capture(user_id, injected, agent).await;
        let cleared = secrets::clear(agent, &self.settings.cli, injected.provider).await;
        let refreshed = captured?;
        cleared?;
        Ok(refreshed)
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
        let (argv, command_env) = match provider.cli().status_command(&self.settings.cli.home) {
            StatusCommand::Run { argv, env } => (argv, env),
            StatusCommand::Unavailable(detail) => {
                return Ok(LiveCheck {
                    ok: true,
                    detail: detail.into(),
                });
            }
        };
        let vm = self.vms.ensure_running(user_id, |_| {}).await?;
        let agent = self.vms.agent(&vm.id).await?;
        let injected = self.inject(user_id, provider, &agent).await?;
        let output = self.run_status(argv, command_env, &agent).await;
        if let Some(injected) = &injected
            && let Err(e) = self.release(user_id, injected, &agent).await
        {
            tracing::warn!(error = %e, "cannot remove a credential after its live check");
        }
        let output = output?;
        let ok = output.status.as_ref().is_some_and(|s| s.code == Some(0));
        if output.truncated || output.timed_out {
            return Ok(LiveCheck {
                ok: false,
                detail: if output.truncated {
                    format!(
                        "the CLI's output passed {} bytes; it was stopped",
                        DEFAULT_MAX_OUTPUT
                    )
                } else {
                    "the CLI did not finish in time; it was stopped".to_string()
                },
            });
        }
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

    async fn run_status(
        &self,
        argv: Vec<String>,
        command_env: BTreeMap<String, String>,
        agent: &AgentClient,
    ) -> Result<ExecOutput, AuthError> {
        let cli = &self.settings.cli;
        let mut env = cli.env();
        env.extend(command_env);
        let timeout = self.settings.live_check_timeout.max(Duration::from_secs(1));
        Ok(agent
            .exec(ExecRequest {
                argv,
                env,
                cwd: Some(cli.home.clone()),
                uid: cli.owner.map(|(uid, _)| uid),
                gid: cli.owner.map(|(_, gid)| gid),
                timeout_sec: Some(timeout.as_secs()),
                ..ExecRequest::default()
            })
            .await?
            .collect_output(OutputBounds::new(timeout))
            .await?)
    }
}
