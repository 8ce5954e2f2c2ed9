use serde::{Deserialize, Serialize};

use super::{Provider, named_enum, transitions};
use crate::store::Record;

named_enum!(AuthSessionStatus, "auth session status" {
    Created => "created",
    StartingVm => "starting_vm",
    AwaitingUser => "awaiting_user",
    Verifying => "verifying",
    Completed => "completed",
    Failed => "failed",
    Cancelled => "cancelled",
    Timeout => "timeout",
});

transitions!(AuthSessionStatus, "auth session" {
    Created => [StartingVm, Failed, Cancelled, Timeout],
    StartingVm => [AwaitingUser, Failed, Cancelled, Timeout],
    AwaitingUser => [Verifying, Failed, Cancelled, Timeout],
    Verifying => [Completed, AwaitingUser, Failed, Cancelled, Timeout],
    Completed => [],
    Failed => [],
    Cancelled => [],
    Timeout => [],
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthSession {
    pub id: String,
    pub user_id: String,
    pub provider: Provider,
    pub status: AuthSessionStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub error: Option<String>,
    pub version: u64,
}

impl Record for AuthSession {
    const KIND: &'static str = "auth_session";
    const VERSION: u16 = 1;
}
