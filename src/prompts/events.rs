//! The prompt stream's frames. Each [`PromptEvent`] (the normalised events every provider's CLI
//! output is translated into, defined with the providers) is one SSE frame: `event: <type>`,
//! `id: <seq>`, `data: {"type": <type>, ...}`.

pub use crate::providers::PromptEvent;

impl PromptEvent {
    /// The SSE frame for this event as event number `id` of its prompt.
    pub fn to_sse(&self, id: u64) -> String {
        let data = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        format!("event: {}\nid: {id}\ndata: {data}\n\n", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

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
