//! Every redb table of the daemon's records, in one place, beside the records they hold. The
//! value type of each table names its record (`Stored<R>`), so a table cannot be opened with the
//! wrong record type. The store's own `META` table is in `store`.

use std::path::Path;

use redb::{TableDefinition, WriteTransaction};

use super::{
    AuthSession, Conversation, Credential, DeadLetter, IpLease, MetricsSample, OutboxEntry,
    PortLease, Prompt, TaskRun, User, VaultKey, Vm, VmIntent,
};
use crate::store::{Store, StoreError, Stored};

pub const USERS: TableDefinition<&str, Stored<User>> = TableDefinition::new("users");
/// Lower-cased email to user id; keeps emails unique.
pub const USERS_BY_EMAIL: TableDefinition<&str, &str> = TableDefinition::new("users_by_email");
pub const VMS: TableDefinition<&str, Stored<Vm>> = TableDefinition::new("vms");
/// In-flight VM operations, keyed by VM id (one at a time per VM).
pub const VM_INTENTS: TableDefinition<&str, Stored<VmIntent>> = TableDefinition::new("vm_intents");
/// Keyed by the leased IPv4 address in dotted form.
pub const IP_LEASES: TableDefinition<&str, Stored<IpLease>> = TableDefinition::new("ip_leases");
pub const PORT_LEASES: TableDefinition<u16, Stored<PortLease>> =
    TableDefinition::new("port_leases");
pub const AUTH_SESSIONS: TableDefinition<&str, Stored<AuthSession>> =
    TableDefinition::new("auth_sessions");
pub const PROMPTS: TableDefinition<&str, Stored<Prompt>> = TableDefinition::new("prompts");
pub const CONVERSATIONS: TableDefinition<&str, Stored<Conversation>> =
    TableDefinition::new("conversations");
/// Each user's conversations by `(user_id, conversation id)`, kept with `CONVERSATIONS`, so a
/// user's list is one range read (ids are UUIDv7: key order is creation order).
pub const CONVERSATIONS_BY_USER: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("conversations_by_user");
/// Each conversation's prompts by `(conversation id, turn)` to the prompt id, kept with
/// `CONVERSATIONS`, so a conversation's prompts are read without scanning `PROMPTS`.
pub const CONVERSATION_PROMPTS: TableDefinition<(&str, u32), &str> =
    TableDefinition::new("conversation_prompts");
/// Keyed by `credential_key(user_id, provider)`.
pub const CREDENTIALS: TableDefinition<&str, Stored<Credential>> =
    TableDefinition::new("credentials");
/// The vault's keys (salts), keyed by key id.
pub const VAULT_KEYS: TableDefinition<&str, Stored<VaultKey>> = TableDefinition::new("vault_keys");
/// The one auth session still in progress per `credential_key(user_id, provider)`.
pub const ACTIVE_AUTH_SESSIONS: TableDefinition<&str, &str> =
    TableDefinition::new("active_auth_sessions");
/// Keyed by entity (`<table>/<record key>`), so a newer change supersedes a pending older one.
pub const OUTBOX: TableDefinition<&str, Stored<OutboxEntry>> = TableDefinition::new("outbox");
/// Outbox entries Supabase refused for good, keyed like the outbox.
pub const DEAD_LETTERS: TableDefinition<&str, Stored<DeadLetter>> =
    TableDefinition::new("dead_letters");
/// Keyed by `(unix millis, sequence)`.
pub const METRICS_SAMPLES: TableDefinition<(i64, u32), Stored<MetricsSample>> =
    TableDefinition::new("metrics_samples");
/// The last run of each background job, keyed by the job's name.
pub const TASK_RUNS: TableDefinition<&str, Stored<TaskRun>> = TableDefinition::new("task_runs");

/// Each user's token epoch (see `users::epochs`); a row outlives its user.
pub const TOKEN_EPOCHS: TableDefinition<&str, u64> = TableDefinition::new("token_epochs");
/// Prompt counts by `"<provider>/<status>"`, kept in the same transaction as every change to
/// `PROMPTS`, so a metrics scrape reads a few counters instead of decoding every prompt.
pub const PROMPT_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("prompt_counts");

/// Users by status and VMs by status and type (`"users/<status>"`, `"vms/<status>/<type>"`),
/// kept by the mirrored write path (`sync::tally`), so a scrape and a VM reservation count
/// without reading every record.
pub const RECORD_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("record_counts");

/// Each user's VMs by `(user id, VM id)`, kept with `VMS` (a VM's user never changes), so a
/// user's VM is found without reading every VM record.
pub const VMS_BY_USER: TableDefinition<(&str, &str), ()> = TableDefinition::new("vms_by_user");
/// Each user's prompts by `(user id, created_at_ms, prompt id)`, kept in the same transaction
/// as every change to `PROMPTS`, so a user's newest prompts are one reverse range read.
pub const PROMPTS_BY_USER: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("prompts_by_user");
/// How many prompts each user has stored, kept with `PROMPTS_BY_USER`.
pub const USER_PROMPT_TOTALS: TableDefinition<&str, u64> =
    TableDefinition::new("user_prompt_totals");

/// The outbox's entries by `(enqueued_at_ms, outbox key)`, kept with `OUTBOX`, so the oldest
/// pending change is read without decoding the outbox (which holds one entry per changed
/// prompt while the mirror is down).
pub const OUTBOX_BY_AGE: TableDefinition<(i64, &str), ()> = TableDefinition::new("outbox_by_age");

/// Creates every table, so that read transactions never meet a missing one.
pub fn create_all(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(USERS)?;
    tx.open_table(USERS_BY_EMAIL)?;
    tx.open_table(VMS)?;
    tx.open_table(VM_INTENTS)?;
    tx.open_table(IP_LEASES)?;
    tx.open_table(PORT_LEASES)?;
    tx.open_table(AUTH_SESSIONS)?;
    tx.open_table(PROMPTS)?;
    tx.open_table(CONVERSATIONS)?;
    tx.open_table(CONVERSATIONS_BY_USER)?;
    tx.open_table(CONVERSATION_PROMPTS)?;
    tx.open_table(CREDENTIALS)?;
    tx.open_table(VAULT_KEYS)?;
    tx.open_table(ACTIVE_AUTH_SESSIONS)?;
    tx.open_table(OUTBOX)?;
    tx.open_table(DEAD_LETTERS)?;
    tx.open_table(METRICS_SAMPLES)?;
    tx.open_table(TASK_RUNS)?;
    tx.open_table(TOKEN_EPOCHS)?;
    tx.open_table(PROMPT_COUNTS)?;
    tx.open_table(RECORD_COUNTS)?;
    tx.open_table(VMS_BY_USER)?;
    tx.open_table(PROMPTS_BY_USER)?;
    tx.open_table(USER_PROMPT_TOTALS)?;
    tx.open_table(OUTBOX_BY_AGE)?;
    Ok(())
}

/// The daemon's store: the state file opened with these tables.
impl Store {
    /// Opens (or creates) the state file in `data_dir`, checks its schema version and creates
    /// any missing table. Blocking: after an unclean shutdown redb repairs the file here, which
    /// can take a while.
    pub fn open_blocking(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_blocking_with(data_dir, create_all)
    }

    pub async fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || Store::open_blocking(&dir))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}
