//! The admin's user list: filtered by status, plan and email, then paged.

use super::{MAX_PAGE_SIZE, UserError, UserPage, UserService};
use crate::model::tables;
use crate::model::{Plan, User, UserStatus};
use crate::store::StoreError;
/// Which users to list; every field set must match.
#[derive(Debug, Default, Clone)]
pub struct UserFilter {
    pub status: Option<UserStatus>,
    pub plan: Option<Plan>,
    /// A case-insensitive part of the email.
    pub email: Option<String>,
}

impl UserFilter {
    fn matches(&self, user: &User, email_lower: Option<&str>) -> bool {
        self.status.is_none_or(|s| user.status == s)
            && self.plan.is_none_or(|p| user.plan == p)
            && email_lower.is_none_or(|part| user.email.to_lowercase().contains(part))
    }
}

impl UserService {
    /// The `page`th page (from 1) of the users that match `filter`, in creation order; `total`
    /// counts every match.
    pub async fn list_filtered(
        &self,
        filter: UserFilter,
        page: usize,
        page_size: usize,
    ) -> Result<UserPage, UserError> {
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let skip = page.saturating_sub(1).saturating_mul(page_size);
        let email = filter.email.as_deref().map(str::to_lowercase);
        self.store
            .read(move |tx| {
                let table = tx.open_table(tables::USERS)?;
                let mut users = Vec::with_capacity(page_size);
                let mut total = 0u64;
                for entry in redb::ReadableTable::iter(&table)? {
                    let user: User = entry.map_err(StoreError::from)?.1.value().decode()?;
                    if !filter.matches(&user, email.as_deref()) {
                        continue;
                    }
                    if total >= skip as u64 && users.len() < page_size {
                        users.push(user);
                    }
                    total += 1;
                }
                Ok(UserPage { users, total })
            })
            .await
    }
}
