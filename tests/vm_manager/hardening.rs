//! Issue 15 attacks on a real guest: a stolen data disk must not hold a credential, and a
//! guest that floods its output or ignores a cancel must not cost the host memory or a request
//! that never ends.

use std::time::{Duration, Instant};

use master_controller::model::tables;
use master_controller::model::{Credential, credential_key, now_ms};
use master_controller::providers;
use master_controller::store::{self, StoreError};
use serde_json::{Value, json};

use crate::support::daemon_proc::{ADMIN_TOKEN, LISTEN, SERVICE_TOKEN};
use crate::world::{World, destroy, id_of, open_vault};

const HOME_FILE: &str = "/root/.claude/.credentials.json";

/// Seals `plaintext` as the user's Claude credential, with the daemon stopped (the store is
/// the daemon's while it runs).
async fn seed_credential(world: &mut World, user: &str, plaintext: String) {
    world.daemon.stop().await;
    let data_dir = world.daemon.data_dir.clone();
    let user = user.to_string();
    tokio::task::spawn_blocking(move || {
        let (store, vault) = open_vault(&data_dir);
        let sealed = vault.seal(plaintext.as_bytes()).expect("seal");
        let now = now_ms();
        let credential = Credential {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: user.clone(),
            provider: providers::CLAUDE_CODE,
            ciphertext: sealed.ciphertext,
            key_id: sealed.key_id,
            is_valid: true,
            reason: None,
            expires_at_ms: None,
            last_verified_ms: Some(now),
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime
            .block_on(store.write(move |tx| {
                let mut table = tx.open_table(tables::CREDENTIALS)?;
                store::put(
                    &mut table,
                    &credential_key(&user, providers::CLAUDE_CODE),
                    &credential,
                )?;
                Ok::<_, StoreError>(())
            }))
            .expect("write");
    })
    .await
    .expect("seed");
    world.daemon.start(&[]).await;
}

/// Whether `needle` is anywhere in the raw bytes of the VM's disk images, deleted blocks
/// included.
fn disk_holds(world: &World, vm_id: &str, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut scanned = 0;
    for entry in std::fs::read_dir(world.vm_dir(vm_id))
        .expect("vm dir")
        .flatten()
    {
        let path = entry.path();
        if !path.display().to_string().ends_with(".ext4") {
            continue;
        }
        scanned += 1;
        let bytes = std::fs::read(&path).expect("disk image");
        if bytes.windows(needle.len()).any(|w| w == needle) {
            found.push(path.display().to_string());
        }
    }
    assert!(scanned > 0, "no disk image in {}", world.vm_dir(vm_id));
    found
}

/// The stolen disk: a prompt runs with a credential that carries a marker, the CLI refreshes
/// it by rename (as the scripted CLI does), the guest syncs, the VM hibernates; then no byte of
/// its data disk holds the marker, the HOME holds no credential, and the refresh is captured.
pub async fn credentials_never_reach_the_disk(world: &mut World) {
    let user = world.new_user().await;
    let marker = format!("mcdiskmark{}", uuid::Uuid::now_v7().simple());
    let credential = json!({"claudeAiOauth": {
        "accessToken": format!("sk-ant-oat01-{marker}"),
        "refreshToken": format!("sk-ant-ort01-{marker}"),
        "expiresAt": now_ms() + 3_600_000,
        "scopes": ["user:inference"],
        // Kept by the CLI's refresh, so the refreshed file carries the marker too.
        "subscriptionType": marker,
    }});
    seed_credential(world, &user, credential.to_string()).await;
    let vm = world.create_vm(&user).await;
    let vm_id = id_of(&vm);
    // The test image keeps HOME in memory; put it on the data disk, as the golden image's is.
    let (code, out) = world
        .exec(
            &vm_id,
            "mkdir -p /data/root && mount -o bind /data/root /root && echo ok",
        )
        .await;
    assert_eq!((code, out.trim()), (0, "ok"), "bind mount");

    let frames = world
        .daemon
        .execute_prompt(json!({"userId": user, "provider": "claude_code", "prompt": "hi"}))
        .await;
    let stages: Vec<&str> = frames
        .iter()
        .filter(|f| f.data["kind"] == "progress")
        .filter_map(|f| f.data["stage"].as_str())
        .collect();
    assert!(stages.contains(&"credential_written"), "{stages:?}");
    assert!(
        stages.contains(&"credential_refreshed"),
        "the refresh is captured: {stages:?}"
    );
    assert_eq!(frames.last().map(|f| f.kind()), Some("done"), "{frames:?}");

    // Nothing at the CLI's path, nothing with the marker anywhere in the guest's files.
    let (_, left) = world
        .exec(
            &vm_id,
            &format!(
                "if [ -e {HOME_FILE} ] || [ -L {HOME_FILE} ]; then echo left; fi; \
                 grep -rl {marker} /root /data /run/mc 2>/dev/null; sync; true"
            ),
        )
        .await;

    let (status, hibernated) = world.user_vm(&user, "hibernate", "POST").await;
    assert_eq!(status, 200, "{hibernated:?}");
    // The disk first: this is what fails without the fix.
    let found = disk_holds(world, &vm_id, marker.as_bytes());
    assert!(
        found.is_empty(),
        "the marker is on the data disk: {found:?}"
    );
    assert_eq!(left.trim(), "", "credential left in the guest");
    world.kept.push((user, vm));
}

/// Peak resident memory of the daemon, from /proc.
fn daemon_peak_kib(world: &World) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", world.daemon.pid()))
        .expect("daemon status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

async fn admin_exec(script: &str, timeout_sec: u64, vm_id: &str) -> Value {
    let started = Instant::now();
    let reply = reqwest::Client::new()
        .post(format!("http://{LISTEN}/api/admin/vms/{vm_id}/exec"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(150))
        .json(&json!({"argv": ["/bin/sh", "-c", script], "timeoutSec": timeout_sec}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("admin exec of {script:?} did not return: {e}"));
    assert_eq!(reply.status().as_u16(), 200);
    let body: Value = reply.json().await.expect("json");
    println!(
        "    admin exec {script:?}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    body
}

/// A guest that writes without end, through the live validation's `collect_output` and
/// through the admin exec; and one whose output never ends after the cancel.
pub async fn guest_output_is_bounded(world: &mut World) {
    let (user, vm) = world.kept.pop().expect("the VM of the stolen-disk case");
    let (status, resumed) = world.user_vm(&user, "resume", "POST").await;
    assert_eq!(status, 200, "{resumed:?}");
    let vm_id = id_of(&vm);
    // A hostile `claude`: its status command floods stdout.
    let (code, _) = world
        .exec(
            &vm_id,
            "cp /usr/local/bin/claude /usr/local/bin/claude.real && \
             printf '#!/bin/sh\\nexec cat /dev/zero\\n' >/usr/local/bin/claude",
        )
        .await;
    assert_eq!(code, 0);
    let before = daemon_peak_kib(world);
    let reply = world
        .daemon
        .call(
            "GET",
            &format!("/api/auth/validate/{user}/claude_code?live=true"),
            SERVICE_TOKEN,
            None,
        )
        .await;
    let grown = daemon_peak_kib(world).saturating_sub(before);
    println!(
        "    live validation: peak RSS grew by {grown} KiB: {}",
        reply.json
    );
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(reply.json["live"]["ok"], false, "{:?}", reply.json);
    assert!(
        reply.json["live"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("output passed")),
        "{:?}",
        reply.json
    );
    assert!(grown < 64 * 1024, "the daemon grew by {grown} KiB");
    let (code, _) = world
        .exec(
            &vm_id,
            "mv /usr/local/bin/claude.real /usr/local/bin/claude",
        )
        .await;
    assert_eq!(code, 0);

    // A flood through the admin exec: cut at the cap at once, not read until the deadline.
    let flood = admin_exec("cat /dev/zero", 600, &vm_id).await;
    assert_eq!(flood["truncated"], true, "{flood:?}");
    assert!(
        flood["stdout"].as_str().is_some_and(|s| s.len() <= 1 << 20),
        "bounded stdout"
    );

    // Output that outlives the cancel (a process out of the killed group keeps the pipe):
    // the exec returns after its deadline and a grace, flagged.
    let endless = admin_exec(
        "setsid sh -c 'while :; do echo tick; sleep 0.2; done' & sleep 1000",
        3,
        &vm_id,
    )
    .await;
    assert_eq!(endless["timedOut"], true, "{endless:?}");
    let (code, _) = world.exec(&vm_id, "pkill -f 'echo tic[k]' || true").await;
    assert_eq!(code, 0);
    destroy(world, &user).await;
}
