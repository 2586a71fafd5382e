//! Failing fast: a deploy failure that another boot cannot fix (checksum mismatch, no disk
//! matching the hints) ends the deploy at once, keeps its reason while failed, and timeout
//! messages speak only of the current attempt.

use std::time::Duration;

use ironpool_crds::machine::{
    BootIntent, BootPurpose, BootTarget, FailureReason, MachinePhase as P, Operation,
    OperationKind, OperationResult, ProvisioningReport, ProvisioningStep,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;

use super::*;

const IMG: &str = "http://img/os.raw@sha256:aa";

fn at(secs_ago: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 - secs_ago).unwrap()
}

/// A Deploying machine in attempt 3 of its deploy (no retries used yet), the ramdisk
/// having reported `step` (with `reason`) for `report_attempt`.
fn deploying(
    report_attempt: i64,
    step: ProvisioningStep,
    reason: Option<FailureReason>,
    intent_age: i64,
) -> Observation {
    Observation {
        now: at(0),
        phase: Some(P::Deploying),
        maintenance: false,
        broken: false,
        wants_off: false,
        wants_rescue: false,
        power_cycle: None,
        spec_changed: false,
        intent: Some(BootIntent {
            target: BootTarget::Ramdisk,
            purpose: BootPurpose::Deploy,
            attempt: 3,
            issued_at: Some(MicroTime(at(intent_age))),
        }),
        applied_attempt: Some(3),
        report: Some(ProvisioningReport {
            attempt: report_attempt,
            step,
            bytes_written: None,
            bytes_total: None,
            message: Some("checksum mismatch: declared sha256:aa, got sha256:bb".into()),
            reason,
            updated_at: None,
        }),
        rescue_report: None,
        os_booted_at: None,
        has_hardware: true,
        operation: Some(Operation {
            kind: OperationKind::Deploy,
            started: Time(at(100)),
            finished: None,
            result: OperationResult::Running,
            retries: 0,
            image: Some(IMG.into()),
            message: None,
        }),
        deployment: Some(DeploymentView::Active { image: IMG.into() }),
    }
}

#[test]
fn a_failure_no_retry_can_fix_fails_the_deploy_at_once() {
    for (reason, words) in [
        (FailureReason::ChecksumMismatch, "spec.image.checksum"),
        (FailureReason::NoMatchingDisk, "rootDeviceHints"),
    ] {
        let obs = deploying(3, ProvisioningStep::Failed, Some(reason), 30);
        let d = decide(&obs, &Policy::default());
        assert_eq!(d.phase, P::FailedDeployment, "{reason:?}");
        assert_eq!(d.report.reason, reason.as_str());
        assert!(d.report.message.contains(words), "{}", d.report.message);
        assert!(
            d.report.message.contains("not retried"),
            "{}",
            d.report.message
        );
        assert!(
            matches!(&d.operation, OperationChange::Finish(OperationResult::Failed, why) if why.contains("checksum mismatch")),
            "{:?}",
            d.operation
        );
        assert_eq!(d.intent.map(|i| i.target), Some(BootTarget::Off));

        // Failed, it keeps the reason and the very same message (no status churn).
        let mut failed = obs.clone();
        failed.phase = Some(P::FailedDeployment);
        failed.intent = Some(BootIntent {
            target: BootTarget::Off,
            purpose: BootPurpose::Idle,
            attempt: 4,
            issued_at: Some(MicroTime(at(0))),
        });
        if let OperationChange::Finish(result, why) = &d.operation {
            let op = failed.operation.as_mut().unwrap();
            op.result = *result;
            op.message = Some(why.clone());
        }
        let stay = decide(&failed, &Policy::default());
        assert_eq!(stay.phase, P::FailedDeployment);
        assert_eq!(stay.report.reason, reason.as_str());
        assert_eq!(stay.report.message, d.report.message);
        assert!(!stay.transitions_from(&failed));
    }
}

#[test]
fn other_failures_are_retried() {
    let obs = deploying(3, ProvisioningStep::Failed, None, 30);
    let d = decide(&obs, &Policy::default());
    assert_eq!(d.phase, P::Deploying);
    assert_eq!(d.operation, OperationChange::Retry);
    assert_eq!(d.report.reason, "Retrying");
}

#[test]
fn a_reason_from_an_earlier_attempt_does_not_fail_this_one() {
    // Attempt 2 failed on a checksum; attempt 3 (after the image was fixed) has not
    // reported yet: keep waiting.
    let obs = deploying(
        2,
        ProvisioningStep::Failed,
        Some(FailureReason::ChecksumMismatch),
        30,
    );
    let d = decide(&obs, &Policy::default());
    assert_eq!(d.phase, P::Deploying);
    assert_eq!(d.report.reason, "Deploying");
}

#[test]
fn a_timeout_message_speaks_of_the_current_attempt_only() {
    let policy = Policy {
        deploy_timeout: Duration::from_secs(60),
        ..Policy::default()
    };
    // The last report (Succeeded) belongs to attempt 2; attempt 3 never reported.
    let obs = deploying(2, ProvisioningStep::Succeeded, None, 120);
    let d = decide(&obs, &policy);
    assert_eq!(d.operation, OperationChange::Retry);
    assert!(
        d.report
            .message
            .contains("the ramdisk never reported in this attempt"),
        "{}",
        d.report.message
    );
    assert!(
        !d.report.message.contains("Succeeded"),
        "{}",
        d.report.message
    );
}
