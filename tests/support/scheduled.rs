//! Shared by the scheduler tests (`tests/tasks.rs`, `tests/task_vms.rs`): a daemon whose VMs
//! are fakes, and small readers.

use std::sync::Arc;
use std::time::Duration;

use master_controller::model::{TaskRun, VmStatus};

use super::TestDaemon;
use super::fake_vmm::{FakeHypervisor, daemon_with_fake_vms};

pub const MIN: Duration = Duration::from_secs(60);
pub const DAY_MS: i64 = 24 * 3600 * 1000;
pub const MASTER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A daemon whose VMs are fakes; `env` adds to or overrides the defaults here.
pub async fn start(env: &[(&str, &str)]) -> (TestDaemon, Arc<FakeHypervisor>) {
    let mut vars = vec![
        ("MC_PROMPT_TIMEOUT_SECS", "86400"),
        ("MC_PROMPT_MAX_TIMEOUT_SECS", "86400"),
    ];
    vars.extend_from_slice(env);
    let (d, hypervisor, _) = daemon_with_fake_vms(&vars).await;
    (d, hypervisor)
}

pub async fn vm_status(d: &TestDaemon, id: &str) -> VmStatus {
    d.ctx.vms.get(id).await.expect("VM").status
}

/// The job's record (a fresh one if it has not run).
pub async fn last_run(d: &TestDaemon, job: &str) -> TaskRun {
    d.ctx
        .tasks
        .last_run(job)
        .await
        .expect("job")
        .unwrap_or_else(|| TaskRun::new(job))
}

/// Polls (in real time, before the clock is paused) until `check` holds.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}
