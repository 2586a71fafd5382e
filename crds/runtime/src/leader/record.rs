//! One read and at most one write of the election Lease: acquire or renew it, or clear
//! its holder on release. Every write carries the resourceVersion that was read.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use tokio::time::Instant;

use super::config::{LeaderError, RELEASE_ATTEMPTS, Shared};

/// The Lease record as last seen, and when (local monotonic time) it last changed.
pub(super) struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

/// The outcome of one attempt to acquire or renew.
pub(super) enum Attempt {
    /// We hold the Lease; `took_over` when the holder was someone else (or nobody).
    Leading { transitions: i32, took_over: bool },
    /// Someone else holds it (for a standby: validly; for a leader: at all).
    HeldBy(String),
    /// Someone else wrote between our read and our write.
    Conflict,
}

/// One read and at most one write of the Lease. `leading` makes any other holder (even an
/// expired one, or none) a loss rather than something to take over.
pub(super) async fn try_acquire_or_renew(
    shared: &Shared,
    observed: &mut Option<Observed>,
    leading: bool,
) -> Result<Attempt, kube::Error> {
    let config = &shared.config;
    let Some(current) = shared.api.get_opt(&config.name).await? else {
        if leading {
            return Ok(Attempt::HeldBy(String::new()));
        }
        return create(shared, observed).await;
    };
    let spec = current.spec.clone().unwrap_or_default();
    let seen = match observed.take() {
        Some(o) if o.spec == spec => o,
        _ => Observed {
            spec: spec.clone(),
            at: Instant::now(),
        },
    };
    let seen_at = seen.at;
    *observed = Some(seen);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let mine = holder == config.identity;
    if leading && !mine {
        return Ok(Attempt::HeldBy(holder));
    }
    if !holder.is_empty() && !mine {
        let valid_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .filter(|&s| s > 0)
            .map_or(config.lease_duration, Duration::from_secs);
        if seen_at + valid_for > Instant::now() {
            return Ok(Attempt::HeldBy(holder));
        }
    }
    let now = MicroTime(Timestamp::now());
    let mut next = spec.clone();
    if !mine {
        next.acquire_time = Some(now.clone());
        next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    next.holder_identity = Some(config.identity.clone());
    next.renew_time = Some(now);
    next.lease_duration_seconds = Some(config.lease_duration_seconds());
    let lease = Lease {
        metadata: current.metadata,
        spec: Some(next),
    };
    match shared
        .api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(written) => Ok(leading_after_write(written, observed, !mine)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
        Err(error) => Err(error),
    }
}

async fn create(shared: &Shared, observed: &mut Option<Observed>) -> Result<Attempt, kube::Error> {
    let config = &shared.config;
    let now = MicroTime(Timestamp::now());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            lease_duration_seconds: Some(config.lease_duration_seconds()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    };
    match shared.api.create(&PostParams::default(), &lease).await {
        Ok(written) => Ok(leading_after_write(written, observed, true)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
        Err(error) => Err(error),
    }
}

fn leading_after_write(
    written: Lease,
    observed: &mut Option<Observed>,
    took_over: bool,
) -> Attempt {
    let spec = written.spec.unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    *observed = Some(Observed {
        spec,
        at: Instant::now(),
    });
    Attempt::Leading {
        transitions,
        took_over,
    }
}

/// Clears holderIdentity if it still names us, with a 1 s lease duration like client-go, so
/// that standbys (ours and client-go's) take over at their next attempt.
pub(super) async fn clear_holder(shared: &Shared) -> Result<(), LeaderError> {
    let config = &shared.config;
    let api_error = |action, source| {
        if is_refused(&source) {
            LeaderError::Forbidden {
                lease: shared.lease.clone(),
                action,
                source,
            }
        } else {
            LeaderError::Api {
                lease: shared.lease.clone(),
                action,
                source,
            }
        }
    };
    for _ in 0..RELEASE_ATTEMPTS {
        let current = shared
            .api
            .get_opt(&config.name)
            .await
            .map_err(|e| api_error("reading the lease to release it", e))?;
        let Some(current) = current else {
            return Ok(());
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
            tracing::info!(
                identity = %config.identity, lease = %shared.lease,
                holder = spec.holder_identity.as_deref().unwrap_or(""),
                "not releasing: the lease no longer names this identity"
            );
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        let lease = Lease {
            metadata: current.metadata,
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..spec
            }),
        };
        match shared
            .api
            .replace(&config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(identity = %config.identity, lease = %shared.lease, "released leadership");
                return Ok(());
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(api_error("clearing the holder", e)),
        }
    }
    Err(LeaderError::ReleaseIncomplete {
        lease: shared.lease.clone(),
        reason: format!("{RELEASE_ATTEMPTS} conflicting writes"),
    })
}

pub(super) fn is_refused(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 401 || status.code == 403)
}
