//! The one place where errors become HTTP statuses. Every error body is
//! `{"error":{"code":"stable_snake_case","message":"..."}}`.

use serde_json::{Value, json};
use warp::http::{StatusCode, header};
use warp::reply::Response;

use crate::model::ModelError;
use crate::store::StoreError;
use crate::users::UserError;
use crate::vms::VmError;

use super::views::UserView;

#[derive(Debug, Clone)]
pub enum ApiError {
    BadRequest {
        code: &'static str,
        message: String,
    },
    Unauthorized(String),
    Forbidden(String),
    NotFound {
        code: &'static str,
        message: String,
    },
    Conflict {
        code: &'static str,
        message: String,
        /// Extra top-level fields of the body, such as the existing user on a duplicate.
        extra: Option<(&'static str, Value)>,
    },
    RateLimited {
        retry_after_secs: u64,
    },
    PayloadTooLarge {
        limit: u64,
    },
    MethodNotAllowed,
    Unavailable {
        code: &'static str,
        message: String,
    },
    /// Too much at once for one resource (not the per-token rate limit).
    Busy {
        code: &'static str,
        message: String,
    },
    /// The host below us (hypervisor, guest) failed the operation.
    BadGateway {
        code: &'static str,
        message: String,
    },
    Internal(String),
}

impl ApiError {
    pub fn invalid_field(field: &str, reason: impl std::fmt::Display) -> ApiError {
        ApiError::BadRequest {
            code: "invalid_field",
            message: format!("{field}: {reason}"),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code_and_message(&self) -> (&'static str, String) {
        match self {
            ApiError::BadRequest { code, message }
            | ApiError::NotFound { code, message }
            | ApiError::Conflict { code, message, .. }
            | ApiError::Unavailable { code, message }
            | ApiError::BadGateway { code, message }
            | ApiError::Busy { code, message } => (code, message.clone()),
            ApiError::Unauthorized(message) => ("unauthorized", message.clone()),
            ApiError::Forbidden(message) => ("forbidden", message.clone()),
            ApiError::RateLimited { retry_after_secs } => (
                "rate_limited",
                format!("too many requests; retry after {retry_after_secs} s"),
            ),
            ApiError::PayloadTooLarge { limit } => (
                "payload_too_large",
                format!("request body is larger than {limit} bytes"),
            ),
            ApiError::MethodNotAllowed => (
                "method_not_allowed",
                "this route does not take that method".into(),
            ),
            // The detail is logged, never sent: it may name paths or internals.
            ApiError::Internal(_) => ("internal", "internal error; see the daemon log".into()),
        }
    }

    pub fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "request failed");
        }
        let (code, message) = self.code_and_message();
        let mut body = json!({ "error": { "code": code, "message": message } });
        if let ApiError::Conflict {
            extra: Some((key, value)),
            ..
        } = &self
        {
            body[*key] = value.clone();
        }
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), status).into_response_inner();
        if let ApiError::RateLimited { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs.into());
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// `warp::Reply::into_response` under a name that does not clash with ours.
pub(super) trait IntoResponseInner {
    fn into_response_inner(self) -> Response;
}

impl<T: warp::Reply> IntoResponseInner for T {
    fn into_response_inner(self) -> Response {
        warp::Reply::into_response(self)
    }
}

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
            ConversationError::Invalid { .. } | ConversationError::WrongProvider { .. } => {
                ApiError::BadRequest { code, message }
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

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        let message = e.to_string();
        let code = match e.classify() {
            serde_json::error::Category::Data if message.starts_with("unknown field") => {
                "unknown_field"
            }
            serde_json::error::Category::Data if message.starts_with("missing field") => {
                "missing_field"
            }
            serde_json::error::Category::Data => "invalid_field",
            _ => "invalid_json",
        };
        ApiError::BadRequest { code, message }
    }
}

/// Maps warp's own rejections (no route, wrong method) to our error body.
pub fn from_rejection(rejection: &warp::Rejection) -> ApiError {
    if rejection.is_not_found() {
        ApiError::NotFound {
            code: "route_not_found",
            message: "no such route".into(),
        }
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::BadRequest {
            code: "invalid_query",
            message: "the query string is malformed".into(),
        }
    } else {
        ApiError::BadRequest {
            code: "bad_request",
            message: format!("{rejection:?}"),
        }
    }
}
