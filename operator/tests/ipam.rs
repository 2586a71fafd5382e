//! IPAM against a real kube-apiserver: concurrent claims never share an address and stop at
//! the pool size with a clear error, claims and releases are idempotent, released addresses
//! are reused, and two operator replicas (two clients) never collide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Result, anyhow};
use ironpool_crds::subnet::{AddressAllocation, SubnetSpec};
use ironpool_crds::{IpRange, Subnet};
use ironpool_e2e::ControlPlane;
use ironpool_operator::ipam::{self, IpamError, Pool};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// The shared control plane with the CRDs installed and Established, once per binary.
fn cluster() -> Result<&'static ControlPlane> {
    static CRDS: OnceLock<Result<(), String>> = OnceLock::new();
    let cp = ControlPlane::shared()?;
    CRDS.get_or_init(|| ironpool_e2e::cluster::install_crds(cp).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("installing the CRDs: {e}"))?;
    Ok(cp)
}

fn range(start: &str, end: &str) -> IpRange {
    IpRange {
        start: start.into(),
        end: end.into(),
    }
}

/// 10.0.0.0/27 with gateway .1, reserved .1-.5 and dynamic .21-.30: static .6-.20 (15).
fn small_spec() -> SubnetSpec {
    SubnetSpec {
        cidr: "10.0.0.0/27".into(),
        gateway: Some("10.0.0.1".into()),
        dns_servers: vec![],
        domain: None,
        vlan: None,
        mtu: None,
        dynamic_range: Some(range("10.0.0.21", "10.0.0.30")),
        reserved_ranges: vec![range("10.0.0.1", "10.0.0.5")],
        lease_time: "1h".into(),
        pxe: true,
        agent_selector: None,
        interface: None,
    }
}

/// A fresh namespace holding Subnet `prov` with `spec`; returns its Api.
async fn subnet(prefix: &str, spec: SubnetSpec) -> Result<(Client, Api<Subnet>)> {
    let cp = tokio::task::spawn_blocking(cluster).await??;
    let client = cp.client().await?;
    let namespace = cp.create_namespace(prefix).await?;
    let api = Api::<Subnet>::namespaced(client.clone(), &namespace);
    api.create(&PostParams::default(), &Subnet::new("prov", spec))
        .await?;
    Ok((client, api))
}

async fn allocations(api: &Api<Subnet>) -> Result<BTreeMap<String, Ipv4Addr>> {
    let subnet = api.get("prov").await?;
    Ok(subnet
        .status
        .map(|s| s.allocations)
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.deployment, a.address.parse().unwrap()))
        .collect())
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_claims_fill_the_pool_exactly_once() -> Result<()> {
    let (_, api) = subnet("ipam-claims", small_spec()).await?;
    let pool = Pool::from_spec(&small_spec())?;
    assert_eq!(pool.static_capacity(), 15);

    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                let deployment = format!("web-{i}");
                let result = ipam::claim(&api, "prov", &deployment).await;
                (deployment, result)
            })
        })
        .collect();
    let mut claimed = BTreeMap::new();
    let mut exhausted = 0;
    for task in tasks {
        match task.await? {
            (deployment, Ok(address)) => {
                claimed.insert(deployment, address);
            }
            (_, Err(e @ IpamError::Exhausted { .. })) => {
                assert_eq!(
                    e.to_string(),
                    "Subnet prov has no free static address: 15 of 15 in use; \
                     widen cidr or shrink dynamicRange/reservedRanges"
                );
                exhausted += 1;
            }
            (deployment, Err(e)) => panic!("{deployment}: unexpected error: {e}"),
        }
    }
    eprintln!("50 concurrent claims took {:?}", started.elapsed());
    assert_eq!(claimed.len(), 15);
    assert_eq!(exhausted, 35);
    let distinct: BTreeSet<Ipv4Addr> = claimed.values().copied().collect();
    assert_eq!(
        distinct.len(),
        15,
        "an address was handed out twice: {claimed:?}"
    );
    assert!(distinct.iter().all(|a| pool.is_static_candidate(*a)));
    assert_eq!(allocations(&api).await?, claimed);

    // Claims are idempotent: a holder gets its address back, even with the pool full.
    for (deployment, address) in &claimed {
        assert_eq!(ipam::claim(&api, "prov", deployment).await?, *address);
    }
    assert_eq!(allocations(&api).await?, claimed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_frees_the_address_for_a_later_claim() -> Result<()> {
    let (_, api) = subnet("ipam-release", small_spec()).await?;
    assert_eq!(ipam::claim(&api, "prov", "a").await?, ip("10.0.0.6"));
    assert_eq!(ipam::claim(&api, "prov", "b").await?, ip("10.0.0.7"));
    assert_eq!(ipam::claim(&api, "prov", "c").await?, ip("10.0.0.8"));

    assert_eq!(
        ipam::release(&api, "prov", "b").await?,
        Some(ip("10.0.0.7"))
    );
    assert_eq!(ipam::release(&api, "prov", "b").await?, None);
    assert_eq!(ipam::release(&api, "prov", "never-claimed").await?, None);
    let left = allocations(&api).await?;
    assert_eq!(left.keys().collect::<Vec<_>>(), ["a", "c"]);

    assert_eq!(ipam::claim(&api, "prov", "d").await?, ip("10.0.0.7"));
    assert_eq!(ipam::claim(&api, "prov", "e").await?, ip("10.0.0.9"));
    for deployment in ["a", "c", "d", "e"] {
        assert!(ipam::release(&api, "prov", deployment).await?.is_some());
    }
    assert!(allocations(&api).await?.is_empty());
    assert_eq!(ipam::claim(&api, "prov", "f").await?, ip("10.0.0.6"));

    let missing = ipam::claim(&api, "nope", "a")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.starts_with("Subnet nope not found in namespace ipam-release-"),
        "{missing}"
    );
    assert_eq!(ipam::release(&api, "nope", "a").await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_claiming_and_releasing_never_collide() -> Result<()> {
    let spec = SubnetSpec {
        cidr: "10.1.0.0/26".into(),
        gateway: None,
        dynamic_range: None,
        reserved_ranges: vec![],
        ..small_spec()
    };
    let (_, api) = subnet("ipam-replicas", spec).await?;
    let cp = cluster()?;
    // Two separate clients: separate connections, as two operator pods would have.
    let replicas = [
        Api::<Subnet>::namespaced(cp.client().await?, api.namespace().unwrap()),
        Api::<Subnet>::namespaced(cp.client().await?, api.namespace().unwrap()),
    ];
    let started = Instant::now();
    let claims: Vec<_> = (0..40)
        .map(|i| {
            let api = replicas[i % 2].clone();
            tokio::spawn(async move {
                let deployment = format!("node-{i}");
                let address = ipam::claim(&api, "prov", &deployment).await.unwrap();
                (deployment, address)
            })
        })
        .collect();
    let mut expected = BTreeMap::new();
    for task in claims {
        let (deployment, address) = task.await?;
        expected.insert(deployment, address);
    }
    eprintln!("40 claims from two clients took {:?}", started.elapsed());
    let distinct: BTreeSet<_> = expected.values().collect();
    assert_eq!(
        distinct.len(),
        40,
        "two replicas handed out one address: {expected:?}"
    );
    assert_eq!(allocations(&api).await?, expected);

    // Now one replica releases the even nodes while the other claims for new ones.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in (0..40).step_by(2) {
        let api = replicas[0].clone();
        tasks.push(tokio::spawn(async move {
            let deployment = format!("node-{i}");
            let released = ipam::release(&api, "prov", &deployment).await.unwrap();
            (deployment, released, false)
        }));
    }
    for i in 40..60 {
        let api = replicas[1].clone();
        tasks.push(tokio::spawn(async move {
            let deployment = format!("node-{i}");
            let claimed = ipam::claim(&api, "prov", &deployment).await.unwrap();
            (deployment, Some(claimed), true)
        }));
    }
    for task in tasks {
        let (deployment, address, claimed) = task.await?;
        if claimed {
            expected.insert(deployment, address.unwrap());
        } else {
            assert_eq!(expected.remove(&deployment), address, "{deployment}");
        }
    }
    eprintln!(
        "20 releases and 20 claims from two clients took {:?}",
        started.elapsed()
    );
    let distinct: BTreeSet<_> = expected.values().collect();
    assert_eq!(distinct.len(), 40, "{expected:?}");
    assert_eq!(allocations(&api).await?, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_write_is_rejected_and_other_status_writers_do_not_disturb_allocations()
-> Result<()> {
    let (_, api) = subnet("ipam-precondition", small_spec()).await?;
    let stale = api.get("prov").await?.metadata.resource_version;
    assert_eq!(ipam::claim(&api, "prov", "a").await?, ip("10.0.0.6"));

    // An apply carrying the resourceVersion read before that claim is refused with 409.
    let entry = AddressAllocation {
        address: "10.0.0.6".into(),
        deployment: "b".into(),
    };
    let patch = json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1",
        "kind": "Subnet",
        "metadata": {"name": "prov", "resourceVersion": stale},
        "status": {"allocations": [entry]},
    });
    let params = PatchParams::apply(ipam::FIELD_MANAGER).force();
    match api
        .patch_status("prov", &params, &Patch::Apply(patch))
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("a stale apply was not refused: {other:?}"),
    }

    // The agent writes servedBy, and the Subnet controller counts and conditions, each
    // under its own field manager and without allocations; the allocations stay.
    let served = json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1",
        "kind": "Subnet",
        "status": {"servedBy": {"agent": "node-1"}},
    });
    let counts = json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1",
        "kind": "Subnet",
        "status": {
            "addresses": {"total": 30, "reserved": 5, "dynamic": 10, "allocated": 1, "free": 14},
            "observedGeneration": 1,
        },
    });
    for (manager, patch) in [("ironpool-agent", served), ("ironpool-operator", counts)] {
        api.patch_status(
            "prov",
            &PatchParams::apply(manager).force(),
            &Patch::Apply(patch),
        )
        .await?;
        assert_eq!(
            allocations(&api).await?.len(),
            1,
            "{manager} removed allocations"
        );
    }
    assert_eq!(ipam::claim(&api, "prov", "c").await?, ip("10.0.0.7"));
    assert_eq!(
        ipam::release(&api, "prov", "a").await?,
        Some(ip("10.0.0.6"))
    );
    let subnet = api.get("prov").await?;
    let status = subnet.status.unwrap();
    assert_eq!(status.served_by.unwrap().agent, "node-1");
    assert_eq!(
        status.allocations,
        [AddressAllocation {
            address: "10.0.0.7".into(),
            deployment: "c".into()
        }]
    );
    Ok(())
}
