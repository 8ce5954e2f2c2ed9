//! The normalised event stream every provider's CLI output is translated into. Each event is
//! one SSE frame: `event: <type>`, `id: <seq>`, `data: {"type": <type>, ...}`.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum PromptEvent {
    Connected {
        prompt_id: String,
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

    /// The SSE frame for this event as event number `id` of its prompt.
    pub fn to_sse(&self, id: u64) -> String {
        let data = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        format!("event: {}\nid: {id}\ndata: {data}\n\n", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_keep_the_seed_shape_and_add_event_and_id() {
        let frame = PromptEvent::content("hi").to_sse(7);
        assert_eq!(
            frame,
            "event: content\nid: 7\ndata: {\"type\":\"content\",\"text\":\"hi\"}\n\n"
        );
        let done = PromptEvent::Done {
            exit_code: Some(0),
            usage: None,
            duration_ms: 12,
        };
        let data: Value = serde_json::from_str(
            done.to_sse(8)
                .lines()
                .nth(2)
                .unwrap()
                .trim_start_matches("data: "),
        )
        .unwrap();
        assert_eq!(
            data,
            json!({"type": "done", "exitCode": 0, "usage": null, "durationMs": 12})
        );
        let meta = PromptEvent::metadata("tool_use", json!({"name": "Bash"}));
        assert_eq!(
            serde_json::to_value(&meta).unwrap(),
            json!({"type": "metadata", "kind": "tool_use", "name": "Bash"})
        );
        assert!(done.is_final() && !meta.is_final());
    }
}
