//! The REST API against a real server on an ephemeral port.

mod support;

use master_controller::model::VmStatus;
use serde_json::json;
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};

#[tokio::test]
async fn user_routes_happy_path() {
    let d = TestDaemon::start().await;
    let created = d
        .call(
            "POST",
            "/api/users",
            Some(SERVICE_TOKEN),
            Some(r#"{"email":"Ann@Example.com","supabaseAuthId":"sb-1"}"#),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    assert_eq!(created.json["email"], "ann@example.com");
    assert_eq!(created.json["plan"], "free");
    assert_eq!(created.json["status"], "created");
    assert_eq!(created.json["supabaseAuthId"], "sb-1");
    let id = created.json["userId"].as_str().unwrap().to_string();

    let fetched = d
        .call(
            "GET",
            &format!("/api/users/{id}"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json, created.json);

    let patched = d
        .call(
            "PATCH",
            &format!("/api/users/{id}"),
            Some(ADMIN_TOKEN),
            Some(r#"{"plan":"pro","status":"active"}"#),
        )
        .await;
    assert_eq!(patched.status, 200, "{:?}", patched.json);
    assert_eq!(patched.json["plan"], "pro");
    assert_eq!(patched.json["status"], "active");
    assert_eq!(patched.json["version"], 2);

    d.seed_vm(&id, VmStatus::Running).await;
    let stats = d
        .call(
            "GET",
            &format!("/api/users/{id}/stats"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.json["plan"], "pro");
    assert_eq!(stats.json["vmsByStatus"]["running"], 1);
    assert_eq!(stats.json["promptCount"], 0);

    let minted = d
        .call(
            "POST",
            &format!("/api/users/{id}/tokens"),
            Some(SERVICE_TOKEN),
            Some(r#"{"ttlSec":60}"#),
        )
        .await;
    assert_eq!(minted.status, 201);
    let token = minted.json["token"].as_str().unwrap();
    let own = d
        .call("GET", &format!("/api/users/{id}"), Some(token), None)
        .await;
    assert_eq!(own.status, 200);
    d.shutdown().await;
}

#[tokio::test]
async fn vm_routes_happy_path() {
    let d = TestDaemon::start().await;
    let user = d.create_user("vms@example.com").await;
    let running = d.seed_vm(&user, VmStatus::Running).await;
    let hibernated = d.seed_vm(&user, VmStatus::Hibernated).await;

    let all = d.call("GET", "/api/vms", Some(SERVICE_TOKEN), None).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.json["total"], 2);
    let filtered = d
        .call(
            "GET",
            "/api/vms?status=running&type=cli",
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(filtered.json["total"], 1);
    assert_eq!(filtered.json["vms"][0]["vmId"], running.as_str());

    let one = d
        .call(
            "GET",
            &format!("/api/vms/{hibernated}"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json["status"], "hibernated");
    assert_eq!(one.json["ipAddress"], "192.168.100.2");

    let beat = d
        .call(
            "POST",
            &format!("/api/vms/{running}/heartbeat"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(beat.status, 200, "{:?}", beat.json);
    assert!(beat.json["lastHeartbeat"].is_string());

    let summary = d
        .call(
            "GET",
            "/api/vms/statistics/summary",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(summary.status, 200);
    assert_eq!(summary.json["total"], 2);
    assert_eq!(summary.json["active"], 1);
    assert_eq!(summary.json["byStatus"]["hibernated"], 1);
    d.shutdown().await;
}

#[tokio::test]
async fn admin_routes_and_probes() {
    let d = TestDaemon::start().await;
    for i in 0..5 {
        d.create_user(&format!("user{i}@example.com")).await;
    }
    let page = d
        .call(
            "GET",
            "/api/admin/users?page=2&limit=2",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(page.status, 200);
    assert_eq!(page.json["total"], 5);
    assert_eq!(page.json["users"].as_array().unwrap().len(), 2);
    assert_eq!(page.json["users"][0]["email"], "user2@example.com");

    let stats = d
        .call("GET", "/api/admin/system/stats", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.json["users"]["total"], 5);
    assert_eq!(stats.json["vms"]["ipPoolAvailable"], 253);

    assert_eq!(d.call("GET", "/health", None, None).await.status, 200);
    assert_eq!(
        d.call("GET", "/ready", None, None).await.json["status"],
        "ready"
    );

    let text = d
        .client
        .get(d.url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "polydev_total_users 5",
        "polydev_total_vms{",
        "polydev_active_vms",
        "polydev_prompts_total{",
        "polydev_prompt_duration_seconds",
        "polydev_ip_pool_available 253",
        "polydev_decodo_ports_used 0",
        "mc_http_requests_total{method=\"GET\",route=\"/api/admin/users\",status=\"200\"} 1",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    let as_json = d
        .call("GET", "/metrics/json", Some(ADMIN_TOKEN), None)
        .await;
    let users = as_json.json["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "polydev_total_users")
        .expect("polydev_total_users in JSON");
    assert_eq!(users["samples"][0]["value"], 5.0);
    d.shutdown().await;
}

#[tokio::test]
async fn metrics_on_a_separate_listener() {
    let d = TestDaemon::start_with(&[("MC_METRICS_LISTEN", "127.0.0.1:0")]).await;
    let running = d.running.as_ref().unwrap();
    let metrics_addr = running.metrics_addr.expect("separate metrics listener");
    let text = d
        .client
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("polydev_total_users"));
    assert_eq!(d.call("GET", "/metrics", None, None).await.status, 404);
    d.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_400_and_names_the_problem() {
    let d = TestDaemon::start().await;
    let cases = [
        (r#"{"email": "#, "invalid_json"),
        ("not json", "invalid_json"),
        ("", "invalid_json"),
        (
            r#"{"email":"a@example.com","role":"admin"}"#,
            "unknown_field",
        ),
        (r#"{"supabaseAuthId":"x"}"#, "missing_field"),
        (r#"{"email":"not-an-email"}"#, "invalid_field"),
        (r#"{"email":"a@@example.com"}"#, "invalid_field"),
        (r#"{"email":42}"#, "invalid_field"),
    ];
    for (body, code) in cases {
        let reply = d
            .call("POST", "/api/users", Some(SERVICE_TOKEN), Some(body))
            .await;
        assert_eq!(reply.status, 400, "{body}: {:?}", reply.json);
        assert_eq!(reply.error_code(), code, "{body}: {:?}", reply.json);
        assert!(reply.json["error"]["message"].as_str().unwrap().len() > 5);
    }
    let bad_email = d
        .call(
            "POST",
            "/api/users",
            Some(SERVICE_TOKEN),
            Some(r#"{"email":"nope"}"#),
        )
        .await;
    assert!(
        bad_email.json["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("email")
    );

    let id = d.create_user("patch@example.com").await;
    let bad_plan = d
        .call(
            "PATCH",
            &format!("/api/users/{id}"),
            Some(SERVICE_TOKEN),
            Some(r#"{"plan":"gold"}"#),
        )
        .await;
    assert_eq!(bad_plan.status, 400);
    assert!(
        bad_plan.json["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("plan")
    );
    let empty = d
        .call(
            "PATCH",
            &format!("/api/users/{id}"),
            Some(SERVICE_TOKEN),
            Some("{}"),
        )
        .await;
    // An empty patch changes nothing and answers the user as it was.
    assert_eq!(empty.status, 200, "{:?}", empty.json);
    let before = d
        .call(
            "GET",
            &format!("/api/users/{id}"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(empty.json, before.json, "an empty patch wrote nothing");
    let bad_filter = d
        .call("GET", "/api/vms?status=sleeping", Some(SERVICE_TOKEN), None)
        .await;
    assert_eq!(bad_filter.status, 400);
    let unknown_param = d
        .call("GET", "/api/vms?colour=red", Some(SERVICE_TOKEN), None)
        .await;
    assert_eq!(unknown_param.error_code(), "unknown_query_parameter");
    let bad_page = d
        .call("GET", "/api/admin/users?limit=0", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(bad_page.status, 400);
    let bad_ttl = d
        .call(
            "POST",
            &format!("/api/users/{id}/tokens"),
            Some(SERVICE_TOKEN),
            Some(r#"{"ttlSec":0}"#),
        )
        .await;
    assert_eq!(bad_ttl.status, 400);

    let illegal = d
        .call(
            "PATCH",
            &format!("/api/users/{id}"),
            Some(SERVICE_TOKEN),
            Some(r#"{"status":"hibernated"}"#),
        )
        .await;
    assert_eq!(illegal.status, 409, "{:?}", illegal.json);
    assert_eq!(illegal.error_code(), "illegal_transition");
    d.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let d = TestDaemon::start_with(&[("MC_MAX_BODY_BYTES", "1024")]).await;
    let body = json!({ "email": format!("{}@example.com", "a".repeat(2000)) }).to_string();
    let reply = d
        .call("POST", "/api/users", Some(SERVICE_TOKEN), Some(&body))
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_code(), "payload_too_large");
    d.shutdown().await;
}

#[tokio::test]
async fn unknown_ids_are_404() {
    let d = TestDaemon::start().await;
    for (method, path, body) in [
        ("GET", "/api/users/no-such-user", None),
        (
            "PATCH",
            "/api/users/no-such-user",
            Some(r#"{"plan":"pro"}"#),
        ),
        ("GET", "/api/users/no-such-user/stats", None),
        ("POST", "/api/users/no-such-user/tokens", None),
        ("GET", "/api/vms/no-such-vm", None),
        ("POST", "/api/vms/no-such-vm/heartbeat", None),
    ] {
        let reply = d.call(method, path, Some(ADMIN_TOKEN), body).await;
        assert_eq!(reply.status, 404, "{method} {path}: {:?}", reply.json);
        assert!(
            reply.error_code().ends_with("not_found"),
            "{:?}",
            reply.json
        );
    }
    let route = d
        .call("GET", "/api/nothing-here", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(route.status, 404);
    assert_eq!(route.error_code(), "route_not_found");
    let method = d
        .call("DELETE", "/api/admin/users", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(method.status, 405);
    d.shutdown().await;
}

#[tokio::test]
async fn duplicate_email_is_409_with_the_existing_user() {
    let d = TestDaemon::start().await;
    let id = d.create_user("dup@example.com").await;
    let again = d
        .call(
            "POST",
            "/api/users",
            Some(SERVICE_TOKEN),
            Some(r#"{"email":"DUP@example.com"}"#),
        )
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.error_code(), "user_exists");
    assert_eq!(again.json["user"]["userId"], id.as_str());
    d.shutdown().await;
}

#[tokio::test]
async fn every_token_kind_on_a_user_route_and_an_admin_route() {
    let d = TestDaemon::start().await;
    let alice = d.create_user("alice@example.com").await;
    let bob = d.create_user("bob@example.com").await;
    let alice_token = d.user_token(&alice).await;
    let expired = d.ctx.auth.signer().mint(
        &alice,
        0,
        master_controller::model::now_ms() / 1000 - 100,
        10,
    );
    let user_route = format!("/api/users/{alice}");
    let admin_route = "/api/admin/users";

    // (token, user route status, admin route status)
    let cases: [(Option<&str>, u16, u16); 7] = [
        (None, 401, 401),
        (Some("wrong-token-0123456789"), 401, 401),
        (Some(&expired), 401, 401),
        (Some(ADMIN_TOKEN), 200, 200),
        (Some(SERVICE_TOKEN), 200, 403),
        (Some(&alice_token), 200, 403),
        (Some("mcu1.forged.signature"), 401, 401),
    ];
    for (token, user_status, admin_status) in cases {
        let reply = d.call("GET", &user_route, token, None).await;
        assert_eq!(
            reply.status, user_status,
            "user route with {token:?}: {:?}",
            reply.json
        );
        let reply = d.call("GET", admin_route, token, None).await;
        assert_eq!(
            reply.status, admin_status,
            "admin route with {token:?}: {:?}",
            reply.json
        );
    }
    // A user token cannot reach another user, nor act as the service.
    let other = d
        .call(
            "GET",
            &format!("/api/users/{bob}"),
            Some(&alice_token),
            None,
        )
        .await;
    assert_eq!(other.status, 403);
    assert_eq!(other.error_code(), "forbidden");
    let create = d
        .call(
            "POST",
            "/api/users",
            Some(&alice_token),
            Some(r#"{"email":"eve@example.com"}"#),
        )
        .await;
    assert_eq!(create.status, 403);
    let mint = d
        .call(
            "POST",
            &format!("/api/users/{bob}/tokens"),
            Some(&alice_token),
            None,
        )
        .await;
    assert_eq!(mint.status, 403);
    // A user token sees only its own VMs.
    d.seed_vm(&alice, VmStatus::Running).await;
    let bobs_vm = d.seed_vm(&bob, VmStatus::Running).await;
    let listed = d.call("GET", "/api/vms", Some(&alice_token), None).await;
    assert_eq!(listed.json["total"], 1);
    let foreign = d
        .call(
            "GET",
            &format!("/api/vms/{bobs_vm}"),
            Some(&alice_token),
            None,
        )
        .await;
    assert_eq!(foreign.status, 403);
    let bad_scheme = d
        .client
        .get(d.url(&user_route))
        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_scheme.status().as_u16(), 401);
    d.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let d = TestDaemon::start_with(&[
        ("MC_RATE_LIMIT_PER_SECOND", "1"),
        ("MC_RATE_LIMIT_BURST", "3"),
    ])
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let reply = d
            .call("GET", "/api/admin/users", Some(ADMIN_TOKEN), None)
            .await;
        if reply.status == 429 {
            retry_after = reply.retry_after.clone();
            assert_eq!(reply.error_code(), "rate_limited");
        }
        statuses.push(reply.status);
    }
    assert!(statuses.contains(&429), "no 429 in {statuses:?}");
    let retry_after: u64 = retry_after
        .expect("Retry-After header")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    // Limits are per token: the service token still gets through.
    let other = d.call("GET", "/api/vms", Some(SERVICE_TOKEN), None).await;
    assert_eq!(other.status, 200);
    d.shutdown().await;
}
