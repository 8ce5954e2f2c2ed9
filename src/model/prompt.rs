use serde::{Deserialize, Serialize};

use super::{named_enum, transitions};
use crate::providers::Provider;
use crate::store::Record;

named_enum!(PromptStatus, "prompt status" {
    Pending => "pending",
    Streaming => "streaming",
    Completed => "completed",
    Failed => "failed",
    Cancelled => "cancelled",
});

transitions!(PromptStatus, "prompt" {
    Pending => [Streaming, Failed, Cancelled],
    Streaming => [Completed, Failed, Cancelled],
    Completed => [],
    Failed => [],
    Cancelled => [],
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub id: String,
    pub user_id: String,
    pub vm_id: Option<String>,
    pub provider: Provider,
    pub status: PromptStatus,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub completed_at_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub version: u64,
    pub model: Option<String>,
    /// The prompt's length; the text itself is not kept.
    pub prompt_bytes: u64,
    /// The answer's text, cut at the cap (`response_truncated` then says so).
    pub response_text: String,
    pub response_truncated: bool,
    pub first_content_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// The CLI's own usage report, as JSON.
    pub usage_json: Option<String>,
}

/// The first stored shape, before prompts ran.
#[derive(Deserialize)]
struct PromptV1 {
    id: String,
    user_id: String,
    vm_id: Option<String>,
    provider: Provider,
    status: PromptStatus,
    created_at_ms: i64,
    started_at_ms: Option<i64>,
    completed_at_ms: Option<i64>,
    exit_code: Option<i32>,
    error: Option<String>,
    version: u64,
}

impl Record for Prompt {
    const KIND: &'static str = "prompt";
    const VERSION: u16 = 2;

    fn upgrade(version: u16, payload: &[u8]) -> Result<Self, crate::store::StoreError> {
        if version != 1 {
            return Err(crate::store::codec::unknown_version::<Self>(version));
        }
        let old = crate::store::codec::decode_payload::<PromptV1, Prompt>(payload)?;
        Ok(Prompt {
            id: old.id,
            user_id: old.user_id,
            vm_id: old.vm_id,
            provider: old.provider,
            status: old.status,
            created_at_ms: old.created_at_ms,
            started_at_ms: old.started_at_ms,
            completed_at_ms: old.completed_at_ms,
            exit_code: old.exit_code,
            error: old.error,
            version: old.version,
            model: None,
            prompt_bytes: 0,
            response_text: String::new(),
            response_truncated: false,
            first_content_ms: None,
            duration_ms: None,
            usage_json: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;

    #[test]
    fn finished_prompts_stay_finished() {
        let mut status = PromptStatus::Completed;
        assert!(status.transition(PromptStatus::Streaming).is_err());
        assert!(PromptStatus::Pending.can_transition_to(PromptStatus::Cancelled));
    }
}
