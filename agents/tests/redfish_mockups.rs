//! The Redfish driver against DMTF-style mockups served by sushy-tools' `sushy-static`:
//! the DMTF "public-rackmount1" system (from the JSON samples the python `sushy` package
//! ships) and committed vendor-quirk trees (agents/tests/mockups: required fields
//! omitted, AllowableValues missing or restricted, Oem blobs, odd ids). Sessions are
//! tested against sushy-static with a real SessionService (support/redfish_static.py),
//! because sushy-tools 2.2.0 implements none: sushy-emulator has no SessionService and
//! sushy-static answers every POST with 204 and no token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ironpool_agents::bmc::{
    self, BmcAddress, BmcError, BootDevice, BootMode, BootOverride, Credentials, DriverConfig,
    Persistence, PowerAction, PowerDriver, PowerState,
};
use support::{Emulator, eventually, mockup, start_redfish_static, start_sushy_static};

fn driver(address: &str, user: &str, password: &str) -> Box<dyn PowerDriver> {
    let mut cfg = DriverConfig::new(
        BmcAddress::parse(address).unwrap(),
        Credentials {
            username: user.into(),
            password: password.into(),
        },
    );
    cfg.timeout = Duration::from_secs(10);
    bmc::connect(cfg).unwrap()
}

fn http(emu: &Emulator) -> String {
    format!("redfish+http://127.0.0.1:{}", emu.port)
}

const PXE_UEFI_ONCE: BootOverride = BootOverride {
    device: BootDevice::Pxe,
    persistence: Persistence::Once,
    mode: BootMode::Uefi,
};

/// Request bodies sushy-static logged (`Data: b'...'`).
fn bodies(emu: &Emulator) -> Vec<String> {
    emu.log_text()
        .lines()
        .filter_map(|l| l.strip_prefix("Data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn dmtf_public_rackmount_under_sushy_static() {
    let tree = tempfile::tempdir().unwrap();
    support::dmtf_rackmount_mockup(tree.path()).unwrap();
    let emu = start_sushy_static(tree.path()).unwrap();
    let d = driver(&http(&emu), "u", "p");

    assert_eq!(d.power_state().await.unwrap(), PowerState::On);
    let info = d.system_info().await.unwrap();
    assert_eq!(info.manufacturer.as_deref(), Some("Contoso"));
    assert_eq!(info.product.as_deref(), Some("3500"));
    assert_eq!(info.serial_number.as_deref(), Some("437XR1138R2"));
    assert_eq!(
        info.uuid.as_deref(),
        Some("38947555-7742-3448-3784-823347823834")
    );
    assert_eq!(info.bios_version.as_deref(), Some("P79 v1.45 (12/06/2017)"));

    // The DMTF system advertises no PowerCycle: Cycle is its advertised ForceRestart.
    d.set_power(PowerAction::Cycle).await.unwrap();
    d.set_power(PowerAction::GracefulOff).await.unwrap();
    d.set_boot_device(PXE_UEFI_ONCE).await.unwrap();
    let reset = "/redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset";
    assert_eq!(emu.requests(reset, 204), 2, "{}", emu.log_text());
    let sent = bodies(&emu);
    assert!(
        sent.iter()
            .any(|b| b.contains(r#""ResetType":"ForceRestart""#)),
        "{sent:?}"
    );
    assert!(
        sent.iter()
            .any(|b| b.contains(r#""ResetType":"GracefulShutdown""#)),
        "{sent:?}"
    );
    assert!(
        sent.iter()
            .any(|b| b.contains(r#""BootSourceOverrideTarget":"Pxe""#)
                && b.contains(r#""BootSourceOverrideMode":"UEFI""#)),
        "{sent:?}"
    );
    // The root links a Sessions collection: one login attempt (sushy-static answers 204
    // with no token, so the driver uses basic auth), not one per call.
    assert_eq!(
        emu.requests("POST /redfish/v1/SessionService/Sessions", 204),
        1,
        "{}",
        emu.log_text()
    );

    // The system named in the address is used as is.
    let named = driver(
        &format!("{}/redfish/v1/Systems/437XR1138R2", http(&emu)),
        "u",
        "p",
    );
    assert_eq!(named.power_state().await.unwrap(), PowerState::On);
}

#[tokio::test]
async fn sparse_vendor_tree_with_action_info() {
    let emu = start_sushy_static(&mockup("sparse-vendor")).unwrap();
    let d = driver(&http(&emu), "u", "p");
    // No Links, no SessionService, no Id/Name/UUID, an Oem blob, a Dell-style system id.
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    let info = d.system_info().await.unwrap();
    assert_eq!(info.manufacturer.as_deref(), Some("Acme"));
    assert_eq!((info.uuid, info.serial_number), (None, None));

    // ResetTypes come from the ActionInfo: no GracefulShutdown there.
    let e = d.set_power(PowerAction::GracefulOff).await.unwrap_err();
    assert!(matches!(e, BmcError::Unsupported { .. }), "{e}");
    assert_eq!(e.metric_label(), "ActionUnsupported");
    assert!(
        e.to_string().contains("On, ForceOff, GracefulRestart"),
        "{e}"
    );
    let reset = "/redfish/v1/Systems/System.Embedded.1/Actions/ComputerSystem.Reset";
    assert_eq!(
        emu.requests(reset, 204),
        0,
        "an unadvertised reset was sent"
    );

    d.set_power(PowerAction::On).await.unwrap();
    assert_eq!(emu.requests(reset, 204), 1);
    // No BootSourceOverrideMode on this BMC: the PATCH leaves it out.
    d.set_boot_device(PXE_UEFI_ONCE).await.unwrap();
    let sent = bodies(&emu);
    assert!(
        sent.iter().any(|b| b.contains(r#""ResetType":"On""#)),
        "{sent:?}"
    );
    let patch = sent
        .iter()
        .find(|b| b.contains("BootSourceOverrideTarget"))
        .unwrap();
    assert!(!patch.contains("BootSourceOverrideMode"), "{patch}");
    assert_eq!(emu.requests("SessionService", 204), 0);
}

#[tokio::test]
async fn restricted_tree_refuses_what_it_does_not_advertise() {
    let emu = start_sushy_static(&mockup("restricted")).unwrap();
    let d = driver(&http(&emu), "u", "p");
    assert_eq!(d.power_state().await.unwrap(), PowerState::On, "PoweringOn");
    for action in [
        PowerAction::Off,
        PowerAction::Cycle,
        PowerAction::GracefulOff,
    ] {
        let e = d.set_power(action).await.unwrap_err();
        assert_eq!(e.metric_label(), "ActionUnsupported", "{action:?}: {e}");
        assert!(e.to_string().contains("offers: On"), "{e}");
    }
    let http_boot = BootOverride {
        device: BootDevice::UefiHttp,
        ..PXE_UEFI_ONCE
    };
    let e = d.set_boot_device(http_boot).await.unwrap_err();
    assert_eq!(e.metric_label(), "ActionUnsupported", "{e}");
    assert!(e.to_string().contains("None, Pxe, Hdd"), "{e}");
    assert_eq!(emu.requests("Actions/ComputerSystem.Reset", 204), 0);
    assert!(
        bodies(&emu).is_empty(),
        "nothing may be sent: {:?}",
        bodies(&emu)
    );

    d.set_power(PowerAction::On).await.unwrap();
    d.set_boot_device(PXE_UEFI_ONCE).await.unwrap();
    let sent = bodies(&emu);
    assert!(
        sent.iter()
            .any(|b| b.contains(r#""BootSourceOverrideMode":"UEFI""#)),
        "{sent:?}"
    );
}

/// Logged request lines of redfish_static.py.
fn reqs(emu: &Emulator, needle: &str) -> usize {
    emu.log_text()
        .lines()
        .filter(|l| l.starts_with("REQ ") && l.contains(needle))
        .count()
}

#[tokio::test]
async fn read_only_bmc_refusal_says_so() {
    let tree = tempfile::tempdir().unwrap();
    support::dmtf_rackmount_mockup(tree.path()).unwrap();
    let emu = start_redfish_static(tree.path(), "admin", "pw", &["--read-only"]).unwrap();
    let d = driver(&http(&emu), "admin", "pw");
    let e = d.set_power(PowerAction::On).await.unwrap_err();
    assert_eq!(e.metric_label(), "ActionUnsupported", "{e}");
    let text = e.to_string();
    assert!(
        text.contains("405") && text.contains("ComputerSystem.Reset"),
        "{text}"
    );
    let e = d.set_boot_device(PXE_UEFI_ONCE).await.unwrap_err();
    assert!(e.to_string().contains("405"), "{e}");
}

#[tokio::test]
async fn sessions_are_reused_renewed_capped_and_closed() {
    let tree = tempfile::tempdir().unwrap();
    support::dmtf_rackmount_mockup(tree.path()).unwrap();
    let emu =
        start_redfish_static(tree.path(), "admin", "s3cret", &["--max-sessions", "2"]).unwrap();
    let d = driver(&http(&emu), "admin", "s3cret");
    for _ in 0..20 {
        assert_eq!(d.power_state().await.unwrap(), PowerState::On);
    }
    assert_eq!(reqs(&emu, "auth=login sid="), 1, "{}", emu.log_text());
    assert!(
        reqs(
            &emu,
            "GET /redfish/v1/Systems/437XR1138R2 auth=token -> 200"
        ) >= 20
    );
    assert_eq!(reqs(&emu, "/Systems/437XR1138R2 auth=basic"), 0);

    // The BMC drops the session (an admin, a reboot, a timeout): one 401, one new login.
    let sid = emu
        .log_text()
        .lines()
        .find_map(|l| {
            l.split("sid=")
                .nth(1)
                .map(|s| s.split(' ').next().unwrap().to_string())
        })
        .unwrap();
    let status = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            "admin:s3cret",
            "-X",
            "DELETE",
        ])
        .arg(format!(
            "http://127.0.0.1:{}/redfish/v1/SessionService/Sessions/{sid}",
            emu.port
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "204");
    assert_eq!(d.power_state().await.unwrap(), PowerState::On);
    let rejected = "GET /redfish/v1/Systems/437XR1138R2 auth=none -> 401";
    assert_eq!(reqs(&emu, rejected), 1, "{}", emu.log_text());
    assert_eq!(reqs(&emu, "auth=login sid="), 2);

    // BMCs cap sessions: a second driver takes the last one, a third falls back to basic.
    let d2 = driver(&http(&emu), "admin", "s3cret");
    d2.power_state().await.unwrap();
    let d3 = driver(&http(&emu), "admin", "s3cret");
    assert_eq!(d3.power_state().await.unwrap(), PowerState::On);
    assert_eq!(reqs(&emu, "auth=login -> 503"), 1, "{}", emu.log_text());
    assert!(reqs(&emu, "/Systems/437XR1138R2 auth=basic -> 200") >= 1);

    // close() deletes the session with its own token; dropping a driver does too.
    d.close().await;
    assert_eq!(reqs(&emu, "auth=token -> 204"), 1, "{}", emu.log_text());
    drop(d2);
    let dropped = eventually(Duration::from_secs(5), || async {
        (reqs(&emu, "auth=token -> 204") == 2).then_some(())
    })
    .await;
    assert!(dropped.is_some(), "{}", emu.log_text());
    // Both sessions are free again: a new driver gets one.
    let d4 = driver(&http(&emu), "admin", "s3cret");
    d4.power_state().await.unwrap();
    assert_eq!(reqs(&emu, "auth=login sid="), 4);
    d4.close().await;

    // A wrong password fails the login and says so, without the password.
    let e = driver(&http(&emu), "admin", "nope")
        .power_state()
        .await
        .unwrap_err();
    assert_eq!(e.metric_label(), "AuthenticationFailed", "{e}");
    assert!(!e.to_string().contains("nope"));
}
