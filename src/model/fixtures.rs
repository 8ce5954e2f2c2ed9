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

/// A fresh store in a temporary directory holding an active user under each id.
pub async fn store_with_users(ids: &[&str]) -> (tempfile::TempDir, crate::store::Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = crate::store::Store::open(dir.path()).await.expect("store");
    for id in ids {
        let user = User {
            status: UserStatus::Active,
            ..self::user(id)
        };
        store
            .write(move |tx| crate::sync::put_mirrored(tx, super::tables::USERS, &user.id, &user))
            .await
            .expect("user");
    }
    (dir, store)
}
