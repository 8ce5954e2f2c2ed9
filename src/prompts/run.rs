//! A prompt's request and its run: what the service hands the runner, and what streams read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::log::{EventLog, Reader};
use crate::model::Provider;

/// The body of `POST /api/prompts/execute`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromptRequest {
    pub user_id: String,
    #[schema(schema_with = provider_schema)]
    pub provider: Provider,
    /// Not blank, without NUL, at most the configured size (`MC_MAX_PROMPT_BYTES`).
    #[schema(
        pattern = r"^[^\x00]*[^\x00\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00]*$"
    )]
    pub prompt: String,
    /// The CLI's model; its default when absent.
    #[schema(pattern = "^[A-Za-z0-9._:/@-]{1,100}$")]
    pub model: Option<String>,
    /// The run's time limit in seconds, up to the configured maximum
    /// (`MC_PROMPT_MAX_TIMEOUT_SECS`, 3600 unless set); the configured default when absent.
    #[schema(minimum = 1, maximum = 3600)]
    #[serde(default, deserialize_with = "crate::model::whole_number")]
    pub timeout_sec: Option<u64>,
    /// Whether the run is cancelled when the client that started it goes away.
    #[serde(default)]
    pub cancel_on_disconnect: bool,
    /// The conversation this prompt continues; a new one when absent.
    pub conversation_id: Option<String>,
    /// Where the CLI runs, relative to the workspace root: a new conversation's directory (a
    /// follow-up runs where its conversation does). Relative, without a `..` component or
    /// control characters, at most 1024 bytes.
    #[schema(
        pattern = r"^(?:(?:\.|[^./\x00-\x1F\x7F-\x9F][^/\x00-\x1F\x7F-\x9F]*|\.[^./\x00-\x1F\x7F-\x9F][^/\x00-\x1F\x7F-\x9F]*|\.\.[^/\x00-\x1F\x7F-\x9F]+)(?:/(?:\.|[^./\x00-\x1F\x7F-\x9F][^/\x00-\x1F\x7F-\x9F]*|\.[^./\x00-\x1F\x7F-\x9F][^/\x00-\x1F\x7F-\x9F]*|\.\.[^/\x00-\x1F\x7F-\x9F]+)?)*)?$"
    )]
    pub cwd: Option<String>,
}

/// A provider's API name, for the API document.
fn provider_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(crate::providers::all().map(|p| p.as_str())))
        .description(Some("The CLI"))
        .build()
}

/// A prompt being run (or recently run): its events, and the means to stop it.
pub struct PromptRun {
    pub id: String,
    pub user_id: String,
    pub log: Arc<EventLog>,
    pub cancel: CancellationToken,
    pub cancel_on_disconnect: bool,
    finished: AtomicBool,
}

impl PromptRun {
    pub(super) fn new(
        id: String,
        user_id: String,
        log: Arc<EventLog>,
        cancel_on_disconnect: bool,
    ) -> PromptRun {
        PromptRun {
            id,
            user_id,
            log,
            cancel: CancellationToken::new(),
            cancel_on_disconnect,
            finished: AtomicBool::new(false),
        }
    }
}

impl PromptRun {
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    pub(super) fn mark_finished(&self) {
        self.finished.store(true, Ordering::Release);
    }

    /// A stream of this run's events after `last_event_id`.
    pub fn reader(&self, last_event_id: u64) -> Reader {
        self.log.reader(last_event_id)
    }
}
