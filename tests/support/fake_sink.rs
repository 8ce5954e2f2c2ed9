//! A scripted Supabase sink for the outbox worker's tests under paused time (the PostgREST
//! stub over real HTTP and PostgreSQL is `postgrest.rs`). It keeps the rows it accepted with a
//! version guard, as the migrations' trigger does, and records every call and its time.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use master_controller::sync::{SinkError, SupabaseSink};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Call {
    pub at: tokio::time::Instant,
    pub table: String,
    /// (id, version) of each row, or of the deleted entity (version 0).
    pub rows: Vec<(String, u64)>,
    pub answered: Result<(), SinkError>,
}

#[derive(Default)]
pub struct FakeSink {
    /// Forced answers for the next calls, in order.
    script: Mutex<VecDeque<SinkError>>,
    /// A row whose JSON contains this text is refused with 400, as a database constraint would.
    poison: Mutex<Option<String>>,
    down: Mutex<bool>,
    rows: Mutex<HashMap<(String, String), Value>>,
    calls: Mutex<Vec<Call>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeSink {
    pub fn push(&self, error: SinkError) {
        lock(&self.script).push_back(error);
    }

    pub fn poison(&self, text: Option<&str>) {
        *lock(&self.poison) = text.map(str::to_string);
    }

    /// While down, every call fails as a refused connection would.
    pub fn set_down(&self, down: bool) {
        *lock(&self.down) = down;
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    pub fn row(&self, table: &str, id: &str) -> Option<Value> {
        lock(&self.rows)
            .get(&(table.to_string(), id.to_string()))
            .cloned()
    }

    pub fn row_count(&self, table: &str) -> usize {
        lock(&self.rows).keys().filter(|(t, _)| t == table).count()
    }

    fn answer(&self, rows: &[Value]) -> Result<(), SinkError> {
        if *lock(&self.down) {
            return Err(SinkError::Unreachable("connection refused".into()));
        }
        if let Some(error) = lock(&self.script).pop_front() {
            return Err(error);
        }
        if let Some(poison) = lock(&self.poison).as_deref()
            && rows.iter().any(|r| r.to_string().contains(poison))
        {
            return Err(SinkError::Status {
                status: 400,
                retry_after: None,
                body: r#"{"code":"23514","message":"violates check constraint"}"#.into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl SupabaseSink for FakeSink {
    async fn upsert(&self, table: &str, rows: &[Value]) -> Result<(), SinkError> {
        let answered = self.answer(rows);
        if answered.is_ok() {
            let mut stored = lock(&self.rows);
            for row in rows {
                let id = row["id"].as_str().unwrap_or_default().to_string();
                let key = (table.to_string(), id);
                let newer = stored
                    .get(&key)
                    .is_none_or(|old| old["version"].as_u64() < row["version"].as_u64());
                if newer {
                    stored.insert(key, row.clone());
                }
            }
        }
        lock(&self.calls).push(Call {
            at: tokio::time::Instant::now(),
            table: table.to_string(),
            rows: rows
                .iter()
                .map(|r| {
                    (
                        r["id"].as_str().unwrap_or_default().to_string(),
                        r["version"].as_u64().unwrap_or(0),
                    )
                })
                .collect(),
            answered: answered.clone(),
        });
        answered
    }

    async fn delete(&self, table: &str, id: &str) -> Result<(), SinkError> {
        let answered = self.answer(&[]);
        if answered.is_ok() {
            lock(&self.rows).remove(&(table.to_string(), id.to_string()));
        }
        lock(&self.calls).push(Call {
            at: tokio::time::Instant::now(),
            table: table.to_string(),
            rows: vec![(id.to_string(), 0)],
            answered: answered.clone(),
        });
        answered
    }
}
