//! The gateway proxy's and the upstream ports' metrics. Per-user series are bounded by the port
//! pool: only users with a leased port ever get through the gateway.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressConnectionLabels {
    pub user_id: String,
    /// `upstream` or `direct` (a bypassed host).
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressBytesLabels {
    pub user_id: String,
    /// `from_guest` or `to_guest`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressRefusalLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    pub port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortCheckLabels {
    pub port: String,
    pub outcome: String,
}

#[derive(Default)]
pub struct EgressMetrics {
    pub connections: Family<EgressConnectionLabels, Counter>,
    pub bytes: Family<EgressBytesLabels, Counter>,
    pub refused: Family<EgressRefusalLabels, Counter>,
    pub active_connections: Gauge,
    pub port_healthy: Family<PortLabels, Gauge>,
    pub port_latency: Family<PortLabels, Gauge<f64, AtomicU64>>,
    pub port_checks: Family<PortCheckLabels, Counter>,
    /// The upstream ports there are to lease; 0 without an upstream.
    pub ports_total: Gauge,
}

impl EgressMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "polydev_egress_connections",
            "Gateway proxy connections by user and route (upstream, direct)",
            self.connections.clone(),
        );
        registry.register(
            "polydev_egress_bytes",
            "Bytes through the gateway proxy by user and direction (from_guest, to_guest)",
            self.bytes.clone(),
        );
        registry.register(
            "polydev_egress_refused",
            "Gateway proxy connections refused, by reason",
            self.refused.clone(),
        );
        registry.register(
            "polydev_egress_active_connections",
            "Open gateway proxy connections",
            self.active_connections.clone(),
        );
        registry.register(
            "polydev_decodo_port_healthy",
            "1 if the last health check through the upstream port succeeded, else 0",
            self.port_healthy.clone(),
        );
        registry.register(
            "polydev_decodo_port_latency_seconds",
            "Latency of the last health check through the upstream port",
            self.port_latency.clone(),
        );
        registry.register(
            "polydev_decodo_port_checks",
            "Health checks of upstream ports by outcome (healthy, unhealthy)",
            self.port_checks.clone(),
        );
        registry.register(
            "polydev_decodo_ports_total",
            "Upstream proxy ports there are to lease (0 when no upstream is configured)",
            self.ports_total.clone(),
        );
    }

    /// Counts a refused connection.
    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&EgressRefusalLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Drops a deleted user's port series.
    pub fn forget_port(&self, port: u16) {
        let port = PortLabels {
            port: port.to_string(),
        };
        self.port_healthy.remove(&port);
        self.port_latency.remove(&port);
    }
}
