//! Auth sessions and credentials in the store. The active-session index lives in the same
//! transactions as the sessions, so "one login per user and provider" holds across a crash.

use redb::ReadableTable;

use super::AuthError;
use crate::model::tables;
use crate::model::{
    AuthSession, AuthSessionStatus, Credential, Provider, Status, User, credential_key, now_ms,
};
use crate::providers;
use crate::store::{self, Store};
use crate::sync::{put_mirrored, update_mirrored};

/// Records a new session, refused while the user has another for the same provider.
pub async fn insert_session(store: &Store, session: AuthSession) -> Result<AuthSession, AuthError> {
    store
        .write(move |tx| {
            if store::get::<User, _>(&tx.open_table(tables::USERS)?, &session.user_id)?.is_none() {
                return Err(AuthError::UserNotFound(session.user_id));
            }
            let key = credential_key(&session.user_id, session.provider);
            let mut active = tx.open_table(tables::ACTIVE_AUTH_SESSIONS)?;
            if let Some(existing) = active.get(key.as_str())? {
                return Err(AuthError::AlreadyActive {
                    user_id: session.user_id,
                    provider: session.provider,
                    session_id: existing.value().to_string(),
                });
            }
            active.insert(key.as_str(), session.id.as_str())?;
            put_mirrored(tx, tables::AUTH_SESSIONS, &session.id, &session)?;
            Ok(session)
        })
        .await
}

/// Applies `change`, checks the status transition, bumps the version, and drops the session
/// from the active index once it has ended.
pub async fn update_session(
    store: &Store,
    id: &str,
    change: impl FnOnce(&mut AuthSession) -> Result<(), AuthError> + Send + 'static,
) -> Result<AuthSession, AuthError> {
    let id = id.to_string();
    store
        .write(move |tx| {
            let changed = update_mirrored(tx, tables::AUTH_SESSIONS, &id, |session| {
                let before = session.status;
                change(session)?;
                let after = session.status;
                session.status = before;
                session.status.transition(after)?;
                session.updated_at_ms = now_ms();
                if before != after {
                    session.last_activity_ms = session.updated_at_ms;
                }
                if after.is_terminal() && session.completed_at_ms.is_none() {
                    session.completed_at_ms = Some(session.updated_at_ms);
                }
                Ok::<_, AuthError>(())
            })?
            .ok_or_else(|| AuthError::SessionNotFound(id.clone()))?;
            let session = changed.new;
            if session.status.is_terminal() {
                release_active(tx, &session)?;
            }
            Ok(session)
        })
        .await
}

fn release_active(tx: &redb::WriteTransaction, session: &AuthSession) -> Result<(), AuthError> {
    let key = credential_key(&session.user_id, session.provider);
    let mut active = tx.open_table(tables::ACTIVE_AUTH_SESSIONS)?;
    let ours = active
        .get(key.as_str())?
        .is_some_and(|v| v.value() == session.id);
    if ours {
        active.remove(key.as_str())?;
    }
    Ok(())
}

pub async fn get_session(store: &Store, id: &str) -> Result<AuthSession, AuthError> {
    let id = id.to_string();
    store
        .read(move |tx| {
            store::get(&tx.open_table(tables::AUTH_SESSIONS)?, &id)?
                .ok_or(AuthError::SessionNotFound(id))
        })
        .await
}

/// Sessions a restart cut off end as failed: their login process was in a VM connection that
/// no longer exists.
pub async fn settle_interrupted(store: &Store) -> Result<usize, AuthError> {
    store
        .write(|tx| {
            let open: Vec<AuthSession> = store::all(&tx.open_table(tables::AUTH_SESSIONS)?)?
                .into_iter()
                .filter(|s: &AuthSession| !s.status.is_terminal())
                .collect();
            for session in &open {
                let changed = update_mirrored(tx, tables::AUTH_SESSIONS, &session.id, |session| {
                    session.status.transition(AuthSessionStatus::Failed)?;
                    session.error = Some("interrupted by a restart of the daemon".into());
                    session.updated_at_ms = now_ms();
                    session.completed_at_ms = Some(session.updated_at_ms);
                    Ok::<_, AuthError>(())
                })?;
                if let Some(changed) = changed {
                    release_active(tx, &changed.new)?;
                }
            }
            Ok(open.len())
        })
        .await
}

pub async fn get_credential(
    store: &Store,
    user_id: &str,
    provider: Provider,
) -> Result<Option<Credential>, AuthError> {
    let key = credential_key(user_id, provider);
    store
        .read(move |tx| Ok(store::get(&tx.open_table(tables::CREDENTIALS)?, &key)?))
        .await
}

pub async fn credentials_of(store: &Store, user_id: &str) -> Result<Vec<Credential>, AuthError> {
    let user_id = user_id.to_string();
    store
        .read(move |tx| {
            if store::get::<User, _>(&tx.open_table(tables::USERS)?, &user_id)?.is_none() {
                return Err(AuthError::UserNotFound(user_id));
            }
            let table = tx.open_table(tables::CREDENTIALS)?;
            let mut found = Vec::new();
            for provider in providers::all() {
                if let Some(c) = store::get(&table, &credential_key(&user_id, provider))? {
                    found.push(c);
                }
            }
            Ok(found)
        })
        .await
}

/// Stores `credential` (a new one, or a new version of the user's existing one, keeping its
/// id), and with it the session's completion when one is given: one transaction, so a
/// completed session always has its credential.
pub async fn put_credential(
    store: &Store,
    mut credential: Credential,
    completes: Option<String>,
) -> Result<Credential, AuthError> {
    store
        .write(move |tx| {
            let key = credential_key(&credential.user_id, credential.provider);
            let old = store::get::<Credential, _>(&tx.open_table(tables::CREDENTIALS)?, &key)?;
            if let Some(old) = old {
                // A new version of the same credential: its id and age are kept.
                credential.id = old.id;
                credential.created_at_ms = old.created_at_ms;
                credential.version = old.version + 1;
            }
            put_mirrored(tx, tables::CREDENTIALS, &key, &credential)?;
            if let Some(session_id) = completes {
                let changed = update_mirrored(tx, tables::AUTH_SESSIONS, &session_id, |session| {
                    session.status.transition(AuthSessionStatus::Completed)?;
                    session.updated_at_ms = now_ms();
                    session.last_activity_ms = session.updated_at_ms;
                    session.completed_at_ms = Some(session.updated_at_ms);
                    session.error = None;
                    Ok::<_, AuthError>(())
                })?
                .ok_or_else(|| AuthError::SessionNotFound(session_id.clone()))?;
                release_active(tx, &changed.new)?;
            }
            Ok(credential)
        })
        .await
}

/// Records a validation's result on the credential.
pub async fn mark_verified(
    store: &Store,
    user_id: &str,
    provider: Provider,
    valid: bool,
    reason: Option<String>,
    expires_at_ms: Option<i64>,
) -> Result<Option<Credential>, AuthError> {
    let key = credential_key(user_id, provider);
    store
        .write(move |tx| {
            let changed = update_mirrored(tx, tables::CREDENTIALS, &key, |credential| {
                credential.is_valid = valid;
                credential.reason = reason;
                credential.expires_at_ms = expires_at_ms;
                credential.last_verified_ms = Some(now_ms());
                credential.updated_at_ms = now_ms();
                Ok::<_, AuthError>(())
            })?;
            Ok(changed.map(|changed| changed.new))
        })
        .await
}
