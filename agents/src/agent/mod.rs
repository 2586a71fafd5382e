//! The network agent: glue between the Kubernetes API and the DHCP, TFTP and HTTP boot
//! servers. Reflectors keep Subnets, Machines and Deployments in memory ([`stores`]); a
//! per-Subnet Lease decides which agent serves each Subnet ([`election`]); reservations
//! follow Machines and Deployments ([`reservations`], [`serving`]); unknown MACs become
//! enlisted Machines ([`enlist`]); every boot step lands in the Machine's `status.boot` and
//! in Events ([`recorder`]); ramdisk reports land in Machine status ([`adapter`]).
//! [`run`] wires them under one cancellation tree.

pub mod adapter;
pub mod config;
pub mod election;
pub mod enlist;
pub mod health;
pub mod netconfig;
pub mod recorder;
pub mod reservations;
pub mod run;
pub mod selector;
pub mod serving;
pub mod stores;

pub use config::{AgentConfig, Cli, LogFormat};
pub use run::run;

/// Field manager of the Subnet `status.servedBy` writes (and of the power controller).
pub const MANAGER: &str = "ironpool-agent";
/// Field manager of Machine `status.boot` (the flight recorder).
pub const MANAGER_BOOT: &str = "ironpool-agent-boot";
/// Field manager of Machine `status.hardware` (ramdisk inventory).
pub const MANAGER_HARDWARE: &str = "ironpool-agent-hardware";
/// Field manager of Machine `status.provisioning` (ramdisk progress and result).
pub const MANAGER_PROVISIONING: &str = "ironpool-agent-provisioning";
/// Field manager of Machine `status.rescue` (the rescue ramdisk's result).
pub const MANAGER_RESCUE: &str = "ironpool-agent-rescue";

/// Everything that can stop the agent; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag or environment variable is invalid.
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// The Kubernetes API failed or refused a call.
    #[error("Kubernetes API: {0}; check the agent's RBAC and that the apiserver is reachable")]
    Kube(#[from] kube::Error),
    /// The DHCP server could not start.
    #[error(transparent)]
    Dhcp(#[from] crate::dhcp::DhcpError),
    /// The TFTP server could not start.
    #[error(transparent)]
    Tftp(#[from] crate::tftp::TftpError),
    /// The HTTP boot server could not start.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// A listener or file could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. "bind metrics on 0.0.0.0:9090".
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            AgentError::Config(_) => "config",
            AgentError::Kube(_) => "kube",
            AgentError::Dhcp(e) => e.metric_label(),
            AgentError::Tftp(e) => e.metric_label(),
            AgentError::Http(e) => e.metric_label(),
            AgentError::Io { .. } => "io",
        }
    }
}
