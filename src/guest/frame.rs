//! Frame layout and its tokio codec.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

pub const MAGIC: [u8; 2] = *b"MC";
pub const PROTOCOL_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
/// The largest payload either side sends or accepts.
pub const MAX_PAYLOAD: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    HelloOk = 2,
    Request = 3,
    Response = 4,
    Stdout = 5,
    Stderr = 6,
    /// A chunk of an exec's stdin; an empty one closes it.
    Stdin = 7,
    Exit = 8,
    Error = 9,
}

impl FrameKind {
    fn from_u8(value: u8) -> Option<FrameKind> {
        Some(match value {
            1 => FrameKind::Hello,
            2 => FrameKind::HelloOk,
            3 => FrameKind::Request,
            4 => FrameKind::Response,
            5 => FrameKind::Stdout,
            6 => FrameKind::Stderr,
            7 => FrameKind::Stdin,
            8 => FrameKind::Exit,
            9 => FrameKind::Error,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub request_id: u64,
    pub payload: Bytes,
}

impl Frame {
    pub fn new(kind: FrameKind, request_id: u64, payload: impl Into<Bytes>) -> Frame {
        Frame {
            kind,
            request_id,
            payload: payload.into(),
        }
    }

    /// A frame whose payload is `value` as JSON.
    pub fn json<T: serde::Serialize>(kind: FrameKind, request_id: u64, value: &T) -> Frame {
        // Our message types always serialise.
        let payload = serde_json::to_vec(value).unwrap_or_default();
        Frame::new(kind, request_id, payload)
    }

    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, FrameError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| FrameError::Malformed(format!("{:?} payload: {e}", self.kind)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("channel I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes and decodes frames. With `resync`, bytes that do not start a valid header are
/// skipped instead of failing: the host uses it after a resume, when the channel may still
/// deliver the tail of a frame written before the snapshot.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec {
    pub resync: bool,
}

fn check_header(header: &[u8]) -> Result<(FrameKind, u64, usize), FrameError> {
    if header[..2] != MAGIC {
        return Err(FrameError::Malformed("bad magic".into()));
    }
    if header[2] != PROTOCOL_VERSION {
        return Err(FrameError::Malformed(format!(
            "protocol version {} (this side speaks {PROTOCOL_VERSION})",
            header[2]
        )));
    }
    let kind = FrameKind::from_u8(header[3])
        .ok_or_else(|| FrameError::Malformed(format!("unknown frame kind {}", header[3])))?;
    let request_id = u64::from_le_bytes(header[4..12].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default()) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    Ok((kind, request_id, len))
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if src.len() < HEADER_LEN {
                return Ok(None);
            }
            let (kind, request_id, len) = match check_header(&src[..HEADER_LEN]) {
                Ok(header) => header,
                Err(_) if self.resync => {
                    src.advance(1);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if src.len() < HEADER_LEN + len {
                src.reserve(HEADER_LEN + len - src.len());
                return Ok(None);
            }
            src.advance(HEADER_LEN);
            let payload = src.split_to(len).freeze();
            return Ok(Some(Frame {
                kind,
                request_id,
                payload,
            }));
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        if frame.payload.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(frame.payload.len()));
        }
        dst.reserve(HEADER_LEN + frame.payload.len());
        dst.put_slice(&MAGIC);
        dst.put_u8(PROTOCOL_VERSION);
        dst.put_u8(frame.kind as u8);
        dst.put_u64_le(frame.request_id);
        dst.put_u32_le(frame.payload.len() as u32);
        dst.put_slice(&frame.payload);
        Ok(())
    }
}

/// Spawns the task that owns a connection's write half: frames queued on the returned sender
/// (at most `queue` of them) are written in order until the sender is dropped or a write fails.
pub fn spawn_writer<W>(
    writer: W,
    queue: usize,
) -> (
    tokio::sync::mpsc::Sender<Frame>,
    tokio::task::JoinHandle<()>,
)
where
    W: tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    use futures_util::SinkExt;
    let (out, mut outbound) = tokio::sync::mpsc::channel::<Frame>(queue);
    let task = tokio::spawn(async move {
        let mut sink = tokio_util::codec::FramedWrite::new(writer, FrameCodec::default());
        while let Some(frame) = outbound.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
    });
    (out, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(frame: Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::default().encode(frame, &mut buf).unwrap();
        buf
    }

    #[test]
    fn round_trip_and_partial_input() {
        let frame = Frame::new(FrameKind::Stdout, 42, &b"hello"[..]);
        let bytes = encoded(frame.clone());
        assert_eq!(bytes.len(), HEADER_LEN + 5);
        let mut codec = FrameCodec::default();
        let mut partial = BytesMut::from(&bytes[..10]);
        assert_eq!(codec.decode(&mut partial).unwrap(), None);
        partial.extend_from_slice(&bytes[10..]);
        assert_eq!(codec.decode(&mut partial).unwrap(), Some(frame));
        assert!(partial.is_empty());
    }

    #[test]
    fn rejects_garbage_and_oversize() {
        let mut codec = FrameCodec::default();
        let mut garbage = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        assert!(matches!(
            codec.decode(&mut garbage),
            Err(FrameError::Malformed(_))
        ));
        let mut header = encoded(Frame::new(FrameKind::Request, 1, Bytes::new()));
        header[12..16].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(matches!(
            codec.decode(&mut header),
            Err(FrameError::TooLarge(_))
        ));
        let mut bad_kind = encoded(Frame::new(FrameKind::Request, 1, Bytes::new()));
        bad_kind[3] = 200;
        assert!(matches!(
            codec.decode(&mut bad_kind),
            Err(FrameError::Malformed(_))
        ));
        assert!(
            codec
                .encode(
                    Frame::new(FrameKind::Stdout, 1, vec![0; MAX_PAYLOAD + 1]),
                    &mut BytesMut::new()
                )
                .is_err()
        );
    }

    #[test]
    fn resync_skips_a_torn_tail() {
        let frame = Frame::new(FrameKind::HelloOk, 7, &b"{}"[..]);
        let mut stream = BytesMut::from(&b"\x01\x02tail-of-an-old-frame"[..]);
        stream.extend_from_slice(&encoded(frame.clone()));
        let mut codec = FrameCodec { resync: true };
        assert_eq!(codec.decode(&mut stream).unwrap(), Some(frame));
    }
}
