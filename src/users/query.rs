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

/// Where a page of the list starts.
#[derive(Debug, Clone)]
pub enum PageStart {
    /// After the user with this id (the cursor style of every list); `None`: the first page.
    After(Option<String>),
    /// The `n`th page, from 1 (the older style, kept for existing clients).
    Number(usize),
}

impl UserService {
    /// A page of the users that match `filter`, in creation order (ids are UUIDv7); `total`
    /// counts every match, and `next_cursor` is the last id when more follow.
    pub async fn list_filtered(
        &self,
        filter: UserFilter,
        start: PageStart,
        page_size: usize,
    ) -> Result<UserPage, UserError> {
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let (skip, after) = match start {
            PageStart::After(after) => (0, after),
            PageStart::Number(n) => (n.saturating_sub(1).saturating_mul(page_size), None),
        };
        let email = filter.email.as_deref().map(str::to_lowercase);
        self.store
            .read(move |tx| {
                let table = tx.open_table(tables::USERS)?;
                let mut users = Vec::with_capacity(page_size);
                let (mut total, mut passed, mut more) = (0u64, 0usize, false);
                for entry in redb::ReadableTable::iter(&table)? {
                    let (key, value) = entry.map_err(StoreError::from)?;
                    let user: User = value.value().decode()?;
                    if !filter.matches(&user, email.as_deref()) {
                        continue;
                    }
                    total += 1;
                    if after.as_deref().is_some_and(|a| key.value() <= a) {
                        continue;
                    }
                    passed += 1;
                    if passed <= skip {
                        continue;
                    }
                    if users.len() < page_size {
                        users.push(user);
                    } else {
                        more = true;
                    }
                }
                let next_cursor = if more {
                    users.last().map(|u| u.id.clone())
                } else {
                    None
                };
                Ok(UserPage {
                    users,
                    total,
                    next_cursor,
                })
            })
            .await
    }
}
