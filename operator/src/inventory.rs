//! Moving an inventory out of Machine status on upgrade.
//!
//! Versions before the MachineInventory kind kept the full inventory in
//! `Machine.status.hardware`. A Machine that still carries one has it moved, before
//! anything decides about it: the MachineInventory of the same name is written (owned by
//! the Machine), then one status patch sets the summary and clears `hardware`, with the
//! resourceVersion it read as a precondition, so a newer inventory the agent wrote in
//! between is never replaced by the old one. Killed between the two writes, the next
//! reconcile writes the same inventory again and finishes; nothing is lost, because
//! `hardware` is cleared only in the write that sets the summary.

use ironpool_crds::machine::{Hardware, InventorySummary, apply_object};
use ironpool_crds::{Machine, MachineInventory};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::error::{Error, conflict_as};

/// The agent's field manager for inventories: the moved object is applied under it, so
/// the agent's next commissioning replaces it without a conflict.
pub const INVENTORY_MANAGER: &str = "ironpool-agent-hardware";

/// Field manager of the status patch that finishes a move.
pub const MIGRATION_MANAGER: &str = "ironpool-inventory-migration";

/// The MachineInventory that holds `hardware` of Machine `m`, as an apply patch.
pub fn inventory_object(m: &Machine, hardware: &Hardware) -> serde_json::Value {
    let ns = m.namespace().unwrap_or_default();
    apply_object(&ns, &m.name_any(), m.uid().as_deref(), hardware, None)
}

/// The status patch that finishes the move of `hardware` out of Machine `m`: the summary
/// in, the old field out, only if `m` is unchanged since it was read.
pub fn status_patch(m: &Machine, hardware: &Hardware) -> serde_json::Value {
    json!({
        "metadata": {"resourceVersion": m.resource_version()},
        "status": {
            "hardware": null,
            "inventory": InventorySummary::of(&m.name_any(), hardware),
        },
    })
}

/// Moves `m`'s status inventory into its MachineInventory; true when it wrote (the
/// caller stops there: the write's event brings the Machine back).
pub async fn migrate(client: &Client, machines: &Api<Machine>, m: &Machine) -> Result<bool, Error> {
    let Some(hardware) = m.status.as_ref().and_then(|s| s.hardware.as_ref()) else {
        return Ok(false);
    };
    let name = m.name_any();
    let ns = m.namespace().unwrap_or_default();
    let inventories: Api<MachineInventory> = Api::namespaced(client.clone(), &ns);
    inventories
        .patch(
            &name,
            &PatchParams::apply(INVENTORY_MANAGER).force(),
            &Patch::Apply(&inventory_object(m, hardware)),
        )
        .await?;
    machines
        .patch_status(
            &name,
            &PatchParams {
                field_manager: Some(MIGRATION_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(&status_patch(m, hardware)),
        )
        .await
        .map_err(|e| conflict_as(e, || format!("Machine {ns}/{name}")))?;
    tracing::info!(machine = %format!("{ns}/{name}"), "moved the inventory from Machine status into MachineInventory {name}");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironpool_crds::MachineSpec;
    use ironpool_crds::machine::{Cpu, Disk, MachineStatus, PciDevice};

    fn old_machine() -> (Machine, Hardware) {
        let hw = Hardware {
            cpu: Some(Cpu {
                cores: Some(8),
                architecture: Some("x86_64".into()),
                flags: vec!["sse4_2".into(); 40],
                ..Default::default()
            }),
            memory_bytes: Some(34_359_738_368),
            memory: Some("32Gi".into()),
            disks: vec![Disk {
                name: "vda".into(),
                size_bytes: 1 << 34,
                ..Default::default()
            }],
            pci: vec![
                PciDevice {
                    address: "0000:00:01.0".into(),
                    vendor_id: "1af4".into(),
                    device_id: "1000".into(),
                    class: None,
                    driver: None,
                };
                3
            ],
            ..Default::default()
        };
        let mut m = Machine::new("r1-u07", MachineSpec::for_boot_mac("52:54:00:00:00:07"));
        m.metadata.uid = Some("uid-7".into());
        m.metadata.resource_version = Some("41".into());
        m.status = Some(MachineStatus {
            hardware: Some(hw.clone()),
            ..Default::default()
        });
        (m, hw)
    }

    #[test]
    fn the_inventory_object_keeps_everything_and_is_owned_by_the_machine() {
        let (m, hw) = old_machine();
        let obj = inventory_object(&m, &hw);
        let back: MachineInventory = serde_json::from_value(obj.clone()).unwrap();
        assert_eq!(
            back.spec.hardware, hw,
            "nothing of the old inventory is lost"
        );
        assert_eq!(obj["metadata"]["ownerReferences"][0]["uid"], "uid-7");
        assert_eq!(obj["metadata"]["ownerReferences"][0]["kind"], "Machine");
    }

    #[test]
    fn the_status_patch_sets_the_summary_clears_the_old_field_and_is_conditional() {
        let (m, hw) = old_machine();
        let p = status_patch(&m, &hw);
        assert_eq!(p["metadata"]["resourceVersion"], "41");
        assert!(p["status"]["hardware"].is_null());
        assert!(p["status"].as_object().unwrap().contains_key("hardware"));
        let summary: InventorySummary =
            serde_json::from_value(p["status"]["inventory"].clone()).unwrap();
        assert_eq!(summary.cores, Some(8));
        assert_eq!(summary.inventory_ref.name, "r1-u07");
        assert_eq!(summary.disks, hw.disks);
    }
}
