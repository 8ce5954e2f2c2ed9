//! What the admin API reads about egress: the pool, each leased port and its last check.

use std::net::SocketAddr;

use super::{EgressError, EgressSettings, PortRange, ports};
use crate::model::PortLease;
use crate::store::Store;

/// The port pool as the admin API shows it.
#[derive(Debug, Clone)]
pub struct PortReport {
    pub range: PortRange,
    /// `None` when no upstream is configured.
    pub upstream_host: Option<String>,
    /// Where the gateway proxy listens, when it runs.
    pub gateway: Option<SocketAddr>,
    pub strict: bool,
    pub echo_url: String,
    pub leases: Vec<PortLease>,
}

#[derive(Clone)]
pub struct EgressService {
    store: Store,
    settings: EgressSettings,
    gateway: Option<SocketAddr>,
}

impl EgressService {
    pub fn new(store: Store, settings: EgressSettings, gateway: Option<SocketAddr>) -> Self {
        EgressService {
            store,
            settings,
            gateway,
        }
    }

    pub async fn ports(&self) -> Result<PortReport, EgressError> {
        let leases = self.store.read(ports::leases).await?;
        Ok(PortReport {
            range: self.settings.ports,
            upstream_host: self.settings.upstream.as_ref().map(|u| u.host.clone()),
            gateway: self.gateway,
            strict: self.settings.strict,
            echo_url: self.settings.echo_url.clone(),
            leases,
        })
    }
}
