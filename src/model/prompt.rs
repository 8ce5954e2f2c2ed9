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
    /// The conversation the prompt is a turn of.
    pub conversation_id: Option<String>,
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

/// The second stored shape, before conversations.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct PromptV2 {
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
    model: Option<String>,
    prompt_bytes: u64,
    response_text: String,
    response_truncated: bool,
    first_content_ms: Option<u64>,
    duration_ms: Option<u64>,
    usage_json: Option<String>,
}

impl From<PromptV2> for Prompt {
    fn from(old: PromptV2) -> Prompt {
        Prompt {
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
            model: old.model,
            prompt_bytes: old.prompt_bytes,
            response_text: old.response_text,
            response_truncated: old.response_truncated,
            first_content_ms: old.first_content_ms,
            duration_ms: old.duration_ms,
            usage_json: old.usage_json,
            conversation_id: None,
        }
    }
}

impl Record for Prompt {
    const KIND: &'static str = "prompt";
    const VERSION: u16 = 3;

    fn upgrade(version: u16, payload: &[u8]) -> Result<Self, crate::store::StoreError> {
        use crate::store::codec::decode_payload;
        match version {
            1 => Ok(Prompt::from_v1(decode_payload::<PromptV1, Prompt>(
                payload,
            )?)),
            2 => Ok(decode_payload::<PromptV2, Prompt>(payload)?.into()),
            _ => Err(crate::store::codec::unknown_version::<Self>(version)),
        }
    }
}

impl Prompt {
    fn from_v1(old: PromptV1) -> Prompt {
        Prompt {
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
            conversation_id: None,
        }
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

    // An older shape encoded as the binary of its time wrote it: the same kind, its version.
    impl Record for PromptV2 {
        const KIND: &'static str = "prompt";
        const VERSION: u16 = 2;
    }

    #[test]
    fn a_prompt_stored_before_conversations_still_decodes() {
        let old = PromptV2 {
            id: "p1".into(),
            user_id: "u1".into(),
            vm_id: Some("vm1".into()),
            provider: crate::providers::CODEX,
            status: PromptStatus::Completed,
            created_at_ms: 5,
            started_at_ms: Some(6),
            completed_at_ms: Some(7),
            exit_code: Some(0),
            error: None,
            version: 4,
            model: Some("m".into()),
            prompt_bytes: 3,
            response_text: "hi".into(),
            response_truncated: false,
            first_content_ms: Some(1),
            duration_ms: Some(2),
            usage_json: None,
        };
        let bytes = crate::store::codec::encode(&old).expect("encode");
        let prompt: Prompt = crate::store::codec::decode(&bytes).expect("decodes");
        assert_eq!(prompt.conversation_id, None);
        assert_eq!(prompt.response_text, "hi");
        assert_eq!(prompt.version, 4);
        assert_eq!(prompt.provider, crate::providers::CODEX);
        let again = crate::store::codec::encode(&prompt).expect("encode");
        assert_eq!(&again[1..3], &3u16.to_le_bytes());
        assert_eq!(
            crate::store::codec::decode::<Prompt>(&again).expect("decode"),
            prompt
        );
    }

    #[test]
    fn a_first_shape_prompt_still_decodes() {
        #[derive(Serialize, Deserialize)]
        struct V1 {
            id: String,
            user_id: String,
            vm_id: Option<String>,
            provider: crate::providers::Provider,
            status: PromptStatus,
            created_at_ms: i64,
            started_at_ms: Option<i64>,
            completed_at_ms: Option<i64>,
            exit_code: Option<i32>,
            error: Option<String>,
            version: u64,
        }
        let old = V1 {
            id: "p0".into(),
            user_id: "u1".into(),
            vm_id: None,
            provider: crate::providers::CLAUDE_CODE,
            status: PromptStatus::Failed,
            created_at_ms: 1,
            started_at_ms: None,
            completed_at_ms: None,
            exit_code: None,
            error: Some("e".into()),
            version: 1,
        };
        impl Record for V1 {
            const KIND: &'static str = "prompt";
            const VERSION: u16 = 1;
        }
        let bytes = crate::store::codec::encode(&old).expect("encode");
        let prompt: Prompt = crate::store::codec::decode(&bytes).expect("decodes");
        assert_eq!(prompt.id, "p0");
        assert_eq!(prompt.conversation_id, None);
        assert_eq!(prompt.error.as_deref(), Some("e"));
    }
}
