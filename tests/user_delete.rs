//! `DELETE /api/users/:userId` through the daemon: who may call it, the user's VM destroyed
//! through the manager (the fake hypervisor of `tests/support/fake_vmm.rs`), every record of
//! the user gone with a tombstone in the outbox, the email and address free again, a busy VM
//! refusing the delete, and the user's upstream port released while another user's stays.

mod support;

use master_controller::model::tables;
use master_controller::model::{
    AuthSession, AuthSessionStatus, Credential, OutboxEntry, PortLease, Prompt, PromptStatus, User,
    VmIntent, VmOp, credential_key, now_ms,
};
use master_controller::providers;
use master_controller::store::{self, StoreError};
use redb::ReadableTable;
use support::fake_vmm::daemon_with_fake_vms;
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};

async fn create_vm(d: &TestDaemon, user: &str) -> (String, String) {
    let reply = d
        .call(
            "POST",
            &format!("/api/users/{user}/vm"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.json);
    let vm = reply.json["vmId"].as_str().expect("vmId").to_string();
    let ip = reply.json["ipAddress"].as_str().expect("ip").to_string();
    (vm, ip)
}

fn prompt(id: &str, user_id: &str) -> Prompt {
    Prompt {
        id: id.to_string(),
        user_id: user_id.to_string(),
        vm_id: None,
        provider: providers::CODEX,
        status: PromptStatus::Completed,
        created_at_ms: now_ms(),
        started_at_ms: None,
        completed_at_ms: None,
        exit_code: Some(0),
        error: None,
        version: 1,
        model: None,
        prompt_bytes: 5,
        response_text: "hello".into(),
        response_truncated: false,
        first_content_ms: None,
        duration_ms: None,
        usage_json: None,
        conversation_id: None,
    }
}

fn session(id: &str, user_id: &str) -> AuthSession {
    AuthSession {
        id: id.to_string(),
        user_id: user_id.to_string(),
        provider: providers::CLAUDE_CODE,
        status: AuthSessionStatus::AwaitingUser,
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
        error: None,
        version: 1,
        vm_id: None,
        auth_url: None,
        device_code: None,
        verification_url: None,
        instructions: None,
        last_activity_ms: now_ms(),
        completed_at_ms: None,
        rotation: false,
    }
}

fn credential(user_id: &str) -> Credential {
    Credential {
        id: format!("cred-{user_id}"),
        user_id: user_id.to_string(),
        provider: providers::CLAUDE_CODE,
        // Never opened here: the delete removes it without the vault.
        ciphertext: vec![1, 2, 3],
        key_id: "test-key".into(),
        is_valid: true,
        reason: None,
        expires_at_ms: None,
        last_verified_ms: None,
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
        version: 1,
    }
}

/// Gives `user_id` a prompt, a login in progress (with its active-session entry) and a
/// credential, written as the services would.
async fn seed_records(d: &TestDaemon, user_id: &str) {
    let user_id = user_id.to_string();
    d.ctx
        .store
        .write(move |tx| {
            let p = prompt(&format!("prompt-{user_id}"), &user_id);
            store::put(&mut tx.open_table(tables::PROMPTS)?, &p.id, &p)?;
            let s = session(&format!("session-{user_id}"), &user_id);
            store::put(&mut tx.open_table(tables::AUTH_SESSIONS)?, &s.id, &s)?;
            tx.open_table(tables::ACTIVE_AUTH_SESSIONS)?
                .insert(credential_key(&user_id, s.provider).as_str(), s.id.as_str())?;
            let c = credential(&user_id);
            store::put(
                &mut tx.open_table(tables::CREDENTIALS)?,
                &credential_key(&user_id, c.provider),
                &c,
            )?;
            Ok::<_, StoreError>(())
        })
        .await
        .expect("seed records");
}

/// What the store holds of a user: (VMs, prompts, sessions, active entries, credentials,
/// IP leases of `vm_id`).
async fn holdings(d: &TestDaemon, user_id: &str, vm_id: &str) -> [usize; 6] {
    let (user_id, vm_id) = (user_id.to_string(), vm_id.to_string());
    d.ctx
        .store
        .read(move |tx| {
            let vms: Vec<master_controller::model::Vm> = store::all(&tx.open_table(tables::VMS)?)?;
            let prompts: Vec<Prompt> = store::all(&tx.open_table(tables::PROMPTS)?)?;
            let sessions: Vec<AuthSession> = store::all(&tx.open_table(tables::AUTH_SESSIONS)?)?;
            let mut active = 0;
            for entry in tx.open_table(tables::ACTIVE_AUTH_SESSIONS)?.iter()? {
                if entry?.0.value().starts_with(&format!("{user_id}:")) {
                    active += 1;
                }
            }
            let credentials: Vec<Credential> = store::all(&tx.open_table(tables::CREDENTIALS)?)?;
            let leases: Vec<master_controller::model::IpLease> =
                store::all(&tx.open_table(tables::IP_LEASES)?)?;
            Ok::<_, StoreError>([
                vms.iter().filter(|v| v.user_id == user_id).count(),
                prompts.iter().filter(|p| p.user_id == user_id).count(),
                sessions.iter().filter(|s| s.user_id == user_id).count(),
                active,
                credentials.iter().filter(|c| c.user_id == user_id).count(),
                leases.iter().filter(|l| l.vm_id == vm_id).count(),
            ])
        })
        .await
        .expect("read holdings")
}

async fn outbox_entry(d: &TestDaemon, key: &str) -> Option<OutboxEntry> {
    let key = key.to_string();
    d.ctx
        .store
        .read(move |tx| store::get(&tx.open_table(tables::OUTBOX)?, &key))
        .await
        .expect("read outbox")
}

#[tokio::test]
async fn delete_needs_the_service_or_admin_token_and_a_known_user() {
    let d = TestDaemon::start().await;
    let user = d.create_user("gated@example.com").await;
    let path = format!("/api/users/{user}");
    let anonymous = d.call("DELETE", &path, None, None).await;
    assert_eq!(anonymous.status, 401, "{:?}", anonymous.json);
    let own_token = d.user_token(&user).await;
    let own = d.call("DELETE", &path, Some(&own_token), None).await;
    assert_eq!(own.status, 403, "a user cannot delete themselves");
    assert_eq!(own.error_code(), "forbidden");
    let unknown = d
        .call("DELETE", "/api/users/nobody", Some(SERVICE_TOKEN), None)
        .await;
    assert_eq!(unknown.status, 404, "{:?}", unknown.json);
    assert_eq!(unknown.error_code(), "user_not_found");
    let still = d.call("GET", &path, Some(SERVICE_TOKEN), None).await;
    assert_eq!(still.status, 200, "refused deletes change nothing");

    // With VMs off and nothing owned, the admin token deletes too.
    let deleted = d.call("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.json);
    assert_eq!(
        deleted.json,
        serde_json::json!({
            "userId": user, "deleted": true, "vmsDestroyed": 0, "releasedPort": null
        })
    );
    let again = d.call("DELETE", &path, Some(SERVICE_TOKEN), None).await;
    assert_eq!(again.status, 404);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_destroys_their_vm_and_removes_everything_they_own() {
    let (d, hypervisor, netlink) = daemon_with_fake_vms(&[]).await;
    let user = d.create_user("leaving@example.com").await;
    let other = d.create_user("staying@example.com").await;
    let (vm, ip) = create_vm(&d, &user).await;
    assert!(hypervisor.is_running(&vm));
    seed_records(&d, &user).await;
    seed_records(&d, &other).await;
    assert_eq!(holdings(&d, &user, &vm).await, [1, 1, 1, 1, 1, 1]);
    let conversations = &d.ctx.conversations;
    let mut started = Vec::new();
    for owner in [&user, &other] {
        let c = conversations
            .start(owner, providers::CODEX, "hello", "")
            .await
            .expect("conversation");
        conversations
            .add_prompt(&c.id, &format!("prompt-{owner}"))
            .await
            .expect("turn");
        started.push(c.id);
    }

    let deleted = d
        .call(
            "DELETE",
            &format!("/api/users/{user}"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.json);
    assert_eq!(deleted.json["userId"], user.as_str());
    assert_eq!(deleted.json["deleted"], true);
    assert_eq!(deleted.json["vmsDestroyed"], 1);
    assert!(deleted.json["releasedPort"].is_null());

    // The VM went the normal way: process killed, tap and directory removed, lease freed.
    assert!(
        !hypervisor.is_running(&vm),
        "the fake hypervisor saw the kill"
    );
    assert!(netlink.taps.lock().expect("taps").is_empty());
    assert!(!d.data_dir.path().join("vms").join(&vm).exists());
    assert_eq!(holdings(&d, &user, &vm).await, [0; 6]);
    assert_eq!(
        holdings(&d, &other, "none").await,
        [0, 1, 1, 1, 1, 0],
        "another user's records stay"
    );
    let gone = d
        .call(
            "GET",
            &format!("/api/users/{user}"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(gone.status, 404);
    let vm_gone = d
        .call("GET", &format!("/api/vms/{vm}"), Some(SERVICE_TOKEN), None)
        .await;
    assert_eq!(vm_gone.status, 404, "{:?}", vm_gone.json);

    // Supabase gets a tombstone for every mirrored record removed.
    let credential_key = credential_key(&user, providers::CLAUDE_CODE);
    for key in [
        format!("users/{user}"),
        format!("vms/{vm}"),
        format!("prompts/prompt-{user}"),
        format!("auth_sessions/session-{user}"),
        format!("credentials/{credential_key}"),
        format!("conversations/{}", started[0]),
    ] {
        let entry = outbox_entry(&d, &key)
            .await
            .unwrap_or_else(|| panic!("no outbox entry {key}"));
        assert_eq!(entry.entity_version, u64::MAX, "{key} is a tombstone");
    }
    assert!(conversations.get(&started[0]).await.is_err());
    let (kept, _) = conversations.list(&other, None, 10).await.expect("list");
    assert_eq!(kept.len(), 1, "another user's conversation stays");
    assert_eq!(kept[0].turns, 1);
    let user_tombstone = outbox_entry(&d, &format!("users/{user}")).await;
    assert_eq!(user_tombstone.map(|e| e.entity_id), Some(user.clone()));

    // The email and the address are free again.
    let returning = d.create_user("leaving@example.com").await;
    assert_ne!(returning, user);
    let (_, new_ip) = create_vm(&d, &returning).await;
    assert_eq!(new_ip, ip, "the lowest free address is the one released");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_operation_in_progress_stops_the_delete() {
    let (d, hypervisor, _netlink) = daemon_with_fake_vms(&[]).await;
    let user = d.create_user("busy@example.com").await;
    let (vm, ip) = create_vm(&d, &user).await;
    seed_records(&d, &user).await;
    // An operation the manager has recorded and not finished, as a hibernate mid-way leaves.
    let intent = VmIntent {
        vm_id: vm.clone(),
        op: VmOp::Hibernate,
        ip: Some(ip),
        tap: String::new(),
        dir: String::new(),
        started_at_ms: now_ms(),
    };
    d.ctx
        .store
        .write(move |tx| {
            store::put(
                &mut tx.open_table(tables::VM_INTENTS)?,
                &intent.vm_id,
                &intent,
            )?;
            Ok::<_, StoreError>(())
        })
        .await
        .expect("intent");

    let path = format!("/api/users/{user}");
    let refused = d.call("DELETE", &path, Some(SERVICE_TOKEN), None).await;
    assert_eq!(refused.status, 409, "{:?}", refused.json);
    assert_eq!(refused.error_code(), "vm_busy");
    assert!(hypervisor.is_running(&vm), "nothing was destroyed");
    assert_eq!(holdings(&d, &user, &vm).await, [1, 1, 1, 1, 1, 1]);
    let still = d.call("GET", &path, Some(SERVICE_TOKEN), None).await;
    assert_eq!(still.status, 200, "nothing was deleted");

    let vm_id = vm.clone();
    d.ctx
        .store
        .write(move |tx| {
            tx.open_table(tables::VM_INTENTS)?.remove(vm_id.as_str())?;
            Ok::<_, StoreError>(())
        })
        .await
        .expect("finish the operation");
    let deleted = d.call("DELETE", &path, Some(SERVICE_TOKEN), None).await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.json);
    assert!(!hypervisor.is_running(&vm));
    d.shutdown().await;
}

#[tokio::test]
async fn the_users_upstream_port_is_released_and_no_one_elses() {
    let d = TestDaemon::start().await;
    let leaving = d.create_user("ported@example.com").await;
    let staying = d.create_user("kept@example.com").await;
    let ports = [(leaving.clone(), 10_001_u16), (staying.clone(), 10_002)];
    d.ctx
        .store
        .write(move |tx| {
            let mut users = tx.open_table(tables::USERS)?;
            let mut leases = tx.open_table(tables::PORT_LEASES)?;
            for (id, port) in &ports {
                let mut user: User = store::get(&users, id)?.expect("user");
                user.decodo_port = Some(*port);
                store::put(&mut users, id, &user)?;
                let lease = PortLease {
                    port: *port,
                    user_id: id.clone(),
                    leased_at_ms: now_ms(),
                    health: None,
                };
                leases.insert(*port, store::Stored::encode(&lease)?)?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .expect("lease ports");

    let deleted = d
        .call(
            "DELETE",
            &format!("/api/users/{leaving}"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.json);
    assert_eq!(deleted.json["releasedPort"], 10_001);
    let leased: Vec<(u16, String)> = d
        .ctx
        .store
        .read(|tx| {
            let mut all = Vec::new();
            for entry in tx.open_table(tables::PORT_LEASES)?.iter()? {
                let (port, lease) = entry?;
                all.push((port.value(), lease.value().decode()?.user_id));
            }
            Ok::<_, StoreError>(all)
        })
        .await
        .expect("read leases");
    assert_eq!(leased, vec![(10_002, staying)]);
    d.shutdown().await;
}
