//! OAuth login relay sessions, the credential vault, injection into guests, validation and
//! rotation.
//!
//! A login runs the provider's own headless login under a PTY inside the user's VM, so the
//! token exchange leaves from the VM's egress; the user only opens a URL and pastes a code
//! back. When the CLI has written its credential file, the host seals the file in the vault.
//! Before each prompt the file is written into the guest, and after it the file is read back so
//! that tokens the CLI refreshed are not lost.

mod credentials;
pub mod files;
mod records;
mod relay;
pub mod secrets;
mod service;
pub mod vault;

use std::time::Duration;

use crate::guest::client::GuestError;
use crate::model::{AuthSessionStatus, ModelError, Provider};
use crate::store::StoreError;
use crate::vms::{CliEnvironment, VmError};

pub use credentials::{CredentialView, Injected, LiveCheck, Validation};
pub use service::{AuthService, MAX_CODE_CHARS, SessionView, provider_schema};
pub use vault::{MasterKey, Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("user {0} not found")]
    UserNotFound(String),
    #[error("auth session {0} not found")]
    SessionNotFound(String),
    #[error("user {user_id} already has a {provider} login in progress: session {session_id}")]
    AlreadyActive {
        user_id: String,
        provider: Provider,
        session_id: String,
    },
    #[error("user {user_id} has no {provider} credential")]
    NoCredential { user_id: String, provider: Provider },
    #[error("auth session {id} is {status}; a code is accepted only while it awaits the user")]
    NotAwaitingCode {
        id: String,
        status: AuthSessionStatus,
    },
    #[error(
        "the {provider} login uses a device code: enter it on the verification page; nothing is pasted back"
    )]
    NoCodeExpected { provider: Provider },
    #[error("invalid code: {0}")]
    BadCode(String),
    #[error(
        "the credential vault is not configured: set ENCRYPTION_MASTER_KEY (64 hex digits) or the systemd credential encryption-master-key"
    )]
    VaultUnavailable,
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("the credential file is not usable: {0}")]
    BadCredential(String),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("the VM's agent failed: {0}")]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Transition(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::lift_redb_errors!(AuthError);

#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// How the CLIs run in the guest; logins get a HOME of their own under `/tmp`.
    pub cli: CliEnvironment,
    /// A session waiting on the user this long becomes `timeout`.
    pub session_timeout: Duration,
    /// How long a live validation may take in the VM.
    pub live_check_timeout: Duration,
}
