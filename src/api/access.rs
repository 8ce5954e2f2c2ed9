//! Request ids and the access log. The accept loop ([`super::serve`]) sees every request and
//! every response, including warp's own 404s and 405s, the 401s of the routes and the 101s of
//! WebSocket upgrades, so it is where a request gets its id and its one `access` log line.
//!
//! The id is the client's `X-Request-Id` when that is a sane token, else a new UUIDv7 (time
//! ordered, so ids sort like the log). It is returned in `X-Request-Id` on the response and
//! carried by a `request` span around the handling, so the handlers' log lines carry it too.

use std::net::SocketAddr;
use std::time::Instant;

use warp::http::{HeaderName, HeaderValue};
use warp::reply::Response;

/// The request and response header that carries the id.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-sent id kept; a longer one is replaced.
const MAX_ID_LEN: usize = 128;

/// The request's id, in the request's extensions for any handler that wants it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The route template a response came from (`/api/vms/:vmId`), left in the response's
/// extensions by the route plumbing so the access log names the route without its ids.
#[derive(Debug, Clone, Copy)]
pub struct RouteTemplate(pub &'static str);

/// A client's id is logged and echoed, so it is kept only when it cannot forge log fields or
/// headers: 1 to 128 characters of letters, digits and `._:-`.
pub fn sane_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// What the access line needs from the request, taken before the request is handed on.
pub struct Access {
    id: String,
    method: String,
    /// The path only: a query string can carry a WebSocket client's `?token=`, so it is never
    /// logged.
    path: String,
    peer: SocketAddr,
    started: Instant,
}

impl Access {
    /// Gives `request` its id (in its extensions) and returns the access record and the span
    /// to run its handling in.
    pub fn begin<B>(request: &mut hyper::Request<B>, peer: SocketAddr) -> (Access, tracing::Span) {
        let id = request
            .headers()
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| sane_id(v))
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        request.extensions_mut().insert(RequestId(id.clone()));
        let span = tracing::info_span!("request", id = %id);
        let access = Access {
            id,
            method: request.method().to_string(),
            path: request.uri().path().to_string(),
            peer,
            started: Instant::now(),
        };
        (access, span)
    }

    /// Sets the id header on `response` and writes the access line. For a stream (SSE, a
    /// download) and a WebSocket upgrade this is when the headers are sent, so the duration is
    /// the time to the headers, not the life of the stream.
    pub fn finish(self, mut response: Response) -> Response {
        if let Ok(value) = HeaderValue::from_str(&self.id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        let route = response
            .extensions()
            .get::<RouteTemplate>()
            .map_or("-", |r| r.0);
        let status = response.status().as_u16();
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            route = %route,
            status,
            duration_ms = format_args!("{duration_ms:.1}"),
            peer = %self.peer,
            request_id = %self.id,
            "request"
        );
        response
    }
}

#[cfg(test)]
#[path = "access_tests.rs"]
mod tests;
