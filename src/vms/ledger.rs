//! The VM manager's durable bookkeeping: every reservation and status change is one redb
//! transaction over the VM, its intent and the IP leases. The host is touched only after the
//! transaction that reserves what it will use has committed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use redb::{ReadableTable, WriteTransaction};

use super::VmError;
use crate::model::tables;
use crate::model::{IpLease, Vm, VmIntent, VmOp, VmStatus, now_ms};
use crate::net::egress::{PortRange, ports};
use crate::net::{Subnet, mac_for};
use crate::store;
use crate::sync::put_mirrored_in;
/// The bounds a reservation is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_running: u32,
    pub subnet: Subnet,
    /// At most this many pool addresses are handed out (tests use a small pool).
    pub pool_limit: Option<u32>,
    /// The upstream ports a VM's user is given one of, when egress is configured.
    pub ports: Option<PortRange>,
}

impl Limits {
    pub fn pool_size(&self) -> u64 {
        let whole = self.subnet.pool_size();
        self.pool_limit.map_or(whole, |l| whole.min(u64::from(l)))
    }

    fn pool(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.subnet.pool().take(self.pool_size() as usize)
    }
}

/// A hibernated VM whose address went to another VM.
#[derive(Debug, Clone)]
pub struct Reclaimed {
    pub vm: Vm,
    pub ip: String,
}

/// What a reservation produced.
#[derive(Debug)]
pub struct Reserved {
    pub vm: Vm,
    pub intent: VmIntent,
    pub reclaimed: Option<Reclaimed>,
}

/// Whether a status holds a hypervisor process (and counts against `MC_MAX_VMS`).
pub fn holds_process(status: VmStatus) -> bool {
    matches!(
        status,
        VmStatus::Creating | VmStatus::Running | VmStatus::Stopping
    )
}

/// Reserves everything a create needs and records the intent. `vm` arrives in `creating`
/// with its id, tap and token set; the address is chosen here.
pub fn reserve_create(
    tx: &WriteTransaction,
    mut vm: Vm,
    dir: &str,
    limits: &Limits,
) -> Result<Reserved, VmError> {
    if store::get(&tx.open_table(tables::USERS)?, &vm.user_id)?.is_none() {
        return Err(VmError::UserNotFound(vm.user_id));
    }
    let mut vms = tx.open_table(tables::VMS)?;
    let owned = super::by_user::of_user(&tx.open_table(tables::VMS_BY_USER)?, &vms, &vm.user_id)?;
    if let Some(existing) = owned.iter().find(|v| v.is_live()) {
        return Err(VmError::AlreadyHasVm {
            user_id: vm.user_id,
            vm_id: existing.id.clone(),
            status: existing.status,
        });
    }
    check_room(tx, limits)?;
    if let Some(range) = limits.ports {
        ports::ensure_lease(tx, &vm.user_id, range)?;
    }
    let (ip, reclaimed) = lease_address(tx, &mut vms, &vm.id, limits)?;
    vm.ip_address = Some(ip.to_string());
    vm.mac_address = Some(mac_for(ip));
    put_mirrored_in(tx, &mut vms, &vm.id, &vm)?;
    super::by_user::add(tx, &vm)?;
    let intent = write_intent(tx, &vm, VmOp::Create, dir)?;
    Ok(Reserved {
        vm,
        intent,
        reclaimed,
    })
}

/// Records the intent of `op` on a VM that must be in one of `from`. Resume of a VM whose
/// address was reclaimed leases a new one here.
pub fn begin(
    tx: &WriteTransaction,
    vm_id: &str,
    op: VmOp,
    from: &[VmStatus],
    dir: &str,
    limits: &Limits,
) -> Result<Reserved, VmError> {
    let mut vms = tx.open_table(tables::VMS)?;
    let mut vm: Vm =
        store::get(&vms, vm_id)?.ok_or_else(|| VmError::NotFound(vm_id.to_string()))?;
    if let Some(intent) = store::get(&tx.open_table(tables::VM_INTENTS)?, vm_id)? {
        return Err(VmError::Busy {
            id: vm.id,
            op: intent.op,
        });
    }
    if !from.contains(&vm.status) {
        return Err(VmError::WrongStatus {
            id: vm.id,
            op,
            status: vm.status,
        });
    }
    let mut reclaimed = None;
    if op == VmOp::Resume {
        check_room(tx, limits)?;
        // A VM from before egress was configured gets its user's port at its next resume.
        if let Some(range) = limits.ports {
            ports::ensure_lease(tx, &vm.user_id, range)?;
        }
        if vm.ip_address.is_none() {
            let (ip, taken) = lease_address(tx, &mut vms, &vm.id, limits)?;
            vm.ip_address = Some(ip.to_string());
            vm.mac_address = Some(mac_for(ip));
            vm.touch();
            reclaimed = taken;
        }
    }
    put_mirrored_in(tx, &mut vms, &vm.id, &vm)?;
    let intent = write_intent(tx, &vm, op, dir)?;
    Ok(Reserved {
        vm,
        intent,
        reclaimed,
    })
}

/// Refuses another hypervisor process past `max_running`, by the VM counters (`sync::tally`),
/// not by reading every VM.
fn check_room(tx: &WriteTransaction, limits: &Limits) -> Result<(), VmError> {
    let counts = crate::sync::tally::read(&tx.open_table(tables::RECORD_COUNTS)?)?;
    if counts.vms_where(holds_process) >= u64::from(limits.max_running) {
        return Err(VmError::TooManyVms {
            max: limits.max_running,
        });
    }
    Ok(())
}

fn write_intent(tx: &WriteTransaction, vm: &Vm, op: VmOp, dir: &str) -> Result<VmIntent, VmError> {
    let intent = VmIntent {
        vm_id: vm.id.clone(),
        op,
        ip: vm.ip_address.clone(),
        tap: vm.tap_device.clone().unwrap_or_default(),
        dir: dir.to_string(),
        started_at_ms: now_ms(),
    };
    store::put(&mut tx.open_table(tables::VM_INTENTS)?, &vm.id, &intent)?;
    Ok(intent)
}

/// Applies `change` to the VM, clears its intent, and releases its IP lease when the VM no
/// longer holds an address. Returns the VM as written.
pub fn finish(
    tx: &WriteTransaction,
    vm_id: &str,
    change: impl FnOnce(&mut Vm) -> Result<(), VmError>,
) -> Result<Vm, VmError> {
    let mut vms = tx.open_table(tables::VMS)?;
    let mut vm: Vm =
        store::get(&vms, vm_id)?.ok_or_else(|| VmError::NotFound(vm_id.to_string()))?;
    let before = vm.ip_address.clone();
    change(&mut vm)?;
    if let Some(ip) = before
        && vm.ip_address.is_none()
    {
        release_lease(tx, &ip, vm_id)?;
    }
    put_mirrored_in(tx, &mut vms, &vm.id, &vm)?;
    tx.open_table(tables::VM_INTENTS)?.remove(vm_id)?;
    Ok(vm)
}

/// Ends a VM's hold on everything: no address, no tap, no process.
pub fn strip(vm: &mut Vm) {
    vm.ip_address = None;
    vm.mac_address = None;
    vm.tap_device = None;
    vm.pid = None;
}

fn release_lease(tx: &WriteTransaction, ip: &str, vm_id: &str) -> Result<(), VmError> {
    let mut leases = tx.open_table(tables::IP_LEASES)?;
    let owned = store::get::<IpLease, _>(&leases, ip)?.is_some_and(|l| l.vm_id == vm_id);
    if owned {
        leases.remove(ip)?;
    }
    Ok(())
}

/// Leases the lowest free address to `vm_id`; with none free, takes the address of the
/// longest-hibernated VM that still holds one.
fn lease_address(
    tx: &WriteTransaction,
    vms: &mut redb::Table<&'static str, store::Stored<Vm>>,
    vm_id: &str,
    limits: &Limits,
) -> Result<(Ipv4Addr, Option<Reclaimed>), VmError> {
    let mut leases = tx.open_table(tables::IP_LEASES)?;
    let mut leased = BTreeSet::new();
    for entry in leases.iter()? {
        let (ip, _) = entry?;
        if let Ok(ip) = ip.value().parse::<Ipv4Addr>() {
            leased.insert(ip);
        }
    }
    let free = limits.pool().find(|ip| !leased.contains(ip));
    let (ip, reclaimed) = match free {
        Some(ip) => (ip, None),
        None => {
            let all: Vec<Vm> = store::all(&*vms)?;
            let victim = all
                .into_iter()
                .filter(|v| v.status == VmStatus::Hibernated && v.ip_address.is_some())
                .min_by_key(|v| v.hibernated_at_ms.unwrap_or(i64::MAX));
            let Some(mut victim) = victim else {
                return Err(VmError::PoolExhausted {
                    size: limits.pool_size(),
                });
            };
            let ip_text = victim.ip_address.take().unwrap_or_default();
            let ip: Ipv4Addr = ip_text.parse().map_err(|_| {
                VmError::Corrupt(format!("VM {} has address {ip_text:?}", victim.id))
            })?;
            victim.mac_address = None;
            victim.needs_readdress = true;
            victim.touch();
            put_mirrored_in(tx, vms, &victim.id, &victim)?;
            (
                ip,
                Some(Reclaimed {
                    vm: victim,
                    ip: ip_text,
                }),
            )
        }
    };
    let lease = IpLease {
        ip: ip.to_string(),
        vm_id: vm_id.to_string(),
        leased_at_ms: now_ms(),
    };
    store::put(&mut leases, &lease.ip, &lease)?;
    Ok((ip, reclaimed))
}

/// Every open intent, for reconcile.
pub fn intents(tx: &redb::ReadTransaction) -> Result<Vec<VmIntent>, VmError> {
    Ok(store::all(&tx.open_table(tables::VM_INTENTS)?)?)
}

/// Leases whose VM is gone or no longer holds that address; reconcile removes them.
pub fn stray_leases(tx: &WriteTransaction) -> Result<Vec<String>, VmError> {
    let vms = tx.open_table(tables::VMS)?;
    let mut leases = tx.open_table(tables::IP_LEASES)?;
    let all: Vec<IpLease> = store::all(&leases)?;
    let mut removed = Vec::new();
    for lease in all {
        let vm: Option<Vm> = store::get(&vms, &lease.vm_id)?;
        let held = vm.is_some_and(|vm| vm.ip_address.as_deref() == Some(lease.ip.as_str()));
        if !held {
            leases.remove(lease.ip.as_str())?;
            removed.push(lease.ip);
        }
    }
    Ok(removed)
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
