//! The redb store: one file, `<data-dir>/state.redb`. Every transaction runs on a blocking
//! thread, and every write commits with `Durability::Immediate`, so a write that returned is on
//! disk.

pub mod codec;
mod stored;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

pub use codec::Record;
pub use stored::Stored;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state file {path} was written by a newer master-controller (schema {found}, this binary knows up to {supported}); upgrade the binary"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("state file {path} is already open in another process")]
    AlreadyOpen { path: PathBuf },
    #[error("cannot open state file {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("cannot encode {kind} record: {reason}")]
    Encode { kind: &'static str, reason: String },
    #[error("cannot decode {kind} record: {reason}")]
    Decode { kind: &'static str, reason: String },
    #[error("{kind} record has version {found}, this binary knows up to {supported}")]
    UnknownRecordVersion {
        kind: &'static str,
        found: u16,
        supported: u16,
    },
    #[error("database error: {0}")]
    Database(#[from] redb::Error),
    #[error("store task failed: {0}")]
    Task(String),
}

/// Lets `?` lift redb's specific errors into a module's error enum (which must convert from
/// `StoreError`), so services can work on tables inside a transaction closure.
#[macro_export]
macro_rules! lift_redb_errors {
    ($target:ty) => {
        $crate::lift_redb_errors!(@each $target;
            redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError,
            redb::SetDurabilityError);
    };
    (@each $target:ty; $($source:ty),*) => {$(
        impl From<$source> for $target {
            fn from(e: $source) -> Self {
                <$target>::from($crate::store::StoreError::Database(e.into()))
            }
        }
    )*};
}

lift_redb_errors!(StoreError);

/// The schema version this binary writes. A file with a higher one is refused at open.
pub const SCHEMA_VERSION: u64 = 2;

pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const META_SCHEMA_VERSION: &str = "schema_version";

/// A handle on the open database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl Store {
    pub const FILE_NAME: &'static str = "state.redb";

    /// Opens (or creates) the state file in `data_dir`, checks its schema version, and lets
    /// `create_tables` create the tables (`model::tables` knows them; `Store::open` is there).
    pub fn open_blocking_with(
        data_dir: &Path,
        create_tables: fn(&WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<Store, StoreError> {
        let path = data_dir.join(Self::FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::AlreadyOpen { path: path.clone() }
            }
            other => StoreError::Open {
                path: path.clone(),
                reason: other.to_string(),
            },
        })?;
        let store = Store {
            db: Arc::new(db),
            path,
        };
        store.check_schema(create_tables)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_schema(
        &self,
        create_tables: fn(&WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        let found = {
            let mut meta = tx.open_table(META)?;
            let found = meta.get(META_SCHEMA_VERSION)?.map(|v| v.value());
            if found.is_none() {
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION)?;
            }
            found
        };
        if let Some(found) = found
            && found > SCHEMA_VERSION
        {
            return Err(StoreError::SchemaTooNew {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        tx.open_table(META)?;
        create_tables(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        Ok(tx)
    }

    /// Runs `f` in a read transaction on a blocking thread.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&ReadTransaction) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(StoreError::from)?;
            f(&tx)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` in a write transaction on a blocking thread and commits durably when it returns
    /// `Ok`. On `Err` nothing is written.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&WriteTransaction) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let tx = store.begin_write()?;
            let value = f(&tx)?;
            tx.commit().map_err(StoreError::from)?;
            Ok(value)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// A cheap read of the meta table, used by the watchdog to prove the store still answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|tx| {
            let meta = tx.open_table(META)?;
            meta.get(META_SCHEMA_VERSION)?;
            Ok::<_, StoreError>(())
        })
        .await
    }

    /// Closes the database once every other handle is gone, waiting at most `deadline`.
    pub async fn close(self, deadline: Duration) -> bool {
        let started = tokio::time::Instant::now();
        let mut db = self.db;
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    let closed = tokio::task::spawn_blocking(move || drop(db)).await;
                    return closed.is_ok();
                }
                Err(shared) if started.elapsed() < deadline => {
                    db = shared;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => return false,
            }
        }
    }
}

/// Reads and decodes one record.
pub fn get<R, T>(table: &T, key: &str) -> Result<Option<R>, StoreError>
where
    R: Record,
    T: ReadableTable<&'static str, Stored<R>>,
{
    table.get(key)?.map(|v| v.value().decode()).transpose()
}

/// Encodes and writes one record.
pub fn put<R: Record>(
    table: &mut redb::Table<&'static str, Stored<R>>,
    key: &str,
    record: &R,
) -> Result<(), StoreError> {
    table.insert(key, Stored::encode(record)?)?;
    Ok(())
}

/// Adds `delta` to the counter under `key` of a counters table; a counter that reaches 0 is
/// removed, so a table of counters only holds what is there.
pub fn add_to_count(
    table: &mut redb::Table<&'static str, u64>,
    key: &str,
    delta: i64,
) -> Result<(), StoreError> {
    let current = table.get(key)?.map_or(0, |v| v.value());
    let next = current.saturating_add_signed(delta);
    if next == 0 {
        table.remove(key)?;
    } else {
        table.insert(key, next)?;
    }
    Ok(())
}

/// Decodes every record of a table, in key order.
pub fn all<R, T>(table: &T) -> Result<Vec<R>, StoreError>
where
    R: Record,
    T: ReadableTable<&'static str, Stored<R>>,
{
    table
        .iter()?
        .map(|entry| entry.map_err(StoreError::from)?.1.value().decode())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMAILS: TableDefinition<&str, &str> = TableDefinition::new("emails");

    fn create_emails(tx: &WriteTransaction) -> Result<(), StoreError> {
        tx.open_table(EMAILS)?;
        Ok(())
    }

    async fn open(dir: &Path) -> Result<Store, StoreError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Store::open_blocking_with(&dir, create_emails))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await.unwrap();
        store
            .write(|tx| {
                tx.open_table(META)?
                    .insert(META_SCHEMA_VERSION, SCHEMA_VERSION + 1)?;
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        assert!(store.close(Duration::from_secs(5)).await);
        let err = open(dir.path()).await.err().expect("must refuse");
        assert!(
            matches!(
                err,
                StoreError::SchemaTooNew {
                    found: 3,
                    supported: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("newer master-controller"));
    }

    #[tokio::test]
    async fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await.unwrap();
        let result: Result<(), StoreError> = store
            .write(|tx| {
                tx.open_table(EMAILS)?.insert("a@b.c", "id")?;
                Err(StoreError::Task("abort".into()))
            })
            .await;
        assert!(result.is_err());
        let found = store
            .read(|tx| Ok::<_, StoreError>(tx.open_table(EMAILS)?.get("a@b.c")?.is_some()))
            .await
            .unwrap();
        assert!(!found);
    }
}
