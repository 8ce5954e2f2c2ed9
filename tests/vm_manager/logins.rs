//! A login relayed from a real guest: the test image's scripted `claude auth login` (the login
//! screen of `tests/support/fake-login-cli`) under a PTY through the agent, the credential
//! sealed in the vault, written into the guest before a prompt, and the refresh the CLI made
//! during the prompt captured back.

use std::time::{Duration, Instant};

use master_controller::model::tables;
use master_controller::model::{Credential, credential_key};
use master_controller::providers;
use master_controller::store;
use serde_json::{Value, json};

use crate::support::daemon_proc::{LISTEN, SERVICE_TOKEN};
use crate::support::sse::SseStream;
use crate::world::{World, destroy, id_of, open_vault};

async fn session(world: &World, id: &str) -> Value {
    world.daemon.auth_session(id).await
}

async fn wait_for(world: &World, id: &str, status: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let now = session(world, id).await;
        if now["status"] == status {
            return now;
        }
        let terminal = ["completed", "failed", "cancelled", "timeout"]
            .contains(&now["status"].as_str().unwrap_or_default());
        assert!(
            !terminal && Instant::now() < deadline,
            "waited for {status}: {now:?}\n{}",
            world.daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start(world: &World, user: &str) -> (u16, Value) {
    let reply = world
        .daemon
        .call(
            "POST",
            "/api/auth/start",
            SERVICE_TOKEN,
            Some(json!({"userId": user, "provider": "claude_code"})),
        )
        .await;
    (reply.status, reply.json)
}

async fn post_code(world: &World, id: &str, code: &str) -> u16 {
    world
        .daemon
        .call(
            "POST",
            &format!("/api/auth/session/{id}/code"),
            SERVICE_TOKEN,
            Some(json!({ "code": code })),
        )
        .await
        .status
}

fn code_for(session: &Value, code: &str) -> String {
    let url = session["authUrl"].as_str().expect("authUrl");
    let state = url.split("state=").nth(1).expect("state");
    format!("{code}#{state}")
}

/// Neither the login's process nor its HOME is left in the guest.
async fn assert_guest_clean(world: &World, vm_id: &str) {
    let (_, left) = world
        .exec(
            vm_id,
            "ls -d /tmp/mc-login-* /run/mc/secrets/login-* 2>/dev/null; grep -l '[f]ake-login-cli' /proc/[0-9]*/cmdline 2>/dev/null || true",
        )
        .await;
    assert_eq!(left.trim(), "", "left in the guest");
}

pub async fn a_login_in_a_real_guest(world: &mut World) {
    let user = world.new_user().await;
    // The login creates the VM: "it makes sure the VM is running".
    let (status, started) = start(world, &user).await;
    assert_eq!(status, 202, "{started:?}");
    let id = started["sessionId"].as_str().expect("id").to_string();
    let (again, refused) = start(world, &user).await;
    assert_eq!(
        again, 409,
        "a second start while one is active: {refused:?}"
    );
    assert_eq!(refused["sessionId"], id.as_str());
    let waiting = wait_for(world, &id, "awaiting_user", Duration::from_secs(120)).await;
    assert!(
        waiting["authUrl"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://claude.com/cai/oauth/authorize?")),
        "{waiting:?}"
    );
    let vm_id = waiting_vm(world, &user).await;
    // A wrong code ends in failed, with the CLI's message.
    assert_eq!(
        post_code(world, &id, &code_for(&waiting, "wrong-code")).await,
        202
    );
    let failed = wait_for(world, &id, "failed", Duration::from_secs(60)).await;
    assert_eq!(
        failed["error"],
        "Login failed: Request failed with status code 400"
    );
    assert_guest_clean(world, &vm_id).await;

    // Codex is not in the test image: the session says so.
    let reply = world
        .daemon
        .call(
            "POST",
            "/api/auth/start",
            SERVICE_TOKEN,
            Some(json!({"userId": user, "provider": "codex"})),
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.json);
    let codex = reply.json["sessionId"].as_str().expect("id").to_string();
    let failed = wait_for(world, &codex, "failed", Duration::from_secs(60)).await;
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("the codex CLI cannot start in the VM")),
        "{failed:?}"
    );

    // Cancel.
    let (_, started) = start(world, &user).await;
    let id = started["sessionId"].as_str().expect("id").to_string();
    wait_for(world, &id, "awaiting_user", Duration::from_secs(60)).await;
    let cancelled = world
        .daemon
        .call(
            "POST",
            &format!("/api/auth/session/{id}/cancel"),
            SERVICE_TOKEN,
            None,
        )
        .await;
    assert_eq!(
        cancelled.json["status"], "cancelled",
        "{:?}",
        cancelled.json
    );
    assert_guest_clean(world, &vm_id).await;

    // Timeout (the daemon here runs with a 20 s idle timeout).
    let (_, started) = start(world, &user).await;
    let id = started["sessionId"].as_str().expect("id").to_string();
    wait_for(world, &id, "awaiting_user", Duration::from_secs(60)).await;
    wait_for(world, &id, "timeout", Duration::from_secs(60)).await;
    assert_guest_clean(world, &vm_id).await;

    // The right code: completed and sealed; not left in the guest.
    let (_, started) = start(world, &user).await;
    let id = started["sessionId"].as_str().expect("id").to_string();
    let waiting = wait_for(world, &id, "awaiting_user", Duration::from_secs(60)).await;
    assert_eq!(
        post_code(world, &id, &code_for(&waiting, "good-code-guest")).await,
        202
    );
    wait_for(world, &id, "completed", Duration::from_secs(60)).await;
    assert_guest_clean(world, &vm_id).await;
    let (_, file) = world
        .exec(
            &vm_id,
            "ls -la /root/.claude/.credentials.json 2>/dev/null; true",
        )
        .await;
    assert_eq!(file.trim(), "", "left in the HOME");

    // A prompt: the credential is staged first (on the tmpfs, linked from the HOME), the
    // CLI refreshes it, the refresh is captured back into the vault, and the file is removed.
    let response = reqwest::Client::new()
        .post(format!("http://{LISTEN}/api/prompts/execute"))
        .bearer_auth(SERVICE_TOKEN)
        .json(&json!({"userId": user, "provider": "claude_code", "prompt": "hi"}))
        .send()
        .await
        .expect("execute");
    let frames = SseStream::new(response).collect().await;
    let stages: Vec<&str> = frames
        .iter()
        .filter(|f| f.data["kind"] == "progress")
        .filter_map(|f| f.data["stage"].as_str())
        .collect();
    assert!(stages.contains(&"credential_written"), "{stages:?}");
    assert!(stages.contains(&"credential_refreshed"), "{stages:?}");
    assert_eq!(frames.last().map(|f| f.kind()), Some("done"), "{frames:?}");
    let (_, left) = world
        .exec(
            &vm_id,
            "ls -la /root/.claude/.credentials.json /run/mc/secrets/claude_code 2>/dev/null; true",
        )
        .await;
    assert!(
        !left.contains(".credentials.json"),
        "left in the guest: {left}"
    );

    // With the daemon stopped: the vault holds the refreshed file; no token is in the clear in
    // the state file or in the daemon's log.
    world.daemon.stop().await;
    let data_dir = world.daemon.data_dir.clone();
    let credential_user = user.clone();
    tokio::task::spawn_blocking(move || {
        let (store, vault) = open_vault(&data_dir);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let key = credential_key(&credential_user, providers::CLAUDE_CODE);
        let credential: Credential = runtime
            .block_on(store.read(move |tx| {
                store::get::<Credential, _>(&tx.open_table(tables::CREDENTIALS)?, &key)
            }))
            .expect("read")
            .expect("stored");
        let plaintext = vault
            .unseal(&credential.key_id, &credential.ciphertext)
            .expect("unseal");
        let plaintext = String::from_utf8_lossy(&plaintext);
        assert!(
            plaintext.contains("sk-ant-oat01-refreshed-"),
            "the refresh is in the vault"
        );
        assert!(
            plaintext.contains("sk-ant-ort01-refreshed-"),
            "the refresh is in the vault"
        );
    })
    .await
    .expect("vault check");
    let state = std::fs::read(world.daemon.data_dir.join("state.redb")).expect("state file");
    let log = std::fs::read(world.daemon.data_dir.join("daemon.log")).expect("log");
    for needle in ["sk-ant-oat01-", "sk-ant-ort01-", "fake-guest", "refreshed-"] {
        for (name, bytes) in [("state.redb", &state), ("daemon.log", &log)] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} found in {name}"
            );
        }
    }
    world.daemon.start(&[]).await;
    destroy(world, &user).await;
}

async fn waiting_vm(world: &World, user: &str) -> String {
    let (status, vm) = world.user_vm(user, "", "GET").await;
    assert_eq!(status, 200, "{vm:?}");
    id_of(&vm)
}
