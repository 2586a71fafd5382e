//! The `MachineInventory` kind: the full hardware inventory of one Machine, apart from it.
//!
//! A Machine is written on every power sync, boot step and phase change, and every one of
//! those writes (and every watch event it causes) carries the whole object. The inventory
//! is written once per commissioning, so it lives in its own object, named like its
//! Machine and owned by it (as Metal3's HardwareData is), and the Machine keeps only the
//! [`InventorySummary`] that selectors, root-device hints and `kubectl get` columns read.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::hardware::{Disk, Hardware};
use crate::common::LocalObjectRef;

/// The hardware inventory commissioning found on one Machine.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "metal.ironpool.dev",
    version = "v1alpha1",
    kind = "MachineInventory",
    plural = "machineinventories",
    namespaced,
    shortname = "bmi",
    category = "ironpool",
    doc = "The full hardware inventory of one Machine (CPU, memory, disks, NICs, DMI \
           identity, PCI devices), written by the agent once per commissioning. It has the \
           Machine's name and is owned by it; the Machine's status.inventory keeps the \
           summary that selectors and columns use. Read it with `kubectl get bmi <machine> \
           -o yaml`.",
    printcolumn(
        name = "Cores",
        type_ = "integer",
        json_path = ".spec.hardware.cpu.cores",
        description = "Physical CPU cores"
    ),
    printcolumn(
        name = "Memory",
        type_ = "string",
        json_path = ".spec.hardware.memory",
        description = "Installed memory"
    ),
    printcolumn(
        name = "CPU",
        type_ = "string",
        json_path = ".spec.hardware.cpu.model",
        description = "Processor model"
    ),
    printcolumn(
        name = "Product",
        type_ = "string",
        json_path = ".spec.hardware.system.product",
        description = "System product name (DMI)"
    ),
    printcolumn(
        name = "Collected",
        type_ = "date",
        json_path = ".spec.collectedAt",
        description = "When commissioning took this inventory"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MachineInventorySpec {
    /// Everything commissioning found.
    pub hardware: Hardware,

    /// When the inventory was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected_at: Option<Time>,
}

/// What of a Machine's inventory its status keeps: the fields selectors, root-device hints
/// and printer columns read. The rest is in the MachineInventory named in `inventoryRef`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventorySummary {
    /// The MachineInventory with the full inventory (same name as the Machine).
    pub inventory_ref: LocalObjectRef,
    /// Architecture as the kernel names it, e.g. x86_64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Physical cores, all sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<i32>,
    /// Hardware threads, all sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    /// Installed memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
    /// Installed memory for people, e.g. 512Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Number of disks.
    #[serde(default)]
    pub disk_count: i32,
    /// Size of the largest disk in bytes (what `machineSelector.hardware.minDisk` is
    /// compared with). The disks themselves are in the MachineInventory: root-device hints
    /// are checked against it when a server is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub largest_disk_bytes: Option<i64>,
    /// Size of all disks together in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_disk_bytes: Option<i64>,
    /// Deprecated: where earlier versions listed the disks (they are in the MachineInventory).
    /// Kept in the schema so that an agent not yet upgraded can still report, and so that
    /// nothing is pruned before the operator rewrites the summary without it; nothing
    /// writes it any more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// Number of network interfaces.
    #[serde(default)]
    pub nic_count: i32,
}

impl InventorySummary {
    /// The summary of `hw`, kept in the status of Machine `machine`.
    pub fn of(machine: &str, hw: &Hardware) -> Self {
        let cpu = hw.cpu.as_ref();
        Self {
            inventory_ref: LocalObjectRef::new(machine),
            architecture: cpu.and_then(|c| c.architecture.clone()),
            cores: cpu.and_then(|c| c.cores),
            threads: cpu.and_then(|c| c.threads),
            memory_bytes: hw.memory_bytes,
            memory: hw.memory.clone(),
            disk_count: count(hw.disks.len()),
            largest_disk_bytes: hw.disks.iter().map(|d| d.size_bytes).max(),
            total_disk_bytes: (!hw.disks.is_empty())
                .then(|| hw.disks.iter().map(|d| d.size_bytes).sum()),
            disks: Vec::new(),
            nic_count: count(hw.nics.len()),
        }
    }
}

/// The server-side apply object of the MachineInventory that holds `hardware` for Machine
/// `namespace/name` (UID `uid`, its owner when known), taken at `collected_at` (RFC 3339).
/// The agent writes it after a commissioning; the operator when it moves a pre-split
/// `status.hardware`.
pub fn apply_object(
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    hardware: &Hardware,
    collected_at: Option<&str>,
) -> serde_json::Value {
    let mut metadata = serde_json::json!({"name": name, "namespace": namespace});
    if let Some(uid) = uid.filter(|u| !u.is_empty()) {
        metadata["ownerReferences"] = serde_json::json!([{
            "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
            "name": name, "uid": uid, "controller": true,
        }]);
    }
    let mut spec = serde_json::json!({"hardware": hardware});
    if let Some(at) = collected_at {
        spec["collectedAt"] = serde_json::json!(at);
    }
    serde_json::json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "MachineInventory",
        "metadata": metadata, "spec": spec,
    })
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Cpu, Nic, PciDevice};

    fn hardware() -> Hardware {
        Hardware {
            cpu: Some(Cpu {
                model: Some("EPYC".into()),
                cores: Some(32),
                threads: Some(64),
                sockets: Some(1),
                architecture: Some("x86_64".into()),
                flags: vec!["avx2".into(); 120],
            }),
            memory_bytes: Some(1 << 37),
            memory: Some("128Gi".into()),
            disks: vec![
                Disk {
                    name: "nvme0n1".into(),
                    size_bytes: 1_000_000_000_000,
                    model: Some("PM9A3".into()),
                    ..Default::default()
                },
                Disk {
                    name: "sda".into(),
                    size_bytes: 480_000_000_000,
                    ..Default::default()
                },
            ],
            nics: vec![
                Nic {
                    name: "eno1".into(),
                    mac: "3c:ec:ef:00:00:01".into(),
                    ..Default::default()
                };
                4
            ],
            system: None,
            pci: vec![
                PciDevice {
                    address: "0000:00:00.0".into(),
                    vendor_id: "8086".into(),
                    device_id: "1234".into(),
                    class: None,
                    driver: None,
                };
                60
            ],
        }
    }

    #[test]
    fn the_summary_keeps_what_selectors_and_printer_columns_read() {
        let s = InventorySummary::of("r1-u07", &hardware());
        assert_eq!(s.inventory_ref.name, "r1-u07");
        assert_eq!(s.architecture.as_deref(), Some("x86_64"));
        assert_eq!((s.cores, s.threads), (Some(32), Some(64)));
        assert_eq!(s.memory_bytes, Some(1 << 37));
        assert_eq!((s.disk_count, s.nic_count), (2, 4));
        assert_eq!(s.largest_disk_bytes, Some(1_000_000_000_000));
        assert_eq!(s.total_disk_bytes, Some(1_480_000_000_000));
        let bare = InventorySummary::of("r1-u08", &Hardware::default());
        assert_eq!(
            (
                bare.disk_count,
                bare.largest_disk_bytes,
                bare.total_disk_bytes
            ),
            (0, None, None)
        );
    }

    #[test]
    fn the_summary_is_a_small_part_of_the_inventory() {
        let hw = hardware();
        let full = serde_json::to_string(&hw).unwrap().len();
        let summary = serde_json::to_string(&InventorySummary::of("r1-u07", &hw))
            .unwrap()
            .len();
        assert!(summary * 10 < full, "summary {summary} B of {full} B");
    }
}
