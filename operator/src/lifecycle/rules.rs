//! The transition rules, one small function per phase.

use std::time::Duration;

use ironpool_crds::deployment::ErasePolicy;
use ironpool_crds::machine::{
    BootPurpose, BootTarget, FailureReason, MachinePhase as P, OperationKind, OperationResult,
    ProvisioningReport, ProvisioningStep,
};

use super::{
    Decision, DeploymentView, NewIntent, Observation, OperationChange as Op, Policy, Report,
    Severity, failure, permanent_failure, succeeded,
};

const RAMDISK_COMMISSION: NewIntent = NewIntent {
    target: BootTarget::Ramdisk,
    purpose: BootPurpose::Commission,
};
const RAMDISK_DEPLOY: NewIntent = NewIntent {
    target: BootTarget::Ramdisk,
    purpose: BootPurpose::Deploy,
};
const RAMDISK_ERASE: NewIntent = NewIntent {
    target: BootTarget::Ramdisk,
    purpose: BootPurpose::Erase,
};
const DISK_RUN: NewIntent = NewIntent {
    target: BootTarget::Disk,
    purpose: BootPurpose::Run,
};
const OFF_IDLE: NewIntent = NewIntent {
    target: BootTarget::Off,
    purpose: BootPurpose::Idle,
};
const OFF_STOP: NewIntent = NewIntent {
    target: BootTarget::Off,
    purpose: BootPurpose::Stop,
};
const RAMDISK_RESCUE: NewIntent = NewIntent {
    target: BootTarget::Ramdisk,
    purpose: BootPurpose::Rescue,
};

/// The next phase and actions for a machine.
pub fn decide(obs: &Observation, policy: &Policy) -> Decision {
    if obs.broken {
        if obs.wants_rescue {
            return rescue(obs, policy, P::Broken);
        }
        let d = hold(
            P::Broken,
            "Broken",
            "marked broken (spec.broken); Ironpool takes no action until it is cleared",
        );
        // Out of rescue: off again, where a broken server waits for a person.
        return if intent_is(obs, RAMDISK_RESCUE) {
            with_intent(d, OFF_STOP)
        } else {
            d
        };
    }
    if obs.maintenance {
        return hold(
            P::Maintenance,
            "Maintenance",
            "held for maintenance (spec.maintenance); set it to false to resume",
        );
    }
    match obs.phase {
        None if policy.auto_commission => start_commission(policy),
        None => stay(
            P::New,
            report(false, "AwaitingCommission", "waiting to be commissioned"),
        ),
        Some(P::Broken | P::Maintenance) => resume(obs, policy),
        Some(P::New) if policy.auto_commission => start_commission(policy),
        Some(P::New) => stay(
            P::New,
            report(false, "AwaitingCommission", "waiting to be commissioned"),
        ),
        Some(P::Commissioning) => commissioning(obs, policy),
        Some(P::Ready) => ready(obs, policy),
        Some(P::Allocated) => allocated(obs, policy),
        Some(P::Deploying) => deploying(obs, policy),
        Some(P::Deployed) => deployed(obs, policy),
        Some(P::Releasing) => releasing(obs, policy),
        Some(P::FailedCommissioning) => failed_commissioning(obs, policy),
        Some(P::FailedDeployment) => failed_deployment(obs, policy),
    }
}

fn report(ready: bool, reason: &'static str, message: impl Into<String>) -> Report {
    Report {
        ready,
        reason,
        message: message.into(),
        severity: Severity::Normal,
    }
}

fn warning(reason: &'static str, message: impl Into<String>) -> Report {
    Report {
        ready: false,
        reason,
        message: message.into(),
        severity: Severity::Warning,
    }
}

fn stay(phase: P, report: Report) -> Decision {
    Decision {
        phase,
        intent: None,
        operation: Op::Keep,
        release: false,
        report,
        power_cycle_handled: None,
        requeue_after: None,
    }
}

fn hold(phase: P, reason: &'static str, message: &str) -> Decision {
    stay(phase, report(false, reason, message))
}

fn with_intent(mut d: Decision, intent: NewIntent) -> Decision {
    d.intent = Some(intent);
    d
}

/// Whether the current boot intent is `want`.
fn intent_is(obs: &Observation, want: NewIntent) -> bool {
    obs.intent
        .as_ref()
        .is_some_and(|i| i.target == want.target && i.purpose == want.purpose)
}

/// When the current intent was issued.
fn issued_at(obs: &Observation) -> Option<k8s_openapi::jiff::Timestamp> {
    obs.intent
        .as_ref()
        .and_then(|i| i.issued_at.as_ref())
        .map(|t| t.0)
}

/// How long the current intent has been out.
fn intent_age(obs: &Observation) -> Duration {
    let issued = issued_at(obs);
    match issued {
        Some(t) if obs.now > t => obs.now.duration_since(t).unsigned_abs(),
        _ => Duration::ZERO,
    }
}

/// Wait in `phase` until `timeout` after the intent was issued.
fn wait(obs: &Observation, phase: P, timeout: Duration, report: Report) -> Decision {
    let left = timeout
        .saturating_sub(intent_age(obs))
        .max(Duration::from_secs(1));
    Decision {
        requeue_after: Some(left),
        ..stay(phase, report)
    }
}

fn running(obs: &Observation, kind: OperationKind) -> bool {
    obs.operation
        .as_ref()
        .is_some_and(|o| o.kind == kind && o.result == OperationResult::Running)
}

fn operation_image(obs: &Observation) -> Option<&str> {
    obs.operation
        .as_ref()
        .filter(|o| o.kind == OperationKind::Deploy)
        .and_then(|o| o.image.as_deref())
}

/// What the ramdisk reported in the current attempt, for a timeout message.
fn last_step(obs: &Observation) -> String {
    match super::current_report(obs) {
        Some(r) => format!("; the ramdisk last reported {:?}", r.step),
        None => "; the ramdisk never reported in this attempt (see status.boot for the last \
                 boot step)"
            .into(),
    }
}

/// What a person does about a deploy failure that retrying cannot fix.
fn fix_for(reason: FailureReason) -> &'static str {
    match reason {
        FailureReason::ChecksumMismatch => {
            "the image at spec.image.url does not match spec.image.checksum: correct whichever \
             is wrong in the Deployment and Ironpool deploys again (not retried: the same bytes \
             would fail the same way)"
        }
        FailureReason::NoMatchingDisk => {
            "no disk of this server matches the root-device hints or holds the image: correct \
             spec.storage.rootDeviceHints of the Deployment (or the Machine's \
             spec.rootDeviceHints) and edit the Machine's spec to retry, or delete the \
             Deployment (not retried: the disks would not change)"
        }
    }
}

/// Fail the running deploy now, without retries: another boot cannot fix `reason`.
fn fail_now(reason: FailureReason, why: String) -> Decision {
    let message = format!("{why}; {}", fix_for(reason));
    Decision {
        operation: Op::Finish(OperationResult::Failed, why),
        ..with_intent(
            stay(P::FailedDeployment, warning(reason.as_str(), message)),
            OFF_IDLE,
        )
    }
}

/// The reason a failed deploy failed with, if retrying could not have fixed it: the
/// ramdisk's last report is that failure.
fn failed_reason(obs: &Observation) -> Option<FailureReason> {
    obs.report
        .as_ref()
        .filter(|r| r.step == ProvisioningStep::Failed)
        .and_then(|r| r.reason)
}

/// Retry the running operation with `intent`, or fail into `failed` when the budget is spent.
fn retry_or_fail(
    obs: &Observation,
    policy: &Policy,
    kind: OperationKind,
    phase: P,
    intent: NewIntent,
    failed: P,
    why: String,
) -> Decision {
    let used = obs
        .operation
        .as_ref()
        .filter(|o| o.kind == kind)
        .map_or(0, |o| o.retries);
    if used < policy.retries {
        let message = format!("{why}; retrying ({} of {})", used + 1, policy.retries);
        return Decision {
            operation: Op::Retry,
            ..with_intent(stay(phase, warning("Retrying", message)), intent)
        };
    }
    let (reason, after) = match failed {
        P::FailedCommissioning => (
            "CommissioningFailed",
            "fix the cause, then edit the Machine's spec or toggle spec.maintenance to retry",
        ),
        _ => (
            "DeploymentFailed",
            "change the image, delete the Deployment, or edit the Machine's spec to retry",
        ),
    };
    let why = format!("{why} (gave up after {} retries)", policy.retries);
    let message = format!("{why}; {after}");
    Decision {
        operation: Op::Finish(OperationResult::Failed, why),
        ..with_intent(stay(failed, warning(reason, message)), OFF_IDLE)
    }
}

fn resume(obs: &Observation, policy: &Policy) -> Decision {
    let release_failed = obs
        .operation
        .as_ref()
        .is_some_and(|o| o.kind == OperationKind::Release && o.result == OperationResult::Failed);
    match &obs.deployment {
        Some(DeploymentView::Releasing { erase }) => start_release(*erase, policy),
        _ if release_failed => start_release(ErasePolicy::Quick, policy),
        _ if !obs.has_hardware => start_commission(policy),
        Some(DeploymentView::Active { image }) => {
            let done = obs.operation.as_ref().is_some_and(|o| {
                o.kind == OperationKind::Deploy && o.result == OperationResult::Succeeded
            });
            if done && operation_image(obs) == Some(image.as_str()) {
                stay(P::Deployed, report(true, "Deployed", DEPLOYED))
            } else {
                start_deploy(image, policy)
            }
        }
        None => to_ready(obs, READY),
    }
}

fn to_ready(obs: &Observation, message: &str) -> Decision {
    let d = stay(P::Ready, report(true, "Ready", message));
    if intent_is(obs, OFF_IDLE) {
        d
    } else {
        with_intent(d, OFF_IDLE)
    }
}

/// Condition messages, one per waiting state, so that waiting never rewrites status.
const COMMISSIONING: &str = "taking a hardware inventory in the ramdisk";
const READY: &str = "ready to deploy";
const DEPLOYED: &str = "the deployed OS runs from disk";
const BOOTING_OS: &str = "image written; booting it from disk";
const POWERING_OFF: &str = "releasing: powering off";
const POWERED_OFF: &str =
    "deployed, powered off as asked (spec.power: Off); set spec.power to On to boot it again";
const ENTERING_RESCUE: &str = "booting the rescue ramdisk as asked (spec.rescue); the \
     address to ssh to follows here";
/// Entering and waiting say the same, so that waiting writes nothing.
const BOOTING_DEPLOYED_OS: &str = "powered on or cycled as asked (spec.power, \
     spec.powerCycleRequest): booting the deployed OS from disk, waiting for it to check in";

fn erasing(erase: ErasePolicy) -> String {
    format!("releasing: erasing disks ({erase:?})")
}

fn writing(image: &str) -> String {
    format!("writing {image}")
}

fn start_commission(policy: &Policy) -> Decision {
    let d = stay(
        P::Commissioning,
        report(false, "Commissioning", COMMISSIONING),
    );
    Decision {
        operation: Op::Start(OperationKind::Commission, None),
        requeue_after: Some(policy.commission_timeout),
        ..with_intent(d, RAMDISK_COMMISSION)
    }
}

fn commissioning(obs: &Observation, policy: &Policy) -> Decision {
    if !intent_is(obs, RAMDISK_COMMISSION) || !running(obs, OperationKind::Commission) {
        return start_commission(policy);
    }
    let retry = |why: String| {
        retry_or_fail(
            obs,
            policy,
            OperationKind::Commission,
            P::Commissioning,
            RAMDISK_COMMISSION,
            P::FailedCommissioning,
            why,
        )
    };
    if succeeded(obs) && obs.has_hardware {
        let d = with_intent(stay(P::Ready, report(true, "Ready", READY)), OFF_IDLE);
        return Decision {
            operation: Op::Finish(
                OperationResult::Succeeded,
                "hardware inventory taken".into(),
            ),
            ..d
        };
    }
    if succeeded(obs) {
        return retry("the ramdisk reported success but no hardware inventory arrived".into());
    }
    if let Some(why) = failure(obs) {
        return retry(format!("commissioning failed: {why}"));
    }
    if intent_age(obs) >= policy.commission_timeout {
        return retry(format!(
            "no hardware inventory within {}s{}",
            policy.commission_timeout.as_secs(),
            last_step(obs)
        ));
    }
    wait(
        obs,
        P::Commissioning,
        policy.commission_timeout,
        report(false, "Commissioning", COMMISSIONING),
    )
}

fn ready(obs: &Observation, policy: &Policy) -> Decision {
    match &obs.deployment {
        Some(DeploymentView::Active { image }) => start_deploy(image, policy),
        Some(DeploymentView::Releasing { .. }) => Decision {
            release: true,
            ..to_ready(obs, READY)
        },
        None => to_ready(obs, READY),
    }
}

fn allocated(obs: &Observation, policy: &Policy) -> Decision {
    match &obs.deployment {
        Some(DeploymentView::Active { image }) => start_deploy(image, policy),
        // Nothing was written yet: no erase needed.
        _ => Decision {
            release: true,
            ..to_ready(obs, READY)
        },
    }
}

fn start_deploy(image: &str, policy: &Policy) -> Decision {
    let d = stay(P::Deploying, report(false, "Deploying", writing(image)));
    Decision {
        operation: Op::Start(OperationKind::Deploy, Some(image.to_string())),
        requeue_after: Some(policy.deploy_timeout),
        ..with_intent(d, RAMDISK_DEPLOY)
    }
}

fn deploying(obs: &Observation, policy: &Policy) -> Decision {
    let image = match &obs.deployment {
        Some(DeploymentView::Active { image }) => image,
        Some(DeploymentView::Releasing { erase }) => return start_release(*erase, policy),
        None => return start_release(ErasePolicy::Quick, policy),
    };
    if operation_image(obs) != Some(image.as_str()) || !running(obs, OperationKind::Deploy) {
        return start_deploy(image, policy);
    }
    let retry = |why: String| {
        retry_or_fail(
            obs,
            policy,
            OperationKind::Deploy,
            P::Deploying,
            RAMDISK_DEPLOY,
            P::FailedDeployment,
            why,
        )
    };
    if intent_is(obs, RAMDISK_DEPLOY) {
        if succeeded(obs) {
            let d = stay(P::Deploying, report(false, "BootingOS", BOOTING_OS));
            return Decision {
                requeue_after: Some(policy.boot_timeout),
                ..with_intent(d, DISK_RUN)
            };
        }
        if let Some((reason, why)) = permanent_failure(obs) {
            return fail_now(reason, format!("writing the image failed: {why}"));
        }
        if let Some(why) = failure(obs) {
            return retry(format!("writing the image failed: {why}"));
        }
        if intent_age(obs) >= policy.deploy_timeout {
            return retry(format!(
                "image not written within {}s{}",
                policy.deploy_timeout.as_secs(),
                last_step(obs)
            ));
        }
        return wait(
            obs,
            P::Deploying,
            policy.deploy_timeout,
            report(false, "Deploying", writing(image)),
        );
    }
    if intent_is(obs, DISK_RUN) {
        if os_booted_since_intent(obs) {
            let d = stay(P::Deployed, report(true, "Deployed", DEPLOYED));
            return Decision {
                operation: Op::Finish(OperationResult::Succeeded, "deployed".into()),
                ..d
            };
        }
        if intent_age(obs) >= policy.boot_timeout {
            return retry(format!(
                "the OS did not check in within {}s of booting from disk",
                policy.boot_timeout.as_secs()
            ));
        }
        return wait(
            obs,
            P::Deploying,
            policy.boot_timeout,
            report(false, "BootingOS", BOOTING_OS),
        );
    }
    start_deploy(image, policy)
}

fn deployed(obs: &Observation, policy: &Policy) -> Decision {
    match &obs.deployment {
        // The image changed: redeploy.
        Some(DeploymentView::Active { image }) if operation_image(obs) != Some(image.as_str()) => {
            start_deploy(image, policy)
        }
        Some(DeploymentView::Active { .. }) => deployed_power(obs, policy),
        Some(DeploymentView::Releasing { erase }) => start_release(*erase, policy),
        None => start_release(ErasePolicy::Quick, policy),
    }
}

/// A Deployed machine follows `spec.power` and `spec.powerCycleRequest`; the phase stays
/// Deployed throughout (the Deployment keeps its machine).
fn deployed_power(obs: &Observation, policy: &Policy) -> Decision {
    if obs.wants_rescue {
        return rescue(obs, policy, P::Deployed);
    }
    if obs.wants_off {
        let d = stay(P::Deployed, report(true, "PoweredOff", POWERED_OFF));
        return if intent_is(obs, OFF_STOP) {
            d
        } else {
            with_intent(d, OFF_STOP)
        };
    }
    if intent_is(obs, OFF_STOP) || intent_is(obs, RAMDISK_RESCUE) {
        // Back on, or out of rescue: the boot from disk also answers a cycle asked for
        // meanwhile (one boot).
        let mut d = with_intent(
            stay(P::Deployed, report(true, "BootingOS", BOOTING_DEPLOYED_OS)),
            DISK_RUN,
        );
        d.power_cycle_handled = obs.power_cycle.clone();
        return d;
    }
    if let Some(request) = &obs.power_cycle {
        let mut d = with_intent(
            stay(P::Deployed, report(true, "BootingOS", BOOTING_DEPLOYED_OS)),
            DISK_RUN,
        );
        d.power_cycle_handled = Some(request.clone());
        return d;
    }
    if intent_is(obs, DISK_RUN) && !os_booted_since_intent(obs) {
        // Powered on again or cycled: the OS has not checked in since.
        if intent_age(obs) >= policy.boot_timeout {
            return stay(
                P::Deployed,
                warning(
                    "OSNotCheckedIn",
                    format!(
                        "the deployed OS did not check in within {}s of being powered on; \
                         look at the machine's console, or set spec.powerCycleRequest to a \
                         new value to cycle it again",
                        policy.boot_timeout.as_secs()
                    ),
                ),
            );
        }
        return wait(
            obs,
            P::Deployed,
            policy.boot_timeout,
            report(true, "BootingOS", BOOTING_DEPLOYED_OS),
        );
    }
    stay(P::Deployed, report(true, "Deployed", DEPLOYED))
}

/// Rescue mode (`spec.rescue`) of a Deployed or Broken machine: the ramdisk with an SSH
/// server, the disks untouched, the phase kept (a Deployment keeps its machine). A new
/// `spec.powerCycleRequest` boots the rescue ramdisk again.
fn rescue(obs: &Observation, policy: &Policy, phase: P) -> Decision {
    // A broken server stays not ready, rescued or not.
    let ready = phase == P::Deployed;
    if !intent_is(obs, RAMDISK_RESCUE) || obs.power_cycle.is_some() {
        let mut d = with_intent(
            stay(phase, report(ready, "EnteringRescue", ENTERING_RESCUE)),
            RAMDISK_RESCUE,
        );
        d.power_cycle_handled = obs.power_cycle.clone();
        d.requeue_after = Some(policy.boot_timeout);
        return d;
    }
    let attempt = obs.intent.as_ref().map(|i| i.attempt);
    let reported = obs
        .rescue_report
        .as_ref()
        .filter(|r| Some(r.attempt) == attempt);
    let said = |r: &ProvisioningReport| r.message.clone().unwrap_or_default();
    match reported {
        Some(r) if r.step == ProvisioningStep::Succeeded => stay(
            phase,
            report(
                ready,
                "Rescue",
                format!(
                    "in rescue mode: {}; remove spec.rescue to leave it ({})",
                    said(r),
                    if phase == P::Broken {
                        "the machine is then powered off"
                    } else {
                        "the deployed OS then boots from disk"
                    }
                ),
            ),
        ),
        Some(r) => stay(
            phase,
            warning(
                "RescueFailed",
                format!(
                    "the rescue ramdisk failed: {}; set spec.powerCycleRequest to a new value \
                     to boot it again, or remove spec.rescue",
                    said(r)
                ),
            ),
        ),
        None if intent_age(obs) >= policy.boot_timeout => stay(
            phase,
            warning(
                "RescueNotReached",
                format!(
                    "the rescue ramdisk did not check in within {}s; look at the machine's \
                     console, or set spec.powerCycleRequest to a new value to boot it again",
                    policy.boot_timeout.as_secs()
                ),
            ),
        ),
        None => wait(
            obs,
            phase,
            policy.boot_timeout,
            report(ready, "EnteringRescue", ENTERING_RESCUE),
        ),
    }
}

/// Whether the deployed OS checked in after the current intent was issued.
fn os_booted_since_intent(obs: &Observation) -> bool {
    let issued = issued_at(obs);
    obs.os_booted_at
        .is_some_and(|b| issued.is_none_or(|i| b >= i))
}

fn start_release(erase: ErasePolicy, policy: &Policy) -> Decision {
    let (intent, timeout, message) = match erase {
        ErasePolicy::None => (OFF_IDLE, policy.power_timeout, POWERING_OFF.to_string()),
        other => (RAMDISK_ERASE, policy.erase_timeout, erasing(other)),
    };
    let d = stay(P::Releasing, report(false, "Releasing", message));
    Decision {
        operation: Op::Start(OperationKind::Release, None),
        requeue_after: Some(timeout),
        ..with_intent(d, intent)
    }
}

fn release_erase(obs: &Observation) -> ErasePolicy {
    match &obs.deployment {
        Some(DeploymentView::Releasing { erase }) => *erase,
        _ => ErasePolicy::Quick,
    }
}

fn releasing(obs: &Observation, policy: &Policy) -> Decision {
    if obs
        .operation
        .as_ref()
        .is_some_and(|o| o.kind == OperationKind::Release && o.result == OperationResult::Failed)
    {
        let why = obs
            .operation
            .as_ref()
            .and_then(|o| o.message.clone())
            .unwrap_or_default();
        return stay(
            P::Releasing,
            warning(
                "EraseFailed",
                format!(
                    "{why}; the machine stays out of the pool: fix it, then toggle spec.maintenance to retry"
                ),
            ),
        );
    }
    if !running(obs, OperationKind::Release) {
        return start_release(release_erase(obs), policy);
    }
    let done = |message: &str| Decision {
        release: true,
        operation: Op::Finish(OperationResult::Succeeded, message.to_string()),
        ..to_ready(obs, READY)
    };
    if intent_is(obs, RAMDISK_ERASE) {
        let give_up = |why: String| {
            let used = obs.operation.as_ref().map_or(0, |o| o.retries);
            if used < policy.retries {
                let message = format!("{why}; retrying ({} of {})", used + 1, policy.retries);
                return Decision {
                    operation: Op::Retry,
                    ..with_intent(
                        stay(P::Releasing, warning("Retrying", message)),
                        RAMDISK_ERASE,
                    )
                };
            }
            Decision {
                release: true,
                operation: Op::Finish(OperationResult::Failed, why.clone()),
                ..with_intent(
                    stay(
                        P::Releasing,
                        warning(
                            "EraseFailed",
                            format!(
                                "{why}; the machine stays out of the pool: fix it, then toggle spec.maintenance to retry"
                            ),
                        ),
                    ),
                    OFF_IDLE,
                )
            }
        };
        if succeeded(obs) {
            return done("released; disks erased");
        }
        if let Some(why) = failure(obs) {
            return give_up(format!("erasing failed: {why}"));
        }
        if intent_age(obs) >= policy.erase_timeout {
            return give_up(format!(
                "disks not erased within {}s{}",
                policy.erase_timeout.as_secs(),
                last_step(obs)
            ));
        }
        return wait(
            obs,
            P::Releasing,
            policy.erase_timeout,
            report(false, "Releasing", erasing(release_erase(obs))),
        );
    }
    if intent_is(obs, OFF_IDLE) {
        let attempt = obs.intent.as_ref().map_or(0, |i| i.attempt);
        if obs.applied_attempt.is_some_and(|a| a >= attempt) {
            return done("released");
        }
        if intent_age(obs) >= policy.power_timeout {
            let mut d = done("released; the BMC did not confirm power-off");
            d.report.severity = Severity::Warning;
            return d;
        }
        return wait(
            obs,
            P::Releasing,
            policy.power_timeout,
            report(false, "Releasing", POWERING_OFF),
        );
    }
    start_release(release_erase(obs), policy)
}

fn failed_commissioning(obs: &Observation, policy: &Policy) -> Decision {
    if obs.spec_changed {
        return start_commission(policy);
    }
    let why = obs
        .operation
        .as_ref()
        .and_then(|o| o.message.clone())
        .unwrap_or_else(|| "commissioning failed".into());
    stay(
        P::FailedCommissioning,
        warning(
            "CommissioningFailed",
            format!(
                "{why}; fix the cause, then edit the Machine's spec or toggle spec.maintenance to retry"
            ),
        ),
    )
}

fn failed_deployment(obs: &Observation, policy: &Policy) -> Decision {
    match &obs.deployment {
        Some(DeploymentView::Active { image })
            if obs.spec_changed || operation_image(obs) != Some(image.as_str()) =>
        {
            start_deploy(image, policy)
        }
        Some(DeploymentView::Active { .. }) => {
            let why = obs
                .operation
                .as_ref()
                .and_then(|o| o.message.clone())
                .unwrap_or_else(|| "deploying failed".into());
            let report = match failed_reason(obs) {
                Some(reason) => warning(reason.as_str(), format!("{why}; {}", fix_for(reason))),
                None => warning(
                    "DeploymentFailed",
                    format!(
                        "{why}; change the image, delete the Deployment, or edit the Machine's spec to retry"
                    ),
                ),
            };
            stay(P::FailedDeployment, report)
        }
        Some(DeploymentView::Releasing { erase }) => start_release(*erase, policy),
        None => start_release(ErasePolicy::Quick, policy),
    }
}
