//! The admin routes: only the admin token reaches them, and the task, metrics, user-filter and
//! system-stats answers (the in-process daemon, VMs off).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use master_controller::tasks::schedule::Schedule;
use master_controller::tasks::{Job, TaskError};
use serde_json::Value;
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};
use tokio_util::sync::CancellationToken;

/// Every admin route, old and new: (method, path, body).
fn admin_routes(user: &str) -> Vec<(&'static str, String, Option<&'static str>)> {
    vec![
        ("GET", "/api/admin/users".into(), None),
        ("GET", "/api/admin/users?status=active&email=x".into(), None),
        ("GET", "/api/admin/system/stats".into(), None),
        (
            "POST",
            format!("/api/admin/users/{user}/force-destroy-vm"),
            None,
        ),
        ("POST", "/api/admin/cleanup/inactive-vms".into(), Some("{}")),
        ("POST", "/api/admin/cleanup/orphaned-resources".into(), None),
        (
            "POST",
            "/api/admin/vms/some-vm/exec".into(),
            Some(r#"{"argv":["true"]}"#),
        ),
        ("GET", "/api/admin/tasks".into(), None),
        ("POST", "/api/admin/tasks/metrics_sample/run".into(), None),
        ("GET", "/api/admin/outbox".into(), None),
        ("GET", "/api/admin/outbox/dead-letters".into(), None),
        (
            "POST",
            "/api/admin/outbox/dead-letters/retry".into(),
            Some("{}"),
        ),
        ("POST", "/api/admin/tasks/no_such_task/run".into(), None),
        ("GET", "/api/admin/metrics/recent?limit=5".into(), None),
        ("GET", "/api/admin/proxy-ports".into(), None),
    ]
}

#[tokio::test]
async fn only_the_admin_token_reaches_admin_routes() {
    let d = TestDaemon::start().await;
    let user = d.create_user("someone@example.com").await;
    let user_token = d.user_token(&user).await;
    for (method, path, body) in admin_routes(&user) {
        for (token, status) in [
            (None, 401),
            (Some(SERVICE_TOKEN), 403),
            (Some(user_token.as_str()), 403),
        ] {
            let reply = d.call(method, &path, token, body).await;
            assert_eq!(
                reply.status, status,
                "{method} {path} with {token:?}: {:?}",
                reply.json
            );
            let code = if status == 401 {
                "unauthorized"
            } else {
                "forbidden"
            };
            assert_eq!(reply.error_code(), code, "{method} {path}");
        }
    }
    // The admin token gets through to the handlers.
    let tasks = d
        .call("GET", "/api/admin/tasks", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(tasks.status, 200, "{:?}", tasks.json);
    d.shutdown().await;
}

/// Waits until released; counts as running meanwhile.
struct Gate {
    open: tokio::sync::Notify,
    started: AtomicBool,
}

#[async_trait::async_trait]
impl Job for Gate {
    async fn run(&self, _cancel: &CancellationToken) -> Result<u64, TaskError> {
        self.started.store(true, Ordering::SeqCst);
        self.open.notified().await;
        Ok(42)
    }
}

fn task<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} listed: {list}"))
}

#[tokio::test]
async fn tasks_are_listed_and_run_on_demand() {
    let d = TestDaemon::start().await;
    let listed = d
        .call("GET", "/api/admin/tasks", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json["enabled"], true);
    let names: Vec<&str> = listed.json["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "destroy_inactive",
            "expire_auth_sessions",
            "hibernate_idle",
            "metrics_sample",
            "prune_prompts",
            "validate_credentials",
            "vm_health"
        ]
    );
    let destroy = task(&listed.json, "destroy_inactive");
    assert_eq!(destroy["schedule"]["kind"], "daily");
    assert_eq!(destroy["schedule"]["at"], "02:00");
    assert!(destroy["schedule"]["timeZone"].is_string());
    assert!(destroy["nextRunAt"].is_string(), "{destroy}");
    assert_eq!(destroy["runs"], 0);
    assert!(destroy["outcome"].is_null());
    let hibernate = task(&listed.json, "hibernate_idle");
    assert_eq!(hibernate["schedule"]["everySec"], 300);
    assert_eq!(hibernate["running"], false);

    let ran = d
        .call(
            "POST",
            "/api/admin/tasks/metrics_sample/run",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(ran.status, 200, "{:?}", ran.json);
    assert_eq!(ran.json["name"], "metrics_sample");
    assert_eq!(ran.json["run"]["outcome"], "ok");
    assert_eq!(ran.json["run"]["itemsTouched"], 1);
    assert_eq!(ran.json["run"]["runs"], 1);
    assert!(ran.json["run"]["lastDurationMs"].is_u64());
    let recent = d
        .call(
            "GET",
            "/api/admin/metrics/recent?limit=10",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(recent.status, 200, "{:?}", recent.json);
    assert_eq!(recent.json["count"], 1);
    let sample = &recent.json["samples"][0];
    assert!(sample["at"].is_string());
    assert!(
        sample["memoryTotalBytes"].as_u64().is_some_and(|n| n > 0),
        "{sample}"
    );
    assert_eq!(sample["ipPoolFree"], 253);
    for bad in ["limit=0", "limit=many", "limit=100000", "since=1"] {
        let reply = d
            .call(
                "GET",
                &format!("/api/admin/metrics/recent?{bad}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(reply.status, 400, "{bad}: {:?}", reply.json);
    }

    let unknown = d
        .call("POST", "/api/admin/tasks/nope/run", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error_code(), "task_not_found");

    // A run in progress refuses a second start with 409.
    let gate = Arc::new(Gate {
        open: tokio::sync::Notify::new(),
        started: AtomicBool::new(false),
    });
    d.ctx
        .tasks
        .register(
            "gate",
            Schedule::Every(Duration::from_secs(86400)),
            gate.clone(),
        )
        .expect("register");
    let first = {
        let client = d.client.clone();
        let url = d.url("/api/admin/tasks/gate/run");
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("request")
                .json::<Value>()
                .await
                .expect("json")
        })
    };
    for _ in 0..200 {
        if gate.started.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listed = d
        .call("GET", "/api/admin/tasks", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(task(&listed.json, "gate")["running"], true);
    let second = d
        .call("POST", "/api/admin/tasks/gate/run", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(second.status, 409, "{:?}", second.json);
    assert_eq!(second.error_code(), "task_running");
    gate.open.notify_one();
    let first = first.await.expect("first run");
    assert_eq!(first["run"]["itemsTouched"], 42, "{first}");
    assert_eq!(first["run"]["outcome"], "ok");
    d.shutdown().await;
}

#[tokio::test]
async fn users_are_filtered_by_status_plan_and_email() {
    let d = TestDaemon::start().await;
    let ann = d.create_user("Ann.Smith@Example.com").await;
    let bob = d.create_user("bob@example.com").await;
    let _cat = d.create_user("cat@other.org").await;
    for (id, body) in [
        (&ann, r#"{"plan":"pro","status":"active"}"#),
        (&bob, r#"{"plan":"pro"}"#),
    ] {
        let reply = d
            .call(
                "PATCH",
                &format!("/api/users/{id}"),
                Some(ADMIN_TOKEN),
                Some(body),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
    }
    let emails = |reply: &support::Reply| -> Vec<String> {
        reply.json["users"]
            .as_array()
            .expect("users")
            .iter()
            .filter_map(|u| u["email"].as_str().map(str::to_lowercase))
            .collect()
    };
    let cases: [(&str, &[&str]); 6] = [
        ("plan=pro", &["ann.smith@example.com", "bob@example.com"]),
        ("plan=pro&status=active", &["ann.smith@example.com"]),
        ("status=created", &["bob@example.com", "cat@other.org"]),
        (
            "email=EXAMPLE.COM",
            &["ann.smith@example.com", "bob@example.com"],
        ),
        ("email=smith", &["ann.smith@example.com"]),
        ("plan=free&email=example", &[]),
    ];
    for (query, expected) in cases {
        let reply = d
            .call(
                "GET",
                &format!("/api/admin/users?{query}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{query}: {:?}", reply.json);
        assert_eq!(emails(&reply), expected, "{query}");
        assert_eq!(reply.json["total"], expected.len(), "{query}");
    }
    let paged = d
        .call(
            "GET",
            "/api/admin/users?email=example&limit=1&page=2",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(emails(&paged), ["bob@example.com"]);
    assert_eq!(paged.json["total"], 2, "the total counts every match");
    for bad in ["status=sleeping", "plan=gold", "colour=blue"] {
        let reply = d
            .call(
                "GET",
                &format!("/api/admin/users?{bad}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(reply.status, 400, "{bad}: {:?}", reply.json);
    }
    d.shutdown().await;
}

#[tokio::test]
async fn system_stats_show_the_host_the_pool_and_the_tasks() {
    let d = TestDaemon::start().await;
    d.create_user("stats@example.com").await;
    let stats = d
        .call("GET", "/api/admin/system/stats", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(stats.status, 200, "{:?}", stats.json);
    let j = &stats.json;
    assert!(
        j["host"]["memoryTotalBytes"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{j}"
    );
    assert!(
        j["host"]["diskTotalBytes"].as_u64().is_some_and(|n| n > 0),
        "{j}"
    );
    assert!(j["host"]["cpuPercent"].is_number());
    assert!(j["host"]["cpus"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(j["ipPool"]["size"], 253);
    assert_eq!(j["ipPool"]["available"], 253);
    assert_eq!(j["ipPool"]["leased"], 0);
    assert_eq!(j["decodoPortsUsed"], 0);
    assert!(j["vms"]["byStatus"].is_object());
    assert_eq!(j["tasks"]["enabled"], true);
    assert_eq!(j["tasks"]["jobs"], 7);
    assert_eq!(j["tasks"]["failing"], serde_json::json!([]));
    assert!(j["outbox"].is_object());
    assert_eq!(j["outbox"]["configured"], false);
    assert!(j["outbox"]["sends"]["ok"].is_u64(), "{:?}", j["outbox"]);
    assert!(j["outbox"]["depth"].is_u64());
    assert_eq!(j["users"]["total"], 1);
    d.shutdown().await;
}

#[tokio::test]
async fn with_tasks_disabled_nothing_is_planned_but_a_run_on_demand_works() {
    let d = TestDaemon::start_with(&[("MC_TASKS_ENABLED", "false")]).await;
    let listed = d
        .call("GET", "/api/admin/tasks", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(listed.json["enabled"], false);
    assert!(task(&listed.json, "vm_health")["nextRunAt"].is_null());
    let ran = d
        .call(
            "POST",
            "/api/admin/tasks/vm_health/run",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(ran.status, 200, "{:?}", ran.json);
    assert_eq!(ran.json["run"]["outcome"], "ok");
    d.shutdown().await;
}
