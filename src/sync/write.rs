//! The one write path of a mirrored record: the record and its outbox entry change in the same
//! transaction, and every change raises the record's version, which is how the mirror worker and
//! Supabase tell a newer row from an older one.

use redb::{TableDefinition, WriteTransaction};

use super::outbox::{record_change, record_delete};
use super::rows::Mirrored;
use super::tally;
use crate::store::{self, Record, StoreError, Stored};
/// A record before and after a change.
#[derive(Debug, Clone)]
pub struct Changed<R> {
    pub old: R,
    pub new: R,
}

impl<R: PartialEq> Changed<R> {
    /// Whether the change changed anything (and so was written).
    pub fn written(&self) -> bool {
        self.old != self.new
    }
}

/// Stores a new or replaced `record` under `key` as it is (its version is the caller's) and
/// marks it changed for the mirror.
pub fn put_mirrored<R: Record + Mirrored>(
    tx: &WriteTransaction,
    table: TableDefinition<&'static str, Stored<R>>,
    key: &str,
    record: &R,
) -> Result<(), StoreError> {
    put_mirrored_in(tx, &mut tx.open_table(table)?, key, record)
}

/// [`put_mirrored`] into a table the caller already holds open (the VM ledger scans and writes
/// its table in one go).
pub fn put_mirrored_in<R: Record + Mirrored>(
    tx: &WriteTransaction,
    table: &mut redb::Table<&'static str, Stored<R>>,
    key: &str,
    record: &R,
) -> Result<(), StoreError> {
    // Only a counted record needs the one it replaces.
    let old = match record.tally() {
        Some(_) => store::get::<R, _>(&*table, key)?,
        None => None,
    };
    store::put(table, key, record)?;
    tally::moved(tx, old.as_ref(), Some(record))?;
    record_change(tx, key, record)
}

/// Marks `record`, which the caller has just removed from its table, deleted for the mirror.
pub fn deleted_mirrored<R: Mirrored>(
    tx: &WriteTransaction,
    key: &str,
    record: &R,
) -> Result<(), StoreError> {
    tally::moved(tx, Some(record), None)?;
    record_delete::<R>(tx, key, record.entity_id())
}

/// Reads the record under `key`, lets `change` edit it, raises its version by one, stores it and
/// marks it changed for the mirror. `None` when there is no record under `key`; nothing is
/// written when `change` fails or leaves the record as it was.
pub fn update_mirrored<R, E>(
    tx: &WriteTransaction,
    table: TableDefinition<&'static str, Stored<R>>,
    key: &str,
    change: impl FnOnce(&mut R) -> Result<(), E>,
) -> Result<Option<Changed<R>>, E>
where
    R: Record + Mirrored + Clone + PartialEq,
    E: From<StoreError>,
{
    let mut opened = tx.open_table(table).map_err(StoreError::from)?;
    let Some(old) = store::get::<R, _>(&opened, key)? else {
        return Ok(None);
    };
    let mut new = old.clone();
    change(&mut new)?;
    if new == old {
        return Ok(Some(Changed { old, new }));
    }
    new.bump_version();
    store::put(&mut opened, key, &new)?;
    drop(opened);
    tally::moved(tx, Some(&old), Some(&new))?;
    record_change(tx, key, &new)?;
    Ok(Some(Changed { old, new }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tables;
    use crate::model::{User, UserStatus};
    use crate::store::Store;
    fn user(id: &str) -> User {
        User {
            status: UserStatus::Active,
            ..crate::model::fixtures::user(id)
        }
    }

    #[tokio::test]
    async fn an_update_raises_the_version_and_queues_the_change_in_one_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("store");
        let written = user("u1");
        let first_version = written.version;
        store
            .write(move |tx| put_mirrored(tx, tables::USERS, "u1", &written))
            .await
            .expect("put");
        let changed = store
            .write(|tx| {
                update_mirrored(tx, tables::USERS, "u1", |u: &mut User| {
                    u.status = UserStatus::Hibernated;
                    Ok::<_, StoreError>(())
                })
            })
            .await
            .expect("update")
            .expect("a record");
        assert_eq!(changed.old.version, first_version);
        assert_eq!(changed.new.version, first_version + 1);
        assert_eq!(changed.new.status, UserStatus::Hibernated);
        let (stored, queued) = store
            .read(|tx| {
                let stored: Option<User> = store::get(&tx.open_table(tables::USERS)?, "u1")?;
                let queued = redb::ReadableTableMetadata::len(&tx.open_table(tables::OUTBOX)?)?;
                Ok::<_, StoreError>((stored, queued))
            })
            .await
            .expect("read");
        assert_eq!(stored.map(|u| u.version), Some(first_version + 1));
        assert_eq!(
            queued, 1,
            "the two changes of one entity are one outbox entry"
        );
    }

    #[tokio::test]
    async fn a_failed_change_writes_nothing_and_a_missing_record_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("store");
        let missing = store
            .write(|tx| {
                update_mirrored(tx, tables::USERS, "nobody", |_: &mut User| {
                    Ok::<_, StoreError>(())
                })
            })
            .await
            .expect("update");
        assert!(missing.is_none());
        let written = user("u2");
        store
            .write(move |tx| put_mirrored(tx, tables::USERS, "u2", &written))
            .await
            .expect("put");
        let failed = store
            .write(|tx| {
                update_mirrored(tx, tables::USERS, "u2", |u: &mut User| {
                    u.status = UserStatus::Hibernated;
                    Err(StoreError::Task("refused".into()))
                })
            })
            .await;
        assert!(failed.is_err());
        let unchanged = store
            .write(|tx| {
                update_mirrored(tx, tables::USERS, "u2", |_: &mut User| {
                    Ok::<_, StoreError>(())
                })
            })
            .await
            .expect("update")
            .expect("a record");
        assert!(!unchanged.written());
        assert_eq!(unchanged.new.version, 1, "no change, no new version");
        let stored: Option<User> = store
            .read(|tx| store::get(&tx.open_table(tables::USERS)?, "u2"))
            .await
            .expect("read");
        assert_eq!(stored.map(|u| u.status), Some(UserStatus::Active));
    }
}
