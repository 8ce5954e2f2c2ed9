//! Prompt retention: finished prompts older than the retention period are removed from the
//! store, with what they hold of their output (the response text, the usage report) and, if
//! still in memory, their event log. The `prune_prompts` job runs it.
//!
//! The Supabase mirror keeps its rows: a prune enqueues no tombstone, because the daemon's
//! retention bounds the appliance's own disk, not the web backend's history. A change of a
//! pruned prompt that had not reached Supabase yet is dropped with it (with the default 30
//! days, that means the mirror was down for a month); otherwise the worker, finding no record,
//! would send a DELETE.

use redb::ReadableTable;

use super::PromptError;
use crate::model::tables;
use crate::model::{Prompt, PromptStatus};
use crate::store::Store;
use crate::sync::rows::Mirrored;

/// Prompts removed per write transaction, so a long backlog never holds the store's write lock
/// for long.
const BATCH: usize = 500;

/// When a prompt ended (a finished one), else `None`.
fn ended_at(prompt: &Prompt) -> Option<i64> {
    match prompt.status {
        PromptStatus::Pending | PromptStatus::Streaming => None,
        _ => Some(prompt.completed_at_ms.unwrap_or(prompt.created_at_ms)),
    }
}

/// Removes every finished prompt that ended before `cutoff_ms`; returns their ids.
pub async fn prune_before(store: &Store, cutoff_ms: i64) -> Result<Vec<String>, PromptError> {
    let mut pruned = Vec::new();
    loop {
        let batch = store
            .write(move |tx| {
                let mut table = tx.open_table(tables::PROMPTS)?;
                let mut expired = Vec::new();
                for entry in table.iter()? {
                    let (key, value) = entry?;
                    // A record that does not decode is left alone (and does not stop the job).
                    let Ok(prompt) = value.value().decode() else {
                        continue;
                    };
                    if ended_at(&prompt).is_some_and(|ended| ended < cutoff_ms) {
                        expired.push((key.value().to_string(), prompt));
                        if expired.len() == BATCH {
                            break;
                        }
                    }
                }
                for (key, prompt) in &expired {
                    table.remove(key.as_str())?;
                    super::counts::change(tx, Some(prompt), None)?;
                    let pending = crate::sync::outbox::outbox_key(Prompt::TABLE, key);
                    crate::sync::outbox::remove_entry(tx, &pending)?;
                }
                Ok::<_, PromptError>(expired.into_iter().map(|(key, _)| key).collect::<Vec<_>>())
            })
            .await?;
        let done = batch.len() < BATCH;
        pruned.extend(batch);
        if done {
            return Ok(pruned);
        }
    }
}
