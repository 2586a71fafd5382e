//! The IPMI driver against a pyghmi BMC on a loopback port, cross-checked with ipmitool.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ironpool_agents::bmc::{
    self, BmcAddress, BmcError, BootDevice, BootMode, BootOverride, Credentials, DriverConfig,
    Persistence, PowerAction, PowerDriver, PowerState,
};

/// This run's BMC password: random (ironpool_e2e::secret), never a constant in the code.
fn password() -> &'static str {
    static PASSWORD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PASSWORD.get_or_init(|| ironpool_e2e::secret::random_secret(16).unwrap())
}

fn driver(port: u16, password: &str) -> Box<dyn PowerDriver> {
    let mut cfg = DriverConfig::new(
        BmcAddress::parse(&format!("ipmi://127.0.0.1:{port}")).unwrap(),
        Credentials {
            username: "admin".into(),
            password: password.into(),
        },
    );
    cfg.timeout = Duration::from_secs(15);
    bmc::connect(cfg).unwrap()
}

/// ipmitool run directly, as a person would, to see what the BMC reports.
fn ipmitool(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("ipmitool")
        .args([
            "-I",
            "lanplus",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "admin",
            "-P",
            password(),
        ])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn power_and_boot_device_match_what_ipmitool_reads() {
    let emu = support::start_ipmi("admin", password()).unwrap();
    let d = driver(emu.port, password());
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);

    d.set_power(PowerAction::On).await.unwrap();
    assert!(ipmitool(emu.port, &["chassis", "power", "status"]).contains("Chassis Power is on"));
    assert_eq!(d.power_state().await.unwrap(), PowerState::On);

    let pxe = BootOverride {
        device: BootDevice::Pxe,
        persistence: Persistence::Once,
        mode: BootMode::Uefi,
    };
    d.set_boot_device(pxe).await.unwrap();
    let flags = ipmitool(emu.port, &["chassis", "bootparam", "get", "5"]);
    assert!(flags.contains("Force PXE"), "{flags}");
    assert!(flags.contains("Options apply to only next boot"), "{flags}");
    assert!(flags.contains("BIOS EFI boot"), "{flags}");

    let disk = BootOverride {
        device: BootDevice::Disk,
        persistence: Persistence::Continuous,
        mode: BootMode::Legacy,
    };
    d.set_boot_device(disk).await.unwrap();
    let flags = ipmitool(emu.port, &["chassis", "bootparam", "get", "5"]);
    assert!(
        flags.contains("Force Boot from default Hard-Drive"),
        "{flags}"
    );
    assert!(
        flags.contains("Options apply to all future boots"),
        "{flags}"
    );
    assert!(
        flags.contains("BIOS PC Compatible (legacy) boot"),
        "{flags}"
    );

    d.set_power(PowerAction::Cycle).await.unwrap();
    assert_eq!(emu.count("EVENT vm power_cycle on"), 1);
    d.set_power(PowerAction::GracefulOff).await.unwrap();
    assert!(ipmitool(emu.port, &["chassis", "power", "status"]).contains("Chassis Power is off"));
    // Like many real BMCs, this one refuses to cycle a machine that is off.
    let e = d.set_power(PowerAction::Cycle).await.unwrap_err();
    assert!(
        matches!(e, BmcError::Unsupported { .. } | BmcError::Protocol { .. }),
        "{e}"
    );
    d.set_power(PowerAction::On).await.unwrap();
    d.set_power(PowerAction::Off).await.unwrap();
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    let _ = d.system_info().await.unwrap();
}

#[tokio::test]
async fn wrong_password_and_outage_are_classified() {
    let mut emu = support::start_ipmi("admin", password()).unwrap();
    let e = driver(emu.port, "wrong").power_state().await.unwrap_err();
    assert!(matches!(e, BmcError::Authentication { .. }), "{e}");
    let port = emu.port;
    emu.stop();
    let e = driver(port, password()).power_state().await.unwrap_err();
    assert!(matches!(e, BmcError::Unreachable { .. }), "{e}");
}

#[tokio::test]
async fn the_password_never_shows_in_a_process_listing() {
    // An unreachable BMC keeps ipmitool running (retries) while we read every cmdline.
    let port = support::free_udp_port().unwrap();
    let d = driver(port, password());
    let call = tokio::spawn(async move { d.power_state().await });
    let mut seen_ipmitool = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("ipmitool") && cmdline.contains(&format!("-p {port}")) {
                seen_ipmitool = true;
                assert!(
                    !cmdline.contains(password()),
                    "password in process listing: {cmdline}"
                );
                assert!(cmdline.contains(" -f "), "{cmdline}");
            }
        }
    }
    assert!(seen_ipmitool, "never saw the ipmitool process");
    assert!(call.await.unwrap().is_err());
}
