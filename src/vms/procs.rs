//! The hypervisor processes on this host, found by the VM directory their command line names:
//! what reconcile and a failed VM's cleanup stop when no handle to them is held.

use std::path::Path;
use std::time::Duration;

const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// Processes whose command line names a path under `root`, with the VM id that path names.
/// Reading `/proc` is blocking file I/O, so it runs off the async workers.
pub(super) async fn hypervisor_processes(root: std::path::PathBuf) -> Vec<(u32, String)> {
    tokio::task::spawn_blocking(move || scan_processes(&root))
        .await
        .unwrap_or_default()
}

fn scan_processes(root: &Path) -> Vec<(u32, String)> {
    let prefix = format!("{}/", root.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw);
        if let Some(at) = cmdline.find(&prefix) {
            let rest = &cmdline[at + prefix.len()..];
            let vm_id: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !vm_id.is_empty() {
                found.push((pid, vm_id));
            }
        }
    }
    found
}

/// Kills every process that runs from `dir` (a VM's hypervisor left behind by a crash).
pub(super) async fn kill_processes_in(dir: &Path) {
    let Some(root) = dir.parent() else { return };
    let Some(id) = dir.file_name().map(|n| n.to_string_lossy().to_string()) else {
        return;
    };
    for (pid, vm_id) in hypervisor_processes(root.to_path_buf()).await {
        if vm_id == id {
            kill_and_reap(pid).await;
        }
    }
}

pub(super) async fn kill_and_reap(pid: u32) {
    let target = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
    let started = std::time::Instant::now();
    while alive(pid) && started.elapsed() < KILL_DEADLINE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` exists and is not a zombie waiting for its parent.
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}
