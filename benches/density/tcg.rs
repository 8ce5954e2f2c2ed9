//! The real-guest part: test-image VMs under QEMU/TCG, created through the API of a daemon in
//! this process (in a network namespace of its own, with its bridge and taps), two at a time.
//! Each must be `running` and its agent must run a command through the API before the next
//! count is measured. At each count, after an idle period: the daemon's RSS (this process), each
//! QEMU process's PSS and RSS (`/proc/<pid>/smaps_rollup`), and the drop of the host's
//! `MemAvailable` since the daemon started, per VM (a cross-check: other processes on the host
//! move it too). Then every VM is destroyed and the cleanup checked.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use master_controller::model::tables;
use master_controller::store;
use redb::ReadableTableMetadata;

use super::mem::{self, ProcMem, mean, mib, percentile};
use super::support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon, vmhost};

const BRIDGE: &str = "mcdens0";
const GATEWAY: &str = "10.218.0.1";
/// VMs created at once: TCG boots share the host's two cores.
const CONCURRENCY: usize = 2;
/// What a QEMU process may hold beyond its guest's memory, for the fit check (its own heap,
/// TCG's translation cache); the measured figures replace this guess in the table.
const QEMU_OVERHEAD_MIB: u64 = 64;
/// Left free for the rest of the host.
const RESERVE_MIB: u64 = 2048;

/// Kills, when dropped, any QEMU this process still parents: a panic must not leave guests
/// running on the host (the daemon leaves them to be adopted at its next start).
pub struct KillStrayGuests;

impl Drop for KillStrayGuests {
    fn drop(&mut self) {
        for pid in mem::children_named("qemu-system") {
            eprintln!("density: killing stray QEMU {pid}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The figures at one VM count.
struct Stage {
    vms: usize,
    daemon_rss_kib: u64,
    available_drop_kib: f64,
    qemu: Vec<ProcMem>,
}

/// A user and its VM's QEMU.
struct Guest {
    user: String,
    pid: u32,
}

pub async fn bench(counts: &[usize], idle: Duration) {
    let env = vmhost::guest_daemon_env(BRIDGE, GATEWAY);
    let memory_mib: u64 = env
        .iter()
        .find(|(k, _)| *k == "MC_VM_MEMORY_MIB")
        .and_then(|(_, v)| v.parse().ok())
        .expect("the test setup's guest memory");
    let max = counts.last().copied().unwrap_or(0);
    let mut env: Vec<(&str, String)> = env;
    env.extend([
        ("MC_MAX_VMS", max.max(1).to_string()),
        ("MC_RATE_LIMIT_PER_SECOND", "100000".into()),
        ("MC_RATE_LIMIT_BURST", "100000".into()),
        // Boots slow down as idle guests accumulate on two cores.
        ("MC_VM_AGENT_TIMEOUT_SECS", "300".into()),
        // Two rounds of health polls in the idle period (the default is every 30 s).
        ("MC_VM_HEALTH_INTERVAL_SECS", "5".into()),
        // No VM is hibernated for idleness during the run.
        ("MC_IDLE_HIBERNATE_AFTER_SECS", "86400".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = TestDaemon::start_with(&env).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let daemon_base_kib = mem::self_rss_kib();
    let available_base_kib = mem::mem_available_kib();
    let pool_before = pool_available(&d).await;

    // The worst case: every guest touches all its memory.
    let per_vm_mib = memory_mib + QEMU_OVERHEAD_MIB;
    let fits = ((available_base_kib / 1024).saturating_sub(RESERVE_MIB) / per_vm_mib) as usize;
    let asked = counts;
    let counts: Vec<usize> = asked.iter().copied().filter(|&c| c <= fits).collect();
    eprintln!(
        "density: QEMU/TCG, test image, 1 vCPU and {memory_mib} MiB a guest; {} MiB available, \
         room for {fits} VMs at worst ({per_vm_mib} MiB each, {RESERVE_MIB} MiB kept free)",
        available_base_kib / 1024
    );
    if counts.len() < asked.len() {
        println!(
            "\ndensity: {max} VMs of {memory_mib} MiB would not fit comfortably: at worst \
             {max} × {per_vm_mib} MiB + {RESERVE_MIB} MiB > {} MiB available; measuring up to {fits}",
            available_base_kib / 1024
        );
    }

    let mut guests: Vec<Guest> = Vec::new();
    let mut stages = Vec::new();
    for &count in &counts {
        let mut users = Vec::new();
        for n in guests.len()..count {
            users.push(d.create_user(&format!("density-{n}@example.com")).await);
        }
        let created = guests.len();
        let new: Vec<Guest> = futures_util::stream::iter(users)
            .map(|user| create(&d, user))
            .buffer_unordered(CONCURRENCY)
            .enumerate()
            .map(|(n, (guest, took))| {
                eprintln!(
                    "density: VM {}/{count} running, its agent answered (pid {}, {:.1} s)",
                    created + n + 1,
                    guest.pid,
                    took.as_secs_f64()
                );
                guest
            })
            .collect()
            .await;
        guests.extend(new);
        eprintln!("density: {count} VMs running; idle {} s", idle.as_secs());
        tokio::time::sleep(idle).await;
        let qemu: Vec<ProcMem> = guests
            .iter()
            .map(|g| mem::proc_mem(g.pid).unwrap_or_else(|| panic!("QEMU {} is gone", g.pid)))
            .collect();
        let available_drop_kib = available_base_kib as f64 - mem::mem_available_kib() as f64;
        stages.push(Stage {
            vms: count,
            daemon_rss_kib: mem::self_rss_kib(),
            available_drop_kib,
            qemu,
        });
    }

    let available_before_destroy_kib = mem::mem_available_kib();
    destroy_all(&d, &guests).await;
    check_cleanup(&d, &guests, pool_before).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rise_kib = mem::mem_available_kib() as f64 - available_before_destroy_kib as f64;
    d.shutdown().await;
    print_tables(memory_mib, daemon_base_kib, &stages);
    println!(
        "\nThe guests' memory: {memory_mib} MiB each; {max} VMs need at most {max} × {per_vm_mib} MiB \
         = {:.1} GiB (every guest touching all its memory, {QEMU_OVERHEAD_MIB} MiB for QEMU \
         itself), against {:.1} GiB available at the start: {}.",
        (max as u64 * per_vm_mib) as f64 / 1024.0,
        available_base_kib as f64 / 1024.0 / 1024.0,
        if max <= fits {
            "fits"
        } else {
            "does NOT fit, so fewer were measured"
        }
    );
    if !guests.is_empty() {
        println!(
            "Destroying the {} VMs raised MemAvailable by {} MiB per VM (a window of seconds, less \
             exposed to the rest of the host than the drops since the start).",
            guests.len(),
            mib(rise_kib / guests.len() as f64)
        );
    }
}

/// Creates the user's VM (it answers once the VM runs and its agent answered), runs `true`
/// in it through the API, and finds its QEMU; how long the create took.
async fn create(d: &TestDaemon, user: String) -> (Guest, Duration) {
    let started = Instant::now();
    let vm = format!("/api/users/{user}/vm");
    let reply = d.call("POST", &vm, Some(SERVICE_TOKEN), None).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 201, "create: {:?}", reply.json);
    assert_eq!(reply.json["status"], "running", "{:?}", reply.json);
    let exec = d
        .call(
            "POST",
            &format!("/api/users/{user}/exec"),
            Some(SERVICE_TOKEN),
            Some(r#"{"argv":["true"],"timeoutSec":120}"#),
        )
        .await;
    let text = exec.json.as_str().unwrap_or_default();
    assert!(
        exec.status == 200 && text.contains(r#""type":"exit""#) && text.contains(r#""exitCode":0"#),
        "exec of `true` in {user}'s VM: {} {text}",
        exec.status
    );
    let record = d.ctx.vms.user_vm(&user).await.expect("the VM's record");
    let pid = record.pid.expect("a running VM's pid");
    let name = mem::comm(pid).unwrap_or_default();
    assert!(name.starts_with("qemu-system"), "pid {pid} is {name:?}");
    (Guest { user, pid }, took)
}

async fn pool_available(d: &TestDaemon) -> serde_json::Value {
    let summary = d
        .call(
            "GET",
            "/api/vms/statistics/summary",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(summary.status, 200, "{:?}", summary.json);
    summary.json["ipPoolAvailable"].clone()
}

async fn destroy_all(d: &TestDaemon, guests: &[Guest]) {
    eprintln!("density: destroying {} VMs", guests.len());
    futures_util::stream::iter(guests)
        .for_each_concurrent(4, |g| async move {
            let reply = d
                .call(
                    "DELETE",
                    &format!("/api/users/{}/vm", g.user),
                    Some(SERVICE_TOKEN),
                    None,
                )
                .await;
            assert_eq!(reply.status, 200, "destroy: {:?}", reply.json);
            assert_eq!(reply.json["status"], "destroyed", "{:?}", reply.json);
        })
        .await;
}

/// No QEMU, tap, lease, intent or VM directory is left, and the address pool is whole again.
async fn check_cleanup(d: &TestDaemon, guests: &[Guest], pool_before: serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while guests.iter().any(|g| mem::alive(g.pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left: Vec<u32> = guests
        .iter()
        .map(|g| g.pid)
        .filter(|&p| mem::alive(p))
        .collect();
    assert!(left.is_empty(), "QEMU processes left: {left:?}");
    let ports = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", BRIDGE])
        .output()
        .expect("ip link show");
    let ports = String::from_utf8_lossy(&ports.stdout).to_string();
    assert!(ports.trim().is_empty(), "taps left on {BRIDGE}: {ports}");
    let dirs = std::fs::read_dir(d.data_dir.path().join("vms"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(dirs, 0, "VM directories left");
    let (leases, intents) = d
        .ctx
        .store
        .read(|tx| {
            let leases = tx.open_table(tables::IP_LEASES)?.len()?;
            let intents = tx.open_table(tables::VM_INTENTS)?.len()?;
            Ok::<_, store::StoreError>((leases, intents))
        })
        .await
        .expect("read the store");
    assert_eq!((leases, intents), (0, 0), "leases or intents left");
    assert_eq!(pool_available(d).await, pool_before, "the address pool");
    eprintln!(
        "density: cleanup checked: {} VMs destroyed; no QEMU, tap, lease, intent or VM directory left",
        guests.len()
    );
}

fn print_tables(memory_mib: u64, daemon_base_kib: u64, stages: &[Stage]) {
    let kib = |stage: &Stage, f: fn(&ProcMem) -> u64| -> Vec<f64> {
        stage.qemu.iter().map(|m| f(m) as f64).collect()
    };
    println!(
        "\n### Density, QEMU/TCG, test image (1 vCPU, {memory_mib} MiB a guest), idle VMs: the daemon\n"
    );
    println!(
        "| idle VMs | daemon RSS MiB | Δ over the idle daemon MiB | Δ per VM KiB | host memory per VM MiB (QEMU PSS mean + daemon Δ per VM) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!("| 0 | {} | — | — | — |", mib(daemon_base_kib as f64));
    for s in stages {
        let delta = s.daemon_rss_kib as f64 - daemon_base_kib as f64;
        let per_vm = delta / s.vms as f64;
        println!(
            "| {} | {} | {} | {per_vm:.0} | {} |",
            s.vms,
            mib(s.daemon_rss_kib as f64),
            mib(delta),
            mib(mean(&kib(s, |m| m.pss_kib)) + per_vm)
        );
    }
    println!(
        "\n### Density, QEMU/TCG, test image (1 vCPU, {memory_mib} MiB a guest), idle VMs: host memory per VM\n"
    );
    println!(
        "| idle VMs | QEMU PSS p50 MiB | PSS p95 MiB | PSS p99 MiB | PSS mean MiB | anonymous PSS mean MiB | QEMU RSS p50 MiB | RSS mean MiB | PSS p50 ÷ guest memory | MemAvailable drop per VM MiB | drop ÷ PSS mean |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in stages {
        let (pss, rss) = (kib(s, |m| m.pss_kib), kib(s, |m| m.rss_kib));
        let drop_per_vm = s.available_drop_kib / s.vms as f64;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.2}× |",
            s.vms,
            mib(percentile(&pss, 0.5)),
            mib(percentile(&pss, 0.95)),
            mib(percentile(&pss, 0.99)),
            mib(mean(&pss)),
            mib(mean(&kib(s, |m| m.pss_anon_kib))),
            mib(percentile(&rss, 0.5)),
            mib(mean(&rss)),
            percentile(&pss, 0.5) / (memory_mib * 1024) as f64,
            mib(drop_per_vm),
            drop_per_vm / mean(&pss).max(1.0)
        );
    }
}
