//! The Supabase mirror end to end: the daemon binary's outbox worker sends to the
//! PostgREST-shaped stub of `tests/support/`, which applies each request to a real PostgreSQL 15
//! with `supabase/migrations/` applied, so the rows that land are checked in a real database.
//! The process first moves into network and UTS namespaces of its own (the daemon listens on a
//! fixed port). Needs root and PostgreSQL 15; without them it says so and skips, unless
//! `MC_REQUIRE_GUESTS=1`.

mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;
use support::daemon_proc::{ADMIN_TOKEN, DaemonProc, SERVICE_TOKEN};
use support::harness::{self, Case};
use support::postgres::PgServer;
use support::postgrest::PostgrestStub;

const KEY: &str = "service-role-key-for-the-mirror-test";

struct World {
    daemon: DaemonProc,
    pg: PgServer,
    stub: PostgrestStub,
    users: u32,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new_user(&mut self) -> (String, u64) {
        self.users += 1;
        let reply = self
            .daemon
            .call(
                "POST",
                "/api/users",
                SERVICE_TOKEN,
                Some(json!({"email": format!("mirror-{}@example.com", self.users)})),
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.json);
        let id = reply.json["userId"].as_str().expect("userId").to_string();
        let version = reply.json["version"].as_u64().expect("version");
        (id, version)
    }

    /// Changes the user's plan; answers the new version.
    async fn bump(&self, id: &str, i: usize) -> u64 {
        let plan = ["free", "pro", "enterprise"][i % 3];
        let reply = self
            .daemon
            .call(
                "PATCH",
                &format!("/api/users/{id}"),
                SERVICE_TOKEN,
                Some(json!({ "plan": plan })),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        self.version_of(id).await
    }

    async fn version_of(&self, id: &str) -> u64 {
        let admin = self
            .daemon
            .call("GET", &format!("/api/users/{id}"), ADMIN_TOKEN, None)
            .await;
        admin.json["version"].as_u64().expect("version")
    }

    /// The (id, version) pairs PostgreSQL holds for `ids`.
    async fn landed(&self, ids: &[String]) -> Vec<(String, i64)> {
        let client = self.pg.connect().await;
        let rows = client
            .query(
                "select id, version from users where id = any($1) order by id",
                &[&ids],
            )
            .await
            .expect("query");
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }

    async fn wait_landed(&self, expected: &[(String, i64)], within: Duration) {
        let ids: Vec<String> = expected.iter().map(|(id, _)| id.clone()).collect();
        let mut want = expected.to_vec();
        want.sort();
        let deadline = Instant::now() + within;
        loop {
            let got = self.landed(&ids).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL holds {} of {} rows as expected\n{}",
                got.iter().filter(|g| want.contains(g)).count(),
                want.len(),
                self.daemon.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn outbox(&self) -> serde_json::Value {
        let reply = self
            .daemon
            .call("GET", "/api/admin/outbox", ADMIN_TOKEN, None)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        reply.json
    }
}

async fn a_long_outage_loses_nothing(world: &mut World) {
    world.stub.refuse_connections().await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(world.new_user().await.0);
    }
    let mut expected = Vec::new();
    for id in &ids {
        let mut version = 1;
        for i in 0..9 {
            version = world.bump(id, i).await;
        }
        expected.push((id.clone(), version as i64));
    }
    let state = world.outbox().await;
    assert_eq!(state["pending"], 100, "one entry per entity: {state:?}");
    assert!(state["oldestAgeMs"].as_i64().is_some_and(|a| a > 0));
    world.stub.accept_connections().await;
    world.wait_landed(&expected, Duration::from_secs(120)).await;
    let state = world.outbox().await;
    assert_eq!(state["pending"], 0, "{state:?}");
    let metrics = world
        .daemon
        .call("GET", "/metrics", ADMIN_TOKEN, None)
        .await;
    let text = metrics.json.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("mc_outbox_sends_total{outcome=\"ok\"}"),
        "{text}"
    );
    assert!(text.contains("mc_outbox_depth 0"));
}

async fn retry_after_then_429_then_500_then_success(world: &mut World) {
    world.stub.clear_requests();
    world.stub.push_response(503, Some(1));
    world.stub.push_response(429, Some(2));
    world.stub.push_response(500, None);
    let (id, version) = world.new_user().await;
    world
        .wait_landed(&[(id.clone(), version as i64)], Duration::from_secs(60))
        .await;
    let requests: Vec<_> = world
        .stub
        .requests()
        .into_iter()
        .filter(|r| r.rows.iter().any(|(row, _)| *row == id))
        .collect();
    let statuses: Vec<Option<u16>> = requests.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Some(503), Some(429), Some(500), Some(201)],
        "{requests:?}"
    );
    assert!(requests[1].at - requests[0].at >= Duration::from_secs(1));
    assert!(requests[2].at - requests[1].at >= Duration::from_secs(2));
    for request in &requests {
        assert_eq!(request.header("apikey"), Some(KEY));
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert!(
            request
                .header("prefer")
                .is_some_and(|p| p.contains("resolution=merge-duplicates"))
        );
    }
}

async fn a_400_is_dead_lettered_and_retried_after_the_fix(world: &mut World) {
    let client = world.pg.connect().await;
    client
        .batch_execute(
            "alter table users add constraint mirror_test_no_poison check (email not like 'poison%')",
        )
        .await
        .expect("constraint");
    let reply = world
        .daemon
        .call(
            "POST",
            "/api/users",
            SERVICE_TOKEN,
            Some(json!({"email": "poison@example.com"})),
        )
        .await;
    let id = reply.json["userId"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let letters = loop {
        let letters = world
            .daemon
            .call("GET", "/api/admin/outbox/dead-letters", ADMIN_TOKEN, None)
            .await;
        if letters.json.as_array().is_some_and(|l| !l.is_empty()) {
            break letters.json;
        }
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(letters[0]["entityId"], id.as_str(), "{letters:?}");
    assert_eq!(letters[0]["status"], 400);
    assert!(
        letters[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("mirror_test_no_poison")),
        "{letters:?}"
    );
    client
        .batch_execute("alter table users drop constraint mirror_test_no_poison")
        .await
        .expect("drop");
    let key = letters[0]["key"].as_str().expect("key");
    let retried = world
        .daemon
        .call(
            "POST",
            "/api/admin/outbox/dead-letters/retry",
            ADMIN_TOKEN,
            Some(json!({ "key": key })),
        )
        .await;
    assert_eq!(retried.status, 202, "{:?}", retried.json);
    world
        .wait_landed(&[(id.clone(), 1)], Duration::from_secs(60))
        .await;
    let letters = world
        .daemon
        .call("GET", "/api/admin/outbox/dead-letters", ADMIN_TOKEN, None)
        .await;
    assert_eq!(letters.json, json!([]));
    // Operators only.
    for token in [SERVICE_TOKEN] {
        for (method, path) in [
            ("GET", "/api/admin/outbox"),
            ("GET", "/api/admin/outbox/dead-letters"),
            ("POST", "/api/admin/outbox/dead-letters/retry"),
        ] {
            let reply = world
                .daemon
                .call(method, path, token, Some(json!({})))
                .await;
            assert_eq!(reply.status, 403, "{method} {path}");
        }
    }
}

async fn sigkill_mid_batch_loses_nothing(world: &mut World) {
    world.stub.set_delay(Duration::from_secs(3));
    world.stub.clear_requests();
    let mut expected = Vec::new();
    for _ in 0..50 {
        let (id, version) = world.new_user().await;
        expected.push((id, version as i64));
    }
    // Kill the daemon while the stub holds a batch.
    world
        .stub
        .wait_for_requests(1, Duration::from_secs(30))
        .await;
    world.daemon.kill();
    world.stub.set_delay(Duration::ZERO);
    // A conversation with one turn, written while the daemon is down, as its prompt service
    // writes one: it reaches Supabase with the rest, and its prompt names it.
    let (conversation, prompt_id) = seed_conversation(world, &expected[0].0).await;
    world.daemon.start(&[]).await;
    world.wait_landed(&expected, Duration::from_secs(120)).await;
    let client = world.pg.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let landed = client
            .query(
                "select c.version, c.turns, c.cwd, c.title, p.conversation_id \
                 from conversations c join prompts p on p.conversation_id = c.id \
                 where c.id = $1 and p.id = $2",
                &[&conversation, &prompt_id],
            )
            .await
            .expect("query");
        if let Some(row) = landed.first() {
            let (version, turns): (i64, i64) = (row.get(0), row.get(1));
            let (cwd, title): (String, String) = (row.get(2), row.get(3));
            assert_eq!((version, turns), (3, 1), "the newest version");
            assert_eq!((cwd.as_str(), title.as_str()), ("src", "mirror me"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the conversation did not land\n{}",
            world.daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state = world.outbox().await;
    assert_eq!(state["pending"], 0, "{state:?}");
}

/// Writes a conversation of `user_id` with one prompt into the stopped daemon's store, through
/// the conversation service; answers (conversation id, prompt id).
async fn seed_conversation(world: &World, user_id: &str) -> (String, String) {
    use master_controller::conversations::ConversationService;
    use master_controller::model::{Prompt, PromptStatus, now_ms, tables};
    use master_controller::store::Store;
    let store = Store::open(&world.daemon.data_dir).await.expect("store");
    let prompt_id = format!("mirror-prompt-{user_id}");
    let prompt = Prompt {
        id: prompt_id.clone(),
        user_id: user_id.to_string(),
        vm_id: None,
        provider: master_controller::providers::CODEX,
        status: PromptStatus::Completed,
        created_at_ms: now_ms(),
        started_at_ms: None,
        completed_at_ms: None,
        exit_code: Some(0),
        error: None,
        version: 1,
        model: None,
        prompt_bytes: 9,
        response_text: "done".into(),
        response_truncated: false,
        first_content_ms: None,
        duration_ms: None,
        usage_json: None,
        conversation_id: None,
    };
    store
        .write(move |tx| {
            master_controller::sync::put_mirrored(tx, tables::PROMPTS, &prompt.id, &prompt)
        })
        .await
        .expect("prompt");
    let conversations = ConversationService::new(store.clone());
    let conversation = conversations
        .start(
            user_id,
            master_controller::providers::CODEX,
            "mirror me",
            "src",
        )
        .await
        .expect("conversation");
    conversations
        .add_prompt(&conversation.id, &prompt_id)
        .await
        .expect("turn");
    conversations
        .bind_session(&conversation.id, "session-1", "vm-1")
        .await
        .expect("session");
    drop(conversations);
    assert!(store.close(Duration::from_secs(10)).await, "store closed");
    (conversation.id, prompt_id)
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return harness::missing("mirror", "needs root for a network namespace");
    }
    support::host_agent::enter_namespaces();
    let runtime = harness::runtime();
    let Some(pg) = runtime.block_on(PgServer::start_or_skip("mirror")) else {
        println!("0 passed, 0 failed, 1 skipped");
        return ExitCode::SUCCESS;
    };
    let mut world = runtime.block_on(async {
        pg.apply_migrations().await.expect("migrations apply");
        let stub = PostgrestStub::start(&pg, KEY).await;
        let dir = tempfile::tempdir().expect("dir");
        let mut daemon = DaemonProc::new(
            dir.path(),
            &[
                ("SUPABASE_URL", stub.url()),
                ("SUPABASE_SERVICE_KEY", KEY.to_string()),
            ],
        );
        daemon.start(&[]).await;
        World {
            daemon,
            pg,
            stub,
            users: 0,
            _dir: dir,
        }
    });
    let cases: Vec<(&str, Case<World>)> = vec![
        (
            "1,000 changes to 100 users while Supabase refuses connections all land, newest versions",
            |w| Box::pin(a_long_outage_loses_nothing(w)),
        ),
        (
            "503 Retry-After, 429, 500, then success: delivered, waits honoured",
            |w| Box::pin(retry_after_then_429_then_500_then_success(w)),
        ),
        (
            "a 400 is dead-lettered, listed, retried after the fix, delivered",
            |w| Box::pin(a_400_is_dead_lettered_and_retried_after_the_fix(w)),
        ),
        ("SIGKILL in the middle of a batch loses nothing", |w| {
            Box::pin(sigkill_mid_batch_loses_nothing(w))
        }),
    ];
    harness::run(&runtime, &mut world, cases, |w| {
        println!("{}", w.daemon.log_tail());
        true
    })
}
