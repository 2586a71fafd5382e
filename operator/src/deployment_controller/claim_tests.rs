//! The claim carries the lifecycle's first decision for the allocated machine, and the
//! Machine controller, reconciling the claimed machine, finds nothing left to write: an
//! allocation is one Machine write.

use ironpool_crds::deployment::{DeploymentSpec, ErasePolicy, Image, ImageFormat};
use ironpool_crds::machine::{
    BootIntent, BootPurpose, BootTarget, Hardware, InventorySummary, MachinePhase, MachineSpec,
    MachineStatus, OperationKind, OperationResult,
};
use ironpool_crds::{Deployment, LocalObjectRef, Machine};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::*;

fn ready_machine() -> Machine {
    let mut m = Machine::new("m1", MachineSpec::for_boot_mac("52:54:00:00:00:01"));
    m.metadata.generation = Some(1);
    let then = Timestamp::from_second(1_800_000_000).unwrap();
    m.status = Some(MachineStatus {
        phase: Some(MachinePhase::Ready),
        boot_intent: Some(BootIntent {
            target: BootTarget::Off,
            purpose: BootPurpose::Idle,
            attempt: 4,
            issued_at: Some(MicroTime(then)),
        }),
        inventory: Some(InventorySummary::of("m1", &Hardware::default())),
        observed_generation: Some(1),
        ..Default::default()
    });
    m
}

fn deployment() -> Deployment {
    Deployment::new(
        "web",
        DeploymentSpec {
            machine_selector: None,
            machine_ref: Some(LocalObjectRef::new("m1")),
            image: Image {
                url: Some("http://i/os.raw".into()),
                checksum: Some("sha256:ab".into()),
                format: Some(ImageFormat::Raw),
                oci: None,
            },
            user_data_secret_ref: None,
            network_data_secret_ref: None,
            storage: None,
            hostname: None,
            subnet_ref: None,
            erase: ErasePolicy::Quick,
        },
    )
}

#[test]
fn the_claim_starts_the_deploy_in_the_same_write() {
    let now = Timestamp::from_second(1_800_000_100).unwrap();
    let (s, decision) = claimed_status(
        &ready_machine(),
        &deployment(),
        &lifecycle::Policy::default(),
        now,
    );
    assert_eq!(s.phase, Some(MachinePhase::Deploying));
    assert_eq!(decision.phase, MachinePhase::Deploying);
    assert_eq!(s.deployment_ref, Some(LocalObjectRef::new("web")));
    let i = s.boot_intent.as_ref().unwrap();
    assert_eq!(
        (i.target, i.purpose, i.attempt),
        (BootTarget::Ramdisk, BootPurpose::Deploy, 5)
    );
    let op = s.last_operation.as_ref().unwrap();
    assert_eq!(
        (op.kind, op.result, op.image.as_deref()),
        (
            OperationKind::Deploy,
            OperationResult::Running,
            Some("http://i/os.raw@sha256:ab")
        )
    );
}

#[test]
fn the_machine_controller_has_nothing_left_to_write_after_a_claim() {
    let now = Timestamp::from_second(1_800_000_100).unwrap();
    let m = ready_machine();
    let d = deployment();
    let (s, _) = claimed_status(&m, &d, &lifecycle::Policy::default(), now);
    let mut claimed = m.clone();
    claimed.status = Some(MachineStatus {
        inventory: m.status.as_ref().unwrap().inventory.clone(),
        ..s.clone()
    });
    // The Machine controller reconciles the claimed machine a little later.
    let later = now.checked_add(SignedDuration::from_secs(2)).unwrap();
    let obs = machine_controller::observation(
        &claimed,
        Some(machine_controller::view_for(&d, "m1")),
        later,
    );
    let decision = lifecycle::decide(&obs, &lifecycle::Policy::default());
    let next = machine_status::next_status(&claimed, &decision, later);
    assert_eq!(next, machine_status::operator_fields(Some(&s)));
}
