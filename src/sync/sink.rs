//! Where the mirror's rows go: PostgREST in production; a seam (the `SupabaseSink` trait) so
//! tests can put the real PostgREST wire format, or a scripted fake, behind it.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// Why a send did not land.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SinkError {
    /// Supabase answered with an error status.
    #[error("Supabase answered {status}: {body}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    /// No answer: connection refused, reset, timed out.
    #[error("Supabase is unreachable: {0}")]
    Unreachable(String),
}

#[async_trait]
pub trait SupabaseSink: Send + Sync {
    /// Upserts `rows` (one table, merged on the primary key) in one request.
    async fn upsert(&self, table: &str, rows: &[Value]) -> Result<(), SinkError>;
    /// Deletes one entity (a tombstone).
    async fn delete(&self, table: &str, id: &str) -> Result<(), SinkError>;
}

/// The longest one request may take; Supabase answering slower counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an error body kept (for the dead-letter list and the logs).
const MAX_ERROR_BODY: usize = 2048;

/// PostgREST at `SUPABASE_URL/rest/v1/<table>`, authenticated with the service key.
pub struct PostgRest {
    base: String,
    key: SecretString,
    http: reqwest::Client,
}

impl PostgRest {
    pub fn new(url: &str, key: SecretString) -> Result<PostgRest, SinkError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| SinkError::Unreachable(e.to_string()))?;
        Ok(PostgRest {
            base: format!("{}/rest/v1", url.trim_end_matches('/')),
            key,
            http,
        })
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let key = self.key.expose_secret();
        self.http
            .request(method, url)
            .header("apikey", key)
            .bearer_auth(key)
    }
}

async fn verdict(sent: Result<reqwest::Response, reqwest::Error>) -> Result<(), SinkError> {
    let response = sent.map_err(|e| SinkError::Unreachable(e.without_url().to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = response.text().await.unwrap_or_default();
    if body.len() > MAX_ERROR_BODY {
        let mut cut = MAX_ERROR_BODY;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
    }
    Err(SinkError::Status {
        status: status.as_u16(),
        retry_after,
        body,
    })
}

#[async_trait]
impl SupabaseSink for PostgRest {
    async fn upsert(&self, table: &str, rows: &[Value]) -> Result<(), SinkError> {
        let sent = self
            .request(reqwest::Method::POST, format!("{}/{table}", self.base))
            .header("Prefer", "resolution=merge-duplicates,return=minimal")
            .json(rows)
            .send()
            .await;
        verdict(sent).await
    }

    async fn delete(&self, table: &str, id: &str) -> Result<(), SinkError> {
        let sent = self
            .request(reqwest::Method::DELETE, format!("{}/{table}", self.base))
            .query(&[("id", format!("eq.{id}"))])
            .header("Prefer", "return=minimal")
            .send()
            .await;
        verdict(sent).await
    }
}
