//! The Machine lifecycle as a pure function: observed state in, next phase and actions out.
//!
//! ```text
//!  New -> Commissioning -> Ready -> Allocated -> Deploying -> Deployed
//!           |                ^                     |             |
//!           v                |                     v             v
//!   FailedCommissioning      +---- Releasing <-----+--- FailedDeployment
//!  Broken (spec.broken), Maintenance (spec.maintenance): held until cleared
//! ```
//!
//! Reconcilers gather an [`Observation`], call [`decide`], and carry out the [`Decision`]
//! (write status, issue the boot intent, emit the event). They never pick a phase
//! themselves. Every waiting step has a timeout and a retry budget from [`Policy`].

use std::time::Duration;

use ironpool_crds::deployment::ErasePolicy;
use ironpool_crds::machine::{
    BootIntent, BootPurpose, BootTarget, FailureReason, MachinePhase, Operation, OperationKind,
    OperationResult, ProvisioningReport, ProvisioningStep,
};
use k8s_openapi::jiff::Timestamp;

#[cfg(test)]
mod fail_fast_tests;
mod rules;
#[cfg(test)]
mod tests;

pub use rules::decide;

/// Timeouts and retry budget of the lifecycle.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Commission a New machine without being asked.
    pub auto_commission: bool,
    /// From boot intent to inventory reported.
    pub commission_timeout: Duration,
    /// From boot intent to image written.
    pub deploy_timeout: Duration,
    /// From "boot from disk" to the deployed OS checking in.
    pub boot_timeout: Duration,
    /// From boot intent to disks erased.
    pub erase_timeout: Duration,
    /// From an Off intent to the agent applying it.
    pub power_timeout: Duration,
    /// From power-on to the ramdisk (or the deployed OS) checking in, before a
    /// Deployment's status says the boot stalled and where (the step's own timeout then
    /// retries it).
    pub checkin_deadline: Duration,
    /// Retries after the first attempt of commission, deploy and erase.
    pub retries: i32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            auto_commission: true,
            commission_timeout: Duration::from_secs(30 * 60),
            deploy_timeout: Duration::from_secs(60 * 60),
            boot_timeout: Duration::from_secs(20 * 60),
            erase_timeout: Duration::from_secs(6 * 60 * 60),
            power_timeout: Duration::from_secs(10 * 60),
            checkin_deadline: Duration::from_secs(10 * 60),
            retries: 2,
        }
    }
}

/// The Deployment a machine is allocated to, as the lifecycle needs it.
#[derive(Clone, Debug, PartialEq)]
pub enum DeploymentView {
    /// The Deployment exists and wants its OS.
    Active {
        /// `<url or oci>@<checksum>` of the wanted image.
        image: String,
    },
    /// The Deployment is being deleted (or is gone): release the machine.
    Releasing {
        /// How to erase the disks.
        erase: ErasePolicy,
    },
}

/// Everything [`decide`] looks at.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Current time.
    pub now: Timestamp,
    /// Current phase; None for a Machine the operator has not seen yet.
    pub phase: Option<MachinePhase>,
    /// spec.maintenance.
    pub maintenance: bool,
    /// spec.broken.
    pub broken: bool,
    /// spec.power is Off.
    pub wants_off: bool,
    /// spec.rescue is set.
    pub wants_rescue: bool,
    /// spec.powerCycleRequest when it differs from status.powerCycleHandled.
    pub power_cycle: Option<String>,
    /// metadata.generation differs from status.observedGeneration.
    pub spec_changed: bool,
    /// The current boot intent.
    pub intent: Option<BootIntent>,
    /// The last intent attempt the agent applied.
    pub applied_attempt: Option<i64>,
    /// The ramdisk's last report.
    pub report: Option<ProvisioningReport>,
    /// The rescue ramdisk's last report (status.rescue).
    pub rescue_report: Option<ProvisioningReport>,
    /// When the deployed OS last checked in (boot flight recorder).
    pub os_booted_at: Option<Timestamp>,
    /// Commissioning found hardware.
    pub has_hardware: bool,
    /// The last operation.
    pub operation: Option<Operation>,
    /// The Deployment named by status.deploymentRef, if the machine is allocated.
    pub deployment: Option<DeploymentView>,
}

/// A new boot intent to issue (its attempt is the current one plus one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewIntent {
    /// Boot target.
    pub target: BootTarget,
    /// Why.
    pub purpose: BootPurpose,
}

/// How the last operation changes.
#[derive(Clone, Debug, PartialEq)]
pub enum OperationChange {
    /// Unchanged.
    Keep,
    /// A new operation starts (retries 0), with the image for Deploy.
    Start(OperationKind, Option<String>),
    /// The running operation retries once more.
    Retry,
    /// The running operation ends.
    Finish(OperationResult, String),
}

/// Severity of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Expected progress.
    Normal,
    /// Something a person may need to look at.
    Warning,
}

/// What to tell people: the Ready condition and an event.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Ready condition status.
    pub ready: bool,
    /// Condition and event reason, CamelCase.
    pub reason: &'static str,
    /// What is happening, for a person.
    pub message: String,
    /// Event severity.
    pub severity: Severity,
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Phase to record.
    pub phase: MachinePhase,
    /// Boot intent to issue, if a new one is needed.
    pub intent: Option<NewIntent>,
    /// Change to lastOperation.
    pub operation: OperationChange,
    /// Clear status.deploymentRef: the machine is free again.
    pub release: bool,
    /// Ready condition and event.
    pub report: Report,
    /// Record this spec.powerCycleRequest as carried out (its reboot intent is issued).
    pub power_cycle_handled: Option<String>,
    /// Look again after this long (a timeout expires then), if nothing changes before.
    pub requeue_after: Option<Duration>,
}

impl Decision {
    /// Whether this decision changes anything that must be written.
    pub fn transitions_from(&self, obs: &Observation) -> bool {
        obs.phase != Some(self.phase)
            || self.intent.is_some()
            || self.operation != OperationChange::Keep
            || self.release
            || self.power_cycle_handled.is_some()
    }
}

/// The report of the ramdisk for the current intent attempt, if it has one.
pub(crate) fn current_report(obs: &Observation) -> Option<&ProvisioningReport> {
    let attempt = obs.intent.as_ref()?.attempt;
    obs.report.as_ref().filter(|r| r.attempt == attempt)
}

/// Whether the ramdisk reported success for the current attempt.
pub(crate) fn succeeded(obs: &Observation) -> bool {
    current_report(obs).is_some_and(|r| r.step == ProvisioningStep::Succeeded)
}

/// The ramdisk's failure for the current attempt when another boot cannot fix it (a
/// checksum mismatch, no disk matching the hints): the operator fails at once instead of
/// booting the ramdisk again.
pub(crate) fn permanent_failure(obs: &Observation) -> Option<(FailureReason, String)> {
    let r = current_report(obs).filter(|r| r.step == ProvisioningStep::Failed)?;
    Some((r.reason?, failure(obs)?))
}

/// The failure message the ramdisk reported for the current attempt.
pub(crate) fn failure(obs: &Observation) -> Option<String> {
    current_report(obs)
        .filter(|r| r.step == ProvisioningStep::Failed)
        .map(|r| {
            r.message
                .clone()
                .unwrap_or_else(|| "the ramdisk reported a failure".into())
        })
}
