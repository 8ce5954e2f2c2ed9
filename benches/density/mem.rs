//! Memory figures from `/proc`: this process's RSS, a process's PSS and RSS, the host's
//! available memory; and the statistics and units of the tables.

/// The `Key:   123 kB` field of a `/proc` file's text, in KiB.
fn field_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.strip_prefix(key)?
            .strip_prefix(':')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

fn read_field(path: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    field_kib(&text, key).unwrap_or_else(|| panic!("no {key} in {path}"))
}

/// This process's resident set (`VmRSS`), in KiB: the daemon in process, with the bench's
/// client (and, on the fake hypervisor, the fake agents).
pub fn self_rss_kib() -> u64 {
    read_field("/proc/self/status", "VmRSS")
}

/// This process's peak resident set so far (`VmHWM`), in KiB.
pub fn self_peak_kib() -> u64 {
    read_field("/proc/self/status", "VmHWM")
}

/// The host's `MemAvailable`, in KiB.
pub fn mem_available_kib() -> u64 {
    read_field("/proc/meminfo", "MemAvailable")
}

/// A process's proportional and resident set sizes, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct ProcMem {
    pub pss_kib: u64,
    /// The anonymous part of the PSS (`Pss_Anon`): for QEMU, the guest's memory and its own
    /// heap. The rest is mapped files shared by every QEMU (its binary, its libraries, the
    /// guest kernel it maps), which the PSS divides among them.
    pub pss_anon_kib: u64,
    pub rss_kib: u64,
}

/// `pid`'s PSS and RSS from `/proc/<pid>/smaps_rollup`; `None` if it is gone.
pub fn proc_mem(pid: u32) -> Option<ProcMem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some(ProcMem {
        pss_kib: field_kib(&text, "Pss")?,
        pss_anon_kib: field_kib(&text, "Pss_Anon")?,
        rss_kib: field_kib(&text, "Rss")?,
    })
}

/// `pid`'s command name (`/proc/<pid>/comm`), if it runs.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

/// Whether `pid` still exists (a zombie counts as gone: it holds no memory).
pub fn alive(pid: u32) -> bool {
    let stat = format!("/proc/{pid}/stat");
    match std::fs::read_to_string(&stat) {
        // The state follows the command name's closing parenthesis.
        Ok(text) => text
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// This process's children whose command name starts with `prefix`.
pub fn children_named(prefix: &str) -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let name = head.split_once('(').map(|(_, n)| n).unwrap_or("");
            // After the name: state, then the parent's pid.
            rest.split_whitespace().nth(1) == Some(me.as_str()) && name.starts_with(prefix)
        })
        .collect()
}

/// The `p` percentile (0.0–1.0) of `samples` by nearest rank, as `support::stats` does for
/// durations.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(index.min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

pub fn mean(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().sum::<f64>() / samples.len() as f64
}

/// KiB as MiB with one decimal.
pub fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

/// Samples this process's RSS every few milliseconds on a thread of its own, so that a burst
/// between two readings (`VmHWM` lags behind `VmRSS`) is not missed.
pub struct PeakSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl PeakSampler {
    pub fn start() -> PeakSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(self_rss_kib());
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            peak
        });
        PeakSampler { stop, thread }
    }

    /// The highest RSS seen, and `VmHWM` if higher, in KiB.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sampled = self.thread.join().expect("the RSS sampler");
        sampled.max(self_peak_kib())
    }
}
