//! The inventory split against a real kube-apiserver with the real operator binary:
//! commissioning leaves the full inventory in a MachineInventory and a summary in the
//! Machine, and an operator upgraded over Machines that still carry the inventory in
//! status (as every version before the split wrote it) moves it, losing nothing and
//! commissioning nothing again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::sim_agent::SimAgent;
use common::*;
use ironpool_crds::machine::{Hardware, MachinePhase as P};
use ironpool_crds::{Machine, MachineInventory};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

/// An inventory as the ramdisk reports a real server's, with the parts the summary leaves
/// out (CPU flags, NICs, DMI, PCI).
fn old_inventory(i: u8) -> Hardware {
    serde_json::from_value(json!({
        "cpu": {"model": "AMD EPYC 7543 32-Core Processor", "cores": 32 + i32::from(i), "threads": 64,
                "sockets": 1, "architecture": "x86_64", "flags": ["avx2", "sse4_2", "aes", "vmx"]},
        "memoryBytes": 274877906944i64, "memory": "256Gi",
        "disks": [{"name": "nvme0n1", "sizeBytes": 3840755982336i64, "type": "NVMe", "model": "PM9A3",
                   "serialNumber": format!("S64H{i:04}"), "rotational": false}],
        "nics": [{"name": "eno1", "mac": format!("52:54:00:00:01:{i:02x}"), "driver": "ice", "link": true, "speedMbps": 25000},
                 {"name": "eno2", "mac": format!("52:54:00:00:02:{i:02x}"), "driver": "ice", "link": false}],
        "system": {"manufacturer": "Supermicro", "product": "AS -1124US-TNRP", "serialNumber": format!("A{i:08}")},
        "pci": [{"address": "0000:41:00.0", "vendorId": "8086", "deviceId": "159b", "class": "020000", "driver": "ice"}],
    }))
    .unwrap()
}

#[tokio::test]
async fn commissioning_writes_the_inventory_apart_and_an_upgrade_moves_old_ones() {
    let cp = cluster();
    let ns = cp.create_namespace("inventory").await.unwrap();
    let c = client(cp).await;
    let machines: Api<Machine> = Api::namespaced(c.clone(), &ns);
    let inventories: Api<MachineInventory> = Api::namespaced(c.clone(), &ns);

    // 1. Today's commissioning: the agent writes the MachineInventory and the summary.
    let mut op = Operator::start(cp, &ns, "op-inventory", &[]);
    create(&machines, &machine("new-1", 1, "inv")).await;
    // The agent keeps running through the upgrade, as it does in a cluster.
    let _agent = SimAgent::start(machines.clone(), Duration::from_millis(200));
    wait_phase(&machines, "new-1", P::Ready, T).await;
    // Settled: the agent has applied the last boot intent (Ready powers the server off).
    // A status copied before that would leave the old Machines an intent the agent then
    // applies, carrying forward the summary it read, old disk list and all, over the
    // operator's rewrite.
    let m = eventually(T, "new-1's last boot intent applied", || async {
        let m = machines.get("new-1").await.ok()?;
        let st = m.status.as_ref()?;
        let applied = st.boot_applied.as_ref().map_or(0, |a| a.attempt);
        (st.boot_intent.as_ref()?.attempt <= applied).then_some(m)
    })
    .await;
    let st = m.status.as_ref().unwrap();
    assert!(st.hardware.is_none());
    let summary = st.inventory.as_ref().expect("status.inventory");
    assert_eq!(summary.inventory_ref.name, "new-1");
    let inv = inventories.get("new-1").await.unwrap();
    assert_eq!(summary.cores, inv.spec.hardware.cpu.as_ref().unwrap().cores);

    // 2. The state an older version left: Ready Machines whose status holds the whole
    //    inventory, written by the agent's field manager, and no MachineInventory.
    op.terminate();
    let template = serde_json::to_value(st).unwrap();
    for i in 1..=3u8 {
        let name = format!("old-{i}");
        create(&machines, &machine(&name, 10 + i, "inv")).await;
        let mut status = template.clone();
        let o = status.as_object_mut().unwrap();
        o.remove("inventory");
        machines
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .unwrap();
        let hw = json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
                        "status": {"hardware": old_inventory(i)}});
        machines
            .patch_status(
                &name,
                &PatchParams::apply("ironpool-agent-hardware").force(),
                &Patch::Apply(hw),
            )
            .await
            .unwrap();
    }
    // The state a version after the split left: a summary that lists the disks instead of
    //    their sizes, and the MachineInventory beside it.
    for i in 4..=5u8 {
        let name = format!("old-{i}");
        create(&machines, &machine(&name, 10 + i, "inv")).await;
        let mut status = template.clone();
        let hw = old_inventory(i);
        status["inventory"] = json!({"inventoryRef": {"name": name}, "cores": 32 + i32::from(i),
            "disks": hw.disks, "diskCount": 1, "nicCount": 2});
        machines
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .unwrap();
        let m = machines.get(&name).await.unwrap();
        let object =
            ironpool_crds::machine::apply_object(&ns, &name, m.uid().as_deref(), &hw, None);
        inventories
            .patch(
                &name,
                &PatchParams::apply("ironpool-agent-hardware").force(),
                &Patch::Apply(object),
            )
            .await
            .unwrap();
        let summary = m.status.unwrap().inventory.unwrap();
        assert_eq!((summary.largest_disk_bytes, summary.disks.len()), (None, 1));
    }
    let mut before = Vec::new();
    for i in 1..=3 {
        before.push(machines.get(&format!("old-{i}")).await.unwrap());
    }
    assert!(
        before
            .iter()
            .all(|m| m.status.as_ref().unwrap().hardware.is_some())
    );

    // 3. The upgraded operator moves each inventory, and decides nothing else about it.
    let _op = Operator::start(cp, &ns, "op-inventory-2", &[]);
    for (i, old) in (1..=3u8).zip(&before) {
        let name = format!("old-{i}");
        let m = eventually(T, &format!("{name}'s inventory moved"), || async {
            let m = machines.get(&name).await.ok()?;
            let st = m.status.as_ref()?;
            (st.hardware.is_none() && st.inventory.is_some()).then_some(m)
        })
        .await;
        let inv = inventories.get(&name).await.unwrap();
        assert_eq!(inv.spec.hardware, old_inventory(i), "nothing is lost");
        let owner = &inv.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), Some(owner.uid.clone())),
            ("Machine", m.uid())
        );
        let st = m.status.as_ref().unwrap();
        let summary = st.inventory.as_ref().unwrap();
        assert_eq!(summary.cores, Some(32 + i32::from(i)));
        assert_eq!(summary.largest_disk_bytes, Some(3840755982336));
        assert_eq!((summary.disk_count, summary.nic_count), (1, 2));
        assert_eq!(st.phase, Some(P::Ready), "still Ready");
        let attempt = |m: &Machine| {
            m.status
                .as_ref()
                .and_then(|s| s.boot_intent.as_ref())
                .map(|b| b.attempt)
        };
        assert_eq!(
            attempt(&m),
            attempt(old),
            "no new boot: not commissioned again"
        );
    }

    // ...and writes the disk sizes into the summaries that lack them, from the inventory.
    for i in 4..=5u8 {
        let name = format!("old-{i}");
        let m = eventually(T, &format!("{name}'s summary has disk sizes"), || async {
            let m = machines.get(&name).await.ok()?;
            let inv = m.status.as_ref()?.inventory.as_ref()?;
            inv.largest_disk_bytes.is_some().then_some(m)
        })
        .await;
        let st = m.status.as_ref().unwrap();
        let summary = st.inventory.as_ref().unwrap();
        assert_eq!(
            (summary.largest_disk_bytes, summary.total_disk_bytes),
            (Some(3840755982336), Some(3840755982336))
        );
        assert_eq!(
            (summary.cores, summary.disk_count),
            (Some(32 + i32::from(i)), 1)
        );
        assert!(
            summary.disks.is_empty(),
            "the old list is gone: {summary:?}"
        );
        assert_eq!(st.phase, Some(P::Ready), "still Ready");
    }

    // 4. The moved Machines stay put: no write, no further reconcile of their status.
    let mut rv = Vec::new();
    for i in 1..=5 {
        let m = machines.get(&format!("old-{i}")).await.unwrap();
        rv.push(m.resource_version().unwrap());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, rv) in (1..=5).zip(rv) {
        let m = machines.get(&format!("old-{i}")).await.unwrap();
        assert_eq!(m.resource_version().unwrap(), rv, "old-{i} written again");
    }
}
