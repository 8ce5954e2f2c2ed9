//! Rotation of the master key, in three durable steps so that a crash at any point leaves a
//! state that still opens with the old key and that a rerun with the same keys finishes:
//! 1. the new salt is recorded as the `Pending` key before any record uses it, so the new
//!    identity can be derived again after a crash;
//! 2. each record is re-sealed in its own transaction, naming the key that sealed it, so a
//!    rerun skips the records already done;
//! 3. one transaction retires the old key and activates the pending one, only once no record
//!    needs the old key.

use redb::WriteTransaction;

use super::{
    Derived, Driver, MasterKey, Vault, VaultError, credential_key_ids, derive, find_key,
    insert_key, random_salt, sealed_by, verify,
};
use crate::model::tables;
use crate::model::{Credential, VaultKey, VaultKeyState};
use crate::store::{self, Store};
use crate::sync::update_mirrored;

pub const ROTATE_FAILPOINT: &str = "vault.rotate.after_record";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateReport {
    pub re_encrypted: usize,
    pub already_done: usize,
    pub key_id_old: String,
    pub key_id_new: String,
}

/// Re-seals every credential from `old` to `new`. Blocking; the daemon must be stopped, as the
/// store refuses a second opener anyway.
pub fn rotate(store: &Store, old: &MasterKey, new: &MasterKey) -> Result<RotateReport, VaultError> {
    let driver = Driver::new()?;
    let old_vault = match Vault::open_with(&driver, store, old) {
        Ok(vault) => vault,
        Err(VaultError::WrongMasterKey { key_id }) => {
            return finished_earlier(&driver, store, old, new, key_id);
        }
        Err(e) => return Err(e),
    };
    let new_vault = Vault::from(pending_key(&driver, store, new)?);
    let mut report = RotateReport {
        re_encrypted: 0,
        already_done: 0,
        key_id_old: old_vault.key_id().to_string(),
        key_id_new: new_vault.key_id().to_string(),
    };
    let records = sealed_by(&driver, store)?;
    for (record, key_id) in records {
        if key_id == report.key_id_new {
            report.already_done += 1;
            continue;
        }
        let (old_vault, new_vault) = (old_vault.clone(), new_vault.clone());
        let resealed =
            driver.run(store.write(move |tx| reseal(tx, &record, &old_vault, &new_vault)))?;
        if resealed {
            report.re_encrypted += 1;
            crate::failpoint::hit(ROTATE_FAILPOINT);
        } else {
            report.already_done += 1;
        }
    }
    let (old_id, new_id) = (report.key_id_old.clone(), report.key_id_new.clone());
    driver.run(store.write(move |tx| promote(tx, &old_id, &new_id)))?;
    Ok(report)
}

/// Re-seals one record in its own transaction; false when there was nothing to do.
pub(super) fn reseal(
    tx: &WriteTransaction,
    record_key: &str,
    old: &Vault,
    new: &Vault,
) -> Result<bool, VaultError> {
    let changed = update_mirrored(
        tx,
        tables::CREDENTIALS,
        record_key,
        |credential: &mut Credential| {
            if credential.key_id == new.key_id() {
                return Ok(());
            }
            if credential.key_id != old.key_id() {
                return Err(VaultError::Stranded {
                    record: record_key.to_string(),
                    key_id: credential.key_id.clone(),
                });
            }
            let plaintext = old
                .unseal(&credential.key_id, &credential.ciphertext)
                .map_err(|e| match e {
                    VaultError::Decrypt => VaultError::Corrupt {
                        record: record_key.to_string(),
                    },
                    other => other,
                })?;
            let sealed = new.seal(&plaintext)?;
            // A new version (`update_mirrored` raises it), so a mirror that keeps ciphertexts
            // replaces the one sealed by the old key.
            credential.key_id = sealed.key_id;
            credential.ciphertext = sealed.ciphertext;
            Ok(())
        },
    )?;
    Ok(changed.is_some_and(|changed| changed.written()))
}

/// The last step: the pending key becomes the active one, in one transaction, once no record
/// needs the old key any more.
fn promote(tx: &WriteTransaction, old_id: &str, new_id: &str) -> Result<(), VaultError> {
    {
        let credentials = tx.open_table(tables::CREDENTIALS)?;
        if let Some((record, key_id)) = credential_key_ids(&credentials)?
            .into_iter()
            .find(|(_, key_id)| key_id != new_id)
        {
            return Err(VaultError::Stranded { record, key_id });
        }
    }
    let mut keys = tx.open_table(tables::VAULT_KEYS)?;
    for (key_id, state) in [
        (old_id, VaultKeyState::Retired),
        (new_id, VaultKeyState::Active),
    ] {
        let mut key: VaultKey =
            store::get(&keys, key_id)?.ok_or_else(|| VaultError::MissingKey {
                key_id: key_id.to_string(),
            })?;
        key.state = state;
        store::put(&mut keys, key_id, &key)?;
    }
    Ok(())
}

/// A rerun after the final step committed: `new` is already active. `old` must still match the
/// key it replaced, so that a mistyped old key is not reported as a success.
fn finished_earlier(
    driver: &Driver,
    store: &Store,
    old: &MasterKey,
    new: &MasterKey,
    active_id: String,
) -> Result<RotateReport, VaultError> {
    let wrong_old = || VaultError::WrongMasterKey {
        key_id: active_id.clone(),
    };
    let new_vault = match Vault::open_with(driver, store, new) {
        Ok(vault) => vault,
        Err(VaultError::WrongMasterKey { .. }) => return Err(wrong_old()),
        Err(e) => return Err(e),
    };
    let mut retired = driver
        .run(store.read(|tx| store::all::<VaultKey, _>(&tx.open_table(tables::VAULT_KEYS)?)))?;
    retired.retain(|key| key.state == VaultKeyState::Retired);
    retired.sort_by_key(|key| std::cmp::Reverse(key.created_at_ms));
    let old_key = retired
        .iter()
        .find(|key| verify(old, key).is_ok())
        .ok_or_else(wrong_old)?;
    let records = sealed_by(driver, store)?;
    Ok(RotateReport {
        re_encrypted: 0,
        already_done: records
            .iter()
            .filter(|(_, id)| id == new_vault.key_id())
            .count(),
        key_id_old: old_key.key_id.clone(),
        key_id_new: new_vault.key_id().to_string(),
    })
}

/// The pending key for `new`: the one an interrupted run recorded, or a fresh one. A pending key
/// that `new` does not match is replaced only while no record is sealed under it.
pub(super) fn pending_key(
    driver: &Driver,
    store: &Store,
    new: &MasterKey,
) -> Result<Derived, VaultError> {
    if let Some(pending) = find_key(driver, store, VaultKeyState::Pending)? {
        match verify(new, &pending) {
            Ok(derived) => return Ok(derived),
            Err(VaultError::WrongMasterKey { key_id }) => {
                driver.run(store.write(move |tx| discard_unused_pending(tx, &key_id)))?;
            }
            Err(e) => return Err(e),
        }
    }
    let derived = derive(new, &random_salt()?)?;
    match insert_key(driver, store, &derived, VaultKeyState::Pending)? {
        None => Ok(derived),
        Some(existing) => verify(new, &existing),
    }
}

fn discard_unused_pending(tx: &WriteTransaction, key_id: &str) -> Result<(), VaultError> {
    let credentials = tx.open_table(tables::CREDENTIALS)?;
    if credential_key_ids(&credentials)?
        .iter()
        .any(|(_, id)| id == key_id)
    {
        return Err(VaultError::WrongMasterKey {
            key_id: key_id.to_string(),
        });
    }
    tx.open_table(tables::VAULT_KEYS)?.remove(key_id)?;
    Ok(())
}
