//! Each user's VMs in `VMS_BY_USER`, written with the VM record it names (a VM's user never
//! changes) and removed with it, so a user's VM is found without reading every VM record.

use redb::{ReadableTable, WriteTransaction};

use crate::model::Vm;
use crate::model::tables;
use crate::store::{self, StoreError};

/// Set in `META` once the index holds every VM (a store from before it is indexed once, at
/// start).
const INDEXED: &str = "vms_by_user_complete";

/// Above every VM id (ids are ASCII), to close a user's range.
const LAST_ID: &str = "\u{10ffff}";

pub fn add(tx: &WriteTransaction, vm: &Vm) -> Result<(), StoreError> {
    tx.open_table(tables::VMS_BY_USER)?
        .insert((vm.user_id.as_str(), vm.id.as_str()), ())?;
    Ok(())
}

pub fn remove(tx: &WriteTransaction, vm: &Vm) -> Result<(), StoreError> {
    tx.open_table(tables::VMS_BY_USER)?
        .remove((vm.user_id.as_str(), vm.id.as_str()))?;
    Ok(())
}

/// The user's VM records, in VM id order.
pub fn of_user(
    index: &impl ReadableTable<(&'static str, &'static str), ()>,
    vms: &impl ReadableTable<&'static str, store::Stored<Vm>>,
    user_id: &str,
) -> Result<Vec<Vm>, StoreError> {
    let mut found = Vec::new();
    for entry in index.range((user_id, "")..=(user_id, LAST_ID))? {
        let (key, _) = entry?;
        if let Some(vm) = store::get(vms, key.value().1)? {
            found.push(vm);
        }
    }
    Ok(found)
}

/// Fills the index from the VM records once, for a store written before it existed. Returns
/// whether it indexed.
pub async fn ensure(store: &store::Store) -> Result<bool, StoreError> {
    store
        .write(|tx| {
            let mut meta = tx.open_table(crate::store::META)?;
            if meta.get(INDEXED)?.is_some() {
                return Ok(false);
            }
            tx.open_table(tables::VMS_BY_USER)?.retain(|_, _| false)?;
            for vm in store::all::<Vm, _>(&tx.open_table(tables::VMS)?)? {
                add(tx, &vm)?;
            }
            meta.insert(INDEXED, 1)?;
            Ok(true)
        })
        .await
}
