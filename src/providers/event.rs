//! The normalised event stream every CLI's output is translated into. The prompt stream sends
//! each event as one SSE frame (`prompts::events`); the translators here make the `content`
//! and `metadata` ones, the prompt runner the others.

use serde::Serialize;
use serde_json::Value;

/// One event of a prompt's stream: the `data` of its SSE frame, whose `event` is its `type`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum PromptEvent {
    #[schema(rename_all = "camelCase")] // as serde's rename_all_fields
    Connected {
        prompt_id: String,
        /// The conversation the prompt is a turn of (a new one unless the request named one).
        conversation_id: String,
    },
    /// An incremental piece of the answer's text.
    Content {
        text: String,
    },
    /// Progress, tool use, usage, stderr lines: `kind` says which; the rest is the detail.
    Metadata {
        kind: String,
        #[serde(flatten)]
        detail: serde_json::Map<String, Value>,
    },
    #[schema(rename_all = "camelCase")] // as serde's rename_all_fields
    Done {
        exit_code: Option<i32>,
        usage: Option<Value>,
        duration_ms: u64,
    },
    Error {
        code: String,
        message: String,
    },
}

impl PromptEvent {
    pub fn name(&self) -> &'static str {
        match self {
            PromptEvent::Connected { .. } => "connected",
            PromptEvent::Content { .. } => "content",
            PromptEvent::Metadata { .. } => "metadata",
            PromptEvent::Done { .. } => "done",
            PromptEvent::Error { .. } => "error",
        }
    }

    pub fn metadata(kind: &str, detail: Value) -> PromptEvent {
        PromptEvent::Metadata {
            kind: kind.to_string(),
            detail: match detail {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
        }
    }

    pub fn content(text: &str) -> PromptEvent {
        PromptEvent::Content {
            text: text.to_string(),
        }
    }

    /// Whether the stream ends with this event.
    pub fn is_final(&self) -> bool {
        matches!(self, PromptEvent::Done { .. } | PromptEvent::Error { .. })
    }
}
