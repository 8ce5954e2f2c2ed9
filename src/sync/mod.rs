//! The Supabase mirror: every change to a mirrored entity writes its outbox row in the same
//! redb transaction as the change; a worker upserts the current rows to PostgREST, backing off
//! while Supabase is slow or away, so the appliance never waits on it.

mod backoff;
#[cfg(test)]
pub mod fixtures;
pub mod outbox;
pub mod rows;
pub mod sink;
pub mod tally;
mod worker;
pub mod write;

pub use backoff::Backoff;
pub use sink::{PostgRest, SinkError, SupabaseSink};
pub use worker::{SyncSettings, SyncWorker};
pub use write::{Changed, deleted_mirrored, put_mirrored, put_mirrored_in, update_mirrored};

/// The Supabase mirror: where it is, and how its worker sends. Without a URL the outbox only
/// accumulates.
#[derive(Debug, Clone, Default)]
pub struct MirrorSettings {
    pub url: Option<String>,
    pub service_key: Option<secrecy::SecretString>,
    pub worker: SyncSettings,
}

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("the outbox names an unknown table {0:?}")]
    UnknownTable(String),
    #[error("no dead letter {0}")]
    NoDeadLetter(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::lift_redb_errors!(SyncError);

/// What the API and the daemon see of the mirror: its state in the store, and a way to wake
/// the worker.
#[derive(Clone)]
pub struct SyncService {
    store: crate::store::Store,
    wake: std::sync::Arc<tokio::sync::Notify>,
    configured: bool,
}

impl SyncService {
    pub fn new(
        store: crate::store::Store,
        wake: std::sync::Arc<tokio::sync::Notify>,
        configured: bool,
    ) -> SyncService {
        SyncService {
            store,
            wake,
            configured,
        }
    }

    /// Whether a Supabase URL is configured; without one the outbox only accumulates.
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    pub async fn dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, crate::model::DeadLetter)>, SyncError> {
        outbox::dead_letters(&self.store, limit).await
    }

    /// Puts a dead letter back in line and wakes the worker.
    pub async fn retry(&self, key: &str) -> Result<(), SyncError> {
        outbox::retry(&self.store, key).await?;
        self.wake.notify_one();
        Ok(())
    }
}
