//! Prompt records in the store.

use super::PromptError;
use crate::model::tables;
use crate::model::{Prompt, User, now_ms};
use crate::store::{self, Store};
use crate::sync::{put_mirrored, update_mirrored};

pub async fn insert(store: &Store, prompt: Prompt) -> Result<Prompt, PromptError> {
    store
        .write(move |tx| {
            if store::get::<User, _>(&tx.open_table(tables::USERS)?, &prompt.user_id)?.is_none() {
                return Err(PromptError::UserNotFound(prompt.user_id));
            }
            let old: Option<Prompt> = store::get(&tx.open_table(tables::PROMPTS)?, &prompt.id)?;
            put_mirrored(tx, tables::PROMPTS, &prompt.id, &prompt)?;
            super::counts::change(tx, old.as_ref(), Some(&prompt))?;
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
            let changed = update_mirrored(tx, tables::PROMPTS, &id, change)?
                .ok_or_else(|| PromptError::NotFound(id.clone()))?;
            super::counts::change(tx, Some(&changed.old), Some(&changed.new))?;
            Ok(changed.new)
        })
        .await
}

/// Counts a finished prompt on its user (the seed never did).
pub async fn count_for_user(store: &Store, user_id: &str) -> Result<(), PromptError> {
    let id = user_id.to_string();
    store
        .write(move |tx| {
            update_mirrored(tx, tables::USERS, &id, |user: &mut User| {
                user.prompt_count += 1;
                user.last_active_at_ms = Some(now_ms());
                user.updated_at_ms = now_ms();
                Ok::<_, PromptError>(())
            })?;
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
) -> Result<(Vec<Prompt>, u64), PromptError> {
    let id = user_id.to_string();
    store
        .read(move |tx| {
            let (ids, total) = super::by_user::newest(tx, &id, limit)?;
            let table = tx.open_table(tables::PROMPTS)?;
            let mut prompts = Vec::with_capacity(ids.len());
            for id in ids {
                // The index is written with the record, so each id has one; a record that no
                // longer decodes is an error, as it was when the whole table was read.
                if let Some(prompt) = store::get::<Prompt, _>(&table, &id)? {
                    prompts.push(prompt);
                }
            }
            Ok((prompts, total))
        })
        .await
}

/// At start: a prompt still pending or streaming was cut off by the last daemon's end.
pub async fn settle_interrupted(store: &Store) -> Result<usize, PromptError> {
    use crate::model::{PromptStatus, Status};
    store
        .write(|tx| {
            let stale: Vec<Prompt> = store::all(&tx.open_table(tables::PROMPTS)?)?
                .into_iter()
                .filter(|p: &Prompt| {
                    matches!(p.status, PromptStatus::Pending | PromptStatus::Streaming)
                })
                .collect();
            for prompt in &stale {
                let changed = update_mirrored(tx, tables::PROMPTS, &prompt.id, |prompt| {
                    prompt.status.transition(PromptStatus::Failed)?;
                    prompt.error = Some("interrupted by a daemon restart".into());
                    prompt.completed_at_ms = Some(now_ms());
                    Ok::<_, PromptError>(())
                })?;
                if let Some(changed) = changed {
                    super::counts::change(tx, Some(&changed.old), Some(&changed.new))?;
                }
            }
            Ok(stale.len())
        })
        .await
}
