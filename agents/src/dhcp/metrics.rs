//! Prometheus metrics of the DHCP server: packets by message type and outcome, journal
//! commits, dropped events.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

/// Labels of `ironpool_dhcp_packets_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PacketLabels {
    /// DHCP message type (discover, request, ...) or `malformed`.
    pub msg_type: String,
    /// replied, accepted, ignored, invalid, exhausted, dropped, deadline, journal_error.
    pub outcome: String,
}

/// A packet counter by its message type and outcome labels.
type Resolved = (&'static str, &'static str, Counter);

/// The DHCP server's metrics. Cheap to clone (shared counters).
#[derive(Clone, Debug, Default)]
pub struct DhcpMetrics {
    /// The packet counters already looked up, by label pair: counting a packet is then a
    /// short scan and an atomic add, not two label Strings and a hash of them per packet.
    resolved: Arc<Mutex<Vec<Resolved>>>,
    /// Packets by message type and outcome.
    pub packets: Family<PacketLabels, Counter>,
    /// Journal fsyncs (each one a group commit).
    pub journal_syncs: Counter,
    /// Journal records written.
    pub journal_records: Counter,
    /// Events dropped because the receiver was full.
    pub events_dropped: Counter,
    /// ICMP probes of addresses about to be offered, by result (free, in_use, error).
    pub probes: Family<ProbeLabels, Counter>,
}

/// Labels of `ironpool_dhcp_probes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// free, in_use or error.
    pub result: String,
}

impl DhcpMetrics {
    /// New, unregistered metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the metrics with the `ironpool_dhcp_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("ironpool_dhcp");
        sub.register(
            "packets",
            "DHCP packets by message type and outcome",
            self.packets.clone(),
        );
        sub.register(
            "journal_syncs",
            "Lease journal fsyncs (group commits)",
            self.journal_syncs.clone(),
        );
        sub.register(
            "journal_records",
            "Lease journal records written",
            self.journal_records.clone(),
        );
        sub.register(
            "events_dropped",
            "Flight-recorder events dropped (receiver full)",
            self.events_dropped.clone(),
        );
        sub.register(
            "probes",
            "ICMP echo probes of addresses about to be offered, by result",
            self.probes.clone(),
        );
    }

    /// Counts one probe.
    pub fn probe(&self, result: &str) {
        self.probes
            .get_or_create(&ProbeLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts one packet.
    pub fn packet(&self, msg_type: &'static str, outcome: &'static str) {
        let Ok(mut resolved) = self.resolved.lock() else {
            return self.count_slow(msg_type, outcome);
        };
        if let Some((_, _, c)) = resolved
            .iter()
            .find(|(m, o, _)| *m == msg_type && *o == outcome)
        {
            c.inc();
            return;
        }
        let counter = self
            .packets
            .get_or_create(&PacketLabels {
                msg_type: msg_type.to_string(),
                outcome: outcome.to_string(),
            })
            .clone();
        counter.inc();
        resolved.push((msg_type, outcome, counter));
    }

    fn count_slow(&self, msg_type: &str, outcome: &str) {
        self.packets
            .get_or_create(&PacketLabels {
                msg_type: msg_type.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The count for one label pair (for tests and the dev server's summary).
    pub fn count(&self, msg_type: &str, outcome: &str) -> u64 {
        self.packets
            .get_or_create(&PacketLabels {
                msg_type: msg_type.to_string(),
                outcome: outcome.to_string(),
            })
            .get()
    }
}
