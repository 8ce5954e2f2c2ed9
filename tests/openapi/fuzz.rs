//! schemathesis against a live daemon.

use std::path::PathBuf;

/// The pinned schemathesis (`MC_SCHEMATHESIS`, printed by scripts/install-schemathesis.sh), or
/// `None` after saying why the test skips (a failure under `MC_REQUIRE_GUESTS=1`, where
/// scripts/test.sh installed it).
pub fn schemathesis() -> Option<PathBuf> {
    let found = std::env::var_os("MC_SCHEMATHESIS")
        .map(PathBuf::from)
        .filter(|path| path.is_file());
    if found.is_none() {
        let reason = "MC_SCHEMATHESIS does not name schemathesis's `st` \
            (MC_SCHEMATHESIS=$(scripts/install-schemathesis.sh); scripts/test.sh does)";
        assert!(
            std::env::var("MC_REQUIRE_GUESTS").as_deref() != Ok("1"),
            "MC_REQUIRE_GUESTS=1 but {reason}"
        );
        eprintln!("SKIPPED: {reason}");
    }
    found
}

/// How long schemathesis may run, and how many cases it makes per operation: enough to reach
/// every operation in each phase, bounded for CI.
const MAX_TIME_SECS: u64 = 240;
const MAX_EXAMPLES: u32 = 30;

/// Runs schemathesis against a live daemon (its VMs on the fake hypervisor) with the admin
/// token, across every operation: no 5xx, and every response conforms to the document.
pub async fn fuzz_a_live_daemon(st: &std::path::Path) {
    use super::support::ADMIN_TOKEN;
    use super::support::fake_vmm::daemon_with_fake_vms;

    let (d, hypervisor, _netlink) = daemon_with_fake_vms(&[
        ("MC_TASKS_ENABLED", "false"),
        (
            "ENCRYPTION_MASTER_KEY",
            super::support::scheduled::MASTER_KEY,
        ),
        // The fuzzer's requests all carry one token, and its auth checks send bad ones.
        ("MC_RATE_LIMIT_PER_SECOND", "100000"),
        ("MC_RATE_LIMIT_BURST", "100000"),
        ("MC_AUTH_FAILURES_PER_MINUTE", "0"),
        ("MC_PROMPT_TIMEOUT_SECS", "5"),
        ("MC_BRIDGE_CIDR", "127.0.0.1/24"),
        ("DECODO_HOST", "127.0.0.1"),
        ("DECODO_USER", "user"),
        ("DECODO_PASSWORD", "password"),
        ("DECODO_PORT_START", "1"),
        ("DECODO_PORT_END", "8"),
        ("MC_EGRESS_ECHO_URL", "http://127.0.0.1:1/ip"),
        ("MC_EGRESS_HEALTH_TIMEOUT_SECS", "1"),
    ])
    .await;
    // Every request must end: a CLI or command on the fake VMs exits at once.
    hypervisor
        .commands_exit_at_once
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // Something to list and look at: users, one with a VM.
    let user = d.create_user("fuzz-seed@example.com").await;
    let other = d.create_user("fuzz-seed-2@example.com").await;
    let vm = d
        .call(
            "POST",
            &format!("/api/users/{user}/vm"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert!(vm.status < 300, "seed VM: {:?}", vm.json);
    let vm_id = vm.json["vmId"].as_str().expect("vmId").to_string();

    let reports = tempfile::tempdir().expect("tempdir");
    // The WebSocket routes take only upgrades, which the fuzzer's HTTP client does not make:
    // its plain GETs are answered 400 `websocket_upgrade_required` (after the token check).
    // Half the generated ids are ones that exist, so the cases reach past the 404s; DELETEs
    // draw their own, or the first would leave nothing for the rest.
    let config = format!(
        "max-stream-events = 50\n\
         [dictionaries.users]\nvalues = [\"{user}\", \"{other}\"]\n\
         [dictionaries.vms]\nvalues = [\"{vm_id}\"]\n\
         [[operations]]\n\
         include-tag = \"websocket\"\n\
         checks = {{ positive_data_acceptance = {{ expected-statuses = [\"101\", \"400\", \"401\", \"403\", \"429\"] }} }}\n\
         [[operations]]\n\
         exclude-method = \"DELETE\"\n\
         parameters = {{ \"path.userId\" = {{ dictionary = \"users\", probability = 0.5 }}, \
         \"path.vmId\" = {{ dictionary = \"vms\", probability = 0.5 }} }}\n"
    );
    println!("schemathesis.toml:\n{config}");
    std::fs::write(reports.path().join("schemathesis.toml"), config)
        .expect("write schemathesis.toml");
    // schemathesis leaves out the operation that serves the document it was given unless it
    // is asked for by name: a second, short pass fuzzes `/openapi.json` itself.
    let everything = run(st, &d, reports.path(), "run", &[]).await;
    let itself = run(
        st,
        &d,
        reports.path(),
        "itself",
        &["--include-operation-id", "openapi", "--max-time", "20"],
    )
    .await;
    let documented = super::documented(
        &serde_json::from_str(&master_controller::api::openapi::document_json())
            .expect("the document is JSON"),
    )
    .len() as u64;
    if std::env::var_os("MC_FUZZ_EXTRA").is_none() {
        assert_eq!(
            everything + itself,
            documented,
            "every operation of the document is fuzzed"
        );
    }
    d.shutdown().await;
}

/// One schemathesis run against `d` (its summary reported, its failures a panic); returns how
/// many operations it tested.
async fn run(
    st: &std::path::Path,
    d: &super::support::TestDaemon,
    dir: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> u64 {
    use super::support::ADMIN_TOKEN;
    let report = dir.join(format!("{name}.json"));
    let mut command = tokio::process::Command::new(st);
    command
        .arg("run")
        .arg(d.url("/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--checks", "all"])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--max-time", &MAX_TIME_SECS.to_string()])
        .args(["--request-timeout", "20"])
        .args(["--seed", "20261206"])
        .args(["--workers", "2"])
        .args(["--report", "json"])
        .arg("--report-json-path")
        .arg(&report)
        .arg("--output-truncate=false")
        .args(extra)
        // For a developer's narrower run, e.g. `--include-tag users --max-time 60`.
        .args(
            std::env::var("MC_FUZZ_EXTRA")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .kill_on_drop(true);
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(MAX_TIME_SECS + 180),
        command.output(),
    )
    .await
    .expect("schemathesis finishes within its time budget")
    .expect("run schemathesis");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report).expect("schemathesis wrote its JSON report"),
    )
    .expect("the report is JSON");
    let operations = &report["operations"];
    let cases = &report["test_cases"];
    super::support::report(&format!(
        "schemathesis ({name}): {} of {} operations tested ({} errored, {} skipped); {} cases \
         generated, {} with failures; stopped by {}",
        operations["tested"],
        operations["selected"],
        operations["errored"],
        operations["skipped"],
        cases["generated"],
        cases["with_failures"],
        report["stop_reason"],
    ));
    assert_eq!(
        operations["tested"], operations["selected"],
        "every selected operation is tested"
    );
    assert!(
        output.status.success(),
        "schemathesis ({name}) found failures (status {:?}); see above",
        output.status
    );
    operations["tested"].as_u64().unwrap_or(0)
}
