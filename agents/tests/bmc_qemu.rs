//! The agent's own BMC drivers (`ironpool_agents::bmc`: Redfish and IPMI) against the lab's
//! BMC emulators in front of a real QEMU VM (`ironpool_e2e::bmc`: sushy-tools and pyghmi
//! driving QEMU over QMP), so the power controller is known to work in the lab: every
//! action is checked against QEMU's own QMP status, and cold boots are counted by the
//! firmware banner on the serial console.
//!
//! Fails (never skips) when QEMU, ipmitool or the venv are missing: `e2e/run test`
//! installs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ironpool_agents::bmc::{
    self, BmcAddress, BmcError, BootDevice, BootMode, BootOverride, Credentials, DriverConfig,
    Persistence, PowerAction, PowerDriver, PowerState,
};
use ironpool_e2e::bmc::{BmcEmulator, BmcPair, EmulatedSystem, qmp_status};
use ironpool_e2e::netlab::{Netns, require_tools};
use ironpool_e2e::qemu::{Firmware, QEMU, Vm, VmConfig};

const USER: &str = "admin";
const BANNER: &str = "SeaBIOS (version";

fn is_off(s: &str) -> bool {
    matches!(s, "prelaunch" | "paused" | "shutdown")
}

fn driver(address: &str, password: &str) -> Box<dyn PowerDriver> {
    let mut cfg = DriverConfig::new(
        BmcAddress::parse(address).unwrap(),
        Credentials {
            username: USER.into(),
            password: password.into(),
        },
    );
    cfg.timeout = Duration::from_secs(20);
    bmc::connect(cfg).unwrap()
}

struct Rig {
    redfish: BmcEmulator,
    ipmi: BmcEmulator,
    vm: Vm,
    system: EmulatedSystem,
    password: String,
    _ns: Netns,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start(tag: &str, mac: &str) -> Rig {
        require_tools(&["ip", "ipmitool", QEMU]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ns = Netns::new(tag).unwrap();
        ns.bridge("br0", None).unwrap();
        ns.tap("tap0", "br0").unwrap();
        let mut config = VmConfig::new(tag, mac, "tap0", Firmware::Bios).bmc_managed();
        config.ipxe_rom = false;
        config.memory_mib = 64;
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
            _dir: dir,
        }
    }

    fn status(&self) -> String {
        qmp_status(&self.system.qmp).unwrap()
    }

    fn banners(&self) -> usize {
        self.vm.serial().matches(BANNER).count()
    }

    async fn wait(&self, what: &str, done: impl Fn(&Rig) -> bool) -> Duration {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what}: QMP status {}\n{}\n{}\n{}",
                self.status(),
                self.vm.report(),
                self.redfish.tail(20),
                self.ipmi.tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        start.elapsed()
    }
}

/// The whole power life of a machine through one driver, as the power controller uses it.
async fn exercise(rig: &Rig, d: &dyn PowerDriver, label: &str) {
    // Off -> On: a cold boot.
    assert!(is_off(&rig.status()));
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    d.set_boot_device(BootOverride {
        device: BootDevice::Pxe,
        persistence: Persistence::Once,
        mode: BootMode::Legacy,
    })
    .await
    .unwrap();
    let banners = rig.banners();
    let t = Instant::now();
    d.set_power(PowerAction::On).await.unwrap();
    let accepted = t.elapsed();
    rig.wait("power on", |r| r.status() == "running").await;
    rig.wait("firmware after power on", |r| r.banners() > banners)
        .await;
    assert_eq!(d.power_state().await.unwrap(), PowerState::On);
    println!(
        "{label}: On accepted after {:.0} ms, firmware running after {:.0} ms",
        accepted.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );

    // Cycle (what the controller sends to reboot a running machine into PXE or disk).
    let banners = rig.banners();
    let t = Instant::now();
    d.set_power(PowerAction::Cycle).await.unwrap();
    rig.wait("firmware after cycle", |r| r.banners() > banners)
        .await;
    assert_eq!(rig.status(), "running");
    assert_eq!(d.power_state().await.unwrap(), PowerState::On);
    println!(
        "{label}: Cycle to firmware banner {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // GracefulOff is the ACPI button: firmware without an OS ignores it and stays on.
    d.set_power(PowerAction::GracefulOff).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.status(), "running");
    assert_eq!(d.power_state().await.unwrap(), PowerState::On);

    // Off: at once.
    d.set_power(PowerAction::Off).await.unwrap();
    assert!(is_off(&rig.status()), "{}", rig.status());
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    d.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_redfish_and_ipmi_drivers_power_a_qemu_vm_through_the_lab_bmcs() {
    let rig = Rig::start("drv", "52:54:00:b1:00:01");

    let redfish = driver(&rig.redfish.address(), &rig.password);
    exercise(&rig, redfish.as_ref(), "redfish").await;
    let info = redfish.system_info().await.unwrap();
    assert_eq!(info.uuid.as_deref(), Some(rig.system.uuid.as_str()));

    let ipmi = driver(&rig.ipmi.address(), &rig.password);
    exercise(&rig, ipmi.as_ref(), "ipmi").await;

    // The events show what each BMC was asked, with the QMP state it found.
    let events = rig.redfish.events();
    for e in [
        "drv boot_device=Pxe Once -",
        "drv On prelaunch",
        "drv ForceRestart running",
        "drv GracefulShutdown running",
        "drv ForceOff running",
    ] {
        assert!(events.iter().any(|x| x == e), "{e} not in {events:?}");
    }
    let events = rig.ipmi.events();
    for e in [
        "drv power_on prelaunch",
        "drv power_cycle running",
        "drv power_soft running",
        "drv power_off running",
    ] {
        assert!(events.iter().any(|x| x == e), "{e} not in {events:?}");
    }

    // Wrong credentials: an authentication error from both, and the VM untouched.
    for address in [rig.redfish.address(), rig.ipmi.address()] {
        let d = driver(&address, "not-the-password");
        match d.set_power(PowerAction::On).await {
            Err(BmcError::Authentication { .. }) => {}
            other => panic!("{address}: {other:?}"),
        }
        assert!(is_off(&rig.status()));
    }
}
