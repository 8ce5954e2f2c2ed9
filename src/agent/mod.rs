//! `vm-agent`: runs inside every guest and serves the host over the agent channel.
//!
//! Each host connection is a session: it must open with `Hello` carrying the per-VM token. Work
//! still running when a session ends (the host went away, or the VM was hibernated and resumed)
//! is stopped and reported as interrupted in the next session's `HelloOk`.

mod channel;
mod exec;
mod files;
mod session;
mod system;
pub mod workspace;

use std::sync::Arc;

pub use channel::ChannelSpec;
pub use session::Agent;

use crate::guest::messages::{self, ErrorBody};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no agent token: boot with {}=<token>", messages::CMDLINE_TOKEN)]
    NoToken,
    #[error("bad channel {0:?}: expected virtio-serial:<name>, vsock:<port> or unix:<path>")]
    BadChannel(String),
    #[error("agent channel: {0}")]
    Channel(#[from] std::io::Error),
    #[error("{}: {}", .0.code, .0.message)]
    Request(ErrorBody),
}

impl AgentError {
    pub fn request(code: &str, message: impl Into<String>) -> AgentError {
        AgentError::Request(ErrorBody::new(code, message))
    }

    pub fn body(&self) -> ErrorBody {
        match self {
            AgentError::Request(body) => body.clone(),
            other => ErrorBody::new("io", other.to_string()),
        }
    }
}

/// How the agent was told to run: from the kernel command line, or from flags in tests.
pub struct AgentConfig {
    pub token: String,
    pub channel: ChannelSpec,
}

impl AgentConfig {
    pub fn from_cmdline(cmdline: &str) -> Result<AgentConfig, AgentError> {
        let token = messages::cmdline_value(cmdline, messages::CMDLINE_TOKEN)
            .filter(|t| !t.is_empty())
            .ok_or(AgentError::NoToken)?
            .to_string();
        let channel = match messages::cmdline_value(cmdline, messages::CMDLINE_CHANNEL) {
            Some(spec) => ChannelSpec::parse(spec)?,
            None => ChannelSpec::VirtioSerial(messages::DEFAULT_SERIAL_PORT_NAME.into()),
        };
        Ok(AgentConfig { token, channel })
    }
}

/// Serves sessions forever.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let agent = Arc::new(Agent::new(config.token));
    let mut channel = channel::open(&config.channel).await?;
    loop {
        let (reader, writer, on_eof) = channel.next_session().await?;
        let end = agent.serve(reader, writer, on_eof).await;
        eprintln!("vm-agent: session ended: {end}");
    }
}
