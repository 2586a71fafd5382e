//! TFTP metrics: transfers by result and DATA retransmissions (`ironpool_tftp_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of `ironpool_tftp_transfers_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// completed, size_query, failed, refused, malformed.
    pub result: String,
}

/// TFTP metrics. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct TftpMetrics {
    /// Transfers and refused/malformed requests by result.
    pub transfers: Family<ResultLabel, Counter>,
    /// DATA packets retransmitted.
    pub retransmits: Counter,
}

impl TftpMetrics {
    /// Registers with the `ironpool_tftp_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("ironpool_tftp");
        sub.register(
            "transfers",
            "TFTP requests by result",
            self.transfers.clone(),
        );
        sub.register(
            "retransmits",
            "TFTP DATA packets sent again after a timeout",
            self.retransmits.clone(),
        );
    }

    /// Counts one request result.
    pub fn count(&self, result: &str) {
        self.transfers
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// The count of one result.
    pub fn get(&self, result: &str) -> u64 {
        self.transfers
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .get()
    }
}
