use serde::{Deserialize, Serialize};

use super::{named_enum, transitions};
use crate::store::Record;

named_enum!(UserStatus, "user status" {
    Created => "created",
    Authenticating => "authenticating",
    Authenticated => "authenticated",
    Active => "active",
    Hibernated => "hibernated",
    Failed => "failed",
    VmDestroyed => "vm_destroyed",
});

transitions!(UserStatus, "user" {
    Created => [Authenticating, Authenticated, Active, Failed, VmDestroyed],
    Authenticating => [Created, Authenticated, Failed],
    Authenticated => [Authenticating, Active, Hibernated, Failed, VmDestroyed],
    Active => [Authenticating, Hibernated, Failed, VmDestroyed],
    Hibernated => [Authenticating, Active, Failed, VmDestroyed],
    Failed => [Created, Authenticating, Active, VmDestroyed],
    VmDestroyed => [Created, Authenticating, Active],
});

named_enum!(Plan, "plan" {
    Free => "free",
    Pro => "pro",
    Enterprise => "enterprise",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub email: String,
    pub supabase_auth_id: Option<String>,
    pub plan: Plan,
    pub status: UserStatus,
    /// The user's dedicated upstream proxy port, once leased.
    pub decodo_port: Option<u16>,
    pub prompt_count: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_active_at_ms: Option<i64>,
    /// Bumped on every change; the Supabase mirror ignores writes older than its row.
    pub version: u64,
}

impl Record for User {
    const KIND: &'static str = "user";
    const VERSION: u16 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelError, Status};

    #[test]
    fn legal_and_illegal_transitions() {
        let mut status = UserStatus::Created;
        status.transition(UserStatus::Active).unwrap();
        status.transition(UserStatus::Hibernated).unwrap();
        status.transition(UserStatus::Hibernated).unwrap();
        let err = status.transition(UserStatus::Created).unwrap_err();
        assert_eq!(
            err,
            ModelError::IllegalTransition {
                entity: "user",
                from: "hibernated",
                to: "created"
            }
        );
        assert_eq!(status, UserStatus::Hibernated);
    }

    #[test]
    fn parses_names() {
        assert_eq!(
            "vm_destroyed".parse::<UserStatus>().unwrap(),
            UserStatus::VmDestroyed
        );
        let err = "gold".parse::<Plan>().unwrap_err().to_string();
        assert!(err.contains("free, pro, enterprise"), "{err}");
    }
}
