//! The one error type of the BMC drivers, classified for a person who must fix something.

use std::time::Duration;

/// A failed BMC call. Each variant names a different thing a person must fix, and its
/// message says what.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    /// `spec.bmc.address` cannot be used.
    #[error(
        "BMC address {address:?} is not usable: {detail}; write it as redfish://host/..., \
         redfish+https://host/..., redfish+http://host/... or ipmi://host[:port]"
    )]
    InvalidAddress {
        /// The address as written.
        address: String,
        /// What is wrong with it.
        detail: String,
    },
    /// No connection: refused, no route, DNS failure, reset.
    #[error(
        "cannot reach the BMC at {host}: {detail}; check spec.bmc.address, that the BMC is \
         powered and that this agent's node can reach the management network"
    )]
    Unreachable {
        /// host[:port] of the BMC.
        host: String,
        /// The underlying error.
        detail: String,
    },
    /// The BMC's TLS certificate did not verify.
    #[error(
        "the TLS certificate of the BMC at {host} did not verify ({detail}); give the agent \
         the CA bundle that signed it, or set spec.bmc.insecureSkipVerify: true for a lab BMC \
         with a self-signed certificate"
    )]
    TlsVerification {
        /// host[:port] of the BMC.
        host: String,
        /// What rustls reported.
        detail: String,
    },
    /// The BMC rejected the username or password.
    #[error(
        "the BMC at {host} rejected the credentials; check the `username` and `password` keys \
         of the Secret named by spec.bmc.credentialsSecretRef"
    )]
    Authentication {
        /// host[:port] of the BMC.
        host: String,
    },
    /// The BMC does not offer what was asked.
    #[error(
        "the BMC at {host} does not support {what} (it offers: {offered}); this machine needs \
         a firmware update or must be powered by hand"
    )]
    Unsupported {
        /// host[:port] of the BMC.
        host: String,
        /// What was asked, e.g. "power action Cycle".
        what: String,
        /// What the BMC advertises instead.
        offered: String,
    },
    /// The BMC answered something the driver cannot use.
    #[error(
        "the BMC at {host} answered {operation} unexpectedly: {detail}; if it persists, report \
         the BMC model and firmware version with this message"
    )]
    Protocol {
        /// host[:port] of the BMC.
        host: String,
        /// The operation, e.g. "GET /redfish/v1/Systems".
        operation: String,
        /// What was wrong.
        detail: String,
    },
    /// The BMC did not answer in time.
    #[error(
        "the BMC at {host} did not answer {operation} within {after:?}; it may be overloaded or \
         hung (a BMC reset often helps); the agent retries with backoff"
    )]
    Timeout {
        /// host[:port] of the BMC.
        host: String,
        /// The operation.
        operation: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The agent itself lacks something (e.g. the ipmitool program).
    #[error("the agent cannot drive this BMC: {0}")]
    Setup(String),
}

impl BmcError {
    /// A short, stable label for metrics and condition reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BmcError::InvalidAddress { .. } => "InvalidAddress",
            BmcError::Unreachable { .. } => "Unreachable",
            BmcError::TlsVerification { .. } => "TLSVerificationFailed",
            BmcError::Authentication { .. } => "AuthenticationFailed",
            BmcError::Unsupported { .. } => "ActionUnsupported",
            BmcError::Protocol { .. } => "BadResponse",
            BmcError::Timeout { .. } => "Timeout",
            BmcError::Setup(_) => "AgentSetup",
        }
    }

    /// Whether retrying soon can help (unreachable, timeout, odd answers) as opposed to
    /// failures that need a person (credentials, TLS, unsupported, address).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BmcError::Unreachable { .. } | BmcError::Timeout { .. } | BmcError::Protocol { .. }
        )
    }
}
