//! Scenarios on the lab (`ironpool_e2e::lab`): real control plane, operator, agent, two
//! QEMU machines (UEFI behind Redfish, Legacy BIOS behind IPMI) on a provisioning bridge.
//!
//! One test walks the whole story, because every VM boot costs tens of seconds under TCG:
//! 1. both machines PXE-boot unknown, are enlisted (boot mode read from the firmware's
//!    DHCP request), get their BMC and are commissioned; the inventory matches the QEMU configuration (CPUs, memory, disk size, MAC);
//! 2. the UEFI machine is deployed with the qcow2 OS image while the operator and then
//!    the agent are SIGKILLed mid-deployment; it still ends Deployed, with no second power
//!    action for the same boot intent attempt, and its OS checked in from disk with the
//!    user-data's file in its output, on the static address its Deployment got from the
//!    Subnet (DHCP reservation) and named in the network-config Ironpool generated;
//! 3. the BIOS machine's first Deployment names a wrong checksum: FailedDeployment with a
//!    readable reason, never Deployed; released, it is erased and Ready again; a correct
//!    Deployment (raw image) then deploys it;
//! 4. the UEFI machine is released with Quick erase and returns to Ready with its disk's
//!    partition table and signatures wiped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::time::Duration;

use ironpool_e2e::lab::{Artifacts, Lab, LabMachine};
use ironpool_e2e::qemu::Firmware;
use serde_json::Value;

const MIN: Duration = Duration::from_secs(60);

fn machine(lab: &Lab, i: usize) -> Value {
    lab.get_json("machine", &lab.machines[i].machine_name())
        .unwrap()
}

fn intent_attempt(lab: &Lab, i: usize) -> i64 {
    machine(lab, i)
        .pointer("/status/bootIntent/attempt")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// The first `len` bytes of lab machine `i`'s virtual disk.
fn disk_head(lab: &Lab, i: usize, len: usize) -> Vec<u8> {
    let path = lab.dir.join(format!("{}.disk.raw", lab.machines[i].vm));
    let mut buf = vec![0; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

/// Power commands the BMC emulators carried out for VM `vm` (their EVENT lines).
fn power_events(lab: &Lab, vm: &str) -> Vec<String> {
    lab.bmc_events()
        .into_iter()
        .filter(|e| {
            let mut words = e.split_whitespace();
            words.next() == Some(vm) && words.next().is_some_and(|w| !w.starts_with("boot"))
        })
        .collect()
}

/// The OS booted with the static address IPAM gave its Deployment (DHCP reserved it for
/// the machine's MAC), and the network-config Ironpool generated names the same address.
fn check_address(lab: &Lab, deployment: &str, booted: &str) {
    let d = lab
        .get_json("deployment.metal.ironpool.dev", deployment)
        .unwrap();
    let ip = d
        .pointer("/status/addresses/0")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("Deployment {deployment} has no address: {d}"));
    assert!(
        booted.contains(&format!("lab-address {ip}/24")),
        "the OS has {ip}/24: {booted}"
    );
    assert!(
        booted.contains(&format!("lab-network-config {ip}/24")),
        "the generated network-config has {ip}/24: {booted}"
    );
}

fn check_inventory(lab: &Lab, i: usize) {
    // Enlistment read the boot mode from the firmware's DHCP request (option 93).
    let want = match lab.machines[i].firmware {
        Firmware::Uefi => "UEFI",
        Firmware::Bios => "Legacy",
    };
    let m = machine(lab, i);
    assert_eq!(
        m.pointer("/spec/bootMode").and_then(Value::as_str),
        Some(want),
        "{m}"
    );
    let m = machine(lab, i);
    let hw = m.pointer("/status/hardware").expect("status.hardware");
    let spec = &lab.machines[i];
    let mem = hw["memoryBytes"].as_i64().unwrap();
    let want = i64::from(spec.memory_mib) << 20;
    // The kernel reports what it can use: a little below what QEMU gives.
    assert!(
        mem <= want && mem > want * 8 / 10,
        "memory {mem} vs {want}: {hw}"
    );
    assert!(hw["cpu"]["cores"].as_i64().unwrap() >= 1, "{hw}");
    let disks = hw["disks"].as_array().unwrap();
    assert!(
        disks
            .iter()
            .any(|d| d["sizeBytes"].as_i64() == Some((spec.disk_mib << 20) as i64)),
        "a {} MiB disk: {hw}",
        spec.disk_mib
    );
    let nics = hw["nics"].as_array().unwrap();
    assert!(
        nics.iter().any(|n| n["mac"].as_str() == Some(&spec.mac)),
        "NIC {}: {hw}",
        spec.mac
    );
}

#[test]
fn machines_are_enlisted_commissioned_deployed_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = Artifacts::build().unwrap();
    let mut lab = Lab::start(dir.path(), artifacts, LabMachine::default_pair()).unwrap();
    let (uefi, bios) = (0, 1);

    // 1. Enlist, add BMCs, commission.
    lab.adopt_enlisted(10 * MIN).unwrap();
    lab.wait_all("Ready", 20 * MIN).unwrap();
    check_inventory(&lab, uefi);
    check_inventory(&lab, bios);

    // 2 and 3 start together: a good deployment and a bad checksum.
    lab.deploy(uefi, "os.qcow2", None).unwrap();
    let bad = format!("sha256:{}", "0".repeat(64));
    lab.deploy(bios, "os.raw", Some(&bad)).unwrap();

    lab.wait_for("the UEFI machine is Deploying", 5 * MIN, |l| {
        Ok(l.phase(uefi)?.as_deref() == Some("Deploying"))
    })
    .unwrap();
    let attempt = intent_attempt(&lab, uefi);
    let before = power_events(&lab, &lab.machines[uefi].vm).len();
    lab.kill_operator().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    lab.start_operator().unwrap();
    lab.kill_agent().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    lab.start_agent().unwrap();

    lab.wait_for("the BIOS machine's bad image fails", 20 * MIN, |l| {
        Ok(l.phase(bios)?.as_deref() == Some("FailedDeployment"))
    })
    .unwrap();
    let m = machine(&lab, bios);
    let text = m.to_string();
    assert!(text.contains("checksum"), "a readable reason: {m}");

    lab.wait_for("the UEFI machine is Deployed", 25 * MIN, |l| {
        Ok(l.phase(uefi)?.as_deref() == Some("Deployed"))
    })
    .unwrap();
    let booted = lab.boot_step(uefi, "OSBooted").unwrap().unwrap();
    assert!(
        booted.contains("proof-of-user-data uefi-1") && booted.contains("exit 0"),
        "{booted}"
    );
    check_address(&lab, "uefi-1", &booted);
    // One power action per boot intent: the ramdisk boot of `attempt`, then the disk boot.
    let events = power_events(&lab, &lab.machines[uefi].vm);
    let during: Vec<&String> = events[before..].iter().collect();
    assert!(
        during.len() <= 2,
        "attempt {attempt}: at most the ramdisk boot and the disk boot, got {during:?}"
    );

    // 3, continued: release the failed one (erase), then deploy it properly.
    lab.delete_deployment("bios-1").unwrap();
    lab.wait_for("the BIOS machine is Ready again", 20 * MIN, |l| {
        Ok(l.phase(bios)?.as_deref() == Some("Ready")
            && !l.exists("deployment.metal.ironpool.dev", "bios-1"))
    })
    .unwrap();
    lab.deploy(bios, "os.raw", None).unwrap();
    lab.wait_for("the BIOS machine is Deployed", 25 * MIN, |l| {
        Ok(l.phase(bios)?.as_deref() == Some("Deployed"))
    })
    .unwrap();
    let booted = lab.boot_step(bios, "OSBooted").unwrap().unwrap();
    assert!(booted.contains("proof-of-user-data bios-1"), "{booted}");
    check_address(&lab, "bios-1", &booted);

    // 4. Release with erase.
    assert_eq!(
        &disk_head(&lab, uefi, 512)[510..],
        &[0x55, 0xaa],
        "deployed disk has an MBR"
    );
    lab.delete_deployment("uefi-1").unwrap();
    lab.wait_for("the UEFI machine is released and Ready", 20 * MIN, |l| {
        Ok(l.phase(uefi)?.as_deref() == Some("Ready"))
    })
    .unwrap();
    let head = disk_head(&lab, uefi, 1 << 20);
    assert!(
        head.iter().all(|b| *b == 0),
        "the first MiB (partition table, boot sector) is wiped"
    );
    eprintln!("{}", lab.table().unwrap());
}
