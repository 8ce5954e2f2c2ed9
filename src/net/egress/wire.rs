//! The gateway's socket work on the way to a target: reading a guest's request head within its
//! bounds, connecting, and the upstream's answer to CONNECT.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::GatewayLimits;
use super::answer::{Answer, Failure, upstream_refused};
use super::request::{self, HeadError, Request, Target};

/// The upstream's answer to CONNECT is a few short headers.
const UPSTREAM_HEAD_MAX: usize = 16 * 1024;

/// Reads a whole request head within the header timeout; returns it with every byte read.
pub(super) async fn read_head(
    limits: &GatewayLimits,
    client: &mut TcpStream,
) -> Result<(Request, Vec<u8>), Failure> {
    let max = limits.max_header_bytes;
    let mut buf = Vec::with_capacity(max.min(4096));
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let room = max.saturating_sub(buf.len()).min(chunk.len());
            if room == 0 {
                return Err(HeadError::TooLarge.into());
            }
            let n = client
                .read(&mut chunk[..room])
                .await
                .map_err(|_| Failure::Gone)?;
            if n == 0 {
                return Err(Failure::Gone);
            }
            buf.extend_from_slice(&chunk[..n]);
            match request::parse(&buf, max) {
                Ok(request) => return Ok(request),
                Err(HeadError::Partial) => {}
                Err(e) => return Err(e.into()),
            }
        }
    };
    match timeout(limits.header_timeout, read).await {
        Ok(Ok(request)) => Ok((request, buf)),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(Answer::refused(
            408,
            "header_timeout",
            "the request head did not arrive in time",
        )
        .into()),
    }
}

/// Connects to `to`; failures name `target`'s route, never credentials.
pub(super) async fn open(to: &Target, target: &Target) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect((to.host.as_str(), to.port))
        .await
        .map_err(|e| {
            let body = if to == target {
                format!("cannot connect to {target}: {e}")
            } else {
                format!("cannot reach the upstream proxy at {to} for {target}: {e}")
            };
            Answer::new(502, body)
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Sends CONNECT with the credentials and reads the upstream's answer; returns the bytes it
/// sent after its head. A refusal is reported by status code only: the upstream's headers and
/// body are never shown to the guest.
pub(super) async fn upstream_answer(
    server: &mut TcpStream,
    head: &[u8],
    upstream: &Target,
) -> Result<Vec<u8>, Failure> {
    let broken = || {
        Answer::new(
            502,
            format!("the upstream proxy at {upstream} broke the connection"),
        )
    };
    server.write_all(head).await.map_err(|_| broken())?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = server.read(&mut chunk).await.map_err(|_| broken())?;
        if n == 0 {
            return Err(broken().into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match request::parse_response(&buf, UPSTREAM_HEAD_MAX) {
            Ok((code, len)) if (200..300).contains(&code) => return Ok(buf.split_off(len)),
            Ok((code, _)) => return Err(upstream_refused(code).into()),
            Err(HeadError::Partial) => {}
            Err(_) => {
                return Err(Answer::new(
                    502,
                    format!("the upstream proxy at {upstream} sent a malformed answer"),
                )
                .into());
            }
        }
    }
}
