//! The outbox worker: sends due changes in batches, one request per table, and settles each
//! entry by the answer. It never holds the appliance back: a slow or absent Supabase only
//! delays the mirror.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::SyncError;
use super::backoff::{Backoff, Remedy, remedy};
use super::outbox::{self, Due, Outgoing};
use super::rows::RowOptions;
use super::sink::{SinkError, SupabaseSink};
use crate::metrics::{Metrics, OutboxSendLabels};
use crate::model::now_ms;
use crate::store::Store;

#[derive(Debug, Clone, Copy)]
pub struct SyncSettings {
    /// Entries sent per pass (rows per request at most).
    pub batch: usize,
    /// Other 4xx answers an entry may get before it is dead-lettered.
    pub max_attempts: u32,
    /// How often an idle worker looks for work it was not woken for.
    pub idle_poll: Duration,
    pub backoff: Backoff,
    pub rows: RowOptions,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            batch: 100,
            max_attempts: 8,
            idle_poll: Duration::from_secs(1),
            backoff: Backoff::default(),
            rows: RowOptions::default(),
        }
    }
}

/// How a pass ended, and so how long to wait before the next.
#[derive(Debug, Clone, PartialEq)]
enum Pass {
    Idle,
    Sent,
    Wait(Duration),
    Failed,
}

pub struct SyncWorker {
    store: Store,
    sink: Arc<dyn SupabaseSink>,
    settings: SyncSettings,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

impl SyncWorker {
    pub fn new(
        store: Store,
        sink: Arc<dyn SupabaseSink>,
        settings: SyncSettings,
        metrics: Arc<Metrics>,
    ) -> SyncWorker {
        SyncWorker {
            store,
            sink,
            settings,
            metrics,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Wakes the worker early (after a retried dead letter, say).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub async fn run(self, cancel: CancellationToken) {
        let mut failures = 0u32;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let pass = match self.pass().await {
                Ok(pass) => pass,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox pass failed");
                    Pass::Failed
                }
            };
            let wait = match pass {
                Pass::Sent => {
                    failures = 0;
                    continue;
                }
                Pass::Idle => {
                    failures = 0;
                    self.settings.idle_poll
                }
                Pass::Wait(after) => after,
                Pass::Failed => {
                    failures = failures.saturating_add(1);
                    self.settings.backoff.wait(failures, rand::random::<f64>())
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified(), if matches!(pass, Pass::Idle) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    fn count(&self, outcome: &str, n: usize) {
        self.metrics
            .outbox_sends
            .get_or_create(&OutboxSendLabels {
                outcome: outcome.to_string(),
            })
            .inc_by(n as u64);
    }

    async fn pass(&self) -> Result<Pass, SyncError> {
        let due = outbox::due(
            &self.store,
            now_ms(),
            self.settings.batch,
            self.settings.rows,
        )
        .await?;
        if due.is_empty() {
            return Ok(Pass::Idle);
        }
        // One request per table, in the order the tables' oldest changes came in.
        let mut groups: Vec<(String, Vec<Due>)> = Vec::new();
        let mut deletes = Vec::new();
        for item in due {
            match item.outgoing {
                Outgoing::Delete => deletes.push(item),
                Outgoing::Upsert { .. } => {
                    match groups.iter_mut().find(|(t, _)| *t == item.entry.table) {
                        Some((_, items)) => items.push(item),
                        None => groups.push((item.entry.table.clone(), vec![item])),
                    }
                }
            }
        }
        for (table, items) in groups {
            let rows: Vec<_> = items
                .iter()
                .filter_map(|d| match &d.outgoing {
                    Outgoing::Upsert { row, .. } => Some(row.clone()),
                    Outgoing::Delete => None,
                })
                .collect();
            match self.sink.upsert(&table, &rows).await {
                Ok(()) => self.delivered(&items).await?,
                Err(e) => {
                    if let Some(pass) = self.failed(&items, e).await? {
                        return Ok(pass);
                    }
                }
            }
        }
        for item in deletes {
            match self
                .sink
                .delete(&item.entry.table, &item.entry.entity_id)
                .await
            {
                Ok(()) => self.delivered(std::slice::from_ref(&item)).await?,
                Err(e) => {
                    if let Some(pass) = self.failed(std::slice::from_ref(&item), e).await? {
                        return Ok(pass);
                    }
                }
            }
        }
        Ok(Pass::Sent)
    }

    async fn delivered(&self, items: &[Due]) -> Result<(), SyncError> {
        let sent = items
            .iter()
            .map(|d| {
                let version = match &d.outgoing {
                    Outgoing::Upsert { version, .. } => *version,
                    // A tombstone settles every version before it.
                    Outgoing::Delete => u64::MAX,
                };
                (d.key.clone(), version)
            })
            .collect();
        outbox::delivered(&self.store, sent).await?;
        self.count("ok", items.len());
        Ok(())
    }

    /// Settles a failed request's entries; `Some` stops the pass with that wait.
    async fn failed(&self, items: &[Due], error: SinkError) -> Result<Option<Pass>, SyncError> {
        let status = match &error {
            SinkError::Status { status, .. } => Some(*status),
            SinkError::Unreachable(_) => None,
        };
        match remedy(&error) {
            Remedy::RetryAfter(after) => {
                tracing::info!(wait = ?after, error = %error, "Supabase asks to wait");
                self.count("retry_after", items.len());
                Ok(Some(Pass::Wait(after)))
            }
            Remedy::Backoff => {
                tracing::warn!(error = %error, "cannot reach Supabase; backing off");
                self.count("failed", items.len());
                Ok(Some(Pass::Failed))
            }
            // One bad row fails the whole request: find it by sending the rows one by one.
            Remedy::Bury if items.len() > 1 => {
                for item in items {
                    let single = std::slice::from_ref(item);
                    let row = match &item.outgoing {
                        Outgoing::Upsert { row, .. } => row.clone(),
                        Outgoing::Delete => continue,
                    };
                    match self.sink.upsert(&item.entry.table, &[row]).await {
                        Ok(()) => self.delivered(single).await?,
                        Err(e) => {
                            if let Some(pass) = Box::pin(self.failed(single, e)).await? {
                                return Ok(Some(pass));
                            }
                        }
                    }
                }
                Ok(None)
            }
            Remedy::Bury => {
                for item in items {
                    tracing::warn!(entity = %item.key, error = %error, "Supabase refused a change; dead-lettered");
                    outbox::bury(&self.store, item.key.clone(), status, error.to_string()).await?;
                }
                self.count("dead_letter", items.len());
                Ok(None)
            }
            Remedy::Count => {
                let (bury, keep): (Vec<&Due>, Vec<&Due>) = items
                    .iter()
                    .partition(|d| d.entry.attempts + 1 >= self.settings.max_attempts);
                for item in &bury {
                    outbox::bury(&self.store, item.key.clone(), status, error.to_string()).await?;
                }
                let later = now_ms()
                    + self
                        .settings
                        .backoff
                        .cap(keep.iter().map(|d| d.entry.attempts + 1).max().unwrap_or(1))
                        .as_millis() as i64;
                outbox::postpone(
                    &self.store,
                    keep.iter().map(|d| d.key.clone()).collect(),
                    later,
                    error.to_string(),
                    true,
                )
                .await?;
                self.count("dead_letter", bury.len());
                self.count("failed", keep.len());
                Ok(None)
            }
        }
    }
}
