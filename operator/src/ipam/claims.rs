//! Claiming and releasing static addresses in `Subnet.status.allocations`, with the Subnet's
//! resourceVersion as a precondition so that concurrent writers never hand out one address
//! twice.
//!
//! Each write is a server-side apply of the complete list to the status subresource by
//! [`FIELD_MANAGER`]: entries the list no longer names are removed. The patch carries
//! `metadata.resourceVersion` from the read, so the apiserver answers 409 Conflict when
//! anyone wrote in between; then we read again and retry, a bounded number of times.
//!
//! Server-side apply removes every field a manager applied before and omits now, so the
//! allocations have a field manager of their own: the operator's other status writer (the
//! Subnet controller, as `ironpool-operator`) applies counts and conditions without
//! `allocations` and would otherwise delete every entry.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::net::Ipv4Addr;
use std::time::Duration;

use ironpool_crds::Subnet;
use ironpool_crds::subnet::AddressAllocation;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::core::Resource;
use serde_json::json;

use super::{IpamError, Pool};

/// The field manager that owns `Subnet.status.allocations`, and nothing else: a writer that
/// shared it while omitting allocations would delete them all.
pub const FIELD_MANAGER: &str = "ironpool-operator-ipam";

/// Writes attempted before giving up on a contended Subnet.
const MAX_ATTEMPTS: u32 = 64;
/// First backoff after a conflict; doubles per attempt up to [`MAX_BACKOFF`], fully jittered.
const BASE_BACKOFF: Duration = Duration::from_millis(10);
/// Longest backoff between attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// Claims a static address of Subnet `subnet` (in the namespace of `api`) for Deployment
/// `deployment` and returns it. Idempotent: a Deployment that already holds an address gets
/// that address back. Otherwise the lowest free static candidate is recorded in
/// `status.allocations`.
pub async fn claim(
    api: &Api<Subnet>,
    subnet: &str,
    deployment: &str,
) -> Result<Ipv4Addr, IpamError> {
    for attempt in 0..MAX_ATTEMPTS {
        let object = read(api, subnet).await?;
        let allocations = allocations(&object);
        if let Some(held) = allocations.iter().find(|a| a.deployment == deployment) {
            return parse_allocation(subnet, held);
        }
        let pool = Pool::from_spec(&object.spec).map_err(|e| IpamError::InvalidSubnet {
            subnet: subnet.into(),
            namespace: namespace(api),
            source: Box::new(e),
        })?;
        let taken = taken(subnet, &allocations)?;
        let Some(address) = pool.next_free(&taken) else {
            let in_use = taken
                .iter()
                .filter(|ip| pool.is_static_candidate(**ip))
                .count();
            return Err(IpamError::Exhausted {
                subnet: subnet.into(),
                in_use: in_use as u64,
                capacity: pool.static_capacity(),
            });
        };
        let mut desired = allocations;
        desired.push(AddressAllocation {
            address: address.to_string(),
            deployment: deployment.into(),
        });
        if write(api, subnet, &object, desired).await?.is_some() {
            tracing::info!(subnet, deployment, %address, attempt, "claimed static address");
            return Ok(address);
        }
        backoff(attempt).await;
    }
    Err(IpamError::Contention {
        subnet: subnet.into(),
        attempts: MAX_ATTEMPTS,
    })
}

/// Releases the static address Deployment `deployment` holds in Subnet `subnet` and returns
/// it, or None when it held none (or the Subnet is gone). Idempotent.
pub async fn release(
    api: &Api<Subnet>,
    subnet: &str,
    deployment: &str,
) -> Result<Option<Ipv4Addr>, IpamError> {
    for attempt in 0..MAX_ATTEMPTS {
        let object = match read(api, subnet).await {
            Ok(object) => object,
            Err(IpamError::SubnetNotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let allocations = allocations(&object);
        let (released, kept): (Vec<_>, Vec<_>) = allocations
            .into_iter()
            .partition(|a| a.deployment == deployment);
        let Some(entry) = released.first() else {
            return Ok(None);
        };
        let address = parse_allocation(subnet, entry)?;
        if let Some(written) = write(api, subnet, &object, kept).await? {
            if written
                .status
                .iter()
                .flat_map(|s| &s.allocations)
                .any(|a| a.deployment == deployment)
            {
                return Err(IpamError::ReleaseBlocked {
                    subnet: subnet.into(),
                    deployment: deployment.into(),
                });
            }
            tracing::info!(subnet, deployment, %address, attempt, "released static address");
            return Ok(Some(address));
        }
        backoff(attempt).await;
    }
    Err(IpamError::Contention {
        subnet: subnet.into(),
        attempts: MAX_ATTEMPTS,
    })
}

async fn read(api: &Api<Subnet>, subnet: &str) -> Result<Subnet, IpamError> {
    match api.get_opt(subnet).await {
        Ok(Some(object)) => Ok(object),
        Ok(None) => Err(IpamError::SubnetNotFound {
            subnet: subnet.into(),
            namespace: namespace(api),
        }),
        Err(source) => Err(IpamError::Api {
            subnet: subnet.into(),
            action: "reading the Subnet",
            source,
        }),
    }
}

/// Applies `desired` as the complete `status.allocations`, on condition that the Subnet is
/// still at the resourceVersion of `read`. Returns the written object, or None on a conflict.
async fn write(
    api: &Api<Subnet>,
    subnet: &str,
    read: &Subnet,
    mut desired: Vec<AddressAllocation>,
) -> Result<Option<Subnet>, IpamError> {
    desired.sort_by_key(|a| a.address.parse::<Ipv4Addr>().ok());
    let patch = json!({
        "apiVersion": Subnet::api_version(&()),
        "kind": Subnet::kind(&()),
        "metadata": {
            "name": subnet,
            "resourceVersion": read.metadata.resource_version,
        },
        "status": { "allocations": desired },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_status(subnet, &params, &Patch::Apply(patch))
        .await
    {
        Ok(written) => Ok(Some(written)),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::debug!(subnet, "Subnet changed since it was read; reading it again");
            Ok(None)
        }
        Err(source) => Err(IpamError::Api {
            subnet: subnet.into(),
            action: "applying status.allocations",
            source,
        }),
    }
}

fn allocations(object: &Subnet) -> Vec<AddressAllocation> {
    object
        .status
        .as_ref()
        .map(|s| s.allocations.clone())
        .unwrap_or_default()
}

fn taken(subnet: &str, allocations: &[AddressAllocation]) -> Result<BTreeSet<Ipv4Addr>, IpamError> {
    allocations
        .iter()
        .map(|a| parse_allocation(subnet, a))
        .collect()
}

fn parse_allocation(subnet: &str, entry: &AddressAllocation) -> Result<Ipv4Addr, IpamError> {
    entry
        .address
        .parse()
        .map_err(|_| IpamError::CorruptAllocation {
            subnet: subnet.into(),
            address: entry.address.clone(),
            deployment: entry.deployment.clone(),
        })
}

fn namespace(api: &Api<Subnet>) -> String {
    api.namespace().unwrap_or("(all)").to_owned()
}

/// Sleeps a random time up to an exponentially growing, capped bound ("full jitter"), so
/// that writers that collided do not collide again in lockstep.
async fn backoff(attempt: u32) {
    let bound = BASE_BACKOFF
        .saturating_mul(1 << attempt.min(16))
        .min(MAX_BACKOFF);
    tokio::time::sleep(bound.mul_f64(random_fraction())).await;
}

/// A random number in [0, 1) from the standard library's randomly keyed hasher.
fn random_fraction() -> f64 {
    (RandomState::new().hash_one(std::time::Instant::now()) >> 11) as f64 / (1u64 << 53) as f64
}
