//! Table tests of machine API authentication and plans.

use ironpool_crds::machine::{BootPurpose, BootTarget};

use super::*;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, 0x01]);
const BASE: &str = "http://10.20.0.2:8080";

fn keys() -> TokenKey {
    TokenKey::new(&[4; 32]).unwrap()
}

fn deploying(attempt: i64) -> MachineView {
    MachineView::example("r1-u07", MAC)
        .with_intent(BootTarget::Ramdisk, BootPurpose::Deploy, attempt)
        .with_image(
            "http://images/x.raw",
            &format!("sha256:{}", "ab".repeat(32)),
        )
}

#[test]
fn authentication_table() {
    let k = keys();
    let t = |a| k.derive(&MAC, a);
    let disk =
        MachineView::example("r1-u07", MAC).with_intent(BootTarget::Disk, BootPurpose::Run, 6);
    // (machine, bearer, Ok(attempt) or Err(substring))
    type Row = (
        Option<MachineView>,
        Option<String>,
        Result<i64, &'static str>,
    );
    let table: Vec<Row> = vec![
        (Some(deploying(5)), Some(t(5)), Ok(5)),
        (
            Some(deploying(5)),
            None,
            Err("missing 'Authorization: Bearer <token>'"),
        ),
        (
            Some(deploying(5)),
            Some(t(4)),
            Err("token of attempt 4 has expired"),
        ),
        (
            Some(deploying(5)),
            Some(t(6)),
            Err("token does not match Machine datacenter-a/r1-u07"),
        ),
        (
            Some(deploying(5)),
            Some("garbage".into()),
            Err("token does not match"),
        ),
        (
            Some(deploying(5)),
            Some(t(0)),
            Err("enlistment token, but Machine datacenter-a/r1-u07 now has this MAC"),
        ),
        (
            Some(disk.clone()),
            Some(t(6)),
            Err("has no ramdisk work (its current boot intent is Disk/Run attempt 6)"),
        ),
        (
            Some(disk),
            Some(t(5)),
            Err("token of attempt 5 has expired"),
        ),
        (
            Some(MachineView::example("r1-u07", MAC)),
            Some(t(1)),
            Err("it has no boot intent"),
        ),
        (None, Some(t(0)), Ok(0)),
        (None, Some(t(1)), Err("which no Machine has")),
    ];
    for (m, bearer, want) in table {
        let got = authenticate(&k, &MAC, m.clone(), bearer.as_deref());
        match (got, want) {
            (Ok(Caller::Machine { attempt, .. }), Ok(a)) => assert_eq!(attempt, a),
            (Ok(Caller::Enlisting(mac)), Ok(0)) => assert_eq!(mac, MAC),
            (Err(msg), Err(part)) => assert!(msg.contains(part), "{m:?} {bearer:?}: {msg}"),
            (got, want) => panic!("{m:?} {bearer:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn deploy_plan_points_at_this_agent_and_seeds_cloud_init() {
    let caller = Caller::Machine {
        machine: Box::new(deploying(3)),
        attempt: 3,
        purpose: BootPurpose::Deploy,
    };
    let p = plan(&caller, BASE, &keys()).unwrap();
    let img = p.image.unwrap();
    assert_eq!(img.url, format!("{BASE}/images/sha256-{}", "ab".repeat(32)));
    assert_eq!(img.checksum, format!("sha256:{}", "ab".repeat(32)));
    let seed = p.cloud_init.unwrap();
    let os_token = keys().derive_os(&MAC, 3);
    assert_eq!(
        seed.meta_data,
        format!(
            "instance-id: datacenter-a-r1-u07-3\nlocal-hostname: web-1\n\
             provider_id: ironpool://datacenter-a/r1-u07\n\
             ironpool-checkin-url: {BASE}/api/v1/machines/52-54-00-00-00-01/booted\n\
             ironpool-checkin-token: {os_token}\n"
        )
    );
    assert_eq!(seed.user_data.as_deref(), Some("#cloud-config\n"));
    assert_eq!(p.erase, None);
    assert_eq!(p.machine.as_deref(), Some("datacenter-a/r1-u07"));
}

#[test]
fn plans_for_other_purposes() {
    let mut m = deploying(2);
    m.deploy = None;
    let caller = Caller::Machine {
        machine: Box::new(m.clone()),
        attempt: 2,
        purpose: BootPurpose::Deploy,
    };
    assert!(
        plan(&caller, BASE, &keys())
            .unwrap_err()
            .contains("image is not known")
    );
    let erase = Caller::Machine {
        machine: Box::new(m.clone()),
        attempt: 2,
        purpose: BootPurpose::Erase,
    };
    let p = plan(&erase, BASE, &keys()).unwrap();
    assert_eq!(p.erase, Some(ErasePolicy::Quick));
    assert!(p.image.is_none());
    let enlist = plan(&Caller::Enlisting(MAC), BASE, &keys()).unwrap();
    assert_eq!(
        (enlist.purpose, enlist.attempt, enlist.machine),
        (BootPurpose::Enlist, 0, None)
    );
    let json = serde_json::to_value(plan(&erase, BASE, &keys()).unwrap()).unwrap();
    assert_eq!(json["purpose"], "Erase");
    assert_eq!(json["erase"], "Quick");
    assert!(json.get("cloudInit").is_none());
}

#[test]
fn messages_are_clipped() {
    assert_eq!(clip(Some("x".repeat(5000))).unwrap().len(), 1024);
    assert_eq!(clip(None), None);
}

fn with_intent(target: BootTarget, purpose: BootPurpose, attempt: i64) -> MachineView {
    deploying(attempt).with_intent(target, purpose, attempt)
}

#[test]
fn os_check_in_authentication_table() {
    let k = keys();
    let os3 = k.derive_os(&MAC, 3);
    let disk4 = || Some(with_intent(BootTarget::Disk, BootPurpose::Run, 4));
    // The OS of Deploy attempt 3 boots under the Disk intent 4.
    let (m, attempt) = authenticate_os(&k, &MAC, disk4(), Some(&os3)).unwrap();
    assert_eq!((m.name.as_str(), attempt), ("r1-u07", 3));
    let cases: Vec<(Option<MachineView>, Option<String>, &str)> = vec![
        (disk4(), None, "missing 'Authorization"),
        (None, Some(os3.clone()), "no Machine has MAC"),
        (disk4(), Some(k.derive(&MAC, 3)), "earlier deployment"),
        (
            Some(with_intent(BootTarget::Disk, BootPurpose::Run, 6)),
            Some(os3.clone()),
            "Deploy attempt 5",
        ),
        (
            Some(with_intent(BootTarget::Ramdisk, BootPurpose::Erase, 5)),
            Some(os3.clone()),
            "not booting a deployed OS",
        ),
    ];
    for (machine, token, want) in cases {
        let err = authenticate_os(&k, &MAC, machine, token.as_deref()).unwrap_err();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
    }
    // Powered on or cycled twice since Deploy attempt 3 wrote it (Disk intent 6): still
    // the OS of attempt 3, and only that one.
    let mut cycled = with_intent(BootTarget::Disk, BootPurpose::Run, 6);
    cycled.deployed_attempt = Some(3);
    let (_, attempt) = authenticate_os(&k, &MAC, Some(cycled.clone()), Some(&os3)).unwrap();
    assert_eq!(attempt, 3);
    let err = authenticate_os(&k, &MAC, Some(cycled), Some(&k.derive_os(&MAC, 5))).unwrap_err();
    assert!(err.contains("Deploy attempt 3"), "{err}");
}

#[test]
fn os_check_in_summary_is_one_bounded_line() {
    let c: OsCheckIn = serde_json::from_value(serde_json::json!({
        "instanceId": "ns-m-3", "hostname": "web-1", "kernel": "6.1.0-28-amd64",
        "uptimeSeconds": 9.84,
        "userData": {"kind": "script", "exitCode": 0, "output": "proof:\n hello\n"}
    }))
    .unwrap();
    assert_eq!(
        c.summary(3),
        "OS booted from disk (Deploy attempt 3, kernel 6.1.0-28-amd64, up 9.8 s); \
         user-data script exit 0: proof: hello"
    );
    let long = OsCheckIn {
        user_data: Some(UserDataResult {
            kind: "cloud-config".into(),
            exit_code: Some(1),
            output: "x".repeat(5000) + "\ncloud-init errors: ('scripts_user', RuntimeError())",
        }),
        ..c
    };
    let line = long.summary(3);
    assert_eq!(line.chars().count(), 512);
    assert!(
        line.contains("exit 1: ...xxx")
            && line.ends_with("cloud-init errors: ('scripts_user', RuntimeError())"),
        "the end of the output is kept: {line}"
    );
    let bare: OsCheckIn = serde_json::from_str(r#"{"instanceId": "a"}"#).unwrap();
    assert_eq!(
        bare.summary(1),
        "OS booted from disk (Deploy attempt 1); no user-data"
    );
}
