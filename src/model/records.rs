//! Records whose tables exist from the first schema but which later capabilities fill.

use serde::{Deserialize, Serialize};

use super::{Provider, named_enum};
use crate::store::Record;

/// An IP address reserved for a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpLease {
    pub ip: String,
    pub vm_id: String,
    pub leased_at_ms: i64,
}

impl Record for IpLease {
    const KIND: &'static str = "ip_lease";
    const VERSION: u16 = 1;
}

/// An upstream proxy port reserved for a user for life, with its last health check.
///
/// No binary ever wrote the first shape of this record, so its version stays 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortLease {
    pub port: u16,
    pub user_id: String,
    pub leased_at_ms: i64,
    pub health: Option<PortHealth>,
}

/// What a request through an upstream port found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortHealth {
    pub healthy: bool,
    pub checked_at_ms: i64,
    pub latency_ms: u64,
    /// The address the echo service saw: the port's external IP.
    pub external_ip: Option<String>,
    /// Why the check failed, in words that never include the upstream's credentials.
    pub error: Option<String>,
}

impl Record for PortLease {
    const KIND: &'static str = "port_lease";
    const VERSION: u16 = 1;
}

/// A provider credential, encrypted at rest; only the vault sees the plaintext. Keyed by
/// `credential_key(user_id, provider)`: a user has at most one credential per provider.
///
/// No binary ever wrote the first shape of this record, so its version stays 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    pub id: String,
    pub user_id: String,
    pub provider: Provider,
    /// The CLI's credential file, sealed by the vault.
    pub ciphertext: Vec<u8>,
    /// The vault key that sealed `ciphertext` (see `auth::vault`).
    pub key_id: String,
    pub is_valid: bool,
    /// Why the credential is not valid, or what is about to go wrong with it.
    pub reason: Option<String>,
    /// The access token's expiry, read from the provider's own field.
    pub expires_at_ms: Option<i64>,
    pub last_verified_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: u64,
}

impl Record for Credential {
    const KIND: &'static str = "credential";
    const VERSION: u16 = 1;
}

/// The key of a credential in its table.
pub fn credential_key(user_id: &str, provider: Provider) -> String {
    format!("{user_id}:{}", provider.as_str())
}

named_enum!(VaultKeyState, "vault key state" {
    Active => "active",
    Pending => "pending",
    Retired => "retired",
});

/// A vault key: the salt that, with the master key, derives one age identity. The master key
/// itself is never stored; `key_id` lets a record name the key that sealed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaultKey {
    pub key_id: String,
    pub salt: Vec<u8>,
    pub state: VaultKeyState,
    pub created_at_ms: i64,
}

impl Record for VaultKey {
    const KIND: &'static str = "vault_key";
    const VERSION: u16 = 1;
}

/// A change to mirror to Supabase, keyed by entity (`<table>/<record key>`), so a newer change
/// supersedes a pending older one. It names the entity, not its content: the worker reads the
/// current record when it sends, so the outbox never holds a payload (nor a secret) and a
/// missing record is a tombstone. No binary wrote the first shape, so the version stays 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The mirrored table (`users`, `vms`, ...).
    pub table: String,
    /// The record's key in its redb table.
    pub record_key: String,
    /// The entity's id in Supabase (for a tombstone's DELETE).
    pub entity_id: String,
    pub entity_version: u64,
    pub enqueued_at_ms: i64,
    pub attempts: u32,
    /// Not sent before this time (backoff after a failure).
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
}

impl Record for OutboxEntry {
    const KIND: &'static str = "outbox_entry";
    const VERSION: u16 = 1;
}

/// An outbox entry Supabase refused for good (a 400 or 422, or another 4xx too often). Kept
/// until an operator retries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub entry: OutboxEntry,
    pub status: Option<u16>,
    pub error: String,
    pub dead_at_ms: i64,
}

impl Record for DeadLetter {
    const KIND: &'static str = "dead_letter";
    const VERSION: u16 = 1;
}

/// One periodic sample of the host and the daemon, kept in a bounded ring (`METRICS_SAMPLES`).
/// No binary ever wrote the first shape of this record, so its version stays 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSample {
    pub at_ms: i64,
    /// Host CPU use since the previous sample, in percent of all cores.
    pub cpu_percent: f64,
    pub load1: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// The filesystem that holds the data directory.
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    pub vms_by_status: std::collections::BTreeMap<String, u64>,
    pub prompts_running: u64,
    pub ip_pool_free: u64,
    pub outbox_depth: u64,
}

impl Record for MetricsSample {
    const KIND: &'static str = "metrics_sample";
    const VERSION: u16 = 1;
}

named_enum!(TaskOutcome, "task outcome" {
    Ok => "ok",
    Failed => "failed",
});

/// The last run of one background job (see `tasks`), keyed by the job's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRun {
    pub name: String,
    pub last_started_ms: Option<i64>,
    pub last_finished_ms: Option<i64>,
    pub last_duration_ms: Option<u64>,
    pub last_outcome: Option<TaskOutcome>,
    pub last_error: Option<String>,
    /// What the last run acted on (VMs hibernated, sessions expired, ...).
    pub items_touched: u64,
    pub next_run_ms: Option<i64>,
    pub runs: u64,
    pub failures: u64,
}

impl TaskRun {
    pub fn new(name: &str) -> TaskRun {
        TaskRun {
            name: name.to_string(),
            last_started_ms: None,
            last_finished_ms: None,
            last_duration_ms: None,
            last_outcome: None,
            last_error: None,
            items_touched: 0,
            next_run_ms: None,
            runs: 0,
            failures: 0,
        }
    }
}

impl Record for TaskRun {
    const KIND: &'static str = "task_run";
    const VERSION: u16 = 1;
}
