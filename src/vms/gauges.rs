//! Each running VM's series in `polydev_vm_resource_usage`, set from its agent's health report
//! and dropped once the VM stops running, so the metric never lists a VM that is gone.

use std::sync::Arc;

use crate::guest::messages::HealthReport;
use crate::metrics::{Metrics, ResourceLabels};

/// The `resource` labels of `polydev_vm_resource_usage`.
const USAGE_RESOURCES: [&str; 4] = [
    "memory_used_bytes",
    "memory_total_bytes",
    "disk_used_bytes",
    "load1",
];

pub(super) struct Gauges {
    metrics: Arc<Metrics>,
}

impl Gauges {
    pub(super) fn new(metrics: Arc<Metrics>) -> Gauges {
        Gauges { metrics }
    }

    /// Counts a running VM that failed (`mc_vm_crashes_total`).
    pub(super) fn count_crash(&self) {
        self.metrics.ops.vm_crashes.inc();
    }

    pub(super) fn set(&self, vm_id: &str, health: &HealthReport) {
        let usage = [
            (
                "memory_used_bytes",
                health
                    .mem_total_kib
                    .saturating_sub(health.mem_available_kib) as f64
                    * 1024.0,
            ),
            ("memory_total_bytes", health.mem_total_kib as f64 * 1024.0),
            (
                "disk_used_bytes",
                health
                    .disk_total_bytes
                    .saturating_sub(health.disk_free_bytes) as f64,
            ),
            ("load1", health.load[0]),
        ];
        for (resource, value) in usage {
            self.metrics
                .vm_resource_usage
                .get_or_create(&ResourceLabels {
                    vm_id: vm_id.to_string(),
                    resource: resource.to_string(),
                })
                .set(value);
        }
    }

    /// Drops a VM's resource series once it no longer runs.
    pub(super) fn forget(&self, vm_id: &str) {
        for resource in USAGE_RESOURCES {
            self.metrics.vm_resource_usage.remove(&ResourceLabels {
                vm_id: vm_id.to_string(),
                resource: resource.to_string(),
            });
        }
    }
}
