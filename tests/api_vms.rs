//! The VM routes' answers that need no guest: a daemon with VMs off (no GOLDEN_KERNEL), VM
//! records seeded in its store. Real guests go through the same routes in `tests/vm_manager.rs`.

mod support;

use master_controller::model::VmStatus;
use serde_json::json;
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};

#[tokio::test]
async fn user_vm_routes_with_vms_off() {
    let d = TestDaemon::start().await;
    let user = d.create_user("novm@example.com").await;
    let path = format!("/api/users/{user}/vm");

    let none = d.call("GET", &path, Some(SERVICE_TOKEN), None).await;
    assert_eq!(none.status, 404, "{:?}", none.json);
    assert_eq!(none.json["error"]["code"], "vm_not_found");
    let create = d.call("POST", &path, Some(SERVICE_TOKEN), None).await;
    assert_eq!(create.status, 503, "{:?}", create.json);
    assert_eq!(create.json["error"]["code"], "vms_not_configured");
    assert!(
        create.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("GOLDEN_KERNEL"))
    );
    let unknown = d
        .call("POST", "/api/users/nobody/vm", Some(SERVICE_TOKEN), None)
        .await;
    assert_eq!(unknown.status, 503, "VMs off is said before anything else");

    let vm = d.seed_vm(&user, VmStatus::Hibernated).await;
    let got = d.call("GET", &path, Some(SERVICE_TOKEN), None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json["vmId"], vm.as_str());
    assert!(
        got.json.get("agentToken").is_none(),
        "the agent token never leaves the host"
    );
    let resume = d
        .call("POST", &format!("{path}/resume"), Some(SERVICE_TOKEN), None)
        .await;
    assert_eq!(resume.status, 503);
    let intents = d
        .ctx
        .store
        .read(|tx| {
            use redb::ReadableTableMetadata;
            Ok::<_, master_controller::store::StoreError>(
                tx.open_table(master_controller::model::tables::VM_INTENTS)?
                    .len()?,
            )
        })
        .await
        .expect("store");
    assert_eq!(intents, 0, "a refused operation records no intent");

    let other = d.create_user("other@example.com").await;
    let token = d.user_token(&other).await;
    let foreign = d.call("DELETE", &path, Some(&token), None).await;
    assert_eq!(foreign.status, 403);
    let destroyed = d.call("DELETE", &path, Some(SERVICE_TOKEN), None).await;
    assert_eq!(destroyed.status, 200, "{:?}", destroyed.json);
    assert_eq!(destroyed.json["status"], "destroyed");
    let again = d.call("DELETE", &path, Some(SERVICE_TOKEN), None).await;
    assert_eq!(again.status, 404, "a destroyed VM is no longer the user's");
}

#[tokio::test]
async fn diagnostics_cap_their_lines() {
    let d = TestDaemon::start().await;
    let user = d.create_user("diag@example.com").await;
    let vm = d.seed_vm(&user, VmStatus::Running).await;
    let ok = d
        .call(
            "GET",
            &format!("/api/vms/{vm}/diagnostics"),
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.json);
    assert_eq!(ok.json["consoleLog"], json!([]));
    assert_eq!(ok.json["lines"], 100);
    for bad in ["0", "2001", "-1", "10%3Bls", "ten"] {
        let reply = d
            .call(
                "GET",
                &format!("/api/vms/{vm}/diagnostics?lines={bad}"),
                Some(SERVICE_TOKEN),
                None,
            )
            .await;
        assert_eq!(reply.status, 400, "lines={bad}");
        assert_eq!(reply.json["error"]["code"], "invalid_field");
    }
    let missing = d
        .call(
            "GET",
            "/api/vms/nope/diagnostics",
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn admin_vm_routes() {
    // The sweep looks at the bridge's ports: name one that cannot exist on this host.
    let d = TestDaemon::start_with(&[("MC_BRIDGE", "mcnobridge9")]).await;
    let fresh_user = d.create_user("fresh@example.com").await;
    let stale_user = d.create_user("stale@example.com").await;
    let fresh = d.seed_vm(&fresh_user, VmStatus::Running).await;
    let stale = d.seed_vm(&stale_user, VmStatus::Hibernated).await;
    let mut old = d.ctx.vms.get(&stale).await.expect("stale VM");
    old.updated_at_ms -= 20 * 24 * 3600 * 1000;
    d.ctx.vms.insert(old).await.expect("backdate");

    let cleanup = "/api/admin/cleanup/inactive-vms";
    let forbidden = d.call("POST", cleanup, Some(SERVICE_TOKEN), None).await;
    assert_eq!(forbidden.status, 403);
    for bad in [
        r#"{"olderThanDays":0}"#,
        r#"{"days":3}"#,
        r#"{"olderThanDays":"x"}"#,
    ] {
        let reply = d.call("POST", cleanup, Some(ADMIN_TOKEN), Some(bad)).await;
        assert_eq!(reply.status, 400, "{bad}: {:?}", reply.json);
    }
    let cleaned = d.call("POST", cleanup, Some(ADMIN_TOKEN), None).await;
    assert_eq!(cleaned.status, 200, "{:?}", cleaned.json);
    assert_eq!(cleaned.json["olderThanDays"], 14);
    assert_eq!(cleaned.json["count"], 1);
    assert_eq!(cleaned.json["destroyed"][0]["vmId"], stale.as_str());
    let kept = d.ctx.vms.get(&fresh).await.expect("fresh VM");
    assert_eq!(kept.status, VmStatus::Running);

    let force = format!("/api/admin/users/{fresh_user}/force-destroy-vm");
    let forbidden = d.call("POST", &force, Some(SERVICE_TOKEN), None).await;
    assert_eq!(forbidden.status, 403);
    let forced = d.call("POST", &force, Some(ADMIN_TOKEN), None).await;
    assert_eq!(forced.status, 200, "{:?}", forced.json);
    assert_eq!(forced.json["status"], "destroyed");
    let none = d.call("POST", &force, Some(ADMIN_TOKEN), None).await;
    assert_eq!(none.status, 404);

    let swept = d
        .call(
            "POST",
            "/api/admin/cleanup/orphaned-resources",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(swept.status, 200, "{:?}", swept.json);
    for field in ["taps", "dirs", "processes", "leases"] {
        assert!(swept.json[field].is_array(), "{field}: {:?}", swept.json);
    }
}

#[tokio::test]
async fn admin_exec_checks_its_input() {
    let d = TestDaemon::start().await;
    let user = d.create_user("exec@example.com").await;
    let vm = d.seed_vm(&user, VmStatus::Running).await;
    let path = format!("/api/admin/vms/{vm}/exec");
    for bad in [
        r#"{"argv":[]}"#,
        r#"{"argv":["true"],"timeoutSec":0}"#,
        r#"{"argv":["true"],"timeoutSec":601}"#,
        r#"{"argv":"true"}"#,
        r#"{"argv":["true"],"shell":true}"#,
    ] {
        let reply = d.call("POST", &path, Some(ADMIN_TOKEN), Some(bad)).await;
        assert_eq!(reply.status, 400, "{bad}: {:?}", reply.json);
    }
    let forbidden = d
        .call(
            "POST",
            &path,
            Some(SERVICE_TOKEN),
            Some(r#"{"argv":["true"]}"#),
        )
        .await;
    assert_eq!(forbidden.status, 403);
    // The seeded VM has no process here: the agent cannot be reached.
    let unreachable = d
        .call(
            "POST",
            &path,
            Some(ADMIN_TOKEN),
            Some(r#"{"argv":["true"]}"#),
        )
        .await;
    assert_eq!(unreachable.status, 503, "{:?}", unreachable.json);
    assert_eq!(unreachable.json["error"]["code"], "agent_unavailable");
}
