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

/// An upstream proxy port reserved for a user for life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortLease {
    pub port: u16,
    pub user_id: String,
    pub leased_at_ms: i64,
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

/// A pending change to mirror to Supabase, keyed by entity so a newer change supersedes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub table: String,
    pub entity_id: String,
    pub entity_version: u64,
    /// The JSON row to upsert; `None` is a tombstone.
    pub payload_json: Option<String>,
    pub enqueued_at_ms: i64,
    pub attempts: u32,
}

impl Record for OutboxEntry {
    const KIND: &'static str = "outbox_entry";
    const VERSION: u16 = 1;
}

/// One periodic sample of a VM's resource usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSample {
    pub vm_id: String,
    pub resource: String,
    pub value: f64,
}

impl Record for MetricsSample {
    const KIND: &'static str = "metrics_sample";
    const VERSION: u16 = 1;
}
