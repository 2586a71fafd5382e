//! Table tests of the lifecycle: every transition, every timeout, and impossible inputs.

use std::time::Duration;

use ironpool_crds::deployment::ErasePolicy;
use ironpool_crds::machine::{
    BootIntent, BootPurpose as Pu, BootTarget as T, MachinePhase as P, Operation,
    OperationKind as K, OperationResult as R, ProvisioningReport, ProvisioningStep as S,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;

use super::*;

const NOW: i64 = 1_800_000_000;
const IMG: &str = "http://img/os.raw@sha256:aa";

fn at(secs_ago: i64) -> Timestamp {
    Timestamp::from_second(NOW - secs_ago).unwrap()
}

fn base(phase: Option<P>) -> Observation {
    Observation {
        now: at(0),
        phase,
        maintenance: false,
        broken: false,
        wants_off: false,
        wants_rescue: false,
        power_cycle: None,
        spec_changed: false,
        intent: None,
        applied_attempt: None,
        report: None,
        rescue_report: None,
        os_booted_at: None,
        has_hardware: false,
        operation: None,
        deployment: None,
    }
}

/// Builder steps for observations.
trait Obs: Sized {
    fn o(self) -> Observation;
    fn intent(self, target: T, purpose: Pu, attempt: i64, secs_ago: i64) -> Observation {
        let mut o = self.o();
        o.intent = Some(BootIntent {
            target,
            purpose,
            attempt,
            issued_at: Some(MicroTime(at(secs_ago))),
        });
        o
    }
    fn report(self, attempt: i64, step: S) -> Observation {
        let mut o = self.o();
        o.report = Some(ProvisioningReport {
            attempt,
            step,
            bytes_written: None,
            bytes_total: None,
            message: Some("disk on fire".into()),
            reason: None,
            updated_at: None,
        });
        o
    }
    fn op(self, kind: K, result: R, retries: i32) -> Observation {
        let mut o = self.o();
        let image = (kind == K::Deploy).then(|| IMG.to_string());
        o.operation = Some(Operation {
            kind,
            started: Time(at(100)),
            finished: None,
            result,
            retries,
            image,
            message: Some("it broke".into()),
        });
        o
    }
    fn hw(self) -> Observation {
        let mut o = self.o();
        o.has_hardware = true;
        o
    }
    fn active(self, image: &str) -> Observation {
        let mut o = self.o();
        o.deployment = Some(DeploymentView::Active {
            image: image.into(),
        });
        o
    }
    fn deleting(self, erase: ErasePolicy) -> Observation {
        let mut o = self.o();
        o.deployment = Some(DeploymentView::Releasing { erase });
        o
    }
    fn booted(self, secs_ago: i64) -> Observation {
        let mut o = self.o();
        o.os_booted_at = Some(at(secs_ago));
        o
    }
    fn applied(self, attempt: i64) -> Observation {
        let mut o = self.o();
        o.applied_attempt = Some(attempt);
        o
    }
    fn power(self, wants_off: bool, power_cycle: Option<&str>) -> Observation {
        let mut o = self.o();
        o.wants_off = wants_off;
        o.power_cycle = power_cycle.map(str::to_string);
        o
    }
    /// spec.rescue set, and the rescue ramdisk's report for `attempt` (if any).
    fn rescue(self, reported: Option<(i64, S)>) -> Observation {
        let mut o = self.o();
        o.wants_rescue = true;
        o.rescue_report = reported.map(|(attempt, step)| ProvisioningReport {
            attempt,
            step,
            bytes_written: None,
            bytes_total: None,
            message: Some("rescue shell ready: ssh root@10.77.0.60".into()),
            reason: None,
            updated_at: None,
        });
        o
    }
    fn flags(self, maintenance: bool, broken: bool, spec_changed: bool) -> Observation {
        let mut o = self.o();
        o.maintenance = maintenance;
        o.broken = broken;
        o.spec_changed = spec_changed;
        o
    }
}

impl Obs for Observation {
    fn o(self) -> Observation {
        self
    }
}

fn ph(p: P) -> Observation {
    base(Some(p))
}

/// What a case expects: phase, new intent, operation change (by name), release, ready.
struct Want {
    phase: P,
    intent: Option<(T, Pu)>,
    op: &'static str,
    release: bool,
    reason: &'static str,
}

fn want(
    phase: P,
    intent: Option<(T, Pu)>,
    op: &'static str,
    release: bool,
    reason: &'static str,
) -> Want {
    Want {
        phase,
        intent,
        op,
        release,
        reason,
    }
}

fn op_name(op: &OperationChange) -> String {
    match op {
        OperationChange::Keep => "keep".into(),
        OperationChange::Start(k, _) => format!("start {k:?}"),
        OperationChange::Retry => "retry".into(),
        OperationChange::Finish(r, _) => format!("finish {r:?}"),
    }
}

const COMM: Option<(T, Pu)> = Some((T::Ramdisk, Pu::Commission));
const DEPL: Option<(T, Pu)> = Some((T::Ramdisk, Pu::Deploy));
const ERASE: Option<(T, Pu)> = Some((T::Ramdisk, Pu::Erase));
const RUN: Option<(T, Pu)> = Some((T::Disk, Pu::Run));
const OFF: Option<(T, Pu)> = Some((T::Off, Pu::Idle));
const STOP: Option<(T, Pu)> = Some((T::Off, Pu::Stop));
const RESCUE: Option<(T, Pu)> = Some((T::Ramdisk, Pu::Rescue));

fn cases() -> Vec<(&'static str, Observation, Want)> {
    let p = Policy::default();
    let comm_to = p.commission_timeout.as_secs() as i64;
    let depl_to = p.deploy_timeout.as_secs() as i64;
    let boot_to = p.boot_timeout.as_secs() as i64;
    let erase_to = p.erase_timeout.as_secs() as i64;
    let power_to = p.power_timeout.as_secs() as i64;
    let commissioning = || {
        ph(P::Commissioning)
            .intent(T::Ramdisk, Pu::Commission, 3, 10)
            .op(K::Commission, R::Running, 0)
    };
    let writing = || {
        ph(P::Deploying)
            .active(IMG)
            .intent(T::Ramdisk, Pu::Deploy, 5, 10)
            .op(K::Deploy, R::Running, 0)
            .hw()
    };
    let booting = || {
        ph(P::Deploying)
            .active(IMG)
            .intent(T::Disk, Pu::Run, 6, 10)
            .op(K::Deploy, R::Running, 0)
            .hw()
    };
    let erasing = || {
        ph(P::Releasing)
            .deleting(ErasePolicy::Quick)
            .intent(T::Ramdisk, Pu::Erase, 8, 10)
            .op(K::Release, R::Running, 0)
            .hw()
    };
    let powering_off = || {
        ph(P::Releasing)
            .deleting(ErasePolicy::None)
            .intent(T::Off, Pu::Idle, 8, 10)
            .op(K::Release, R::Running, 0)
            .hw()
    };
    vec![
        // New machines
        (
            "unseen machine commissions",
            base(None),
            want(
                P::Commissioning,
                COMM,
                "start Commission",
                false,
                "Commissioning",
            ),
        ),
        (
            "new machine commissions",
            ph(P::New),
            want(
                P::Commissioning,
                COMM,
                "start Commission",
                false,
                "Commissioning",
            ),
        ),
        // Commissioning
        (
            "commissioning waits",
            commissioning(),
            want(P::Commissioning, None, "keep", false, "Commissioning"),
        ),
        (
            "commissioning succeeds",
            commissioning().report(3, S::Succeeded).hw(),
            want(P::Ready, OFF, "finish Succeeded", false, "Ready"),
        ),
        (
            "success without inventory retries",
            commissioning().report(3, S::Succeeded),
            want(P::Commissioning, COMM, "retry", false, "Retrying"),
        ),
        (
            "commissioning failure retries",
            commissioning().report(3, S::Failed),
            want(P::Commissioning, COMM, "retry", false, "Retrying"),
        ),
        (
            "commissioning timeout retries",
            commissioning().intent(T::Ramdisk, Pu::Commission, 3, comm_to + 1),
            want(P::Commissioning, COMM, "retry", false, "Retrying"),
        ),
        (
            "commissioning out of retries fails",
            commissioning()
                .report(3, S::Failed)
                .op(K::Commission, R::Running, 2),
            want(
                P::FailedCommissioning,
                OFF,
                "finish Failed",
                false,
                "CommissioningFailed",
            ),
        ),
        (
            "commissioning timeout out of retries fails",
            commissioning()
                .intent(T::Ramdisk, Pu::Commission, 3, comm_to)
                .op(K::Commission, R::Running, 2),
            want(
                P::FailedCommissioning,
                OFF,
                "finish Failed",
                false,
                "CommissioningFailed",
            ),
        ),
        (
            "report of an older attempt is ignored",
            commissioning().report(2, S::Succeeded).hw(),
            want(P::Commissioning, None, "keep", false, "Commissioning"),
        ),
        (
            "commissioning without its intent reissues it",
            ph(P::Commissioning),
            want(
                P::Commissioning,
                COMM,
                "start Commission",
                false,
                "Commissioning",
            ),
        ),
        (
            "commissioning with a foreign intent reissues it",
            ph(P::Commissioning)
                .intent(T::Disk, Pu::Run, 4, 10)
                .op(K::Commission, R::Running, 0),
            want(
                P::Commissioning,
                COMM,
                "start Commission",
                false,
                "Commissioning",
            ),
        ),
        // Failed commissioning
        (
            "failed commissioning holds",
            ph(P::FailedCommissioning).op(K::Commission, R::Failed, 2),
            want(
                P::FailedCommissioning,
                None,
                "keep",
                false,
                "CommissioningFailed",
            ),
        ),
        (
            "spec edit recommissions",
            ph(P::FailedCommissioning).flags(false, false, true),
            want(
                P::Commissioning,
                COMM,
                "start Commission",
                false,
                "Commissioning",
            ),
        ),
        // Ready and allocation
        (
            "ready powers off",
            ph(P::Ready).hw(),
            want(P::Ready, OFF, "keep", false, "Ready"),
        ),
        (
            "ready and off stays",
            ph(P::Ready).hw().intent(T::Off, Pu::Idle, 4, 10),
            want(P::Ready, None, "keep", false, "Ready"),
        ),
        (
            "ready with a claim deploys",
            ph(P::Ready).hw().active(IMG),
            want(P::Deploying, DEPL, "start Deploy", false, "Deploying"),
        ),
        (
            "allocated deploys",
            ph(P::Allocated).hw().active(IMG),
            want(P::Deploying, DEPL, "start Deploy", false, "Deploying"),
        ),
        (
            "allocated then deleted frees without erase",
            ph(P::Allocated).hw().deleting(ErasePolicy::Full),
            want(P::Ready, OFF, "keep", true, "Ready"),
        ),
        (
            "allocated to a vanished deployment frees",
            ph(P::Allocated).hw(),
            want(P::Ready, OFF, "keep", true, "Ready"),
        ),
        (
            "ready with a stale deleting ref frees",
            ph(P::Ready)
                .hw()
                .deleting(ErasePolicy::Quick)
                .intent(T::Off, Pu::Idle, 4, 10),
            want(P::Ready, None, "keep", true, "Ready"),
        ),
        // Deploying: writing the image
        (
            "writing waits",
            writing(),
            want(P::Deploying, None, "keep", false, "Deploying"),
        ),
        (
            "image written boots from disk",
            writing().report(5, S::Succeeded),
            want(P::Deploying, RUN, "keep", false, "BootingOS"),
        ),
        (
            "write failure retries",
            writing().report(5, S::Failed),
            want(P::Deploying, DEPL, "retry", false, "Retrying"),
        ),
        (
            "write timeout retries",
            writing().intent(T::Ramdisk, Pu::Deploy, 5, depl_to),
            want(P::Deploying, DEPL, "retry", false, "Retrying"),
        ),
        (
            "write failure out of retries fails",
            writing().report(5, S::Failed).op(K::Deploy, R::Running, 2),
            want(
                P::FailedDeployment,
                OFF,
                "finish Failed",
                false,
                "DeploymentFailed",
            ),
        ),
        (
            "image changed mid-write restarts",
            writing().active("http://img/new.raw@sha256:bb"),
            want(P::Deploying, DEPL, "start Deploy", false, "Deploying"),
        ),
        (
            "deleted mid-write releases with erase",
            writing().deleting(ErasePolicy::Full),
            want(P::Releasing, ERASE, "start Release", false, "Releasing"),
        ),
        (
            "vanished mid-write releases with quick erase",
            ph(P::Deploying).hw().op(K::Deploy, R::Running, 0),
            want(P::Releasing, ERASE, "start Release", false, "Releasing"),
        ),
        // Deploying: booting the OS
        (
            "booting waits",
            booting(),
            want(P::Deploying, None, "keep", false, "BootingOS"),
        ),
        (
            "OS check-in deploys",
            booting().booted(5),
            want(P::Deployed, None, "finish Succeeded", false, "Deployed"),
        ),
        (
            "check-in from before the intent is ignored",
            booting().booted(20),
            want(P::Deploying, None, "keep", false, "BootingOS"),
        ),
        (
            "boot timeout redeploys",
            booting().intent(T::Disk, Pu::Run, 6, boot_to),
            want(P::Deploying, DEPL, "retry", false, "Retrying"),
        ),
        (
            "boot timeout out of retries fails",
            booting()
                .intent(T::Disk, Pu::Run, 6, boot_to)
                .op(K::Deploy, R::Running, 2),
            want(
                P::FailedDeployment,
                OFF,
                "finish Failed",
                false,
                "DeploymentFailed",
            ),
        ),
        // Deployed
        (
            "deployed stays",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .hw(),
            want(P::Deployed, None, "keep", false, "Deployed"),
        ),
        (
            "spec.power Off powers a deployed machine off",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Disk, Pu::Run, 6, 100)
                .booted(50)
                .power(true, None),
            want(P::Deployed, STOP, "keep", false, "PoweredOff"),
        ),
        (
            "powered off as asked stays off",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Off, Pu::Stop, 7, 10)
                .booted(50)
                .power(true, Some("c1")),
            want(P::Deployed, None, "keep", false, "PoweredOff"),
        ),
        (
            "spec.rescue boots a deployed machine into the rescue ramdisk",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Disk, Pu::Run, 6, 100)
                .booted(50)
                .rescue(None),
            want(P::Deployed, RESCUE, "keep", false, "EnteringRescue"),
        ),
        (
            "waiting for the rescue ramdisk",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Ramdisk, Pu::Rescue, 7, 10)
                .booted(50)
                .rescue(Some((6, S::Succeeded))),
            want(P::Deployed, None, "keep", false, "EnteringRescue"),
        ),
        (
            "the rescue shell is up",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Ramdisk, Pu::Rescue, 7, 10)
                .booted(50)
                .rescue(Some((7, S::Succeeded))),
            want(P::Deployed, None, "keep", false, "Rescue"),
        ),
        (
            "the rescue ramdisk failed",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Ramdisk, Pu::Rescue, 7, 10)
                .rescue(Some((7, S::Failed))),
            want(P::Deployed, None, "keep", false, "RescueFailed"),
        ),
        (
            "the rescue ramdisk never checked in",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Ramdisk, Pu::Rescue, 7, boot_to + 1)
                .rescue(None),
            want(P::Deployed, None, "keep", false, "RescueNotReached"),
        ),
        (
            "out of rescue the deployed OS boots again",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Ramdisk, Pu::Rescue, 7, 10)
                .booted(50),
            want(P::Deployed, RUN, "keep", false, "BootingOS"),
        ),
        (
            "out of rescue with spec.power Off it stays off",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Ramdisk, Pu::Rescue, 7, 10)
                .power(true, None),
            want(P::Deployed, STOP, "keep", false, "PoweredOff"),
        ),
        (
            "a broken machine is rescued and stays Broken",
            ph(P::Broken)
                .intent(T::Off, Pu::Idle, 4, 100)
                .flags(false, true, false)
                .rescue(None),
            want(P::Broken, RESCUE, "keep", false, "EnteringRescue"),
        ),
        (
            "a broken machine out of rescue is powered off",
            ph(P::Broken)
                .intent(T::Ramdisk, Pu::Rescue, 5, 10)
                .flags(false, true, false),
            want(P::Broken, STOP, "keep", false, "Broken"),
        ),
        (
            "maintenance holds a machine with spec.rescue",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Disk, Pu::Run, 6, 100)
                .flags(true, false, false)
                .rescue(None),
            want(P::Maintenance, None, "keep", false, "Maintenance"),
        ),
        (
            "spec.power On boots the deployed OS again",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Off, Pu::Stop, 7, 10)
                .booted(50),
            want(P::Deployed, RUN, "keep", false, "BootingOS"),
        ),
        (
            "waiting for the OS after power-on",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Disk, Pu::Run, 8, 10)
                .booted(50),
            want(P::Deployed, None, "keep", false, "BootingOS"),
        ),
        (
            "the OS checked in after power-on",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Disk, Pu::Run, 8, 10)
                .booted(5),
            want(P::Deployed, None, "keep", false, "Deployed"),
        ),
        (
            "the OS never checked in after power-on stays Deployed with a warning",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Disk, Pu::Run, 8, boot_to)
                .booted(boot_to + 50),
            want(P::Deployed, None, "keep", false, "OSNotCheckedIn"),
        ),
        (
            "a new power-cycle request reboots once",
            ph(P::Deployed)
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0)
                .intent(T::Disk, Pu::Run, 6, 100)
                .booted(50)
                .power(false, Some("c1")),
            want(P::Deployed, RUN, "keep", false, "BootingOS"),
        ),
        (
            "image change redeploys",
            ph(P::Deployed)
                .active("http://img/v2.raw@sha256:bb")
                .op(K::Deploy, R::Succeeded, 0)
                .hw(),
            want(P::Deploying, DEPL, "start Deploy", false, "Deploying"),
        ),
        (
            "deleted deployment releases (quick)",
            ph(P::Deployed)
                .deleting(ErasePolicy::Quick)
                .op(K::Deploy, R::Succeeded, 0)
                .hw(),
            want(P::Releasing, ERASE, "start Release", false, "Releasing"),
        ),
        (
            "deleted deployment releases (none)",
            ph(P::Deployed)
                .deleting(ErasePolicy::None)
                .op(K::Deploy, R::Succeeded, 0)
                .hw(),
            want(P::Releasing, OFF, "start Release", false, "Releasing"),
        ),
        (
            "vanished deployment releases",
            ph(P::Deployed).op(K::Deploy, R::Succeeded, 0).hw(),
            want(P::Releasing, ERASE, "start Release", false, "Releasing"),
        ),
        // Failed deployment
        (
            "failed deployment holds",
            ph(P::FailedDeployment)
                .active(IMG)
                .op(K::Deploy, R::Failed, 2)
                .hw(),
            want(P::FailedDeployment, None, "keep", false, "DeploymentFailed"),
        ),
        (
            "new image retries a failed deployment",
            ph(P::FailedDeployment)
                .active("http://img/fixed.raw@sha256:cc")
                .op(K::Deploy, R::Failed, 2)
                .hw(),
            want(P::Deploying, DEPL, "start Deploy", false, "Deploying"),
        ),
        (
            "spec edit retries a failed deployment",
            ph(P::FailedDeployment)
                .active(IMG)
                .op(K::Deploy, R::Failed, 2)
                .hw()
                .flags(false, false, true),
            want(P::Deploying, DEPL, "start Deploy", false, "Deploying"),
        ),
        (
            "deleting a failed deployment erases",
            ph(P::FailedDeployment)
                .deleting(ErasePolicy::Quick)
                .op(K::Deploy, R::Failed, 2)
                .hw(),
            want(P::Releasing, ERASE, "start Release", false, "Releasing"),
        ),
        // Releasing
        (
            "erasing waits",
            erasing(),
            want(P::Releasing, None, "keep", false, "Releasing"),
        ),
        (
            "erase done frees",
            erasing().report(8, S::Succeeded),
            want(P::Ready, OFF, "finish Succeeded", true, "Ready"),
        ),
        (
            "erase failure retries",
            erasing().report(8, S::Failed),
            want(P::Releasing, ERASE, "retry", false, "Retrying"),
        ),
        (
            "erase timeout retries",
            erasing().intent(T::Ramdisk, Pu::Erase, 8, erase_to),
            want(P::Releasing, ERASE, "retry", false, "Retrying"),
        ),
        (
            "erase out of retries holds the machine",
            erasing().report(8, S::Failed).op(K::Release, R::Running, 2),
            want(P::Releasing, OFF, "finish Failed", true, "EraseFailed"),
        ),
        (
            "failed erase stays out of the pool",
            ph(P::Releasing).hw().op(K::Release, R::Failed, 2),
            want(P::Releasing, None, "keep", false, "EraseFailed"),
        ),
        (
            "power-off applied frees",
            powering_off().applied(8),
            want(P::Ready, None, "finish Succeeded", true, "Ready"),
        ),
        (
            "power-off waits",
            powering_off().applied(7),
            want(P::Releasing, None, "keep", false, "Releasing"),
        ),
        (
            "power-off timeout frees with a warning",
            powering_off().intent(T::Off, Pu::Idle, 8, power_to),
            want(P::Ready, None, "finish Succeeded", true, "Ready"),
        ),
        (
            "releasing without its intent restarts",
            ph(P::Releasing).deleting(ErasePolicy::Full).hw(),
            want(P::Releasing, ERASE, "start Release", false, "Releasing"),
        ),
        // Holds and resume
        (
            "broken wins over everything",
            writing().flags(true, true, false),
            want(P::Broken, None, "keep", false, "Broken"),
        ),
        (
            "maintenance holds",
            writing().flags(true, false, false),
            want(P::Maintenance, None, "keep", false, "Maintenance"),
        ),
        (
            "resume without hardware commissions",
            ph(P::Maintenance),
            want(
                P::Commissioning,
                COMM,
                "start Commission",
                false,
                "Commissioning",
            ),
        ),
        (
            "resume free machine is ready",
            ph(P::Maintenance).hw(),
            want(P::Ready, OFF, "keep", false, "Ready"),
        ),
        (
            "resume deployed stays deployed",
            ph(P::Broken)
                .hw()
                .active(IMG)
                .op(K::Deploy, R::Succeeded, 0),
            want(P::Deployed, None, "keep", false, "Deployed"),
        ),
        (
            "resume half-deployed redeploys",
            ph(P::Maintenance)
                .hw()
                .active(IMG)
                .op(K::Deploy, R::Running, 1),
            want(P::Deploying, DEPL, "start Deploy", false, "Deploying"),
        ),
        (
            "resume of a deleting deployment releases",
            ph(P::Maintenance).hw().deleting(ErasePolicy::Quick),
            want(P::Releasing, ERASE, "start Release", false, "Releasing"),
        ),
        (
            "resume after a failed erase erases again",
            ph(P::Maintenance).hw().op(K::Release, R::Failed, 2),
            want(P::Releasing, ERASE, "start Release", false, "Releasing"),
        ),
    ]
}

#[test]
fn every_case_decides_as_expected() {
    let policy = Policy::default();
    let mut failures = Vec::new();
    for (name, obs, w) in cases() {
        let d = decide(&obs, &policy);
        let got_intent = d.intent.map(|i| (i.target, i.purpose));
        let got = (
            d.phase,
            got_intent,
            op_name(&d.operation),
            d.release,
            d.report.reason,
        );
        let expected = (w.phase, w.intent, w.op.to_string(), w.release, w.reason);
        if got != expected {
            failures.push(format!("{name}:\n   got  {got:?}\n   want {expected:?}"));
        }
        assert!(!d.report.message.is_empty(), "{name}: empty message");
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_phase_is_covered() {
    let covered: Vec<Option<P>> = cases().into_iter().map(|(_, o, _)| o.phase).collect();
    for p in [
        P::New,
        P::Commissioning,
        P::Ready,
        P::Allocated,
        P::Deploying,
        P::Deployed,
        P::Releasing,
        P::FailedCommissioning,
        P::FailedDeployment,
        P::Broken,
        P::Maintenance,
    ] {
        assert!(covered.contains(&Some(p)), "{p:?} has no case");
    }
}

#[test]
fn waiting_requeues_when_the_timeout_expires() {
    let policy = Policy::default();
    let obs = ph(P::Commissioning)
        .intent(T::Ramdisk, Pu::Commission, 1, 60)
        .op(K::Commission, R::Running, 0);
    let d = decide(&obs, &policy);
    assert_eq!(
        d.requeue_after,
        Some(policy.commission_timeout - Duration::from_secs(60))
    );
    let late = ph(P::Commissioning)
        .intent(T::Ramdisk, Pu::Commission, 1, -30)
        .op(K::Commission, R::Running, 0);
    assert_eq!(
        decide(&late, &policy).requeue_after,
        Some(policy.commission_timeout),
        "intent from the future"
    );
}

#[test]
fn failures_name_the_cause_and_what_to_do() {
    let policy = Policy::default();
    let obs = ph(P::Commissioning)
        .intent(T::Ramdisk, Pu::Commission, 3, 10)
        .op(K::Commission, R::Running, 2)
        .report(3, S::Failed);
    let d = decide(&obs, &policy);
    assert!(
        d.report.message.contains("disk on fire"),
        "{}",
        d.report.message
    );
    assert!(
        d.report.message.contains("toggle spec.maintenance"),
        "{}",
        d.report.message
    );
    assert_eq!(d.report.severity, Severity::Warning);
    let timeout = ph(P::Commissioning)
        .intent(T::Ramdisk, Pu::Commission, 3, 1_000_000)
        .op(K::Commission, R::Running, 2);
    let d = decide(&timeout, &policy);
    assert!(
        d.report.message.contains("never reported"),
        "{}",
        d.report.message
    );
}

#[test]
fn no_auto_commission_waits_for_a_person() {
    let policy = Policy {
        auto_commission: false,
        ..Policy::default()
    };
    let d = decide(&ph(P::New), &policy);
    assert_eq!((d.phase, d.intent), (P::New, None));
    let d = decide(&base(None), &policy);
    assert_eq!(
        (d.phase, d.intent, d.report.reason),
        (P::New, None, "AwaitingCommission")
    );
}

#[test]
fn decisions_are_stable_once_applied() {
    // Applying a decision and deciding again may move on to a new phase, but must never
    // issue another intent in the same phase: the reconciler relies on this to never
    // repeat an action. Every chain settles within a few steps.
    let policy = Policy::default();
    for (name, obs, _) in cases() {
        let mut obs = obs;
        let mut settled = false;
        for _ in 0..4 {
            let d = decide(&obs, &policy);
            let next = apply(&obs, &d);
            let again = decide(&next, &policy);
            if again.phase == d.phase {
                assert!(
                    again.intent.is_none(),
                    "{name}: in {:?} decided {:?} then {:?}",
                    d.phase,
                    d.intent,
                    again.intent
                );
                settled = true;
                break;
            }
            obs = next;
        }
        assert!(settled, "{name}: no fixed point within 4 steps");
    }
}

/// What the reconciler writes for a decision, as the next observation sees it.
fn apply(obs: &Observation, d: &Decision) -> Observation {
    let mut next = obs.clone();
    next.phase = Some(d.phase);
    next.spec_changed = false;
    if let Some(i) = d.intent {
        let attempt = obs.intent.as_ref().map_or(1, |c| c.attempt + 1);
        next.intent = Some(BootIntent {
            target: i.target,
            purpose: i.purpose,
            attempt,
            issued_at: Some(MicroTime(obs.now)),
        });
    }
    if d.release {
        next.deployment = None;
    }
    if d.power_cycle_handled.is_some() {
        next.power_cycle = None;
    }
    next.operation = match &d.operation {
        OperationChange::Keep => obs.operation.clone(),
        OperationChange::Start(kind, image) => Some(Operation {
            kind: *kind,
            started: Time(obs.now),
            finished: None,
            result: R::Running,
            retries: 0,
            image: image.clone(),
            message: None,
        }),
        OperationChange::Retry => obs.operation.clone().map(|o| Operation {
            retries: o.retries + 1,
            ..o
        }),
        OperationChange::Finish(result, msg) => obs.operation.clone().map(|o| Operation {
            result: *result,
            message: Some(msg.clone()),
            finished: Some(Time(obs.now)),
            ..o
        }),
    };
    next
}

#[test]
fn waiting_never_changes_the_message() {
    // Each waiting state reports what its entry reported, so waiting writes nothing.
    let policy = Policy::default();
    for (name, obs, _) in cases() {
        let d = decide(&obs, &policy);
        if d.intent.is_none() || d.report.reason == "Retrying" {
            continue;
        }
        let next = apply(&obs, &d);
        let again = decide(&next, &policy);
        if again.phase == d.phase
            && again.intent.is_none()
            && again.operation == OperationChange::Keep
        {
            assert_eq!(again.report.message, d.report.message, "{name}");
        }
    }
}

/// The issue time and the check-in time are stored to the microsecond: an OS check-in left
/// from the previous deployment, earlier in the same second as the new Disk intent, must
/// not count for it after both went through the API (a whole-second issue time once let a
/// fast redeploy take the old check-in for the new one).
#[test]
fn a_check_in_earlier_in_the_intents_second_is_not_the_new_one() {
    let second = at(10);
    let mut obs = ph(P::Deploying)
        .active(IMG)
        .intent(T::Disk, Pu::Run, 6, 10)
        .op(K::Deploy, R::Running, 0)
        .hw();
    let issued = second + k8s_openapi::jiff::SignedDuration::from_millis(800);
    if let Some(i) = obs.intent.as_mut() {
        i.issued_at = Some(MicroTime(issued));
    }
    // Through the API and back, as the operator reads them.
    let intent: BootIntent =
        serde_json::from_value(serde_json::to_value(&obs.intent).unwrap()).unwrap();
    obs.intent = Some(intent);
    let record = ironpool_crds::machine::BootRecord {
        step: ironpool_crds::machine::BootStep::OsBooted,
        detail: None,
        at: MicroTime(second + k8s_openapi::jiff::SignedDuration::from_millis(500)),
    };
    let record: ironpool_crds::machine::BootRecord =
        serde_json::from_value(serde_json::to_value(&record).unwrap()).unwrap();
    obs.os_booted_at = Some(record.at.0);
    let d = decide(&obs, &Policy::default());
    assert_eq!(d.phase, P::Deploying, "{:?}", d.report);
    // A check-in after the issue time, in the same second, is the new one.
    obs.os_booted_at = Some(issued + k8s_openapi::jiff::SignedDuration::from_millis(100));
    assert_eq!(decide(&obs, &Policy::default()).phase, P::Deployed);
}

#[test]
fn rescue_says_where_to_log_in_and_a_cycle_boots_it_again() {
    let up = ph(P::Deployed)
        .active(IMG)
        .op(K::Deploy, R::Succeeded, 0)
        .intent(T::Ramdisk, Pu::Rescue, 7, 10)
        .rescue(Some((7, S::Succeeded)));
    let d = decide(&up, &Policy::default());
    assert!(
        d.report.message.contains("ssh root@10.77.0.60")
            && d.report.message.contains("remove spec.rescue"),
        "{}",
        d.report.message
    );
    assert!(d.report.ready && !d.transitions_from(&up));
    let cycled = decide(&up.power(false, Some("again")), &Policy::default());
    assert_eq!(cycled.intent.map(|i| (i.target, i.purpose)), RESCUE);
    assert_eq!(cycled.power_cycle_handled.as_deref(), Some("again"));
    // A changed image still redeploys: rescue never holds a Deployment's own change.
    let changed = ph(P::Deployed)
        .active("http://images/new.raw@sha256:22")
        .op(K::Deploy, R::Succeeded, 0)
        .intent(T::Ramdisk, Pu::Rescue, 7, 10)
        .rescue(Some((7, S::Succeeded)));
    assert_eq!(decide(&changed, &Policy::default()).phase, P::Deploying);
}

#[test]
fn a_power_cycle_request_is_recorded_with_its_reboot_intent() {
    let obs = ph(P::Deployed)
        .active(IMG)
        .op(K::Deploy, R::Succeeded, 0)
        .intent(T::Disk, Pu::Run, 6, 100)
        .booted(50)
        .power(false, Some("2026-12-07T11:00:00Z"));
    let d = decide(&obs, &Policy::default());
    assert_eq!(
        d.power_cycle_handled.as_deref(),
        Some("2026-12-07T11:00:00Z")
    );
    assert!(d.transitions_from(&obs));
    // Off wins over a cycle: the request waits, unrecorded.
    let off = decide(&obs.clone().power(true, Some("x")), &Policy::default());
    assert_eq!(off.power_cycle_handled, None);
    assert_eq!(off.report.reason, "PoweredOff");
    // Back on with the request still there: the one boot from disk answers it.
    let on = ph(P::Deployed)
        .active(IMG)
        .op(K::Deploy, R::Succeeded, 0)
        .intent(T::Off, Pu::Stop, 7, 10)
        .power(false, Some("x"));
    let d = decide(&on, &Policy::default());
    assert_eq!(d.intent.map(|i| (i.target, i.purpose)), RUN);
    assert_eq!(d.power_cycle_handled.as_deref(), Some("x"));
}
