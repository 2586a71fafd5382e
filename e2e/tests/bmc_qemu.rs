//! The lab's BMCs against real QEMU VMs (TCG, SeaBIOS, no OS needed): the Redfish
//! emulator (sushy-tools app, QMP-backed systems driver) and the IPMI emulator (pyghmi)
//! from `e2e/support/qemu_bmc.py`, driven by real clients (curl, Debian `ipmitool -I
//! lanplus`), with every power change checked against QEMU's own QMP `query-status` and
//! cold boots counted by the firmware banner on the serial console.
//!
//! Fails (never skips) when QEMU, ipmitool, curl or the venv are missing: `e2e/run test`
//! installs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ironpool_e2e::bmc::{
    BmcEmulator, BmcOptions, BmcPair, EmulatedSystem, qmp_status, venv_bin, wait_qmp_status,
};
use ironpool_e2e::netlab::{Netns, require_tools};
use ironpool_e2e::qemu::{Disk, DiskFormat, Firmware, QEMU, Vm, VmConfig};
use serde_json::Value;

const USER: &str = "admin";
const BANNER: &str = "SeaBIOS (version";

fn is_off(s: &str) -> bool {
    matches!(s, "prelaunch" | "paused" | "shutdown")
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A random password for this run (never a constant in the code).
fn password() -> String {
    ironpool_e2e::secret::random_secret(16).unwrap()
}

/// curl with the credentials in a config on stdin (not on the command line); returns
/// (HTTP status, body).
fn curl(port: u16, method: &str, path: &str, body: Option<&str>, password: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-K", "-", "-X", method])
        .args(["-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(&url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "user = \"{USER}:{password}\"").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "curl {method} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// A VM behind both emulators, everything removed on drop (fields drop in order).
struct Rig {
    redfish: BmcEmulator,
    ipmi: BmcEmulator,
    vm: Vm,
    system: EmulatedSystem,
    password: String,
    _ns: Netns,
    dir: tempfile::TempDir,
}

impl Rig {
    /// `disk`: the boot sector image to attach, if any.
    fn start(tag: &str, mac: &str, disk: Option<&[u8]>, ipxe_rom: bool) -> Rig {
        require_tools(&["ip", "curl", "ipmitool", QEMU]).unwrap();
        venv_bin().expect("the BMC venv (e2e/scripts/install-bmc-emulators.sh)");
        let dir = tempfile::tempdir().unwrap();
        let ns = Netns::new(tag).unwrap();
        ns.bridge("br0", None).unwrap();
        ns.tap("tap0", "br0").unwrap();
        let mut config = VmConfig::new(tag, mac, "tap0", Firmware::Bios).bmc_managed();
        // Without the network boot ROM SeaBIOS goes straight to the disk (or to "No
        // bootable device" and its retry), which is all a power test needs.
        config.ipxe_rom = ipxe_rom;
        config.memory_mib = 64;
        if let Some(image) = disk {
            let path = dir.path().join("disk.raw");
            std::fs::write(&path, image).unwrap();
            config.disk = Some(Disk {
                path,
                format: DiskFormat::Raw,
            });
        }
        let mut vm = Vm::start(&ns, &config, dir.path()).unwrap();
        vm.wait_qmp(Duration::from_secs(20)).unwrap();
        let BmcPair {
            system,
            redfish,
            ipmi,
            password,
        } = BmcPair::start(tag, mac, vm.qmp_path(), USER, dir.path()).unwrap();
        Rig {
            redfish,
            ipmi,
            vm,
            system,
            password,
            _ns: ns,
            dir,
        }
    }

    fn qmp(&self) -> PathBuf {
        self.system.qmp.clone()
    }

    fn status(&self) -> String {
        qmp_status(&self.qmp()).unwrap()
    }

    fn wait_status(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        wait_qmp_status(&self.qmp(), Duration::from_secs(20), what, want)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.report()))
    }

    fn system_path(&self) -> String {
        format!("/redfish/v1/Systems/{}", self.system.uuid)
    }

    /// curl with the credentials in a config on stdin (not on the command line); returns
    /// (HTTP status, body).
    fn curl(&self, method: &str, path: &str, body: Option<&str>, password: &str) -> (u16, String) {
        curl(self.redfish.port(), method, path, body, password)
    }

    fn get_system(&self) -> Value {
        let (code, body) = self.curl("GET", &self.system_path(), None, &self.password);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn power_state(&self) -> String {
        self.get_system()["PowerState"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn reset(&self, reset_type: &str) -> (u16, String) {
        self.curl(
            "POST",
            &format!("{}/Actions/ComputerSystem.Reset", self.system_path()),
            Some(&format!(r#"{{"ResetType": "{reset_type}"}}"#)),
            &self.password,
        )
    }

    /// `ipmitool -I lanplus ... <args>` with the password in the environment (`-E`).
    fn ipmitool(&self, password: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new("ipmitool")
            .args(["-I", "lanplus", "-H", "127.0.0.1", "-p"])
            .arg(self.ipmi.port().to_string())
            .args(["-U", USER, "-E", "-N", "2", "-R", "2"])
            .args(args)
            .env("IPMI_PASSWORD", password)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ipmi_ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.ipmitool(&self.password, args);
        assert!(ok, "ipmitool {args:?}: {out}\n{}", self.report());
        out
    }

    fn banners(&self) -> usize {
        self.vm.serial().matches(BANNER).count()
    }

    /// Waits until the firmware banner has been printed `n` times (n cold boots).
    fn wait_banners(&self, n: usize) -> Duration {
        let start = Instant::now();
        while self.banners() < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{n} firmware banners expected, saw {}\n{}",
                self.banners(),
                self.report()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    fn report(&self) -> String {
        format!(
            "{}\n{}\n{}\nfiles in {}",
            self.vm.report(),
            self.redfish.tail(30),
            self.ipmi.tail(30),
            self.dir.path().display()
        )
    }
}

#[test]
fn redfish_and_ipmi_drive_a_qemu_vm_like_a_server() {
    let rig = Rig::start("bmc", "52:54:00:b0:00:01", None, false);

    // Started with -S: powered off, and both BMCs say so.
    assert_eq!(rig.status(), "prelaunch");
    let sys = rig.get_system();
    assert_eq!(sys["PowerState"], "Off", "{sys:#}");
    assert_eq!(sys["UUID"], rig.system.uuid.as_str());
    assert_eq!(sys["Name"], "bmc");
    assert_eq!(sys["Boot"]["BootSourceOverrideMode"], "Legacy");
    let (code, nics) = rig.curl(
        "GET",
        &format!("{}/EthernetInterfaces/52:54:00:b0:00:01", rig.system_path()),
        None,
        &rig.password,
    );
    assert_eq!(code, 200, "{nics}");
    assert!(nics.contains("52:54:00:b0:00:01"), "{nics}");
    assert!(
        rig.ipmi_ok(&["chassis", "power", "status"])
            .contains("Chassis Power is off")
    );

    // Wrong passwords are refused by both; the service root stays open (as sushy serves it).
    let (code, _) = rig.curl("GET", &rig.system_path(), None, "wrong-password");
    assert_eq!(code, 401);
    let (code, _) = rig.curl("GET", "/redfish/v1/", None, "wrong-password");
    assert_eq!(code, 200);
    let (ok, out) = rig.ipmitool("wrong-password", &["chassis", "power", "status"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("RAKP 2 HMAC is invalid") || out.contains("Unable to establish"),
        "{out}"
    );
    assert_eq!(
        rig.status(),
        "prelaunch",
        "a refused request changed nothing"
    );

    // Redfish On: QEMU runs and the firmware really boots.
    let t = Instant::now();
    let (code, body) = rig.reset("On");
    assert_eq!(code, 204, "{body}");
    let accepted = t.elapsed();
    assert_eq!(rig.status(), "running");
    let to_banner = rig.wait_banners(1) + accepted;
    assert_eq!(rig.power_state(), "On");
    assert!(
        rig.ipmi_ok(&["chassis", "power", "status"])
            .contains("Chassis Power is on")
    );
    println!(
        "Redfish On: accepted (QMP running) after {:.0} ms, firmware banner after {:.0} ms",
        accepted.as_secs_f64() * 1e3,
        to_banner.as_secs_f64() * 1e3
    );

    // GracefulShutdown is the ACPI power button: firmware without an OS ignores it, so the
    // machine stays on, as a real one would.
    let (code, body) = rig.reset("GracefulShutdown");
    assert_eq!(code, 204, "{body}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rig.status(), "running");
    assert_eq!(rig.power_state(), "On");

    // ForceRestart: a reset, so the firmware starts again.
    let (code, body) = rig.reset("ForceRestart");
    assert_eq!(code, 204, "{body}");
    rig.wait_banners(2);
    assert_eq!(rig.status(), "running");

    // Boot override PATCH is accepted and read back.
    let (code, body) = rig.curl(
        "PATCH",
        &rig.system_path(),
        Some(r#"{"Boot": {"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "Legacy"}}"#),
        &rig.password,
    );
    assert_eq!(code, 204, "{body}");
    assert_eq!(rig.get_system()["Boot"]["BootSourceOverrideTarget"], "Hdd");

    // ForceOff: the CPUs stop at once.
    let t = Instant::now();
    let (code, body) = rig.reset("ForceOff");
    assert_eq!(code, 204, "{body}");
    println!(
        "Redfish ForceOff accepted after {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(is_off(&rig.status()), "{}", rig.status());
    assert_eq!(rig.power_state(), "Off");
    // A restart of a machine that is off is refused, not silently ignored.
    let (code, body) = rig.reset("ForceRestart");
    assert_eq!(code, 409, "{body}");
    assert!(is_off(&rig.status()));

    // IPMI: on, cycle (a cold boot: the banner again), off, and cycle refused when off.
    let banners = rig.banners();
    let t = Instant::now();
    rig.ipmi_ok(&["chassis", "power", "on"]);
    let on = t.elapsed();
    assert_eq!(rig.status(), "running");
    rig.wait_banners(banners + 1);
    assert!(
        rig.ipmi_ok(&["chassis", "power", "status"])
            .contains("is on")
    );
    assert_eq!(rig.power_state(), "On");
    rig.ipmi_ok(&["chassis", "power", "cycle"]);
    rig.wait_banners(banners + 2);
    assert_eq!(rig.status(), "running");
    rig.ipmi_ok(&["chassis", "power", "reset"]);
    rig.wait_banners(banners + 3);
    rig.ipmi_ok(&["chassis", "power", "off"]);
    assert!(is_off(&rig.status()));
    assert!(
        rig.ipmi_ok(&["chassis", "power", "status"])
            .contains("is off")
    );
    assert_eq!(rig.power_state(), "Off");
    let (ok, out) = rig.ipmitool(&rig.password, &["chassis", "power", "cycle"]);
    assert!(
        !ok && out.contains("not supported in present state"),
        "{out}"
    );
    assert!(is_off(&rig.status()));
    println!(
        "ipmitool chassis power on: {:.0} ms (one lanplus session + QMP)",
        on.as_secs_f64() * 1e3
    );

    // IPMI boot device: set and read back with its EFI and persistent bits.
    rig.ipmi_ok(&["chassis", "bootdev", "pxe", "options=efiboot,persistent"]);
    let flags = rig.ipmi_ok(&["chassis", "bootparam", "get", "5"]);
    assert!(flags.contains("Force PXE"), "{flags}");
    assert!(flags.contains("BIOS EFI boot"), "{flags}");
    assert!(
        flags.contains("Options apply to all future boots"),
        "{flags}"
    );

    // Every command is in the emulators' event logs with the QMP state it found.
    let events = rig.redfish.events();
    for e in [
        "bmc On prelaunch",
        "bmc ForceOff running",
        "bmc boot_device=Hdd Once -",
    ] {
        assert!(events.iter().any(|x| x == e), "{e} not in {events:?}");
    }
    let events = rig.ipmi.events();
    assert!(
        events.iter().any(|x| x == "bmc power_cycle running"),
        "{events:?}"
    );
}

/// A boot sector that prints `X` on COM1 and then powers the machine off through the ACPI
/// PM1a control register (SLP_EN with the S5 sleep type QEMU's DSDT gives), at the i440FX
/// PM base SeaBIOS programs (0xb000) and at 0x604 (the Q35 base): what an OS does at
/// `poweroff`.
fn poweroff_boot_sector() -> Vec<u8> {
    let code = [
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xB0, b'X', // mov al, 'X'
        0xEE, // out dx, al
        0xB8, 0x00, 0x20, // mov ax, 0x2000 (SLP_EN, SLP_TYP 0)
        0xBA, 0x04, 0x06, // mov dx, 0x604
        0xEF, // out dx, ax
        0xBA, 0x04, 0xB0, // mov dx, 0xb004
        0xEF, // out dx, ax
        0xFA, 0xF4, // cli; hlt
        0xEB, 0xFE, // jmp $
    ];
    let mut img = vec![0u8; 1 << 20];
    img[..code.len()].copy_from_slice(&code);
    img[510] = 0x55;
    img[511] = 0xAA;
    img
}

#[test]
fn a_guest_that_powers_itself_off_reads_off_and_powers_on_again() {
    let rig = Rig::start(
        "halt",
        "52:54:00:b0:00:02",
        Some(&poweroff_boot_sector()),
        false,
    );
    let serial_x = |rig: &Rig| {
        rig.vm
            .serial()
            .split("Booting from Hard Disk")
            .skip(1)
            // SeaBIOS's screen mirror writes the dots and line breaks in varying ways;
            // the guest's own `X` follows them.
            .filter(|after| after.trim_start_matches(['.', '\n']).starts_with('X'))
            .count()
    };

    let (code, body) = rig.reset("On");
    assert_eq!(code, 204, "{body}");
    let t = Instant::now();
    // The guest runs its boot sector and powers off: QEMU stays (-no-shutdown), paused.
    let s = rig.wait_status("shutdown (guest power-off)", |s| s == "shutdown");
    println!(
        "guest booted and powered itself off {:.0} ms after Redfish On",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(s, "shutdown");
    assert_eq!(serial_x(&rig), 1, "{}", rig.report());
    assert_eq!(rig.power_state(), "Off");
    assert!(
        rig.ipmi_ok(&["chassis", "power", "status"])
            .contains("is off")
    );
    assert!(rig.vm_running(), "QEMU must outlive the guest's power-off");

    // Power on again from the guest's own power-off: a cold boot, and it halts again.
    rig.ipmi_ok(&["chassis", "power", "on"]);
    rig.wait_status("shutdown again", |s| s == "shutdown");
    assert_eq!(serial_x(&rig), 2, "{}", rig.report());
    assert_eq!(rig.power_state(), "Off");
}

impl Rig {
    fn vm_running(&self) -> bool {
        // QMP answering is QEMU running.
        qmp_status(&self.qmp()).is_ok()
    }
}

#[test]
fn an_unreachable_vm_is_an_error_not_a_power_state() {
    // A BMC whose VM is gone answers with an error (500 / IPMI failure), never "Off".
    let dir = tempfile::tempdir().unwrap();
    venv_bin().expect("the BMC venv");
    let system = EmulatedSystem::new("gone", "52:54:00:b0:00:03", &dir.path().join("gone.qmp"));
    let opts = BmcOptions::new("127.0.0.1", free_tcp_port()).with_credentials(USER, &password());
    let redfish =
        BmcEmulator::redfish(std::slice::from_ref(&system), &opts, None, dir.path()).unwrap();
    let password = opts.credentials.clone().unwrap().1;
    let path = format!("/redfish/v1/Systems/{}", system.uuid);
    let (code, body) = curl(redfish.port(), "GET", &path, None, &password);
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("gone.qmp"), "{body}");
    let (code, body) = curl(
        redfish.port(),
        "POST",
        &format!("{path}/Actions/ComputerSystem.Reset"),
        Some(r#"{"ResetType": "On"}"#),
        &password,
    );
    assert_eq!(code, 500, "{body}");
}

#[test]
fn one_redfish_bmc_in_a_namespace_serves_several_vms() {
    require_tools(&["ip", "curl", "ipmitool", QEMU]).unwrap();
    venv_bin().expect("the BMC venv (e2e/scripts/install-bmc-emulators.sh)");
    let dir = tempfile::tempdir().unwrap();
    // The lab's shape: VMs on taps of a bridge, the BMC listening on the bridge's address
    // inside the same namespace (a management network of its own).
    let ns = Netns::new("bmcns").unwrap();
    ns.bridge("br0", Some("10.97.0.1/24")).unwrap();
    let mut vms = Vec::new();
    let mut systems = Vec::new();
    for i in 1..=2u8 {
        let tap = format!("tap{i}");
        ns.tap(&tap, "br0").unwrap();
        let name = format!("multi-{i}");
        let mac = format!("52:54:00:b0:01:{i:02x}");
        let mut config = VmConfig::new(&name, &mac, &tap, Firmware::Bios).bmc_managed();
        config.ipxe_rom = false;
        config.memory_mib = 64;
        let mut vm = Vm::start(&ns, &config, dir.path()).unwrap();
        vm.wait_qmp(Duration::from_secs(20)).unwrap();
        systems.push(EmulatedSystem::new(&name, &mac, vm.qmp_path()));
        vms.push(vm);
    }
    let password = password();
    let opts = BmcOptions::new("10.97.0.1", 8000).with_credentials(USER, &password);
    let redfish = BmcEmulator::redfish(&systems, &opts, Some(&ns), dir.path()).unwrap();
    assert_eq!(redfish.address(), "redfish+http://10.97.0.1:8000");
    // curl from inside the namespace (the BMC is not reachable from the host).
    let curl_ns = |method: &str, path: &str, body: Option<&str>| -> (u16, String) {
        let mut cmd = ns.cmd("curl");
        cmd.args(["-sS", "--max-time", "30", "-K", "-", "-X", method])
            .args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        cmd.arg(format!("http://10.97.0.1:8000{path}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "user = \"{USER}:{password}\"").unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_string())
    };
    let (code, body) = curl_ns("GET", "/redfish/v1/Systems", None);
    assert_eq!(code, 200, "{body}");
    let members: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(members["Members@odata.count"], 2, "{members:#}");
    for s in &systems {
        assert!(body.contains(&s.uuid), "{body}");
    }
    // Power on the second VM only: the first stays off.
    let (code, body) = curl_ns(
        "POST",
        &format!(
            "/redfish/v1/Systems/{}/Actions/ComputerSystem.Reset",
            systems[1].uuid
        ),
        Some(r#"{"ResetType": "On"}"#),
    );
    assert_eq!(code, 204, "{body}");
    assert_eq!(qmp_status(&systems[1].qmp).unwrap(), "running");
    assert_eq!(qmp_status(&systems[0].qmp).unwrap(), "prelaunch");
    for (s, want) in systems.iter().zip(["Off", "On"]) {
        let (code, body) = curl_ns("GET", &format!("/redfish/v1/Systems/{}", s.uuid), None);
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["PowerState"], want, "{}", s.name);
        assert_eq!(v["Name"], s.name.as_str());
    }
    // A system asked for by name is redirected to its UUID (sushy's alias handling).
    let (code, _) = curl_ns("GET", "/redfish/v1/Systems/multi-1", None);
    assert_eq!(code, 307);

    // An IPMI BMC for the first VM on the standard port of the same address.
    let opts = BmcOptions { port: 623, ..opts };
    let ipmi = BmcEmulator::ipmi(&systems[0], &opts, Some(&ns), dir.path()).unwrap();
    assert_eq!(ipmi.address(), "ipmi://10.97.0.1:623");
    let ipmitool = |args: &[&str]| {
        let out = ns
            .cmd("ipmitool")
            .args(["-I", "lanplus", "-H", "10.97.0.1", "-U", USER, "-E"])
            .args(args)
            .env("IPMI_PASSWORD", &password)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(ipmitool(&["chassis", "power", "status"]).contains("is off"));
    ipmitool(&["chassis", "power", "on"]);
    assert_eq!(qmp_status(&systems[0].qmp).unwrap(), "running");
    drop(ipmi);
    drop(redfish);
    drop(vms);
}

#[test]
fn boot_overrides_change_the_vms_boot_order_once_or_for_good() {
    // NIC (with the iPXE ROM, no DHCP server on the bridge) first by default, then the disk
    // whose boot sector powers the machine off.
    let rig = Rig::start(
        "order",
        "52:54:00:b0:00:04",
        Some(&poweroff_boot_sector()),
        true,
    );
    let count = |needle: &str| rig.vm.serial().matches(needle).count();
    const DISK: &str = "Booting from Hard Disk";
    const NET: &str = "Booting from ROM";
    let patch = |target: &str, enabled: &str| {
        let (code, body) = rig.curl(
            "PATCH",
            &rig.system_path(),
            Some(&format!(
                r#"{{"Boot": {{"BootSourceOverrideTarget": "{target}", "BootSourceOverrideEnabled": "{enabled}"}}}}"#
            )),
            &rig.password,
        );
        assert_eq!(code, 204, "{body}");
    };
    let wait_count = |needle: &str, n: usize| {
        let start = Instant::now();
        while count(needle) < n {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "{n} x {needle:?} expected\n{}",
                rig.report()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // Hdd once: this boot comes from the disk (which powers off)...
    patch("Hdd", "Once");
    assert_eq!(rig.reset("On").0, 204);
    rig.wait_status("guest power-off from the disk", |s| s == "shutdown");
    assert_eq!((count(DISK), count(NET)), (1, 0), "{}", rig.report());
    // ...and the next one from the NIC again.
    assert_eq!(rig.reset("On").0, 204);
    wait_count(NET, 1);
    assert_eq!(count(DISK), 1, "{}", rig.report());
    assert_eq!(rig.reset("ForceOff").0, 204);

    // Hdd continuous: every boot from the disk.
    patch("Hdd", "Continuous");
    for n in 2..=3 {
        assert_eq!(rig.reset("On").0, 204);
        rig.wait_status("guest power-off from the disk", |s| s == "shutdown");
        assert_eq!(count(DISK), n, "{}", rig.report());
    }
    assert_eq!(count(NET), 1, "{}", rig.report());

    // IPMI pxe (next boot only) over the standing disk order.
    rig.ipmi_ok(&["chassis", "bootdev", "pxe"]);
    rig.ipmi_ok(&["chassis", "power", "on"]);
    wait_count(NET, 2);
    assert_eq!(count(DISK), 3, "{}", rig.report());
    rig.ipmi_ok(&["chassis", "power", "off"]);
    rig.ipmi_ok(&["chassis", "power", "on"]);
    rig.wait_status("guest power-off from the disk", |s| s == "shutdown");
    assert_eq!((count(DISK), count(NET)), (4, 2), "{}", rig.report());
}
