//! The conversation routes against a real server: a user's list paged newest first, one
//! conversation with its prompts in turn order, delete, and who may see what. Conversations
//! are seeded through the service, as the prompt service starts them.

mod support;

use master_controller::model::tables;
use master_controller::model::{Prompt, PromptStatus, now_ms};
use master_controller::providers;
use master_controller::sync::put_mirrored;
use serde_json::Value;
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};

/// A finished prompt of `user_id`, as the prompt service stores one.
async fn seed_prompt(d: &TestDaemon, id: &str, user_id: &str) {
    let prompt = Prompt {
        id: id.to_string(),
        user_id: user_id.to_string(),
        vm_id: None,
        provider: providers::CLAUDE_CODE,
        status: PromptStatus::Completed,
        created_at_ms: now_ms(),
        started_at_ms: None,
        completed_at_ms: None,
        exit_code: Some(0),
        error: None,
        version: 1,
        model: None,
        prompt_bytes: 5,
        response_text: format!("answer to {id}"),
        response_truncated: false,
        first_content_ms: None,
        duration_ms: None,
        usage_json: None,
        conversation_id: None,
    };
    d.ctx
        .store
        .write(move |tx| put_mirrored(tx, tables::PROMPTS, &prompt.id, &prompt))
        .await
        .expect("seed prompt");
}

fn ids(page: &Value) -> Vec<String> {
    page["conversations"]
        .as_array()
        .expect("conversations")
        .iter()
        .map(|c| c["conversationId"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn a_users_conversations_page_newest_first() {
    let d = TestDaemon::start().await;
    let alice = d.create_user("alice@example.com").await;
    let bob = d.create_user("bob@example.com").await;
    let mut started = Vec::new();
    for i in 0..5 {
        let c = d
            .ctx
            .conversations
            .start(&alice, providers::CLAUDE_CODE, &format!("task {i}"), "src")
            .await
            .expect("start");
        started.push(c.id);
    }
    d.ctx
        .conversations
        .start(&bob, providers::CODEX, "bob's", "")
        .await
        .expect("bob");
    let token = d.user_token(&alice).await;
    let path = format!("/api/users/{alice}/conversations");

    let first = d
        .call("GET", &format!("{path}?limit=2"), Some(&token), None)
        .await;
    assert_eq!(first.status, 200, "{:?}", first.json);
    let one = &first.json["conversations"][0];
    assert_eq!(one["title"], "task 4");
    assert_eq!(one["provider"], "claude_code");
    assert_eq!(one["cwd"], "src");
    assert_eq!(one["turns"], 0);
    assert_eq!(one["expired"], false);
    assert!(
        one["lastActivityAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(one["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(
        one.get("cliSessionId").is_none(),
        "the session id stays inside"
    );
    let mut seen = ids(&first.json);
    let mut cursor = first.json["nextCursor"].as_str().map(str::to_string);
    while let Some(at) = cursor {
        let page = d
            .call(
                "GET",
                &format!("{path}?limit=2&cursor={at}"),
                Some(SERVICE_TOKEN),
                None,
            )
            .await;
        assert_eq!(page.status, 200, "{:?}", page.json);
        seen.extend(ids(&page.json));
        cursor = page.json["nextCursor"].as_str().map(str::to_string);
    }
    started.reverse();
    assert_eq!(seen, started, "every conversation once, newest first");

    let whole = d.call("GET", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(ids(&whole.json).len(), 5);
    assert!(whole.json["nextCursor"].is_null());

    for (query, code) in [
        ("?page=2", "unknown_query_parameter"),
        ("?limit=0", "invalid_field"),
        ("?limit=201", "invalid_field"),
        ("?cursor=", "invalid_field"),
    ] {
        let bad = d
            .call("GET", &format!("{path}{query}"), Some(&token), None)
            .await;
        assert_eq!((bad.status, bad.error_code()), (400, code), "{query}");
    }
    let foreign = d
        .call(
            "GET",
            &format!("/api/users/{bob}/conversations"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((foreign.status, foreign.error_code()), (403, "forbidden"));
    let nobody = d
        .call(
            "GET",
            "/api/users/nobody/conversations",
            Some(SERVICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (nobody.status, nobody.error_code()),
        (404, "user_not_found")
    );
    d.shutdown().await;
}

#[tokio::test]
async fn a_conversation_shows_its_prompts_in_order_and_deletes() {
    let d = TestDaemon::start().await;
    let alice = d.create_user("alice@example.com").await;
    let bob = d.create_user("bob@example.com").await;
    let conversations = &d.ctx.conversations;
    let c = conversations
        .start(&alice, providers::CLAUDE_CODE, "refactor the parser", "")
        .await
        .expect("start");
    for p in ["p1", "p2", "p3"] {
        seed_prompt(&d, p, &alice).await;
        conversations.add_prompt(&c.id, p).await.expect("turn");
    }
    let alice_token = d.user_token(&alice).await;
    let bob_token = d.user_token(&bob).await;
    let path = format!("/api/conversations/{}", c.id);

    let shown = d.call("GET", &path, Some(&alice_token), None).await;
    assert_eq!(shown.status, 200, "{:?}", shown.json);
    assert_eq!(shown.json["conversationId"], c.id.as_str());
    assert_eq!(shown.json["title"], "refactor the parser");
    assert_eq!(shown.json["turns"], 3);
    let prompt_ids: Vec<&str> = shown.json["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| p["promptId"].as_str().expect("promptId"))
        .collect();
    assert_eq!(prompt_ids, ["p1", "p2", "p3"]);
    assert_eq!(shown.json["prompts"][0]["conversationId"], c.id.as_str());
    assert!(shown.json["nextCursor"].is_null());

    let first = d
        .call("GET", &format!("{path}?limit=2"), Some(&alice_token), None)
        .await;
    assert_eq!(first.json["prompts"].as_array().map(Vec::len), Some(2));
    assert_eq!(first.json["nextCursor"], "2");
    let rest = d
        .call(
            "GET",
            &format!("{path}?limit=2&cursor=2"),
            Some(&alice_token),
            None,
        )
        .await;
    assert_eq!(rest.json["prompts"][0]["promptId"], "p3");
    assert!(rest.json["nextCursor"].is_null());
    let bad = d
        .call("GET", &format!("{path}?cursor=x"), Some(&alice_token), None)
        .await;
    assert_eq!((bad.status, bad.error_code()), (400, "invalid_field"));

    // The prompt status route shows the conversation too.
    let status = d
        .call("GET", "/api/prompts/p2/status", Some(&alice_token), None)
        .await;
    assert_eq!(status.json["conversationId"], c.id.as_str());

    for method in ["GET", "DELETE"] {
        let foreign = d.call(method, &path, Some(&bob_token), None).await;
        assert_eq!(
            (foreign.status, foreign.error_code()),
            (403, "forbidden"),
            "{method}"
        );
        let unknown = d
            .call(method, "/api/conversations/nope", Some(SERVICE_TOKEN), None)
            .await;
        assert_eq!(
            (unknown.status, unknown.error_code()),
            (404, "conversation_not_found"),
            "{method}"
        );
    }

    let deleted = d.call("DELETE", &path, Some(&alice_token), None).await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.json);
    assert_eq!(
        deleted.json,
        serde_json::json!({"conversationId": c.id, "deleted": true})
    );
    let gone = d.call("GET", &path, Some(&alice_token), None).await;
    assert_eq!(gone.status, 404);
    let again = d.call("DELETE", &path, Some(SERVICE_TOKEN), None).await;
    assert_eq!(again.status, 404);
    // The prompts stay in the user's history, in no conversation.
    let kept = d
        .call("GET", "/api/prompts/p2/status", Some(&alice_token), None)
        .await;
    assert_eq!(kept.status, 200);
    assert!(kept.json["conversationId"].is_null());
    let listed = d
        .call(
            "GET",
            &format!("/api/users/{alice}/conversations"),
            Some(&alice_token),
            None,
        )
        .await;
    assert_eq!(ids(&listed.json), Vec::<String>::new());
    d.shutdown().await;
}
