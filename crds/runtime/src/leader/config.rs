//! What leader election is given and what its parts share: the Lease's timing and identity
//! ([`LeaseConfig`], checked for safe election), the error type, and the state the elector,
//! its terms and the Lease record code ([`super::record`]) have in common.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

/// How long a Lease stays valid without renewal (`leaseDurationSeconds`), by default.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long a leader keeps trying to renew before it considers leadership lost, by default.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a leader renews and a standby retries, by default.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// A standby waits `retry_period` plus up to this fraction of it between attempts.
pub(super) const JITTER: f64 = 0.2;
/// Attempts to clear the holder on release when other writers conflict.
pub(super) const RELEASE_ATTEMPTS: u32 = 5;

/// Which Lease to contend for, as whom, and the timing of election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease, e.g. `ironpool-operator`.
    pub name: String,
    /// This process's identity (unique per replica, e.g. the pod name).
    pub identity: String,
    /// How long the Lease stays valid without renewal; written as `leaseDurationSeconds`
    /// (rounded up to whole seconds).
    pub lease_duration: Duration,
    /// How long the leader keeps retrying renewal before it gives up leadership; must be
    /// shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// Interval between renewals of the leader and between attempts of a standby; must be
    /// shorter than `renew_deadline`.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// A config with the default timing (15 s lease, 10 s renew deadline, 2 s retry).
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    pub(super) fn validate(&self) -> Result<(), LeaderError> {
        let problem = if self.identity.is_empty() {
            "identity is empty; use a name unique to this replica, such as the pod name"
        } else if self.retry_period.is_zero() {
            "retry_period is zero; use a positive interval such as 2s"
        } else if self.renew_deadline <= self.retry_period {
            "renew_deadline must be longer than retry_period, or the leader never retries"
        } else if self.lease_duration <= self.renew_deadline {
            "lease_duration must be longer than renew_deadline, or a standby may take over \
             while the leader still believes it leads"
        } else {
            return Ok(());
        };
        Err(LeaderError::InvalidConfig {
            lease: self.lease_ref(),
            problem: problem.into(),
        })
    }

    pub(super) fn lease_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub(super) fn lease_duration_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// What went wrong in leader election; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The timing or identity cannot give safe election.
    #[error("leader election for Lease {lease}: {problem}")]
    InvalidConfig {
        /// `namespace/name` of the Lease.
        lease: String,
        /// What is wrong.
        problem: String,
    },
    /// The apiserver refused access to the Lease.
    #[error(
        "Lease {lease}: {action} was refused: {source}; grant this ServiceAccount get, create and update on coordination.k8s.io leases in its namespace"
    )]
    Forbidden {
        /// `namespace/name` of the Lease.
        lease: String,
        /// What was being done.
        action: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A request to the apiserver failed.
    #[error(
        "Lease {lease}: {action} failed: {source}; check that the apiserver is reachable (the Lease expires on its own after leaseDurationSeconds)"
    )]
    Api {
        /// `namespace/name` of the Lease.
        lease: String,
        /// What was being done.
        action: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Releasing did not finish in time or kept conflicting with other writers.
    #[error(
        "Lease {lease}: could not clear the holder ({reason}); the Lease expires on its own after leaseDurationSeconds"
    )]
    ReleaseIncomplete {
        /// `namespace/name` of the Lease.
        lease: String,
        /// Why.
        reason: String,
    },
}

/// What the elector and its terms share.
pub(super) struct Shared {
    pub(super) api: Api<Lease>,
    pub(super) config: LeaseConfig,
    pub(super) lease: String,
}
