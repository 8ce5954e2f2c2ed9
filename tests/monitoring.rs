//! The shipped monitoring with the real Prometheus from Debian: `promtool` checks the alert rules
//! and runs their unit tests (at least one firing case per alert), and a real Prometheus scrapes
//! a live daemon (fake VMs) that has created, hibernated and resumed VMs, run and cancelled a
//! prompt, ended a login and run tasks; every query of the Grafana dashboard must then return at
//! least one series. Without `prometheus`/`promtool` the tests skip, or fail under
//! `MC_REQUIRE_GUESTS=1` (scripts/test.sh installs them).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use master_controller::prompts::PromptRequest;
use master_controller::providers;
use serde_json::Value;
use support::fake_vmm::daemon_with_fake_vms;
use support::prometheus::{Prometheus, free_port};
use support::scheduled::MASTER_KEY;
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};

const RULES: &str = "appliance/prometheus-rules.yml";
const RULE_TESTS: &str = "appliance/prometheus-rules.test.yml";
const DASHBOARD: &str = "appliance/grafana/master-controller.json";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The binary on PATH, or `None` after saying why the test skips (a failure under
/// `MC_REQUIRE_GUESTS=1`, where every prerequisite was installed).
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        let reason = format!(
            "{name} is not installed (apt-get install --no-install-recommends prometheus; scripts/test.sh does)"
        );
        assert!(
            std::env::var("MC_REQUIRE_GUESTS").as_deref() != Ok("1"),
            "MC_REQUIRE_GUESTS=1 but {reason}"
        );
        eprintln!("SKIPPED: {reason}");
    }
    found
}

fn run(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{text}",
        program.display()
    );
    text
}

fn yaml(path: &str) -> serde_yaml_ng::Value {
    let text = std::fs::read_to_string(repo(path)).expect("read YAML");
    serde_yaml_ng::from_str(&text).expect("valid YAML")
}

#[test]
fn every_alert_has_a_severity_a_runbook_and_a_firing_unit_test() {
    let rules = yaml(RULES);
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            let severity = rule["labels"]["severity"].as_str().unwrap_or("");
            assert!(
                ["critical", "warning"].contains(&severity),
                "{name}: severity {severity:?}"
            );
            let runbook = rule["annotations"]["runbook"].as_str().unwrap_or("");
            assert!(!runbook.trim().is_empty(), "{name} has no runbook");
            assert!(
                !rule["expr"].as_str().unwrap_or("").contains("\"5..\"}"),
                "{name}: every 5xx includes 503 vm_limit_reached"
            );
            alerts.insert(name.to_string());
        }
    }
    let required = [
        "MasterControllerDown",
        "MasterControllerMainLoopStalled",
        "VmIpPoolLow",
        "UpstreamPortsLow",
        "UpstreamPortUnhealthy",
        "OutboxStale",
        "OutboxDeadLetters",
        "VmCrashRate",
        "TaskFailed",
        "DiskAlmostFull",
    ];
    for name in required {
        assert!(alerts.contains(name), "no alert {name}");
    }
    // A case that expects the alert to fire, for every alert.
    let tests = yaml(RULE_TESTS);
    let mut fired = BTreeSet::new();
    for case in tests["tests"].as_sequence().expect("tests") {
        for check in case["alert_rule_test"].as_sequence().into_iter().flatten() {
            let expected = check["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected > 0 {
                fired.insert(check["alertname"].as_str().unwrap_or("").to_string());
            }
        }
    }
    let untested: Vec<_> = alerts.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "alerts without a firing test: {untested:?}"
    );

    let Some(promtool) = tool("promtool") else {
        return;
    };
    let checked = run(&promtool, &["check", "rules", RULES]);
    eprintln!("{checked}");
    let tested = run(&promtool, &["test", "rules", RULE_TESTS]);
    eprintln!("{tested}");
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The dashboard's queries by panel title, after checking that Grafana can import it: a schema
/// version, a Prometheus datasource variable, and every panel and query on that variable.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo(DASHBOARD)).expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 30),
        "schemaVersion"
    );
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no prometheus datasource variable"
    );
    let on_variable =
        |ds: &Value| ds["type"] == "prometheus" && ds["uid"].as_str() == Some("${datasource}");
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("").to_string();
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{title}: duplicate id"
        );
        assert!(panel["gridPos"]["w"].is_u64(), "{title}: no gridPos");
        if panel["type"] == "row" {
            continue;
        }
        assert!(on_variable(&panel["datasource"]), "{title}: datasource");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert!(
                on_variable(&target["datasource"]),
                "{title}: query datasource"
            );
            let expr = target["expr"].as_str().expect("expr");
            queries.push((title.clone(), expr.to_string()));
        }
    }
    queries
}

/// Waits for `ready` (polled every 200 ms) up to `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn post_ok(d: &TestDaemon, path: &str, token: &str, expect: u16) -> Value {
    let reply = d.call("POST", path, Some(token), None).await;
    assert_eq!(reply.status, expect, "POST {path}: {:?}", reply.json);
    reply.json
}

/// Some of everything the dashboard shows: VMs created, hibernated and resumed; a prompt run
/// and cancelled; a login ended; tasks run (the upstream ports are unreachable, so
/// `proxy_health` fails).
async fn do_some_work(d: &TestDaemon) {
    let prompting = d.create_user("prompting@example.com").await;
    let logging_in = d.create_user("login@example.com").await;
    for user in [&prompting, &logging_in] {
        post_ok(d, &format!("/api/users/{user}/vm"), SERVICE_TOKEN, 201).await;
    }
    post_ok(
        d,
        &format!("/api/users/{prompting}/vm/hibernate"),
        SERVICE_TOKEN,
        200,
    )
    .await;
    post_ok(
        d,
        &format!("/api/users/{prompting}/vm/resume"),
        SERVICE_TOKEN,
        200,
    )
    .await;

    let run = d
        .ctx
        .prompts
        .execute(PromptRequest {
            user_id: prompting.clone(),
            provider: providers::CLAUDE_CODE,
            prompt: "a long task".into(),
            model: None,
            timeout_sec: None,
            cancel_on_disconnect: false,
            conversation_id: None,
            cwd: None,
        })
        .await
        .expect("prompt starts");
    let session = d
        .ctx
        .oauth
        .start(&logging_in, providers::CLAUDE_CODE, false)
        .await
        .expect("login starts");
    until(
        "the login to run in its VM",
        Duration::from_secs(30),
        || async {
            let session = d.ctx.oauth.session(&session.id).await.expect("session");
            session.vm_id.is_some()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.ctx.prompts.cancel(&run.id).await.expect("cancel");
    let expired = d
        .ctx
        .oauth
        .expire_older_than(Duration::ZERO)
        .await
        .expect("expire");
    assert_eq!(expired, 1);

    for task in ["vm_health", "metrics_sample"] {
        post_ok(d, &format!("/api/admin/tasks/{task}/run"), ADMIN_TOKEN, 200).await;
    }
    let checked = post_ok(d, "/api/admin/tasks/proxy_health/run", ADMIN_TOKEN, 200).await;
    eprintln!("proxy_health: {checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_gets_data_for_every_dashboard_query() {
    let queries = dashboard_queries();
    let Some(binary) = tool("prometheus") else {
        return;
    };
    let gateway_port = free_port().to_string();
    // An upstream that refuses every connection: ports are leased with VMs, and their checks
    // fail, so the port health series exist.
    let (d, _hypervisor, _netlink) = daemon_with_fake_vms(&[
        ("MC_TASKS_ENABLED", "false"),
        // Each agent's health report sets its VM's resource series.
        ("MC_VM_HEALTH_INTERVAL_SECS", "1"),
        ("ENCRYPTION_MASTER_KEY", MASTER_KEY),
        ("MC_PROMPT_TIMEOUT_SECS", "86400"),
        ("MC_PROMPT_MAX_TIMEOUT_SECS", "86400"),
        ("MC_BRIDGE_CIDR", "127.0.0.1/24"),
        ("DECODO_HOST", "127.0.0.1"),
        ("DECODO_USER", "user"),
        ("DECODO_PASSWORD", "password"),
        ("DECODO_PORT_START", "1"),
        ("DECODO_PORT_END", "4"),
        ("MC_EGRESS_GATEWAY_PORT", &gateway_port),
        ("MC_EGRESS_ECHO_URL", "http://127.0.0.1:1/ip"),
        ("MC_EGRESS_HEALTH_SPACING_MS", "10"),
        ("MC_EGRESS_HEALTH_TIMEOUT_SECS", "2"),
    ])
    .await;
    do_some_work(&d).await;

    let target = d.base.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&binary, &target, ADMIN_TOKEN, &repo(RULES));
    let client = reqwest::Client::new();
    let up = r#"up{job="master-controller"} == 1"#;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        if let Some(series) = prometheus.query(&client, up).await
            && !series.is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the daemon:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A failed run while Prometheus watches: `increase()` needs the counter to move between
    // samples, so TaskFailed must fire for it, through the real rule evaluation.
    tokio::time::sleep(Duration::from_secs(2)).await;
    post_ok(&d, "/api/admin/tasks/proxy_health/run", ADMIN_TOKEN, 200).await;
    let firing = r#"ALERTS{alertname="TaskFailed", task="proxy_health", alertstate="firing"}"#;
    loop {
        if let Some(series) = prometheus.query(&client, firing).await
            && !series.is_empty()
        {
            println!("TaskFailed fired for proxy_health");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "TaskFailed never fired:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The work shows in the scraped values, not only in series seeded at zero.
    for (expr, at_least) in [
        ("sum(polydev_vm_create_duration_seconds_count)", 2.0),
        ("sum(polydev_vm_hibernate_duration_seconds_count)", 1.0),
        ("sum(polydev_vm_resume_duration_seconds_count)", 1.0),
        (r#"sum(polydev_prompts_total{status="cancelled"})"#, 1.0),
        (r#"sum(polydev_auth_sessions_total{status="timeout"})"#, 1.0),
        (
            r#"sum(mc_task_runs_total{task="vm_health", outcome="ok"})"#,
            1.0,
        ),
        (
            r#"sum(mc_task_runs_total{task="proxy_health", outcome="failed"})"#,
            2.0,
        ),
        ("sum(polydev_decodo_ports_used)", 2.0),
        ("mc_host_disk_total_bytes", 1.0),
    ] {
        let series = prometheus.query(&client, expr).await.unwrap_or_default();
        let value = series
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(
            value >= at_least,
            "{expr} = {value}, expected at least {at_least}"
        );
    }

    let mut empty = Vec::new();
    let mut listed = format!(
        "dashboard queries and their series ({} queries):",
        queries.len()
    );
    for (panel, expr) in &queries {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "15s");
        let series = prometheus
            .query(&client, &expr)
            .await
            .unwrap_or_default()
            .len();
        listed.push_str(&format!("\n  {series:>3}  {panel}: {expr}"));
        if series == 0 {
            empty.push(format!("{panel}: {expr}"));
        }
    }
    support::report(&listed);
    // The rules load in the real Prometheus too.
    let rules: Value = client
        .get(format!("{}/api/v1/rules", prometheus.base))
        .send()
        .await
        .expect("rules")
        .json()
        .await
        .expect("rules JSON");
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let unhealthy: Vec<_> = loaded.iter().filter(|r| r["health"] != "ok").collect();
    println!("{} alert rules loaded", loaded.len());
    assert!(!loaded.is_empty(), "no rules loaded: {rules}");
    assert!(
        unhealthy.is_empty(),
        "rules failing to evaluate: {unhealthy:?}"
    );
    drop(prometheus);
    d.shutdown().await;
    assert!(empty.is_empty(), "queries without a series: {empty:#?}");
}
