//! The daemon binary's log as an operator reads it: one `access` line per request with the id
//! the response carried, the cause of a 5xx on a line with the same id, never a query string,
//! and no ANSI colour codes when stderr is a file. The daemon's stderr goes to a file
//! (`support::daemon_proc`), so this is what journald would keep.
//!
//! The process first moves into network and UTS namespaces of its own (the daemon listens on a
//! fixed port and makes its bridge there). Needs root; without it says so and skips, unless
//! `MC_REQUIRE_GUESTS=1`.

mod support;

use std::process::ExitCode;

use support::daemon_proc::{DaemonProc, LISTEN, SERVICE_TOKEN};
use support::harness::{self, Case};

struct World {
    daemon: DaemonProc,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl World {
    fn log(&self) -> String {
        std::fs::read_to_string(self.daemon.data_dir.join("daemon.log")).expect("daemon log")
    }

    /// The log's lines that carry `request_id`, waiting briefly for the access line (it is
    /// written as the response's headers go out, so it may trail the client by a moment).
    async fn lines_of(&self, request_id: &str) -> Vec<String> {
        for _ in 0..50 {
            let lines: Vec<String> = self
                .log()
                .lines()
                .filter(|l| l.contains(request_id))
                .map(str::to_string)
                .collect();
            if lines.iter().any(|l| l.contains(" access: ")) {
                return lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!(
            "no access line for {request_id}:\n{}",
            self.daemon.log_tail()
        );
    }

    async fn get(&self, path: &str, request_id: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .get(format!("http://{LISTEN}{path}"))
            .bearer_auth(SERVICE_TOKEN);
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        request.send().await.expect("request")
    }
}

fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an X-Request-Id on the response")
        .to_string()
}

async fn the_access_line_has_the_id_the_response_carried(w: &mut World) {
    let echoed = w.get("/api/vms?status=running", Some("client-abc.1")).await;
    assert_eq!(echoed.status(), 200);
    assert_eq!(request_id(&echoed), "client-abc.1");
    let lines = w.lines_of("request_id=client-abc.1").await;
    let access: Vec<&String> = lines.iter().filter(|l| l.contains(" access: ")).collect();
    assert_eq!(access.len(), 1, "one access line per request: {lines:#?}");
    for field in [
        "method=GET",
        "path=/api/vms ",
        "route=/api/vms ",
        "status=200",
        "duration_ms=",
        "peer=127.0.0.1:",
    ] {
        assert!(access[0].contains(field), "{field} in {}", access[0]);
    }

    let made = w.get("/api/no-such-route", None).await;
    assert_eq!(made.status(), 404);
    let id = request_id(&made);
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let lines = w.lines_of(&format!("request_id={id}")).await;
    assert!(lines[0].contains("status=404"), "{lines:#?}");
}

async fn a_query_string_is_never_logged(w: &mut World) {
    let secret = "query-secret-0123456789";
    let response = w
        .get(&format!("/api/vms?token={secret}"), Some("with-a-query"))
        .await;
    assert_eq!(response.status(), 400);
    w.lines_of("request_id=with-a-query").await;
    assert!(
        !w.log().contains(secret),
        "the query string reached the log"
    );
}

async fn a_5xx_is_logged_with_its_cause_and_the_request_id(w: &mut World) {
    let user = w
        .http
        .post(format!("http://{LISTEN}/api/users"))
        .bearer_auth(SERVICE_TOKEN)
        .json(&serde_json::json!({"email": "five-hundred@example.com"}))
        .send()
        .await
        .expect("create user");
    assert_eq!(user.status(), 201);
    let user: serde_json::Value = user.json().await.expect("user");
    let user_id = user["userId"].as_str().expect("userId");
    // No guest kernel is configured, so creating a VM cannot succeed: a 5xx with a cause.
    let create = w
        .http
        .post(format!("http://{LISTEN}/api/users/{user_id}/vm"))
        .bearer_auth(SERVICE_TOKEN)
        .header("x-request-id", "five-hundred-1")
        .send()
        .await
        .expect("create VM");
    let status = create.status().as_u16();
    assert!(status >= 500, "a 5xx: {status}");
    let body: serde_json::Value = create.json().await.expect("error body");
    let code = body["error"]["code"].as_str().expect("code").to_string();
    let lines = w.lines_of("five-hundred-1").await;
    let cause = lines
        .iter()
        .find(|l| !l.contains(" access: "))
        .unwrap_or_else(|| panic!("no line with the cause: {lines:#?}"));
    assert!(
        cause.contains(&format!("code=\"{code}\"")) || cause.contains(&format!("code={code}")),
        "the cause names {code}: {cause}"
    );
    assert!(cause.contains(&format!("status={status}")), "{cause}");
}

async fn no_ansi_codes_in_a_log_file(w: &mut World) {
    let log = w.log();
    assert!(!log.is_empty());
    assert!(
        !log.contains("\x1b["),
        "colour codes in a non-tty log:\n{}",
        w.daemon.log_tail()
    );
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return harness::missing("access_log", "needs root for a network namespace");
    }
    support::host_agent::enter_namespaces();
    let runtime = harness::runtime();
    let mut world = runtime.block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let mut daemon = DaemonProc::new(dir.path(), &[]);
        daemon.start(&[]).await;
        World {
            daemon,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    });
    let cases: Vec<(&str, Case<World>)> = vec![
        (
            "the access line has the request id the response carried",
            |w| Box::pin(the_access_line_has_the_id_the_response_carried(w)),
        ),
        ("a query string is never logged", |w| {
            Box::pin(a_query_string_is_never_logged(w))
        }),
        ("a 5xx is logged with its cause and the request id", |w| {
            Box::pin(a_5xx_is_logged_with_its_cause_and_the_request_id(w))
        }),
        ("no ANSI codes in a log file", |w| {
            Box::pin(no_ansi_codes_in_a_log_file(w))
        }),
    ];
    let code = harness::run(&runtime, &mut world, cases, |w| {
        println!("{}", w.daemon.log_tail());
        true
    });
    runtime.block_on(world.daemon.stop());
    code
}
