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

impl AuthSessionStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Timeout
        )
    }
}

/// A login relayed from a CLI in the user's VM. No binary ever wrote the first shape of this
/// record, so its version stays 1.
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
    pub vm_id: Option<String>,
    /// What the user must do, as the CLI printed it.
    pub auth_url: Option<String>,
    pub device_code: Option<String>,
    pub verification_url: Option<String>,
    pub instructions: Option<String>,
    /// Last state change or user action; the idle timeout counts from here.
    pub last_activity_ms: i64,
    pub completed_at_ms: Option<i64>,
    /// Started by `rotate`: the old credential stays in use until this one completes.
    pub rotation: bool,
}

impl Record for AuthSession {
    const KIND: &'static str = "auth_session";
    const VERSION: u16 = 1;
}
