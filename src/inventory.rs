//! Counts across the store, for metrics, the VM summary and the system stats.

use std::collections::BTreeMap;

use redb::ReadableTableMetadata;

use crate::metrics::StoreCounts;
use crate::model::tables;
use crate::model::{PromptStatus, Provider, UserStatus, VmStatus, VmType, now_ms};
use crate::store::{Store, StoreError};
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub users_by_status: BTreeMap<UserStatus, u64>,
    pub vms_by_status_type: BTreeMap<(VmStatus, VmType), u64>,
    pub prompts_by_provider_status: BTreeMap<(Provider, PromptStatus), u64>,
    pub ip_leases: u64,
    /// How many addresses the VM pool has (from the bridge network and its limit).
    pub ip_pool_size: u64,
    pub port_leases: u64,
    pub outbox_depth: u64,
    /// How long the oldest pending change has waited.
    pub outbox_oldest_age_ms: Option<i64>,
    pub dead_letters: u64,
    pub credentials: u64,
    pub auth_sessions: u64,
}

impl Inventory {
    pub async fn take(store: &Store, ip_pool_size: u64) -> Result<Inventory, StoreError> {
        store
            .read(move |tx| {
                let mut inventory = Inventory {
                    ip_pool_size,
                    ..Inventory::default()
                };
                // The counters, not the records: a scrape must not cost more as users, VMs and
                // prompts pile up.
                let records = crate::sync::tally::read(&tx.open_table(tables::RECORD_COUNTS)?)?;
                inventory.users_by_status = records.users_by_status;
                inventory.vms_by_status_type = records.vms_by_status_type;
                inventory.prompts_by_provider_status = crate::prompts::counts::read(tx)?;
                inventory.ip_leases = tx.open_table(tables::IP_LEASES)?.len()?;
                inventory.port_leases = tx.open_table(tables::PORT_LEASES)?.len()?;
                let outbox = tx.open_table(tables::OUTBOX)?;
                inventory.outbox_depth = outbox.len()?;
                // The age index, not the entries: while the mirror is down the outbox holds an
                // entry per changed prompt.
                inventory.outbox_oldest_age_ms = crate::sync::outbox::oldest_enqueued_ms(tx)?
                    .map(|oldest| (now_ms() - oldest).max(0));
                inventory.dead_letters = tx.open_table(tables::DEAD_LETTERS)?.len()?;
                inventory.credentials = tx.open_table(tables::CREDENTIALS)?.len()?;
                inventory.auth_sessions = tx.open_table(tables::AUTH_SESSIONS)?.len()?;
                Ok(inventory)
            })
            .await
    }

    pub fn total_users(&self) -> u64 {
        self.users_by_status.values().sum()
    }

    pub fn vms(&self, status: VmStatus, vm_type: VmType) -> u64 {
        self.vms_by_status_type
            .get(&(status, vm_type))
            .copied()
            .unwrap_or(0)
    }

    pub fn vms_with_status(&self, status: VmStatus) -> u64 {
        VmType::ALL.iter().map(|t| self.vms(status, *t)).sum()
    }

    /// VMs that hold a guest: running or being created.
    pub fn active_vms(&self) -> u64 {
        self.vms_with_status(VmStatus::Running) + self.vms_with_status(VmStatus::Creating)
    }

    pub fn ip_pool_available(&self) -> u64 {
        self.ip_pool_size.saturating_sub(self.ip_leases)
    }

    /// What the store-mirroring gauges show.
    pub fn gauges(&self) -> StoreCounts {
        StoreCounts {
            total_users: self.total_users(),
            vms: self.vms_by_status_type.clone(),
            active_vms: self.active_vms(),
            ip_pool_available: self.ip_pool_available(),
            ip_pool_size: self.ip_pool_size,
            port_leases: self.port_leases,
            outbox_depth: self.outbox_depth,
            outbox_oldest_age_ms: self.outbox_oldest_age_ms,
            dead_letters: self.dead_letters,
        }
    }
}
