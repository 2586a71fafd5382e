//! Subnets and static addresses against a real kube-apiserver with the real operator:
//! overlap detection, usage counts, a static address per Deployment, freed on delete.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::sim_agent::SimAgent;
use common::*;
use ironpool_crds::deployment::ErasePolicy;
use ironpool_crds::machine::MachinePhase as P;
use ironpool_crds::{Deployment, LocalObjectRef, Machine, Subnet};
use kube::Api;

const T: Duration = Duration::from_secs(45);

fn subnet(name: &str, cidr: &str, dynamic: (&str, &str)) -> Subnet {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Subnet", "metadata": {"name": name},
        "spec": {"cidr": cidr, "dynamicRange": {"start": dynamic.0, "end": dynamic.1}},
    }))
    .unwrap()
}

fn ready(s: &Subnet) -> Option<(String, String)> {
    let c = s
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn overlaps_counts_and_static_addresses() {
    let cp = cluster();
    let ns = cp.create_namespace("subnets").await.unwrap();
    let c = client(cp).await;
    let subnets: Api<Subnet> = Api::namespaced(c.clone(), &ns);
    let machines: Api<Machine> = Api::namespaced(c.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    let _op = Operator::start(cp, &ns, "op-subnets", &[]);
    let agent = SimAgent::start(machines.clone(), Duration::from_millis(200));

    // A /28 with 6 dynamic addresses: 14 usable, 8 static.
    create(
        &subnets,
        &subnet("prov", "10.9.0.0/28", ("10.9.0.9", "10.9.0.14")),
    )
    .await;
    let s = eventually(T, "Subnet prov counted", || async {
        let s = subnets.get("prov").await.ok()?;
        s.status.as_ref()?.addresses.as_ref()?;
        Some(s)
    })
    .await;
    let counts = s.status.as_ref().unwrap().addresses.clone().unwrap();
    assert_eq!(
        (counts.total, counts.dynamic, counts.free, counts.allocated),
        (14, 6, 8, 0),
        "{counts:?}"
    );
    assert_eq!(ready(&s).unwrap().0, "Ready");

    // An overlapping Subnet: both say so, naming the other.
    create(
        &subnets,
        &subnet("dup", "10.9.0.0/24", ("10.9.0.100", "10.9.0.200")),
    )
    .await;
    for (name, other) in [("dup", "prov"), ("prov", "dup")] {
        let (reason, message) = eventually(T, "overlap reported", || async {
            let r = ready(&subnets.get(name).await.ok()?)?;
            (r.0 == "Overlaps").then_some(r)
        })
        .await;
        assert!(message.contains(other), "{reason}: {message}");
    }
    common::delete(&subnets, "dup").await;
    eventually(T, "prov Ready again", || async {
        (ready(&subnets.get("prov").await.ok()?)?.0 == "Ready").then_some(())
    })
    .await;

    // Two Deployments with subnetRef get distinct static addresses outside the dynamic range.
    for i in 0..2 {
        create(&machines, &machine(&format!("s{i}"), 60 + i, "net")).await;
    }
    for i in 0..2 {
        wait_phase(&machines, &format!("s{i}"), P::Ready, T).await;
    }
    for i in 0..2 {
        let mut d = deployment(&format!("web{i}"), "net", "os.raw", ErasePolicy::None);
        d.spec.subnet_ref = Some(LocalObjectRef::new("prov"));
        create(&deployments, &d).await;
    }
    let mut addrs = Vec::new();
    for i in 0..2 {
        let a = eventually(T, "a static address", || async {
            deployments
                .get(&format!("web{i}"))
                .await
                .ok()?
                .status?
                .addresses
                .first()
                .cloned()
        })
        .await;
        addrs.push(a);
    }
    assert_ne!(addrs[0], addrs[1]);
    for a in &addrs {
        let last: u8 = a.rsplit('.').next().unwrap().parse().unwrap();
        assert!(
            (1..=8).contains(&last),
            "{a} is not a static address of 10.9.0.0/28"
        );
    }
    eventually(T, "2 allocated", || async {
        let n = subnets.get("prov").await.ok()?.status?.addresses?.allocated;
        (n == 2).then_some(())
    })
    .await;

    // Deleting a Deployment frees its address.
    common::delete(&deployments, "web0").await;
    let freed = tokio::time::timeout(
        T,
        eventually(T, "address freed", || async {
            let s = subnets.get("prov").await.ok()?.status?;
            (s.allocations.len() == 1 && s.addresses?.allocated == 1).then_some(())
        }),
    )
    .await;
    if freed.is_err() {
        let s = subnets.get("prov").await.unwrap();
        let d = deployments.get_opt("web0").await.unwrap();
        let ms: Vec<_> = machines
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|m| {
                (
                    m.metadata.name.clone(),
                    m.status.as_ref().and_then(|s| s.phase),
                    m.status.as_ref().and_then(|s| s.deployment_ref.clone()),
                )
            })
            .collect();
        panic!(
            "address not freed:\nsubnet status {:#?}\nweb0 {:#?}\nmachines {ms:?}",
            s.status,
            d.map(|d| (
                d.metadata.finalizers,
                d.metadata.deletion_timestamp,
                d.status
            ))
        );
    }
    eventually(T, "address freed", || async {
        let s = subnets.get("prov").await.ok()?.status?;
        (s.allocations.len() == 1 && s.addresses?.allocated == 1).then_some(())
    })
    .await;
    agent.stop.cancel();
}
