//! Users by status and VMs by status and type, counted in `RECORD_COUNTS` in the same transaction
//! as every write of those records (the mirrored write path in `super::write` is their only one).
//! A metrics scrape and a VM reservation read these few counters instead of decoding every
//! record, so neither costs more as users and VMs pile up.

use std::collections::BTreeMap;

use redb::{ReadableTable, WriteTransaction};

use super::rows::Mirrored;
use crate::model::tables;
use crate::model::{User, UserStatus, Vm, VmStatus, VmType};
use crate::store::{self, StoreError};

pub fn user_key(status: UserStatus) -> String {
    format!("users/{status}")
}

pub fn vm_key(status: VmStatus, vm_type: VmType) -> String {
    format!("vms/{status}/{vm_type}")
}

/// The counters, read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub users_by_status: BTreeMap<UserStatus, u64>,
    pub vms_by_status_type: BTreeMap<(VmStatus, VmType), u64>,
}

impl Counts {
    /// How many VMs are in a status that `include` accepts.
    pub fn vms_where(&self, include: impl Fn(VmStatus) -> bool) -> u64 {
        self.vms_by_status_type
            .iter()
            .filter(|((status, _), _)| include(*status))
            .map(|(_, count)| count)
            .sum()
    }

    fn count_user(&mut self, user: &User) {
        *self.users_by_status.entry(user.status).or_insert(0) += 1;
    }

    fn count_vm(&mut self, vm: &Vm) {
        *self
            .vms_by_status_type
            .entry((vm.status, vm.vm_type))
            .or_insert(0) += 1;
    }

    fn entries(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let users = self
            .users_by_status
            .iter()
            .map(|(status, n)| (user_key(*status), *n));
        let vms = self
            .vms_by_status_type
            .iter()
            .map(|((status, vm_type), n)| (vm_key(*status, *vm_type), *n));
        users.chain(vms).filter(|(_, n)| *n > 0)
    }
}

/// Moves a record's count from its `old` state to its `new` one (`None`: not stored).
pub(super) fn moved<R: Mirrored>(
    tx: &WriteTransaction,
    old: Option<&R>,
    new: Option<&R>,
) -> Result<(), StoreError> {
    let old = old.and_then(Mirrored::tally);
    let new = new.and_then(Mirrored::tally);
    if old == new {
        return Ok(());
    }
    let mut table = tx.open_table(tables::RECORD_COUNTS)?;
    if let Some(old) = old {
        store::add_to_count(&mut table, &old, -1)?;
    }
    if let Some(new) = new {
        store::add_to_count(&mut table, &new, 1)?;
    }
    Ok(())
}

/// The counters in `table` (`RECORD_COUNTS`, opened by a read or a write transaction). Keys this
/// binary does not know are skipped.
pub fn read(table: &impl ReadableTable<&'static str, u64>) -> Result<Counts, StoreError> {
    let mut counts = Counts::default();
    for entry in table.iter()? {
        let (key, count) = entry?;
        let count = count.value();
        let parts: Vec<&str> = key.value().split('/').collect();
        match parts.as_slice() {
            ["users", status] => {
                if let Ok(status) = status.parse() {
                    counts.users_by_status.insert(status, count);
                }
            }
            ["vms", status, vm_type] => {
                if let (Ok(status), Ok(vm_type)) = (status.parse(), vm_type.parse()) {
                    counts.vms_by_status_type.insert((status, vm_type), count);
                }
            }
            _ => {}
        }
    }
    Ok(counts)
}

/// Counts the records themselves.
fn count_records(tx: &WriteTransaction) -> Result<Counts, StoreError> {
    let mut counted = Counts::default();
    for user in store::all::<User, _>(&tx.open_table(tables::USERS)?)? {
        counted.count_user(&user);
    }
    for vm in store::all::<Vm, _>(&tx.open_table(tables::VMS)?)? {
        counted.count_vm(&vm);
    }
    Ok(counted)
}

/// Counts every user and VM record and makes the counters say so, at each start: a store from
/// before the counters gets them, and a miscount (a bug, a restored backup) does not outlive a
/// restart. Returns the counts the counters held, when they were wrong.
pub async fn recount(store: &store::Store) -> Result<Option<Counts>, StoreError> {
    store
        .write(|tx| {
            let counted = count_records(tx)?;
            let mut table = tx.open_table(tables::RECORD_COUNTS)?;
            let held = read(&table)?;
            if held == counted {
                return Ok(None);
            }
            table.retain(|_, _| false)?;
            for (key, n) in counted.entries() {
                table.insert(key.as_str(), n)?;
            }
            Ok(Some(held))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures;
    use crate::store::Store;
    use crate::sync::{deleted_mirrored, put_mirrored, put_mirrored_in, update_mirrored};

    /// The counters and a count of the records, after `write`.
    async fn after(
        store: &Store,
        write: impl FnOnce(&WriteTransaction) -> Result<(), StoreError> + Send + 'static,
    ) -> (Counts, Counts) {
        store
            .write(move |tx| {
                write(tx)?;
                Ok::<_, StoreError>((
                    read(&tx.open_table(tables::RECORD_COUNTS)?)?,
                    count_records(tx)?,
                ))
            })
            .await
            .expect("write")
    }

    #[tokio::test]
    async fn the_counters_follow_every_write_and_delete_of_users_and_vms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("store");
        type Step = Box<dyn FnOnce(&WriteTransaction) -> Result<(), StoreError> + Send>;
        let steps: Vec<(&str, Step)> = vec![
            (
                "two users put",
                Box::new(|tx| {
                    put_mirrored(tx, tables::USERS, "u1", &fixtures::user("u1"))?;
                    put_mirrored(tx, tables::USERS, "u2", &fixtures::user("u2"))
                }),
            ),
            (
                "a user updated",
                Box::new(|tx| {
                    update_mirrored(tx, tables::USERS, "u1", |u: &mut User| {
                        u.status = UserStatus::Active;
                        Ok::<_, StoreError>(())
                    })?;
                    Ok(())
                }),
            ),
            (
                "a user put again unchanged in status",
                Box::new(|tx| {
                    let mut user = fixtures::user("u2");
                    user.email = "new@example.com".into();
                    put_mirrored(tx, tables::USERS, "u2", &user)
                }),
            ),
            (
                "two VMs put",
                Box::new(|tx| {
                    let mut table = tx.open_table(tables::VMS)?;
                    put_mirrored_in(tx, &mut table, "v1", &fixtures::vm("v1", "u1"))?;
                    let browser = Vm {
                        vm_type: VmType::Browser,
                        ..fixtures::vm("v2", "u2")
                    };
                    put_mirrored_in(tx, &mut table, "v2", &browser)
                }),
            ),
            (
                "a VM updated, another replaced",
                Box::new(|tx| {
                    update_mirrored(tx, tables::VMS, "v1", |vm: &mut Vm| {
                        vm.status = VmStatus::Running;
                        Ok::<_, StoreError>(())
                    })?;
                    let hibernated = Vm {
                        status: VmStatus::Hibernated,
                        vm_type: VmType::Browser,
                        ..fixtures::vm("v2", "u2")
                    };
                    put_mirrored(tx, tables::VMS, "v2", &hibernated)
                }),
            ),
            (
                "a VM and a user deleted",
                Box::new(|tx| {
                    let vm: Vm = store::get(&tx.open_table(tables::VMS)?, "v2")?.expect("v2");
                    tx.open_table(tables::VMS)?.remove("v2")?;
                    deleted_mirrored(tx, "v2", &vm)?;
                    let user: User = store::get(&tx.open_table(tables::USERS)?, "u2")?.expect("u2");
                    tx.open_table(tables::USERS)?.remove("u2")?;
                    deleted_mirrored(tx, "u2", &user)
                }),
            ),
        ];
        for (what, step) in steps {
            let (counters, records) = after(&store, step).await;
            assert_eq!(counters, records, "after {what}");
        }
        let (counters, _) = after(&store, |_| Ok(())).await;
        assert_eq!(
            counters.users_by_status,
            BTreeMap::from([(UserStatus::Active, 1)])
        );
        assert_eq!(
            counters.vms_by_status_type,
            BTreeMap::from([((VmStatus::Running, VmType::Cli), 1)])
        );
        assert_eq!(counters.vms_where(|s| s == VmStatus::Running), 1);
        assert_eq!(counters.vms_where(|s| s == VmStatus::Hibernated), 0);
    }

    #[tokio::test]
    async fn a_start_recounts_missing_or_wrong_counters_and_then_finds_them_right() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("store");
        let (_, records) = after(&store, |tx| {
            put_mirrored(tx, tables::USERS, "u1", &fixtures::user("u1"))?;
            put_mirrored(tx, tables::VMS, "v1", &fixtures::vm("v1", "u1"))?;
            // As a store from before the counters, or a bug, would leave them.
            let mut table = tx.open_table(tables::RECORD_COUNTS)?;
            table.retain(|_, _| false)?;
            table.insert(user_key(UserStatus::Active).as_str(), 7)?;
            Ok(())
        })
        .await;
        let held = recount(&store).await.expect("recount").expect("a miscount");
        assert_eq!(
            held.users_by_status,
            BTreeMap::from([(UserStatus::Active, 7)])
        );
        let (counters, _) = after(&store, |_| Ok(())).await;
        assert_eq!(counters, records);
        assert_eq!(
            counters.users_by_status,
            BTreeMap::from([(UserStatus::Created, 1)])
        );
        assert_eq!(recount(&store).await.expect("recount"), None);
    }
}
