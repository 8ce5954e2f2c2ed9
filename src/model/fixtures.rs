//! Records for unit tests: a plain user and a VM being created, to be changed field by field.

use super::{Plan, User, UserStatus, Vm, VmStatus, VmType};

pub fn user(id: &str) -> User {
    User {
        id: id.into(),
        email: format!("{id}@example.com"),
        supabase_auth_id: None,
        plan: Plan::Free,
        status: UserStatus::Created,
        decodo_port: None,
        prompt_count: 0,
        created_at_ms: 0,
        updated_at_ms: 0,
        last_active_at_ms: None,
        version: 1,
    }
}

pub fn vm(id: &str, user_id: &str) -> Vm {
    Vm {
        id: id.into(),
        user_id: user_id.into(),
        vm_type: VmType::Cli,
        status: VmStatus::Creating,
        ip_address: None,
        tap_device: Some(format!("tap-{id}")),
        vcpus: 1,
        memory_mib: 256,
        created_at_ms: 0,
        updated_at_ms: 0,
        last_heartbeat_ms: None,
        hibernated_at_ms: None,
        version: 1,
        mac_address: None,
        pid: None,
        agent_token: "t".into(),
        agent: None,
        needs_readdress: false,
        error: None,
        image: None,
        golden: None,
    }
}
