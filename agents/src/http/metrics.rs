//! Prometheus metrics of the HTTP boot server: requests by route and status, bytes served,
//! image fetches by result, cache size, dropped flight-recorder events.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `ironpool_http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route template: boot, assets, images, inventory, progress, result, plan, other.
    pub route: String,
    /// HTTP status code.
    pub status: u16,
}

/// Labels of `ironpool_http_image_fetches_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// hit, joined, downloaded, evicted, or an error label (upstream, checksum_mismatch,
    /// too_large, io).
    pub result: String,
}

/// The HTTP server's metrics. Cheap to clone (shared counters).
#[derive(Clone, Debug, Default)]
pub struct HttpMetrics {
    /// Requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Body bytes of assets and images sent.
    pub bytes_served: Counter,
    /// Image cache fetches by result.
    pub image_fetches: Family<FetchLabels, Counter>,
    /// Bytes of verified images in the cache.
    pub cache_bytes: Gauge,
    /// Flight-recorder events dropped because the receiver was full.
    pub events_dropped: Counter,
}

impl HttpMetrics {
    /// New, unregistered metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the metrics with the `ironpool_http_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("ironpool_http");
        sub.register(
            "requests",
            "HTTP requests by route and status",
            self.requests.clone(),
        );
        sub.register(
            "served_bytes",
            "Asset and image body bytes sent",
            self.bytes_served.clone(),
        );
        sub.register(
            "image_fetches",
            "Image cache fetches by result",
            self.image_fetches.clone(),
        );
        sub.register(
            "cache_bytes",
            "Bytes of verified images in the cache",
            self.cache_bytes.clone(),
        );
        sub.register(
            "events_dropped",
            "Flight-recorder events dropped (receiver full)",
            self.events_dropped.clone(),
        );
    }

    /// Counts one request.
    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                status,
            })
            .inc();
    }

    /// The count of one route and status (for tests).
    pub fn request_count(&self, route: &str, status: u16) -> u64 {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                status,
            })
            .get()
    }

    /// Counts one image fetch outcome.
    pub fn image_fetch(&self, result: &str) {
        self.image_fetches
            .get_or_create(&FetchLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// The count of one image fetch outcome (for tests).
    pub fn image_fetch_count(&self, result: &str) -> u64 {
        self.image_fetches
            .get_or_create(&FetchLabels {
                result: result.to_string(),
            })
            .get()
    }
}
