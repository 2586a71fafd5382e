//! DHCPv4 server of the network agent: a pure message pipeline on `dhcproto` types
//! ([`pipeline::handle`]), the lease table it decides against ([`leases`]), PXE boot-file
//! selection ([`pxe`]), a crash-safe lease [`journal`] with group commit, and a thin
//! socket loop ([`server`]).

pub mod config;
pub mod journal;
pub mod leases;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod probe;
pub mod pxe;
pub mod reply;
pub mod server;

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

pub use config::{BootConfig, Reservation, ServerConfig, SubnetConfig};
pub use leases::{Lease, LeaseState, LeaseTable};
pub use pipeline::{Decision, Effect, Outcome, ReplyTo, Request, ServerState, handle};
pub use server::DhcpServer;

/// Everything that can go wrong in the DHCP area: configuration, journal and socket I/O.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// A Subnet or server setting is invalid; the message says which field and why.
    #[error("invalid DHCP configuration: {0}")]
    Config(String),
    /// A MAC address could not be parsed.
    #[error("'{0}' is not a MAC address; write it like 3c:ec:ef:12:34:56")]
    BadMac(String),
    /// Reading, writing or syncing the lease journal failed.
    #[error("lease journal {path}: {source}")]
    Journal {
        /// The journal file.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The journal writer thread is gone (shut down or crashed).
    #[error("lease journal writer has stopped")]
    JournalClosed,
    /// Creating, binding or using a socket failed.
    #[error("DHCP socket {what}: {source}")]
    Socket {
        /// What was being done, e.g. "bind 0.0.0.0:67 on eno2".
        what: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl DhcpError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            DhcpError::Config(_) | DhcpError::BadMac(_) => "config",
            DhcpError::Journal { .. } | DhcpError::JournalClosed => "journal",
            DhcpError::Socket { .. } => "socket",
        }
    }
}

/// An Ethernet hardware address (the DHCP `chaddr` of an Ethernet client).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The address with dashes, lower case (`3c-ec-ef-12-34-56`), as used in boot URLs.
    pub fn dashed(&self) -> String {
        self.to_string().replace(':', "-")
    }

    /// The first six bytes of a `chaddr`, if there are six.
    pub fn from_chaddr(chaddr: &[u8]) -> Option<MacAddr> {
        let bytes: [u8; 6] = chaddr.get(..6)?.try_into().ok()?;
        Some(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = DhcpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DhcpError::BadMac(s.to_string());
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(out))
    }
}

/// What happened to a client, reported out of the pipeline for the boot flight recorder and
/// enlistment. The agent decides what to record; the DHCP server never talks to Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpEvent {
    /// The client's hardware address.
    pub mac: MacAddr,
    /// What happened.
    pub kind: DhcpEventKind,
    /// The address concerned (offered, acknowledged, declined, released), if any.
    pub ip: Option<Ipv4Addr>,
    /// Human-readable detail, e.g. "ipxe.efi over TFTP" or "pool exhausted".
    pub detail: String,
    /// Whether the MAC has a reservation (a known Machine); false means "enlist me".
    pub known: bool,
    /// The client's firmware (option 93), if it sent one: enlistment takes the Machine's
    /// boot mode and architecture from it.
    pub arch: Option<pxe::Arch>,
}

/// Kinds of [`DhcpEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhcpEventKind {
    /// A DISCOVER arrived.
    Discover,
    /// An OFFER was sent.
    Offer,
    /// An ACK was decided (sent once its lease is durable).
    Ack,
    /// A NAK was sent.
    Nak,
    /// The client declined its address (it is quarantined).
    Decline,
    /// The client released its address.
    Release,
}
