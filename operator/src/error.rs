//! The operator's error type; each variant says what went wrong and carries a metric label.

use std::time::Duration;

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    /// Someone else wrote the object between our read and our write; we read it again.
    #[error("{0} changed while we were deciding; reconciling again with the new state")]
    Conflict(String),
    /// Address management failed.
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    /// Adding or removing the Deployment finalizer failed.
    #[error("Deployment finalizer: {0}")]
    Finalizer(String),
    /// A deleted Deployment's machine is still being released; the finalizer stays until it is.
    #[error("{0}")]
    Releasing(String),
    /// An object lacks something the API guarantees (e.g. a namespace).
    #[error("{0}")]
    Malformed(String),
}

impl Error {
    /// Short label for the `ironpool_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Conflict(_) => "conflict",
            Error::Ipam(_) => "ipam",
            Error::Finalizer(_) => "finalizer",
            Error::Releasing(_) => "releasing",
            Error::Malformed(_) => "malformed",
        }
    }

    /// How long to wait before retrying after the `failures`-th consecutive failure:
    /// conflicts retry at once (the object changed; read it again), everything else backs
    /// off exponentially from 1s to 5 minutes so a broken apiserver is not hammered.
    pub fn backoff(&self, failures: u32) -> Duration {
        match self {
            Error::Conflict(_) => Duration::from_millis(100),
            Error::Releasing(_) => Duration::from_secs(2),
            _ => Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300)),
        }
    }
}

/// Maps a 409 from the apiserver to [`Error::Conflict`].
pub fn conflict_as(e: kube::Error, what: impl FnOnce() -> String) -> Error {
    match &e {
        kube::Error::Api(s) if s.code == 409 => Error::Conflict(what()),
        _ => Error::Kube(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let e = Error::Malformed("x".into());
        assert_eq!(e.backoff(0), Duration::from_secs(1));
        assert_eq!(e.backoff(3), Duration::from_secs(8));
        assert_eq!(e.backoff(30), Duration::from_secs(256));
        assert_eq!(
            Error::Conflict("m".into()).backoff(9),
            Duration::from_millis(100)
        );
    }
}
