//! HTTP boot server of the network agent: iPXE scripts per MAC ([`script`]), static boot
//! assets with Range support ([`files`]), the content-addressed image cache ([`cache`]) and
//! the machine API the boot ramdisk calls with a per-machine token ([`api`], [`token`]).
//!
//! Decisions are pure (script rendering, token derivation, Range parsing, plan building);
//! [`server`], [`zerocopy`] (image and asset downloads with `sendfile`) and [`fetch`]
//! are the only files that touch sockets. The agent plugs in its
//! Machine reflector through [`BootSource`] and writes Machine status through
//! [`ReportSink`]; both have in-memory implementations in [`memory`] for tests.
//!
//! Read bottom-up: the error and the shared types here, [`metrics`], [`source`] and
//! [`token`] at the base; [`state`] (what every request shares); [`handlers`] (one
//! function per route) and [`zerocopy`] (the connection loop that sends images and assets
//! with `sendfile` and hands every other request to the router); [`server`] on top.

pub mod api;
pub mod cache;
pub mod fetch;
pub mod files;
pub mod handlers;
pub mod memory;
pub mod metrics;
pub mod reprdigest;
pub mod script;
pub mod server;
pub mod source;
pub mod state;
pub mod token;
pub mod zerocopy;

pub use crate::dhcp::MacAddr;
pub use api::{
    CloudInitSeed, InventoryReport, OsCheckIn, Plan, PlanImage, ProgressReport, ResultReport,
    UserDataResult,
};
pub use cache::{CacheKey, ImageCache, Lookup};
pub use memory::{MemoryBootSource, MemoryReportSink, Report};
pub use metrics::HttpMetrics;
pub use script::{ScriptConfig, render_script};
pub use source::{
    BootEvent, BootSource, DeployInputs, ImageRef, MachineView, ReportSink, SecretKey,
};
pub use state::{HttpServer, ServerConfig, route_label};
pub use token::TokenKey;

/// Everything that can go wrong in the HTTP area: configuration, the image cache, upstream
/// fetches, the report sink and the listener.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    /// A setting is invalid; the message says which and why.
    #[error("invalid HTTP server configuration: {0}")]
    Config(String),
    /// A checksum string is not `sha256:<64 hex>` or `sha512:<128 hex>`.
    #[error(
        "'{0}' is not an image checksum; write sha256:<64 lower-case hex digits> or \
         sha512:<128 lower-case hex digits>"
    )]
    BadChecksum(String),
    /// The upstream server could not be reached or answered with an error.
    #[error("fetching image {url}: {message}")]
    Upstream {
        /// The upstream URL.
        url: String,
        /// What went wrong, e.g. "HTTP 404 Not Found".
        message: String,
    },
    /// The downloaded bytes do not match the declared checksum; nothing was cached.
    #[error(
        "image {url} does not match its checksum: expected {expected}, got {got} \
         ({bytes} bytes downloaded); nothing was cached — fix the checksum or the image"
    )]
    ChecksumMismatch {
        /// The upstream URL.
        url: String,
        /// The checksum the Deployment declared.
        expected: String,
        /// The checksum of what was downloaded.
        got: String,
        /// How many bytes were downloaded.
        bytes: u64,
    },
    /// The image is larger than the whole cache may hold.
    #[error("image {url} is larger than the cache limit of {limit} bytes; raise the limit")]
    TooLarge {
        /// The upstream URL.
        url: String,
        /// The cache limit in bytes.
        limit: u64,
    },
    /// Reading or writing a local file failed.
    #[error("{what}: {message}")]
    Io {
        /// What was being done, e.g. "create /var/cache/ironpool/images".
        what: String,
        /// The I/O error.
        message: String,
    },
    /// The report sink (Machine status writer) failed.
    #[error("recording the machine's report failed: {0}")]
    Sink(String),
}

impl HttpError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            HttpError::Config(_) | HttpError::BadChecksum(_) => "config",
            HttpError::Upstream { .. } => "upstream",
            HttpError::ChecksumMismatch { .. } => "checksum_mismatch",
            HttpError::TooLarge { .. } => "too_large",
            HttpError::Io { .. } => "io",
            HttpError::Sink(_) => "sink",
        }
    }

    /// An [`HttpError::Io`] from an I/O error and what was being done.
    pub fn io(what: impl Into<String>, err: &std::io::Error) -> Self {
        HttpError::Io {
            what: what.into(),
            message: err.to_string(),
        }
    }
}
