//! The store's derived tables (indexes and counters kept with the records), made whole at start:
//! a store written before one of them existed gets it, and the record counters are recounted,
//! so a miscount does not outlive a restart.

use crate::store::{Store, StoreError};

/// Runs before reconcile and before the API serves.
pub(super) async fn prepare(store: &Store) -> Result<(), StoreError> {
    if crate::vms::by_user::ensure(store).await? {
        tracing::info!("indexed the stored VMs by user");
    }
    match crate::sync::tally::recount(store).await? {
        Some(held) if held == Default::default() => {
            tracing::info!("counted the stored users and VMs into the record counters");
        }
        Some(held) => tracing::warn!(?held, "the user and VM counters were wrong; recounted"),
        None => {}
    }
    if crate::prompts::counts::ensure(store).await? {
        tracing::info!("counted the stored prompts into the prompt counters");
    }
    if crate::prompts::by_user::ensure(store).await? {
        tracing::info!("indexed the stored prompts by user");
    }
    if crate::sync::outbox::ensure_age_index(store).await? {
        tracing::info!("indexed the outbox by age");
    }
    Ok(())
}
