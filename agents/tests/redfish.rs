//! The Redfish driver against a real sushy-emulator (fake driver): http and https,
//! power, boot override, credentials, outages and slow answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ironpool_agents::bmc::{
    self, BmcAddress, BmcError, BootDevice, BootMode, BootOverride, Credentials, DriverConfig,
    Persistence, PowerAction, PowerDriver, PowerState,
};
use support::{SlowProxy, SushyOptions, eventually, start_sushy};

fn creds(user: &str, pass: &str) -> Credentials {
    Credentials {
        username: user.into(),
        password: pass.into(),
    }
}

fn driver(
    address: &str,
    c: Credentials,
    tweak: impl FnOnce(&mut DriverConfig),
) -> Box<dyn PowerDriver> {
    let mut cfg = DriverConfig::new(BmcAddress::parse(address).unwrap(), c);
    cfg.timeout = Duration::from_secs(5);
    tweak(&mut cfg);
    bmc::connect(cfg).unwrap()
}

async fn wait_power(d: &dyn PowerDriver, want: PowerState) {
    let got = eventually(Duration::from_secs(20), || async {
        (d.power_state().await.ok() == Some(want)).then_some(())
    })
    .await;
    assert!(got.is_some(), "power never became {want:?}");
}

async fn raw_system(port: u16, path: &str) -> serde_json::Value {
    let out = tokio::process::Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{port}{path}")])
        .output()
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn http_power_on_off_cycle_and_boot_override() {
    let emu = start_sushy(&SushyOptions::default()).unwrap();
    let d = driver(
        &format!("redfish+http://127.0.0.1:{}", emu.port),
        creds("u", "p"),
        |_| {},
    );
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    let info = d.system_info().await.unwrap();
    assert_eq!(
        info.uuid.as_deref(),
        Some("27946b59-9e44-4fa7-8e91-f3527a1ef094")
    );

    d.set_power(PowerAction::On).await.unwrap();
    wait_power(d.as_ref(), PowerState::On).await;

    let pxe = BootOverride {
        device: BootDevice::Pxe,
        persistence: Persistence::Once,
        mode: BootMode::Uefi,
    };
    d.set_boot_device(pxe).await.unwrap();
    let sys = raw_system(
        emu.port,
        "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094",
    )
    .await;
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Pxe");
    assert_eq!(sys["Boot"]["BootSourceOverrideMode"], "UEFI");

    let disk = BootOverride {
        device: BootDevice::Disk,
        persistence: Persistence::Continuous,
        mode: BootMode::Legacy,
    };
    d.set_boot_device(disk).await.unwrap();
    let sys = raw_system(
        emu.port,
        "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094",
    )
    .await;
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Hdd");
    assert_eq!(sys["Boot"]["BootSourceOverrideMode"], "Legacy");

    // sushy advertises no PowerCycle and answers 400 to it: Cycle must use ForceRestart,
    // which it does advertise (it reads Off at once, then On again).
    let resets = || emu.requests("ComputerSystem.Reset HTTP/1.1", 204);
    assert_eq!(resets(), 1, "{}", emu.log_text());
    d.set_power(PowerAction::Cycle).await.unwrap();
    assert_eq!(resets(), 2, "{}", emu.log_text());
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    wait_power(d.as_ref(), PowerState::On).await;

    d.set_power(PowerAction::Off).await.unwrap();
    wait_power(d.as_ref(), PowerState::Off).await;
    assert_eq!(resets(), 3);

    // UefiHttp is not among sushy's advertised override targets for this system.
    let http_boot = BootOverride {
        device: BootDevice::UefiHttp,
        ..pxe
    };
    match d.set_boot_device(http_boot).await {
        Err(BmcError::Unsupported { .. }) | Ok(()) => {}
        Err(e) => panic!("unexpected {e}"),
    }
    d.close().await;
}

#[tokio::test]
async fn system_is_chosen_by_path_when_several() {
    let systems = (0..2)
        .map(|i| {
            (
                format!("00000000-0000-0000-0000-00000000000{i}"),
                format!("n{i}"),
                "Off".to_string(),
            )
        })
        .collect();
    let emu = start_sushy(&SushyOptions {
        systems,
        ..Default::default()
    })
    .unwrap();
    let d = driver(
        &format!("redfish+http://127.0.0.1:{}", emu.port),
        creds("u", "p"),
        |_| {},
    );
    let e = d.power_state().await.unwrap_err();
    assert!(matches!(e, BmcError::InvalidAddress { .. }), "{e}");
    assert!(e.to_string().contains("2 systems"), "{e}");
    let one = format!(
        "redfish+http://127.0.0.1:{}/redfish/v1/Systems/00000000-0000-0000-0000-000000000001",
        emu.port
    );
    let d = driver(&one, creds("u", "p"), |_| {});
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
}

#[tokio::test]
async fn https_verifies_the_certificate_unless_told_otherwise() {
    let (cert, key) = support::self_signed();
    let emu = start_sushy(&SushyOptions {
        tls: Some((cert.clone(), key)),
        ..Default::default()
    })
    .unwrap();
    let address = format!("redfish://127.0.0.1:{}", emu.port);

    let e = driver(&address, creds("u", "p"), |_| {})
        .power_state()
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::TlsVerification { .. }), "{e}");
    assert_eq!(e.metric_label(), "TLSVerificationFailed");
    assert!(e.to_string().contains("insecureSkipVerify"), "{e}");

    let with_ca = driver(&address, creds("u", "p"), |c| {
        c.ca_bundle = Some(cert.clone().into_bytes())
    });
    assert_eq!(with_ca.power_state().await.unwrap(), PowerState::Off);

    let insecure = driver(&address, creds("u", "p"), |c| c.insecure_skip_verify = true);
    assert_eq!(insecure.power_state().await.unwrap(), PowerState::Off);
}

#[tokio::test]
async fn wrong_password_is_an_authentication_error() {
    let emu = start_sushy(&SushyOptions {
        auth: Some(("admin".into(), "s3cret".into())),
        ..Default::default()
    })
    .unwrap();
    let address = format!("redfish+http://127.0.0.1:{}", emu.port);
    let e = driver(&address, creds("admin", "wrong"), |_| {})
        .power_state()
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::Authentication { .. }), "{e}");
    assert!(
        !e.to_string().contains("wrong"),
        "the password leaked into {e}"
    );
    let ok = driver(&address, creds("admin", "s3cret"), |_| {});
    assert_eq!(ok.power_state().await.unwrap(), PowerState::Off);
}

#[tokio::test]
async fn stopped_emulator_is_unreachable_then_recovers() {
    let mut emu = start_sushy(&SushyOptions::default()).unwrap();
    let port = emu.port;
    let d = driver(
        &format!("redfish+http://127.0.0.1:{port}"),
        creds("u", "p"),
        |_| {},
    );
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    emu.stop();
    let e = d.power_state().await.unwrap_err();
    assert!(matches!(e, BmcError::Unreachable { .. }), "{e}");
    assert!(e.is_transient());
    let _emu = start_sushy(&SushyOptions {
        port: Some(port),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        d.power_state().await.unwrap(),
        PowerState::Off,
        "the same driver recovers"
    );
}

#[tokio::test]
async fn slow_answers_time_out_by_the_deadline() {
    let emu = start_sushy(&SushyOptions::default()).unwrap();
    let proxy = SlowProxy::start(emu.port, Duration::from_millis(1500))
        .await
        .unwrap();
    let address = format!("redfish+http://127.0.0.1:{}", proxy.port);
    let started = std::time::Instant::now();
    let e = driver(&address, creds("u", "p"), |c| {
        c.timeout = Duration::from_millis(700)
    })
    .power_state()
    .await
    .unwrap_err();
    assert!(matches!(e, BmcError::Timeout { .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let patient = driver(&address, creds("u", "p"), |c| {
        c.timeout = Duration::from_secs(10)
    });
    assert_eq!(patient.power_state().await.unwrap(), PowerState::Off);
}
