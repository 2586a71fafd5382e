//! Hardware inventory from `/proc` and `/sys`, shaped as the Machine's `status.hardware`.
//! Each source has a pure parser; [`collect`] reads them under a root directory (`/` in the
//! ramdisk, a fixture tree in tests).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use ironpool_crds::machine::{Cpu, Disk, DiskType, Hardware, Nic, PciDevice, SystemInfo};

/// Reads a sysfs/procfs attribute, trimmed; `None` when absent, unreadable or empty.
pub fn attr(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Sorted entry names of a directory (empty when it cannot be read).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The last path component a symlink points to (e.g. a driver name).
fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The whole inventory under `root`.
pub fn collect(root: &Path) -> Hardware {
    let memory_bytes = memory_bytes(root);
    Hardware {
        cpu: fs::read_to_string(root.join("proc/cpuinfo"))
            .ok()
            .map(|t| parse_cpuinfo(&t)),
        memory_bytes,
        memory: memory_bytes.map(human_bytes),
        disks: disks(root),
        nics: nics(root),
        system: system(root),
        pci: pci(root),
    }
}

/// Processors from `/proc/cpuinfo`: threads = processors; cores = distinct (physical id,
/// core id); sockets = distinct physical ids.
pub fn parse_cpuinfo(text: &str) -> Cpu {
    let mut threads = 0;
    let (mut sockets, mut cores) = (BTreeSet::new(), BTreeSet::new());
    let (mut model, mut flags) = (None, Vec::new());
    let mut physical = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "processor" => {
                threads += 1;
                physical = None;
            }
            "model name" if model.is_none() => model = Some(value.to_string()),
            "flags" if flags.is_empty() => {
                flags = value.split_whitespace().map(str::to_string).collect();
            }
            "physical id" => {
                physical = Some(value.to_string());
                sockets.insert(value.to_string());
            }
            "core id" => {
                cores.insert((physical.clone().unwrap_or_default(), value.to_string()));
            }
            _ => {}
        }
    }
    let count = |n: usize| i32::try_from(n).ok().filter(|n| *n > 0);
    Cpu {
        model,
        cores: count(cores.len()).or(count(threads)),
        threads: count(threads),
        sockets: count(sockets.len()).or(count(usize::from(threads > 0))),
        architecture: Some(std::env::consts::ARCH.to_string()),
        flags,
    }
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> Option<i64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Installed memory: the online memory blocks of `/sys/devices/system/memory` (what the
/// firmware gave the kernel, including what the kernel reserved), else `MemTotal`.
fn memory_bytes(root: &Path) -> Option<i64> {
    let dir = root.join("sys/devices/system/memory");
    let block = attr(&dir.join("block_size_bytes")).and_then(|h| i64::from_str_radix(&h, 16).ok());
    let online = entries(&dir)
        .iter()
        .filter(|n| n.starts_with("memory"))
        .filter(|n| attr(&dir.join(n).join("online")).as_deref() == Some("1"))
        .count();
    match block {
        Some(b) if online > 0 => i64::try_from(online).ok()?.checked_mul(b),
        _ => parse_meminfo(&fs::read_to_string(root.join("proc/meminfo")).ok()?),
    }
}

/// Bytes for people in binary units: `512Mi`, `64Gi`, `1536Mi`.
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [(&str, i64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    for (unit, size) in UNITS {
        if bytes >= size {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Whether a block device name is a disk worth reporting (not loop, ram, optical, ...).
pub fn is_real_disk(name: &str) -> bool {
    !["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Whole disks under `/sys/class/block` (partitions skipped), sorted by name.
pub fn disks(root: &Path) -> Vec<Disk> {
    let base = root.join("sys/class/block");
    entries(&base)
        .into_iter()
        .filter(|n| is_real_disk(n))
        .filter_map(|name| disk(&base.join(&name), name))
        .collect()
}

fn disk(dir: &Path, name: String) -> Option<Disk> {
    if dir.join("partition").exists() {
        return None;
    }
    let sectors: i64 = attr(&dir.join("size"))?.parse().ok()?;
    if sectors == 0 {
        return None;
    }
    let dev = dir.join("device");
    let rotational = attr(&dir.join("queue/rotational")).map(|r| r == "1");
    let disk_type = if name.starts_with("nvme") {
        DiskType::Nvme
    } else if rotational == Some(true) {
        DiskType::Hdd
    } else {
        DiskType::Ssd
    };
    let wwn = attr(&dir.join("wwid"))
        .or_else(|| attr(&dev.join("wwid")))
        .map(|w| normalize_wwn(&w));
    Some(Disk {
        size_bytes: sectors.checked_mul(512)?,
        disk_type: Some(disk_type),
        model: attr(&dev.join("model")),
        vendor: attr(&dev.join("vendor")),
        serial_number: attr(&dir.join("serial"))
            .or_else(|| attr(&dev.join("serial")))
            .or_else(|| vpd_serial(&dev.join("vpd_pg80"))),
        wwn,
        rotational,
        name,
    })
}

/// `naa.5000c500a0b1c2d3` / `eui.…` / `0x…` -> `0x5000c500a0b1c2d3`; other forms (NVMe
/// `nvme.` identifiers, t10 strings) as the kernel wrote them.
pub fn normalize_wwn(wwid: &str) -> String {
    let w = wwid.trim();
    for prefix in ["naa.", "eui.", "0x"] {
        if let Some(hex) = w.strip_prefix(prefix)
            && !hex.is_empty()
            && hex.chars().all(|c| c.is_ascii_hexdigit())
        {
            return format!("0x{}", hex.to_ascii_lowercase());
        }
    }
    w.to_string()
}

/// The unit serial number from a SCSI VPD page 0x80 (4-byte header, then ASCII).
fn vpd_serial(path: &Path) -> Option<String> {
    let page = fs::read(path).ok()?;
    let len = usize::from(*page.get(3)?);
    let serial = String::from_utf8_lossy(page.get(4..4 + len)?)
        .trim()
        .to_string();
    (!serial.is_empty()).then_some(serial)
}

/// Physical NICs under `/sys/class/net` (those with a `device` link), sorted by name.
pub fn nics(root: &Path) -> Vec<Nic> {
    let base = root.join("sys/class/net");
    entries(&base)
        .into_iter()
        .filter_map(|name| {
            let dir = base.join(&name);
            if !dir.join("device").exists() {
                return None;
            }
            Some(Nic {
                mac: attr(&dir.join("address"))?,
                driver: link_name(&dir.join("device/driver")),
                link: attr(&dir.join("carrier")).map(|c| c == "1"),
                speed_mbps: attr(&dir.join("speed"))
                    .and_then(|s| s.parse::<i64>().ok())
                    .filter(|s| *s > 0),
                name,
            })
        })
        .collect()
}

/// DMI identity from `/sys/class/dmi/id`; placeholders such as "To be filled by O.E.M."
/// are dropped.
pub fn system(root: &Path) -> Option<SystemInfo> {
    let dir = root.join("sys/class/dmi/id");
    let get = |f: &str| attr(&dir.join(f)).filter(|v| !is_placeholder(v));
    let info = SystemInfo {
        manufacturer: get("sys_vendor"),
        product: get("product_name"),
        serial_number: get("product_serial"),
        uuid: get("product_uuid"),
        board_manufacturer: get("board_vendor"),
        board_product: get("board_name"),
        bios_vendor: get("bios_vendor"),
        bios_version: get("bios_version"),
        bios_date: get("bios_date"),
    };
    (info != SystemInfo::default()).then_some(info)
}

fn is_placeholder(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    [
        "to be filled",
        "not specified",
        "default string",
        "system serial number",
        "none",
    ]
    .iter()
    .any(|p| l.starts_with(p))
}

/// PCI devices under `/sys/bus/pci/devices`, sorted by address.
pub fn pci(root: &Path) -> Vec<PciDevice> {
    let base = root.join("sys/bus/pci/devices");
    entries(&base)
        .into_iter()
        .filter_map(|address| {
            let dir = base.join(&address);
            let hex = |f: &str| attr(&dir.join(f)).map(|v| v.trim_start_matches("0x").to_string());
            Some(PciDevice {
                vendor_id: hex("vendor")?,
                device_id: hex("device")?,
                class: hex("class"),
                driver: link_name(&dir.join("driver")),
                address,
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "inventory_tests.rs"]
mod tests;
