//! Read-only TFTP server for boot files: RFC 1350 with option negotiation (RFC 2347),
//! blksize (2348), tsize and timeout (2349) and windowsize (7440). Read bottom-up: the
//! error type (here) and the counters ([`metrics`]) at the base; packets are parsed in
//! [`packet`], each transfer is a pure state machine in [`session`], paths are confined to
//! the root in [`root`]; [`transfer`] runs the blocking data loop of one transfer on its
//! ephemeral socket, and [`server`], on top, owns the listening socket and gives each
//! transfer a thread.

pub mod metrics;
pub mod packet;
pub mod root;
pub mod server;
pub mod session;
pub mod transfer;

pub use metrics::TftpMetrics;
pub use server::{TftpEvent, TftpEventKind, TftpServer};

/// Everything that can go wrong in the TFTP area.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// A packet could not be parsed.
    #[error("malformed TFTP packet: {0}")]
    Malformed(&'static str),
    /// The requested path leaves the root (`..`, absolute, symlink out) or is not a file.
    #[error("access violation: {0}")]
    AccessViolation(String),
    /// The requested file does not exist.
    #[error("file not found: {0}")]
    NotFound(String),
    /// Socket or file I/O failed.
    #[error("TFTP I/O {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl TftpError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TftpError::Malformed(_) => "malformed",
            TftpError::AccessViolation(_) => "access_violation",
            TftpError::NotFound(_) => "not_found",
            TftpError::Io { .. } => "io",
        }
    }
}
