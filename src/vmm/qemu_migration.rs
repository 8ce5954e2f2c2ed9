//! QEMU's migration stream, which carries a hibernation: waiting for the outgoing one to finish
//! and for the incoming one to land.

use std::time::{Duration, Instant};

use super::VmmError;
use super::qmp::Qmp;

const MIGRATION_DEADLINE: Duration = Duration::from_secs(300);
/// The stream of a small guest lasts tens of milliseconds: a coarse poll would be a good part of
/// the hibernation.
const MIGRATION_POLL: Duration = Duration::from_millis(2);

/// Waits for the outgoing migration to complete. On failure, or past the deadline, the guest
/// is let run again.
pub(super) async fn wait_migrated(qmp: &mut Qmp) -> Result<(), VmmError> {
    let started = Instant::now();
    loop {
        let info = qmp.execute("query-migrate", None).await?;
        match info["status"].as_str().unwrap_or_default() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let _ = qmp.execute("cont", None).await;
                return Err(VmmError::Qmp {
                    command: "migrate".into(),
                    message: info["error-desc"]
                        .as_str()
                        .unwrap_or("migration failed")
                        .to_string(),
                });
            }
            _ if started.elapsed() > MIGRATION_DEADLINE => {
                let _ = qmp.execute("migrate_cancel", None).await;
                let _ = qmp.execute("cont", None).await;
                return Err(VmmError::Qmp {
                    command: "migrate".into(),
                    message: format!("not finished after {MIGRATION_DEADLINE:?}"),
                });
            }
            _ => tokio::time::sleep(MIGRATION_POLL).await,
        }
    }
}

/// Waits for the incoming migration to land and lets the guest run.
pub(super) async fn run_resumed(qmp: &mut Qmp) -> Result<(), VmmError> {
    let started = Instant::now();
    loop {
        match qmp.status().await?.as_str() {
            // The source was stopped before migrating, so the VM arrives paused.
            "paused" | "postmigrate" => {
                qmp.execute("cont", None).await?;
                return Ok(());
            }
            "running" => return Ok(()),
            "inmigrate" | "prelaunch" if started.elapsed() < MIGRATION_DEADLINE => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => {
                return Err(VmmError::Startup(
                    "qemu resume",
                    format!("run state {other:?}"),
                ));
            }
        }
    }
}
