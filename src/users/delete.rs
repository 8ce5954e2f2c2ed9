//! Deleting a user and everything they own. The user's VMs go first, through the VM manager,
//! so their processes, taps, directories and address leases are released the normal way (and a
//! VM with an operation in progress stops the delete before anything is removed). Then one
//! transaction removes every record of the user and enqueues a tombstone for each mirrored
//! one, so the store and Supabase never see half a user.

use std::sync::Arc;

use redb::{ReadableTable, WriteTransaction};

use super::{UserError, UserService};
use crate::model::tables;
use crate::model::{AuthSession, Credential, Prompt, User, Vm, VmStatus, credential_key};
use crate::providers;
use crate::store::{self, Record, StoreError, Stored};
use crate::sync::deleted_mirrored;
use crate::vms::{VmFilter, VmManager};

/// What a delete removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedUser {
    pub user_id: String,
    /// VMs this delete destroyed (those destroyed earlier are not counted).
    pub vms_destroyed: usize,
    /// The upstream proxy port the user held, now free for another user.
    pub released_port: Option<u16>,
    pub vm_records: usize,
    pub prompts: usize,
    pub auth_sessions: usize,
    pub credentials: usize,
    pub conversations: usize,
    /// The user's token epoch after the delete: every token minted before is dead.
    pub token_epoch: u64,
}

impl UserService {
    /// Destroys the user's VMs, then removes the user and their VMs' records, prompts,
    /// conversations, logins, credentials and upstream port in one transaction.
    pub async fn delete(&self, id: &str, vms: &Arc<VmManager>) -> Result<DeletedUser, UserError> {
        // An unknown user is a 404 before any VM is touched.
        self.get(id).await?;
        let owned = vms
            .list(VmFilter {
                user_id: Some(id.to_string()),
                ..VmFilter::default()
            })
            .await?;
        let mut vms_destroyed = 0;
        // Failed VMs are destroyed as well: that clears whatever a failed create left behind
        // on the host. A VM with an operation in progress answers `Busy` here, before the user's
        // records are touched.
        for vm in owned.iter().filter(|vm| vm.status != VmStatus::Destroyed) {
            vms.destroy(&vm.id).await?;
            vms_destroyed += 1;
        }
        let id = id.to_string();
        let mut deleted = self.store.write(move |tx| remove_records(tx, &id)).await?;
        deleted.vms_destroyed = vms_destroyed;
        self.epochs.note(&deleted.user_id, deleted.token_epoch);
        tracing::info!(
            user = %deleted.user_id,
            vms_destroyed,
            vm_records = deleted.vm_records,
            prompts = deleted.prompts,
            auth_sessions = deleted.auth_sessions,
            credentials = deleted.credentials,
            conversations = deleted.conversations,
            "deleted a user"
        );
        Ok(deleted)
    }
}

/// Removes every record of the user. Refuses (and so changes nothing) if a VM of theirs came
/// alive or started an operation after the VMs were destroyed: a create that raced the delete.
fn remove_records(tx: &WriteTransaction, id: &str) -> Result<DeletedUser, UserError> {
    let mut users = tx.open_table(tables::USERS)?;
    let user: User = store::get(&users, id)?.ok_or_else(|| UserError::NotFound(id.to_string()))?;

    let mut vms = tx.open_table(tables::VMS)?;
    let intents = tx.open_table(tables::VM_INTENTS)?;
    let owned_vms: Vec<(String, Vm)> =
        crate::vms::by_user::of_user(&tx.open_table(tables::VMS_BY_USER)?, &vms, id)?
            .into_iter()
            .map(|vm| (vm.id.clone(), vm))
            .collect();
    for (_, vm) in &owned_vms {
        let in_progress = intents.get(vm.id.as_str())?.is_some();
        if vm.status != VmStatus::Destroyed && (vm.is_live() || in_progress) {
            return Err(UserError::VmAppeared {
                user_id: id.to_string(),
                vm_id: vm.id.clone(),
                status: vm.status,
            });
        }
    }
    // Destroy released each VM's address. A lease a crash left is reconcile's to sweep
    // (`ledger::stray_leases`), as is an intent: both are settled before the daemon serves.
    for (key, vm) in &owned_vms {
        vms.remove(key.as_str())?;
        crate::vms::by_user::remove(tx, vm)?;
        deleted_mirrored(tx, key, vm)?;
    }

    let mut prompts = tx.open_table(tables::PROMPTS)?;
    let owned_prompts = owned(&prompts, |p: &Prompt| p.user_id == id)?;
    for (key, prompt) in &owned_prompts {
        prompts.remove(key.as_str())?;
        crate::prompts::counts::change(tx, Some(prompt), None)?;
        deleted_mirrored(tx, key, prompt)?;
    }

    let conversations = crate::conversations::remove_user_conversations(tx, id)?;

    let mut sessions = tx.open_table(tables::AUTH_SESSIONS)?;
    let owned_sessions = owned(&sessions, |s: &AuthSession| s.user_id == id)?;
    for (key, session) in &owned_sessions {
        sessions.remove(key.as_str())?;
        deleted_mirrored(tx, key, session)?;
    }
    // The active-login index is keyed like credentials.
    let mut active = tx.open_table(tables::ACTIVE_AUTH_SESSIONS)?;
    for provider in providers::all() {
        active.remove(credential_key(id, provider).as_str())?;
    }

    let mut credentials = tx.open_table(tables::CREDENTIALS)?;
    let owned_credentials = owned(&credentials, |c: &Credential| c.user_id == id)?;
    for (key, credential) in &owned_credentials {
        credentials.remove(key.as_str())?;
        deleted_mirrored(tx, key, credential)?;
    }

    crate::net::egress::ports::release(tx, &user)?;
    let mut by_email = tx.open_table(tables::USERS_BY_EMAIL)?;
    // Only this user's entry: the index must never lose another user's email.
    let indexed_here = by_email
        .get(user.email.as_str())?
        .is_some_and(|v| v.value() == user.id);
    if indexed_here {
        by_email.remove(user.email.as_str())?;
    }
    users.remove(id)?;
    deleted_mirrored(tx, &user.id, &user)?;
    // In the same transaction: a user is never gone while their tokens still work.
    let token_epoch = super::epochs::bump(tx, id)?;

    Ok(DeletedUser {
        user_id: user.id,
        vms_destroyed: 0,
        released_port: user.decodo_port,
        vm_records: owned_vms.len(),
        prompts: owned_prompts.len(),
        auth_sessions: owned_sessions.len(),
        credentials: owned_credentials.len(),
        conversations,
        token_epoch,
    })
}

/// The records of a table that `owns` picks, with their keys (the record key a tombstone
/// names is the key in the record's own table).
fn owned<R, T>(table: &T, owns: impl Fn(&R) -> bool) -> Result<Vec<(String, R)>, StoreError>
where
    R: Record,
    T: ReadableTable<&'static str, Stored<R>>,
{
    let mut found = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        let record = value.value().decode()?;
        if owns(&record) {
            found.push((key.value().to_string(), record));
        }
    }
    Ok(found)
}
