//! The prompt stream's own cost (not a timed test): the latency the daemon adds between a CLI
//! printing an output line and an SSE client receiving its event, and the event throughput of
//! a long stream. The "CLI" is this binary itself, run as `gemini` by the real `vm-agent` (on the
//! host, as in tests/prompts.rs): each line carries the time it was printed. The raw figures are
//! the same CLI read straight from a pipe in the same run.
//!
//! `cargo bench --bench prompt_stream` (needs root for private network and UTS namespaces).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use master_controller::vms::VmHost;
use serde_json::json;
use support::fake_vmm::FakeNetlink;
use support::host_agent::{self, HostAgentHypervisor};
use support::sse::SseStream;
use support::stats::{ms, percentile};
use support::{SERVICE_TOKEN, TestDaemon, harness};

/// The prompt that makes this binary the fake CLI: `bench <lines> <interval ms>`.
const MARK: &str = "--prompt=bench ";

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// As the CLI: Gemini's stream-json, one assistant chunk per line, each the time it was printed.
fn fake_cli(spec: &str) {
    let mut parts = spec.split_whitespace();
    let lines: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(100);
    let interval = Duration::from_millis(parts.next().and_then(|n| n.parse().ok()).unwrap_or(0));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(
        out,
        r#"{{"type":"init","session_id":"bench","model":"bench"}}"#
    );
    for _ in 0..lines {
        let _ = writeln!(
            out,
            r#"{{"type":"message","role":"assistant","content":"{} ","delta":true}}"#,
            now_ns()
        );
        let _ = out.flush();
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    let _ = writeln!(
        out,
        r#"{{"type":"result","status":"success","stats":{{}}}}"#
    );
}

fn latency_of(text: &str) -> Option<Duration> {
    let printed: u128 = text.trim().parse().ok()?;
    Some(Duration::from_nanos(now_ns().saturating_sub(printed) as u64))
}

/// The same CLI read from a pipe: per-line latency and the whole run's duration.
fn raw(lines: usize, interval_ms: u64) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("this binary"))
        .arg(format!("{MARK}{lines} {interval_ms}"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("fake CLI");
    let reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut latencies = Vec::new();
    for line in reader.lines().map_while(Result::ok) {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(latency) = value["content"].as_str().and_then(latency_of) {
            latencies.push(latency);
        }
    }
    let _ = child.wait();
    (latencies, started.elapsed())
}

/// Through the daemon: per-event latency and the whole stream's duration.
async fn through_daemon(
    d: &TestDaemon,
    user: &str,
    lines: usize,
    interval_ms: u64,
) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(d.url("/api/prompts/execute"))
        .bearer_auth(SERVICE_TOKEN)
        .json(&json!({"userId": user, "provider": "gemini_cli",
            "prompt": format!("bench {lines} {interval_ms}")}))
        .send()
        .await
        .expect("execute");
    let mut stream = SseStream::new(response);
    let mut latencies = Vec::new();
    let mut ended = None;
    while let Some(frame) = stream.next().await {
        if frame.kind() == "content"
            && let Some(latency) = frame.data["text"].as_str().and_then(latency_of)
        {
            latencies.push(latency);
        }
        if frame.kind() == "done" || frame.kind() == "error" {
            ended = Some(frame.kind().to_string());
        }
    }
    assert_eq!(ended.as_deref(), Some("done"), "the stream must complete");
    assert_eq!(latencies.len(), lines, "every line arrived");
    (latencies, started.elapsed())
}

fn main() {
    if let Some(spec) = std::env::args().find_map(|a| a.strip_prefix(MARK).map(str::to_string)) {
        fake_cli(&spec);
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("prompt_stream: needs root for private network and UTS namespaces");
        std::process::exit(1);
    }
    host_agent::enter_namespaces();
    harness::runtime().block_on(bench());
}

async fn bench() {
    let bin_dir = tempfile::tempdir().expect("bin dir");
    std::os::unix::fs::symlink(
        std::env::current_exe().expect("this binary"),
        bin_dir.path().join("gemini"),
    )
    .expect("symlink");
    let home = tempfile::tempdir().expect("home");
    let cli_path = bin_dir.path().display().to_string();
    let cli_home = home.path().display().to_string();
    let host = VmHost {
        hypervisor: Arc::new(HostAgentHypervisor::default()),
        netlink: Arc::new(FakeNetlink::default()),
    };
    let d = TestDaemon::start_with_host(
        &[
            ("GOLDEN_KERNEL", "/host-agent/none"),
            ("MC_VM_DATA_DISK_MIB", "8"),
            ("MC_VM_VCPUS", "1"),
            ("MC_VM_MEMORY_MIB", "256"),
            ("MC_CLI_HOME", cli_home.as_str()),
            ("MC_CLI_PATH", cli_path.as_str()),
            ("MC_CLI_USER", "root"),
            ("MC_PROMPT_WHEN_BUSY", "queue"),
        ],
        Some(host),
    )
    .await;
    let user = d.create_user("bench@example.com").await;
    // Warm up: the first prompt creates the VM.
    through_daemon(&d, &user, 10, 0).await;

    let (lines, interval) = (500, 5);
    let (mut ours, _) = through_daemon(&d, &user, lines, interval).await;
    let (mut direct, _) = raw(lines, interval);
    ours.sort();
    direct.sort();

    let long = 20_000;
    let (_, ours_long) = through_daemon(&d, &user, long, 0).await;
    let (_, raw_long) = raw(long, 0);
    d.shutdown().await;

    println!("\n### Prompt stream, {lines} lines 5 ms apart, then {long} lines at once\n");
    println!("| measure | p50 ms | p95 ms | p99 ms | raw p50 ms | raw p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| CLI prints a line → SSE client has its event | {} | {} | {} | {} | {} |",
        ms(percentile(&ours, 0.5)),
        ms(percentile(&ours, 0.95)),
        ms(percentile(&ours, 0.99)),
        ms(percentile(&direct, 0.5)),
        ms(percentile(&direct, 0.99)),
    );
    println!();
    println!("| long stream | events/s | raw lines/s | ratio |");
    println!("|---|---:|---:|---:|");
    let ours_rate = long as f64 / ours_long.as_secs_f64();
    let raw_rate = long as f64 / raw_long.as_secs_f64();
    println!(
        "| {long} content events | {:.0} | {:.0} | {:.2}× |",
        ours_rate,
        raw_rate,
        ours_rate / raw_rate
    );
}
