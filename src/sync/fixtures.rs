//! A store for unit tests above the write path: users written as the daemon writes them.

use crate::model::{User, UserStatus, tables};

/// A fresh store in a temporary directory holding an active user under each id.
pub async fn store_with_users(ids: &[&str]) -> (tempfile::TempDir, crate::store::Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = crate::store::Store::open(dir.path()).await.expect("store");
    for id in ids {
        let user = User {
            status: UserStatus::Active,
            ..crate::model::fixtures::user(id)
        };
        store
            .write(move |tx| super::put_mirrored(tx, tables::USERS, &user.id, &user))
            .await
            .expect("user");
    }
    (dir, store)
}
