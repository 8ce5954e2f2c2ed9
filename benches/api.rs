//! API latency benchmark (not a timed test): `GET /api/users/:id` and `POST /api/users` at 1, 16
//! and 128 concurrent clients, each against the raw service call measured in the same run; the
//! per-commit cost of the store against a bare redb commit; and the lookups that must stay flat
//! as the store grows, on an empty store against one of 10,000 users and 100,000 prompts.
//!
//! `cargo bench --bench api` (set `MC_BENCH_REQUESTS` to change the request count per row).

#[path = "api/flat.rs"]
mod flat;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use master_controller::store::Store;
use master_controller::users::{NewUser, UserService};
use support::stats::{ms, percentile};
use support::{SERVICE_TOKEN, TestDaemon};
use tokio::sync::Mutex;

struct Row {
    name: String,
    samples: Vec<Duration>,
    wall: Duration,
}

impl Row {
    fn p(&self, p: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        percentile(&sorted, p)
    }
}

/// Prints `rows` as a table; a row's ratio is its p50 against the p50 it carries (`against`
/// names it in the header).
fn print_table(title: &str, against: &str, rows: &[(Row, Option<Duration>)]) {
    println!("\n### {title}\n");
    println!("| operation | n | p50 ms | p95 ms | p99 ms | req/s | p50 ÷ {against} p50 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (row, raw_p50) in rows {
        let ratio = raw_p50
            .map(|raw| {
                format!(
                    "{:.2}×",
                    row.p(0.5).as_secs_f64() / raw.as_secs_f64().max(1e-9)
                )
            })
            .unwrap_or_else(|| "—".into());
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {} |",
            row.name,
            row.samples.len(),
            ms(row.p(0.5)),
            ms(row.p(0.95)),
            ms(row.p(0.99)),
            row.samples.len() as f64 / row.wall.as_secs_f64(),
            ratio
        );
    }
}

/// Runs `total` operations spread over `clients` concurrent tasks.
async fn run<F, Fut>(name: String, clients: usize, total: usize, op: F) -> Row
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let samples = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let started = Instant::now();
    let per_client = total.div_ceil(clients);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let op = op.clone();
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut local = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let t = Instant::now();
                    op(c * per_client + i).await;
                    local.push(t.elapsed());
                }
                samples.lock().await.extend(local);
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("bench task");
    }
    let wall = started.elapsed();
    let samples = Arc::try_unwrap(samples).expect("tasks done").into_inner();
    Row {
        name,
        samples,
        wall,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let requests: usize = std::env::var("MC_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let d = TestDaemon::start_with(&[
        ("MC_RATE_LIMIT_PER_SECOND", "1000000"),
        ("MC_RATE_LIMIT_BURST", "1000000"),
    ])
    .await;
    let user_id = d.create_user("bench@example.com").await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");
    let users = d.ctx.users.clone();
    let tag = std::process::id();

    let raw_get = {
        let users = users.clone();
        let id = user_id.clone();
        run("raw UserService::get".into(), 1, requests, move |_| {
            let users = users.clone();
            let id = id.clone();
            async move {
                users.get(&id).await.expect("get");
            }
        })
        .await
    };
    let raw_create = {
        let users = users.clone();
        run(
            "raw UserService::create".into(),
            1,
            requests / 2,
            move |i| {
                let users = users.clone();
                async move {
                    users
                        .create(NewUser {
                            email: format!("raw{tag}-{i}@example.com"),
                            supabase_auth_id: None,
                        })
                        .await
                        .expect("create");
                }
            },
        )
        .await
    };
    let raw_get_p50 = raw_get.p(0.5);
    let raw_create_p50 = raw_create.p(0.5);

    let mut rows = vec![(raw_get, None), (raw_create, None)];
    for clients in [1, 16, 128] {
        let url = d.url(&format!("/api/users/{user_id}"));
        let http = client.clone();
        let get = run(
            format!("GET /api/users/:id, {clients} clients"),
            clients,
            requests,
            move |_| {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let r = http
                        .get(&url)
                        .bearer_auth(SERVICE_TOKEN)
                        .send()
                        .await
                        .expect("GET");
                    assert_eq!(r.status().as_u16(), 200);
                    r.bytes().await.expect("body");
                }
            },
        )
        .await;
        rows.push((get, Some(raw_get_p50)));

        let url = d.url("/api/users");
        let http = client.clone();
        let post = run(
            format!("POST /api/users, {clients} clients"),
            clients,
            requests / 2,
            move |i| {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let r = http
                        .post(&url)
                        .bearer_auth(SERVICE_TOKEN)
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"email":"c{clients}-{tag}-{i}@example.com"}}"#))
                        .send()
                        .await
                        .expect("POST");
                    assert_eq!(r.status().as_u16(), 201);
                    r.bytes().await.expect("body");
                }
            },
        )
        .await;
        rows.push((post, Some(raw_create_p50)));
    }
    print_table(
        "API latency (in-process client over loopback)",
        "raw",
        &rows,
    );

    let store_rows = store_commit_cost(requests / 2).await;
    print_table("Store: cost of one durable commit", "raw", &store_rows);

    let flat_rows = flat::lookups(requests / 2).await;
    print_table(
        &format!(
            "Flat lookups: an empty store against {} users and {} prompt records (1 client)",
            flat::USERS,
            flat::PROMPTS
        ),
        "empty store",
        &flat_rows,
    );
    let worst = flat_rows
        .iter()
        .filter_map(|(row, empty_p50)| {
            empty_p50.map(|e| row.p(0.5).as_secs_f64() / e.as_secs_f64().max(1e-9))
        })
        .fold(0.0, f64::max);
    let met = worst <= flat::MAX_RATIO;
    println!(
        "\nrequirement: every crowded p50 within {}× of the empty store's: {} (worst {worst:.2}×)",
        flat::MAX_RATIO,
        if met { "met" } else { "NOT MET" }
    );
    d.shutdown().await;
    if !met {
        std::process::exit(1);
    }
}

/// One user record per commit through `Store::write` (envelope, blocking thread, Immediate
/// durability), against a bare redb insert+commit of the same bytes on the calling thread.
async fn store_commit_cost(n: usize) -> Vec<(Row, Option<Duration>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw_dir = tempfile::tempdir().expect("tempdir");
    let raw = {
        let db = redb::Database::create(raw_dir.path().join("raw.redb")).expect("raw db");
        let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("raw");
        let value = vec![7u8; 160];
        let mut samples = Vec::with_capacity(n);
        let started = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            let tx = db.begin_write().expect("begin");
            tx.open_table(table)
                .expect("table")
                .insert(format!("key-{i}").as_str(), value.as_slice())
                .expect("insert");
            tx.commit().expect("commit");
            samples.push(t.elapsed());
        }
        Row {
            name: "raw redb commit (Immediate)".into(),
            samples,
            wall: started.elapsed(),
        }
    };
    let store = Store::open(dir.path()).await.expect("store");
    let users = UserService::new(store);
    let ours = run(
        "Store commit via UserService::create".into(),
        1,
        n,
        move |i| {
            let users = users.clone();
            async move {
                users
                    .create(NewUser {
                        email: format!("commit{i}@example.com"),
                        supabase_auth_id: None,
                    })
                    .await
                    .expect("create");
            }
        },
    )
    .await;
    let raw_p50 = raw.p(0.5);
    vec![(raw, None), (ours, Some(raw_p50))]
}
