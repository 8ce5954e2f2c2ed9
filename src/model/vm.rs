use serde::{Deserialize, Serialize};

use super::{Status, named_enum, transitions};
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

/// What the agent reported at the last health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub boot_id: String,
    pub uptime_sec: f64,
    pub checked_at_ms: i64,
}

/// The guest image files a VM boots from, resolved to the version the configured paths named
/// when it was created. A hibernated VM resumes on these even after the configuration moves on
/// to a newer image: its memory holds the old kernel and the old root filesystem's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestImage {
    pub kernel: std::path::PathBuf,
    pub initrd: Option<std::path::PathBuf>,
    pub rootfs: Option<std::path::PathBuf>,
}

impl GuestImage {
    pub fn files(&self) -> impl Iterator<Item = &std::path::Path> {
        std::iter::once(self.kernel.as_path())
            .chain(self.initrd.as_deref())
            .chain(self.rootfs.as_deref())
    }
}

impl std::fmt::Display for GuestImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<String> = self.files().map(|p| p.display().to_string()).collect();
        f.write_str(&files.join(", "))
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
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
    pub mac_address: Option<String>,
    /// The hypervisor process while the VM runs.
    pub pid: Option<u32>,
    /// The per-VM secret the agent expects; never leaves the host.
    pub agent_token: String,
    pub agent: Option<AgentInfo>,
    /// The IP was reclaimed while hibernated: resume gives the guest a new one.
    pub needs_readdress: bool,
    /// Why the VM failed, for operators.
    pub error: Option<String>,
    /// The image it was created on (`None`: a record from before images were recorded, which
    /// runs on the configured one).
    pub image: Option<GuestImage>,
    /// The golden snapshot it was restored from, as `<path>@<built at ms>`.
    pub golden: Option<String>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("status", &self.status)
            .field("ip_address", &self.ip_address)
            .field("tap_device", &self.tap_device)
            .field("pid", &self.pid)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// A CLI VM counts against the user's one-VM limit and the pool until it is destroyed or
    /// has failed.
    pub fn is_live(&self) -> bool {
        !matches!(self.status, VmStatus::Destroyed | VmStatus::Failed)
    }

    /// Sets the status (checked against the transition table) and bumps the version.
    pub fn set_status(&mut self, next: VmStatus) -> Result<(), super::ModelError> {
        self.status.transition(next)?;
        self.touch();
        Ok(())
    }

    pub fn touch(&mut self) {
        self.updated_at_ms = super::now_ms();
        self.version += 1;
    }
}

/// The second stored shape, before VMs recorded their image.
#[derive(Deserialize)]
struct VmV2 {
    id: String,
    user_id: String,
    vm_type: VmType,
    status: VmStatus,
    ip_address: Option<String>,
    tap_device: Option<String>,
    vcpus: u32,
    memory_mib: u32,
    created_at_ms: i64,
    updated_at_ms: i64,
    last_heartbeat_ms: Option<i64>,
    hibernated_at_ms: Option<i64>,
    version: u64,
    mac_address: Option<String>,
    pid: Option<u32>,
    agent_token: String,
    agent: Option<AgentInfo>,
    needs_readdress: bool,
    error: Option<String>,
}

/// The first stored shape, before the manager existed.
#[derive(Deserialize)]
struct VmV1 {
    id: String,
    user_id: String,
    vm_type: VmType,
    status: VmStatus,
    ip_address: Option<String>,
    tap_device: Option<String>,
    vcpus: u32,
    memory_mib: u32,
    created_at_ms: i64,
    updated_at_ms: i64,
    last_heartbeat_ms: Option<i64>,
    hibernated_at_ms: Option<i64>,
    version: u64,
}

impl Record for Vm {
    const KIND: &'static str = "vm";
    const VERSION: u16 = 3;

    fn upgrade(version: u16, payload: &[u8]) -> Result<Self, crate::store::StoreError> {
        if version == 2 {
            let old: VmV2 = crate::store::codec::decode_payload::<VmV2, Vm>(payload)?;
            return Ok(Vm {
                id: old.id,
                user_id: old.user_id,
                vm_type: old.vm_type,
                status: old.status,
                ip_address: old.ip_address,
                tap_device: old.tap_device,
                vcpus: old.vcpus,
                memory_mib: old.memory_mib,
                created_at_ms: old.created_at_ms,
                updated_at_ms: old.updated_at_ms,
                last_heartbeat_ms: old.last_heartbeat_ms,
                hibernated_at_ms: old.hibernated_at_ms,
                version: old.version,
                mac_address: old.mac_address,
                pid: old.pid,
                agent_token: old.agent_token,
                agent: old.agent,
                needs_readdress: old.needs_readdress,
                error: old.error,
                image: None,
                golden: None,
            });
        }
        if version != 1 {
            return Err(crate::store::codec::unknown_version::<Self>(version));
        }
        let old: VmV1 = crate::store::codec::decode_payload::<VmV1, Vm>(payload)?;
        Ok(Vm {
            id: old.id,
            user_id: old.user_id,
            vm_type: old.vm_type,
            status: old.status,
            ip_address: old.ip_address,
            tap_device: old.tap_device,
            vcpus: old.vcpus,
            memory_mib: old.memory_mib,
            created_at_ms: old.created_at_ms,
            updated_at_ms: old.updated_at_ms,
            last_heartbeat_ms: old.last_heartbeat_ms,
            hibernated_at_ms: old.hibernated_at_ms,
            version: old.version,
            mac_address: None,
            pid: None,
            agent_token: String::new(),
            agent: None,
            needs_readdress: false,
            error: None,
            image: None,
            golden: None,
        })
    }
}

named_enum!(VmOp, "VM operation" {
    Create => "create",
    Hibernate => "hibernate",
    Resume => "resume",
    Destroy => "destroy",
});

/// A multi-step operation in flight, written with its reservations before the host is touched,
/// so that reconcile can finish or roll it back after a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmIntent {
    pub vm_id: String,
    pub op: VmOp,
    /// The address reserved for (or held by) the VM during the operation.
    pub ip: Option<String>,
    pub tap: String,
    pub dir: String,
    pub started_at_ms: i64,
}

impl Record for VmIntent {
    const KIND: &'static str = "vm_intent";
    const VERSION: u16 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_record_upgrades() {
        #[derive(Serialize)]
        struct V1<'a> {
            id: &'a str,
            user_id: &'a str,
            vm_type: VmType,
            status: VmStatus,
            ip_address: Option<&'a str>,
            tap_device: Option<&'a str>,
            vcpus: u32,
            memory_mib: u32,
            created_at_ms: i64,
            updated_at_ms: i64,
            last_heartbeat_ms: Option<i64>,
            hibernated_at_ms: Option<i64>,
            version: u64,
        }
        let old = V1 {
            id: "vm-1",
            user_id: "u-1",
            vm_type: VmType::Cli,
            status: VmStatus::Hibernated,
            ip_address: Some("192.168.100.9"),
            tap_device: None,
            vcpus: 2,
            memory_mib: 512,
            created_at_ms: 1,
            updated_at_ms: 2,
            last_heartbeat_ms: None,
            hibernated_at_ms: Some(3),
            version: 4,
        };
        let mut bytes = vec![0xA7, 1, 0];
        bytes.extend(bincode::serde::encode_to_vec(&old, bincode::config::standard()).unwrap());
        let vm: Vm = crate::store::codec::decode(&bytes).unwrap();
        assert_eq!(vm.status, VmStatus::Hibernated);
        assert_eq!(vm.ip_address.as_deref(), Some("192.168.100.9"));
        assert_eq!(vm.version, 4);
        assert!(vm.pid.is_none() && !vm.needs_readdress);
    }

    #[test]
    fn a_version_2_record_upgrades_without_an_image() {
        #[derive(Serialize)]
        struct V2<'a> {
            id: &'a str,
            user_id: &'a str,
            vm_type: VmType,
            status: VmStatus,
            ip_address: Option<&'a str>,
            tap_device: Option<&'a str>,
            vcpus: u32,
            memory_mib: u32,
            created_at_ms: i64,
            updated_at_ms: i64,
            last_heartbeat_ms: Option<i64>,
            hibernated_at_ms: Option<i64>,
            version: u64,
            mac_address: Option<&'a str>,
            pid: Option<u32>,
            agent_token: &'a str,
            agent: Option<AgentInfo>,
            needs_readdress: bool,
            error: Option<&'a str>,
        }
        let old = V2 {
            id: "vm-2",
            user_id: "u-2",
            vm_type: VmType::Cli,
            status: VmStatus::Hibernated,
            ip_address: Some("192.168.100.7"),
            tap_device: Some("mc-vm2"),
            vcpus: 1,
            memory_mib: 256,
            created_at_ms: 1,
            updated_at_ms: 2,
            last_heartbeat_ms: Some(3),
            hibernated_at_ms: Some(4),
            version: 5,
            mac_address: Some("06:00:00:00:00:07"),
            pid: None,
            agent_token: "token",
            agent: None,
            needs_readdress: true,
            error: None,
        };
        let mut bytes = vec![0xA7, 2, 0];
        bytes.extend(bincode::serde::encode_to_vec(&old, bincode::config::standard()).unwrap());
        let vm: Vm = crate::store::codec::decode(&bytes).unwrap();
        assert_eq!(vm.agent_token, "token");
        assert_eq!(vm.mac_address.as_deref(), Some("06:00:00:00:00:07"));
        assert!(vm.needs_readdress);
        assert_eq!((vm.image, vm.golden), (None, None));
    }

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
