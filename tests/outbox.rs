//! The outbox and its worker under paused time, with the scripted sink of `tests/support/`:
//! Retry-After honoured, backoff after a failure, a 400 dead-lettered and retried after the
//! fix, a long outage delivering every entity's last version, and the outbox bounded under a
//! flood of updates to one entity. (The same against PostgREST's wire format and a real
//! PostgreSQL is `tests/mirror.rs`.)

mod support;

use std::sync::Arc;
use std::time::Duration;

use master_controller::metrics::Metrics;
use master_controller::model::{Plan, User};
use master_controller::store::Store;
use master_controller::sync::{SinkError, SyncService, SyncSettings, SyncWorker, outbox};
use master_controller::users::{NewUser, UserPatch, UserService};
use support::fake_sink::FakeSink;
use tokio_util::sync::CancellationToken;

struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    users: UserService,
    sink: Arc<FakeSink>,
    sync: SyncService,
    cancel: CancellationToken,
}

impl Rig {
    async fn start() -> Rig {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).await.expect("store");
        let sink = Arc::new(FakeSink::default());
        let worker = SyncWorker::new(
            store.clone(),
            sink.clone(),
            SyncSettings::default(),
            Arc::new(Metrics::new()),
        );
        let sync = SyncService::new(store.clone(), worker.waker(), true);
        let cancel = CancellationToken::new();
        tokio::spawn(worker.run(cancel.clone()));
        Rig {
            users: UserService::new(store.clone()),
            _dir: dir,
            store,
            sink,
            sync,
            cancel,
        }
    }

    async fn user(&self, email: &str) -> User {
        self.users
            .create(NewUser {
                email: email.into(),
                supabase_auth_id: None,
            })
            .await
            .expect("user")
    }

    async fn bump(&self, id: &str, n: usize) -> User {
        let mut last = None;
        for i in 0..n {
            let plan = [Plan::Free, Plan::Pro, Plan::Enterprise][i % 3];
            last = Some(
                self.users
                    .update(
                        id,
                        UserPatch {
                            plan: Some(plan),
                            ..UserPatch::default()
                        },
                    )
                    .await
                    .expect("update"),
            );
        }
        last.expect("at least one update")
    }

    async fn pending(&self) -> u64 {
        master_controller::inventory::Inventory::take(&self.store, 0)
            .await
            .expect("inventory")
            .outbox_depth
    }

    /// Lets (paused) time run until the outbox is empty.
    async fn drain(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.pending().await > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the outbox did not drain"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn status(code: u16, after: Option<u64>) -> SinkError {
    SinkError::Status {
        status: code,
        retry_after: after.map(Duration::from_secs),
        body: String::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_then_backoff_then_delivered() {
    let rig = Rig::start().await;
    rig.sink.push(status(503, Some(30)));
    rig.sink.push(status(429, Some(12)));
    rig.sink.push(status(500, None));
    let user = rig.user("waits@example.com").await;
    rig.drain(Duration::from_secs(120)).await;
    let calls = rig.sink.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    let gap = |i: usize| calls[i].at - calls[i - 1].at;
    assert!(
        gap(1) >= Duration::from_secs(30),
        "503 Retry-After: {:?}",
        gap(1)
    );
    assert!(
        gap(1) < Duration::from_secs(32),
        "and no longer: {:?}",
        gap(1)
    );
    assert!(
        gap(2) >= Duration::from_secs(12),
        "429 Retry-After: {:?}",
        gap(2)
    );
    assert!(gap(2) < Duration::from_secs(14), "{:?}", gap(2));
    // A 500 without Retry-After: full jitter under the first cap (0.5 s), plus a poll tick.
    assert!(gap(3) < Duration::from_secs(2), "{:?}", gap(3));
    assert!(calls[3].answered.is_ok());
    let row = rig.sink.row("users", &user.id).expect("delivered");
    assert_eq!(row["version"], user.version);
    assert_eq!(row["email"], "waits@example.com");
}

#[tokio::test(start_paused = true)]
async fn a_400_is_dead_lettered_listed_and_delivered_after_the_fix() {
    let rig = Rig::start().await;
    rig.sink.poison(Some("poison"));
    let good = rig.user("good@example.com").await;
    let bad = rig.user("poison@example.com").await;
    let other = rig.user("other@example.com").await;
    rig.drain(Duration::from_secs(60)).await;
    // The batch failed as a whole; the rows were then sent one by one to find the bad one.
    assert!(rig.sink.row("users", &good.id).is_some());
    assert!(rig.sink.row("users", &other.id).is_some());
    assert!(rig.sink.row("users", &bad.id).is_none());
    let letters = rig.sync.dead_letters(10).await.expect("letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (key, letter) = &letters[0];
    assert_eq!(letter.entry.entity_id, bad.id);
    assert_eq!(letter.status, Some(400));
    assert!(
        letter.error.contains("check constraint"),
        "{}",
        letter.error
    );

    rig.sink.poison(None);
    rig.sync.retry(key).await.expect("retry");
    rig.drain(Duration::from_secs(60)).await;
    assert_eq!(
        rig.sink.row("users", &bad.id).expect("delivered")["version"],
        bad.version
    );
    assert!(rig.sync.dead_letters(10).await.expect("letters").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_long_outage_delivers_every_entitys_last_version_and_never_an_older_one() {
    let rig = Rig::start().await;
    rig.sink.set_down(true);
    let mut users = Vec::new();
    for i in 0..100 {
        users.push(rig.user(&format!("offline-{i}@example.com")).await.id);
    }
    // 1,000 changes in all: the creates and 900 updates spread over the users.
    let mut last = std::collections::HashMap::new();
    for _ in 0..9 {
        for id in &users {
            last.insert(id.clone(), rig.bump(id, 1).await.version);
        }
    }
    // Hours offline: the outbox holds one entry per entity.
    tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
    assert_eq!(rig.pending().await, 100);
    rig.sink.set_down(false);
    rig.drain(Duration::from_secs(600)).await;
    for id in &users {
        let row = rig.sink.row("users", id).expect("delivered");
        assert_eq!(row["version"].as_u64(), last.get(id).copied(), "{id}");
    }
    // Per entity, the versions sent never went down.
    let mut seen = std::collections::HashMap::<String, u64>::new();
    for call in rig.sink.calls().iter().filter(|c| c.answered.is_ok()) {
        for (id, version) in &call.rows {
            let before = seen.insert(id.clone(), *version).unwrap_or(0);
            assert!(*version >= before, "{id}: {before} then {version}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_updates_to_one_entity_keeps_one_entry() {
    let rig = Rig::start().await;
    rig.sink.set_down(true);
    let user = rig.user("flood@example.com").await;
    let mut latest = user.clone();
    for _ in 0..10 {
        latest = rig.bump(&user.id, 100).await;
        assert_eq!(rig.pending().await, 1);
    }
    assert!(latest.version > user.version + 500, "{}", latest.version);
    let entries = outbox::due(&rig.store, i64::MAX, 10, Default::default())
        .await
        .expect("due");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].entry.entity_version, latest.version);
}

#[tokio::test(start_paused = true)]
async fn a_deleted_entity_is_sent_as_a_tombstone() {
    let rig = Rig::start().await;
    let user = rig.user("gone@example.com").await;
    rig.drain(Duration::from_secs(60)).await;
    assert!(rig.sink.row("users", &user.id).is_some());
    let id = user.id.clone();
    rig.store
        .write(move |tx| {
            tx.open_table(master_controller::model::tables::USERS)?
                .remove(id.as_str())?;
            outbox::record_delete::<User>(tx, &id, &id)?;
            Ok::<_, master_controller::store::StoreError>(())
        })
        .await
        .expect("delete");
    rig.drain(Duration::from_secs(60)).await;
    assert!(
        rig.sink.row("users", &user.id).is_none(),
        "deleted upstream"
    );
}
