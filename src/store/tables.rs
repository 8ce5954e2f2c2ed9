//! Every redb table of the daemon, in one place. Values are versioned records (see `codec`);
//! the value type of each table names the record it holds, so a table cannot be opened with the
//! wrong record type.

use std::fmt;
use std::marker::PhantomData;

use redb::{TableDefinition, TypeName, Value};

use super::StoreError;
use super::codec::{self, Record};
use crate::model::{
    AuthSession, Credential, DeadLetter, IpLease, MetricsSample, OutboxEntry, PortLease, Prompt,
    User, VaultKey, Vm, VmIntent,
};

/// The schema version this binary writes. A file with a higher one is refused at open.
pub const SCHEMA_VERSION: u64 = 2;

pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const META_SCHEMA_VERSION: &str = "schema_version";

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
pub const TASK_RUNS: TableDefinition<&str, Stored<crate::model::TaskRun>> =
    TableDefinition::new("task_runs");

/// Each user's token epoch (see `users::epochs`); a row outlives its user.
pub const TOKEN_EPOCHS: TableDefinition<&str, u64> = TableDefinition::new("token_epochs");
/// Prompt counts by `"<provider>/<status>"`, kept in the same transaction as every change to
/// `PROMPTS`, so a metrics scrape reads a few counters instead of decoding every prompt.
pub const PROMPT_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("prompt_counts");

/// The outbox's entries by `(enqueued_at_ms, outbox key)`, kept with `OUTBOX`, so the oldest
/// pending change is read without decoding the outbox (which holds one entry per changed
/// prompt while the mirror is down).
pub const OUTBOX_BY_AGE: TableDefinition<(i64, &str), ()> = TableDefinition::new("outbox_by_age");

/// An encoded record as redb stores it. Decoding is explicit (`decode`) so that a corrupt or
/// unknown record is an error, not a panic inside redb.
pub struct Stored<R> {
    bytes: Vec<u8>,
    record: PhantomData<R>,
}

impl<R: Record> Stored<R> {
    pub fn encode(record: &R) -> Result<Self, StoreError> {
        Ok(Self {
            bytes: codec::encode(record)?,
            record: PhantomData,
        })
    }

    pub fn decode(&self) -> Result<R, StoreError> {
        codec::decode(&self.bytes)
    }
}

impl<R> fmt::Debug for Stored<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stored({} bytes)", self.bytes.len())
    }
}

impl<R: Record> Value for Stored<R> {
    type SelfType<'a>
        = Stored<R>
    where
        Self: 'a;
    type AsBytes<'a>
        = &'a [u8]
    where
        Self: 'a;

    fn fixed_width() -> Option<usize> {
        None
    }

    fn from_bytes<'a>(data: &'a [u8]) -> Stored<R>
    where
        Self: 'a,
    {
        Stored {
            bytes: data.to_vec(),
            record: PhantomData,
        }
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a Stored<R>) -> &'a [u8]
    where
        Self: 'b,
    {
        &value.bytes
    }

    fn type_name() -> TypeName {
        TypeName::new(&format!("master_controller::{}", R::KIND))
    }
}

/// Creates every table, so that read transactions never meet a missing one.
pub(super) fn create_all(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(META)?;
    tx.open_table(USERS)?;
    tx.open_table(USERS_BY_EMAIL)?;
    tx.open_table(VMS)?;
    tx.open_table(VM_INTENTS)?;
    tx.open_table(IP_LEASES)?;
    tx.open_table(PORT_LEASES)?;
    tx.open_table(AUTH_SESSIONS)?;
    tx.open_table(PROMPTS)?;
    tx.open_table(CREDENTIALS)?;
    tx.open_table(VAULT_KEYS)?;
    tx.open_table(ACTIVE_AUTH_SESSIONS)?;
    tx.open_table(OUTBOX)?;
    tx.open_table(DEAD_LETTERS)?;
    tx.open_table(METRICS_SAMPLES)?;
    tx.open_table(TASK_RUNS)?;
    tx.open_table(TOKEN_EPOCHS)?;
    tx.open_table(PROMPT_COUNTS)?;
    tx.open_table(OUTBOX_BY_AGE)?;
    Ok(())
}
