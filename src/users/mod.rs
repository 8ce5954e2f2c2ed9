//! The user service: create, read, update and list users, and their usage figures.

use std::collections::BTreeMap;

use redb::ReadableTable;

use crate::model::tables;
use crate::model::{ModelError, Plan, Status, User, UserStatus, VmStatus, now_ms};
use crate::store::{self, Store, StoreError};
use crate::sync::{put_mirrored, update_mirrored};

mod delete;
pub mod epochs;
mod query;

pub use delete::DeletedUser;
pub use epochs::TokenEpochs;
pub use query::{PageStart, UserFilter};

const MAX_EMAIL_LEN: usize = 254;
const MAX_AUTH_ID_LEN: usize = 128;
pub const MAX_PAGE_SIZE: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0} not found")]
    NotFound(String),
    #[error("a user with email {} already exists", .existing.email)]
    DuplicateEmail { existing: Box<User> },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A VM of the user was created or started an operation while the user was being deleted.
    #[error("user {user_id} has VM {vm_id} ({status}) again; retry the delete")]
    VmAppeared {
        user_id: String,
        vm_id: String,
        status: VmStatus,
    },
    #[error(transparent)]
    Vm(#[from] crate::vms::VmError),
    #[error(transparent)]
    Egress(#[from] crate::net::egress::EgressError),
    #[error(transparent)]
    Transition(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::lift_redb_errors!(UserError);

pub struct NewUser {
    pub email: String,
    pub supabase_auth_id: Option<String>,
}

#[derive(Default)]
pub struct UserPatch {
    pub plan: Option<Plan>,
    pub status: Option<UserStatus>,
}

pub struct UserPage {
    pub users: Vec<User>,
    /// Every match, on every page.
    pub total: u64,
    /// The cursor of the next page (the last user's id), when there is one.
    pub next_cursor: Option<String>,
}

/// What a user has used, by status.
pub struct UserStats {
    pub user: User,
    pub vms_by_status: BTreeMap<String, u64>,
    pub prompts_by_status: BTreeMap<String, u64>,
    pub prompts_by_provider: BTreeMap<String, ProviderStats>,
    pub auth_sessions: u64,
}

/// One provider's prompts of a user: counts by status and the durations of finished ones.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStats {
    pub by_status: BTreeMap<String, u64>,
    pub total_duration_ms: u64,
    pub average_duration_ms: Option<u64>,
    pub max_duration_ms: Option<u64>,
}

#[derive(Clone)]
pub struct UserService {
    store: Store,
    epochs: std::sync::Arc<TokenEpochs>,
}

impl UserService {
    /// A service with no token epochs recorded (tests and tools that mint no tokens).
    pub fn new(store: Store) -> UserService {
        Self::with_token_epochs(store, std::sync::Arc::default())
    }

    /// A delete bumps the user's epoch in `epochs`, which the authenticator shares.
    pub fn with_token_epochs(store: Store, epochs: std::sync::Arc<TokenEpochs>) -> UserService {
        UserService { store, epochs }
    }

    pub fn token_epochs(&self) -> &std::sync::Arc<TokenEpochs> {
        &self.epochs
    }

    /// Revokes every token of the user minted so far (the user must exist).
    pub async fn revoke_tokens(&self, id: &str) -> Result<u64, UserError> {
        self.get(id).await?;
        Ok(self.epochs.revoke(&self.store, id).await?)
    }

    pub async fn create(&self, new: NewUser) -> Result<User, UserError> {
        let email = normalise_email(&new.email)?;
        let supabase_auth_id = match new.supabase_auth_id {
            Some(id) if id.trim().is_empty() || id.chars().count() > MAX_AUTH_ID_LEN => {
                return Err(UserError::Invalid {
                    field: "supabaseAuthId",
                    reason: format!("must be 1 to {MAX_AUTH_ID_LEN} characters"),
                });
            }
            other => other,
        };
        let now = now_ms();
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            email,
            supabase_auth_id,
            plan: Plan::Free,
            status: UserStatus::Created,
            decodo_port: None,
            prompt_count: 0,
            created_at_ms: now,
            updated_at_ms: now,
            last_active_at_ms: None,
            version: 1,
        };
        self.store
            .write(move |tx| {
                let mut by_email = tx.open_table(tables::USERS_BY_EMAIL)?;
                let existing_id = by_email
                    .get(user.email.as_str())?
                    .map(|id| id.value().to_string());
                if let Some(existing_id) = existing_id {
                    let existing = store::get(&tx.open_table(tables::USERS)?, &existing_id)?
                        .ok_or_else(|| UserError::NotFound(existing_id.clone()))?;
                    return Err(UserError::DuplicateEmail {
                        existing: Box::new(existing),
                    });
                }
                by_email.insert(user.email.as_str(), user.id.as_str())?;
                put_mirrored(tx, tables::USERS, &user.id, &user)?;
                Ok(user)
            })
            .await
    }

    pub async fn get(&self, id: &str) -> Result<User, UserError> {
        let id = id.to_string();
        self.store
            .read(move |tx| {
                let users = tx.open_table(tables::USERS)?;
                store::get(&users, &id)?.ok_or(UserError::NotFound(id))
            })
            .await
    }

    pub async fn update(&self, id: &str, patch: UserPatch) -> Result<User, UserError> {
        let id = id.to_string();
        self.store
            .write(move |tx| {
                let changed = update_mirrored(tx, tables::USERS, &id, |user: &mut User| {
                    let before = user.clone();
                    if let Some(status) = patch.status {
                        user.status.transition(status)?;
                    }
                    if let Some(plan) = patch.plan {
                        user.plan = plan;
                    }
                    if *user != before {
                        user.updated_at_ms = now_ms();
                    }
                    Ok::<_, UserError>(())
                })?;
                Ok(changed.ok_or(UserError::NotFound(id))?.new)
            })
            .await
    }

    /// Users in creation order (ids are UUIDv7), `page` counting from 1.
    pub async fn list(&self, page: usize, page_size: usize) -> Result<UserPage, UserError> {
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let skip = page.saturating_sub(1).saturating_mul(page_size);
        self.store
            .read(move |tx| {
                let users = tx.open_table(tables::USERS)?;
                let total = redb::ReadableTableMetadata::len(&users)?;
                let page = users
                    .iter()?
                    .skip(skip)
                    .take(page_size)
                    .map(|entry| entry.map_err(StoreError::from)?.1.value().decode())
                    .collect::<Result<Vec<User>, StoreError>>()?;
                let next_cursor = (skip.saturating_add(page.len()) < total as usize)
                    .then(|| page.last().map(|u: &User| u.id.clone()))
                    .flatten();
                Ok(UserPage {
                    users: page,
                    total,
                    next_cursor,
                })
            })
            .await
    }

    pub async fn stats(&self, id: &str) -> Result<UserStats, UserError> {
        let id = id.to_string();
        self.store
            .read(move |tx| {
                let user: User = store::get(&tx.open_table(tables::USERS)?, &id)?
                    .ok_or_else(|| UserError::NotFound(id.clone()))?;
                let mut vms_by_status = BTreeMap::new();
                for vm in store::all(&tx.open_table(tables::VMS)?)? {
                    if vm.user_id == id {
                        *vms_by_status.entry(vm.status.to_string()).or_insert(0) += 1;
                    }
                }
                let mut prompts_by_status = BTreeMap::new();
                let mut prompts_by_provider: BTreeMap<String, ProviderStats> = BTreeMap::new();
                let mut timed: BTreeMap<String, u64> = BTreeMap::new();
                for prompt in store::all(&tx.open_table(tables::PROMPTS)?)? {
                    if prompt.user_id != id {
                        continue;
                    }
                    *prompts_by_status
                        .entry(prompt.status.to_string())
                        .or_insert(0) += 1;
                    let provider = prompt.provider.to_string();
                    let stats = prompts_by_provider.entry(provider.clone()).or_default();
                    *stats
                        .by_status
                        .entry(prompt.status.to_string())
                        .or_insert(0) += 1;
                    if let Some(ms) = prompt.duration_ms {
                        stats.total_duration_ms += ms;
                        stats.max_duration_ms = Some(stats.max_duration_ms.unwrap_or(0).max(ms));
                        *timed.entry(provider).or_insert(0) += 1;
                    }
                }
                for (provider, stats) in prompts_by_provider.iter_mut() {
                    let n = timed.get(provider).copied().unwrap_or(0);
                    stats.average_duration_ms = (n > 0).then(|| stats.total_duration_ms / n);
                }
                let auth_sessions = store::all(&tx.open_table(tables::AUTH_SESSIONS)?)?
                    .iter()
                    .filter(|s| s.user_id == id)
                    .count() as u64;
                Ok(UserStats {
                    user,
                    vms_by_status,
                    prompts_by_status,
                    prompts_by_provider,
                    auth_sessions,
                })
            })
            .await
    }
}

fn normalise_email(email: &str) -> Result<String, UserError> {
    let email = email.trim().to_lowercase();
    if email.chars().count() > MAX_EMAIL_LEN
        || !email_address::EmailAddress::is_valid(&email)
        || !email.contains('.')
    {
        return Err(UserError::Invalid {
            field: "email",
            reason: format!("{email:?} is not a valid email address"),
        });
    }
    Ok(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_normalised() {
        assert_eq!(
            normalise_email(" Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@@example.com",
            "ann@localhost",
        ] {
            assert!(normalise_email(bad).is_err(), "{bad} must be rejected");
        }
    }
}
