//! A QEMU machine PXE-boots from the real `ironpool-agent`: the agent runs in a network
//! namespace with a bridge (reaching the test's apiserver through a loopback forwarder),
//! the VM's virtio NIC sits on a tap of that bridge (`-accel tcg`, no other network), and
//! a Machine with the VM's MAC carries a Ramdisk boot intent as the operator would write it.
//! The VM must get a lease, fetch the agent's own iPXE script over HTTP and run it: the
//! script's `echo` lines reach the serial console and its kernel fetch calls back to the
//! agent, so the Machine's `status.boot` shows DHCP -> (TFTP) -> ScriptFetched ->
//! AssetFetched, and the agent logs the script it served.
//!
//! - Legacy BIOS: SeaBIOS runs Debian's `ipxe-qemu` ROM, which is a full iPXE: it asks
//!   with user class `iPXE`, so the agent answers with the script's HTTP URL directly and
//!   no TFTP transfer happens (asserted).
//! - UEFI with the ROM: OVMF runs the ROM's iPXE EFI driver, which also goes straight to
//!   the HTTP script (asserted: no TFTP).
//! - UEFI without the ROM: EDK2's own PXE client fetches Debian's `ipxe.efi` over TFTP
//!   (the flight recorder shows the transfer started and completed with its size), and
//!   that iPXE asks again and runs the script.
//!
//! - UEFI HTTP boot: with TFTP off, EDK2's PXE attempts fail and its HTTP boot client
//!   (vendor class `HTTPClient`) gets `http://<agent>/boot/<mac>/ipxe.efi`, fetches Debian's
//!   `ipxe.efi` from the agent's HTTP server (a flight-recorder step with its size), and
//!   that iPXE runs the script.
//!
//! (A Legacy BIOS path through TFTP `undionly.kpxe` needs a non-iPXE PXE ROM, which
//! Debian does not ship; SeaBIOS has no network stack of its own.)
//!
//! Both tests fail (never skip) when QEMU, the firmware or the net tools are missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "agent_support.rs"]
mod agent_support;

use std::time::Duration;

use agent_support::{AGENT, TestNs, eventually};
use ironpool_crds::machine::BootStep;
use ironpool_e2e::netlab::{Netns, NsChild, require_tools};
use ironpool_e2e::qemu::{Firmware, QEMU, Vm, VmConfig};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// TCG boots are CPU-bound and the machine is shared: one VM at a time.
static ONE_VM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous: under TCG on a busy 2-core machine a UEFI boot to the script takes ~40 s.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

struct Lab {
    ns: TestNs,
    net: Netns,
    agent: NsChild,
    _forward: NsChild,
    dir: tempfile::TempDir,
}

/// Subnet `<base>.0/24` with PXE on, a Machine for `mac` with a Ramdisk intent, and the
/// agent serving DHCP, TFTP (Debian's iPXE binaries) and HTTP on `<base>.1`.
async fn lab(tag: &str, base: &str, mac: &str) -> Lab {
    lab_with(tag, base, mac, true).await
}

/// [`lab`], with TFTP served or not; the iPXE binaries are Debian's own directory, the
/// agent's default `--tftp-root` (`ipxe.efi` there is a symlink to `/boot/ipxe.efi`).
async fn lab_with(tag: &str, base: &str, mac: &str, tftp: bool) -> Lab {
    require_tools(&["ip", "busybox", "nsenter", QEMU]).unwrap();
    let ns = TestNs::new(tag).await;
    let subnet: ironpool_crds::Subnet = serde_json::from_value(json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Subnet",
        "metadata": {"name": "prov"},
        "spec": {"cidr": format!("{base}.0/24"), "gateway": format!("{base}.1"),
                 "leaseTime": "10m", "pxe": true,
                 "dynamicRange": {"start": format!("{base}.100"), "end": format!("{base}.150")}}
    }))
    .unwrap();
    ns.subnets()
        .create(&PostParams::default(), &subnet)
        .await
        .unwrap();
    ns.machine("vm-1", mac).await;
    // The operator's part: a Ramdisk intent for commissioning, attempt 1.
    let status = json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
        "status": {"bootIntent": {"target": "Ramdisk", "purpose": "Commission", "attempt": 1}}});
    ns.machines()
        .patch_status(
            "vm-1",
            &PatchParams::apply("ironpool-operator").force(),
            &Patch::Apply(status),
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let net = Netns::new(tag).unwrap();
    net.bridge("br0", Some(&format!("{base}.1/24"))).unwrap();
    net.tap("tap0", "br0").unwrap();
    let forward = net
        .forward_loopback(ns.apiserver_port(), dir.path())
        .unwrap();

    // Kernel and initramfs the script names: not bootable, but their fetch is the
    // script's call-back (AssetFetched) and iPXE stops there with an error we can see.
    let assets = dir.path().join("assets");
    std::fs::create_dir_all(&assets).unwrap();
    std::fs::write(assets.join("vmlinuz"), vec![0x5a; 64 * 1024]).unwrap();
    std::fs::write(assets.join("initramfs"), vec![0xa5; 16 * 1024]).unwrap();
    let tftp_root = std::path::Path::new("/usr/lib/ipxe");
    let ip = format!("{base}.1");
    let node = format!("{}-node", ns.name);
    let journal = dir.path().join("leases.journal").display().to_string();
    let cache = dir.path().join("cache").display().to_string();
    let (env, args) = ns.agent_args(
        &node,
        &[
            "--dhcp-interface",
            "br0",
            "--server-ip",
            &ip,
            "--journal",
            &journal,
            "--http-listen",
            &format!("{ip}:8080"),
            "--token-secret",
            "test-secret-of-at-least-32-bytes-0123456789",
            "--assets-dir",
            &assets.display().to_string(),
            "--image-cache-dir",
            &cache,
            "--tftp-listen",
            &format!("{ip}:69"),
            "--tftp-root",
            &tftp_root.display().to_string(),
        ],
    );
    let mut cmd = net.cmd(AGENT);
    cmd.envs(env).args(
        args.into_iter()
            .filter(|a| a != "--no-http" && (a != "--no-tftp" || !tftp)),
    );
    let agent = NsChild::spawn("ironpool-agent", cmd, &dir.path().join("agent.log")).unwrap();
    let served = eventually(
        Duration::from_secs(30),
        "the agent serves the Subnet",
        || ns.served_by("prov"),
    )
    .await;
    assert_eq!(served, node);
    Lab {
        ns,
        net,
        agent,
        _forward: forward,
        dir,
    }
}

fn step_name(s: BootStep) -> String {
    serde_json::to_value(s)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// `status.boot` of vm-1 as (step, detail) pairs.
async fn steps(lab: &Lab) -> Vec<(String, String)> {
    let Ok(m) = lab.ns.machines().get("vm-1").await else {
        return Vec::new();
    };
    m.status
        .map(|s| s.boot)
        .unwrap_or_default()
        .into_iter()
        .map(|r| (step_name(r.step), r.detail.unwrap_or_default()))
        .collect()
}

fn position(steps: &[(String, String)], step: &str) -> usize {
    steps
        .iter()
        .position(|(s, _)| s == step)
        .unwrap_or_else(|| panic!("{step} missing from {steps:#?}"))
}

/// The script's call-back: an AssetFetched after the ScriptFetched (UEFI HTTP boot's
/// download of ipxe.efi is an AssetFetched before it).
fn called_back(steps: &[(String, String)]) -> bool {
    steps
        .iter()
        .skip_while(|(s, _)| s != "ScriptFetched")
        .any(|(s, _)| s == "AssetFetched")
}

/// Boots a VM with `firmware` and waits for the script's call-back; returns the steps and
/// the VM (still running) for further checks.
async fn boot(lab: &Lab, config: VmConfig) -> (Vec<(String, String)>, Vm) {
    let firmware = config.firmware;
    let mut vm = Vm::start(&lab.net, &config, lab.dir.path()).unwrap();
    let report = |vm: &Vm, why: &str| format!("{why}\n{}\n{}", vm.report(), lab.agent.tail(60));
    let start = std::time::Instant::now();
    let mut last = Vec::new();
    while start.elapsed() < BOOT_TIMEOUT {
        last = steps(lab).await;
        if called_back(&last) {
            break;
        }
        let serial = vm.serial();
        if serial.contains("No bootable device") || serial.contains("Shell>") {
            panic!("{}", report(&vm, "the firmware found nothing to boot"));
        }
        if !vm.running() {
            panic!("{}", report(&vm, "QEMU exited before the script ran"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        called_back(&last),
        "{}",
        report(
            &vm,
            &format!(
                "no AssetFetched after the script within {BOOT_TIMEOUT:?}; status.boot: {last:#?}"
            )
        )
    );
    eprintln!(
        "{firmware:?}: script call-back after {:.1} s; status.boot: {last:#?}",
        start.elapsed().as_secs_f64()
    );
    // The script's own echo lines reach the serial console.
    let serial =
        tokio::task::block_in_place(|| vm.wait_serial("Ironpool:", Duration::from_secs(30)));
    if let Err(e) = serial {
        panic!("{}", report(&vm, &format!("{e:#}")));
    }
    (last, vm)
}

fn check_common(lab: &Lab, steps: &[(String, String)], mac: &str) {
    let ack = position(steps, "DHCPAck");
    let script = position(steps, "ScriptFetched");
    // The script's call-back (an HTTP-booted ipxe.efi download comes before the script).
    let asset = script + position(&steps[script..], "AssetFetched");
    assert!(ack < script && script < asset, "order: {steps:#?}");
    assert!(
        steps[script].1.contains("Commission"),
        "script summary: {:?}",
        steps[script].1
    );
    assert!(
        steps[asset..]
            .iter()
            .any(|(s, d)| s == "AssetFetched" && d.contains("vmlinuz")),
        "kernel fetch: {steps:#?}"
    );
    // The agent's access log names the script it served to this MAC.
    let log = lab.agent.output();
    assert!(
        log.lines()
            .any(|l| l.contains("iPXE script served") && l.contains(mac)),
        "agent log has no script line for {mac}\n{}",
        lab.agent.tail(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bios_vm_pxe_boots_the_agents_script() {
    let _one = ONE_VM.lock().await;
    const MAC: &str = "52:54:00:a0:00:01";
    let lab = lab("pxe-bios", "10.93.0", MAC).await;
    let (steps, vm) = boot(&lab, VmConfig::new("vm-1", MAC, "tap0", Firmware::Bios)).await;
    check_common(&lab, &steps, MAC);
    // The ROM is iPXE already: the offer carries the HTTP script URL, and no TFTP happens.
    let offer = position(&steps, "DHCPOffer");
    assert!(
        steps[offer]
            .1
            .contains("http://10.93.0.1:8080/boot/52-54-00-a0-00-01.ipxe"),
        "offer: {:?}",
        steps[offer]
    );
    assert!(
        !steps.iter().any(|(s, _)| s == "TFTPRead"),
        "unexpected TFTP on the BIOS path: {steps:#?}"
    );
    let serial = vm.serial();
    assert!(serial.contains("iPXE"), "{}", vm.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uefi_vm_pxe_boots_the_agents_script() {
    let _one = ONE_VM.lock().await;
    const MAC: &str = "52:54:00:a0:00:02";
    let lab = lab("pxe-uefi", "10.94.0", MAC).await;
    let (steps, vm) = boot(&lab, VmConfig::new("vm-1", MAC, "tap0", Firmware::Uefi)).await;
    check_common(&lab, &steps, MAC);
    // OVMF runs the ROM's iPXE EFI driver first: it asks as iPXE (arch 7), so the agent
    // answers with the script URL and no TFTP happens.
    let offer = position(&steps, "DHCPOffer");
    assert!(
        steps[offer]
            .1
            .contains("http://10.94.0.1:8080/boot/52-54-00-a0-00-02.ipxe"),
        "offer: {:?}",
        steps[offer]
    );
    assert!(
        !steps.iter().any(|(s, _)| s == "TFTPRead"),
        "unexpected TFTP on the iPXE ROM path: {steps:#?}"
    );
    assert!(vm.serial().contains("iPXE"), "{}", vm.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uefi_firmware_pxe_chains_ipxe_over_tftp() {
    let _one = ONE_VM.lock().await;
    const MAC: &str = "52:54:00:a0:00:03";
    let lab = lab("pxe-edk2", "10.95.0", MAC).await;
    // No iPXE ROM on the NIC: EDK2's own PXE client asks (PXEClient, arch 7, no user
    // class), gets ipxe.efi over TFTP, and that iPXE asks again and runs the script.
    let mut config = VmConfig::new("vm-1", MAC, "tap0", Firmware::Uefi);
    config.ipxe_rom = false;
    let (steps, vm) = boot(&lab, config).await;
    check_common(&lab, &steps, MAC);
    let offer = position(&steps, "DHCPOffer");
    assert!(
        steps[offer].1.contains("ipxe.efi"),
        "first offer: {:?}",
        steps[offer]
    );
    let started = steps
        .iter()
        .position(|(s, d)| s == "TFTPRead" && d.starts_with("ipxe.efi: started"))
        .unwrap_or_else(|| panic!("no TFTP start: {steps:#?}"));
    let done = steps
        .iter()
        .position(|(s, d)| s == "TFTPRead" && d.starts_with("ipxe.efi: sent"))
        .unwrap_or_else(|| panic!("no TFTP completion: {steps:#?}"));
    let size = std::fs::metadata("/usr/lib/ipxe/ipxe.efi").unwrap().len();
    assert!(
        steps[started].1.contains(&format!("{size} bytes"))
            && steps[done].1.contains(&format!("sent {size} bytes")),
        "{:?} {:?}",
        steps[started],
        steps[done]
    );
    assert!(started < done && done < position(&steps, "ScriptFetched"));
    assert!(vm.serial().contains("iPXE"), "{}", vm.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uefi_http_boot_fetches_ipxe_over_http() {
    let _one = ONE_VM.lock().await;
    const MAC: &str = "52:54:00:a0:00:04";
    // TFTP off: EDK2 tries PXEv4 (the TFTP fetch fails) and PXEv6 (no DHCPv6) first, then
    // HTTP boot over IPv4 (OVMF's Boot0004 "UEFI HTTPv4").
    let lab = lab_with("pxe-http", "10.96.0", MAC, false).await;
    let mut config = VmConfig::new("vm-1", MAC, "tap0", Firmware::Uefi);
    config.ipxe_rom = false;
    let (steps, vm) = boot(&lab, config).await;
    check_common(&lab, &steps, MAC);
    let http_offer = steps
        .iter()
        .position(|(s, d)| s == "DHCPOffer" && d.contains("ipxe.efi over HTTP boot"))
        .unwrap_or_else(|| panic!("no HTTP boot offer: {steps:#?}"));
    let fetched = steps
        .iter()
        .position(|(s, d)| {
            s == "AssetFetched" && d.starts_with("/boot/ipxe.efi over UEFI HTTP boot (")
        })
        .unwrap_or_else(|| {
            panic!("the ipxe.efi download is not in the flight recorder: {steps:#?}")
        });
    assert!(
        http_offer < fetched && fetched < position(&steps, "ScriptFetched"),
        "{steps:#?}"
    );
    assert!(
        !steps
            .iter()
            .any(|(s, d)| s == "TFTPRead" && d.contains(": sent")),
        "TFTP is off: {steps:#?}"
    );
    let serial = vm.serial();
    assert!(serial.contains("HTTP Boot"), "{}", vm.report());
    assert!(serial.contains("iPXE"), "{}", vm.report());
}
