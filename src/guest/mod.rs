//! The host↔agent protocol, shared by the daemon and `vm-agent`.
//!
//! A connection is a stream of [`Frame`]s: a 16-byte header (magic `MC`, protocol version, kind,
//! request id, payload length) and a payload of at most [`frame::MAX_PAYLOAD`] bytes. Control
//! payloads are JSON ([`messages`]); stdout, stderr and stdin chunks are raw bytes. Every frame
//! carries the id of the request it belongs to, so many requests share one connection.
//!
//! The host opens with `Hello {token}`; the agent answers `HelloOk` or an error frame, and
//! rejects every other frame until then.

pub mod frame;
pub mod messages;
pub mod workspace;

#[cfg(feature = "daemon")]
pub mod client;
#[cfg(feature = "daemon")]
mod exec_stream;

pub use frame::{Frame, FrameCodec, FrameError, FrameKind};
