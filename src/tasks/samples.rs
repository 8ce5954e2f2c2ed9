//! The metrics ring: periodic samples in `METRICS_SAMPLES`, keyed by (unix ms, sequence), the
//! oldest deleted in the same transaction that adds one past the bound.

use std::sync::atomic::{AtomicU32, Ordering};

use redb::{ReadableTable, ReadableTableMetadata};

use super::TaskError;
use crate::model::MetricsSample;
use crate::model::tables;
use crate::store::{Store, StoreError, Stored};
/// The most samples one read returns.
pub const MAX_READ: usize = 2016;

/// Keeps two samples taken in the same millisecond apart.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// Adds `sample` and trims the ring to `kept` samples; answers how many it deleted.
pub async fn record(store: &Store, sample: MetricsSample, kept: usize) -> Result<u64, TaskError> {
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    store
        .write(move |tx| {
            let mut table = tx.open_table(tables::METRICS_SAMPLES)?;
            table.insert((sample.at_ms, seq), Stored::encode(&sample)?)?;
            let mut deleted = 0;
            while table.len()? > kept as u64 {
                if table.pop_first()?.is_none() {
                    break;
                }
                deleted += 1;
            }
            Ok(deleted)
        })
        .await
}

/// The newest `limit` samples, newest first.
pub async fn recent(store: &Store, limit: usize) -> Result<Vec<MetricsSample>, TaskError> {
    let limit = limit.min(MAX_READ);
    store
        .read(move |tx| {
            let table = tx.open_table(tables::METRICS_SAMPLES)?;
            let mut samples = Vec::with_capacity(limit.min(64));
            for entry in table.iter()?.rev().take(limit) {
                let (_, value) = entry.map_err(StoreError::from)?;
                samples.push(value.value().decode()?);
            }
            Ok(samples)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: i64) -> MetricsSample {
        MetricsSample {
            at_ms,
            cpu_percent: 1.5,
            load1: 0.1,
            memory_used_bytes: 1,
            memory_total_bytes: 2,
            disk_used_bytes: 3,
            disk_total_bytes: 4,
            vms_by_status: [("running".to_string(), 2)].into(),
            prompts_running: 0,
            ip_pool_free: 253,
            outbox_depth: 0,
        }
    }

    #[tokio::test]
    async fn the_ring_keeps_the_newest_and_reads_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("store");
        let mut deleted = 0;
        for at in 1..=12 {
            deleted += record(&store, sample(at), 5).await.expect("record");
        }
        assert_eq!(deleted, 7);
        let newest = recent(&store, 100).await.expect("recent");
        let times: Vec<i64> = newest.iter().map(|s| s.at_ms).collect();
        assert_eq!(times, vec![12, 11, 10, 9, 8]);
        assert_eq!(newest[0], sample(12), "the record round-trips");
        let two = recent(&store, 2).await.expect("recent");
        assert_eq!(two.len(), 2);
        // Two samples in the same millisecond are both kept.
        record(&store, sample(12), 5).await.expect("record");
        let again = recent(&store, 2).await.expect("recent");
        assert_eq!(
            again.iter().map(|s| s.at_ms).collect::<Vec<_>>(),
            vec![12, 12]
        );
    }
}
