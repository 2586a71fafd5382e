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
//! 3. the BIOS machine's first Deployment names a wrong checksum: FailedDeployment at once
//!    (no retry), the Deployment's own status saying ChecksumMismatch and what to fix, never
//!    Deployed; released, it is erased and Ready again; a correct Deployment (raw image)
//!    made while its BMC password is mistyped says so in its own status
//!    (BMCAuthenticationFailed), and deploys once the Secret is fixed;
//!    then the deployed UEFI machine is power-cycled once by a `spec.powerCycleRequest`, and
//!    powered off and on again by `spec.power`, each through its real Redfish BMC;
//! 4. the UEFI machine is released with Quick erase and returns to Ready with its disk's
//!    partition table and signatures wiped;
//! 5. Cluster API (the real core manager and CABPK, installed by clusterctl) scales a
//!    MachineDeployment 1 -> 2 -> 1 over the two machines: each guest prints the join
//!    configuration its bootstrap data wrote and registers its Node with the bootstrap
//!    token (the test OS's `kubeadm` stand-in: no kubelet runs under TCG), so its Machine
//!    is Running; scaling down releases and erases one server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::time::Duration;

use ironpool_e2e::lab::{Artifacts, Lab, LabMachine};
use ironpool_e2e::qemu::Firmware;
use ironpool_e2e::webdriver::{epoch_ms, median};
use serde_json::Value;

const MIN: Duration = Duration::from_secs(60);

/// The Ready condition's reason and message of an object.
fn ready(obj: &Value) -> (String, String) {
    let c = obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("reason"), s("message"))
}

fn machine(lab: &Lab, i: usize) -> Value {
    lab.get_json(
        "machine.metal.ironpool.dev",
        &lab.machines[i].machine_name(),
    )
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
    // The summary in the Machine, the full inventory in the MachineInventory it names.
    let m = machine(lab, i);
    assert!(m.pointer("/status/hardware").is_none(), "{m}");
    let summary = m.pointer("/status/inventory").expect("status.inventory");
    let name = summary
        .pointer("/inventoryRef/name")
        .and_then(Value::as_str)
        .expect("inventoryRef");
    let inventory = lab
        .get_json("machineinventory.metal.ironpool.dev", name)
        .unwrap();
    let hw = inventory.pointer("/spec/hardware").expect("spec.hardware");
    assert_eq!(summary["memoryBytes"], hw["memoryBytes"], "{summary}");
    assert_eq!(
        inventory.pointer("/metadata/ownerReferences/0/uid"),
        m.pointer("/metadata/uid"),
        "owned by its Machine"
    );
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
    let bad_since = std::time::Instant::now();

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
    eprintln!(
        "[lab] the bad checksum failed its Deployment {:.1}s after it was created",
        bad_since.elapsed().as_secs_f64()
    );
    // Failed at once: no second ramdisk boot for bytes that would fail the same way.
    assert_eq!(
        m["status"]["lastOperation"]["retries"], 0,
        "not retried: {m}"
    );
    // The Deployment itself says why, and its progress shows the failure.
    lab.wait_for(
        "the BIOS Deployment names the checksum mismatch",
        2 * MIN,
        |l| {
            let d = l.get_json("deployment.metal.ironpool.dev", "bios-1")?;
            Ok(d["status"]["phase"] == "Failed"
                && ready(&d).0 == "ChecksumMismatch"
                && d["status"]["progress"]["summary"] == "Failed: ChecksumMismatch")
        },
    )
    .unwrap();
    let d = lab
        .get_json("deployment.metal.ironpool.dev", "bios-1")
        .unwrap();
    assert!(
        ready(&d).1.contains("spec.image.checksum"),
        "what to do: {d}"
    );

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
        "attempt {attempt}: at most the ramdisk boot and the disk boot, got {during:?}\n\
         machine: {}\n{}",
        machine(&lab, uefi),
        lab.diagnostics()
    );

    // 3, continued: release the failed one (erase), then deploy it properly.
    lab.delete_deployment("bios-1").unwrap();
    lab.wait_for("the BIOS machine is Ready again", 20 * MIN, |l| {
        Ok(l.phase(bios)?.as_deref() == Some("Ready")
            && !l.exists("deployment.metal.ironpool.dev", "bios-1"))
    })
    .unwrap();
    // 3, continued: a mistyped BMC password. The Deployment's own status names the BMC
    // that rejects the credentials; fixing the Secret lets the deploy go on by itself.
    lab.set_bmc_password(bios, Some("not-the-password"))
        .unwrap();
    lab.deploy(bios, "os.raw", None).unwrap();
    lab.wait_for(
        "the BIOS Deployment names the rejected credentials",
        5 * MIN,
        |l| {
            let d = l.get_json("deployment.metal.ironpool.dev", "bios-1")?;
            Ok(ready(&d).0 == "BMCAuthenticationFailed")
        },
    )
    .unwrap();
    let d = lab
        .get_json("deployment.metal.ironpool.dev", "bios-1")
        .unwrap();
    assert!(ready(&d).1.contains("rejected the credentials"), "{d}");
    assert_eq!(
        d["status"]["progress"]["summary"], "Stalled: the BMC rejects the credentials",
        "{d}"
    );
    let fixed = std::time::Instant::now();
    lab.set_bmc_password(bios, None).unwrap();
    lab.wait_for("the BIOS machine is Deployed", 25 * MIN, |l| {
        Ok(l.phase(bios)?.as_deref() == Some("Deployed"))
    })
    .unwrap();
    eprintln!(
        "[lab] deployed {:.1}s after the BMC password was fixed",
        fixed.elapsed().as_secs_f64()
    );
    let booted = lab.boot_step(bios, "OSBooted").unwrap().unwrap();
    assert!(booted.contains("proof-of-user-data bios-1"), "{booted}");
    check_address(&lab, "bios-1", &booted);

    // The fleet web view in a real browser, watching the power steps happen.
    let view = FleetView::open(&lab, uefi);
    power_as_a_person_asks(&lab, uefi);
    view.measure_power_updates(&lab, uefi);
    rescue_and_back(&lab, uefi);

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

    cluster_api(&mut lab);
}

/// 3b. A person's power on a Deployed machine (what `kubectl ironpool power` writes): one
/// reboot per `powerCycleRequest`, then off (and it stays Deployed, saying so), then on;
/// each carried out by the agent through the real BMC, each reboot seen as the OS checking
/// in again.
fn power_as_a_person_asks(lab: &Lab, i: usize) {
    let vm = lab.machines[i].vm.clone();
    let checked_in = lab.os_booted_at(i).unwrap();
    let before = power_events(lab, &vm).len();
    let started = std::time::Instant::now();
    lab.patch_machine(
        i,
        &serde_json::json!({"spec": {"powerCycleRequest": "lab-cycle-1"}}),
    )
    .unwrap();
    lab.wait_for("the deployed OS rebooted once", 10 * MIN, |l| {
        let m = machine(l, i);
        Ok(m["status"]["powerCycleHandled"] == "lab-cycle-1"
            && l.os_booted_at(i)? != checked_in
            && ready(&m).0 == "Deployed")
    })
    .unwrap();
    eprintln!(
        "[lab] power cycle to the OS checking in again: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let events = power_events(lab, &vm);
    assert_eq!(
        events.len() - before,
        1,
        "one power action for the cycle: {:?}",
        &events[before..]
    );

    lab.patch_machine(i, &serde_json::json!({"spec": {"power": "Off"}}))
        .unwrap();
    lab.wait_for("the deployed machine is off as asked", 5 * MIN, |l| {
        let m = machine(l, i);
        Ok(m["status"]["power"]["state"] == "Off" && ready(&m).0 == "PoweredOff")
    })
    .unwrap();
    let held_by = machine(lab, i)["status"]["deploymentRef"]["name"].clone();
    let d = lab
        .get_json("deployment.metal.ironpool.dev", held_by.as_str().unwrap())
        .unwrap();
    assert_eq!(ready(&d).0, "PoweredOff", "{d}");
    assert_eq!(d["status"]["phase"], "Deployed", "{d}");

    let off_since = lab.os_booted_at(i).unwrap();
    lab.patch_machine(i, &serde_json::json!({"spec": {"power": "On"}}))
        .unwrap();
    lab.wait_for("the deployed OS is back on", 10 * MIN, |l| {
        let m = machine(l, i);
        Ok(l.os_booted_at(i)? != off_since
            && m["status"]["power"]["state"] == "On"
            && ready(&m).0 == "Deployed")
    })
    .unwrap();
    eprintln!(
        "[lab] cycle, off and on again: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// 3d. Rescue mode on a Deployed machine (what `kubectl ironpool rescue` writes): the
/// machine boots the rescue ramdisk through its real BMC, its Ready condition and its
/// Deployment say so with the address, root logs in over SSH from the provisioning network
/// with the key from spec.rescue and reads the disk as the OS left it; removing
/// spec.rescue boots the deployed OS again, which checks in, its disk unchanged.
fn rescue_and_back(lab: &Lab, i: usize) {
    let key = lab.dir.join("rescue-key");
    let public = ironpool_e2e::ssh::keygen(&key, "lab-rescue").unwrap();
    let hex = |b: &[u8]| -> String {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    let head = hex(&disk_head(lab, i, 1 << 20));
    let booted_before = lab.os_booted_at(i).unwrap();
    let started = std::time::Instant::now();
    lab.patch_machine(
        i,
        &serde_json::json!({"spec": {"rescue": {"sshAuthorizedKeys": [public]}}}),
    )
    .unwrap();
    lab.wait_for("the machine is in rescue mode", 10 * MIN, |l| {
        Ok(ready(&machine(l, i)).0 == "Rescue")
    })
    .unwrap();
    eprintln!(
        "[lab] rescue: spec.rescue to the SSH shell ready: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let m = machine(lab, i);
    let (_, message) = ready(&m);
    let ip = message
        .split("ssh root@")
        .nth(1)
        .and_then(|rest| rest.split([' ', ';', '(']).next())
        .unwrap_or_else(|| panic!("the Ready condition names the address: {m}"))
        .to_string();
    assert_eq!(m["status"]["phase"], "Deployed", "the phase stays: {m}");
    let d = lab
        .get_json(
            "deployment.metal.ironpool.dev",
            m["status"]["deploymentRef"]["name"].as_str().unwrap(),
        )
        .unwrap();
    assert_eq!(ready(&d).0, "Rescue", "the Deployment says so too: {d}");
    let out = lab
        .net
        .cmd("ssh")
        .args(ironpool_e2e::ssh::options(&key))
        .args([
            &format!("root@{ip}"),
            "cat /proc/cmdline; head -c 1048576 /dev/vda | sha256sum",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "ssh root@{ip}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.diagnostics()
    );
    assert!(text.contains("ironpool.purpose=Rescue"), "{text}");
    assert!(
        text.contains(&head),
        "root in rescue reads the disk as the OS left it (sha256 {head}): {text}"
    );

    let back = std::time::Instant::now();
    lab.patch_machine(i, &serde_json::json!({"spec": {"rescue": null}}))
        .unwrap();
    lab.wait_for("the deployed OS is back after rescue", 10 * MIN, |l| {
        Ok(l.os_booted_at(i)? != booted_before && ready(&machine(l, i)).0 == "Deployed")
    })
    .unwrap();
    eprintln!(
        "[lab] rescue: spec.rescue removed to the OS checking in again: {:.1}s",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(
        hex(&disk_head(lab, i, 1 << 20)),
        head,
        "rescue left the disk alone"
    );
}

/// 3c. The operator's fleet web view of the lab, in headless Chromium: signed in with the
/// `fleet-viewer` token, the table shows both QEMU machines, the machine page their flight
/// recorder; page load is measured. A `kubectl get -w` of the machine's power state runs
/// beside it, so that the real power changes that follow can be timed from the apiserver's
/// event to the page.
struct FleetView {
    browser: ironpool_e2e::webdriver::Browser,
    watch: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(f64, String)>>>,
}

impl FleetView {
    fn open(lab: &Lab, i: usize) -> FleetView {
        let url = lab
            .web_view_url()
            .unwrap()
            .expect("the lab's operator logs the fleet web view's address");
        let token = ironpool_e2e::cluster::kubectl_ok(lab.cp.kubectl().args([
            "create",
            "token",
            "fleet-viewer",
            "-n",
            ironpool_e2e::lab::NAMESPACE,
        ]))
        .unwrap();
        let browser = ironpool_e2e::webdriver::Browser::start(&lab.dir.join("chromedriver.log"));
        browser.sign_in(&url, token.trim(), MIN);
        let names: Vec<String> = lab.machines.iter().map(|m| m.machine_name()).collect();
        let rows = browser.wait_for(
            "both lab machines in the table",
            MIN,
            "const r = [...document.querySelectorAll('#machines tbody tr')].map(t => t.dataset.key); return r.length >= 2 ? r : null",
        );
        for n in &names {
            assert!(
                rows.as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k.as_str() == Some(&format!("lab/{n}"))),
                "{n} in the table: {rows}"
            );
        }
        let mut load = Vec::new();
        for _ in 0..5 {
            browser.goto(&format!("{url}?fresh"));
            let v = browser.wait_for(
                "the table after a reload",
                MIN,
                "return window.ironpool && window.ironpool.firstTable !== null ? window.ironpool.firstTable : null",
            );
            load.push(v.as_f64().unwrap());
        }
        let table = browser.eval(
            "return document.getElementById('machines').innerText",
            serde_json::json!([]),
        );
        let table = table.as_str().unwrap().to_string();
        for want in ["Deployed", "x86_64", "OSBooted"] {
            assert!(table.contains(want), "table lacks {want:?}:\n{table}");
        }
        eprintln!(
            "[lab] fleet web view: page load to table drawn median {:.0} ms (runs {load:.0?}), {} machines",
            median(load.clone()),
            names.len()
        );
        browser.save_screenshot("fleet-lab.png");
        // The machine page: the real flight recorder of a QEMU boot, and its disks.
        browser.open_route(&format!("#/m/lab/{}", names[i]));
        let steps = browser.wait_for(
            "the flight recorder timeline",
            MIN,
            "const l = [...document.querySelectorAll('#timeline li .step')].map(s => s.textContent); return l.includes('OSBooted') ? l : null",
        );
        eprintln!(
            "[lab] fleet web view: {}'s flight recorder {steps}",
            names[i]
        );
        let page = browser.eval(
            "return document.getElementById('view').innerText",
            serde_json::json!([]),
        );
        let disk = format!("{} MiB", lab.machines[i].disk_mib);
        assert!(
            page.as_str().unwrap().contains(&disk),
            "the machine page lists the {disk} disk from its MachineInventory: {page}"
        );
        browser.save_screenshot("fleet-lab-machine.png");
        browser.goto(&url);
        browser.wait_for(
            "the table",
            MIN,
            "return window.ironpool && window.ironpool.firstTable !== null",
        );
        // The apiserver's view of the power state, with the time each change arrived.
        let mut watch = lab
            .cp
            .kubectl()
            .args([
                "get",
                "machine.metal.ironpool.dev",
                &names[i],
                "-n",
                "lab",
                "-w",
            ])
            .args(["-o", "jsonpath={.status.power.state}{\"\\n\"}"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = watch.stdout.take().unwrap();
        let record = seen.clone();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                record
                    .lock()
                    .unwrap()
                    .push((epoch_ms(), line.trim().to_string()));
            }
        });
        FleetView {
            browser,
            watch,
            seen,
        }
    }

    /// The power changes of machine `i` (off, then on) in the open table: the time from
    /// `kubectl get -w` seeing each to the page's row showing it, without a reload.
    fn measure_power_updates(mut self, lab: &Lab, i: usize) {
        let key = format!("lab/{}", lab.machines[i].machine_name());
        let _ = self.watch.kill();
        let _ = self.watch.wait();
        let seen = self.seen.lock().unwrap().clone();
        let updates = self
            .browser
            .eval("return window.ironpool.updates", serde_json::json!([]));
        let mut latencies = Vec::new();
        for state in ["Off", "On"] {
            // The first time the apiserver's watch said `state` after saying something else.
            let Some(at) = seen
                .windows(2)
                .find(|w| w[0].1 != state && w[1].1 == state)
                .map(|w| w[1].0)
            else {
                panic!("kubectl's watch never saw the power go {state}: {seen:?}");
            };
            let page = updates
                .as_array()
                .unwrap()
                .iter()
                .filter(|u| u["key"] == key.as_str() && u["power"] == state)
                .filter_map(|u| u["at"].as_f64())
                .find(|t| *t > at - 1000.0)
                .unwrap_or_else(|| panic!("the page never showed {key} {state}: {updates}"));
            latencies.push(page - at);
        }
        let loads = self.browser.eval(
            "return performance.getEntriesByType('navigation').length",
            serde_json::json!([]),
        );
        assert_eq!(
            loads,
            serde_json::json!(1),
            "the page must not have reloaded"
        );
        eprintln!(
            "[lab] fleet web view: power Off / On in the open table {:.0} ms / {:.0} ms after kubectl's watch saw it",
            latencies[0], latencies[1]
        );
    }
}

/// The lab's Cluster API Machines: name -> (phase, creation time, nodeRef).
fn capi_machines(lab: &Lab) -> Vec<(String, String, Option<String>)> {
    let out = ironpool_e2e::cluster::kubectl_ok(lab.cp.kubectl().args([
        "get",
        "machines.cluster.x-k8s.io",
        "-n",
        "lab",
        "-o",
        "json",
    ]))
    .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.pointer("/metadata/deletionTimestamp").is_none())
        .map(|m| {
            (
                m["metadata"]["name"].as_str().unwrap().to_string(),
                m.pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                m.pointer("/status/nodeRef/name")
                    .and_then(Value::as_str)
                    .map(String::from),
            )
        })
        .collect()
}

/// Step 5, Cluster API on the lab: a MachineDeployment scaled 1 -> 2 -> 1 over the two
/// VMs, with the real core manager and CABPK; each guest prints the join configuration its
/// bootstrap data wrote and registers its Node (the test OS's kubeadm stand-in).
fn cluster_api(lab: &mut Lab) {
    lab.delete_deployment("bios-1").unwrap();
    let capi = lab.start_capi().unwrap();
    lab.wait_for("both machines Ready for Cluster API", 20 * MIN, |l| {
        Ok(
            (0..2).all(|i| l.phase(i).ok().flatten().as_deref() == Some("Ready"))
                && !l.exists("deployment.metal.ironpool.dev", "bios-1"),
        )
    })
    .unwrap();
    for m in &lab.machines {
        ironpool_e2e::cluster::kubectl_ok(lab.cp.kubectl().args([
            "label",
            "machine.metal.ironpool.dev",
            &m.machine_name(),
            "-n",
            "lab",
            "ironpool.dev/pool=worker",
        ]))
        .unwrap();
    }
    let running = |l: &Lab, n: usize| {
        let ms = capi_machines(l);
        ms.len() == n
            && ms
                .iter()
                .all(|(_, p, node)| p == "Running" && node.is_some())
    };
    let started = std::time::Instant::now();
    lab.apply_workers(1, "os.qcow2").unwrap();
    lab.wait_for("one worker Running", 25 * MIN, |l| Ok(running(l, 1)))
        .unwrap();
    let first = started.elapsed();

    // Scale 1 -> 2, timed from the new CAPI Machine's creation to Running.
    lab.apply_workers(2, "os.qcow2").unwrap();
    let old: Vec<String> = capi_machines(lab).into_iter().map(|m| m.0).collect();
    let scale = std::time::Instant::now();
    lab.wait_for("a second CAPI Machine", 5 * MIN, |l| {
        Ok(capi_machines(l).len() == 2)
    })
    .unwrap();
    let created = scale.elapsed();
    lab.wait_for("two workers Running", 25 * MIN, |l| Ok(running(l, 2)))
        .unwrap();
    let to_running = scale.elapsed() - created;
    let new = capi_machines(lab)
        .into_iter()
        .find(|m| !old.contains(&m.0))
        .unwrap();
    let capi_machine = lab.get_json("machine.cluster.x-k8s.io", &new.0).unwrap();
    let im_name = capi_machine
        .pointer("/spec/infrastructureRef/name")
        .and_then(Value::as_str)
        .unwrap();
    let im = lab.get_json("ironpoolmachine", im_name).unwrap();
    let d = lab
        .get_json(
            "deployment.metal.ironpool.dev",
            im["metadata"]["name"].as_str().unwrap(),
        )
        .unwrap();
    eprintln!(
        "[lab] Cluster API scale 1 -> 2: Machine {} created {:.1}s after the scale, Running {:.1}s after its creation; its Deployment's timings {}; first worker Running {:.1}s after apply",
        new.0,
        created.as_secs_f64(),
        to_running.as_secs_f64(),
        d["status"]["timings"],
        first.as_secs_f64()
    );

    // Every guest got its bootstrap data: the stand-in printed the join configuration.
    for (i, vm) in lab.vms.iter().enumerate() {
        let serial = vm.serial();
        assert!(
            serial.contains(
                "kubeadm (test OS stand-in): bootstrap data: /run/kubeadm/kubeadm-join-config.yaml"
            ) && serial.contains(&format!("apiServerEndpoint: 10.77.0.1:{}", capi.port))
                && serial.contains("kubeadm (test OS stand-in): registered Node"),
            "VM {i} printed its join configuration and registered its Node:\n{}",
            serial.lines().rev().take(60).collect::<Vec<_>>().join("\n")
        );
    }

    // Scale 2 -> 1: one server is released, erased and Ready again.
    lab.apply_workers(1, "os.qcow2").unwrap();
    lab.wait_for("one worker left and one server Ready", 25 * MIN, |l| {
        let ready = (0..2)
            .filter(|i| l.phase(*i).ok().flatten().as_deref() == Some("Ready"))
            .count();
        Ok(running(l, 1) && ready == 1)
    })
    .unwrap();
    eprintln!("{}", lab.table().unwrap());
}
