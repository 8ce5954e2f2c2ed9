//! Conversations: the turns one user has with one CLI, carried from turn to turn by the CLI's
//! own session. This module keeps their records and indexes; running a turn is the prompt
//! service's (it starts or resumes a conversation here, then links each prompt to it).
//!
//! A conversation belongs to one user and one provider, and its turns run in one directory.
//! Its CLI session lives on one VM: `bind_session` records it after a turn, `expire` marks it
//! gone (the next turn starts a new session, and binding it clears the mark).
//!
//! Deleting a conversation keeps its prompts, which stay in the user's history as prompts of
//! no conversation (their `conversation_id` is cleared). Deleting a user deletes their
//! conversations with them (`remove_user_conversations`, in the user delete's transaction).

mod records;
mod service;

use crate::providers::Provider;
use crate::store::StoreError;

pub use records::{MAX_PAGE, normalize_cwd, remove_user_conversations};
pub use service::ConversationService;

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("user {0} not found")]
    UserNotFound(String),
    #[error("conversation {0} not found")]
    NotFound(String),
    #[error("prompt {0} not found")]
    PromptNotFound(String),
    #[error("conversation {id} belongs to another user")]
    NotOwner { id: String },
    #[error("conversation {id} is with {expected}, not {requested}")]
    WrongProvider {
        id: String,
        expected: Provider,
        requested: Provider,
    },
    #[error("conversation {id} runs in {cwd:?}; its CLI finds its session only there")]
    WrongCwd { id: String, cwd: String },
    #[error("prompt {prompt_id} is already a turn of conversation {conversation_id}")]
    PromptTaken {
        prompt_id: String,
        conversation_id: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::lift_redb_errors!(ConversationError);

impl ConversationError {
    /// The machine-readable code clients see for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ConversationError::Invalid { .. } => "invalid_field",
            ConversationError::UserNotFound(_) => "user_not_found",
            ConversationError::NotFound(_) => "conversation_not_found",
            ConversationError::PromptNotFound(_) => "prompt_not_found",
            ConversationError::NotOwner { .. } => "forbidden",
            ConversationError::WrongProvider { .. } => "conversation_provider_mismatch",
            ConversationError::WrongCwd { .. } => "conversation_cwd_mismatch",
            ConversationError::PromptTaken { .. } => "prompt_in_other_conversation",
            ConversationError::Store(_) => "internal",
        }
    }
}
