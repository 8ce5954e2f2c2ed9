//! Records whose tables exist from the first schema but which later capabilities fill.

use serde::{Deserialize, Serialize};

use super::Provider;
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

/// A provider credential, encrypted at rest; only the vault sees the plaintext.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    pub id: String,
    pub user_id: String,
    pub provider: Provider,
    pub ciphertext: Vec<u8>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: u64,
}

impl Record for Credential {
    const KIND: &'static str = "credential";
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
