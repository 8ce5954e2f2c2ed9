//! How each service's errors become HTTP answers: the status and stable code of every variant.

use serde_json::{Value, json};

use super::ApiError;
use crate::api::views::UserView;
use crate::model::ModelError;
use crate::store::StoreError;
use crate::users::UserError;
use crate::vms::VmError;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let code = e.code();
        match e {
            ModelError::IllegalTransition { .. } => ApiError::Conflict {
                code,
                message: e.to_string(),
                extra: None,
            },
            ModelError::UnknownVariant { .. } => ApiError::BadRequest {
                code,
                message: e.to_string(),
            },
        }
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::NotFound(_) => ApiError::NotFound {
                code: "user_not_found",
                message: e.to_string(),
            },
            UserError::DuplicateEmail { ref existing } => ApiError::Conflict {
                code: "user_exists",
                message: e.to_string(),
                extra: Some(("user", json!(UserView::from(existing.as_ref())))),
            },
            UserError::Invalid { field, reason } => ApiError::invalid_field(field, reason),
            UserError::VmAppeared { .. } => ApiError::Conflict {
                code: "user_busy",
                message: e.to_string(),
                extra: None,
            },
            // A busy VM is a 409 `vm_busy`, as on the VM routes.
            UserError::Vm(e) => e.into(),
            UserError::Egress(e) => e.into(),
            UserError::Transition(e) => e.into(),
            UserError::Store(e) => e.into(),
        }
    }
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        let code = e.code();
        let message = e.to_string();
        match e {
            VmError::NotFound(_) | VmError::NoVm(_) | VmError::UserNotFound(_) => {
                ApiError::NotFound { code, message }
            }
            VmError::NotAlive { .. }
            | VmError::NotRunning { .. }
            | VmError::AlreadyHasVm { .. }
            | VmError::WrongStatus { .. }
            | VmError::Busy { .. } => ApiError::Conflict {
                code,
                message,
                extra: None,
            },
            VmError::TooManyVms { .. }
            | VmError::PoolExhausted { .. }
            | VmError::NotConfigured(_)
            | VmError::AgentUnavailable { .. } => ApiError::Unavailable { code, message },
            VmError::CrashLoop { .. } => ApiError::Busy { code, message },
            VmError::Host { .. } => ApiError::BadGateway { code, message },
            VmError::Corrupt(_) => ApiError::Internal(message),
            VmError::Egress(e) => e.into(),
            VmError::Transition(e) => e.into(),
            VmError::Store(e) => e.into(),
        }
    }
}

impl From<crate::net::egress::EgressError> for ApiError {
    fn from(e: crate::net::egress::EgressError) -> Self {
        use crate::net::egress::EgressError;
        let code = e.code();
        let message = e.to_string();
        match e {
            EgressError::PoolExhausted { .. } => ApiError::Unavailable { code, message },
            EgressError::UserNotFound(_) => ApiError::NotFound { code, message },
            EgressError::Bind { .. } => ApiError::Internal(message),
            EgressError::Store(e) => e.into(),
        }
    }
}

impl From<crate::prompts::PromptError> for ApiError {
    fn from(e: crate::prompts::PromptError) -> Self {
        use crate::prompts::PromptError;
        let message = e.to_string();
        match e {
            PromptError::Invalid { .. } => ApiError::BadRequest {
                code: "invalid_field",
                message,
            },
            PromptError::UserNotFound(_) => ApiError::NotFound {
                code: "user_not_found",
                message,
            },
            PromptError::NotFound(_) => ApiError::NotFound {
                code: "prompt_not_found",
                message,
            },
            PromptError::Busy { .. } => ApiError::Busy {
                code: "prompt_busy",
                message,
            },
            PromptError::Finished { .. } => ApiError::Conflict {
                code: "prompt_finished",
                message,
                extra: None,
            },
            PromptError::NotStreaming(_) => ApiError::Conflict {
                code: "prompt_not_streaming",
                message,
                extra: None,
            },
            PromptError::ConversationBusy(_) => ApiError::Conflict {
                code: "conversation_busy",
                message,
                extra: None,
            },
            PromptError::ConversationExpired(_) => ApiError::Conflict {
                code: "conversation_expired",
                message,
                extra: None,
            },
            PromptError::Conversation(e) => e.into(),
            PromptError::Vm(e) => e.into(),
            PromptError::Transition(e) => e.into(),
            PromptError::Store(e) => e.into(),
        }
    }
}

impl From<crate::workspace::WorkspaceError> for ApiError {
    fn from(e: crate::workspace::WorkspaceError) -> Self {
        use crate::guest::workspace::WorkspaceError as Files;
        use crate::workspace::WorkspaceError;
        let message = e.to_string();
        match e {
            WorkspaceError::Invalid { .. } => ApiError::BadRequest {
                code: "invalid_field",
                message,
            },
            WorkspaceError::TooLarge { max } => ApiError::PayloadTooLarge { limit: max },
            WorkspaceError::ExecNotFound(_) => ApiError::NotFound {
                code: "exec_not_found",
                message,
            },
            WorkspaceError::Busy { .. } => ApiError::Busy {
                code: "exec_busy",
                message,
            },
            WorkspaceError::Vm(e) => e.into(),
            WorkspaceError::Files(e) => {
                let code = e.code();
                match e {
                    Files::BadPath(_) | Files::Escapes(_) => ApiError::BadRequest { code, message },
                    Files::NotFound(_) => ApiError::NotFound { code, message },
                    Files::PermissionDenied(_) => ApiError::Forbidden(message),
                    Files::TooLarge { max } => ApiError::PayloadTooLarge { limit: max },
                    Files::NotADirectory(_) | Files::IsADirectory(_) => ApiError::Conflict {
                        code,
                        message,
                        extra: None,
                    },
                    Files::Guest(_) | Files::Failed(_) => ApiError::BadGateway { code, message },
                }
            }
        }
    }
}

impl From<crate::conversations::ConversationError> for ApiError {
    fn from(e: crate::conversations::ConversationError) -> Self {
        use crate::conversations::ConversationError;
        let code = e.code();
        let message = e.to_string();
        match e {
            ConversationError::Invalid { .. } => ApiError::BadRequest { code, message },
            // A well-formed follow-up that the conversation's state refuses.
            ConversationError::WrongProvider { .. } | ConversationError::WrongCwd { .. } => {
                ApiError::Conflict {
                    code,
                    message,
                    extra: None,
                }
            }
            ConversationError::UserNotFound(_)
            | ConversationError::NotFound(_)
            | ConversationError::PromptNotFound(_) => ApiError::NotFound { code, message },
            ConversationError::NotOwner { .. } => ApiError::Forbidden(message),
            ConversationError::PromptTaken { .. } => ApiError::Conflict {
                code,
                message,
                extra: None,
            },
            ConversationError::Store(e) => e.into(),
        }
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::{AuthError, VaultError};
        let message = e.to_string();
        match e {
            AuthError::UserNotFound(_) => ApiError::NotFound {
                code: "user_not_found",
                message,
            },
            AuthError::SessionNotFound(_) => ApiError::NotFound {
                code: "auth_session_not_found",
                message,
            },
            AuthError::NoCredential { .. } => ApiError::NotFound {
                code: "credential_not_found",
                message,
            },
            AuthError::AlreadyActive { ref session_id, .. } => ApiError::Conflict {
                code: "auth_session_active",
                extra: Some(("sessionId", Value::String(session_id.clone()))),
                message,
            },
            AuthError::NotAwaitingCode { .. } => ApiError::Conflict {
                code: "auth_session_not_awaiting_code",
                message,
                extra: None,
            },
            AuthError::NoCodeExpected { .. } => ApiError::Conflict {
                code: "auth_no_code_expected",
                message,
                extra: None,
            },
            AuthError::BadCode(_) => ApiError::BadRequest {
                code: "invalid_code",
                message,
            },
            AuthError::VaultUnavailable => ApiError::Unavailable {
                code: "vault_unavailable",
                message,
            },
            AuthError::Vault(VaultError::Store(e)) => e.into(),
            AuthError::Vault(_) => ApiError::Unavailable {
                code: "vault_error",
                message,
            },
            AuthError::BadCredential(_) => ApiError::Unavailable {
                code: "credential_unreadable",
                message,
            },
            AuthError::Vm(e) => e.into(),
            AuthError::Guest(_) => ApiError::BadGateway {
                code: "agent_error",
                message,
            },
            AuthError::Transition(e) => e.into(),
            AuthError::Store(e) => e.into(),
        }
    }
}

impl From<crate::sync::SyncError> for ApiError {
    fn from(e: crate::sync::SyncError) -> Self {
        use crate::sync::SyncError;
        let message = e.to_string();
        match e {
            SyncError::NoDeadLetter(_) => ApiError::NotFound {
                code: "dead_letter_not_found",
                message,
            },
            SyncError::UnknownTable(_) => ApiError::Internal(message),
            SyncError::Store(e) => e.into(),
        }
    }
}

impl From<crate::tasks::TaskError> for ApiError {
    fn from(e: crate::tasks::TaskError) -> Self {
        use crate::tasks::TaskError;
        let message = e.to_string();
        match e {
            TaskError::UnknownJob(_) => ApiError::NotFound {
                code: "task_not_found",
                message,
            },
            TaskError::AlreadyRunning(_) => ApiError::Conflict {
                code: "task_running",
                message,
                extra: None,
            },
            TaskError::Vm(e) => e.into(),
            TaskError::Auth(e) => e.into(),
            TaskError::Egress(e) => e.into(),
            TaskError::Store(e) => e.into(),
            TaskError::Duplicate(_)
            | TaskError::Incomplete { .. }
            | TaskError::Panicked(_)
            | TaskError::Failed(_) => ApiError::Internal(message),
        }
    }
}
