//! A fake AI model server for the real CLIs: the Anthropic Messages, OpenAI Responses and
//! Gemini streamGenerateContent SSE shapes, the smallest each CLI accepts (measured against the
//! pinned CLIs). It streams its words one event each (with a delay between
//! them), or stalls after the first word, or answers 500. Plain HTTP/1.1 with `connection:
//! close`, so a response body ends when the connection does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Every word, then the end of the message.
    Stream,
    /// The first word (nothing at all for OpenAI, which sends no words on their own), then
    /// nothing, with the connection held open.
    Stall,
    /// `500` with a JSON error body.
    Fail,
}

#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

struct State {
    words: Vec<String>,
    delay: Duration,
    behaviour: Behaviour,
    seen: Vec<SeenRequest>,
}

#[derive(Clone)]
pub struct ModelServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl ModelServer {
    /// Listens on an ephemeral port of 127.0.0.1.
    pub async fn start(words: &[&str], delay: Duration) -> ModelServer {
        ModelServer::start_on("127.0.0.1:0", words, delay).await
    }

    /// Listens on `addr` (guests reach a server on every address of a test's own namespace).
    pub async fn start_on(addr: &str, words: &[&str], delay: Duration) -> ModelServer {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            words: words.iter().map(|w| w.to_string()).collect(),
            delay,
            behaviour: Behaviour::Stream,
            seen: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        ModelServer {
            addr,
            state,
            task: Arc::new(task),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.lock().behaviour = behaviour;
    }

    /// The full answer text, as the words joined.
    pub fn text(&self) -> String {
        self.lock().words.concat()
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.lock().seen.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Api {
    Anthropic,
    OpenAi,
    Gemini,
}

async fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
            if name == "content-length" {
                length = value.parse().unwrap_or(0);
            }
            headers.push((name, value));
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).await.is_err() {
        return;
    }
    let (words, delay, behaviour) = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        state.seen.push(SeenRequest {
            method: method.clone(),
            path: path.clone(),
            headers,
            body: String::from_utf8_lossy(&body).to_string(),
        });
        (state.words.clone(), state.delay, state.behaviour)
    };
    let mut stream = reader.into_inner();
    let api = if path.starts_with("/v1/messages") {
        Api::Anthropic
    } else if path.starts_with("/v1/responses") {
        Api::OpenAi
    } else if path.contains(":streamGenerateContent") {
        Api::Gemini
    } else {
        // Warm-ups (`HEAD /`) and anything else: an empty 200.
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    };
    if behaviour == Behaviour::Fail {
        let body =
            json!({"error": {"type": "api_error", "message": "the fake model server failed"}})
                .to_string();
        let response = format!(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        return;
    }
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    // With `Stall`, how many events go out before the server falls silent.
    let (events, stall_after) = match api {
        Api::Anthropic => match read_request(&body) {
            Some(path) => (anthropic_read_tool(&path), usize::MAX),
            None => (anthropic(&words), 3),
        },
        Api::OpenAi => (openai(&words), 0),
        Api::Gemini => (gemini(&words), 1),
    };
    for (n, event) in events.iter().enumerate() {
        if behaviour == Behaviour::Stall && n == stall_after {
            // Hold the connection open until the client gives up.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        if stream.write_all(event.as_bytes()).await.is_err() {
            return;
        }
        let _ = stream.flush().await;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// A prompt that says `READ-FILE:<absolute path>` gets, as its first answer, a call of Claude
/// Code's `Read` tool on that path, the way a model asks a CLI to read a file; the CLI's next
/// request then carries the file's content as the tool's result. Once a tool result is in the
/// conversation the answer is the usual words.
pub const READ_FILE_MARKER: &str = "READ-FILE:";

fn read_request(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    if text.contains("\"tool_result\"") {
        return None;
    }
    let at = text.find(READ_FILE_MARKER)? + READ_FILE_MARKER.len();
    let path: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
        .collect();
    path.starts_with('/').then_some(path)
}

fn anthropic_read_tool(path: &str) -> Vec<String> {
    let input = json!({ "file_path": path }).to_string();
    vec![
        sse(
            Some("message_start"),
            json!({"type": "message_start", "message": {"id": "msg_fake_tool", "type": "message",
                "role": "assistant", "model": "fake", "content": [],
                "usage": {"input_tokens": 3, "output_tokens": 0}}}),
        ),
        sse(
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use",
                "id": "toolu_fake_read", "name": "Read", "input": {}}}),
        ),
        sse(
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": input}}),
        ),
        sse(
            Some("content_block_stop"),
            json!({"type": "content_block_stop", "index": 0}),
        ),
        sse(
            Some("message_delta"),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 5}}),
        ),
        sse(Some("message_stop"), json!({"type": "message_stop"})),
    ]
}

fn sse(event: Option<&str>, data: serde_json::Value) -> String {
    match event {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// Anthropic Messages: `event:` lines are required.
fn anthropic(words: &[String]) -> Vec<String> {
    let mut events = vec![
        sse(
            Some("message_start"),
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message",
                "role": "assistant", "model": "fake", "content": [],
                "usage": {"input_tokens": 3, "output_tokens": 0}}}),
        ),
        sse(
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for word in words {
        events.push(sse(
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": word}}),
        ));
    }
    events.push(sse(
        Some("content_block_stop"),
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(sse(
        Some("message_delta"),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": words.len()}}),
    ));
    events.push(sse(Some("message_stop"), json!({"type": "message_stop"})));
    events
}

/// OpenAI Responses: the two data-only events Codex needs; in `--json` mode it shows no
/// per-token deltas, so the whole message comes in one item (after the per-word delay).
fn openai(words: &[String]) -> Vec<String> {
    vec![
        sse(
            None,
            json!({"type": "response.output_item.done", "item": {"type": "message",
                "role": "assistant", "content": [{"type": "output_text", "text": words.concat()}]}}),
        ),
        sse(
            None,
            json!({"type": "response.completed", "response": {"id": "resp_fake",
                "usage": {"input_tokens": 3, "output_tokens": words.len(), "total_tokens": 3 + words.len()}}}),
        ),
    ]
}

/// Gemini streamGenerateContent: one candidate chunk per word, the last with `finishReason`.
fn gemini(words: &[String]) -> Vec<String> {
    words
        .iter()
        .enumerate()
        .map(|(n, word)| {
            let mut candidate = json!({"content": {"role": "model", "parts": [{"text": word}]}});
            if n + 1 == words.len() {
                candidate["finishReason"] = json!("STOP");
            }
            sse(
                None,
                json!({"candidates": [candidate],
                    "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": n + 1}}),
            )
        })
        .collect()
}
