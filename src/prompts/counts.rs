//! Prompt counts by provider and status, kept in `PROMPT_COUNTS` in the same transaction as
//! every change to a prompt record. A metrics scrape reads these few counters, so its cost does
//! not grow with the number of prompts (it used to decode every prompt record).

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use crate::model::tables;
use crate::model::{Prompt, PromptStatus, Provider};
use crate::store::{self, StoreError};
/// Set in `META` once the counters hold every prompt (a store from before the counters is
/// counted once, at start).
const COUNTED: &str = "prompt_counts_complete";

fn key(provider: Provider, status: PromptStatus) -> String {
    format!("{provider}/{status}")
}

/// Moves a prompt's count from its `old` state to its `new` one (`None`: not stored), and its
/// entry in the user's index ([`super::by_user`]): every change to a prompt record calls this.
pub fn change(
    tx: &WriteTransaction,
    old: Option<&Prompt>,
    new: Option<&Prompt>,
) -> Result<(), StoreError> {
    super::by_user::change(tx, old, new)?;
    let old = old.map(|p| key(p.provider, p.status));
    let new = new.map(|p| key(p.provider, p.status));
    if old == new {
        return Ok(());
    }
    let mut table = tx.open_table(tables::PROMPT_COUNTS)?;
    if let Some(old) = old {
        store::add_to_count(&mut table, &old, -1)?;
    }
    if let Some(new) = new {
        store::add_to_count(&mut table, &new, 1)?;
    }
    Ok(())
}

/// The counters, for the inventory. Keys this binary does not know are skipped.
pub fn read(tx: &ReadTransaction) -> Result<BTreeMap<(Provider, PromptStatus), u64>, StoreError> {
    let mut counts = BTreeMap::new();
    for entry in tx.open_table(tables::PROMPT_COUNTS)?.iter()? {
        let (key, count) = entry?;
        let Some((provider, status)) = key.value().split_once('/') else {
            continue;
        };
        if let (Ok(provider), Ok(status)) = (provider.parse(), status.parse()) {
            counts.insert((provider, status), count.value());
        }
    }
    Ok(counts)
}

/// Fills the counters from the prompt records once, for a store written before they existed.
/// Returns whether it counted.
pub async fn ensure(store: &store::Store) -> Result<bool, StoreError> {
    store
        .write(|tx| {
            let mut meta = tx.open_table(crate::store::META)?;
            if meta.get(COUNTED)?.is_some() {
                return Ok(false);
            }
            let mut counts = tx.open_table(tables::PROMPT_COUNTS)?;
            counts.retain(|_, _| false)?;
            for prompt in store::all::<Prompt, _>(&tx.open_table(tables::PROMPTS)?)? {
                store::add_to_count(&mut counts, &key(prompt.provider, prompt.status), 1)?;
            }
            meta.insert(COUNTED, 1)?;
            Ok(true)
        })
        .await
}
