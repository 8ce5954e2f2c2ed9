//! Token revocation: a per-user token epoch. A user token carries the epoch its user had when
//! it was minted, and is valid only while that is still the user's epoch. Deleting a user, or
//! the admin revoke route, bumps the epoch, so every token minted before stops working at once,
//! and the streams opened with them end (`revoked`).
//!
//! The epochs live in `TOKEN_EPOCHS` (durable) and in memory (authentication is on every
//! request and must not wait on the store). Only this daemon writes the table, and it updates
//! the memory after each commit, so the two agree. An epoch row outlives its user: a token of a
//! deleted user must stay dead.

use std::collections::HashMap;
use std::sync::RwLock;

use redb::{ReadableTable, WriteTransaction};
use tokio::sync::watch;

use crate::model::tables;

use crate::store::{Store, StoreError};
pub struct TokenEpochs {
    epochs: RwLock<HashMap<String, u64>>,
    /// Bumped on every revocation, so open streams look again at their user's epoch.
    changed: watch::Sender<u64>,
}

impl Default for TokenEpochs {
    fn default() -> Self {
        TokenEpochs {
            epochs: RwLock::new(HashMap::new()),
            changed: watch::Sender::new(0),
        }
    }
}

impl TokenEpochs {
    pub async fn load(store: &Store) -> Result<TokenEpochs, StoreError> {
        let epochs = store
            .read(|tx| {
                let table = tx.open_table(tables::TOKEN_EPOCHS)?;
                let mut epochs = HashMap::new();
                for entry in table.iter()? {
                    let (user, epoch) = entry.map_err(StoreError::from)?;
                    epochs.insert(user.value().to_string(), epoch.value());
                }
                Ok::<_, StoreError>(epochs)
            })
            .await?;
        Ok(TokenEpochs {
            epochs: RwLock::new(epochs),
            ..TokenEpochs::default()
        })
    }

    /// The user's current epoch (0 until their first revocation).
    pub fn current(&self, user_id: &str) -> u64 {
        self.epochs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(user_id)
            .copied()
            .unwrap_or(0)
    }

    /// Revokes every token of the user minted so far; returns the new epoch.
    pub async fn revoke(&self, store: &Store, user_id: &str) -> Result<u64, StoreError> {
        let id = user_id.to_string();
        let epoch = store.write(move |tx| bump(tx, &id)).await?;
        self.note(user_id, epoch);
        Ok(epoch)
    }

    /// Records an epoch a committed transaction wrote (see [`bump`]).
    pub fn note(&self, user_id: &str, epoch: u64) {
        {
            let mut epochs = self.epochs.write().unwrap_or_else(|e| e.into_inner());
            let current = epochs.entry(user_id.to_string()).or_insert(0);
            *current = (*current).max(epoch);
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Resolves once `epoch` is no longer the user's: the token it came from was revoked.
    pub async fn revoked(&self, user_id: &str, epoch: u64) {
        let mut changed = self.changed.subscribe();
        while self.current(user_id) == epoch {
            if changed.changed().await.is_err() {
                // The sender lives as long as `self`; never reached.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Bumps the user's epoch inside `tx`; the caller passes the result to [`TokenEpochs::note`]
/// once `tx` has committed.
pub fn bump(tx: &WriteTransaction, user_id: &str) -> Result<u64, StoreError> {
    let mut table = tx.open_table(tables::TOKEN_EPOCHS)?;
    let epoch = table.get(user_id)?.map_or(0, |v| v.value()) + 1;
    table.insert(user_id, epoch)?;
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revoke_is_durable_and_wakes_streams() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let epochs = std::sync::Arc::new(TokenEpochs::load(&store).await.unwrap());
        assert_eq!(epochs.current("u1"), 0);
        let waiting = {
            let epochs = epochs.clone();
            tokio::spawn(async move { epochs.revoked("u1", 0).await })
        };
        assert_eq!(epochs.revoke(&store, "u1").await.unwrap(), 1);
        tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
            .await
            .expect("the revoked stream is woken")
            .unwrap();
        assert_eq!(epochs.current("u2"), 0);
        let reloaded = TokenEpochs::load(&store).await.unwrap();
        assert_eq!(reloaded.current("u1"), 1);
    }
}
