//! Egress: every user's traffic leaves through their own upstream (Decodo) port, so their AI
//! accounts always see one external address. Guests talk only to the gateway proxy on the
//! bridge. The gateway maps a connection's source address to the VM holding that lease, the VM
//! to its user and the user to their port, and adds the upstream credentials there, so the
//! credentials never reach a guest.

mod answer;
pub mod bypass;
mod gateway;
pub mod health;
pub mod ports;
mod request;
mod service;
mod splice;
mod wire;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

pub use bypass::Bypass;
pub use gateway::Gateway;
pub use service::{EgressService, PortReport};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(
        "the Decodo port pool {}–{} is exhausted: all {} ports are leased (DECODO_PORT_START/DECODO_PORT_END)",
        .range.start, .range.end, .range.size()
    )]
    PoolExhausted { range: PortRange },
    #[error("user {0} not found")]
    UserNotFound(String),
    #[error("the gateway proxy cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::lift_redb_errors!(EgressError);

impl EgressError {
    /// The machine-readable code clients see for this error.
    pub fn code(&self) -> &'static str {
        match self {
            EgressError::PoolExhausted { .. } => "proxy_port_pool_exhausted",
            EgressError::UserNotFound(_) => "user_not_found",
            // Binding happens at start-up only; reaching a client would be a bug.
            EgressError::Bind { .. } | EgressError::Store(_) => "internal",
        }
    }
}

/// The upstream proxy service (Decodo): one host, a port per user, one account. The password is
/// only ever written into requests to the upstream.
#[derive(Clone)]
pub struct Upstream {
    pub host: String,
    pub user: String,
    pub password: SecretString,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("user", &self.user)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl Upstream {
    /// The `Proxy-Authorization` value for the upstream.
    pub fn authorization(&self) -> SecretString {
        use base64::Engine;
        use secrecy::ExposeSecret;
        let pair =
            zeroize::Zeroizing::new(format!("{}:{}", self.user, self.password.expose_secret()));
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair.as_bytes());
        SecretString::from(format!("Basic {encoded}"))
    }
}

/// The upstream ports users are given, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn size(&self) -> u32 {
        u32::from(self.end).saturating_sub(u32::from(self.start)) + 1
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

/// The gateway's bounds.
#[derive(Debug, Clone, Copy)]
pub struct GatewayLimits {
    /// Open connections one VM may hold; more are refused with 429.
    pub connections_per_vm: usize,
    /// Open connections in all.
    pub connections: usize,
    /// A tunnel or request with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// A client must send its whole request head within this.
    pub header_timeout: Duration,
    /// The largest request head accepted; a larger one gets 431.
    pub max_header_bytes: usize,
    /// Connecting to the upstream (or a bypassed host) and reading its answer to CONNECT.
    pub connect_timeout: Duration,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits {
            connections_per_vm: 64,
            connections: 4096,
            idle_timeout: Duration::from_secs(300),
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            connect_timeout: Duration::from_secs(15),
        }
    }
}

/// Everything about egress the daemon is configured with.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// `None`: no dedicated egress. No ports are leased and the gateway does not run.
    pub upstream: Option<Upstream>,
    pub ports: PortRange,
    /// The gateway listens on the bridge's address at this port.
    pub gateway_port: u16,
    pub bypass: Bypass,
    /// Host rules allow guests no egress except through the gateway (checked by `doctor`).
    pub strict: bool,
    /// Health checks fetch this through each leased port; it answers the caller's address.
    pub echo_url: String,
    /// At least this long between two health checks, so a check round never bursts.
    pub health_spacing: Duration,
    pub health_timeout: Duration,
    pub limits: GatewayLimits,
}

impl EgressSettings {
    /// The ports to lease from, when there is an upstream to use them with.
    pub fn lease_range(&self) -> Option<PortRange> {
        self.upstream.as_ref().map(|_| self.ports)
    }
}
