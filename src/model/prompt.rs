use serde::{Deserialize, Serialize};

use super::{named_enum, transitions};
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

named_enum!(Provider, "provider" {
    ClaudeCode => "claude_code",
    Codex => "codex",
    GeminiCli => "gemini_cli",
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
}

impl Record for Prompt {
    const KIND: &'static str = "prompt";
    const VERSION: u16 = 1;
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
