//! The Supabase mirror's schema (`supabase/migrations/`) on a real PostgreSQL 15, written through
//! the PostgREST stub the outbox worker's tests use: the migrations apply (and re-apply), every
//! field `sync::rows` sends has a column that keeps its value, an unknown field is refused as
//! PostgREST refuses it, an older version never overwrites a newer one, and a delete deletes.
//!
//! Each test starts its own cluster (about a second). Without PostgreSQL they skip with a
//! message, unless `MC_REQUIRE_GUESTS=1` (scripts/test.sh), where they fail.

mod support;

use std::time::Duration;

use master_controller::sync::rows::{RowOptions, samples};
use serde_json::{Value, json};
use support::postgres::PgServer;
use support::postgrest::PostgrestStub;
use tokio_postgres::Client;

const KEY: &str = "test-service-role-key";

/// Fields drop in order: the HTTP side before the database it writes to.
struct Mirror {
    http: reqwest::Client,
    db: Client,
    stub: PostgrestStub,
    _pg: PgServer,
}

async fn mirror(test: &str) -> Option<Mirror> {
    let pg = PgServer::start_or_skip(test).await?;
    pg.apply_migrations().await.expect("the migrations apply");
    Some(Mirror {
        http: reqwest::Client::new(),
        db: pg.connect().await,
        stub: PostgrestStub::start(&pg, KEY).await,
        _pg: pg,
    })
}

impl Mirror {
    /// A batch as the outbox worker sends it.
    async fn post(&self, table: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/rest/v1/{table}", self.stub.url()))
            .header("apikey", KEY)
            .bearer_auth(KEY)
            .header("prefer", "resolution=merge-duplicates,return=minimal")
            .json(body)
            .send()
            .await
            .expect("the stub answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn delete(&self, table: &str, encoded_id: &str) -> u16 {
        self.http
            .delete(format!(
                "{}/rest/v1/{table}?id=eq.{encoded_id}",
                self.stub.url()
            ))
            .header("apikey", KEY)
            .bearer_auth(KEY)
            .send()
            .await
            .expect("the stub answers")
            .status()
            .as_u16()
    }

    /// The stored row as PostgreSQL renders it.
    async fn row(&self, table: &str, id: &str) -> Option<Value> {
        let sql = format!("select to_jsonb(t) from public.{table} t where id = $1");
        let rows = self.db.query(&sql, &[&id]).await.expect("select");
        rows.first().map(|r| r.get(0))
    }

    async fn column_type(&self, table: &str, column: &str) -> String {
        let row = self
            .db
            .query_one(
                "select data_type::text from information_schema.columns \
                 where table_schema = 'public' and table_name = $1 and column_name = $2",
                &[&table, &column],
            )
            .await
            .unwrap_or_else(|e| panic!("{table}.{column}: {e}"));
        row.get(0)
    }

    async fn same_instant(&self, a: &str, b: &str) -> bool {
        let row = self
            .db
            .query_one(
                "select $1::text::timestamptz = $2::text::timestamptz",
                &[&a, &b],
            )
            .await
            .expect("compare timestamps");
        row.get(0)
    }
}

fn tables() -> Vec<&'static str> {
    samples(&RowOptions::default())
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

fn sample(table: &str) -> Value {
    samples(&sample_options())
        .into_iter()
        .find(|(t, _)| *t == table)
        .map(|(_, row)| row)
        .expect("a sample for the table")
}

#[tokio::test]
async fn migrations_apply_cleanly_and_again() {
    let Some(pg) = PgServer::start_or_skip("migrations_apply_cleanly_and_again").await else {
        return;
    };
    let applied = pg.apply_migrations().await.expect("first apply");
    assert!(!applied.is_empty(), "no migration in supabase/migrations/");
    let db = pg.connect().await;
    db.execute(
        "insert into public.users (id, email, plan, status, prompt_count, created_at, \
         updated_at, version) values ('u-kept', 'k@example.com', 'free', 'active', 0, now(), \
         now(), 1)",
        &[],
    )
    .await
    .expect("a row before the second apply");
    pg.apply_migrations()
        .await
        .expect("a second apply is harmless");
    let kept = db
        .query("select 1 from public.users where id = 'u-kept'", &[])
        .await
        .expect("select");
    assert_eq!(kept.len(), 1, "the second apply lost data");
    for table in tables() {
        let relation = format!("public.{table}");
        let row = db
            .query_one(
                "select c.relrowsecurity, \
                   (select count(*) from pg_policies p where p.schemaname = 'public' \
                      and p.tablename = $2), \
                   (select count(*) from pg_trigger t where t.tgrelid = c.oid \
                      and not t.tgisinternal) \
                 from pg_class c where c.oid = $1::text::regclass",
                &[&relation, &table],
            )
            .await
            .unwrap_or_else(|e| panic!("{table} is not in the schema: {e}"));
        let (rls, policies, triggers): (bool, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert!(rls, "{table}: row level security is off");
        assert_eq!(
            policies, 0,
            "{table}: a policy would open it to the anon key"
        );
        assert_eq!(
            triggers, 1,
            "{table}: one version guard, not re-created twice"
        );
        let version = db
            .query_one(
                "select data_type::text, is_nullable::text from information_schema.columns \
                 where table_schema = 'public' and table_name = $1 and column_name = 'version'",
                &[&table],
            )
            .await
            .unwrap_or_else(|e| panic!("{table}.version: {e}"));
        let (kind, nullable): (String, String) = (version.get(0), version.get(1));
        assert_eq!(
            (kind.as_str(), nullable.as_str()),
            ("bigint", "NO"),
            "{table}"
        );
    }
}

#[tokio::test]
async fn every_field_the_daemon_sends_has_a_column_that_keeps_it() {
    let Some(m) = mirror("every_field_the_daemon_sends_has_a_column_that_keeps_it").await else {
        return;
    };
    // Ciphertexts off first (its nulls must fit the columns), then on, as a newer version.
    let passes = [(RowOptions::default(), 1), (sample_options(), 2)];
    for (options, version) in passes {
        for (table, mut row) in samples(&options) {
            row["version"] = json!(version);
            let (status, body) = m.post(table, &json!([row])).await;
            assert_eq!(status, 201, "{table}: {body}");
            let id = row["id"].as_str().expect("id");
            let stored = m.row(table, id).await.expect("the row was written");
            for (field, sent) in row.as_object().expect("an object") {
                if options.credential_ciphertexts {
                    assert!(!sent.is_null(), "the {table} sample leaves {field} unset");
                }
                let kept = &stored[field];
                let kind = m.column_type(table, field).await;
                if kind == "timestamp with time zone" && !sent.is_null() {
                    let (a, b) = (sent.as_str().expect("RFC 3339"), kept.as_str());
                    let same = m.same_instant(a, b.unwrap_or("")).await;
                    assert!(same, "{table}.{field}: sent {a}, stored {kept}");
                } else {
                    assert_eq!(kept, sent, "{table}.{field} ({kind})");
                }
            }
        }
    }
}

fn sample_options() -> RowOptions {
    RowOptions {
        credential_ciphertexts: true,
    }
}

#[tokio::test]
async fn a_field_without_a_column_is_refused() {
    let Some(m) = mirror("a_field_without_a_column_is_refused").await else {
        return;
    };
    let mut row = sample("users");
    row["not_a_column"] = json!(1);
    let (status, body) = m.post("users", &json!([row])).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "PGRST204", "{body}");
    let message = body["message"].as_str().unwrap_or("");
    assert!(message.contains("'not_a_column'") && message.contains("'users'"));
    assert_eq!(m.row("users", "u-sample").await, None, "nothing written");
}

#[tokio::test]
async fn an_older_version_never_overwrites_a_newer_one() {
    let Some(m) = mirror("an_older_version_never_overwrites_a_newer_one").await else {
        return;
    };
    let with = |version: i64, email: &str| {
        let mut row = sample("users");
        row["version"] = json!(version);
        row["email"] = json!(email);
        json!([row])
    };
    let stored_email = async || {
        let row = m.row("users", "u-sample").await.expect("the row");
        (row["version"].clone(), row["email"].clone())
    };
    // PostgREST answers 201 whether or not the guard let the update through.
    assert_eq!(m.post("users", &with(2, "two@example.com")).await.0, 201);
    assert_eq!(m.post("users", &with(1, "one@example.com")).await.0, 201);
    assert_eq!(stored_email().await, (json!(2), json!("two@example.com")));
    // A redelivery of the same version changes nothing.
    assert_eq!(m.post("users", &with(2, "again@example.com")).await.0, 201);
    assert_eq!(stored_email().await, (json!(2), json!("two@example.com")));
    assert_eq!(m.post("users", &with(3, "three@example.com")).await.0, 201);
    assert_eq!(stored_email().await, (json!(3), json!("three@example.com")));
    // One batch may not hold one id twice (PostgreSQL refuses to update a row twice in one
    // statement), so the worker must send only the newest of each entity.
    let mut twice = with(4, "four@example.com");
    twice
        .as_array_mut()
        .expect("array")
        .push(with(5, "five@example.com")[0].clone());
    let (status, body) = m.post("users", &twice).await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("21000")),
        "{body}"
    );
    assert_eq!(stored_email().await, (json!(3), json!("three@example.com")));
}

#[tokio::test]
async fn a_delete_removes_the_row() {
    let Some(m) = mirror("a_delete_removes_the_row").await else {
        return;
    };
    let mut odd = sample("vms");
    odd["id"] = json!("vm a/b&c");
    assert_eq!(m.post("vms", &json!([sample("vms"), odd])).await.0, 201);
    assert_eq!(m.delete("vms", "vm-sample").await, 204);
    assert_eq!(m.row("vms", "vm-sample").await, None);
    assert!(m.row("vms", "vm a/b&c").await.is_some(), "only that id");
    assert_eq!(m.delete("vms", "vm%20a%2Fb%26c").await, 204);
    assert_eq!(m.row("vms", "vm a/b&c").await, None);
    // A tombstone delivered twice is harmless.
    assert_eq!(m.delete("vms", "vm-sample").await, 204);
}

#[tokio::test]
async fn the_stub_fails_the_way_it_is_told() {
    let Some(m) = mirror("the_stub_fails_the_way_it_is_told").await else {
        return;
    };
    let url = format!("{}/rest/v1/users", m.stub.url());
    let wrong_key = m.http.post(&url).header("apikey", "nope").json(&json!([]));
    assert_eq!(wrong_key.send().await.expect("answer").status(), 401);
    let no_prefer = m.http.post(&url).header("apikey", KEY).bearer_auth(KEY);
    let no_prefer = no_prefer.json(&json!([sample("users")])).send().await;
    assert_eq!(no_prefer.expect("answer").status(), 400);
    let (status, body) = m.post("no_such_table", &json!([])).await;
    assert_eq!((status, body["code"].clone()), (404, json!("PGRST205")));

    m.stub.clear_requests();
    m.stub.push_response(503, Some(2));
    m.stub.push_response(429, None);
    let batch = json!([sample("users")]);
    let response = m
        .http
        .post(&url)
        .header("apikey", KEY)
        .bearer_auth(KEY)
        .json(&batch)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(m.post("users", &batch).await.0, 429);
    assert_eq!(
        m.row("users", "u-sample").await,
        None,
        "forced answers write nothing"
    );
    assert_eq!(m.post("users", &batch).await.0, 201);
    let log = m.stub.wait_for_requests(3, Duration::from_secs(5)).await;
    let seen: Vec<_> = log.iter().map(|r| (r.status, r.forced)).collect();
    assert_eq!(
        seen,
        [(Some(503), true), (Some(429), true), (Some(201), false)]
    );
    assert_eq!(log[2].rows, [("u-sample".to_string(), 1)]);
    assert_eq!(
        log[2].header("prefer"),
        Some("resolution=merge-duplicates,return=minimal")
    );

    m.stub.refuse_connections().await;
    // A fresh client: a pooled connection would fail differently (closed, not refused).
    let refused = reqwest::Client::new().post(&url).json(&batch).send().await;
    assert!(
        refused.is_err_and(|e| e.is_connect()),
        "connects are refused"
    );
    m.stub.accept_connections().await;
    m.stub.set_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    assert_eq!(m.post("users", &batch).await.0, 201);
    assert!(started.elapsed() >= Duration::from_millis(300));
}
