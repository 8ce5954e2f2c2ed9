//! Each job's last run in `TASK_RUNS`.

use std::collections::BTreeMap;

use super::TaskError;
use crate::model::TaskRun;
use crate::model::tables;
use crate::store::{self, Store};
/// Reads `name`'s record (a fresh one if it never ran), applies `change`, and writes it back.
pub async fn update(
    store: &Store,
    name: &str,
    change: impl FnOnce(&mut TaskRun) + Send + 'static,
) -> Result<TaskRun, TaskError> {
    let name = name.to_string();
    store
        .write(move |tx| {
            let mut table = tx.open_table(tables::TASK_RUNS)?;
            let mut run =
                store::get::<TaskRun, _>(&table, &name)?.unwrap_or_else(|| TaskRun::new(&name));
            change(&mut run);
            store::put(&mut table, &name, &run)?;
            Ok(run)
        })
        .await
}

pub async fn all(store: &Store) -> Result<BTreeMap<String, TaskRun>, TaskError> {
    store
        .read(|tx| {
            let runs: Vec<TaskRun> = store::all(&tx.open_table(tables::TASK_RUNS)?)?;
            Ok(runs.into_iter().map(|r| (r.name.clone(), r)).collect())
        })
        .await
}

pub async fn get(store: &Store, name: &str) -> Result<Option<TaskRun>, TaskError> {
    let name = name.to_string();
    store
        .read(move |tx| Ok(store::get(&tx.open_table(tables::TASK_RUNS)?, &name)?))
        .await
}
