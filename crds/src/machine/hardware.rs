//! Hardware inventory of a Machine, as commissioning found it.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::RootDeviceHints;

/// Hardware inventory found by commissioning.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hardware {
    /// Processors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Installed memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
    /// Installed memory for people, e.g. 512Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Block devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// Network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    /// DMI system, board and firmware identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemInfo>,
    /// PCI devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pci: Vec<PciDevice>,
}

/// Processors of a Machine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    /// Model name, e.g. "AMD EPYC 7543 32-Core Processor".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Physical cores, all sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<i32>,
    /// Hardware threads, all sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    /// Sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<i32>,
    /// Architecture as the kernel names it, e.g. x86_64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Feature flags, e.g. avx2, vmx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// A block device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    /// Kernel name, e.g. nvme0n1.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: i64,
    /// HDD, SSD or NVMe.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub disk_type: Option<DiskType>,
    /// Model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// World Wide Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    /// Whether the disk spins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}

impl Disk {
    /// Why this disk does not satisfy `hints`, or `None` when it does. The operator checks
    /// it against the inventory when it picks a server, the ramdisk when it picks the disk.
    pub fn mismatch(&self, hints: &RootDeviceHints) -> Option<String> {
        let name_of = |n: &str| n.trim_start_matches("/dev/").to_string();
        if let Some(want) = &hints.device_name
            && name_of(want) != self.name
        {
            return Some(format!("not {want}"));
        }
        let contains = |have: &Option<String>, want: &str| {
            have.as_deref()
                .is_some_and(|h| h.to_lowercase().contains(&want.to_lowercase()))
        };
        if let Some(want) = &hints.model
            && !contains(&self.model, want)
        {
            return Some(format!("model {:?} lacks '{want}'", self.model));
        }
        if let Some(want) = &hints.vendor
            && !contains(&self.vendor, want)
        {
            return Some(format!("vendor {:?} lacks '{want}'", self.vendor));
        }
        if let Some(want) = &hints.serial_number
            && self.serial_number.as_deref() != Some(want.as_str())
        {
            return Some(format!("serial {:?} is not {want}", self.serial_number));
        }
        if let Some(want) = &hints.wwn
            && self.wwn.as_deref().map(str::to_lowercase) != Some(want.to_lowercase())
        {
            return Some(format!("WWN {:?} is not {want}", self.wwn));
        }
        if let Some(gb) = hints.min_size_gigabytes
            && self.size_bytes < gb.saturating_mul(1_000_000_000)
        {
            return Some(format!("{} bytes is below {gb} GB", self.size_bytes));
        }
        if let Some(want) = hints.rotational
            && self.rotational.unwrap_or(false) != want
        {
            return Some(if want { "not rotational" } else { "rotational" }.to_string());
        }
        None
    }
}

/// Kind of disk.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DiskType {
    /// Spinning disk.
    #[serde(rename = "HDD")]
    Hdd,
    /// SATA/SAS solid-state disk.
    #[serde(rename = "SSD")]
    Ssd,
    /// NVMe device.
    #[serde(rename = "NVMe")]
    Nvme,
}

/// A network interface.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    /// Kernel name, e.g. eno1.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Kernel driver, e.g. ixgbe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Whether a carrier is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<bool>,
    /// Link speed in Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<i64>,
}

/// DMI identity of the system, board and firmware.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemInfo {
    /// System manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// System product name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// System serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// System UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Board manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_manufacturer: Option<String>,
    /// Board product name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_product: Option<String>,
    /// Firmware vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios_vendor: Option<String>,
    /// Firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios_version: Option<String>,
    /// Firmware release date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios_date: Option<String>,
}

/// A PCI device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PciDevice {
    /// Bus address, e.g. 0000:3b:00.0.
    pub address: String,
    /// Vendor ID, hex, e.g. 8086.
    pub vendor_id: String,
    /// Device ID, hex.
    pub device_id: String,
    /// Class code, hex, e.g. 020000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Kernel driver bound to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}
