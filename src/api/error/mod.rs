//! The one place where errors become HTTP statuses. Every error body is
//! `{"error":{"code":"stable_snake_case","message":"..."}}`.

use serde_json::{Value, json};
use warp::http::{StatusCode, header};
use warp::reply::Response;

mod services;

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
        let (code, message) = self.code_and_message();
        // Every 5xx is logged with its cause: a 500's detail is logged only (the body hides
        // it), a 502's is the host's failure, a 503's says what is missing or full. They run
        // inside the request's span, so the line carries the request id.
        match &self {
            ApiError::Internal(detail) => {
                tracing::error!(status = status.as_u16(), code, %detail, "request failed")
            }
            ApiError::BadGateway { .. } => {
                tracing::error!(status = status.as_u16(), code, reason = %message, "request failed")
            }
            ApiError::Unavailable { .. } => {
                tracing::warn!(status = status.as_u16(), code, reason = %message, "request refused")
            }
            _ => {}
        }
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
