use serde::{Deserialize, Serialize};

use super::{named_enum, transitions};
use crate::store::Record;

named_enum!(VmStatus, "VM status" {
    Creating => "creating",
    Running => "running",
    Hibernated => "hibernated",
    Stopping => "stopping",
    Stopped => "stopped",
    Failed => "failed",
    Destroyed => "destroyed",
});

transitions!(VmStatus, "vm" {
    Creating => [Running, Failed, Stopping, Destroyed],
    Running => [Hibernated, Stopping, Failed],
    Hibernated => [Running, Stopping, Failed, Destroyed],
    Stopping => [Stopped, Failed, Destroyed],
    Stopped => [Running, Destroyed],
    Failed => [Stopping, Destroyed],
    Destroyed => [],
});

named_enum!(VmType, "VM type" {
    Cli => "cli",
    Browser => "browser",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    pub id: String,
    pub user_id: String,
    pub vm_type: VmType,
    pub status: VmStatus,
    pub ip_address: Option<String>,
    pub tap_device: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_heartbeat_ms: Option<i64>,
    pub hibernated_at_ms: Option<i64>,
    pub version: u64,
}

impl Record for Vm {
    const KIND: &'static str = "vm";
    const VERSION: u16 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;

    #[test]
    fn destroyed_is_terminal() {
        for next in VmStatus::ALL {
            assert_eq!(
                VmStatus::Destroyed.can_transition_to(*next),
                *next == VmStatus::Destroyed
            );
        }
        assert!(VmStatus::Running.can_transition_to(VmStatus::Hibernated));
        assert!(!VmStatus::Creating.can_transition_to(VmStatus::Hibernated));
    }
}
