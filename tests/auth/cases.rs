//! The cases of the `auth` test binary.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use master_controller::model::Provider;
use master_controller::providers;
use serde_json::{Value, json};

use crate::support::ADMIN_TOKEN;
use crate::world::{SESSION_TIMEOUT_SECS, World, assert_cleaned_up, claude_code};

/// Completes a login of `provider` for `user`, the tokens tagged `tag`; returns the session.
async fn complete_login(world: &World, user: &str, provider: &str, tag: &str) -> Value {
    let id = world.start_login(user, provider).await;
    let session = world.wait_for(&id, "awaiting_user").await;
    assert!(
        session["instructions"]
            .as_str()
            .is_some_and(|i| !i.is_empty())
    );
    match provider {
        "claude_code" => {
            let url = session["authUrl"].as_str().expect("authUrl");
            assert!(
                url.starts_with("https://claude.com/cai/oauth/authorize?"),
                "{url}"
            );
            let reply = world.post_code(&id, &claude_code(&session, tag)).await;
            assert_eq!(reply.status, 202, "{:?}", reply.json);
            assert_eq!(reply.json["status"], "verifying");
        }
        "gemini_cli" => {
            let url = session["authUrl"].as_str().expect("authUrl");
            assert!(
                url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?"),
                "{url}"
            );
            let reply = world.post_code(&id, &format!("good-code-{tag}")).await;
            assert_eq!(reply.status, 202, "{:?}", reply.json);
        }
        "codex" => {
            assert_eq!(
                session["verificationUrl"],
                "https://auth.openai.com/codex/device"
            );
            assert!(session["authUrl"].is_null());
            let code = session["deviceCode"].as_str().expect("deviceCode");
            world.answer_device_code(code, &format!("approve-{tag}"));
        }
        other => panic!("no such provider {other}"),
    }
    let done = world.wait_for(&id, "completed").await;
    assert!(done["error"].is_null(), "{done:?}");
    assert!(done["completedAt"].as_i64().is_some());
    assert_cleaned_up(&id).await;
    done
}

/// The access token each scripted login writes for `tag`.
fn token_for(provider: Provider, tag: &str) -> String {
    match provider {
        providers::CLAUDE_CODE => format!("sk-ant-oat01-fake-{tag}"),
        providers::CODEX => format!("rt_fake_{tag}"),
        providers::GEMINI_CLI => format!("ya29.fake-{tag}"),
        other => panic!("no scripted login for {other}"),
    }
}

pub async fn each_provider_completes(world: &mut World) {
    let user = world.user().await;
    for (provider, name) in [
        (providers::CLAUDE_CODE, "claude_code"),
        (providers::CODEX, "codex"),
        (providers::GEMINI_CLI, "gemini_cli"),
    ] {
        let started = Instant::now();
        let tag = format!("first{}", provider.as_str().len());
        complete_login(world, &user, name, &tag).await;
        eprintln!(
            "    {name}: completed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let (credential, plaintext) = world.vault_plaintext(&user, provider).await;
        assert!(
            plaintext.contains(&token_for(provider, &tag)),
            "the vault holds the file the CLI wrote: {}",
            plaintext.len()
        );
        assert!(credential.is_valid);
        assert!(
            !String::from_utf8_lossy(&credential.ciphertext).contains(&token_for(provider, &tag)),
            "sealed, not stored in the clear"
        );
        // The credential is not left in the CLIs' HOME: prompts stage it for their run.
        let path = world.cli_home.path().join(match provider {
            providers::CLAUDE_CODE => ".claude/.credentials.json",
            providers::CODEX => ".codex/auth.json",
            providers::GEMINI_CLI => ".gemini/oauth_creds.json",
            other => panic!("no credential path known for {other}"),
        });
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "left in the HOME: {}",
            path.display()
        );
    }
    let metrics = world.call_as(ADMIN_TOKEN, "GET", "/metrics", None).await;
    let text = metrics.json.as_str().unwrap_or_default();
    for provider in ["claude_code", "codex", "gemini_cli"] {
        assert!(
            text.contains(&format!(
                "polydev_auth_sessions_total{{provider=\"{provider}\",status=\"completed\"}} 1"
            )),
            "{provider} counted once"
        );
    }
    let listed = world
        .call("GET", &format!("/api/auth/credentials/{user}"), None)
        .await;
    assert_eq!(listed.status, 200, "{:?}", listed.json);
    let list = listed.json.as_array().expect("a list");
    assert_eq!(list.len(), 3, "{list:?}");
    let text = listed.json.to_string();
    for provider in [
        providers::CLAUDE_CODE,
        providers::CODEX,
        providers::GEMINI_CLI,
    ] {
        assert!(!text.contains(&token_for(provider, "first")), "{text}");
    }
    for entry in list {
        assert_eq!(entry["isValid"], true, "{entry:?}");
        assert!(entry["credentialId"].as_str().is_some());
        assert!(entry["lastVerified"].as_i64().is_some());
        let keys: Vec<&String> = entry.as_object().expect("object").keys().collect();
        assert!(
            keys.iter().all(
                |k| !k.to_lowercase().contains("token") && !k.to_lowercase().contains("cipher")
            ),
            "{keys:?}"
        );
    }
}

pub async fn a_wrong_code_fails(world: &mut World) {
    let user = world.user().await;
    let id = world.start_login(&user, "claude_code").await;
    let session = world.wait_for(&id, "awaiting_user").await;
    let state = claude_code(&session, "x");
    let wrong = state.replacen("good-code-x", "not-the-code", 1);
    assert_eq!(world.post_code(&id, &wrong).await.status, 202);
    let failed = world.wait_for(&id, "failed").await;
    assert_eq!(
        failed["error"], "Login failed: Request failed with status code 400",
        "the CLI's own message"
    );
    assert_cleaned_up(&id).await;

    let id = world.start_login(&user, "gemini_cli").await;
    world.wait_for(&id, "awaiting_user").await;
    assert_eq!(world.post_code(&id, "4/0Awrong").await.status, 202);
    let failed = world.wait_for(&id, "failed").await;
    assert_eq!(
        failed["error"],
        "Failed to authenticate with authorization code: invalid_grant"
    );
    assert_cleaned_up(&id).await;

    let id = world.start_login(&user, "codex").await;
    let session = world.wait_for(&id, "awaiting_user").await;
    // A device-code login takes no pasted code.
    let reply = world.post_code(&id, "anything").await;
    assert_eq!(reply.status, 409, "{:?}", reply.json);
    assert_eq!(reply.json["error"]["code"], "auth_no_code_expected");
    let code = session["deviceCode"].as_str().expect("deviceCode");
    world.answer_device_code(code, "deny");
    let failed = world.wait_for(&id, "failed").await;
    assert_eq!(
        failed["error"],
        "Error logging in: device auth failed with status 400 Bad Request"
    );
    assert_cleaned_up(&id).await;
    // Nothing was stored for any of them.
    let listed = world
        .call("GET", &format!("/api/auth/credentials/{user}"), None)
        .await;
    assert_eq!(listed.json, json!([]));
    // A code for a session that has ended is refused.
    let reply = world.post_code(&id, "late").await;
    assert_eq!(reply.status, 409, "{:?}", reply.json);
    assert_eq!(
        reply.json["error"]["code"],
        "auth_session_not_awaiting_code"
    );
}

const PROVIDERS: [&str; 3] = ["claude_code", "codex", "gemini_cli"];

pub async fn cancel_cleans_up(world: &mut World) {
    let user = world.user().await;
    for provider in PROVIDERS {
        let id = world.start_login(&user, provider).await;
        world.wait_for(&id, "awaiting_user").await;
        assert!(
            !crate::world::login_processes(&id).is_empty(),
            "the {provider} login runs"
        );
        let reply = world
            .call("POST", &format!("/api/auth/session/{id}/cancel"), None)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        assert_eq!(reply.json["status"], "cancelled", "{provider}");
        assert_cleaned_up(&id).await;
        // Cancelling again changes nothing.
        let again = world
            .call("POST", &format!("/api/auth/session/{id}/cancel"), None)
            .await;
        assert_eq!(again.json["status"], "cancelled");
    }
}

pub async fn idle_session_times_out(world: &mut World) {
    let user = world.user().await;
    // The three at once: a user may log in to each provider meanwhile.
    let mut ids = Vec::new();
    for provider in PROVIDERS {
        ids.push(world.start_login(&user, provider).await);
    }
    for id in &ids {
        let waiting = world.wait_for(id, "awaiting_user").await;
        let expires = waiting["expiresAt"].as_i64().expect("expiresAt");
        let updated = waiting["updatedAt"].as_i64().expect("updatedAt");
        assert_eq!(expires - updated, SESSION_TIMEOUT_SECS as i64 * 1000);
    }
    for id in &ids {
        let ended = world.wait_for(id, "timeout").await;
        assert!(
            ended["error"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("{SESSION_TIMEOUT_SECS} s"))),
            "{ended:?}"
        );
        assert_cleaned_up(id).await;
    }
}

pub async fn second_start_is_refused(world: &mut World) {
    let user = world.user().await;
    for provider in PROVIDERS {
        let first = world.start_login(&user, provider).await;
        let reply = world
            .call(
                "POST",
                "/api/auth/start",
                Some(json!({"userId": user, "provider": provider})),
            )
            .await;
        assert_eq!(reply.status, 409, "{provider}: {:?}", reply.json);
        assert_eq!(reply.json["error"]["code"], "auth_session_active");
        assert_eq!(reply.json["sessionId"], first.as_str());
        world.wait_for(&first, "awaiting_user").await;
        let reply = world
            .call("POST", &format!("/api/auth/session/{first}/cancel"), None)
            .await;
        assert_eq!(reply.json["status"], "cancelled", "{:?}", reply.json);
        assert_cleaned_up(&first).await;
        // Once the first has ended, a new one may start.
        let again = world.start_login(&user, provider).await;
        world
            .call("POST", &format!("/api/auth/session/{again}/cancel"), None)
            .await;
        assert_cleaned_up(&again).await;
    }
}

pub async fn credentials_validation_and_rotation(world: &mut World) {
    let user = world.user().await;
    let rotate = world
        .call(
            "POST",
            "/api/auth/rotate",
            Some(json!({"userId": user, "provider": "claude_code"})),
        )
        .await;
    assert_eq!(rotate.status, 404, "nothing to rotate: {:?}", rotate.json);
    assert_eq!(rotate.json["error"]["code"], "credential_not_found");

    let mut events = world.daemon.user_events(&user).await;
    let first = complete_login(world, &user, "claude_code", "old").await;
    let session_id = first["sessionId"].as_str().expect("id").to_string();
    let mut statuses = Vec::new();
    let mut completed = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while completed.is_none() && Instant::now() < deadline {
        let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), events.next()).await
        else {
            continue;
        };
        let data = &event["data"];
        if data["sessionId"] != session_id.as_str() {
            continue;
        }
        match data["event"].as_str() {
            Some("auth_progress") => {
                statuses.push(data["status"].as_str().unwrap_or("").to_string())
            }
            Some("auth_completed") => completed = Some(data.clone()),
            _ => {}
        }
    }
    assert_eq!(
        statuses,
        [
            "created",
            "starting_vm",
            "awaiting_user",
            "verifying",
            "completed"
        ],
        "an auth_progress per state change"
    );
    let completed = completed.expect("auth_completed on user:<id>");
    assert_eq!(completed["provider"], "claude_code");

    let validation = world
        .call(
            "GET",
            &format!("/api/auth/validate/{user}/claude_code"),
            None,
        )
        .await;
    assert_eq!(validation.status, 200, "{:?}", validation.json);
    assert_eq!(validation.json["valid"], true);
    assert_eq!(validation.json["reason"], "ok");
    let expires = validation.json["expiresAt"].as_i64().expect("expiresAt");
    let in_hours = (expires - chrono_now_ms()) as f64 / 3_600_000.0;
    assert!(
        (7.9..=8.1).contains(&in_hours),
        "Claude's nested ms expiry: {in_hours} h"
    );
    let live = world
        .call(
            "GET",
            &format!("/api/auth/validate/{user}/claude_code?live=true"),
            None,
        )
        .await;
    assert_eq!(live.status, 200, "{:?}", live.json);
    assert_eq!(live.json["live"]["ok"], true, "{:?}", live.json);
    assert_eq!(live.json["valid"], true);
    let missing = world
        .call(
            "GET",
            &format!("/api/auth/validate/{user}/gemini_cli"),
            None,
        )
        .await;
    assert_eq!(missing.status, 404);

    let (old, old_plaintext) = world.vault_plaintext(&user, providers::CLAUDE_CODE).await;
    let rotate = world
        .call(
            "POST",
            "/api/auth/rotate",
            Some(json!({"userId": user, "provider": "claude_code"})),
        )
        .await;
    assert_eq!(rotate.status, 202, "{:?}", rotate.json);
    assert_eq!(rotate.json["rotation"], true);
    let id = rotate.json["sessionId"].as_str().expect("id").to_string();
    let session = world.wait_for(&id, "awaiting_user").await;
    // The old credential stays usable while the new login waits.
    let meanwhile = world
        .call(
            "GET",
            &format!("/api/auth/validate/{user}/claude_code"),
            None,
        )
        .await;
    assert_eq!(meanwhile.json["valid"], true);
    let (_, still) = world.vault_plaintext(&user, providers::CLAUDE_CODE).await;
    assert_eq!(still, old_plaintext);
    assert_eq!(
        world
            .post_code(&id, &claude_code(&session, "new"))
            .await
            .status,
        202
    );
    world.wait_for(&id, "completed").await;
    let (new, new_plaintext) = world.vault_plaintext(&user, providers::CLAUDE_CODE).await;
    assert_eq!(new.id, old.id, "the same credential, a new version");
    assert!(new.version > old.version);
    assert!(new_plaintext.contains("sk-ant-oat01-fake-new"));
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub async fn other_users_are_refused(world: &mut World) {
    let owner = world.user().await;
    let other = world.user().await;
    let other_token = world.daemon.user_token(&other).await;
    let owner_token = world.daemon.user_token(&owner).await;
    // The owner may start their own login with their own token.
    let reply = world
        .call_as(
            &owner_token,
            "POST",
            "/api/auth/start",
            Some(json!({"userId": owner, "provider": "gemini_cli"})),
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.json);
    let session = reply.json["sessionId"].as_str().expect("id").to_string();
    let routes = [
        (
            "POST",
            "/api/auth/start".to_string(),
            Some(json!({"userId": owner, "provider": "codex"})),
        ),
        (
            "POST",
            "/api/auth/rotate".to_string(),
            Some(json!({"userId": owner, "provider": "codex"})),
        ),
        ("GET", format!("/api/auth/session/{session}"), None),
        (
            "POST",
            format!("/api/auth/session/{session}/code"),
            Some(json!({"code": "x"})),
        ),
        ("POST", format!("/api/auth/session/{session}/cancel"), None),
        ("GET", format!("/api/auth/credentials/{owner}"), None),
        ("GET", format!("/api/auth/validate/{owner}/codex"), None),
        (
            "GET",
            format!("/api/auth/validate/{owner}/codex?live=true"),
            None,
        ),
    ];
    for (method, path, body) in &routes {
        let reply = world
            .call_as(&other_token, method, path, body.clone())
            .await;
        assert_eq!(reply.status, 403, "{method} {path}: {:?}", reply.json);
    }
    // The refused cancel did nothing.
    let still = world
        .call_as(
            &owner_token,
            "GET",
            &format!("/api/auth/session/{session}"),
            None,
        )
        .await;
    assert!(
        !["cancelled", "failed"].contains(&still.json["status"].as_str().unwrap_or("")),
        "{:?}",
        still.json
    );
    let cancel = world
        .call_as(
            &owner_token,
            "POST",
            &format!("/api/auth/session/{session}/cancel"),
            None,
        )
        .await;
    assert_eq!(cancel.status, 200);
    assert_cleaned_up(&session).await;
    // The admin may read anything.
    let admin = world
        .call_as(
            ADMIN_TOKEN,
            "GET",
            &format!("/api/auth/credentials/{owner}"),
            None,
        )
        .await;
    assert_eq!(admin.status, 200);
}

pub async fn bad_input_is_refused(world: &mut World) {
    let user = world.user().await;
    for (body, code) in [
        (
            json!({"userId": user, "provider": "cursor"}),
            "invalid_field",
        ),
        (json!({"userId": user}), "missing_field"),
        (
            json!({"userId": user, "provider": "codex", "extra": 1}),
            "unknown_field",
        ),
    ] {
        let reply = world.call("POST", "/api/auth/start", Some(body)).await;
        assert_eq!(reply.status, 400, "{:?}", reply.json);
        assert_eq!(reply.json["error"]["code"], code, "{:?}", reply.json);
    }
    let reply = world
        .call(
            "POST",
            "/api/auth/start",
            Some(json!({"userId": "no-such-user", "provider": "codex"})),
        )
        .await;
    assert_eq!(reply.status, 404, "{:?}", reply.json);
    let reply = world.call("GET", "/api/auth/session/nope", None).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json["error"]["code"], "auth_session_not_found");
    let reply = world
        .call(
            "GET",
            &format!("/api/auth/validate/{user}/claude_code?live=maybe"),
            None,
        )
        .await;
    assert_eq!(reply.status, 400);

    let id = world.start_login(&user, "claude_code").await;
    world.wait_for(&id, "awaiting_user").await;
    for code in ["", "line\nbreak", &"x".repeat(5000)] {
        let reply = world.post_code(&id, code).await;
        assert_eq!(reply.status, 400, "{code:?}: {:?}", reply.json);
        assert_eq!(reply.json["error"]["code"], "invalid_code");
    }
    assert_eq!(
        world.session(&id).await["status"],
        "awaiting_user",
        "unchanged"
    );
    world
        .call("POST", &format!("/api/auth/session/{id}/cancel"), None)
        .await;
    assert_cleaned_up(&id).await;
}
