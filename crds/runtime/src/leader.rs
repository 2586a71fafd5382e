//! Leader election with a coordination.k8s.io/v1 Lease, with the semantics of client-go's
//! `leaderelection`: one identity at a time holds the Lease and renews it; a standby takes it
//! over when the holder releases it or stops renewing for the lease duration.
//!
//! Safety rests on two rules. Every write is an update carrying the resourceVersion that was
//! read, so a 409 Conflict means someone else wrote and we re-read instead of overwriting.
//! Expiry is judged by the local monotonic time at which this process last saw the Lease
//! record change (client-go's `observedTime`), never by comparing `renewTime` with the local
//! clock. A leader that cannot renew for `renew_deadline` (shorter than `lease_duration`)
//! gives up before any standby may take over, so two terms never overlap.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), ironpool_runtime::leader::LeaderError> {
//! use ironpool_runtime::leader::{LeaderElector, LeaseConfig};
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let config = LeaseConfig::new("ironpool-system", "ironpool-operator", "pod-a");
//! let elector = LeaderElector::new(client, config);
//! if let Some(term) = elector.acquire(&cancel).await? {
//!     let lost = term.lost();
//!     // run controllers until `lost` or `cancel` fires, stop them, then:
//!     term.release().await?;
//! #   let _ = lost;
//! }
//! # Ok(())
//! # }
//! ```

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use kube::Api;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod config;
mod record;

pub use config::{
    DEFAULT_LEASE_DURATION, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD, LeaderError, LeaseConfig,
};
use config::{JITTER, Shared};
use record::{Attempt, clear_holder, is_refused, try_acquire_or_renew};

/// Contends for one Lease as one identity. After a term ends, call
/// [`LeaderElector::acquire`] again to stand by once more.
pub struct LeaderElector {
    shared: Arc<Shared>,
}

impl LeaderElector {
    /// An elector for the Lease `config.namespace/config.name` as `config.identity`.
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        let api = Api::namespaced(client, &config.namespace);
        let lease = config.lease_ref();
        LeaderElector {
            shared: Arc::new(Shared { api, config, lease }),
        }
    }

    /// Waits until this identity holds the lease; None if `cancel` fires first.
    ///
    /// Creates the Lease when it is missing and takes it when its holder is empty or it has
    /// not changed for its `leaseDurationSeconds` as observed by this process (so a newly
    /// started standby waits one full lease duration before taking over a silent holder).
    /// A Lease that already names this identity (a restarted replica) is taken at once, so
    /// identities must be unique per replica.
    /// Transient API errors are logged and retried; a refused request (401/403) and an
    /// unsafe config are returned as errors.
    pub async fn acquire(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Option<LeaderTerm>, LeaderError> {
        let shared = &self.shared;
        let config = &shared.config;
        config.validate()?;
        let mut observed = None;
        let mut waiting_for: Option<String> = None;
        loop {
            let started = Instant::now();
            let attempt = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(None),
                attempt = tokio::time::timeout(
                    config.renew_deadline,
                    try_acquire_or_renew(shared, &mut observed, false),
                ) => attempt,
            };
            match attempt {
                Ok(Ok(Attempt::Leading {
                    transitions,
                    took_over,
                })) => {
                    tracing::info!(
                        identity = %config.identity, lease = %shared.lease, transitions,
                        took_over, "acquired leadership"
                    );
                    return Ok(Some(LeaderTerm::start(
                        shared.clone(),
                        started,
                        transitions,
                    )));
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    if waiting_for.as_deref() != Some(&holder) {
                        tracing::info!(
                            identity = %config.identity, lease = %shared.lease, %holder,
                            "standing by: the lease is held by another identity"
                        );
                        waiting_for = Some(holder);
                    }
                }
                Ok(Ok(Attempt::Conflict)) => {
                    tracing::debug!(lease = %shared.lease, "lease changed while acquiring; retrying");
                }
                Ok(Err(source)) if is_refused(&source) => {
                    return Err(LeaderError::Forbidden {
                        lease: shared.lease.clone(),
                        action: "acquiring the lease",
                        source,
                    });
                }
                Ok(Err(error)) => {
                    tracing::warn!(lease = %shared.lease, %error, "acquiring the lease failed; retrying");
                }
                Err(_) => {
                    tracing::warn!(lease = %shared.lease, "acquiring the lease timed out; retrying");
                }
            }
            let pause = config
                .retry_period
                .mul_f64(1.0 + JITTER * random_fraction());
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// One period of leadership. Renews the Lease in the background until it is released,
/// dropped, or lost. Dropping it without [`LeaderTerm::release`] stops renewal (like a crash:
/// the Lease then expires on its own) and cancels [`LeaderTerm::lost`].
pub struct LeaderTerm {
    shared: Arc<Shared>,
    lost: CancellationToken,
    stop: CancellationToken,
    renewer: Option<JoinHandle<()>>,
    transitions: i32,
}

impl LeaderTerm {
    fn start(shared: Arc<Shared>, acquired: Instant, transitions: i32) -> Self {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let renewer = tokio::spawn(renew(shared.clone(), acquired, stop.clone(), lost.clone()));
        LeaderTerm {
            shared,
            lost,
            stop,
            renewer: Some(renewer),
            transitions,
        }
    }

    /// Cancelled the moment leadership is lost: renewal failed for renew_deadline, or another
    /// identity holds the lease. Also cancelled when the term is released or dropped. Stop
    /// all leader-only work when it fires.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// The Lease's `leaseTransitions` when this term began.
    pub fn transitions(&self) -> i32 {
        self.transitions
    }

    /// This term's identity.
    pub fn identity(&self) -> &str {
        &self.shared.config.identity
    }

    /// Graceful step-down: stop renewing and clear holderIdentity (only if we still hold it)
    /// so a standby takes over at once. Cancels [`LeaderTerm::lost`] first; call it after
    /// leader-only work has stopped. Gives up after `renew_deadline`.
    pub async fn release(mut self) -> Result<(), LeaderError> {
        self.lost.cancel();
        self.stop.cancel();
        if let Some(renewer) = self.renewer.take() {
            // The renewer only returns; a panic there leaves nothing to clean up.
            let _ = renewer.await;
        }
        let shared = &self.shared;
        match tokio::time::timeout(shared.config.renew_deadline, clear_holder(shared)).await {
            Ok(result) => result,
            Err(_) => Err(LeaderError::ReleaseIncomplete {
                lease: shared.lease.clone(),
                reason: format!("no answer within {:?}", shared.config.renew_deadline),
            }),
        }
    }
}

impl Drop for LeaderTerm {
    fn drop(&mut self) {
        self.lost.cancel();
        self.stop.cancel();
    }
}

/// Renews every retry_period until `stop`, another holder, or renew_deadline without a
/// successful renewal; then cancels `lost`. `last_ok` is when the last successful write was
/// sent (not answered), so the deadline never outlives what a standby observes.
async fn renew(
    shared: Arc<Shared>,
    mut last_ok: Instant,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    let config = &shared.config;
    let mut observed = None;
    loop {
        let deadline = last_ok + config.renew_deadline;
        let next = (Instant::now() + config.retry_period).min(deadline);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        if Instant::now() >= deadline {
            break;
        }
        let started = Instant::now();
        let attempt = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            attempt = tokio::time::timeout_at(
                deadline,
                try_acquire_or_renew(&shared, &mut observed, true),
            ) => attempt,
        };
        match attempt {
            Ok(Ok(Attempt::Leading { .. })) => last_ok = started,
            Ok(Ok(Attempt::HeldBy(holder))) => {
                tracing::warn!(
                    identity = %config.identity, lease = %shared.lease, %holder,
                    "the lease no longer names this identity; leadership lost"
                );
                lost.cancel();
                return;
            }
            Ok(Ok(Attempt::Conflict)) => {
                tracing::debug!(lease = %shared.lease, "lease changed while renewing; retrying");
            }
            Ok(Err(error)) => {
                tracing::warn!(lease = %shared.lease, %error, "renewing the lease failed; retrying");
            }
            Err(_) => break,
        }
    }
    tracing::warn!(
        identity = %config.identity, lease = %shared.lease,
        renew_deadline = ?config.renew_deadline,
        "no renewal succeeded within the renew deadline; leadership lost"
    );
    lost.cancel();
}

/// A random number in [0, 1) from the standard library's randomly keyed hasher.
fn random_fraction() -> f64 {
    (RandomState::new().hash_one(std::time::Instant::now()) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn unsafe_timings_are_rejected() {
        let ok = LeaseConfig::new("ns", "lease", "me");
        assert!(ok.validate().is_ok());
        let cases = [
            (
                LeaseConfig {
                    identity: String::new(),
                    ..ok.clone()
                },
                "identity is empty",
            ),
            (
                LeaseConfig {
                    retry_period: Duration::ZERO,
                    ..ok.clone()
                },
                "retry_period is zero",
            ),
            (
                LeaseConfig {
                    renew_deadline: Duration::from_secs(2),
                    ..ok.clone()
                },
                "renew_deadline must be longer than retry_period",
            ),
            (
                LeaseConfig {
                    lease_duration: Duration::from_secs(10),
                    ..ok.clone()
                },
                "lease_duration must be longer than renew_deadline",
            ),
        ];
        for (config, expected) in cases {
            let message = config
                .validate()
                .map(|_| String::new())
                .unwrap_or_else(|e| e.to_string());
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
            assert!(message.contains("Lease ns/lease"), "{message:?}");
        }
    }

    #[test]
    fn lease_duration_rounds_up_to_whole_seconds() {
        let mut config = LeaseConfig::new("ns", "lease", "me");
        assert_eq!(config.lease_duration_seconds(), 15);
        config.lease_duration = Duration::from_millis(2500);
        assert_eq!(config.lease_duration_seconds(), 3);
    }

    #[test]
    fn random_fraction_stays_in_unit_interval() {
        for _ in 0..1000 {
            let f = random_fraction();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
