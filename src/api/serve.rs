//! The listeners' accept loop. warp's own server has neither a header read timeout nor a cap on
//! connections, so a client that opens connections and never finishes its headers could hold
//! sockets and tasks without end. This loop serves the same warp filter through hyper's HTTP/1
//! connection with a header read timeout, holds a semaphore permit per connection, and tags each
//! request with its peer address (for the failed-authentication limit) and its id, and writes
//! its access line ([`super::access`]).
//!
//! warp 0.4 offers no public way to build a response whose body is a stream of our own (a file
//! downloaded from a guest), so a handler leaves the stream in the response's extensions
//! ([`streamed`]) and this loop makes it the body.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryFutureExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;
use tracing::Instrument;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::access::Access;

/// The connection's peer, put in every request's extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A response body to stream, handed from a handler to the accept loop.
#[derive(Clone)]
struct StreamedBody(Arc<std::sync::Mutex<Option<BodyStream>>>);

/// The chunks of a streamed body; an error ends the response early (the client sees a short
/// body, as its Content-Length tells it).
pub type BodyStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A response of `status` whose body is `stream`.
pub fn streamed(mut response: Response, stream: BodyStream) -> Response {
    response
        .extensions_mut()
        .insert(StreamedBody(Arc::new(std::sync::Mutex::new(Some(stream)))));
    response
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body a handler left in the extensions, or warp's own.
fn with_streamed_body(response: Response) -> hyper::Response<UnsyncBoxBody<Bytes, BoxError>> {
    let (mut parts, body) = response.into_parts();
    let stream = parts
        .extensions
        .remove::<StreamedBody>()
        .and_then(|s| s.0.lock().unwrap_or_else(|p| p.into_inner()).take());
    let body = match stream {
        Some(stream) => UnsyncBoxBody::new(StreamBody::new(
            stream.map(|chunk| chunk.map(Frame::data).map_err(BoxError::from)),
        )),
        None => UnsyncBoxBody::new(body.map_err(BoxError::from)),
    };
    hyper::Response::from_parts(parts, body)
}

/// What one listener bounds.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// A connection that has not sent a whole request head this long after it opened (or after
    /// its previous response, on keep-alive) is closed.
    pub header_read_timeout: Duration,
    /// Connections served at once. Beyond it the loop stops accepting, so further clients wait
    /// in the kernel's backlog until a connection ends.
    pub max_connections: usize,
}

/// Serves `routes` on `listener` until `shutdown` resolves, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(Response,)>,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let filtered = warp::service(routes.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(PeerAddr(peer));
            let (access, span) = Access::begin(&mut request, peer);
            // The filtered service is a cheap clone (it holds the boxed filter), and calling
            // it needs `&mut`. The access line is written outside the span: it names the id
            // itself.
            filtered
                .clone()
                .call(request)
                .instrument(span)
                .map_ok(move |response| with_streamed_body(access.finish(response)))
        });
        let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let connection = graceful.watch(
            builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Per-connection errors (the peer reset before accept) are nothing; running out of file
/// descriptors is waited out rather than spun on.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; pausing the listener for a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
