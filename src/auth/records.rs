//! Auth sessions and credentials in the store. The active-session index lives in the same
//! transactions as the sessions, so "one login per user and provider" holds across a crash.

use redb::ReadableTable;

use super::AuthError;
use crate::model::{
    AuthSession, AuthSessionStatus, Credential, Provider, Status, User, credential_key, now_ms,
};
use crate::providers;
use crate::store::{self, Store, tables};

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
            store::put(
                &mut tx.open_table(tables::AUTH_SESSIONS)?,
                &session.id,
                &session,
            )?;
            crate::sync::outbox::record_change(tx, &session.id, &session)?;
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
            let mut table = tx.open_table(tables::AUTH_SESSIONS)?;
            let mut session: AuthSession =
                store::get(&table, &id)?.ok_or_else(|| AuthError::SessionNotFound(id.clone()))?;
            let before = session.status;
            change(&mut session)?;
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
            session.version += 1;
            store::put(&mut table, &id, &session)?;
            crate::sync::outbox::record_change(tx, &id, &session)?;
            if after.is_terminal() {
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
            let mut table = tx.open_table(tables::AUTH_SESSIONS)?;
            let open: Vec<AuthSession> = store::all(&table)?
                .into_iter()
                .filter(|s: &AuthSession| !s.status.is_terminal())
                .collect();
            for mut session in open.iter().cloned() {
                session.status.transition(AuthSessionStatus::Failed)?;
                session.error = Some("interrupted by a restart of the daemon".into());
                session.updated_at_ms = now_ms();
                session.completed_at_ms = Some(session.updated_at_ms);
                session.version += 1;
                store::put(&mut table, &session.id, &session)?;
                crate::sync::outbox::record_change(tx, &session.id, &session)?;
                release_active(tx, &session)?;
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
            let mut table = tx.open_table(tables::CREDENTIALS)?;
            if let Some(old) = store::get::<Credential, _>(&table, &key)? {
                credential.id = old.id;
                credential.created_at_ms = old.created_at_ms;
                credential.version = old.version + 1;
            }
            store::put(&mut table, &key, &credential)?;
            crate::sync::outbox::record_change(tx, &key, &credential)?;
            drop(table);
            if let Some(session_id) = completes {
                let mut sessions = tx.open_table(tables::AUTH_SESSIONS)?;
                let mut session: AuthSession = store::get(&sessions, &session_id)?
                    .ok_or_else(|| AuthError::SessionNotFound(session_id.clone()))?;
                session.status.transition(AuthSessionStatus::Completed)?;
                session.updated_at_ms = now_ms();
                session.last_activity_ms = session.updated_at_ms;
                session.completed_at_ms = Some(session.updated_at_ms);
                session.error = None;
                session.version += 1;
                store::put(&mut sessions, &session_id, &session)?;
                crate::sync::outbox::record_change(tx, &session_id, &session)?;
                release_active(tx, &session)?;
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
            let mut table = tx.open_table(tables::CREDENTIALS)?;
            let Some(mut credential) = store::get::<Credential, _>(&table, &key)? else {
                return Ok(None);
            };
            credential.is_valid = valid;
            credential.reason = reason;
            credential.expires_at_ms = expires_at_ms;
            credential.last_verified_ms = Some(now_ms());
            credential.updated_at_ms = now_ms();
            credential.version += 1;
            store::put(&mut table, &key, &credential)?;
            crate::sync::outbox::record_change(tx, &key, &credential)?;
            Ok(Some(credential))
        })
        .await
}
