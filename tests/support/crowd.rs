//! A crowded store: many users, their VMs and their prompts, written through the daemon's own
//! write paths (so the counters and indexes are as the daemon keeps them), in large
//! transactions so that 100,000 prompts take seconds, not a commit each.

use master_controller::model::{
    Plan, Prompt, PromptStatus, User, UserStatus, Vm, VmStatus, VmType, tables,
};
use master_controller::providers;
use master_controller::store::{Store, StoreError};
use master_controller::sync::put_mirrored;

/// Prompts written per transaction.
const BATCH: usize = 5_000;

/// A finished prompt of `user_id`, created at `created_at_ms`, with an answer of a realistic
/// size.
pub fn prompt(id: &str, user_id: &str, status: PromptStatus, created_at_ms: i64) -> Prompt {
    Prompt {
        id: id.into(),
        user_id: user_id.into(),
        vm_id: None,
        provider: providers::CODEX,
        status,
        created_at_ms,
        started_at_ms: Some(created_at_ms + 100),
        completed_at_ms: (status != PromptStatus::Streaming).then_some(created_at_ms + 1000),
        exit_code: None,
        error: None,
        version: 1,
        model: None,
        prompt_bytes: 5,
        response_text: "a kept answer".into(),
        response_truncated: false,
        first_content_ms: None,
        duration_ms: None,
        usage_json: None,
        conversation_id: None,
    }
}

fn user(id: &str, now: i64) -> User {
    User {
        id: id.into(),
        email: format!("{id}@crowd.example.com"),
        supabase_auth_id: None,
        plan: Plan::Free,
        status: UserStatus::Active,
        decodo_port: None,
        prompt_count: 0,
        created_at_ms: now,
        updated_at_ms: now,
        last_active_at_ms: None,
        version: 1,
    }
}

fn vm(id: &str, user_id: &str, status: VmStatus, now: i64) -> Vm {
    Vm {
        id: id.into(),
        user_id: user_id.into(),
        vm_type: VmType::Cli,
        status,
        ip_address: None,
        tap_device: None,
        vcpus: 1,
        memory_mib: 256,
        created_at_ms: now,
        updated_at_ms: now,
        last_heartbeat_ms: None,
        hibernated_at_ms: (status == VmStatus::Hibernated).then_some(now),
        version: 1,
        mac_address: None,
        pid: None,
        agent_token: "crowd".into(),
        agent: None,
        needs_readdress: false,
        error: None,
        image: None,
        golden: None,
    }
}

/// Stores prompts as the prompt service does: record, counters, index and outbox entry
/// together.
pub async fn put_prompts(store: &Store, prompts: Vec<Prompt>) {
    for batch in prompts.chunks(BATCH) {
        let batch = batch.to_vec();
        store
            .write(move |tx| {
                for p in &batch {
                    put_mirrored(tx, tables::PROMPTS, &p.id, p)?;
                    master_controller::prompts::counts::change(tx, None, Some(p))?;
                }
                Ok::<_, StoreError>(())
            })
            .await
            .expect("store prompts");
    }
}

/// Stores a VM record of `user_id` as the VM manager's ledger does (record, counters, index).
pub async fn put_vm(store: &Store, vm_id: &str, user_id: &str, status: VmStatus) {
    let vm = vm(vm_id, user_id, status, master_controller::model::now_ms());
    store
        .write(move |tx| {
            put_mirrored(tx, tables::VMS, &vm.id, &vm)?;
            master_controller::vms::by_user::add(tx, &vm)?;
            Ok::<_, StoreError>(())
        })
        .await
        .expect("store VM");
}

/// Adds `users` users, each with a VM (most of them hibernated, some destroyed) and, all
/// together, `prompts` prompts spread evenly over them. `progress` hears a line per batch.
pub async fn crowd(store: &Store, users: usize, prompts: usize, progress: &dyn Fn(&str)) {
    let now = master_controller::model::now_ms();
    let ids: Vec<String> = (0..users).map(|i| format!("crowd-{i:06}")).collect();
    let written = ids.clone();
    store
        .write(move |tx| {
            for (i, id) in written.iter().enumerate() {
                put_mirrored(tx, tables::USERS, id, &user(id, now))?;
                let status = if i % 10 == 0 {
                    VmStatus::Destroyed
                } else {
                    VmStatus::Hibernated
                };
                let vm = vm(&format!("vm-{id}"), id, status, now);
                put_mirrored(tx, tables::VMS, &vm.id, &vm)?;
                master_controller::vms::by_user::add(tx, &vm)?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .expect("store users");
    progress(&format!("{users} users and their VMs stored"));
    let mut stored = 0;
    while stored < prompts {
        let batch: Vec<Prompt> = (stored..prompts.min(stored + BATCH))
            .map(|n| {
                let owner = &ids[n % ids.len().max(1)];
                prompt(
                    &format!("crowd-prompt-{n:07}"),
                    owner,
                    PromptStatus::Completed,
                    now - (prompts - n) as i64,
                )
            })
            .collect();
        stored += batch.len();
        put_prompts(store, batch).await;
        progress(&format!("{stored} of {prompts} prompts stored"));
    }
}
