use redb::{ReadableTable, ReadableTableMetadata};

use super::*;
use crate::model::tables;
use crate::model::{OutboxEntry, PromptStatus};
use crate::providers::{CLAUDE_CODE, CODEX};
use crate::store::{self, StoreError};
use crate::sync::fixtures::store_with_users;
use crate::sync::put_mirrored;

async fn put_prompt(store: &Store, id: &str, user_id: &str) {
    let prompt = Prompt {
        id: id.into(),
        user_id: user_id.into(),
        vm_id: None,
        provider: CLAUDE_CODE,
        status: PromptStatus::Completed,
        created_at_ms: 1,
        started_at_ms: None,
        completed_at_ms: None,
        exit_code: Some(0),
        error: None,
        version: 1,
        model: None,
        prompt_bytes: 2,
        response_text: format!("answer {id}"),
        response_truncated: false,
        first_content_ms: None,
        duration_ms: None,
        usage_json: None,
        conversation_id: None,
    };
    store
        .write(move |tx| put_mirrored(tx, tables::PROMPTS, &prompt.id, &prompt))
        .await
        .expect("prompt");
}

async fn stored_prompt(store: &Store, id: &str) -> Option<Prompt> {
    let id = id.to_string();
    store
        .read(move |tx| store::get(&tx.open_table(tables::PROMPTS)?, &id))
        .await
        .expect("read")
}

#[tokio::test]
async fn a_conversation_starts_titled_in_its_directory_and_refuses_what_it_must() {
    let (_dir, store) = store_with_users(&["u1"]).await;
    let service = ConversationService::new(store);
    let started = service
        .start("u1", CLAUDE_CODE, "  Fix the\nbuild please ", "./src//app/")
        .await
        .expect("start");
    assert_eq!(started.title, "Fix the build please");
    assert_eq!(started.cwd, "src/app");
    assert_eq!(
        (started.turns, started.expired, started.version),
        (0, false, 1)
    );
    assert_eq!(service.get(&started.id).await.expect("get"), started);
    assert_eq!(
        service.start("u1", CODEX, "x", "").await.expect("root").cwd,
        ""
    );
    for bad in ["/etc", "a/../../b", "a\0b"] {
        let refused = service.start("u1", CLAUDE_CODE, "x", bad).await;
        assert!(
            matches!(
                refused,
                Err(ConversationError::Invalid { field: "cwd", .. })
            ),
            "{bad:?}: {refused:?}"
        );
    }
    let nobody = service.start("nobody", CLAUDE_CODE, "x", "").await;
    assert!(matches!(nobody, Err(ConversationError::UserNotFound(_))));
    let missing = service.get("no-such").await;
    assert!(matches!(missing, Err(ConversationError::NotFound(_))));
    assert_eq!(
        missing.err().map(|e| e.code()),
        Some("conversation_not_found")
    );
}

#[tokio::test]
async fn a_conversation_resumes_only_for_its_user_and_provider() {
    let (_dir, store) = store_with_users(&["u1"]).await;
    let service = ConversationService::new(store);
    let c = service
        .start("u1", CLAUDE_CODE, "hi", "")
        .await
        .expect("start");
    assert_eq!(
        service.resume(&c.id, "u1", CLAUDE_CODE).await.expect("own"),
        c
    );
    let other_user = service.resume(&c.id, "u2", CLAUDE_CODE).await;
    assert!(matches!(
        other_user,
        Err(ConversationError::NotOwner { .. })
    ));
    let other_cli = service.resume(&c.id, "u1", CODEX).await;
    assert!(matches!(
        other_cli,
        Err(ConversationError::WrongProvider { .. })
    ));
}

#[tokio::test]
async fn turns_link_prompts_in_order_once() {
    let (_dir, store) = store_with_users(&["u1", "u2"]).await;
    let service = ConversationService::new(store.clone());
    let c = service
        .start("u1", CLAUDE_CODE, "hi", "")
        .await
        .expect("start");
    for p in ["p1", "p2", "p3"] {
        put_prompt(&store, p, "u1").await;
    }
    let after_one = service.add_prompt(&c.id, "p1").await.expect("p1");
    assert_eq!((after_one.turns, after_one.version), (1, 2));
    assert!(after_one.last_activity_ms >= c.last_activity_ms);
    assert_eq!(
        stored_prompt(&store, "p1")
            .await
            .and_then(|p| p.conversation_id),
        Some(c.id.clone())
    );
    let again = service.add_prompt(&c.id, "p1").await.expect("again");
    assert_eq!(
        again.turns, 1,
        "a prompt is one turn however often it is added"
    );
    service.add_prompt(&c.id, "p2").await.expect("p2");
    service.add_prompt(&c.id, "p3").await.expect("p3");

    let (first, next) = service.prompts(&c.id, 0, 2).await.expect("page");
    let ids: Vec<_> = first.iter().map(|p| p.id.as_str()).collect();
    assert_eq!((ids, next), (vec!["p1", "p2"], Some(2)));
    let (rest, next) = service.prompts(&c.id, 2, 2).await.expect("page");
    assert_eq!(rest.len(), 1);
    assert_eq!((rest[0].id.as_str(), next), ("p3", None));

    // Pruned by retention: left out, the others still in order.
    store
        .write(|tx| {
            tx.open_table(tables::PROMPTS)?.remove("p2")?;
            Ok::<_, StoreError>(())
        })
        .await
        .expect("prune");
    let (all, _) = service.prompts(&c.id, 0, 10).await.expect("all");
    let ids: Vec<_> = all.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["p1", "p3"]);

    let other = service
        .start("u1", CLAUDE_CODE, "other", "")
        .await
        .expect("other");
    let taken = service.add_prompt(&other.id, "p1").await;
    assert!(matches!(taken, Err(ConversationError::PromptTaken { .. })));
    put_prompt(&store, "foreign", "u2").await;
    let foreign = service.add_prompt(&c.id, "foreign").await;
    assert!(matches!(foreign, Err(ConversationError::NotOwner { .. })));
    let missing = service.add_prompt(&c.id, "nope").await;
    assert!(matches!(missing, Err(ConversationError::PromptNotFound(_))));
}

#[tokio::test]
async fn a_session_is_bound_and_expired() {
    let (_dir, store) = store_with_users(&["u1"]).await;
    let service = ConversationService::new(store);
    let c = service.start("u1", CODEX, "hi", "").await.expect("start");
    service
        .bind_session(&c.id, "0199-abc_def", "vm-1")
        .await
        .expect("bind");
    service.expire(&c.id).await.expect("expire");
    let expired = service.get(&c.id).await.expect("get");
    assert_eq!(expired.cli_session_id.as_deref(), Some("0199-abc_def"));
    assert_eq!(expired.vm_id.as_deref(), Some("vm-1"));
    assert!(expired.expired);
    assert_eq!(expired.version, 3);
    service
        .bind_session(&c.id, "new-session", "vm-2")
        .await
        .expect("rebind");
    assert!(!service.get(&c.id).await.expect("get").expired);
    for bad in ["", "a b", "x;rm", &"a".repeat(200)] {
        let refused = service.bind_session(&c.id, bad, "vm-1").await;
        assert!(
            matches!(refused, Err(ConversationError::Invalid { .. })),
            "{bad:?}"
        );
    }
    let missing = service.expire("no-such").await;
    assert!(matches!(missing, Err(ConversationError::NotFound(_))));
}

#[tokio::test]
async fn a_users_list_pages_newest_first_without_the_others() {
    let (_dir, store) = store_with_users(&["u1", "u10", "u2"]).await;
    let service = ConversationService::new(store);
    let mut started = Vec::new();
    for i in 0..5 {
        started.push(
            service
                .start("u1", CLAUDE_CODE, &format!("c{i}"), "")
                .await
                .expect("start")
                .id,
        );
    }
    // Users whose ids extend or follow "u1" must not leak into its list.
    service
        .start("u10", CLAUDE_CODE, "x", "")
        .await
        .expect("u10");
    service.start("u2", CLAUDE_CODE, "y", "").await.expect("u2");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let (page, next) = service
            .list("u1", cursor.as_deref(), 2)
            .await
            .expect("list");
        pages += 1;
        assert!(page.len() <= 2);
        seen.extend(page.into_iter().map(|c| c.id));
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    started.reverse();
    assert_eq!(seen, started, "newest first, each once");
    assert_eq!(pages, 3);
    let (none, next) = service.list("u2", None, 10).await.expect("u2");
    assert_eq!((none.len(), next), (1, None));
    let nobody = service.list("nobody", None, 10).await;
    assert!(matches!(nobody, Err(ConversationError::UserNotFound(_))));
}

#[tokio::test]
async fn a_delete_keeps_the_prompts_and_tells_the_mirror() {
    let (_dir, store) = store_with_users(&["u1"]).await;
    let service = ConversationService::new(store.clone());
    let c = service
        .start("u1", CLAUDE_CODE, "hi", "")
        .await
        .expect("start");
    put_prompt(&store, "p1", "u1").await;
    service.add_prompt(&c.id, "p1").await.expect("add");
    service.delete(&c.id).await.expect("delete");
    assert!(matches!(
        service.get(&c.id).await,
        Err(ConversationError::NotFound(_))
    ));
    let (listed, _) = service.list("u1", None, 10).await.expect("list");
    assert!(listed.is_empty());
    let kept = stored_prompt(&store, "p1").await.expect("the prompt stays");
    assert_eq!(kept.conversation_id, None);
    let id = c.id.clone();
    let (turns, tombstone) = store
        .read(move |tx| {
            let turns = tx.open_table(tables::CONVERSATION_PROMPTS)?.len()?;
            let key = format!("conversations/{id}");
            let entry: Option<OutboxEntry> = store::get(&tx.open_table(tables::OUTBOX)?, &key)?;
            Ok::<_, StoreError>((turns, entry))
        })
        .await
        .expect("read");
    assert_eq!(turns, 0);
    assert_eq!(tombstone.map(|e| e.entity_version), Some(u64::MAX));
    assert!(matches!(
        service.delete(&c.id).await,
        Err(ConversationError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_users_conversations_go_with_the_user() {
    let (_dir, store) = store_with_users(&["u1", "u2"]).await;
    let service = ConversationService::new(store.clone());
    for user in ["u1", "u1", "u2"] {
        let c = service
            .start(user, CLAUDE_CODE, "hi", "")
            .await
            .expect("start");
        let prompt_id = format!("p-{}", c.id);
        put_prompt(&store, &prompt_id, user).await;
        service.add_prompt(&c.id, &prompt_id).await.expect("add");
    }
    let removed = store
        .write(|tx| records::remove_user_conversations(tx, "u1"))
        .await
        .expect("remove");
    assert_eq!(removed, 2);
    let (left, by_user, turns) = store
        .read(|tx| {
            let left = tx.open_table(tables::CONVERSATIONS)?.len()?;
            let by_user = tx.open_table(tables::CONVERSATIONS_BY_USER)?;
            let keys: Vec<String> = by_user
                .iter()?
                .map(|e| e.map(|(k, _)| k.value().0.to_string()))
                .collect::<Result<_, _>>()?;
            let turns = tx.open_table(tables::CONVERSATION_PROMPTS)?.len()?;
            Ok::<_, StoreError>((left, keys, turns))
        })
        .await
        .expect("read");
    assert_eq!((left, by_user, turns), (1, vec!["u2".to_string()], 1));
}
