//! The background scheduler through the whole daemon (in process, with the fake hypervisor of
//! `tests/support/fake_vmm.rs`), under tokio's paused clock: each job fires on its schedule and
//! does its work, and a failing job is recorded and runs again while the others go on.
//!
//! VMs, prompts and logins are set up while the clock still runs: a create waits on
//! `mkfs.ext4`, and a paused clock jumps ahead to the next timer while a test waits on another
//! process. From `tokio::time::pause()` on, the daemon waits only on its own tasks, sockets
//! and blocking store calls (during which tokio does not move a paused clock), so each sleep of
//! the test runs every timer due before it, in order.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use master_controller::model::{
    AuthSession, AuthSessionStatus, Credential, PromptStatus, Provider, TaskOutcome, TaskRun,
    VmStatus, credential_key, now_ms,
};
use master_controller::prompts::PromptRequest;
use master_controller::store::{self, tables};
use master_controller::tasks::schedule::{self, Schedule};
use master_controller::tasks::{Job, TaskError};
use master_controller::vms::VmHost;
use support::TestDaemon;
use support::fake_vmm::{FakeHypervisor, FakeNetlink};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

const MIN: Duration = Duration::from_secs(60);
const DAY_MS: i64 = 24 * 3600 * 1000;
const MASTER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A daemon whose VMs are fakes; `env` adds to or overrides the defaults here.
async fn start(env: &[(&str, &str)]) -> (TestDaemon, Arc<FakeHypervisor>) {
    let hypervisor = Arc::new(FakeHypervisor::default());
    let host = VmHost {
        hypervisor: hypervisor.clone(),
        netlink: Arc::new(FakeNetlink::default()),
    };
    let mut vars = vec![
        ("GOLDEN_KERNEL", "/fake/vmlinux"),
        ("MC_VM_DATA_DISK_MIB", "8"),
        ("MC_VM_VCPUS", "1"),
        ("MC_VM_MEMORY_MIB", "256"),
        ("MC_PROMPT_TIMEOUT_SECS", "86400"),
        ("MC_PROMPT_MAX_TIMEOUT_SECS", "86400"),
    ];
    vars.extend_from_slice(env);
    let d = TestDaemon::start_with_host(&vars, Some(host)).await;
    (d, hypervisor)
}

async fn vm_status(d: &TestDaemon, id: &str) -> VmStatus {
    d.ctx.vms.get(id).await.expect("VM").status
}

async fn last_run(d: &TestDaemon, job: &str) -> TaskRun {
    d.ctx
        .tasks
        .last_run(job)
        .await
        .expect("job")
        .unwrap_or_else(|| TaskRun::new(job))
}

/// Polls (in real time, before the clock is paused) until `check` holds.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn idle_vms_hibernate_but_not_during_a_prompt_or_a_login() {
    let (d, _fake) = start(&[("ENCRYPTION_MASTER_KEY", MASTER_KEY)]).await;
    let idle = d.create_user("idle@example.com").await;
    let prompting = d.create_user("prompting@example.com").await;
    let logging_in = d.create_user("login@example.com").await;
    let idle_vm = d.ctx.vms.create(&idle).await.expect("create").id;
    let prompt_vm = d.ctx.vms.create(&prompting).await.expect("create").id;
    let login_vm = d.ctx.vms.create(&logging_in).await.expect("create").id;

    // A prompt whose CLI runs until cancelled, and a login waiting on its CLI.
    let run = d
        .ctx
        .prompts
        .execute(PromptRequest {
            user_id: prompting.clone(),
            provider: Provider::ClaudeCode,
            prompt: "a long task".into(),
            model: None,
            timeout_sec: None,
            cancel_on_disconnect: false,
        })
        .await
        .expect("prompt starts");
    let session = d
        .ctx
        .oauth
        .start(&logging_in, Provider::ClaudeCode, false)
        .await
        .expect("login starts");
    eventually("the prompt streams", || async {
        d.ctx.prompts.get(&run.id).await.expect("prompt").status == PromptStatus::Streaming
    })
    .await;
    eventually("the login runs in its VM", || async {
        d.ctx
            .oauth
            .session(&session.id)
            .await
            .expect("session")
            .vm_id
            .is_some()
    })
    .await;
    assert!(d.ctx.prompts.has_running(&prompting));
    assert!(d.ctx.oauth.has_live_login(&logging_in));
    assert!(!d.ctx.prompts.has_running(&idle) && !d.ctx.oauth.has_live_login(&idle));

    tokio::time::pause();
    let t0 = Instant::now();
    sleep_until(t0 + 25 * MIN).await;
    for vm in [&idle_vm, &prompt_vm, &login_vm] {
        assert_eq!(vm_status(&d, vm).await, VmStatus::Running, "25 min: {vm}");
    }
    assert!(
        last_run(&d, "hibernate_idle").await.runs >= 4,
        "runs every 5 min"
    );
    // Idle from 30 min on; the 5-minute run after that (with jitter) hibernates it.
    sleep_until(t0 + 40 * MIN).await;
    assert_eq!(vm_status(&d, &idle_vm).await, VmStatus::Hibernated);
    assert_eq!(
        vm_status(&d, &prompt_vm).await,
        VmStatus::Running,
        "mid-prompt"
    );
    assert_eq!(
        vm_status(&d, &login_vm).await,
        VmStatus::Running,
        "mid-login"
    );
    let hibernations = last_run(&d, "hibernate_idle").await;
    assert_eq!(
        hibernations.last_outcome,
        Some(TaskOutcome::Ok),
        "{hibernations:?}"
    );

    // The prompt ends, and the login is ended for its age (the live path of
    // `expire_auth_sessions`): the VMs' idle periods start now.
    let cancelled = d.ctx.prompts.cancel(&run.id).await.expect("cancel");
    assert_eq!(cancelled.status, PromptStatus::Cancelled);
    let expired = d
        .ctx
        .oauth
        .expire_older_than(Duration::ZERO)
        .await
        .expect("expire");
    assert_eq!(expired, 1);
    let ended = d.ctx.oauth.session(&session.id).await.expect("session");
    assert_eq!(ended.status, AuthSessionStatus::Timeout, "{ended:?}");
    assert!(!d.ctx.oauth.has_live_login(&logging_in));
    assert!(!d.ctx.prompts.has_running(&prompting));
    let t1 = Instant::now();
    sleep_until(t1 + 25 * MIN).await;
    assert_eq!(vm_status(&d, &prompt_vm).await, VmStatus::Running);
    assert_eq!(vm_status(&d, &login_vm).await, VmStatus::Running);
    sleep_until(t1 + 40 * MIN).await;
    assert_eq!(vm_status(&d, &prompt_vm).await, VmStatus::Hibernated);
    assert_eq!(vm_status(&d, &login_vm).await, VmStatus::Hibernated);
    d.shutdown().await;
}

#[tokio::test]
async fn inactive_vms_are_destroyed_at_two_in_the_morning() {
    // Only the job under test runs often enough to matter over a simulated day.
    let (d, _fake) = start(&[
        ("MC_TASK_HIBERNATE_IDLE_INTERVAL_SECS", "86400"),
        ("MC_TASK_VM_HEALTH_INTERVAL_SECS", "86400"),
        ("MC_TASK_METRICS_SAMPLE_INTERVAL_SECS", "86400"),
        ("MC_VM_HEALTH_INTERVAL_SECS", "86400"),
    ])
    .await;
    let old_user = d.create_user("old@example.com").await;
    let recent_user = d.create_user("recent@example.com").await;
    let old = d.seed_vm(&old_user, VmStatus::Hibernated).await;
    let mut vm = d.ctx.vms.get(&old).await.expect("VM");
    vm.created_at_ms = now_ms() - 20 * DAY_MS;
    vm.updated_at_ms = now_ms() - 15 * DAY_MS;
    d.ctx.vms.insert(vm).await.expect("age the VM");
    let recent = d.seed_vm(&recent_user, VmStatus::Hibernated).await;
    let mut events = d.ctx.events.subscribe();

    tokio::time::pause();
    let tz = d.ctx.tasks.time_zone().clone();
    let due = schedule::next_daily(d.ctx.tasks.now_ms(), 2, 0, &tz);
    let clock = d.ctx.tasks.clock();
    sleep(clock.until(due - 60_000)).await;
    assert_eq!(
        vm_status(&d, &old).await,
        VmStatus::Hibernated,
        "not before 02:00"
    );
    sleep(clock.until(due + 2 * 60_000)).await;
    assert_eq!(vm_status(&d, &old).await, VmStatus::Destroyed, "at 02:00");
    assert_eq!(vm_status(&d, &recent).await, VmStatus::Hibernated);
    let run = last_run(&d, "destroy_inactive").await;
    assert_eq!(run.last_outcome, Some(TaskOutcome::Ok), "{run:?}");
    assert_eq!(run.items_touched, 1);
    let started = run.last_started_ms.expect("started");
    assert!(
        (due..=due + 31_000).contains(&started),
        "ran at {started}, due at {due} ({})",
        schedule::zone_name(&tz)
    );
    let mut seen = false;
    while let Ok(event) = events.try_recv() {
        if event.data["event"] == "vm_destroyed_inactive" {
            assert_eq!(event.data["vmId"], old.as_str());
            assert_eq!(event.channel, format!("user:{old_user}"));
            seen = true;
        }
    }
    assert!(seen, "vm_destroyed_inactive was published");
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
        provider: Provider::Codex,
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
                    .get(credential_key("stale-user", Provider::Codex).as_str())?
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
                provider: Provider::ClaudeCode,
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
    assert_eq!(summary.jobs, 7);
    d.shutdown().await;
}

#[tokio::test]
async fn vm_health_fails_vms_whose_process_or_agent_is_gone() {
    let (d, fake) = start(&[]).await;
    let hung_user = d.create_user("hung@example.com").await;
    let well_user = d.create_user("well@example.com").await;
    let ghost_user = d.create_user("ghost@example.com").await;
    let hung = d.ctx.vms.create(&hung_user).await.expect("create").id;
    let well = d.ctx.vms.create(&well_user).await.expect("create").id;
    // A record that says running with no process behind it.
    let ghost = d.seed_vm(&ghost_user, VmStatus::Running).await;
    let mut events = d.ctx.events.subscribe();
    fake.mute(&hung);

    tokio::time::pause();
    // Health checks every 30 s, each given 5 s; three missed in a row, then the next
    // `vm_health` run (every minute) settles it.
    sleep(4 * MIN).await;
    let failed = d.ctx.vms.get(&hung).await.expect("VM");
    assert_eq!(failed.status, VmStatus::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("health checks")),
        "{failed:?}"
    );
    assert!(!fake.is_running(&hung), "its process was stopped");
    assert!(failed.ip_address.is_none(), "its address was released");
    let ghost_vm = d.ctx.vms.get(&ghost).await.expect("VM");
    assert_eq!(ghost_vm.status, VmStatus::Failed);
    assert!(
        ghost_vm
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no hypervisor process"))
    );
    assert_eq!(vm_status(&d, &well).await, VmStatus::Running);
    assert!(fake.is_running(&well));
    let mut crashed = Vec::new();
    while let Ok(event) = events.try_recv() {
        if event.data["event"] == "vm_crashed" {
            crashed.push(event.data["vmId"].as_str().unwrap_or_default().to_string());
        }
    }
    crashed.sort();
    let mut expected = vec![hung.clone(), ghost.clone()];
    expected.sort();
    assert_eq!(crashed, expected);
    let run = last_run(&d, "vm_health").await;
    assert_eq!(run.last_outcome, Some(TaskOutcome::Ok), "{run:?}");
    assert!(run.failures == 0 && run.runs >= 3, "{run:?}");
    d.shutdown().await;
}
