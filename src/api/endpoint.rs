//! The request plumbing every route shares: method matching, authentication, rate limiting,
//! bounded body reading, and turning a handler's result into a response while recording the
//! route's metrics. Handlers get a [`Call`] and return `Result<impl Serialize, ApiError>`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::ApiContext;
use super::auth::Principal;
use super::error::ApiError;

pub struct Call {
    pub ctx: Arc<ApiContext>,
    method: &'static str,
    route: &'static str,
    started: Instant,
    principal: Result<Principal, ApiError>,
}

impl Call {
    /// The authenticated, rate-checked caller.
    pub fn principal(&self) -> Result<&Principal, ApiError> {
        self.principal.as_ref().map_err(Clone::clone)
    }

    /// Maps the handler's result to a response and records the route's metrics.
    pub fn respond<T: Serialize>(
        self,
        status: StatusCode,
        result: Result<T, ApiError>,
    ) -> Response {
        let response = match result {
            Ok(body) => warp::Reply::into_response(warp::reply::with_status(
                warp::reply::json(&body),
                status,
            )),
            Err(error) => error.into_response(),
        };
        self.finish(response)
    }

    /// Records the route's metrics for a response the handler built itself (a stream: the
    /// latency is then the time to its headers).
    pub fn respond_with(self, result: Result<Response, ApiError>) -> Response {
        let response = result.unwrap_or_else(ApiError::into_response);
        self.finish(response)
    }

    fn finish(self, mut response: Response) -> Response {
        response
            .extensions_mut()
            .insert(super::access::RouteTemplate(self.route));
        self.ctx.metrics.observe_http(
            self.method,
            self.route,
            response.status().as_u16(),
            self.started.elapsed(),
        );
        response
    }
}

/// Matches `method` and builds the [`Call`] for the route template `route` (used as the
/// metrics label and in the access log, and recorded for the `Allow` header of a 405).
pub fn endpoint(ctx: Arc<ApiContext>, method: Method, route: &'static str) -> BoxedFilter<(Call,)> {
    let (method_name, method_filter): (&'static str, BoxedFilter<()>) = match method {
        Method::POST => ("POST", warp::post().boxed()),
        Method::PATCH => ("PATCH", warp::patch().boxed()),
        Method::PUT => ("PUT", warp::put().boxed()),
        Method::DELETE => ("DELETE", warp::delete().boxed()),
        _ => ("GET", warp::get().boxed()),
    };
    ctx.routes.record(method_name, route);
    method_filter
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::ext::optional::<super::PeerAddr>())
        .map(move |authorization: Option<String>, peer| {
            let started = Instant::now();
            let principal = ctx.authorize(peer, authorization.as_deref(), None);
            Call {
                ctx: ctx.clone(),
                method: method_name,
                route,
                started,
                principal,
            }
        })
        .boxed()
}

/// How long an SSE client waits before reconnecting after a dropped stream, sent as the
/// stream's first frame. A prompt stream is re-attached with `Last-Event-ID` and loses
/// nothing; 3 s is long enough not to hammer a daemon that is restarting.
pub const SSE_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

/// The frame that opens every SSE stream: only `retry:`.
pub fn sse_retry() -> warp::sse::Event {
    warp::sse::Event::default().retry(SSE_RETRY)
}

/// The document's schema of one event of an SSE stream as a client parses it: `event`, one of
/// `names`; `data`, one line of JSON of the schema `data` (a reference); and `id`, where the
/// stream numbers its events. The opening `retry:` frame and the keep-alive comments carry no
/// data, so they are no events.
pub fn sse_event_schema(
    names: &[&str],
    data: utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .description(Some("One event of the stream"))
        .property(
            "event",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(names.iter().copied())),
        )
        .required("event")
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .content_media_type("application/json")
                .content_schema(Some(data)),
        )
        .required("data")
        .property(
            "id",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]+$")),
        )
        .into()
}

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

/// A request body not yet read. Handlers read it after authorising the caller, up to the
/// configured size cap.
pub struct Body(ByteStream);

pub fn body() -> BoxedFilter<(Body,)> {
    warp::body::stream().map(Body::new).boxed()
}

impl Body {
    fn new<S, B>(stream: S) -> Body
    where
        S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
        B: Buf,
    {
        Body(Box::pin(stream.map(|chunk| {
            chunk.map(|mut buf| buf.copy_to_bytes(buf.remaining()))
        })))
    }

    /// The body as it arrives, for a handler that streams it on (an upload) and bounds it
    /// itself.
    pub fn into_stream(self) -> ByteStream {
        self.0
    }

    pub async fn bytes(mut self, limit: u64) -> Result<Bytes, ApiError> {
        let mut collected = BytesMut::new();
        while let Some(chunk) = self.0.next().await {
            let chunk = chunk.map_err(|e| ApiError::BadRequest {
                code: "body_unreadable",
                message: e.to_string(),
            })?;
            if (collected.len() + chunk.len()) as u64 > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            collected.extend_from_slice(&chunk);
        }
        Ok(collected.freeze())
    }

    /// Reads and parses a JSON body that must be present.
    pub async fn json<T: DeserializeOwned>(self, limit: u64) -> Result<T, ApiError> {
        self.json_or(limit, None).await
    }

    /// Reads and parses a JSON body; an empty body means `T::default()`.
    pub async fn json_or_default<T: DeserializeOwned + Default>(
        self,
        limit: u64,
    ) -> Result<T, ApiError> {
        self.json_or(limit, Some(T::default())).await
    }

    async fn json_or<T: DeserializeOwned>(
        self,
        limit: u64,
        empty: Option<T>,
    ) -> Result<T, ApiError> {
        let bytes = self.bytes(limit).await?;
        let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
            return empty.ok_or_else(|| ApiError::BadRequest {
                code: "invalid_json",
                message: "request body is empty; expected a JSON object".into(),
            });
        };
        // Every body is an object: serde would also read a struct from an array of its fields
        // (`["ls"]` as `{"argv": ...}`), and `null` as "no body", which the document allows
        // neither of.
        if *first != b'{' {
            return Err(ApiError::BadRequest {
                code: "invalid_json",
                message: "the body must be a JSON object".into(),
            });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}
