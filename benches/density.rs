//! Density benchmark (not a timed test): the daemon's memory and the host's memory per idle VM.
//!
//! 1. **Fake hypervisor, 180 VMs** (`tests/support/fake_vmm.rs`, as `tests/vm_scale.rs`): the
//!    RSS of this process, which runs the daemon, at each step: the daemon started and idle,
//!    180 users, 180 VMs just created, and the same VMs after an idle period with the health
//!    polls running. The process also holds the bench's HTTP client (reqwest, dropped before
//!    the idle reading) and the 180 fake agents, so its RSS is an upper bound on the daemon's.
//!    Requirement (issue 19): under 100 MB (10^8 bytes) with 180 VMs, the peak included; the
//!    bench prints whether it was met and exits non-zero when not.
//! 2. **Real test-image VMs under QEMU/TCG** (`density/tcg.rs`): 1, then 10, then 50 idle VMs
//!    created through the API of a daemon in a fresh process (this binary run again, in a
//!    network namespace of its own), and at each count the daemon's RSS, each QEMU process's
//!    PSS and RSS, and the host's `MemAvailable` drop per VM. Skipped, saying why, without root
//!    or the test image.
//!
//! `cargo bench --bench density` (`MC_BENCH_DENSITY_TCG`: the VM counts, default `1,10,50`,
//! `none` to skip the real guests; `MC_BENCH_DENSITY_IDLE_SECS`: the idle period, default 10).
//! The real guests need root and the test image (`image/build-test-image.sh`); on a shared host
//! run it under the guest lock: `flock /tmp/mc-guest.lock cargo bench --bench density`.

#[path = "density/mem.rs"]
mod mem;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "density/tcg.rs"]
mod tcg;

use std::process::ExitCode;
use std::time::Duration;

use futures_util::future::join_all;
use mem::{PeakSampler, mib, self_rss_kib};
use support::fake_vmm::daemon_with_fake_vms;
use support::{SERVICE_TOKEN, TestDaemon, vmhost};

/// The appliance's VM limit (`MC_MAX_VMS`' default).
const FAKE_VMS: usize = 180;
/// The bound on the daemon's RSS with 180 VMs on the fake hypervisor: 100 MB.
const MAX_RSS_BYTES: u64 = 100_000_000;
/// Set in the re-run of this binary that boots the real guests.
const PART: &str = "MC_BENCH_DENSITY_PART";

fn idle_period() -> Duration {
    Duration::from_secs(
        std::env::var("MC_BENCH_DENSITY_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    )
}

/// The real-guest VM counts, ascending; empty when asked for none.
fn tcg_counts() -> Vec<usize> {
    let text = std::env::var("MC_BENCH_DENSITY_TCG").unwrap_or_else(|_| "1,10,50".into());
    let mut counts: Vec<usize> = text
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .filter(|&c| c > 0)
        .collect();
    counts.sort_unstable();
    counts.dedup();
    counts
}

fn runtime() -> tokio::runtime::Runtime {
    // Two workers: the daemon's own runtime on these 2-core hosts.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() -> ExitCode {
    if std::env::var(PART).as_deref() == Ok("tcg") {
        // The re-run: a fresh process, so that the fake part's heap is not in its figures.
        vmhost::enter_private_namespace();
        let _strays = tcg::KillStrayGuests;
        runtime().block_on(tcg::bench(&tcg_counts(), idle_period()));
        return ExitCode::SUCCESS;
    }
    // The fake part touches no host network (its links are fakes), but with root it runs in a
    // namespace of its own all the same.
    if nix::unistd::geteuid().is_root() {
        vmhost::enter_private_namespace();
    }
    let met = runtime().block_on(fake_part(idle_period()));
    let tcg = run_tcg_part();
    if met && tcg {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the real-guest part in a fresh process of this binary, or says why not; whether it
/// succeeded (a skip is a success).
fn run_tcg_part() -> bool {
    let counts = tcg_counts();
    if counts.is_empty() {
        println!("\ndensity: real guests skipped: MC_BENCH_DENSITY_TCG asks for none");
        return true;
    }
    if let Some(reason) = vmhost::missing_prerequisite() {
        println!("\ndensity: real guests (QEMU/TCG) skipped: {reason}");
        return true;
    }
    let exe = std::env::current_exe().expect("this bench's path");
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(PART, "tcg")
        .status()
        .expect("run the real-guest part");
    if !status.success() {
        eprintln!("density: the real-guest part failed: {status}");
    }
    status.success()
}

/// One reading of the fake part.
struct Reading {
    state: String,
    vms: usize,
    rss_kib: u64,
}

/// `method path` on the daemon with the service token through `client`; the status and body.
async fn send(
    client: &reqwest::Client,
    d: &TestDaemon,
    method: reqwest::Method,
    path: &str,
) -> (u16, serde_json::Value) {
    let response = client
        .request(method, d.url(path))
        .bearer_auth(SERVICE_TOKEN)
        .send()
        .await
        .expect("request reaches the daemon");
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// Every user's VM at once with `method`, through a client of its own that is dropped after
/// (its pooled connections close, on both sides); each must answer `status` with `expect`.
async fn all_vms(
    d: &TestDaemon,
    users: &[String],
    method: reqwest::Method,
    status: u16,
    expect: &str,
) {
    let client = reqwest::Client::new();
    let replies = join_all(users.iter().map(|user| {
        let (client, method) = (&client, method.clone());
        async move { send(client, d, method, &format!("/api/users/{user}/vm")).await }
    }))
    .await;
    for (code, json) in replies {
        assert_eq!(code, status, "{method} vm: {json:?}");
        assert_eq!(json["status"], expect, "{json:?}");
    }
}

/// The fake part; whether the requirement was met.
async fn fake_part(idle: Duration) -> bool {
    eprintln!("density: fake hypervisor, {FAKE_VMS} VMs");
    let (d, hypervisor, netlink) = daemon_with_fake_vms(&[
        ("MC_MAX_VMS", "180"),
        ("MC_RATE_LIMIT_PER_SECOND", "100000"),
        ("MC_RATE_LIMIT_BURST", "100000"),
        // Two rounds of health polls in the idle period (the default is every 30 s).
        ("MC_VM_HEALTH_INTERVAL_SECS", "5"),
    ])
    .await;
    let sampler = PeakSampler::start();
    let mut readings = Vec::new();
    let mut read = |state: &str, vms: usize| {
        let rss_kib = self_rss_kib();
        eprintln!("density:   {state}: RSS {} MiB", mib(rss_kib as f64));
        readings.push(Reading {
            state: state.into(),
            vms,
            rss_kib,
        });
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    read("daemon started, idle", 0);
    let mut users = Vec::with_capacity(FAKE_VMS);
    for n in 0..FAKE_VMS {
        users.push(d.create_user(&format!("density-{n}@example.com")).await);
    }
    read(&format!("{FAKE_VMS} users, no VM"), 0);
    all_vms(&d, &users, reqwest::Method::POST, 201, "running").await;
    assert_eq!(hypervisor.running(), FAKE_VMS);
    read(
        &format!("{FAKE_VMS} VMs just created (all at once), running"),
        FAKE_VMS,
    );
    tokio::time::sleep(idle).await;
    read(
        &format!("{FAKE_VMS} VMs running, idle {} s", idle.as_secs()),
        FAKE_VMS,
    );
    let peak_kib = sampler.stop();

    all_vms(&d, &users, reqwest::Method::DELETE, 200, "destroyed").await;
    assert_eq!(hypervisor.running(), 0, "every fake VM stopped");
    assert!(netlink.taps.lock().expect("taps").is_empty(), "no tap left");
    d.shutdown().await;

    let base = readings[0].rss_kib as f64;
    println!(
        "\n### Density, fake hypervisor, {FAKE_VMS} VMs (daemon, bench client and fake agents in one process)\n"
    );
    println!("| state | VMs | process RSS MiB | Δ over the idle daemon MiB | Δ per VM KiB |");
    println!("|---|---:|---:|---:|---:|");
    let delta = |kib: u64, vms: usize| {
        let d = kib as f64 - base;
        let per_vm = if vms > 0 {
            format!("{:.0}", d / vms as f64)
        } else {
            "—".into()
        };
        (mib(d), per_vm)
    };
    for r in &readings {
        let (d, per_vm) = delta(r.rss_kib, r.vms);
        println!(
            "| {} | {} | {} | {d} | {per_vm} |",
            r.state,
            r.vms,
            mib(r.rss_kib as f64)
        );
    }
    let (d, per_vm) = delta(peak_kib, FAKE_VMS);
    println!(
        "| peak of the process up to here (RSS sampled every 2 ms, and VmHWM) | {FAKE_VMS} | {} | {d} | {per_vm} |",
        mib(peak_kib as f64)
    );
    let worst_kib = readings
        .iter()
        .filter(|r| r.vms == FAKE_VMS)
        .map(|r| r.rss_kib)
        .chain([peak_kib])
        .max()
        .unwrap_or(peak_kib);
    let met = worst_kib * 1024 < MAX_RSS_BYTES;
    println!(
        "\nrequirement: the daemon's RSS with {FAKE_VMS} VMs (fake hypervisor) under 100 MB: {} (at most {} MiB = {:.1} MB, peak included)",
        if met { "met" } else { "NOT MET" },
        mib(worst_kib as f64),
        (worst_kib * 1024) as f64 / 1e6
    );
    met
}
