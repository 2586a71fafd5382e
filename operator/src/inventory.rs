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
//!
//! Versions after the split but before the disk sizes kept every disk in the summary
//! (`status.inventory.disks`) and no `largestDiskBytes`. Such a summary is written again
//! from the MachineInventory, with the same precondition, and the old list removed.

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

/// Whether `m`'s summary was written by a version that listed the disks in it instead of
/// their sizes (it lists disks, or has disks but no `largestDiskBytes`).
pub fn summary_predates_disk_sizes(m: &Machine) -> bool {
    m.status
        .as_ref()
        .and_then(|s| s.inventory.as_ref())
        .is_some_and(|i| {
            !i.disks.is_empty() || (i.disk_count > 0 && i.largest_disk_bytes.is_none())
        })
}

/// The status patch that rewrites `m`'s summary from `hardware` (its MachineInventory) and
/// removes the disk list older versions kept in it, only if `m` is unchanged since read.
pub fn summary_patch(m: &Machine, hardware: &Hardware) -> serde_json::Value {
    let mut summary =
        serde_json::to_value(InventorySummary::of(&m.name_any(), hardware)).unwrap_or_default();
    summary["disks"] = serde_json::Value::Null;
    json!({
        "metadata": {"resourceVersion": m.resource_version()},
        "status": {"inventory": summary},
    })
}

/// Moves `m`'s status inventory into its MachineInventory, or rewrites a summary that
/// predates the disk sizes; true when it wrote (the caller stops there: the write's event
/// brings the Machine back).
pub async fn migrate(client: &Client, machines: &Api<Machine>, m: &Machine) -> Result<bool, Error> {
    let name = m.name_any();
    let ns = m.namespace().unwrap_or_default();
    let inventories: Api<MachineInventory> = Api::namespaced(client.clone(), &ns);
    let Some(hardware) = m.status.as_ref().and_then(|s| s.hardware.as_ref()) else {
        if !summary_predates_disk_sizes(m) {
            return Ok(false);
        }
        // Without its MachineInventory there is nothing to take the sizes from; the next
        // commissioning writes both.
        let Some(inv) = inventories.get_opt(&name).await? else {
            return Ok(false);
        };
        patch_status(machines, m, &summary_patch(m, &inv.spec.hardware)).await?;
        tracing::info!(machine = %format!("{ns}/{name}"), "rewrote the inventory summary with disk sizes from MachineInventory {name}");
        return Ok(true);
    };
    inventories
        .patch(
            &name,
            &PatchParams::apply(INVENTORY_MANAGER).force(),
            &Patch::Apply(&inventory_object(m, hardware)),
        )
        .await?;
    patch_status(machines, m, &status_patch(m, hardware)).await?;
    tracing::info!(machine = %format!("{ns}/{name}"), "moved the inventory from Machine status into MachineInventory {name}");
    Ok(true)
}

async fn patch_status(
    machines: &Api<Machine>,
    m: &Machine,
    patch: &serde_json::Value,
) -> Result<(), Error> {
    machines
        .patch_status(
            &m.name_any(),
            &PatchParams {
                field_manager: Some(MIGRATION_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(patch),
        )
        .await
        .map_err(|e| conflict_as(e, || format!("Machine {}", crate::context::key(m))))?;
    Ok(())
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
        assert_eq!(summary.largest_disk_bytes, Some(1 << 34));
    }

    #[test]
    fn a_summary_with_a_disk_list_and_no_sizes_is_rewritten_from_the_inventory() {
        let (mut m, hw) = old_machine();
        let old_summary = serde_json::json!({"inventoryRef": {"name": "r1-u07"}, "cores": 8,
            "disks": [{"name": "vda", "sizeBytes": 1u64 << 34}], "diskCount": 1, "nicCount": 0});
        m.status = Some(MachineStatus {
            inventory: Some(serde_json::from_value(old_summary).unwrap()),
            ..Default::default()
        });
        assert!(summary_predates_disk_sizes(&m));
        let p = summary_patch(&m, &hw);
        assert_eq!(p["metadata"]["resourceVersion"], "41");
        let inv = &p["status"]["inventory"];
        assert!(inv["disks"].is_null() && inv.as_object().unwrap().contains_key("disks"));
        assert_eq!(inv["largestDiskBytes"], 1u64 << 34);
        assert_eq!(inv["totalDiskBytes"], 1u64 << 34);
        // A list with the sizes beside it still goes (an agent not yet upgraded wrote it).
        let mut listed = InventorySummary::of("r1-u07", &hw);
        listed.disks = hw.disks.clone();
        m.status.as_mut().unwrap().inventory = Some(listed);
        assert!(summary_predates_disk_sizes(&m));
        // Rewritten (or one without disks): nothing more to do.
        m.status.as_mut().unwrap().inventory = Some(InventorySummary::of("r1-u07", &hw));
        assert!(!summary_predates_disk_sizes(&m));
        m.status.as_mut().unwrap().inventory =
            Some(InventorySummary::of("r1-u07", &Hardware::default()));
        assert!(!summary_predates_disk_sizes(&m));
    }
}
