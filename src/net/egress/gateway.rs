//! The gateway proxy (being written).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Bypass, EgressError, GatewayLimits, Upstream};
use crate::metrics::Metrics;
use crate::store::Store;

pub struct Gateway {
    listener: TcpListener,
    #[allow(dead_code)]
    shared: Arc<(Upstream, Bypass, GatewayLimits, Store, Arc<Metrics>)>,
}

impl Gateway {
    pub async fn bind(
        addr: SocketAddr,
        upstream: Upstream,
        bypass: Bypass,
        limits: GatewayLimits,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway, EgressError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| EgressError::Bind { addr, source })?;
        Ok(Gateway {
            listener,
            shared: Arc::new((upstream, bypass, limits, store, metrics)),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn serve(self, cancel: CancellationToken) {
        cancel.cancelled().await;
    }
}
