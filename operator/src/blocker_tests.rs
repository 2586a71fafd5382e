//! Each blocker from the Machine's status, and what the Deployment's status makes of it.

use std::time::Duration;

use ironpool_crds::conditions::{self, READY, Status};
use ironpool_crds::machine::{
    Architecture, Bmc, BootApplied, BootIntent, BootPurpose, BootRecord, BootStep, BootTarget,
    MachinePhase, MachineSpec, MachineStatus, ProvisioningReport, ProvisioningStep,
};
use ironpool_crds::{Deployment, SecretRef};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::deployment_status;

const NOW: i64 = 1_800_000_000;

fn at(secs_ago: i64) -> Timestamp {
    Timestamp::from_second(NOW - secs_ago).unwrap()
}

/// A Deploying machine with a BMC whose boot intent #5 (Ramdisk for Deploy) went out
/// `issued_ago` seconds ago and was carried out `applied_ago` seconds ago (None: not yet).
fn machine(issued_ago: i64, applied_ago: Option<i64>) -> Machine {
    let mut m = Machine::new(
        "r1-u07",
        MachineSpec {
            bmc: Some(Bmc {
                address: "redfish://10.0.0.7/redfish/v1/Systems/1".into(),
                credentials_secret_ref: SecretRef {
                    name: "r1-u07-bmc".into(),
                },
                insecure_skip_verify: false,
            }),
            architecture: Architecture::X86_64,
            ..MachineSpec::for_boot_mac("52:54:00:00:00:07")
        },
    );
    m.status = Some(MachineStatus {
        phase: Some(MachinePhase::Deploying),
        boot_intent: Some(BootIntent {
            target: BootTarget::Ramdisk,
            purpose: BootPurpose::Deploy,
            attempt: 5,
            issued_at: Some(MicroTime(at(issued_ago))),
        }),
        boot_applied: applied_ago.map(|a| BootApplied {
            attempt: 5,
            applied_at: Some(Time(at(a))),
        }),
        ..Default::default()
    });
    m
}

fn with_condition(mut m: Machine, type_: &str, status: Status, reason: &str, msg: &str) -> Machine {
    let st = m.status.as_mut().unwrap();
    conditions::set(
        &mut st.conditions,
        type_,
        status,
        reason,
        msg,
        None,
        Time(at(0)),
    );
    m
}

fn with_boot(mut m: Machine, steps: &[(BootStep, i64)]) -> Machine {
    let st = m.status.as_mut().unwrap();
    st.boot = steps
        .iter()
        .map(|(step, ago)| BootRecord {
            step: *step,
            detail: Some(format!("{step:?} detail")),
            at: MicroTime(at(*ago)),
        })
        .collect();
    m
}

fn blocker_of(m: &Machine) -> Option<Blocker> {
    check(m, at(0), &Policy::default()).blocker
}

const AUTH: &str = "the BMC at 10.0.0.7 rejected the credentials; check the `username` and \
                    `password` keys of the Secret named by spec.bmc.credentialsSecretRef";

#[test]
fn times_read_as_clock_times() {
    assert_eq!(stamp(at(300)), "2027-01-15T07:55:00Z");
    assert_eq!(clock(at(300)), "07:55:00Z");
}

#[test]
fn a_bmc_the_agent_cannot_drive_blocks_at_once() {
    let m = with_condition(
        machine(5, None),
        BMC_REACHABLE,
        Status::False,
        "AuthenticationFailed",
        AUTH,
    );
    let b = blocker_of(&m).unwrap();
    assert_eq!(b.reason, "BMCAuthenticationFailed");
    assert_eq!(b.short, "the BMC rejects the credentials");
    assert!(
        b.message.starts_with("machine r1-u07 cannot be powered: "),
        "{}",
        b.message
    );
    assert!(b.message.contains("credentialsSecretRef"), "{}", b.message);
    for (reason, want) in [
        ("NoCredentials", "BMCNoCredentials"),
        ("Unreachable", "BMCUnreachable"),
        ("TLSVerificationFailed", "BMCTLSVerificationFailed"),
    ] {
        let m = with_condition(machine(5, None), BMC_REACHABLE, Status::False, reason, "x");
        assert_eq!(blocker_of(&m).unwrap().reason, want);
    }
    // Reachable again: nothing blocks.
    let m = with_condition(m, BMC_REACHABLE, Status::True, "Reachable", "ok");
    assert_eq!(check(&m, at(0), &Policy::default()).blocker, None);
}

#[test]
fn only_machines_working_for_a_deployment_are_blocked() {
    for phase in [
        MachinePhase::Ready,
        MachinePhase::Deployed,
        MachinePhase::FailedDeployment,
        MachinePhase::Commissioning,
    ] {
        let mut m = with_condition(
            machine(5, None),
            BMC_REACHABLE,
            Status::False,
            "AuthenticationFailed",
            AUTH,
        );
        m.status.as_mut().unwrap().phase = Some(phase);
        assert_eq!(
            check(&m, at(0), &Policy::default()),
            Check::default(),
            "{phase:?}"
        );
    }
}

#[test]
fn an_intent_no_agent_carries_out_blocks_after_two_minutes() {
    let c = check(&machine(30, None), at(0), &Policy::default());
    assert_eq!(c.blocker, None);
    assert_eq!(c.recheck_after, Some(Duration::from_secs(90)));
    let b = blocker_of(&machine(300, None)).unwrap();
    assert_eq!(b.reason, "PowerActionPending");
    assert_eq!(
        b.short,
        format!("no agent has powered it since {}", clock(at(300)))
    );
    assert!(
        b.message.contains("boot intent #5 (Ramdisk for Deploy)"),
        "{}",
        b.message
    );
    assert!(b.message.contains("ironpool-agent pod"), "{}", b.message);
    // Without a BMC nobody can: say so at once.
    let mut m = machine(5, None);
    m.spec.bmc = None;
    let b = blocker_of(&m).unwrap();
    assert_eq!(b.reason, "NoBMC");
    assert!(b.message.contains("power it on by hand"), "{}", b.message);
}

#[test]
fn a_boot_that_never_checks_in_says_where_it_stopped() {
    // Powered on 5 minutes ago: wait until the 10-minute deadline.
    let c = check(&machine(400, Some(300)), at(0), &Policy::default());
    assert_eq!(
        (c.blocker, c.recheck_after),
        (None, Some(Duration::from_secs(300)))
    );
    type Case<'a> = (&'a [(BootStep, i64)], &'a str, &'a str);
    let cases: [Case<'_>; 5] = [
        (&[], "no network boot seen", "spec.bootMACAddress"),
        (
            // Steps of an earlier boot (before the intent) do not count.
            &[
                (BootStep::RamdiskCheckIn, 1000),
                (BootStep::DhcpDiscover, 600),
            ],
            "stuck in DHCP",
            "Subnet's ranges",
        ),
        (
            &[(BootStep::DhcpAck, 600)],
            "got an address, never fetched iPXE",
            "port 69",
        ),
        (
            &[(BootStep::DhcpAck, 600), (BootStep::TftpRead, 599)],
            "loaded iPXE, never fetched its script",
            "HTTP port",
        ),
        (
            &[
                (BootStep::ScriptFetched, 599),
                (BootStep::AssetFetched, 598),
            ],
            "the ramdisk never checked in",
            "serial console",
        ),
    ];
    for (steps, short, words) in cases {
        let m = with_boot(machine(700, Some(660)), steps);
        let b = blocker_of(&m).unwrap();
        assert_eq!(b.reason, "NoCheckIn");
        assert_eq!(
            b.short,
            format!("{short} since power-on at {}", clock(at(660)))
        );
        assert!(b.message.contains(words), "{short}: {}", b.message);
    }
    // Checked in: no blocker.
    let m = with_boot(machine(700, Some(660)), &[(BootStep::RamdiskCheckIn, 500)]);
    assert_eq!(blocker_of(&m), None);
    // Booting the deployed OS from disk: its check-in is what counts.
    let mut m = with_boot(machine(700, Some(660)), &[(BootStep::RamdiskCheckIn, 690)]);
    m.status
        .as_mut()
        .unwrap()
        .boot_intent
        .as_mut()
        .unwrap()
        .target = BootTarget::Disk;
    let b = blocker_of(&m).unwrap();
    assert_eq!(
        b.short,
        format!(
            "the deployed OS never checked in since power-on at {}",
            clock(at(660))
        )
    );
}

#[test]
fn ramdisk_progress_that_stops_is_a_stall() {
    let report = |quiet: i64| ProvisioningReport {
        attempt: 5,
        step: ProvisioningStep::WritingImage,
        bytes_written: Some(45),
        bytes_total: Some(100),
        message: None,
        reason: None,
        updated_at: Some(Time(at(quiet))),
    };
    let mut m = with_boot(machine(700, Some(660)), &[(BootStep::RamdiskCheckIn, 600)]);
    m.status.as_mut().unwrap().provisioning = Some(report(30));
    let c = check(&m, at(0), &Policy::default());
    assert_eq!(
        (c.blocker, c.recheck_after),
        (None, Some(Duration::from_secs(90)))
    );
    m.status.as_mut().unwrap().provisioning = Some(report(300));
    let b = blocker_of(&m).unwrap();
    assert_eq!(b.reason, "ProgressStalled");
    assert_eq!(
        b.short,
        format!("WritingImage stalled at 45% since {}", clock(at(300)))
    );
    assert!(b.message.contains(&stamp(at(300))), "{}", b.message);
    // A report of an earlier attempt is not this boot's progress.
    let mut old = report(300);
    old.attempt = 4;
    m.status.as_mut().unwrap().provisioning = Some(old);
    assert_eq!(blocker_of(&m), None);
}

fn deployment() -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Deployment",
        "metadata": {"name": "web-1", "namespace": "default", "generation": 1},
        "spec": {"machineSelector": {},
                 "image": {"url": "http://img/os.raw", "checksum": format!("sha256:{}", "a".repeat(64))}}
    }))
    .unwrap()
}

fn ready_of(s: &ironpool_crds::deployment::DeploymentStatus) -> (String, String, String) {
    let c = conditions::get(&s.conditions, READY).unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[test]
fn the_deployment_names_the_blocker_and_shows_it_as_its_progress() {
    let m = with_condition(
        machine(5, None),
        BMC_REACHABLE,
        Status::False,
        "AuthenticationFailed",
        AUTH,
    );
    let s = deployment_status::allocated(&deployment(), &m, vec![], at(0), &Policy::default());
    let (status, reason, message) = ready_of(&s);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "BMCAuthenticationFailed")
    );
    assert!(message.contains("rejected the credentials"), "{message}");
    let p = s.progress.unwrap();
    assert_eq!(p.step, "Stalled");
    assert_eq!(
        p.summary.as_deref(),
        Some("Stalled: the BMC rejects the credentials")
    );

    // Once fixed, progress reads as the boot again.
    let m = with_condition(m, BMC_REACHABLE, Status::True, "Reachable", "ok");
    let s = deployment_status::allocated(&deployment(), &m, vec![], at(0), &Policy::default());
    assert_eq!(
        s.progress.unwrap().summary.as_deref(),
        Some("BootingRamdisk for Deploy (boot intent #5)")
    );
}

#[test]
fn a_failed_deployment_shows_the_failure_not_the_last_step() {
    let mut m = machine(5, Some(4));
    let st = m.status.as_mut().unwrap();
    st.phase = Some(MachinePhase::FailedDeployment);
    // The failed machine was told to power off: its intent is Off for Idle.
    st.boot_intent = Some(BootIntent {
        target: BootTarget::Off,
        purpose: BootPurpose::Idle,
        attempt: 6,
        issued_at: Some(MicroTime(at(3))),
    });
    let m = with_condition(
        m,
        READY,
        Status::False,
        "ChecksumMismatch",
        "writing the image failed: checksum mismatch; correct spec.image.checksum",
    );
    let s = deployment_status::allocated(&deployment(), &m, vec![], at(0), &Policy::default());
    assert_eq!(
        s.phase,
        Some(ironpool_crds::deployment::DeploymentPhase::Failed)
    );
    let (_, reason, message) = ready_of(&s);
    assert_eq!(reason, "ChecksumMismatch");
    assert!(message.contains("spec.image.checksum"), "{message}");
    let p = s.progress.unwrap();
    assert_eq!(p.summary.as_deref(), Some("Failed: ChecksumMismatch"));
}

#[test]
fn an_off_intent_reads_as_powering_off() {
    let mut m = machine(5, None);
    let st = m.status.as_mut().unwrap();
    st.phase = Some(MachinePhase::Releasing);
    st.boot_intent = Some(BootIntent {
        target: BootTarget::Off,
        purpose: BootPurpose::Idle,
        attempt: 5,
        issued_at: Some(MicroTime(at(5))),
    });
    let p = crate::deployment_status::progress(&m).unwrap();
    assert_eq!(p.summary.as_deref(), Some("PoweringOff (boot intent #5)"));
    m.status.as_mut().unwrap().boot_applied = Some(BootApplied {
        attempt: 5,
        applied_at: None,
    });
    let p = crate::deployment_status::progress(&m).unwrap();
    assert_eq!(p.summary.as_deref(), Some("PoweredOff"));
}
