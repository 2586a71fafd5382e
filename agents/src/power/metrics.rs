//! Prometheus metrics of the power controller and the BMC drivers.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of one BMC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// redfish, ipmi, fake.
    pub driver: &'static str,
    /// power_state, set_power, set_boot_device.
    pub operation: &'static str,
    /// ok, or the error's metric label.
    pub result: &'static str,
}

/// Labels with one `reason` or `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why, e.g. Unreachable.
    pub reason: &'static str,
}

/// The power controller's metrics; cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    /// BMC call latency by driver, operation and result.
    pub bmc_call: Family<CallLabels, Histogram>,
    /// Periodic power-state syncs by result.
    pub power_syncs: Family<ReasonLabels, Counter>,
    /// Failures by reason (BMC error labels, NoCredentials, Kubernetes).
    pub failures: Family<ReasonLabels, Counter>,
    /// Boot intent attempts carried out.
    pub intents_applied: Counter,
    /// Machine status writes (only when something changed).
    pub status_writes: Counter,
    /// Machines the controller holds state for (driver, backoff, schedule).
    pub tracked_machines: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            bmc_call: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            power_syncs: Family::default(),
            failures: Family::default(),
            intents_applied: Counter::default(),
            status_writes: Counter::default(),
            tracked_machines: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `ironpool_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ironpool_bmc_call_duration_seconds",
            "BMC call latency by driver, operation and result",
            self.bmc_call.clone(),
        );
        registry.register(
            "ironpool_bmc_power_syncs",
            "Periodic power-state syncs by result",
            self.power_syncs.clone(),
        );
        registry.register(
            "ironpool_bmc_failures",
            "Power controller failures by reason",
            self.failures.clone(),
        );
        registry.register(
            "ironpool_boot_intents_applied",
            "Boot intent attempts carried out",
            self.intents_applied.clone(),
        );
        registry.register(
            "ironpool_bmc_status_writes",
            "Machine status writes by the power controller (only on change)",
            self.status_writes.clone(),
        );
        registry.register(
            "ironpool_bmc_tracked_machines",
            "Machines the power controller holds a driver, backoff or schedule for",
            self.tracked_machines.clone(),
        );
    }

    /// Records one BMC call.
    pub fn call(
        &self,
        driver: &'static str,
        operation: &'static str,
        result: &'static str,
        took: Duration,
    ) {
        self.bmc_call
            .get_or_create(&CallLabels {
                driver,
                operation,
                result,
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a failure.
    pub fn failure(&self, reason: &'static str) {
        self.failures.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a sync.
    pub fn sync(&self, result: &'static str) {
        self.power_syncs
            .get_or_create(&ReasonLabels { reason: result })
            .inc();
    }
}
