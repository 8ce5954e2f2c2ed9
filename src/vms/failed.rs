//! What a failed VM leaves behind, and the guard against guests that crash on purpose. A guest
//! runs code an AI agent wrote, with root inside its VM: it can crash itself at will, and each
//! crash used to leave a whole disk behind and earn a fresh VM. A failed VM now keeps only the
//! end of its console log, for diagnostics; and a user whose VMs crash more than the limit
//! within the window gets no new one until the oldest of those crashes leaves the window.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::gauges::Gauges;
use super::records::Records;
use super::{VmError, VmSettings, procs};
use crate::model::Vm;

/// How much of its console log a failed VM keeps.
pub const FAILED_CONSOLE_TAIL_BYTES: u64 = 64 * 1024;
const CONSOLE_LOG: &str = "console.log";

/// More than `max` crashes of one user's VMs within `window` refuse that user's next create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLimit {
    pub max: u32,
    pub window: Duration,
}

/// Each user's recent crashes. Kept in memory: it is bounded by the users who crashed within
/// the window, and a restart forgiving them costs one more round of crashes at most.
#[derive(Default)]
pub struct CrashLog {
    by_user: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl CrashLog {
    pub fn record(&self, user_id: &str, at: Instant, limit: CrashLimit) {
        let mut by_user = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        // Users whose crashes have all left the window are forgotten, so the map stays small.
        by_user.retain(|_, crashes| {
            expire(crashes, at, limit.window);
            !crashes.is_empty()
        });
        let crashes = by_user.entry(user_id.to_string()).or_default();
        crashes.push_back(at);
        // Only the newest max + 1 decide a refusal.
        while crashes.len() > limit.max as usize + 1 {
            crashes.pop_front();
        }
    }

    /// How long `user_id` must wait before a new VM, if their VMs crashed more than the limit
    /// within the window.
    pub fn refusal(&self, user_id: &str, now: Instant, limit: CrashLimit) -> Option<Duration> {
        let mut by_user = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let crashes = by_user.get_mut(user_id)?;
        expire(crashes, now, limit.window);
        if crashes.len() <= limit.max as usize {
            return None;
        }
        let oldest = *crashes.front()?;
        Some((oldest + limit.window).saturating_duration_since(now))
    }
}

/// A VM's failure: the record, what the VM held on the host, and the crash-loop guard.
pub(super) struct Failures {
    records: Arc<Records>,
    gauges: Arc<Gauges>,
    settings: Arc<VmSettings>,
    crashes: CrashLog,
}

impl Failures {
    pub(super) fn new(
        records: Arc<Records>,
        gauges: Arc<Gauges>,
        settings: Arc<VmSettings>,
    ) -> Failures {
        Failures {
            records,
            gauges,
            settings,
            crashes: CrashLog::default(),
        }
    }

    /// Marks a VM failed and releases its address, process and files, all but the end of its
    /// console log. The caller removes its tap.
    pub(super) async fn mark_failed(&self, vm_id: &str, reason: &str) -> Result<Vm, VmError> {
        // Files first: once `failed` can be read, nothing but the console tail is left (a
        // restart between the two finds a VM with no process, which reconcile fails again).
        self.release_failed_files(vm_id).await;
        let (vm, previous) = self.records.failed(vm_id, reason).await?;
        self.gauges.forget(vm_id);
        self.records.publish_status(&vm, previous);
        Ok(vm)
    }

    /// Stops whatever still runs from a failed VM's directory and prunes it to its console
    /// tail. An error is logged: the directory goes for good when the VM is destroyed.
    async fn release_failed_files(&self, vm_id: &str) {
        let dir = self.settings.dir_of(vm_id);
        procs::kill_processes_in(&dir).await;
        let pruned = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                prune_to_console_tail(&dir, FAILED_CONSOLE_TAIL_BYTES)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
        };
        if let Err(e) = pruned {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot prune a failed VM's directory");
        }
    }

    /// Counts a crash of `user_id`'s VM towards the crash-loop limit.
    pub(super) fn note_crash(&self, user_id: &str) {
        self.gauges.count_crash();
        self.crashes
            .record(user_id, Instant::now(), self.settings.crash_limit);
    }

    /// Refuses a new VM to a user whose VMs crashed more than the limit within the window.
    pub(super) fn check_crash_loop(&self, user_id: &str, now: Instant) -> Result<(), VmError> {
        let limit = self.settings.crash_limit;
        match self.crashes.refusal(user_id, now, limit) {
            Some(wait) => Err(VmError::CrashLoop {
                user_id: user_id.to_string(),
                max: limit.max,
                window_minutes: limit.window.as_secs() / 60,
                retry_after_secs: wait.as_secs().max(1),
            }),
            None => Ok(()),
        }
    }
}

fn expire(crashes: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while crashes
        .front()
        .is_some_and(|at| now.saturating_duration_since(*at) >= window)
    {
        crashes.pop_front();
    }
}

/// Removes everything in a failed VM's directory (disks, hibernation image, sockets, links to
/// golden files) except the last `tail_bytes` of its console log; a VM that never printed
/// anything (a create interrupted before its boot) leaves no directory at all. Links are
/// removed, never followed.
pub fn prune_to_console_tail(dir: &Path, tail_bytes: u64) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut kept = false;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name() == CONSOLE_LOG {
            keep_tail(&path, tail_bytes)?;
            kept = true;
        } else if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    if !kept {
        std::fs::remove_dir(dir)?;
    }
    Ok(())
}

/// Rewrites `path` to its last `tail_bytes`, through a new file renamed into place.
fn keep_tail(path: &Path, tail_bytes: u64) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len <= tail_bytes {
        return Ok(());
    }
    file.seek(SeekFrom::Start(len - tail_bytes))?;
    let mut tail = Vec::with_capacity(tail_bytes as usize);
    file.take(tail_bytes).read_to_end(&mut tail)?;
    let partial = path.with_extension("log.tail");
    let mut out = std::fs::File::create(&partial)?;
    out.write_all(&tail)?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: CrashLimit = CrashLimit {
        max: 2,
        window: Duration::from_secs(600),
    };

    #[test]
    fn more_crashes_than_the_limit_within_the_window_refuse_until_the_oldest_leaves_it() {
        let log = CrashLog::default();
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        log.record("u", at(0), LIMIT);
        log.record("u", at(100), LIMIT);
        assert_eq!(log.refusal("u", at(101), LIMIT), None, "two is the limit");
        log.record("u", at(200), LIMIT);
        assert_eq!(
            log.refusal("u", at(201), LIMIT),
            Some(Duration::from_secs(399))
        );
        assert_eq!(log.refusal("other", at(201), LIMIT), None);
        assert_eq!(log.refusal("u", at(600), LIMIT), None, "the first one left");
    }

    #[test]
    fn crashes_spread_wider_than_the_window_never_refuse() {
        let log = CrashLog::default();
        let start = Instant::now();
        for i in 0..10 {
            let at = start + Duration::from_secs(i * 301);
            log.record("u", at, LIMIT);
            assert_eq!(log.refusal("u", at, LIMIT), None, "crash {i}");
        }
    }

    #[test]
    fn the_log_forgets_users_whose_crashes_left_the_window() {
        let log = CrashLog::default();
        let start = Instant::now();
        for i in 0..100 {
            log.record(&format!("user{i}"), start, LIMIT);
        }
        log.record("late", start + LIMIT.window, LIMIT);
        assert_eq!(log.by_user.lock().expect("lock").len(), 1);
    }

    #[test]
    fn a_failed_vms_directory_keeps_only_its_console_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vm = dir.path().join("vm");
        std::fs::create_dir_all(vm.join("snapshot")).expect("mkdir");
        std::fs::write(vm.join("data.ext4"), vec![7u8; 4096]).expect("disk");
        std::fs::write(vm.join("snapshot/state"), b"memory").expect("state");
        let shared = dir.path().join("golden.mem");
        std::fs::write(&shared, b"golden").expect("golden");
        std::os::unix::fs::symlink(&shared, vm.join("snapshot.link")).expect("link");
        let console: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(vm.join(CONSOLE_LOG), &console).expect("console");

        prune_to_console_tail(&vm, 1000).expect("prune");

        let left: Vec<String> = std::fs::read_dir(&vm)
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left, vec![CONSOLE_LOG.to_string()]);
        let kept = std::fs::read(vm.join(CONSOLE_LOG)).expect("console");
        assert_eq!(kept, console[console.len() - 1000..]);
        assert_eq!(std::fs::read(&shared).expect("golden"), b"golden");
        prune_to_console_tail(&dir.path().join("gone"), 1000).expect("a missing dir is fine");
        let silent = dir.path().join("silent");
        std::fs::create_dir_all(silent.join("snapshot")).expect("mkdir");
        std::fs::write(silent.join("data.ext4"), b"disk").expect("disk");
        prune_to_console_tail(&silent, 1000).expect("prune");
        assert!(!silent.exists(), "nothing to keep: no directory");
    }
}
