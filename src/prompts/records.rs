//! Prompt records in the store.

use super::PromptError;
use crate::model::{Prompt, User, now_ms};
use crate::store::{self, Store, tables};

pub async fn insert(store: &Store, prompt: Prompt) -> Result<Prompt, PromptError> {
    store
        .write(move |tx| {
            if store::get::<User, _>(&tx.open_table(tables::USERS)?, &prompt.user_id)?.is_none() {
                return Err(PromptError::UserNotFound(prompt.user_id));
            }
            let mut table = tx.open_table(tables::PROMPTS)?;
            let old: Option<Prompt> = store::get(&table, &prompt.id)?;
            store::put(&mut table, &prompt.id, &prompt)?;
            super::counts::change(tx, old.as_ref(), Some(&prompt))?;
            crate::sync::outbox::record_change(tx, &prompt.id, &prompt)?;
            Ok(prompt)
        })
        .await
}

/// Applies `change` to the record and bumps its version.
pub async fn update(
    store: &Store,
    id: &str,
    change: impl FnOnce(&mut Prompt) -> Result<(), PromptError> + Send + 'static,
) -> Result<Prompt, PromptError> {
    let id = id.to_string();
    store
        .write(move |tx| {
            let mut table = tx.open_table(tables::PROMPTS)?;
            let old: Prompt =
                store::get(&table, &id)?.ok_or_else(|| PromptError::NotFound(id.clone()))?;
            let mut prompt = old.clone();
            change(&mut prompt)?;
            prompt.version += 1;
            store::put(&mut table, &id, &prompt)?;
            super::counts::change(tx, Some(&old), Some(&prompt))?;
            crate::sync::outbox::record_change(tx, &id, &prompt)?;
            Ok(prompt)
        })
        .await
}

/// Counts a finished prompt on its user (the seed never did).
pub async fn count_for_user(store: &Store, user_id: &str) -> Result<(), PromptError> {
    let id = user_id.to_string();
    store
        .write(move |tx| {
            let mut users = tx.open_table(tables::USERS)?;
            if let Some(mut user) = store::get::<User, _>(&users, &id)? {
                user.prompt_count += 1;
                user.last_active_at_ms = Some(now_ms());
                user.updated_at_ms = now_ms();
                user.version += 1;
                store::put(&mut users, &id, &user)?;
                crate::sync::outbox::record_change(tx, &id, &user)?;
            }
            Ok(())
        })
        .await
}

pub async fn get(store: &Store, id: &str) -> Result<Prompt, PromptError> {
    let id = id.to_string();
    store
        .read(move |tx| {
            store::get(&tx.open_table(tables::PROMPTS)?, &id)?.ok_or(PromptError::NotFound(id))
        })
        .await
}

/// The user's prompts, newest first.
pub async fn for_user(
    store: &Store,
    user_id: &str,
    limit: usize,
) -> Result<Vec<Prompt>, PromptError> {
    let id = user_id.to_string();
    store
        .read(move |tx| {
            let mut prompts: Vec<Prompt> = store::all(&tx.open_table(tables::PROMPTS)?)?
                .into_iter()
                .filter(|p: &Prompt| p.user_id == id)
                .collect();
            prompts.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id)));
            prompts.truncate(limit);
            Ok(prompts)
        })
        .await
}

/// At start: a prompt still pending or streaming was cut off by the last daemon's end.
pub async fn settle_interrupted(store: &Store) -> Result<usize, PromptError> {
    use crate::model::{PromptStatus, Status};
    store
        .write(|tx| {
            let mut table = tx.open_table(tables::PROMPTS)?;
            let stale: Vec<Prompt> = store::all(&table)?
                .into_iter()
                .filter(|p: &Prompt| {
                    matches!(p.status, PromptStatus::Pending | PromptStatus::Streaming)
                })
                .collect();
            for old in &stale {
                let mut prompt = old.clone();
                prompt.status.transition(PromptStatus::Failed)?;
                prompt.error = Some("interrupted by a daemon restart".into());
                prompt.completed_at_ms = Some(now_ms());
                prompt.version += 1;
                store::put(&mut table, &prompt.id, &prompt)?;
                super::counts::change(tx, Some(old), Some(&prompt))?;
                crate::sync::outbox::record_change(tx, &prompt.id, &prompt)?;
            }
            Ok(stale.len())
        })
        .await
}
