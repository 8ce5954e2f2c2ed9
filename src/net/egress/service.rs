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

impl PortReport {
    /// Leased ports whose last check failed.
    pub fn unhealthy(&self) -> usize {
        self.leases
            .iter()
            .filter(|l| l.health.as_ref().is_some_and(|h| !h.healthy))
            .count()
    }

    /// Ports of the range no one holds (a port leased before the range changed stays leased).
    pub fn free(&self) -> usize {
        let in_range = self
            .leases
            .iter()
            .filter(|l| self.range.contains(l.port))
            .count();
        (self.range.size() as usize).saturating_sub(in_range)
    }
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
