//! Flat lookups: the reads whose cost must not grow with the store, against an empty store and a
//! crowded one (10,000 users with a VM each, 100,000 prompt records) in the same run. The user
//! looked up is the same in both: a VM and 50 prompts of their own.

use std::time::{Duration, Instant};

use master_controller::model::{PromptStatus, VmStatus, now_ms};

use super::Row;
use crate::support::crowd;
use crate::support::{ADMIN_TOKEN, SERVICE_TOKEN, TestDaemon};

pub const USERS: usize = 10_000;
pub const PROMPTS: usize = 100_000;
/// Issue 19's bound on a crowded lookup's p50 against the empty store's.
pub const MAX_RATIO: f64 = 1.5;
/// The looked-up user's own prompts (a first page and more).
const OWN_PROMPTS: usize = 50;

struct Subject {
    daemon: TestDaemon,
    user_id: String,
}

async fn subject(crowded: bool) -> Subject {
    let daemon = TestDaemon::start_with(&[
        ("MC_RATE_LIMIT_PER_SECOND", "1000000"),
        ("MC_RATE_LIMIT_BURST", "1000000"),
    ])
    .await;
    let user_id = daemon.create_user("flat@example.com").await;
    let store = &daemon.ctx.store;
    crowd::put_vm(
        store,
        &format!("vm-{user_id}"),
        &user_id,
        VmStatus::Hibernated,
    )
    .await;
    let now = now_ms();
    let own = (0..OWN_PROMPTS)
        .map(|i| {
            let id = format!("own-{i:03}");
            crowd::prompt(&id, &user_id, PromptStatus::Completed, now - i as i64)
        })
        .collect();
    crowd::put_prompts(store, own).await;
    if crowded {
        let others = PROMPTS - OWN_PROMPTS;
        crowd::crowd(store, USERS - 1, others, &|line| {
            eprintln!("api bench: crowded store: {line}");
        })
        .await;
    }
    Subject { daemon, user_id }
}

/// One GET, checked and read to the end.
async fn get(client: &reqwest::Client, url: &str, token: &str) -> Duration {
    let started = Instant::now();
    let response = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    response.bytes().await.expect("body");
    started.elapsed()
}

/// The rows of each lookup, the empty store's then the crowded one's (its ratio against the
/// empty one's p50). Requests alternate between the two daemons, so that a noisy moment on the
/// shared host lands on both.
pub async fn lookups(requests: usize) -> Vec<(Row, Option<Duration>)> {
    let empty = subject(false).await;
    let crowded = subject(true).await;
    let client = reqwest::Client::new();
    let routes: [(&str, &str, &str); 3] = [
        ("GET /api/users/:id/vm", "/api/users/{id}/vm", SERVICE_TOKEN),
        ("GET /metrics", "/metrics", ADMIN_TOKEN),
        (
            "GET /api/users/:id/prompts",
            "/api/users/{id}/prompts",
            SERVICE_TOKEN,
        ),
    ];
    let mut rows = Vec::new();
    for (name, path, token) in routes {
        let urls = [&empty, &crowded].map(|s| s.daemon.url(&path.replace("{id}", &s.user_id)));
        // Warm both (connections, caches) before timing.
        for url in &urls {
            get(&client, url, token).await;
        }
        let mut samples = [Vec::new(), Vec::new()];
        let started = Instant::now();
        for _ in 0..requests {
            for (url, samples) in urls.iter().zip(samples.iter_mut()) {
                samples.push(get(&client, url, token).await);
            }
        }
        let wall = started.elapsed() / 2;
        let [empty_samples, crowded_samples] = samples;
        let empty_row = Row {
            name: format!("{name}, empty store"),
            samples: empty_samples,
            wall,
        };
        let empty_p50 = empty_row.p(0.5);
        rows.push((empty_row, None));
        rows.push((
            Row {
                name: format!("{name}, {USERS} users and {PROMPTS} prompts"),
                samples: crowded_samples,
                wall,
            },
            Some(empty_p50),
        ));
    }
    empty.daemon.shutdown().await;
    crowded.daemon.shutdown().await;
    rows
}
