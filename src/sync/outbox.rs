//! The outbox in the store. Writers call [`record_change`] inside the transaction that changes
//! a mirrored entity, so the change and its outbox row commit together or not at all. The
//! worker reads due entries, loads the entities' current records, and settles each entry.

use redb::{ReadableTable, WriteTransaction};
use serde_json::Value;

use super::SyncError;
use super::rows::{Mirrored, RowOptions};
use crate::model::tables;
use crate::model::{
    AuthSession, Conversation, Credential, DeadLetter, OutboxEntry, Prompt, User, Vm, now_ms,
};
use crate::store::{self, Record, Store, StoreError};
pub(crate) fn outbox_key(table: &str, record_key: &str) -> String {
    format!("{table}/{record_key}")
}

/// Marks `record` (stored under `record_key` in its own table) as changed. A pending entry for
/// the same entity is superseded: the worker sends whatever version is current when it sends.
pub fn record_change<R: Mirrored>(
    tx: &WriteTransaction,
    record_key: &str,
    record: &R,
) -> Result<(), StoreError> {
    enqueue(
        tx,
        R::TABLE,
        record_key,
        record.entity_id(),
        record.entity_version(),
    )
}

/// Marks an entity of `R`'s table as deleted: call it in the transaction that removes the
/// record. The worker then finds no record and sends a `DELETE`.
pub fn record_delete<R: Mirrored>(
    tx: &WriteTransaction,
    record_key: &str,
    entity_id: &str,
) -> Result<(), StoreError> {
    // A tombstone settles every version before it.
    enqueue(tx, R::TABLE, record_key, entity_id, u64::MAX)
}

fn enqueue(
    tx: &WriteTransaction,
    table: &str,
    record_key: &str,
    entity_id: &str,
    entity_version: u64,
) -> Result<(), StoreError> {
    let mut outbox = tx.open_table(tables::OUTBOX)?;
    let key = outbox_key(table, record_key);
    // A superseded entry keeps its place in line (and its backoff), so a busy entity neither
    // starves nor hides how long it has been waiting.
    let pending: Option<OutboxEntry> = store::get(&outbox, &key)?;
    if pending.is_none() {
        index_add(tx, now_ms_or(&pending), &key)?;
    }
    let entry = OutboxEntry {
        table: table.to_string(),
        record_key: record_key.to_string(),
        entity_id: entity_id.to_string(),
        entity_version,
        enqueued_at_ms: now_ms_or(&pending),
        attempts: 0,
        next_attempt_ms: pending.as_ref().map_or(0, |p| p.next_attempt_ms),
        last_error: None,
    };
    store::put(&mut outbox, &key, &entry)
}

/// When the pending entry was enqueued, or now for a new one.
fn now_ms_or(pending: &Option<OutboxEntry>) -> i64 {
    pending.as_ref().map_or_else(now_ms, |p| p.enqueued_at_ms)
}

fn index_add(tx: &WriteTransaction, enqueued_at_ms: i64, key: &str) -> Result<(), StoreError> {
    tx.open_table(tables::OUTBOX_BY_AGE)?
        .insert((enqueued_at_ms, key), ())?;
    Ok(())
}

/// Removes an outbox entry and its age index row.
pub(crate) fn remove_entry(tx: &WriteTransaction, key: &str) -> Result<(), StoreError> {
    let mut outbox = tx.open_table(tables::OUTBOX)?;
    if let Some(entry) = store::get::<OutboxEntry, _>(&outbox, key)? {
        outbox.remove(key)?;
        tx.open_table(tables::OUTBOX_BY_AGE)?
            .remove((entry.enqueued_at_ms, key))?;
    }
    Ok(())
}

/// When the oldest pending change was enqueued: the first row of the age index.
pub fn oldest_enqueued_ms(tx: &redb::ReadTransaction) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .open_table(tables::OUTBOX_BY_AGE)?
        .first()?
        .map(|(key, _)| key.value().0))
}

/// Set in `META` once the age index holds every outbox entry.
const AGE_INDEXED: &str = "outbox_age_index_complete";

/// Builds the age index once, for a store written before it existed.
pub async fn ensure_age_index(store: &Store) -> Result<bool, StoreError> {
    store
        .write(|tx| {
            let mut meta = tx.open_table(crate::store::META)?;
            if meta.get(AGE_INDEXED)?.is_some() {
                return Ok(false);
            }
            let mut index = tx.open_table(tables::OUTBOX_BY_AGE)?;
            index.retain(|_, ()| false)?;
            for item in tx.open_table(tables::OUTBOX)?.iter()? {
                let (key, value) = item?;
                let entry: OutboxEntry = value.value().decode()?;
                index.insert((entry.enqueued_at_ms, key.value()), ())?;
            }
            meta.insert(AGE_INDEXED, 1)?;
            Ok(true)
        })
        .await
}

/// What the worker sends for an entry: the entity's current row, or a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Upsert { version: u64, row: Value },
    Delete,
}

/// A due entry and what to send for it.
#[derive(Debug, Clone)]
pub struct Due {
    pub key: String,
    pub entry: OutboxEntry,
    pub outgoing: Outgoing,
}

fn current<R: Mirrored + Record>(
    tx: &redb::ReadTransaction,
    table: redb::TableDefinition<&'static str, store::Stored<R>>,
    record_key: &str,
    options: &RowOptions,
) -> Result<Outgoing, StoreError> {
    Ok(
        match store::get::<R, _>(&tx.open_table(table)?, record_key)? {
            Some(record) => Outgoing::Upsert {
                version: record.entity_version(),
                row: record.row(options),
            },
            None => Outgoing::Delete,
        },
    )
}

/// Up to `limit` entries due at `now`, oldest change first, each with what to send.
pub async fn due(
    store: &Store,
    now: i64,
    limit: usize,
    options: RowOptions,
) -> Result<Vec<Due>, SyncError> {
    store
        .read(move |tx| {
            let outbox = tx.open_table(tables::OUTBOX)?;
            let mut entries: Vec<(String, OutboxEntry)> = Vec::new();
            for item in outbox.iter()? {
                let (key, value) = item?;
                let entry: OutboxEntry = value.value().decode()?;
                if entry.next_attempt_ms <= now {
                    entries.push((key.value().to_string(), entry));
                }
            }
            entries.sort_by_key(|(_, e)| e.enqueued_at_ms);
            entries.truncate(limit);
            let mut due = Vec::with_capacity(entries.len());
            for (key, entry) in entries {
                let outgoing = match entry.table.as_str() {
                    User::TABLE => current(tx, tables::USERS, &entry.record_key, &options)?,
                    Vm::TABLE => current(tx, tables::VMS, &entry.record_key, &options)?,
                    AuthSession::TABLE => {
                        current(tx, tables::AUTH_SESSIONS, &entry.record_key, &options)?
                    }
                    Prompt::TABLE => current(tx, tables::PROMPTS, &entry.record_key, &options)?,
                    Conversation::TABLE => {
                        current(tx, tables::CONVERSATIONS, &entry.record_key, &options)?
                    }
                    Credential::TABLE => {
                        current(tx, tables::CREDENTIALS, &entry.record_key, &options)?
                    }
                    other => {
                        return Err(SyncError::UnknownTable(other.to_string()));
                    }
                };
                due.push(Due {
                    key,
                    entry,
                    outgoing,
                });
            }
            Ok(due)
        })
        .await
}

/// Removes delivered entries, unless a newer change superseded one while it was in flight.
pub async fn delivered(store: &Store, sent: Vec<(String, u64)>) -> Result<(), SyncError> {
    store
        .write(move |tx| {
            for (key, version) in sent {
                let pending: Option<OutboxEntry> =
                    store::get(&tx.open_table(tables::OUTBOX)?, &key)?;
                if pending.is_some_and(|p| p.entity_version <= version) {
                    remove_entry(tx, &key)?;
                }
            }
            Ok(())
        })
        .await
}

/// Puts entries off until `next_attempt_ms`, counting the attempt and keeping the error.
pub async fn postpone(
    store: &Store,
    keys: Vec<String>,
    next_attempt_ms: i64,
    error: String,
    count_attempt: bool,
) -> Result<(), SyncError> {
    store
        .write(move |tx| {
            let mut outbox = tx.open_table(tables::OUTBOX)?;
            for key in keys {
                if let Some(mut entry) = store::get::<OutboxEntry, _>(&outbox, &key)? {
                    if count_attempt {
                        entry.attempts = entry.attempts.saturating_add(1);
                    }
                    entry.next_attempt_ms = next_attempt_ms;
                    entry.last_error = Some(error.clone());
                    store::put(&mut outbox, &key, &entry)?;
                }
            }
            Ok(())
        })
        .await
}

/// Moves an entry to the dead letters (in one transaction).
pub async fn bury(
    store: &Store,
    key: String,
    status: Option<u16>,
    error: String,
) -> Result<(), SyncError> {
    store
        .write(move |tx| {
            let Some(entry) = store::get::<OutboxEntry, _>(&tx.open_table(tables::OUTBOX)?, &key)?
            else {
                return Ok(());
            };
            remove_entry(tx, &key)?;
            let letter = DeadLetter {
                entry,
                status,
                error,
                dead_at_ms: now_ms(),
            };
            store::put(&mut tx.open_table(tables::DEAD_LETTERS)?, &key, &letter)?;
            Ok(())
        })
        .await
}

/// The dead letters, newest first.
pub async fn dead_letters(
    store: &Store,
    limit: usize,
) -> Result<Vec<(String, DeadLetter)>, SyncError> {
    store
        .read(move |tx| {
            let table = tx.open_table(tables::DEAD_LETTERS)?;
            let mut letters = Vec::new();
            for item in table.iter()? {
                let (key, value) = item?;
                letters.push((key.value().to_string(), value.value().decode()?));
            }
            letters.sort_by_key(|(_, letter): &(String, DeadLetter)| {
                std::cmp::Reverse(letter.dead_at_ms)
            });
            letters.truncate(limit);
            Ok(letters)
        })
        .await
}

/// Puts a dead letter back in the outbox, due now (unless a newer change is already pending).
pub async fn retry(store: &Store, key: &str) -> Result<(), SyncError> {
    let key = key.to_string();
    store
        .write(move |tx| {
            let mut letters = tx.open_table(tables::DEAD_LETTERS)?;
            let letter: DeadLetter =
                store::get(&letters, &key)?.ok_or_else(|| SyncError::NoDeadLetter(key.clone()))?;
            letters.remove(key.as_str())?;
            let mut outbox = tx.open_table(tables::OUTBOX)?;
            if store::get::<OutboxEntry, _>(&outbox, &key)?.is_none() {
                let entry = OutboxEntry {
                    attempts: 0,
                    next_attempt_ms: 0,
                    last_error: None,
                    ..letter.entry
                };
                store::put(&mut outbox, &key, &entry)?;
                index_add(tx, entry.enqueued_at_ms, &key)?;
            }
            Ok(())
        })
        .await
}
