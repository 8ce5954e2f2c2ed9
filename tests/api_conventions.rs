//! The conventions every route shares: the request id, `Allow` on a 405, and the one paging
//! style with `total` counting every match.

mod support;

use master_controller::model::VmStatus;
use serde_json::Value;
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};

async fn raw(
    d: &TestDaemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    request_id: Option<&str>,
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = d.client.request(method, d.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(id) = request_id {
        request = request.header("x-request-id", id);
    }
    request.send().await.expect("request reaches the daemon")
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test]
async fn every_response_carries_a_request_id_made_or_echoed() {
    let d = TestDaemon::start().await;
    let cases = [
        ("GET", "/health", None, 200),
        ("GET", "/api/vms", Some(SERVICE_TOKEN), 200),
        ("GET", "/api/vms", None, 401),
        ("GET", "/api/nothing-here", Some(ADMIN_TOKEN), 404),
        ("DELETE", "/api/admin/users", Some(ADMIN_TOKEN), 405),
    ];
    for (method, path, token, status) in cases {
        let made = raw(&d, method, path, token, None).await;
        assert_eq!(made.status(), status, "{method} {path}");
        let id = header(&made, "x-request-id").expect("a made id");
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{method} {path}: {id}");

        let echoed = raw(&d, method, path, token, Some("web-7f3a:retry.2")).await;
        assert_eq!(
            header(&echoed, "x-request-id").as_deref(),
            Some("web-7f3a:retry.2"),
            "{method} {path}"
        );
    }
    // An id that could forge a log field or is too long is replaced, not echoed.
    for insane in ["two words", &"x".repeat(129)] {
        let replaced = raw(&d, "GET", "/health", None, Some(insane)).await;
        let id = header(&replaced, "x-request-id").expect("an id");
        assert_ne!(id, insane);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    }
    d.shutdown().await;
}

#[tokio::test]
async fn a_405_names_the_methods_its_path_takes() {
    let d = TestDaemon::start().await;
    let cases = [
        ("DELETE", "/api/admin/users", "GET"),
        ("PUT", "/api/users/some-user", "DELETE, GET, PATCH"),
        ("GET", "/api/vms/vm-1/heartbeat", "POST"),
        ("POST", "/api/vms", "GET"),
        ("POST", "/health", "GET"),
        ("PATCH", "/api/prompts/execute", "POST"),
    ];
    for (method, path, allow) in cases {
        let response = raw(&d, method, path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(
            header(&response, "allow").as_deref(),
            Some(allow),
            "{method} {path}"
        );
    }
    d.shutdown().await;
}

fn ids(reply: &Value, list: &str, key: &str) -> Vec<String> {
    reply[list]
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| v[key].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn vms_are_paged_by_cursor_and_destroyed_ones_hidden_unless_asked() {
    let d = TestDaemon::start().await;
    let mut live = Vec::new();
    for i in 0..5 {
        let user = d.create_user(&format!("pager{i}@example.com")).await;
        live.push(d.seed_vm(&user, VmStatus::Running).await);
        d.seed_vm(&user, VmStatus::Destroyed).await;
    }
    live.sort();

    let mut seen = Vec::new();
    let mut path = "/api/vms?limit=2".to_string();
    loop {
        let page = d.call("GET", &path, Some(SERVICE_TOKEN), None).await;
        assert_eq!(page.status, 200, "{:?}", page.json);
        assert_eq!(page.json["total"], 5, "total counts every match: {path}");
        let got = ids(&page.json, "vms", "vmId");
        assert!(got.len() <= 2);
        seen.extend(got);
        match page.json["nextCursor"].as_str() {
            Some(cursor) => path = format!("/api/vms?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen, live,
        "every live VM once, in id order, no destroyed one"
    );

    let all = d
        .call(
            "GET",
            "/api/vms?include=destroyed&limit=200",
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(all.json["total"], 10);
    assert!(all.json["nextCursor"].is_null());
    let destroyed = d
        .call(
            "GET",
            "/api/vms?status=destroyed",
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        destroyed.json["total"], 5,
        "asking for the status shows them"
    );
    for bad in [
        "include=everything",
        "limit=0",
        "limit=201",
        "cursor=",
        "colour=red",
    ] {
        let reply = d
            .call("GET", &format!("/api/vms?{bad}"), Some(SERVICE_TOKEN), None)
            .await;
        assert_eq!(reply.status, 400, "{bad}: {:?}", reply.json);
    }
    d.shutdown().await;
}

#[tokio::test]
async fn admin_users_page_by_cursor_and_still_by_page_number() {
    let d = TestDaemon::start().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(d.create_user(&format!("listed{i}@example.com")).await);
    }
    let mut seen = Vec::new();
    let mut path = "/api/admin/users?limit=2".to_string();
    loop {
        let page = d.call("GET", &path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(page.status, 200, "{:?}", page.json);
        assert_eq!(page.json["total"], 5);
        seen.extend(ids(&page.json, "users", "userId"));
        match page.json["nextCursor"].as_str() {
            Some(cursor) => path = format!("/api/admin/users?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, created, "creation order, each once");

    let numbered = d
        .call(
            "GET",
            "/api/admin/users?page=3&limit=2",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(ids(&numbered.json, "users", "userId"), [created[4].clone()]);
    assert_eq!(numbered.json["page"], 3);
    assert!(numbered.json["nextCursor"].is_null());
    let both = d
        .call(
            "GET",
            &format!("/api/admin/users?page=2&cursor={}", created[0]),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(both.status, 400);
    d.shutdown().await;
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused_where_serde_would_take_it() {
    let d = TestDaemon::start().await;
    let user = d.create_user("bodies@example.com").await;
    // serde reads a struct from an array of its fields, and an optional body from `null`.
    let routes = [
        ("PATCH", format!("/api/users/{user}"), ADMIN_TOKEN),
        ("POST", format!("/api/users/{user}/tokens"), ADMIN_TOKEN),
        (
            "POST",
            "/api/admin/cleanup/inactive-vms".to_string(),
            ADMIN_TOKEN,
        ),
        (
            "POST",
            "/api/admin/outbox/dead-letters/retry".to_string(),
            ADMIN_TOKEN,
        ),
    ];
    for (method, path, token) in &routes {
        for body in ["[null, null]", "[]", "null", "3", "\"text\""] {
            let refused = d.call(method, path, Some(token), Some(body)).await;
            assert_eq!(
                refused.status, 400,
                "{method} {path} {body}: {:?}",
                refused.json
            );
            assert_eq!(
                refused.error_code(),
                "invalid_json",
                "{method} {path} {body}"
            );
        }
    }
    // An empty body still means the defaults where the body is optional.
    let minted = d
        .call(
            "POST",
            &format!("/api/users/{user}/tokens"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(minted.status, 201, "{:?}", minted.json);
    d.shutdown().await;
}
