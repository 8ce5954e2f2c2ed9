//! Every Prometheus metric of the daemon, in one place. The seed's `polydev_*` names are kept
//! so existing dashboards and alerts keep working.

pub mod egress;
mod json;
pub mod ops;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::{AuthSessionStatus, PromptStatus, VmStatus, VmType};
use crate::providers;

pub use egress::EgressMetrics;
pub use json::{MetricFamily, MetricSample, MetricsJson, SampleValue, parse_text, text_to_json};
pub use ops::{HostReading, OpsMetrics};

/// The store's counts that the gauges mirror, as `inventory` takes them (the metrics sit below
/// the services whose records they count).
#[derive(Debug, Clone, Default)]
pub struct StoreCounts {
    pub total_users: u64,
    pub vms: std::collections::BTreeMap<(VmStatus, VmType), u64>,
    pub active_vms: u64,
    pub ip_pool_available: u64,
    pub ip_pool_size: u64,
    pub port_leases: u64,
    pub outbox_depth: u64,
    pub outbox_oldest_age_ms: Option<i64>,
    pub dead_letters: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VmLabels {
    pub status: String,
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PromptLabels {
    pub provider: String,
    pub status: String,
}

/// The outcomes of `mc_outbox_sends_total`.
pub const OUTBOX_SEND_OUTCOMES: [&str; 4] = ["ok", "retry_after", "failed", "dead_letter"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboxSendLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthSessionLabels {
    pub provider: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub vm_id: String,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn vm_operation_histogram() -> Histogram {
    // 10 ms to ~5 min: a KVM resume is milliseconds, a TCG cold boot tens of seconds.
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

fn prompt_histogram() -> Histogram {
    // 0.5 s to ~68 min.
    Histogram::new(exponential_buckets(0.5, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    pub total_users: Gauge,
    pub total_vms: Family<VmLabels, Gauge>,
    pub active_vms: Gauge,
    pub prompts: Family<PromptLabels, Counter>,
    pub prompt_duration: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    pub vm_resource_usage: Family<ResourceLabels, Gauge<f64, AtomicU64>>,
    pub ip_pool_available: Gauge,
    pub ip_pool_size: Gauge,
    pub decodo_ports_used: Gauge,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub ws_connections: Gauge,
    pub outbox_depth: Gauge,
    pub prompt_first_content: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    pub vm_create_duration: Histogram,
    pub vm_hibernate_duration: Histogram,
    pub vm_resume_duration: Histogram,
    pub auth_sessions: Family<AuthSessionLabels, Counter>,
    pub credential_refreshes: Family<ProviderLabels, Counter>,
    pub outbox_sends: Family<OutboxSendLabels, Counter>,
    pub outbox_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub outbox_dead_letters: Gauge,
    pub egress: EgressMetrics,
    pub ops: OpsMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            total_users: Gauge::default(),
            total_vms: Family::default(),
            active_vms: Gauge::default(),
            prompts: Family::default(),
            prompt_duration: Family::new_with_constructor(prompt_histogram as fn() -> Histogram),
            vm_resource_usage: Family::default(),
            ip_pool_available: Gauge::default(),
            ip_pool_size: Gauge::default(),
            decodo_ports_used: Gauge::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ws_connections: Gauge::default(),
            outbox_depth: Gauge::default(),
            prompt_first_content: Family::new_with_constructor(
                vm_operation_histogram as fn() -> Histogram,
            ),
            vm_create_duration: vm_operation_histogram(),
            vm_hibernate_duration: vm_operation_histogram(),
            vm_resume_duration: vm_operation_histogram(),
            auth_sessions: Family::default(),
            credential_refreshes: Family::default(),
            outbox_sends: Family::default(),
            outbox_oldest_age: Gauge::default(),
            outbox_dead_letters: Gauge::default(),
            egress: EgressMetrics::default(),
            ops: OpsMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "polydev_total_users",
            "Users known to the appliance",
            metrics.total_users.clone(),
        );
        registry.register(
            "polydev_total_vms",
            "VMs by status and type",
            metrics.total_vms.clone(),
        );
        registry.register(
            "polydev_active_vms",
            "VMs running or being created",
            metrics.active_vms.clone(),
        );
        // prometheus-client appends `_total` to counters: this is `polydev_prompts_total`.
        registry.register(
            "polydev_prompts",
            "Prompts by provider and final status",
            metrics.prompts.clone(),
        );
        registry.register(
            "polydev_prompt_duration_seconds",
            "Prompt duration by provider",
            metrics.prompt_duration.clone(),
        );
        registry.register(
            "polydev_vm_resource_usage",
            "Last sampled resource usage per VM",
            metrics.vm_resource_usage.clone(),
        );
        registry.register(
            "polydev_ip_pool_available",
            "Free addresses in the VM IP pool",
            metrics.ip_pool_available.clone(),
        );
        registry.register(
            "polydev_ip_pool_size",
            "Addresses in the VM IP pool",
            metrics.ip_pool_size.clone(),
        );
        registry.register(
            "polydev_decodo_ports_used",
            "Upstream proxy ports leased to users",
            metrics.decodo_ports_used.clone(),
        );
        registry.register(
            "mc_http_requests",
            "HTTP requests by route template and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "mc_http_request_duration_seconds",
            "HTTP request latency by route template",
            metrics.http_duration.clone(),
        );
        registry.register(
            "mc_ws_connections",
            "Open WebSocket connections",
            metrics.ws_connections.clone(),
        );
        registry.register(
            "mc_outbox_depth",
            "Pending Supabase outbox rows",
            metrics.outbox_depth.clone(),
        );
        registry.register(
            "polydev_prompt_first_content_seconds",
            "Time from a prompt's request to its first streamed content, by provider",
            metrics.prompt_first_content.clone(),
        );
        registry.register(
            "polydev_vm_create_duration_seconds",
            "Time from create request to a running VM whose agent answers",
            metrics.vm_create_duration.clone(),
        );
        registry.register(
            "polydev_vm_hibernate_duration_seconds",
            "Time to save a VM to disk and stop its process",
            metrics.vm_hibernate_duration.clone(),
        );
        registry.register(
            "polydev_vm_resume_duration_seconds",
            "Time from resume request to a running VM whose agent answers",
            metrics.vm_resume_duration.clone(),
        );
        registry.register(
            "polydev_auth_sessions",
            "Login relay sessions by provider and how they ended",
            metrics.auth_sessions.clone(),
        );
        registry.register(
            "polydev_credential_refreshes",
            "Credentials a CLI refreshed during a prompt, captured back into the vault",
            metrics.credential_refreshes.clone(),
        );
        registry.register(
            "mc_outbox_sends",
            "Outbox rows sent to Supabase by outcome (ok, retry_after, failed, dead_letter)",
            metrics.outbox_sends.clone(),
        );
        registry.register(
            "mc_outbox_oldest_age_seconds",
            "Age of the oldest change waiting in the outbox",
            metrics.outbox_oldest_age.clone(),
        );
        registry.register(
            "mc_outbox_dead_letters",
            "Changes Supabase refused for good, waiting for an operator",
            metrics.outbox_dead_letters.clone(),
        );
        metrics.egress.register(&mut registry);
        metrics.ops.register(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Sets the gauges that mirror the store.
    pub fn refresh(&self, counts: &StoreCounts) {
        self.total_users.set(gauge_value(counts.total_users));
        for status in VmStatus::ALL {
            for vm_type in VmType::ALL {
                let count = counts.vms.get(&(*status, *vm_type)).copied().unwrap_or(0);
                self.total_vms
                    .get_or_create(&VmLabels {
                        status: status.to_string(),
                        r#type: vm_type.to_string(),
                    })
                    .set(gauge_value(count));
            }
        }
        self.active_vms.set(gauge_value(counts.active_vms));
        self.ip_pool_available
            .set(gauge_value(counts.ip_pool_available));
        self.ip_pool_size.set(gauge_value(counts.ip_pool_size));
        self.decodo_ports_used.set(gauge_value(counts.port_leases));
        self.outbox_depth.set(gauge_value(counts.outbox_depth));
        self.outbox_oldest_age
            .set(counts.outbox_oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
        self.outbox_dead_letters
            .set(gauge_value(counts.dead_letters));
    }

    /// Registers every provider/status pair at zero so the series exist before the first prompt
    /// (and the first login, credential refresh and outbox send): dashboards and `increase()`
    /// then see the first event.
    pub fn seed_prompt_series(&self) {
        for outcome in OUTBOX_SEND_OUTCOMES {
            let _ = self.outbox_sends.get_or_create(&OutboxSendLabels {
                outcome: outcome.to_string(),
            });
        }
        for provider in providers::all() {
            let _ = self.credential_refreshes.get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            });
            for status in AuthSessionStatus::ALL.iter().filter(|s| s.is_terminal()) {
                let _ = self.auth_sessions.get_or_create(&AuthSessionLabels {
                    provider: provider.to_string(),
                    status: status.to_string(),
                });
            }
            let labels = ProviderLabels {
                provider: provider.to_string(),
            };
            let _ = self.prompt_duration.get_or_create(&labels);
            let _ = self.prompt_first_content.get_or_create(&labels);
            for status in PromptStatus::ALL {
                let _ = self.prompts.get_or_create(&PromptLabels {
                    provider: provider.to_string(),
                    status: status.to_string(),
                });
            }
        }
    }

    pub fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
