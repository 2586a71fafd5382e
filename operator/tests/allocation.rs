//! Allocation against a real kube-apiserver with the real operator binary: 50 Deployments
//! for 20 machines allocate exactly 20, never one machine twice; the rest say why; freed
//! machines go to the waiting Deployments. And leader failover between two operators.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::sim_agent::SimAgent;
use common::*;
use ironpool_crds::deployment::{DeploymentPhase, ErasePolicy};
use ironpool_crds::machine::MachinePhase as P;
use ironpool_crds::{Deployment, Machine};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::ListParams;

const T: Duration = Duration::from_secs(90);

/// machine -> deployment, from both sides; panics on any inconsistency.
async fn allocations(
    machines: &Api<Machine>,
    deployments: &Api<Deployment>,
) -> (BTreeMap<String, String>, Vec<Deployment>) {
    let ms = machines.list(&ListParams::default()).await.unwrap().items;
    let ds = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let mut by_machine = BTreeMap::new();
    for d in &ds {
        // A Deployment being deleted keeps its machineRef until its finalizer goes, after
        // its machine was released (and possibly claimed again): that ref is history.
        if d.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(r) = d.status.as_ref().and_then(|s| s.machine_ref.as_ref()) {
            let name = d.metadata.name.clone().unwrap();
            if let Some(other) = by_machine.insert(r.name.clone(), name.clone()) {
                panic!("machine {} allocated to both {other} and {name}", r.name);
            }
        }
    }
    for m in &ms {
        let name = m.metadata.name.clone().unwrap();
        if let (Some(holder), Some(d)) = (
            m.status.as_ref().and_then(|s| s.deployment_ref.as_ref()),
            by_machine.get(&name),
        ) {
            assert_eq!(
                &holder.name, d,
                "machine {name} and Deployment {d} disagree"
            );
        }
    }
    (by_machine, ds)
}

/// A namespace with an operator, a simulated agent and `n` Ready machines of pool "batch",
/// whose Deploy operations the agent never answers (allocations stay put).
struct Pool {
    machines: Api<Machine>,
    deployments: Api<Deployment>,
    agent: SimAgent,
    _op: Operator,
}

async fn ready_pool(namespace: &str, n: u8) -> Pool {
    let cp = cluster();
    let ns = cp.create_namespace(namespace).await.unwrap();
    let c = client(cp).await;
    let machines: Api<Machine> = Api::namespaced(c.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    let op = Operator::start(cp, &ns, &format!("op-{namespace}"), &[]);
    let agent = SimAgent::start(machines.clone(), Duration::from_millis(300));
    futures::future::join_all((0..n).map(|i| {
        let machines = machines.clone();
        async move { create(&machines, &machine(&format!("m{i:02}"), i, "batch")).await }
    }))
    .await;
    eventually(T, &format!("{n} Ready machines"), || async {
        let ms = machines.list(&ListParams::default()).await.ok()?.items;
        (ms.iter().filter(|m| phase(m) == Some(P::Ready)).count() == usize::from(n)).then_some(())
    })
    .await;
    agent.script.lock().unwrap().silent.insert("Deploy".into());
    Pool {
        machines,
        deployments,
        agent,
        _op: op,
    }
}

#[tokio::test]
async fn fifty_deployments_for_twenty_machines() {
    let pool = ready_pool("alloc", 20).await;
    let (machines, deployments) = (pool.machines.clone(), pool.deployments.clone());
    let agent = &pool.agent;

    let started = Instant::now();
    futures::future::join_all((0..50).map(|i| {
        let deployments = deployments.clone();
        async move {
            create(
                &deployments,
                &deployment(&format!("d{i:02}"), "batch", "os.raw", ErasePolicy::None),
            )
            .await
        }
    }))
    .await;
    let (by_machine, ds) = eventually(T, "20 allocations and 30 Pending", || async {
        let (by_machine, ds) = allocations(&machines, &deployments).await;
        // Pending with the settled reason: a Deployment that lost a race says "retrying"
        // for a moment before it finds every machine taken.
        let settled = ds
            .iter()
            .filter(|d| d.status.as_ref().and_then(|s| s.phase) == Some(DeploymentPhase::Pending))
            .filter(|d| {
                d.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Ready" && c.message.starts_with("no Ready machine is free")
                    })
                })
            })
            .count();
        (by_machine.len() == 20 && settled == 30).then_some((by_machine, ds))
    })
    .await;
    eprintln!(
        "50 Deployments: 20 allocated, 30 Pending after {:?}",
        started.elapsed()
    );
    assert_eq!(
        by_machine.values().collect::<BTreeSet<_>>().len(),
        20,
        "a Deployment holds two machines"
    );
    for d in ds
        .iter()
        .filter(|d| d.status.as_ref().and_then(|s| s.phase) == Some(DeploymentPhase::Pending))
    {
        let c = d
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(c.reason, "NoMachineAvailable");
        assert!(
            c.message
                .starts_with("no Ready machine is free (20 machines: "),
            "{}",
            c.message
        );
    }

    // Deleting 5 allocated Deployments frees 5 machines, which go to 5 waiting ones.
    let freed: Vec<String> = by_machine.values().take(5).cloned().collect();
    for d in &freed {
        delete(&deployments, d).await;
    }
    eventually(T, "5 more allocations", || async {
        let (by_machine, ds) = allocations(&machines, &deployments).await;
        let gone = freed.iter().all(|f| {
            !ds.iter()
                .any(|d| d.metadata.name.as_deref() == Some(f.as_str()))
        });
        (gone && by_machine.len() == 20 && ds.len() == 45).then_some(())
    })
    .await;
    let (_, ds) = allocations(&machines, &deployments).await;
    let pending = ds
        .iter()
        .filter(|d| d.status.as_ref().and_then(|s| s.phase) == Some(DeploymentPhase::Pending))
        .count();
    assert_eq!(pending, 25);
    agent.stop.cancel();
}

/// The finalizer and the claim are written together: a Deployment deleted the moment it
/// was created (its finalizer may never land) must not leave a machine claimed.
#[tokio::test]
async fn deployments_deleted_at_once_leave_no_machine_claimed() {
    let pool = ready_pool("alloc-del", 6).await;
    let (machines, deployments) = (pool.machines.clone(), pool.deployments.clone());
    let agent = &pool.agent;
    // Each delete races the operator's first reconcile of that Deployment, with a delay
    // that sweeps from "before it saw it" to "after the claim went out".
    for round in 0..12u64 {
        let name = format!("gone{round:02}");
        create(
            &deployments,
            &deployment(&name, "batch", "os.raw", ErasePolicy::None),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(round * 15)).await;
        let _ = deployments.delete(&name, &Default::default()).await;
    }
    let ms = eventually(
        T,
        "every Deployment gone and every machine Ready and free",
        || async {
            let ds = deployments.list(&ListParams::default()).await.ok()?.items;
            let ms = machines.list(&ListParams::default()).await.ok()?.items;
            let free = ms.iter().all(|m| {
                phase(m) == Some(P::Ready)
                    && m.status
                        .as_ref()
                        .and_then(|s| s.deployment_ref.as_ref())
                        .is_none()
            });
            (ds.is_empty() && free).then_some(ms)
        },
    )
    .await;
    assert_eq!(ms.len(), 6);
    agent.stop.cancel();
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("ironpool-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test]
async fn leader_failover_acts_once() {
    let cp = cluster();
    let ns = cp.create_namespace("failover").await.unwrap();
    let c = client(cp).await;
    let machines: Api<Machine> = Api::namespaced(c.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(c.clone(), &ns);
    let mut a = Operator::start_fast(cp, &ns, "op-a", &[]);
    let first = eventually(T, "a leader", || async { holder(&leases).await }).await;
    assert_eq!(first, "op-a");
    let mut b = Operator::start_fast(cp, &ns, "op-b", &[]);
    for i in 0..5 {
        create(&machines, &machine(&format!("f{i}"), 40 + i, "x")).await;
    }
    eventually(T, "5 machines Commissioning", || async {
        let ms = machines.list(&ListParams::default()).await.ok()?.items;
        (ms.iter()
            .filter(|m| phase(m) == Some(P::Commissioning))
            .count()
            == 5)
            .then_some(())
    })
    .await;
    // The leader dies without a word; the standby leads within the lease duration (4s).
    a.kill();
    let killed = Instant::now();
    let agent = SimAgent::start(machines.clone(), Duration::from_millis(200));
    eventually(T, "op-b to lead", || async {
        (holder(&leases).await.as_deref() == Some("op-b")).then_some(())
    })
    .await;
    let took = killed.elapsed();
    eprintln!("standby took over {took:?} after SIGKILL of the leader");
    assert!(
        took < Duration::from_secs(8),
        "takeover took {took:?} with a 4s lease"
    );
    for i in 0..5 {
        wait_phase(&machines, &format!("f{i}"), P::Ready, T).await;
    }
    // Nothing was done twice: one commission per machine, attempts strictly increasing.
    for (m, steps) in agent.by_machine() {
        let commissions = steps.iter().filter(|(_, p)| p == "Commission").count();
        assert_eq!(commissions, 1, "{m}: {steps:?}");
    }
    for m in machines.list(&ListParams::default()).await.unwrap().items {
        let attempt = m
            .status
            .as_ref()
            .unwrap()
            .boot_intent
            .as_ref()
            .unwrap()
            .attempt;
        assert_eq!(
            attempt, 2,
            "{:?}: Commission then Off, no repeats",
            m.metadata.name
        );
    }
    // A leader that is stopped gracefully hands over at once.
    let status = b.terminate();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    agent.stop.cancel();
}

/// Deployments created while no operator runs are all allocated when one starts: the first
/// reconciles wait for the caches, so none decides "no Machines exist" on a half-filled
/// cache (a restart of the scale benchmark left 34 of 200 Pending that way).
#[tokio::test]
async fn deployments_waiting_for_a_starting_operator_are_allocated() {
    let cp = cluster();
    let ns = cp.create_namespace("cold").await.unwrap();
    let c = client(cp).await;
    let machines: Api<Machine> = Api::namespaced(c.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    let mut op = Operator::start(cp, &ns, "op-cold-1", &[]);
    let agent = SimAgent::start(machines.clone(), Duration::from_millis(300));
    futures::future::join_all((0..12).map(|i| {
        let machines = machines.clone();
        async move { create(&machines, &machine(&format!("m{i:02}"), i, "cold")).await }
    }))
    .await;
    eventually(T, "12 Ready machines", || async {
        let ms = machines.list(&ListParams::default()).await.ok()?.items;
        (ms.iter().filter(|m| phase(m) == Some(P::Ready)).count() == 12).then_some(())
    })
    .await;
    agent.script.lock().unwrap().silent.insert("Deploy".into());
    assert!(
        op.terminate().success(),
        "the operator exits cleanly on SIGTERM"
    );

    futures::future::join_all((0..12).map(|i| {
        let deployments = deployments.clone();
        async move {
            create(
                &deployments,
                &deployment(&format!("d{i:02}"), "cold", "os.raw", ErasePolicy::None),
            )
            .await
        }
    }))
    .await;
    let _op = Operator::start(cp, &ns, "op-cold-2", &[]);
    eventually(T, "12 allocations after the restart", || async {
        let (by_machine, _) = allocations(&machines, &deployments).await;
        (by_machine.len() == 12).then_some(())
    })
    .await;
    let ds = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    for d in &ds {
        let said_no_machines = d.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.message.starts_with("no Machines exist"))
        });
        assert!(!said_no_machines, "{:?}", d.status);
    }
    agent.stop.cancel();
}

/// Root-device hints are checked against the disks in each candidate's MachineInventory
/// (the Machine's status keeps only their count and sizes): a Deployment asking for a model
/// only one server has gets that server; the next one is told which disks were rejected
/// and why; a size no server has is ruled out from the summary alone.
#[tokio::test]
async fn root_device_hints_are_checked_against_the_machine_inventory() {
    use ironpool_crds::deployment::Storage;
    use ironpool_crds::{MachineInventory, RootDeviceHints};
    use kube::api::{Patch, PatchParams};

    let pool = ready_pool("hints", 3).await;
    let (machines, deployments) = (pool.machines.clone(), pool.deployments.clone());
    let m01 = machines.get("m01").await.unwrap();
    let ns = m01.metadata.namespace.clone().unwrap();
    let inventories: Api<MachineInventory> = Api::namespaced(machines.clone().into_client(), &ns);
    // m01 gets a second disk, as a commissioning that found it would report it.
    let mut inv = inventories.get("m01").await.unwrap();
    let mut nvme = inv.spec.hardware.disks[0].clone();
    nvme.name = "nvme0n1".into();
    nvme.model = Some("SAMSUNG PM9A3".into());
    inv.spec.hardware.disks.push(nvme);
    let object = ironpool_crds::machine::apply_object(
        &ns,
        "m01",
        m01.metadata.uid.as_deref(),
        &inv.spec.hardware,
        None,
    );
    inventories
        .patch(
            "m01",
            &PatchParams::apply("ironpool-agent-hardware").force(),
            &Patch::Apply(object),
        )
        .await
        .unwrap();

    let with_hints = |name: &str, hints: RootDeviceHints| {
        let mut d = deployment(name, "batch", "os.raw", ErasePolicy::None);
        d.spec.storage = Some(Storage {
            root_device_hints: Some(hints),
            ..Default::default()
        });
        d
    };
    let pm9a3 = RootDeviceHints {
        model: Some("pm9a3".into()),
        ..Default::default()
    };
    let message = |d: &Deployment| {
        d.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.message.clone())
        })
    };
    create(&deployments, &with_hints("nvme-1", pm9a3.clone())).await;
    let d = eventually(T, "nvme-1 allocated", || async {
        let d = deployments.get("nvme-1").await.ok()?;
        d.status.as_ref()?.machine_ref.is_some().then_some(d)
    })
    .await;
    assert_eq!(
        d.status.unwrap().machine_ref.unwrap().name,
        "m01",
        "the only server with a PM9A3"
    );

    create(&deployments, &with_hints("nvme-2", pm9a3)).await;
    let why = eventually(T, "nvme-2 says why no machine fits", || async {
        let m = message(&deployments.get("nvme-2").await.ok()?)?;
        m.contains("root-device hints").then_some(m)
    })
    .await;
    assert!(
        why.starts_with("0 of 2 Ready machines have a disk matching the root-device hints ("),
        "{why}"
    );
    assert!(why.contains("m00: vda: model None lacks 'pm9a3'"), "{why}");
    assert!(
        why.contains("2 rejected for their disks: correct spec.storage.rootDeviceHints"),
        "{why}"
    );

    let huge = RootDeviceHints {
        min_size_gigabytes: Some(500),
        ..Default::default()
    };
    create(&deployments, &with_hints("huge", huge)).await;
    let why = eventually(T, "huge says why no machine fits", || async {
        let m = message(&deployments.get("huge").await.ok()?)?;
        m.contains("root-device hints").then_some(m)
    })
    .await;
    assert!(
        why.contains("the largest of its 1 disks has 107374182400 bytes, below 500 GB"),
        "{why}"
    );
    pool.agent.stop.cancel();
}
