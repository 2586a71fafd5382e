use std::os::unix::fs::symlink;
use std::path::Path;

use super::*;

/// A /proc/cpuinfo of 2 sockets x 2 cores x 2 threads (8 processors), shaped like Linux's.
fn cpuinfo_2s2c2t() -> String {
    let mut out = String::new();
    let mut n = 0;
    for socket in 0..2 {
        for thread in 0..2 {
            for core in 0..2 {
                out.push_str(&format!(
                    "processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) \
                     Gold 6130 CPU @ 2.10GHz\nphysical id\t: {socket}\nsiblings\t: 4\ncore id\t\t: \
                     {core}\ncpu cores\t: 2\nflags\t\t: fpu vme sse2 avx2 vmx\n\n"
                ));
                let _ = thread;
                n += 1;
            }
        }
    }
    out
}

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    symlink(target, p).unwrap();
}

#[test]
fn cpuinfo_counts_sockets_cores_and_threads() {
    let cpu = parse_cpuinfo(&cpuinfo_2s2c2t());
    assert_eq!(
        (cpu.sockets, cpu.cores, cpu.threads),
        (Some(2), Some(4), Some(8))
    );
    assert_eq!(
        cpu.model.as_deref(),
        Some("Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz")
    );
    assert_eq!(cpu.flags, ["fpu", "vme", "sse2", "avx2", "vmx"]);
    // No topology lines (some hypervisors): cores = threads, one socket.
    let cpu = parse_cpuinfo("processor : 0\nmodel name : QEMU Virtual CPU\n\nprocessor : 1\n");
    assert_eq!(
        (cpu.sockets, cpu.cores, cpu.threads),
        (Some(1), Some(2), Some(2))
    );
    assert_eq!(parse_cpuinfo("").threads, None);
}

#[test]
fn meminfo_and_human_sizes() {
    let text = "MemTotal:         493344 kB\nMemFree:          400000 kB\n";
    assert_eq!(parse_meminfo(text), Some(493_344 * 1024));
    assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    assert_eq!(human_bytes(512 << 20), "512Mi");
    assert_eq!(human_bytes(64 << 30), "64Gi");
    assert_eq!(human_bytes(1536 << 20), "1536Mi");
    assert_eq!(human_bytes((1 << 30) + 5), "1Gi");
    assert_eq!(human_bytes(100), "100");
}

#[test]
fn a_fixture_tree_gives_the_whole_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    put(r, "proc/cpuinfo", &cpuinfo_2s2c2t());
    put(r, "proc/meminfo", "MemTotal: 1000 kB\n");
    // 4 online 128 MiB blocks and an offline one: 512 MiB installed.
    put(r, "sys/devices/system/memory/block_size_bytes", "8000000\n");
    for (i, online) in ["1", "1", "1", "1", "0"].iter().enumerate() {
        put(
            r,
            &format!("sys/devices/system/memory/memory{i}/online"),
            online,
        );
    }
    // virtio disk with a serial, its partition, an NVMe, a SATA HDD with VPD serial, a loop.
    put(r, "sys/class/block/vda/size", "2097152\n");
    put(r, "sys/class/block/vda/queue/rotational", "1\n");
    put(r, "sys/class/block/vda/serial", "ironpool-root\n");
    put(r, "sys/class/block/vda1/size", "2048\n");
    put(r, "sys/class/block/vda1/partition", "1\n");
    put(r, "sys/class/block/nvme0n1/size", "1953525168\n");
    put(r, "sys/class/block/nvme0n1/queue/rotational", "0\n");
    put(r, "sys/class/block/nvme0n1/wwid", "eui.0025388b91b5a1c2\n");
    put(
        r,
        "sys/class/block/nvme0n1/device/model",
        "Samsung SSD 970 EVO Plus 1TB  \n",
    );
    put(
        r,
        "sys/class/block/nvme0n1/device/serial",
        "S4EWNX0R123456\n",
    );
    put(r, "sys/class/block/sda/size", "7814037168\n");
    put(r, "sys/class/block/sda/queue/rotational", "1\n");
    put(r, "sys/class/block/sda/device/vendor", "ATA     \n");
    put(r, "sys/class/block/sda/device/model", "ST4000NM0035-1V4\n");
    put(
        r,
        "sys/class/block/sda/device/wwid",
        "naa.5000C500A0B1C2D3\n",
    );
    let mut vpd = vec![0u8, 0x80, 0, 8];
    vpd.extend_from_slice(b"ZC1234AB");
    std::fs::write(r.join("sys/class/block/sda/device/vpd_pg80"), vpd).unwrap();
    put(r, "sys/class/block/loop0/size", "100\n");
    // A virtio NIC with link, an ixgbe NIC without carrier, lo (no device link).
    put(r, "sys/class/net/eth0/address", "52:54:00:12:34:56\n");
    put(r, "sys/class/net/eth0/carrier", "1\n");
    put(r, "sys/class/net/eth0/speed", "-1\n");
    link(
        r,
        "sys/class/net/eth0/device/driver",
        "../../../bus/virtio/drivers/virtio_net",
    );
    put(r, "sys/class/net/eno1/address", "3c:ec:ef:12:34:57\n");
    put(r, "sys/class/net/eno1/speed", "10000\n");
    link(
        r,
        "sys/class/net/eno1/device/driver",
        "../../../bus/pci/drivers/ixgbe",
    );
    put(r, "sys/class/net/lo/address", "00:00:00:00:00:00\n");
    // DMI with a placeholder serial.
    put(r, "sys/class/dmi/id/sys_vendor", "QEMU\n");
    put(
        r,
        "sys/class/dmi/id/product_name",
        "Standard PC (i440FX + PIIX, 1996)\n",
    );
    put(
        r,
        "sys/class/dmi/id/product_serial",
        "To be filled by O.E.M.\n",
    );
    put(r, "sys/class/dmi/id/bios_vendor", "SeaBIOS\n");
    put(
        r,
        "sys/class/dmi/id/bios_version",
        "1.16.2-debian-1.16.2-1\n",
    );
    put(r, "sys/class/dmi/id/bios_date", "04/01/2014\n");
    // PCI: a NIC with a driver, a bridge without.
    put(r, "sys/bus/pci/devices/0000:00:03.0/vendor", "0x1af4\n");
    put(r, "sys/bus/pci/devices/0000:00:03.0/device", "0x1000\n");
    put(r, "sys/bus/pci/devices/0000:00:03.0/class", "0x020000\n");
    link(
        r,
        "sys/bus/pci/devices/0000:00:03.0/driver",
        "../../../bus/pci/drivers/virtio-pci",
    );
    put(r, "sys/bus/pci/devices/0000:00:00.0/vendor", "0x8086\n");
    put(r, "sys/bus/pci/devices/0000:00:00.0/device", "0x1237\n");

    let hw = collect(r);
    let cpu = hw.cpu.as_ref().unwrap();
    assert_eq!((cpu.cores, cpu.threads), (Some(4), Some(8)));
    assert_eq!(hw.memory_bytes, Some(512 << 20));
    assert_eq!(hw.memory.as_deref(), Some("512Mi"));

    let names: Vec<&str> = hw.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["nvme0n1", "sda", "vda"]);
    let nvme = &hw.disks[0];
    assert_eq!(nvme.size_bytes, 1_953_525_168 * 512);
    assert_eq!(nvme.disk_type, Some(DiskType::Nvme));
    assert_eq!(nvme.model.as_deref(), Some("Samsung SSD 970 EVO Plus 1TB"));
    assert_eq!(nvme.serial_number.as_deref(), Some("S4EWNX0R123456"));
    assert_eq!(nvme.wwn.as_deref(), Some("0x0025388b91b5a1c2"));
    let sda = &hw.disks[1];
    assert_eq!(
        (sda.disk_type, sda.rotational, sda.vendor.as_deref()),
        (Some(DiskType::Hdd), Some(true), Some("ATA"))
    );
    assert_eq!(sda.serial_number.as_deref(), Some("ZC1234AB"));
    assert_eq!(sda.wwn.as_deref(), Some("0x5000c500a0b1c2d3"));
    let vda = &hw.disks[2];
    assert_eq!(
        (vda.size_bytes, vda.serial_number.as_deref()),
        (1 << 30, Some("ironpool-root"))
    );

    assert_eq!(hw.nics.len(), 2);
    assert_eq!(hw.nics[0].name, "eno1");
    assert_eq!(
        (
            hw.nics[0].driver.as_deref(),
            hw.nics[0].link,
            hw.nics[0].speed_mbps
        ),
        (Some("ixgbe"), None, Some(10_000))
    );
    assert_eq!(
        (
            hw.nics[1].mac.as_str(),
            hw.nics[1].driver.as_deref(),
            hw.nics[1].link,
            hw.nics[1].speed_mbps
        ),
        ("52:54:00:12:34:56", Some("virtio_net"), Some(true), None)
    );

    let sys = hw.system.as_ref().unwrap();
    assert_eq!(sys.manufacturer.as_deref(), Some("QEMU"));
    assert_eq!(sys.serial_number, None);
    assert_eq!(sys.bios_vendor.as_deref(), Some("SeaBIOS"));

    assert_eq!(hw.pci.len(), 2);
    assert_eq!(hw.pci[0].address, "0000:00:00.0");
    assert_eq!(
        (hw.pci[0].vendor_id.as_str(), hw.pci[0].driver.as_deref()),
        ("8086", None)
    );
    assert_eq!(hw.pci[1].class.as_deref(), Some("020000"));
    assert_eq!(hw.pci[1].driver.as_deref(), Some("virtio-pci"));
}

#[test]
fn memory_falls_back_to_memtotal_and_an_empty_tree_gives_little() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "proc/meminfo", "MemTotal: 2048 kB\n");
    let hw = collect(dir.path());
    assert_eq!(hw.memory_bytes, Some(2 << 20));
    assert!(hw.disks.is_empty() && hw.nics.is_empty() && hw.pci.is_empty());
    assert_eq!(hw.system, None);
    assert_eq!(hw.cpu, None);
}

#[test]
fn wwn_forms() {
    assert_eq!(normalize_wwn("naa.5000C500A0B1C2D3"), "0x5000c500a0b1c2d3");
    assert_eq!(normalize_wwn("0x5000c500a0b1c2d3"), "0x5000c500a0b1c2d3");
    assert_eq!(
        normalize_wwn("nvme.1af4-73657269616c-51454d55-00000001"),
        "nvme.1af4-73657269616c-51454d55-00000001"
    );
}
