//! The metrics an operator alerts on that are not counts of records: the build, the main loop
//! (what systemd's watchdog sees), background task outcomes, VM crashes and the host itself.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskRunLabels {
    pub task: String,
    /// `ok` or `failed`.
    pub outcome: String,
}

/// The outcomes `mc_task_runs_total` counts, seeded at zero for every registered task so that
/// `increase()` sees the first failure.
pub const TASK_OUTCOMES: [&str; 2] = ["ok", "failed"];

/// One reading of the host, as the scrape takes it (the metrics sit below `tasks`, which reads
/// it).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostReading {
    pub cpu_percent: f64,
    pub cpus: u64,
    pub load1: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
}

#[derive(Default)]
pub struct OpsMetrics {
    pub build_info: Family<BuildLabels, Gauge>,
    pub start_time: FloatGauge,
    pub main_loop_last_ok: FloatGauge,
    pub watchdog_interval: FloatGauge,
    pub task_runs: Family<TaskRunLabels, Counter>,
    pub vm_crashes: Counter,
    pub host_cpu_percent: FloatGauge,
    pub host_cpus: Gauge,
    pub host_load1: FloatGauge,
    pub host_memory_used: Gauge,
    pub host_memory_total: Gauge,
    pub host_disk_free: Gauge,
    pub host_disk_total: Gauge,
}

impl OpsMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        let _ = self
            .build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        let now = unix_seconds();
        self.start_time.set(now);
        // Start-up counts as the first sign of life: the store has just opened.
        self.main_loop_last_ok.set(now);
        registry.register(
            "mc_build_info",
            "Always 1; the running build's version in its label",
            self.build_info.clone(),
        );
        registry.register(
            "mc_start_time_seconds",
            "Unix time the daemon started; a change is a restart (a crash or a missed watchdog)",
            self.start_time.clone(),
        );
        registry.register(
            "mc_main_loop_last_ok_timestamp_seconds",
            "Unix time the main loop last saw the store answer and pinged systemd's watchdog",
            self.main_loop_last_ok.clone(),
        );
        registry.register(
            "mc_watchdog_interval_seconds",
            "How often the main loop pings systemd's watchdog; 0 when systemd armed none",
            self.watchdog_interval.clone(),
        );
        // prometheus-client appends `_total` to counters: this is `mc_task_runs_total`.
        registry.register(
            "mc_task_runs",
            "Background task runs by task and outcome (ok, failed)",
            self.task_runs.clone(),
        );
        registry.register(
            "mc_vm_crashes",
            "Running VMs marked failed: their hypervisor exited or their agent stopped answering",
            self.vm_crashes.clone(),
        );
        registry.register(
            "mc_host_cpu_percent",
            "Host CPU use of all cores since the previous scrape, in percent",
            self.host_cpu_percent.clone(),
        );
        registry.register("mc_host_cpus", "Host CPUs", self.host_cpus.clone());
        registry.register(
            "mc_host_load1",
            "Host load average over one minute",
            self.host_load1.clone(),
        );
        registry.register(
            "mc_host_memory_used_bytes",
            "Host memory in use",
            self.host_memory_used.clone(),
        );
        registry.register(
            "mc_host_memory_total_bytes",
            "Host memory",
            self.host_memory_total.clone(),
        );
        registry.register(
            "mc_host_disk_free_bytes",
            "Free space on the data directory's filesystem (state, VM disks, hibernation images)",
            self.host_disk_free.clone(),
        );
        registry.register(
            "mc_host_disk_total_bytes",
            "Size of the data directory's filesystem",
            self.host_disk_total.clone(),
        );
    }

    /// Seeds `task`'s outcome series at zero.
    pub fn seed_task(&self, task: &str) {
        for outcome in TASK_OUTCOMES {
            let _ = self.task_runs.get_or_create(&TaskRunLabels {
                task: task.to_string(),
                outcome: outcome.to_string(),
            });
        }
    }

    pub fn count_task_run(&self, task: &str, ok: bool) {
        self.task_runs
            .get_or_create(&TaskRunLabels {
                task: task.to_string(),
                outcome: TASK_OUTCOMES[usize::from(!ok)].to_string(),
            })
            .inc();
    }

    /// The main loop saw the store answer (and pinged the watchdog, when one is armed).
    pub fn main_loop_ok(&self) {
        self.main_loop_last_ok.set(unix_seconds());
    }

    pub fn set_host(&self, host: &HostReading) {
        self.host_cpu_percent.set(host.cpu_percent);
        self.host_cpus.set(clamp(host.cpus));
        self.host_load1.set(host.load1);
        self.host_memory_used.set(clamp(host.memory_used_bytes));
        self.host_memory_total.set(clamp(host.memory_total_bytes));
        self.host_disk_free.set(clamp(
            host.disk_total_bytes.saturating_sub(host.disk_used_bytes),
        ));
        self.host_disk_total.set(clamp(host.disk_total_bytes));
    }
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_runs_are_seeded_and_counted_by_outcome() {
        let ops = OpsMetrics::default();
        let mut registry = Registry::default();
        ops.register(&mut registry);
        ops.seed_task("vm_health");
        ops.count_task_run("vm_health", false);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"mc_task_runs_total{task="vm_health",outcome="ok"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mc_task_runs_total{task="vm_health",outcome="failed"} 1"#),
            "{text}"
        );
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!(r#"mc_build_info{{version="{version}"}} 1"#)),
            "{text}"
        );
        assert!(text.contains("mc_vm_crashes_total 0"), "{text}");
    }
}
