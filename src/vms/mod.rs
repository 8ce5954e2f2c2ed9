//! The VM service. This part is read-only (list, get, heartbeat); the manager that
//! creates, hibernates, resumes and destroys VMs joins it later.

use crate::model::{Status, Vm, VmStatus, VmType, now_ms};
use crate::store::{self, Store, StoreError, tables};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("VM {0} not found")]
    NotFound(String),
    #[error("VM {id} is {status} and takes no heartbeat")]
    NotAlive { id: String, status: VmStatus },
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::lift_redb_errors!(VmError);

#[derive(Debug, Default, Clone)]
pub struct VmFilter {
    pub status: Option<VmStatus>,
    pub vm_type: Option<VmType>,
    /// Set for user-scoped callers, who see only their own VMs.
    pub user_id: Option<String>,
}

impl VmFilter {
    fn matches(&self, vm: &Vm) -> bool {
        self.status.is_none_or(|s| vm.status == s)
            && self.vm_type.is_none_or(|t| vm.vm_type == t)
            && self.user_id.as_ref().is_none_or(|u| &vm.user_id == u)
    }
}

#[derive(Clone)]
pub struct VmService {
    store: Store,
}

impl VmService {
    pub fn new(store: Store) -> VmService {
        VmService { store }
    }

    pub async fn list(&self, filter: VmFilter) -> Result<Vec<Vm>, VmError> {
        self.store
            .read(move |tx| {
                let vms = store::all(&tx.open_table(tables::VMS)?)?;
                Ok(vms.into_iter().filter(|vm| filter.matches(vm)).collect())
            })
            .await
    }

    pub async fn get(&self, id: &str) -> Result<Vm, VmError> {
        let id = id.to_string();
        self.store
            .read(move |tx| {
                store::get(&tx.open_table(tables::VMS)?, &id)?.ok_or(VmError::NotFound(id))
            })
            .await
    }

    /// Records that the VM's agent (or the web backend on its behalf) saw it alive.
    pub async fn heartbeat(&self, id: &str) -> Result<Vm, VmError> {
        let id = id.to_string();
        self.store
            .write(move |tx| {
                let mut vms = tx.open_table(tables::VMS)?;
                let mut vm: Vm =
                    store::get(&vms, &id)?.ok_or_else(|| VmError::NotFound(id.clone()))?;
                if !vm.status.can_transition_to(VmStatus::Running) || vm.status == VmStatus::Stopped
                {
                    return Err(VmError::NotAlive {
                        id,
                        status: vm.status,
                    });
                }
                let now = now_ms();
                vm.last_heartbeat_ms = Some(now);
                vm.updated_at_ms = now;
                vm.version += 1;
                store::put(&mut vms, &vm.id, &vm)?;
                Ok(vm)
            })
            .await
    }

    /// Writes a VM record as it is. The manager is the only other writer; tests and the
    /// benchmark use this to set up VMs.
    pub async fn insert(&self, vm: Vm) -> Result<(), VmError> {
        self.store
            .write(move |tx| {
                store::put(&mut tx.open_table(tables::VMS)?, &vm.id, &vm)?;
                Ok(())
            })
            .await
    }
}
