//! One slot per VM: the async mutex that serialises the VM's operations, over what of it is
//! alive in this daemon (its process handle and agent connection). Whoever holds a slot's lock
//! owns its [`Live`]; operations on one VM never interleave, while different VMs proceed in
//! parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::records::Records;
use super::{VmError, VmSettings};
use crate::guest::client::AgentClient;
use crate::model::VmStatus;
use crate::vmm::VmHandle;

/// A VM's live parts. `generation` changes whenever the process does, so an exit watch that
/// fires late for an older process changes nothing.
#[derive(Default)]
pub(super) struct Live {
    pub handle: Option<VmHandle>,
    pub agent: Option<Arc<AgentClient>>,
    generation: u64,
    /// Health checks missed in a row by this process's agent.
    missed_health: u32,
}

impl Live {
    /// Puts a process in place under a new generation, which it returns.
    pub(super) fn install(&mut self, handle: VmHandle, agent: Option<Arc<AgentClient>>) -> u64 {
        self.generation += 1;
        self.missed_health = 0;
        self.handle = Some(handle);
        self.agent = agent;
        self.generation
    }

    /// Whether the process of `generation` is still the one in place.
    pub(super) fn holds(&self, generation: u64) -> bool {
        self.generation == generation && self.handle.is_some()
    }

    /// Counts a health check of the process in place: answered, or missed.
    pub(super) fn note_health(&mut self, answered: bool) {
        if self.handle.is_none() {
            return;
        }
        self.missed_health = if answered {
            0
        } else {
            self.missed_health.saturating_add(1)
        };
    }

    pub(super) fn missed_health(&self) -> u32 {
        self.missed_health
    }
}

pub(super) type Slot = Arc<tokio::sync::Mutex<Live>>;

pub(super) struct Slots {
    slots: Mutex<HashMap<String, Slot>>,
    /// A reconnect presents the VM's recorded agent token.
    records: Arc<Records>,
    settings: Arc<VmSettings>,
}

impl Slots {
    pub(super) fn new(records: Arc<Records>, settings: Arc<VmSettings>) -> Slots {
        Slots {
            slots: Mutex::new(HashMap::new()),
            records,
            settings,
        }
    }

    pub(super) fn slot(&self, vm_id: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(vm_id.to_string()).or_default().clone()
    }

    pub(super) fn all(&self) -> Vec<(String, Slot)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub(super) fn forget(&self, vm_id: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(vm_id);
    }

    /// The connected agent of a running VM, reconnecting if the connection dropped.
    pub(super) async fn agent(&self, vm_id: &str) -> Result<Arc<AgentClient>, VmError> {
        let slot = self.slot(vm_id);
        let mut live = slot.lock().await;
        if let Some(agent) = live.agent.as_ref().filter(|a| a.is_connected()) {
            return Ok(agent.clone());
        }
        let unavailable = |reason: String| VmError::AgentUnavailable {
            id: vm_id.to_string(),
            reason,
        };
        let vm = self.records.get(vm_id).await?;
        let endpoint = match &live.handle {
            Some(handle) => handle.agent.clone(),
            // Stopped since the caller saw it running (a hibernate or destroy in between): a
            // state the caller can see and act on, not a failure of the daemon.
            None if vm.status != VmStatus::Running => {
                return Err(VmError::NotRunning {
                    id: vm.id,
                    status: vm.status,
                });
            }
            None => return Err(unavailable("the VM has no process".into())),
        };
        let agent = AgentClient::connect(&endpoint, &vm.agent_token, self.settings.agent_timeout)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let agent = Arc::new(agent);
        live.agent = Some(agent.clone());
        Ok(agent)
    }
}
