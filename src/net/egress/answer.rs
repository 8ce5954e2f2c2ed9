//! The gateway's own answers: refusals by policy or bounds, and failures on the way to the
//! target. They carry our words only; nothing from the upstream's answer reaches a guest.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::request::{self, HeadError};

/// Writing a refusal, then reading what the guest still sends so closing does not reset the
/// connection before the guest has read the answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// Why a connection gets the gateway's own answer instead of a tunnel.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: String,
    /// The `refused` metric's reason, for refusals by policy or bounds.
    pub(super) refusal: Option<&'static str>,
}

impl Answer {
    pub(super) fn new(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            body: body.into(),
            refusal: None,
        }
    }

    pub(super) fn refused(status: u16, reason: &'static str, body: impl Into<String>) -> Answer {
        Answer {
            refusal: Some(reason),
            ..Answer::new(status, body)
        }
    }
}

pub(super) enum Failure {
    Answer(Answer),
    /// The guest went away or the connection broke; there is no one to answer.
    Gone,
}

impl From<Answer> for Failure {
    fn from(answer: Answer) -> Failure {
        Failure::Answer(answer)
    }
}

/// The status code only: the upstream's headers and body are never shown to the guest.
pub(super) fn upstream_refused(code: u16) -> Answer {
    Answer::new(502, format!("upstream proxy answered {code}"))
}

pub(super) fn unknown_source() -> Answer {
    Answer::refused(
        403,
        "unknown_source",
        "this address belongs to no running VM",
    )
}

impl From<HeadError> for Failure {
    fn from(e: HeadError) -> Failure {
        match e {
            HeadError::TooLarge => {
                Answer::refused(431, "header_too_large", "the request head is too large")
            }
            HeadError::Bad(why) => Answer::refused(400, "bad_request", why),
            HeadError::Partial => Answer::refused(400, "bad_request", "incomplete request head"),
        }
        .into()
    }
}

/// Writes the answer and closes, first reading (briefly, boundedly) what the guest still sends
/// so the close does not reset the connection under the answer.
pub(super) async fn send_answer(mut stream: TcpStream, answer: &Answer) {
    let sent = timeout(ANSWER_TIMEOUT, async {
        stream
            .write_all(&request::answer(answer.status, &answer.body))
            .await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = timeout(LINGER, async {
        let mut chunk = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}
