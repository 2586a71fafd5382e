//! Prometheus metrics of the operator, all prefixed `ironpool_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label: which controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// machine, deployment or subnet.
    pub controller: &'static str,
}

/// Labels: which controller, which error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// machine, deployment or subnet.
    pub controller: &'static str,
    /// The error's metric label.
    pub error: &'static str,
}

/// Label: a Machine phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// Phase name.
    pub phase: &'static str,
}

/// Labels: a finished Machine operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// Enlist, Commission, Deploy, Release or Erase.
    pub operation: &'static str,
    /// Succeeded or Failed.
    pub result: &'static str,
}

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Reconcile duration by controller.
    pub reconcile_seconds: Family<ControllerLabel, Histogram>,
    /// Reconciles by controller.
    pub reconciles: Family<ControllerLabel, Counter>,
    /// Status writes by controller.
    pub writes: Family<ControllerLabel, Counter>,
    /// Reconcile errors by controller and error.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Machines per phase.
    pub machines: Family<PhaseLabel, Gauge>,
    /// Phase transitions by the phase entered.
    pub transitions: Family<PhaseLabel, Counter>,
    /// From Deployment creation to a machine allocated.
    pub allocation_seconds: Histogram,
    /// Machine operations (commissioning, deploy, erase...) from start to finish, retries
    /// included, by operation and result.
    pub operation_seconds: Family<OperationLabels, Histogram>,
    /// 1 while this replica leads.
    pub leader: Gauge,
    /// Seconds from taking the lead until the Machine and Deployment caches held their
    /// full lists (0 until then): the cold start before any decision is made.
    pub caches_synced_seconds: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            reconcile_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            reconciles: Family::default(),
            writes: Family::default(),
            reconcile_errors: Family::default(),
            machines: Family::default(),
            transitions: Family::default(),
            allocation_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            // 5 s to about 11 hours: a ramdisk commissioning takes a minute or two, an
            // image write or a full-disk erase hours.
            operation_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(5.0, 2.0, 14))
            }),
            leader: Gauge::default(),
            caches_synced_seconds: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("ironpool");
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration by controller",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "reconciles",
            "Reconciles by controller",
            m.reconciles.clone(),
        );
        r.register(
            "status_writes",
            "Status writes by controller",
            m.writes.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconcile errors by controller and error",
            m.reconcile_errors.clone(),
        );
        r.register("machines", "Machines per phase", m.machines.clone());
        r.register(
            "machine_transitions",
            "Machine phase transitions by the phase entered",
            m.transitions.clone(),
        );
        r.register(
            "allocation_duration_seconds",
            "Time from Deployment creation to machine allocated",
            m.allocation_seconds.clone(),
        );
        r.register(
            "operation_duration_seconds",
            "Machine operations (Commission, Deploy, Erase...) from start to finish, by operation and result",
            m.operation_seconds.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the operator Lease",
            m.leader.clone(),
        );
        r.register(
            "caches_synced_seconds",
            "Seconds from taking the lead until the Machine and Deployment caches were full (0 before)",
            m.caches_synced_seconds.clone(),
        );
        m
    }
}
