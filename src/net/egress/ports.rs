//! The upstream port pool in the store. A user's port is leased in the transaction that
//! reserves their first VM (or resumes one from before egress was configured), stays theirs for
//! life, and is freed in the transaction that deletes them.

use std::net::Ipv4Addr;

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::{EgressError, PortRange};
use crate::model::tables;
use crate::model::{PortHealth, PortLease, User, Vm, VmStatus, now_ms};
use crate::store;
use crate::sync::update_mirrored;

/// The user's port, leasing the lowest free one in `range` when they have none.
pub fn ensure_lease(
    tx: &WriteTransaction,
    user_id: &str,
    range: PortRange,
) -> Result<u16, EgressError> {
    let user: User = store::get(&tx.open_table(tables::USERS)?, user_id)?
        .ok_or_else(|| EgressError::UserNotFound(user_id.to_string()))?;
    if let Some(port) = user.decodo_port {
        return Ok(port);
    }
    let mut leases = tx.open_table(tables::PORT_LEASES)?;
    let mut port = range.start;
    for entry in leases.range(range.start..=range.end)? {
        let (taken, _) = entry?;
        if taken.value() != port {
            break;
        }
        if port == range.end {
            return Err(EgressError::PoolExhausted { range });
        }
        port += 1;
    }
    let lease = PortLease {
        port,
        user_id: user_id.to_string(),
        leased_at_ms: now_ms(),
        health: None,
    };
    leases.insert(port, store::Stored::encode(&lease)?)?;
    update_mirrored(tx, tables::USERS, user_id, |user: &mut User| {
        user.decodo_port = Some(port);
        user.updated_at_ms = now_ms();
        Ok::<_, EgressError>(())
    })?;
    Ok(port)
}

/// Frees the user's port; call it in the transaction that deletes the user.
pub fn release(tx: &WriteTransaction, user: &User) -> Result<(), EgressError> {
    if let Some(port) = user.decodo_port {
        let mut leases = tx.open_table(tables::PORT_LEASES)?;
        let held_by_user = match leases.get(port)? {
            Some(lease) => lease.value().decode()?.user_id == user.id,
            None => false,
        };
        if held_by_user {
            leases.remove(port)?;
        }
    }
    Ok(())
}

/// Every leased port, in port order.
pub fn leases(tx: &ReadTransaction) -> Result<Vec<PortLease>, EgressError> {
    let table = tx.open_table(tables::PORT_LEASES)?;
    let mut all = Vec::new();
    for entry in table.iter()? {
        all.push(entry?.1.value().decode()?);
    }
    Ok(all)
}

/// Records a health check's result on a lease (gone if the user was deleted meanwhile).
pub fn record_health(
    tx: &WriteTransaction,
    port: u16,
    health: PortHealth,
) -> Result<Option<PortLease>, EgressError> {
    let mut table = tx.open_table(tables::PORT_LEASES)?;
    let lease = match table.get(port)? {
        Some(stored) => stored.value().decode()?,
        None => return Ok(None),
    };
    let lease = PortLease {
        health: Some(health),
        ..lease
    };
    table.insert(port, store::Stored::encode(&lease)?)?;
    Ok(Some(lease))
}

/// Whose traffic a guest address carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub user_id: String,
    pub vm_id: String,
    /// `None` only for a VM created before egress was configured and not resumed since.
    pub port: Option<u16>,
}

/// The owner of `ip`, if a running VM holds its lease.
pub fn owner_of(tx: &ReadTransaction, ip: Ipv4Addr) -> Result<Option<Owner>, EgressError> {
    let Some(lease) = store::get::<crate::model::IpLease, _>(
        &tx.open_table(tables::IP_LEASES)?,
        &ip.to_string(),
    )?
    else {
        return Ok(None);
    };
    let Some(vm) = store::get::<Vm, _>(&tx.open_table(tables::VMS)?, &lease.vm_id)? else {
        return Ok(None);
    };
    if vm.status != VmStatus::Running || vm.ip_address.as_deref() != Some(lease.ip.as_str()) {
        return Ok(None);
    }
    let user: Option<User> = store::get(&tx.open_table(tables::USERS)?, &vm.user_id)?;
    Ok(user.map(|user| Owner {
        user_id: user.id,
        vm_id: vm.id,
        port: user.decodo_port,
    }))
}
