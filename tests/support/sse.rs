//! A client for the daemon's SSE streams: frames with `event:`, `id:` and `data:` lines.

use futures_util::StreamExt;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Frame {
    pub event: Option<String>,
    pub id: Option<u64>,
    pub data: Value,
}

impl Frame {
    pub fn kind(&self) -> &str {
        self.data["type"].as_str().unwrap_or_default()
    }
}

/// The text of a stream's `content` frames, joined.
pub fn content_text(frames: &[Frame]) -> String {
    frames
        .iter()
        .filter(|f| f.kind() == "content")
        .filter_map(|f| f.data["text"].as_str())
        .collect()
}

pub struct SseStream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    pub status: u16,
    pub content_type: String,
    /// Comment frames (keep-alives) seen so far.
    pub comments: usize,
    /// The last `retry:` the stream sent, in milliseconds.
    pub retry_ms: Option<u64>,
}

impl SseStream {
    pub fn new(response: reqwest::Response) -> SseStream {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        SseStream {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            status,
            content_type,
            comments: 0,
            retry_ms: None,
        }
    }

    /// The next frame with data (comments and keep-alives are skipped); `None` at the end.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                let mut frame = Frame {
                    event: None,
                    id: None,
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        frame.event = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        frame.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("retry:") {
                        self.retry_ms = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    if raw.starts_with(':') {
                        self.comments += 1;
                    }
                    continue;
                }
                frame.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(frame);
            }
            let chunk = self.body.next().await?.ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Every frame until the stream ends.
    pub async fn collect(mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await {
            frames.push(frame);
        }
        frames
    }
}
