//! Each user's prompts, newest first, in `PROMPTS_BY_USER`, and their number in
//! `USER_PROMPT_TOTALS`, kept in the same transaction as every change to a prompt record
//! (through [`super::counts::change`]). A user's history reads that user's newest records and
//! one counter, so its cost does not grow with everyone else's prompts (it used to decode every
//! prompt record).

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use crate::model::Prompt;
use crate::model::tables;
use crate::store::{self, StoreError};

/// Set in `META` once the index holds every prompt (a store from before it is indexed once,
/// at start).
const INDEXED: &str = "prompts_by_user_complete";

/// Above every prompt id (ids are ASCII), to close a user's range.
const LAST_ID: &str = "\u{10ffff}";

type Key<'a> = (&'a str, i64, &'a str);

fn key(prompt: &Prompt) -> Key<'_> {
    (&prompt.user_id, prompt.created_at_ms, &prompt.id)
}

/// Moves a prompt's index entry from its `old` state to its `new` one (`None`: not stored).
pub fn change(
    tx: &WriteTransaction,
    old: Option<&Prompt>,
    new: Option<&Prompt>,
) -> Result<(), StoreError> {
    let (old, new) = (old.map(key), new.map(key));
    if old == new {
        return Ok(());
    }
    let mut index = tx.open_table(tables::PROMPTS_BY_USER)?;
    let mut totals = tx.open_table(tables::USER_PROMPT_TOTALS)?;
    if let Some(old) = old
        && index.remove(old)?.is_some()
    {
        crate::store::add_to_count(&mut totals, old.0, -1)?;
    }
    if let Some(new) = new
        && index.insert(new, ())?.is_none()
    {
        crate::store::add_to_count(&mut totals, new.0, 1)?;
    }
    Ok(())
}

/// The ids of the user's newest `limit` prompts, newest first, and how many they have in all.
pub fn newest(
    tx: &ReadTransaction,
    user_id: &str,
    limit: usize,
) -> Result<(Vec<String>, u64), StoreError> {
    let index = tx.open_table(tables::PROMPTS_BY_USER)?;
    let mut ids = Vec::with_capacity(limit.min(256));
    for entry in index
        .range((user_id, i64::MIN, "")..=(user_id, i64::MAX, LAST_ID))?
        .rev()
        .take(limit)
    {
        let (key, _) = entry?;
        ids.push(key.value().2.to_string());
    }
    let total = tx
        .open_table(tables::USER_PROMPT_TOTALS)?
        .get(user_id)?
        .map_or(0, |v| v.value());
    Ok((ids, total))
}

/// Fills the index from the prompt records once, for a store written before it existed.
/// Returns whether it indexed.
pub async fn ensure(store: &store::Store) -> Result<bool, StoreError> {
    store
        .write(|tx| {
            let mut meta = tx.open_table(crate::store::META)?;
            if meta.get(INDEXED)?.is_some() {
                return Ok(false);
            }
            tx.open_table(tables::PROMPTS_BY_USER)?
                .retain(|_, _| false)?;
            tx.open_table(tables::USER_PROMPT_TOTALS)?
                .retain(|_, _| false)?;
            for prompt in store::all::<Prompt, _>(&tx.open_table(tables::PROMPTS)?)? {
                change(tx, None, Some(&prompt))?;
            }
            meta.insert(INDEXED, 1)?;
            Ok(true)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PromptStatus;
    use crate::prompts::records;
    use crate::providers::CLAUDE_CODE;
    use crate::store::Store;
    use crate::sync::fixtures::store_with_users;

    fn prompt(id: &str, user_id: &str, created_at_ms: i64) -> Prompt {
        Prompt {
            id: id.into(),
            user_id: user_id.into(),
            vm_id: None,
            provider: CLAUDE_CODE,
            status: PromptStatus::Completed,
            created_at_ms,
            started_at_ms: None,
            completed_at_ms: Some(created_at_ms),
            exit_code: Some(0),
            error: None,
            version: 1,
            model: None,
            prompt_bytes: 2,
            response_text: String::new(),
            response_truncated: false,
            first_content_ms: None,
            duration_ms: None,
            usage_json: None,
            conversation_id: None,
        }
    }

    async fn history(store: &Store, user_id: &str, limit: usize) -> (Vec<String>, u64) {
        let (prompts, total) = records::for_user(store, user_id, limit)
            .await
            .expect("history");
        (prompts.into_iter().map(|p| p.id).collect(), total)
    }

    #[tokio::test]
    async fn a_users_history_is_their_newest_prompts_and_their_total_through_every_change() {
        let (_dir, store) = store_with_users(&["ann", "bob"]).await;
        for (id, at) in [
            ("a10", 10),
            ("a30", 30),
            ("a20", 20),
            ("a50", 50),
            ("a40", 40),
        ] {
            records::insert(&store, prompt(id, "ann", at))
                .await
                .expect("insert");
        }
        for (id, at) in [("b35", 35), ("b05", 5)] {
            records::insert(&store, prompt(id, "bob", at))
                .await
                .expect("insert");
        }
        assert_eq!(
            history(&store, "ann", 3).await,
            (vec!["a50".into(), "a40".into(), "a30".into()], 5)
        );
        assert_eq!(
            history(&store, "bob", 50).await,
            (vec!["b35".into(), "b05".into()], 2)
        );
        assert_eq!(history(&store, "nobody", 50).await, (vec![], 0));

        // A change of status keeps the entry; writing the same record again adds none.
        records::update(&store, "a50", |p| {
            p.error = Some("x".into());
            Ok(())
        })
        .await
        .expect("update");
        records::insert(&store, prompt("a40", "ann", 40))
            .await
            .expect("again");
        assert_eq!(
            history(&store, "ann", 2).await,
            (vec!["a50".into(), "a40".into()], 5)
        );

        // Pruning removes entries and lowers the total.
        let pruned = crate::prompts::prune_before(&store, 25)
            .await
            .expect("prune");
        assert_eq!(pruned.len(), 3, "{pruned:?}");
        assert_eq!(
            history(&store, "ann", 50).await,
            (vec!["a50".into(), "a40".into(), "a30".into()], 3)
        );
        assert_eq!(history(&store, "bob", 50).await, (vec!["b35".into()], 1));
    }

    #[tokio::test]
    async fn a_store_from_before_the_index_is_indexed_once_at_start() {
        let (_dir, store) = store_with_users(&["ann"]).await;
        for (id, at) in [("a1", 1), ("a3", 3), ("a2", 2)] {
            records::insert(&store, prompt(id, "ann", at))
                .await
                .expect("insert");
        }
        // As an older binary left it: prompts, no index, no mark.
        store
            .write(|tx| {
                tx.open_table(tables::PROMPTS_BY_USER)?
                    .retain(|_, _| false)?;
                tx.open_table(tables::USER_PROMPT_TOTALS)?
                    .retain(|_, _| false)?;
                tx.open_table(crate::store::META)?.remove(INDEXED)?;
                Ok::<_, StoreError>(())
            })
            .await
            .expect("clear");
        assert_eq!(history(&store, "ann", 50).await, (vec![], 0));
        assert!(ensure(&store).await.expect("ensure"));
        assert!(!ensure(&store).await.expect("again"), "indexed only once");
        assert_eq!(
            history(&store, "ann", 2).await,
            (vec!["a3".into(), "a2".into()], 3)
        );
    }
}
