//! The background scheduler through the whole daemon (in process, with the fake hypervisor of
//! `tests/support/fake_vmm.rs`), under tokio's paused clock: jobs fire on their schedules and do
//! their work, and a failing job is recorded and runs again while the others go on. The jobs
//! that act on VMs are in `tests/task_vms.rs`.
//!
//! Set-up that waits on other processes (a VM create runs `mkfs.ext4`) happens while the clock
//! still runs: a paused clock jumps ahead to the next timer while the test waits on a process.
//! From `tokio::time::pause()` on, the daemon waits only on its own tasks, sockets and blocking
//! store calls (during which tokio does not move a paused clock), so each sleep of the test
//! runs every timer due before it, in order.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use master_controller::model::tables;
use master_controller::model::{
    AuthSession, AuthSessionStatus, Credential, TaskOutcome, credential_key, now_ms,
};
use master_controller::providers;
use master_controller::store;
use master_controller::tasks::schedule::Schedule;
use master_controller::tasks::{Job, TaskError};
use support::scheduled::{DAY_MS, MASTER_KEY, MIN, last_run, start};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

/// Fails its first `failures` runs, panics on the one after if asked, then succeeds.
struct Flaky {
    runs: AtomicU32,
    failures: u32,
    panic_once: bool,
}

#[async_trait::async_trait]
impl Job for Flaky {
    async fn run(&self, _cancel: &CancellationToken) -> Result<u64, TaskError> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        if n < self.failures {
            return Err(TaskError::Failed(format!("injected failure {}", n + 1)));
        }
        if self.panic_once && n == self.failures {
            panic!("injected panic");
        }
        Ok(u64::from(n))
    }
}

#[tokio::test]
async fn a_failing_job_is_recorded_and_retried_while_the_others_go_on() {
    let (d, _fake) = start(&[]).await;
    d.ctx
        .tasks
        .register(
            "flaky",
            Schedule::Every(MIN),
            Arc::new(Flaky {
                runs: AtomicU32::new(0),
                failures: 2,
                panic_once: true,
            }),
        )
        .expect("register");
    assert!(matches!(
        d.ctx.tasks.register(
            "flaky",
            Schedule::Every(MIN),
            Arc::new(Flaky {
                runs: AtomicU32::new(0),
                failures: 0,
                panic_once: false,
            })
        ),
        Err(TaskError::Duplicate(_))
    ));
    tokio::time::pause();
    let t0 = Instant::now();
    // Each run is due a minute after the previous one ended, plus up to 6 s of jitter.
    sleep_until(t0 + MIN + MIN / 2).await;
    let first = last_run(&d, "flaky").await;
    assert_eq!((first.runs, first.failures), (1, 1), "{first:?}");
    assert_eq!(first.last_outcome, Some(TaskOutcome::Failed));
    assert_eq!(first.last_error.as_deref(), Some("injected failure 1"));
    assert!(first.next_run_ms.is_some());
    sleep_until(t0 + 3 * MIN + MIN / 2).await;
    let third = last_run(&d, "flaky").await;
    assert_eq!((third.runs, third.failures), (3, 3), "{third:?}");
    assert!(
        third
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("stopped unexpectedly")),
        "a panic is a failed run: {third:?}"
    );
    // The other jobs ran meanwhile, unaffected.
    let health = last_run(&d, "vm_health").await;
    assert!(health.runs >= 3, "{health:?}");
    assert_eq!(health.last_outcome, Some(TaskOutcome::Ok));
    sleep_until(t0 + 4 * MIN + MIN / 2).await;
    let fourth = last_run(&d, "flaky").await;
    assert_eq!((fourth.runs, fourth.failures), (4, 3), "{fourth:?}");
    assert_eq!(fourth.last_outcome, Some(TaskOutcome::Ok));
    assert_eq!((fourth.last_error, fourth.items_touched), (None, 3));
    let summary = d.ctx.tasks.summary().await.expect("summary");
    assert!(summary.failing.is_empty(), "{summary:?}");
    assert_eq!(summary.jobs, 8);
    d.shutdown().await;
}

#[tokio::test]
async fn the_metrics_ring_stays_bounded() {
    let (d, _fake) = start(&[
        ("MC_TASK_METRICS_SAMPLE_INTERVAL_SECS", "60"),
        ("MC_METRICS_SAMPLES_KEPT", "5"),
    ])
    .await;
    let user = d.create_user("sampled@example.com").await;
    d.ctx.vms.create(&user).await.expect("create");
    tokio::time::pause();
    sleep(12 * MIN).await;
    let run = last_run(&d, "metrics_sample").await;
    assert!(run.runs >= 9, "{run:?}");
    let kept = d
        .ctx
        .store
        .read(|tx| {
            use redb::ReadableTableMetadata;
            Ok::<_, store::StoreError>(tx.open_table(tables::METRICS_SAMPLES)?.len()?)
        })
        .await
        .expect("count");
    assert_eq!(kept, 5, "the ring keeps MC_METRICS_SAMPLES_KEPT samples");
    let samples = master_controller::tasks::samples::recent(&d.ctx.store, 100)
        .await
        .expect("samples");
    assert_eq!(samples.len(), 5);
    assert!(
        samples.windows(2).all(|w| w[0].at_ms > w[1].at_ms),
        "newest first"
    );
    assert_eq!(samples[0].vms_by_status.get("running"), Some(&1));
    assert_eq!(samples[0].ip_pool_free, 252);
    assert!(samples[0].memory_total_bytes > 0);
    d.shutdown().await;
}

fn session(user_id: &str, created_at_ms: i64) -> AuthSession {
    AuthSession {
        id: format!("session-{user_id}"),
        user_id: user_id.to_string(),
        provider: providers::CODEX,
        status: AuthSessionStatus::AwaitingUser,
        created_at_ms,
        updated_at_ms: created_at_ms,
        error: None,
        version: 1,
        vm_id: None,
        auth_url: None,
        device_code: Some("ABCD-EFGH".into()),
        verification_url: None,
        instructions: None,
        last_activity_ms: created_at_ms,
        completed_at_ms: None,
        rotation: false,
    }
}

#[tokio::test]
async fn old_auth_sessions_expire_hourly() {
    let (d, _fake) = start(&[]).await;
    let stale = session("stale-user", now_ms() - 3 * 3600 * 1000);
    let fresh = session("fresh-user", now_ms());
    let records = [stale.clone(), fresh.clone()];
    d.ctx
        .store
        .write(move |tx| {
            let mut sessions = tx.open_table(tables::AUTH_SESSIONS)?;
            let mut active = tx.open_table(tables::ACTIVE_AUTH_SESSIONS)?;
            for s in &records {
                store::put(&mut sessions, &s.id, s)?;
                active.insert(
                    credential_key(&s.user_id, s.provider).as_str(),
                    s.id.as_str(),
                )?;
            }
            Ok::<_, store::StoreError>(())
        })
        .await
        .expect("seed sessions");
    tokio::time::pause();
    sleep(50 * MIN).await;
    let before = d.ctx.oauth.session(&stale.id).await.expect("session");
    assert_eq!(before.status, AuthSessionStatus::AwaitingUser, "hourly");
    sleep(12 * MIN).await;
    let after = d.ctx.oauth.session(&stale.id).await.expect("session");
    assert_eq!(after.status, AuthSessionStatus::Timeout, "{after:?}");
    assert!(
        after
            .error
            .as_deref()
            .is_some_and(|e| e.contains("open too long"))
    );
    let untouched = d.ctx.oauth.session(&fresh.id).await.expect("session");
    assert_eq!(untouched.status, AuthSessionStatus::AwaitingUser);
    let released = d
        .ctx
        .store
        .read(move |tx| {
            let active = tx.open_table(tables::ACTIVE_AUTH_SESSIONS)?;
            Ok::<_, store::StoreError>(
                active
                    .get(credential_key("stale-user", providers::CODEX).as_str())?
                    .is_none(),
            )
        })
        .await
        .expect("read");
    assert!(released, "the user may start a new login");
    let run = last_run(&d, "expire_auth_sessions").await;
    assert_eq!(
        (run.items_touched, run.last_outcome),
        (1, Some(TaskOutcome::Ok))
    );
    d.shutdown().await;
}

/// A Claude credential file that expires at `expires_at_ms`, with no refresh token (so the CLI
/// cannot renew it).
fn claude_file(expires_at_ms: i64) -> String {
    format!(
        r#"{{"claudeAiOauth":{{"accessToken":"sk-ant-oat01-FAKE","expiresAt":{expires_at_ms},"scopes":["user:inference"]}}}}"#
    )
}

#[tokio::test]
async fn credentials_are_validated_every_six_hours() {
    let (d, _fake) = start(&[("ENCRYPTION_MASTER_KEY", MASTER_KEY)]).await;
    let expired_user = d.create_user("expired@example.com").await;
    let valid_user = d.create_user("valid@example.com").await;
    let store = d.ctx.store.clone();
    let seeds = [
        (expired_user.clone(), now_ms() - 3600 * 1000),
        (valid_user.clone(), now_ms() + 30 * DAY_MS),
    ];
    let credentials = tokio::task::spawn_blocking(move || {
        let master = master_controller::auth::MasterKey::parse(MASTER_KEY).expect("key");
        let vault = master_controller::auth::Vault::open(&store, &master).expect("vault");
        seeds.map(|(user_id, expires)| {
            let sealed = vault.seal(claude_file(expires).as_bytes()).expect("seal");
            Credential {
                id: format!("cred-{user_id}"),
                user_id,
                provider: providers::CLAUDE_CODE,
                ciphertext: sealed.ciphertext,
                key_id: sealed.key_id,
                is_valid: true,
                reason: None,
                expires_at_ms: Some(expires),
                last_verified_ms: None,
                created_at_ms: now_ms(),
                updated_at_ms: now_ms(),
                version: 1,
            }
        })
    })
    .await
    .expect("seal credentials");
    d.ctx
        .store
        .write(move |tx| {
            let mut table = tx.open_table(tables::CREDENTIALS)?;
            for c in &credentials {
                store::put(&mut table, &credential_key(&c.user_id, c.provider), c)?;
            }
            Ok::<_, store::StoreError>(())
        })
        .await
        .expect("store credentials");

    tokio::time::pause();
    sleep(5 * 60 * MIN).await;
    let credentials = d.ctx.oauth.credentials(&expired_user).await.expect("list");
    assert!(credentials[0].is_valid, "not before six hours");
    sleep(75 * MIN).await;
    let expired = d.ctx.oauth.credentials(&expired_user).await.expect("list");
    assert!(!expired[0].is_valid, "{expired:?}");
    assert!(
        expired[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("expired"))
    );
    let valid = d.ctx.oauth.credentials(&valid_user).await.expect("list");
    assert!(valid[0].is_valid, "{valid:?}");
    assert!(valid[0].last_verified.is_some());
    let run = last_run(&d, "validate_credentials").await;
    assert_eq!(
        (run.items_touched, run.last_outcome),
        (2, Some(TaskOutcome::Ok))
    );
    assert_eq!(
        d.ctx.vms.list(Default::default()).await.expect("VMs").len(),
        0,
        "no VM"
    );
    d.shutdown().await;
}
