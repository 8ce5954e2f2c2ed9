//! The background jobs that act on VMs, through the whole daemon (in process, with the fake
//! hypervisor of `tests/support/fake_vmm.rs`) under tokio's paused clock: idle hibernation
//! (never during a prompt or a login), the nightly destruction of inactive VMs, and the health
//! backstop.
//!
//! Set-up that waits on other processes (a VM create runs `mkfs.ext4`) happens while the clock
//! still runs: a paused clock jumps ahead to the next timer while the test waits on a process.
//! From `tokio::time::pause()` on, the daemon waits only on its own tasks, sockets and blocking
//! store calls (during which tokio does not move a paused clock), so each sleep of the test
//! runs every timer due before it, in order.

mod support;

use std::time::Duration;

use master_controller::model::{AuthSessionStatus, PromptStatus, TaskOutcome, VmStatus, now_ms};
use master_controller::prompts::PromptRequest;
use master_controller::providers;
use master_controller::tasks::schedule;
use support::scheduled::{DAY_MS, MASTER_KEY, MIN, eventually, last_run, start, vm_status};
use tokio::time::{Instant, sleep, sleep_until};

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
            provider: providers::CLAUDE_CODE,
            prompt: "a long task".into(),
            model: None,
            timeout_sec: None,
            cancel_on_disconnect: false,
            conversation_id: None,
            cwd: None,
        })
        .await
        .expect("prompt starts");
    let session = d
        .ctx
        .oauth
        .start(&logging_in, providers::CLAUDE_CODE, false)
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
async fn mute_guests_are_checked_side_by_side_and_hold_up_no_one() {
    let (d, fake) = start(&[]).await;
    let mut mute = Vec::new();
    for i in 0..20 {
        let user = d.create_user(&format!("mute{i}@example.com")).await;
        mute.push(d.ctx.vms.create(&user).await.expect("create").id);
    }
    let well_user = d.create_user("well@example.com").await;
    let well = d.ctx.vms.create(&well_user).await.expect("create").id;
    for id in &mute {
        fake.mute(id);
    }

    tokio::time::pause();
    // Checks every 30 s, each given 5 s. One after another, a round over 20 mute guests would
    // last 100 s, and their third missed check would come after five minutes; side by side a
    // round lasts 5 s, and the `vm_health` run at two minutes finds three misses each.
    sleep(3 * MIN).await;
    for id in &mute {
        assert_eq!(vm_status(&d, id).await, VmStatus::Failed, "{id}");
    }
    assert_eq!(vm_status(&d, &well).await, VmStatus::Running);
    let well_vm = d.ctx.vms.get(&well).await.expect("VM");
    assert!(well_vm.agent.is_some(), "the answering guest was checked");
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
