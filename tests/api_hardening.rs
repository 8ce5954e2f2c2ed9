//! Attacks on the API listener and its unauthenticated work (issue 15, items 5 and 6): metrics
//! without a token, scrapes that decode every prompt, prompts kept for ever, a slowloris, a
//! connection flood, and token guessing.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use master_controller::model::tables;
use master_controller::model::{OutboxEntry, Prompt, PromptStatus, now_ms};
use master_controller::store::{self, StoreError, Stored};
use support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DAY_MS: i64 = 24 * 3600 * 1000;
/// Generous: the host is shared and slow; nothing here asserts on speed.
const DEADLINE: Duration = Duration::from_secs(60);

async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> u16 {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request").status().as_u16()
}

#[tokio::test]
async fn metrics_need_a_token_on_the_main_listener_and_none_on_metrics_listen() {
    let d = TestDaemon::start().await;
    let user = d.create_user("scraper@example.com").await;
    let user_token = d.user_token(&user).await;
    for path in ["/metrics", "/metrics/json"] {
        let url = d.url(path);
        assert_eq!(
            get(&d.client, &url, None).await,
            401,
            "{path} without a token"
        );
        assert_eq!(get(&d.client, &url, Some("wrong")).await, 401, "{path}");
        assert_eq!(get(&d.client, &url, Some(&user_token)).await, 403, "{path}");
        assert_eq!(get(&d.client, &url, Some(ADMIN_TOKEN)).await, 200, "{path}");
        assert_eq!(
            get(&d.client, &url, Some(SERVICE_TOKEN)).await,
            200,
            "{path}"
        );
    }
    d.shutdown().await;

    let d = TestDaemon::start_with(&[("MC_METRICS_LISTEN", "127.0.0.1:0")]).await;
    let metrics_addr = d.running.as_ref().unwrap().metrics_addr.expect("listener");
    for path in ["/metrics", "/metrics/json"] {
        let open = format!("http://{metrics_addr}{path}");
        assert_eq!(
            get(&d.client, &open, None).await,
            200,
            "{path} on metrics_listen"
        );
        assert_eq!(get(&d.client, &d.url(path), Some(ADMIN_TOKEN)).await, 404);
    }
    d.shutdown().await;
}

/// A prompt that ended at `ended_ms`.
fn prompt(id: &str, user_id: &str, status: PromptStatus, ended_ms: i64) -> Prompt {
    support::crowd::prompt(id, user_id, status, ended_ms - 1000)
}

async fn seed(d: &TestDaemon, prompts: Vec<Prompt>) {
    support::crowd::put_prompts(&d.ctx.store, prompts).await;
}

async fn codex_counts(d: &TestDaemon) -> serde_json::Value {
    let stats = d
        .call("GET", "/api/admin/system/stats", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(stats.status, 200, "{:?}", stats.json);
    stats.json["prompts"]["byProviderStatus"].clone()
}

#[tokio::test]
async fn a_scrape_reads_the_counters_not_the_prompt_records() {
    let d = TestDaemon::start().await;
    let user = d.create_user("many@example.com").await;
    let now = now_ms();
    seed(
        &d,
        (0..300)
            .map(|i| prompt(&format!("p{i:03}"), &user, PromptStatus::Completed, now))
            .collect(),
    )
    .await;
    // A record no binary can decode: a scrape that decoded the prompts would fail on it.
    d.ctx
        .store
        .write(|tx| {
            let garbage = <Stored<Prompt> as redb::Value>::from_bytes(b"\xff\xffnot a record");
            tx.open_table(tables::PROMPTS)?.insert("corrupt", garbage)?;
            // And an outbox entry: with the mirror down the outbox holds one per changed
            // prompt, so a scrape must not decode those either.
            let garbage = <Stored<OutboxEntry> as redb::Value>::from_bytes(b"\xff\xffnope");
            tx.open_table(tables::OUTBOX)?
                .insert("prompts/corrupt", garbage)?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    for path in ["/metrics", "/metrics/json"] {
        assert_eq!(
            get(&d.client, &d.url(path), Some(ADMIN_TOKEN)).await,
            200,
            "{path}"
        );
    }
    assert_eq!(codex_counts(&d).await["codex:completed"], 300);
    // The outbox (302 entries with no mirror configured) is read through its age index.
    let outbox = d
        .call("GET", "/api/admin/outbox", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(outbox.json["pending"], 302, "{:?}", outbox.json);
    assert!(outbox.json["oldestAgeMs"].is_i64(), "{:?}", outbox.json);
    d.shutdown().await;
}

#[tokio::test]
async fn prune_removes_prompts_past_the_retention_and_keeps_newer_ones() {
    let d = TestDaemon::start().await;
    let user = d.create_user("history@example.com").await;
    let now = now_ms();
    seed(
        &d,
        vec![
            prompt(
                "old-done",
                &user,
                PromptStatus::Completed,
                now - 31 * DAY_MS,
            ),
            prompt("old-failed", &user, PromptStatus::Failed, now - 40 * DAY_MS),
            prompt("recent", &user, PromptStatus::Completed, now - 29 * DAY_MS),
            // Still streaming (a restart settles it): never pruned, however old.
            prompt(
                "old-open",
                &user,
                PromptStatus::Streaming,
                now - 31 * DAY_MS,
            ),
        ],
    )
    .await;
    let ran = d
        .call(
            "POST",
            "/api/admin/tasks/prune_prompts/run",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(ran.status, 200, "{:?}", ran.json);
    assert_eq!(ran.json["run"]["itemsTouched"], 2, "{:?}", ran.json);
    let (records, outbox) = d
        .ctx
        .store
        .read(|tx| {
            let prompts = tx.open_table(tables::PROMPTS)?;
            let outbox = tx.open_table(tables::OUTBOX)?;
            let mut records = Vec::new();
            let mut pending = Vec::new();
            for id in ["old-done", "old-failed", "recent", "old-open"] {
                if store::get::<Prompt, _>(&prompts, id)?.is_some() {
                    records.push(id);
                }
                if redb::ReadableTable::get(&outbox, format!("prompts/{id}").as_str())?.is_some() {
                    pending.push(id);
                }
            }
            Ok::<_, StoreError>((records, pending))
        })
        .await
        .unwrap();
    assert_eq!(records, ["recent", "old-open"]);
    // The mirror gets no tombstone: the pruned prompts' pending changes went with them.
    assert_eq!(outbox, ["recent", "old-open"]);
    let counts = codex_counts(&d).await;
    assert_eq!(counts["codex:completed"], 1, "{counts}");
    assert!(counts["codex:failed"].is_null(), "{counts}");
    assert_eq!(counts["codex:streaming"], 1, "{counts}");
    d.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let d = TestDaemon::start_with(&[("MC_API_HEADER_READ_TIMEOUT_SECS", "2")]).await;
    let mut slow = TcpStream::connect(d.running.as_ref().unwrap().addr)
        .await
        .unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // hyper may answer 408 before closing.
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slowloris connection is still open");
    d.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_others_end() {
    let d = TestDaemon::start_with(&[
        ("MC_API_MAX_CONNECTIONS", "2"),
        ("MC_API_HEADER_READ_TIMEOUT_SECS", "300"),
    ])
    .await;
    let addr = d.running.as_ref().unwrap().addr;
    let holders = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    let url = d.url("/health");
    let third = tokio::spawn(async move { get(&reqwest::Client::new(), &url, None).await });
    // Not served while the two hold their connections.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past the cap of 2"
    );
    drop(holders);
    let status = tokio::time::timeout(DEADLINE, third)
        .await
        .expect("served once the holders left")
        .unwrap();
    assert_eq!(status, 200);
    d.shutdown().await;
}

#[tokio::test]
async fn failed_authentications_from_one_address_get_429_and_spare_other_addresses() {
    let d = TestDaemon::start_with(&[
        ("MC_AUTH_FAILURE_BURST", "5"),
        ("MC_AUTH_FAILURES_PER_MINUTE", "1"),
    ])
    .await;
    let route = d.url("/api/admin/users");
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
            .build()
            .unwrap()
    };
    let guesser = from(1);
    for guess in 0..5 {
        let token = format!("guess-{guess:020}");
        assert_eq!(
            get(&guesser, &route, Some(&token)).await,
            401,
            "guess {guess}"
        );
    }
    assert_eq!(get(&guesser, &route, Some("guess-6")).await, 429);
    // Even the right token: a guesser must not learn which guess was right.
    assert_eq!(get(&guesser, &route, Some(ADMIN_TOKEN)).await, 429);

    let other = from(2);
    assert_eq!(get(&other, &route, Some(ADMIN_TOKEN)).await, 200);
    assert_eq!(get(&other, &route, Some("wrong")).await, 401);
    d.shutdown().await;
}
