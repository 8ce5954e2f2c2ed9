//! A PostgREST-shaped stub in front of a real PostgreSQL ([`super::postgres::PgServer`]): the
//! part of Supabase's REST API the outbox worker uses (`POST /rest/v1/<table>` upserts with
//! `Prefer: resolution=merge-duplicates`, `DELETE /rest/v1/<table>?id=eq.<id>`), answered the
//! way PostgREST answers, plus controls for the failures a worker must survive: scripted
//! responses (503 with `Retry-After`, 429, 500, 400), a refused port, a slow answer.
//!
//! The upsert is PostgREST's own statement shape, so PostgreSQL does the typing and the
//! migrations' triggers and constraints apply exactly as they would behind Supabase.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::postgres::PgServer;

const MAX_BODY: usize = 32 << 20;

/// One request as the stub saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The path with its query, e.g. `/rest/v1/users?id=eq.u1`.
    pub path: String,
    /// Lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Each row's `(id, version)`; a missing version is 0 (versions start at 1).
    pub rows: Vec<(String, i64)>,
    /// The parsed body (`Null` when empty or not JSON).
    pub body: Value,
    pub at: Instant,
    /// What the stub answered; `None` while it is still working on it.
    pub status: Option<u16>,
    /// Whether the answer was a scripted one ([`PostgrestStub::push_response`]).
    pub forced: bool,
    seq: u64,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Option<Value>,
}

impl Answer {
    fn new(status: u16, body: Option<Value>) -> Answer {
        Answer {
            status,
            retry_after: None,
            body,
        }
    }

    /// PostgREST's error body.
    fn error(status: u16, code: &str, message: &str) -> Answer {
        let body = json!({"code": code, "message": message, "details": null, "hint": null});
        Answer::new(status, Some(body))
    }

    /// What Supabase's gateway answers a wrong key with, before PostgREST sees the request.
    fn bad_key() -> Answer {
        Answer::new(401, Some(json!({"message": "Invalid API key"})))
    }
}

struct Shared {
    key: String,
    db: tokio::sync::Mutex<Client>,
    forced: Mutex<VecDeque<(u16, Option<u64>)>>,
    log: Mutex<Vec<Received>>,
    next_seq: std::sync::atomic::AtomicU64,
    /// Bumped on every change to the log, for waiters.
    changed: watch::Sender<u64>,
    delay: Mutex<Duration>,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

pub struct PostgrestStub {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PostgrestStub {
    /// Serves on 127.0.0.1 (a free port) in front of `pg`, accepting `key` as both the `apikey`
    /// and the bearer token, as Supabase's gateway does for the service key.
    pub async fn start(pg: &PgServer, key: &str) -> PostgrestStub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind stub");
        let addr = listener.local_addr().expect("stub address");
        let shared = Arc::new(Shared {
            key: key.to_string(),
            db: tokio::sync::Mutex::new(pg.connect().await),
            forced: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
            next_seq: Default::default(),
            changed: watch::Sender::new(0),
            delay: Mutex::new(Duration::ZERO),
            connections: Mutex::new(Vec::new()),
        });
        let acceptor = spawn_acceptor(shared.clone(), listener);
        PostgrestStub {
            shared,
            addr,
            acceptor: Mutex::new(Some(acceptor)),
        }
    }

    /// The `SUPABASE_URL` to give the daemon.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Scripts the answer to the next request not yet answered (queued, first in first out),
    /// without touching the database: e.g. `(503, Some(2))` for 503 with `Retry-After: 2`,
    /// `(429, None)`, `(500, None)`, or `(400, None)` with a PostgREST error body.
    pub fn push_response(&self, status: u16, retry_after_secs: Option<u64>) {
        lock(&self.shared.forced).push_back((status, retry_after_secs));
    }

    /// Holds every answer back by `delay`. The work itself is done first and is not undone if
    /// the client gives up meanwhile: a timed-out write may still have landed, as with the real
    /// PostgREST.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.shared.delay) = delay;
    }

    /// Closes the listening socket (connects get ECONNREFUSED) and every open connection, as
    /// an outage would; returns once both are gone.
    pub async fn refuse_connections(&self) {
        let acceptor = lock(&self.acceptor).take();
        if let Some(acceptor) = acceptor {
            acceptor.abort();
            let _ = acceptor.await;
        }
        let connections = std::mem::take(&mut *lock(&self.shared.connections));
        for connection in &connections {
            connection.abort();
        }
        for connection in connections {
            let _ = connection.await;
        }
    }

    /// Listens again on the same port.
    pub async fn accept_connections(&self) {
        if lock(&self.acceptor).is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("re-bind the stub on {}: {e}", self.addr),
            }
        };
        *lock(&self.acceptor) = Some(spawn_acceptor(self.shared.clone(), listener));
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.shared.log).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// Waits until `n` requests have been answered; panics after `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let answered = |log: &[Received]| log.iter().filter(|r| r.status.is_some()).count();
        let mut changes = self.shared.changed.subscribe();
        let waited = tokio::time::timeout(
            timeout,
            changes.wait_for(|_| answered(&lock(&self.shared.log)) >= n),
        )
        .await;
        let log = self.requests();
        assert!(
            waited.is_ok(),
            "{} of {n} requests answered in {timeout:?}: {log:#?}",
            answered(&log)
        );
        log
    }
}

impl Drop for PostgrestStub {
    fn drop(&mut self) {
        if let Some(acceptor) = lock(&self.acceptor).take() {
            acceptor.abort();
        }
        for connection in lock(&self.shared.connections).drain(..) {
            connection.abort();
        }
    }
}

fn spawn_acceptor(shared: Arc<Shared>, listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let for_service = shared.clone();
            let connection = tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let shared = for_service.clone();
                    async move { Ok::<_, Infallible>(handle(shared, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            let mut connections = lock(&shared.connections);
            connections.retain(|c| !c.is_finished());
            connections.push(connection);
        }
    })
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let at = Instant::now();
    let method = request.method().as_str().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(String::new, |p| p.to_string());
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return respond(Answer::error(413, "PGRST000", "body too large or cut off")),
    };
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let forced = lock(&shared.forced).pop_front();
    let seq = (shared.next_seq).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    lock(&shared.log).push(Received {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        rows: id_versions(&json),
        body: json,
        at,
        status: None,
        forced: forced.is_some(),
        seq,
    });
    shared.changed.send_modify(|n| *n += 1);
    // Spawned, so that a client giving up does not cancel work PostgreSQL already has.
    let work = tokio::spawn(async move {
        let answer = match forced {
            Some((status, retry_after)) => forced_answer(status, retry_after),
            None => serve(&shared, &method, &path, &headers, &body).await,
        };
        let delay = *lock(&shared.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(entry) = lock(&shared.log).iter_mut().find(|r| r.seq == seq) {
            entry.status = Some(answer.status);
        }
        shared.changed.send_modify(|n| *n += 1);
        answer
    });
    respond(
        work.await
            .unwrap_or_else(|_| Answer::error(500, "PGRST000", "stub task failed")),
    )
}

fn forced_answer(status: u16, retry_after: Option<u64>) -> Answer {
    let mut answer = match status {
        400 => Answer::error(400, "22P02", "forced by the test"),
        401 => Answer::bad_key(),
        _ => Answer::error(status, "PGRST000", "forced by the test"),
    };
    answer.retry_after = retry_after;
    answer
}

fn respond(answer: Answer) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(answer.status);
    if let Some(secs) = answer.retry_after {
        builder = builder.header("retry-after", secs.to_string());
    }
    let body = match answer.body {
        Some(body) => {
            builder = builder.header("content-type", "application/json; charset=utf-8");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    builder
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn id_versions(body: &Value) -> Vec<(String, i64)> {
    let rows = match body {
        Value::Array(rows) => rows.as_slice(),
        Value::Object(_) => std::slice::from_ref(body),
        _ => &[],
    };
    rows.iter()
        .map(|row| {
            let id = match &row["id"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (id, row["version"].as_i64().unwrap_or(0))
        })
        .collect()
}

async fn serve(
    shared: &Shared,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Answer {
    let key = &shared.key;
    let bearer = format!("Bearer {key}");
    if header(headers, "apikey") != Some(key.as_str())
        || header(headers, "authorization") != Some(bearer.as_str())
    {
        return Answer::bad_key();
    }
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let Some(table) = path.strip_prefix("/rest/v1/").filter(|t| !t.contains('/')) else {
        return Answer::error(404, "PGRST125", &format!("Invalid path specified: {path}"));
    };
    let mut db = shared.db.lock().await;
    let columns: Vec<String> = match db
        .query(
            "select column_name::text from information_schema.columns \
             where table_schema = 'public' and table_name = $1 order by ordinal_position",
            &[&table],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) => return db_error(&e),
    };
    if columns.is_empty() {
        let message = format!("Could not find the table 'public.{table}' in the schema cache");
        return Answer::error(404, "PGRST205", &message);
    }
    match method {
        "POST" => upsert(&mut db, table, &columns, headers, body).await,
        "DELETE" => delete(&db, table, query).await,
        _ => Answer::error(
            405,
            "PGRST117",
            &format!("Unsupported HTTP method: {method}"),
        ),
    }
}

async fn upsert(
    db: &mut Client,
    table: &str,
    columns: &[String],
    headers: &[(String, String)],
    body: &[u8],
) -> Answer {
    // Without it PostgREST does a plain INSERT, which a redelivery would break; the stub is
    // stricter, so a worker that forgets the header fails on its first request.
    if !header(headers, "prefer").is_some_and(|p| p.contains("resolution=merge-duplicates")) {
        let message = "the stub requires Prefer: resolution=merge-duplicates";
        return Answer::error(400, "STUB001", message);
    }
    if !header(headers, "content-type").is_some_and(|c| c.starts_with("application/json")) {
        return Answer::error(415, "PGRST107", "the stub accepts only application/json");
    }
    let rows = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(rows)) => rows,
        Ok(row @ Value::Object(_)) => vec![row],
        _ => return Answer::error(400, "PGRST102", "Empty or invalid json"),
    };
    let Some(first) = rows.first() else {
        return Answer::new(201, None);
    };
    let Some(keys) = first
        .as_object()
        .map(|o| o.keys().cloned().collect::<Vec<_>>())
    else {
        return Answer::error(400, "PGRST102", "Empty or invalid json");
    };
    let same_keys = |row: &Value| {
        row.as_object()
            .is_some_and(|o| o.len() == keys.len() && keys.iter().all(|k| o.contains_key(k)))
    };
    if !rows.iter().all(same_keys) {
        return Answer::error(400, "PGRST102", "All object keys must match");
    }
    if let Some(unknown) = keys.iter().find(|k| !columns.contains(k)) {
        let message =
            format!("Could not find the '{unknown}' column of '{table}' in the schema cache");
        return Answer::error(400, "PGRST204", &message);
    }
    let list = keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
    let set = keys
        .iter()
        .map(|k| format!("{0} = excluded.{0}", quote(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "insert into public.{t} ({list}) select {list} \
         from jsonb_populate_recordset(null::public.{t}, $1::jsonb) \
         on conflict (id) do update set {set}",
        t = quote(table)
    );
    let result = async {
        let transaction = db.transaction().await?;
        transaction.execute(&sql, &[&Value::Array(rows)]).await?;
        transaction.commit().await
    }
    .await;
    match result {
        Ok(()) => Answer::new(201, None),
        Err(e) => db_error(&e),
    }
}

async fn delete(db: &Client, table: &str, query: &str) -> Answer {
    let filters: Vec<&str> = query.split('&').filter(|f| !f.is_empty()).collect();
    let id = match filters.as_slice() {
        [filter] => filter.strip_prefix("id=eq.").map(|id| {
            percent_encoding::percent_decode_str(id)
                .decode_utf8_lossy()
                .into_owned()
        }),
        _ => None,
    };
    let Some(id) = id else {
        // Supabase runs pg-safeupdate: a DELETE without a filter is refused.
        return Answer::error(
            400,
            "21000",
            "DELETE requires a WHERE clause (stub: id=eq. only)",
        );
    };
    let sql = format!("delete from public.{} where id = $1", quote(table));
    match db.execute(&sql, &[&id]).await {
        Ok(_) => Answer::new(204, None),
        Err(e) => db_error(&e),
    }
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// PostgREST's mapping of SQLSTATEs to HTTP statuses (its "Errors" reference), with its body.
fn db_error(error: &tokio_postgres::Error) -> Answer {
    let Some(db) = error.as_db_error() else {
        return Answer::error(503, "PGRST001", &format!("Database client error: {error}"));
    };
    let code = db.code().code();
    let status = match code {
        "23503" | "23505" => 409,
        "25006" => 405,
        "P0001" => 400,
        "42883" | "42P01" => 404,
        "42P17" => 500,
        "42501" => 403,
        _ => match code.get(..2).unwrap_or("") {
            "08" | "53" => 503,
            "0L" | "0P" | "28" => 403,
            "09" | "25" | "2D" | "38" | "39" | "3B" | "40" | "54" | "55" | "57" | "58" | "F0"
            | "HV" | "P0" | "XX" => 500,
            _ => 400,
        },
    };
    let body =
        json!({"code": code, "message": db.message(), "details": db.detail(), "hint": db.hint()});
    Answer::new(status, Some(body))
}
