//! Guest networking: the bridge, one isolated tap per VM bound to its VM's MAC and IPv4 (`guard`),
//! and the address plan (IP pool, MACs derived from IPs, tap names derived from VM ids).

pub mod egress;
pub mod guard;
mod links;
pub mod plan;

pub use guard::TapBinding;
pub use links::{Netlink, RtNetlink};
pub use plan::{BRIDGE_MAC, Subnet, is_tap_name, mac_for, tap_name};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad network setting {setting}: {reason}")]
    Config {
        setting: &'static str,
        reason: String,
    },
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("tap {name}: {source}")]
    Tap {
        name: String,
        source: std::io::Error,
    },
    #[error("no link named {0}")]
    NoSuchLink(String),
    #[error("tap binding: {0}")]
    Guard(String),
}
