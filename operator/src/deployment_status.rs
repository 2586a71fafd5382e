//! A Deployment's status as a pure function of its allocated machine (or of why it has
//! none), and the write of that status. What stops the machine ([`crate::blocker`]) and a
//! failure are the Deployment's own reason and progress, not only the Machine's.

use ironpool_crds::conditions::{self, READY, Status};
use ironpool_crds::deployment::{DeploymentPhase, DeploymentStatus, Progress, StepTiming};
use ironpool_crds::machine::{BootPurpose, BootTarget, MachinePhase, ProvisioningStep};
use ironpool_crds::{Deployment, LocalObjectRef, Machine};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::blocker::{self, Blocker};
use crate::context::MANAGER;
use crate::error::{Error, conflict_as};
use crate::lifecycle::Policy;

/// How many step timings a Deployment keeps.
const TIMINGS_KEPT: usize = 12;

fn gib(bytes: i64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1u32 << 30))
}

/// Progress of `m`'s current work, from its boot intent and the ramdisk's report.
pub fn progress(m: &Machine) -> Option<Progress> {
    let st = m.status.as_ref()?;
    let phase = st.phase?;
    let step = |s: &str, percent: Option<i32>, summary: String| Progress {
        step: s.into(),
        percent,
        summary: Some(summary),
        ..Default::default()
    };
    match phase {
        MachinePhase::Allocated => {
            return Some(step(
                "Allocated",
                Some(0),
                "allocated; deploying next".into(),
            ));
        }
        MachinePhase::Deployed => {
            // Powered off or rebooting as a person asked: still deployed, and saying so.
            let summary = match conditions::get(&st.conditions, READY) {
                Some(c) if c.reason != "Deployed" => format!("Deployed ({})", c.reason),
                _ => "Deployed".into(),
            };
            return Some(step("Deployed", Some(100), summary));
        }
        _ => {}
    }
    if phase == MachinePhase::FailedDeployment {
        let reason = conditions::get(&st.conditions, READY)
            .map_or("DeploymentFailed", |c| c.reason.as_str());
        return Some(step("Failed", None, format!("Failed: {reason}")));
    }
    let intent = st.boot_intent.as_ref()?;
    if intent.target == BootTarget::Off {
        let applied = st
            .boot_applied
            .as_ref()
            .is_some_and(|a| a.attempt >= intent.attempt);
        return Some(if applied {
            step("PoweredOff", Some(100), "PoweredOff".into())
        } else {
            step(
                "PoweringOff",
                None,
                format!("PoweringOff (boot intent #{})", intent.attempt),
            )
        });
    }
    let report = st
        .provisioning
        .as_ref()
        .filter(|r| r.attempt == intent.attempt);
    match (intent.purpose, report) {
        (BootPurpose::Run, _) => Some(step(
            "BootingOS",
            Some(100),
            "BootingOS: image written, booting from disk".into(),
        )),
        (_, Some(r))
            if r.step == ProvisioningStep::WritingImage || r.step == ProvisioningStep::Erasing =>
        {
            let name = format!("{:?}", r.step);
            let (w, t) = (r.bytes_written.unwrap_or(0), r.bytes_total.unwrap_or(0));
            let percent = if t > 0 {
                ((w.saturating_mul(100)) / t).clamp(0, 100) as i32
            } else {
                0
            };
            let summary = if t > 0 {
                format!("{name} {percent}% ({} of {} GiB)", gib(w), gib(t))
            } else {
                name.clone()
            };
            Some(Progress {
                step: name,
                bytes_written: r.bytes_written,
                bytes_total: r.bytes_total,
                percent: Some(percent),
                summary: Some(summary),
            })
        }
        (_, Some(r)) => Some(step(
            &format!("{:?}", r.step),
            None,
            format!("{:?}", r.step),
        )),
        (purpose, None) => Some(step(
            "BootingRamdisk",
            Some(0),
            format!(
                "BootingRamdisk for {purpose:?} (boot intent #{})",
                intent.attempt
            ),
        )),
    }
}

/// The Deployment phase that mirrors a machine phase.
pub fn phase_of(machine: MachinePhase) -> DeploymentPhase {
    match machine {
        MachinePhase::Deploying => DeploymentPhase::Provisioning,
        MachinePhase::Deployed => DeploymentPhase::Deployed,
        MachinePhase::FailedDeployment => DeploymentPhase::Failed,
        MachinePhase::Releasing => DeploymentPhase::Releasing,
        _ => DeploymentPhase::Allocated,
    }
}

fn record_timing(timings: &mut Vec<StepTiming>, step: &str, now: &Time) {
    if timings.last().is_some_and(|t| t.step == step) {
        return;
    }
    if let Some(last) = timings.last_mut() {
        last.finished.get_or_insert_with(|| now.clone());
    }
    timings.retain(|t| t.step != step);
    timings.push(StepTiming {
        step: step.into(),
        started: now.clone(),
        finished: None,
    });
    if timings.len() > TIMINGS_KEPT {
        timings.remove(0);
    }
}

/// The progress shown while `b` stops the machine: the blocker, not the last step.
fn stalled(b: &Blocker) -> Progress {
    Progress {
        step: "Stalled".into(),
        summary: Some(format!("Stalled: {}", b.short)),
        ..Default::default()
    }
}

/// Status of `d` while `m` is allocated to it.
pub fn allocated(
    d: &Deployment,
    m: &Machine,
    addresses: Vec<String>,
    now: Timestamp,
    policy: &Policy,
) -> DeploymentStatus {
    let mut s = d.status.clone().unwrap_or_default();
    let mphase = m
        .status
        .as_ref()
        .and_then(|st| st.phase)
        .unwrap_or(MachinePhase::Allocated);
    let phase = if d.metadata.deletion_timestamp.is_some() {
        DeploymentPhase::Releasing
    } else {
        phase_of(mphase)
    };
    let now = Time(now);
    record_timing(&mut s.timings, &format!("{phase:?}"), &now);
    s.phase = Some(phase);
    s.machine_ref = Some(LocalObjectRef::new(m.name_any()));
    s.addresses = addresses;
    let blocked = blocker::check(m, now.0, policy).blocker;
    s.progress = match &blocked {
        Some(b) => Some(stalled(b)),
        None => progress(m),
    };
    let ready = m
        .status
        .as_ref()
        .and_then(|st| conditions::get(&st.conditions, READY));
    let (status, reason, message) = match (phase, blocked, ready) {
        (DeploymentPhase::Deployed, _, Some(c)) if c.reason != "Deployed" => (
            if c.status == "True" {
                Status::True
            } else {
                Status::False
            },
            c.reason.clone(),
            format!("machine {}: {}", m.name_any(), c.message),
        ),
        (DeploymentPhase::Deployed, _, _) => (
            Status::True,
            "Deployed".to_string(),
            format!("running on machine {}", m.name_any()),
        ),
        (_, Some(b), _) => (Status::False, b.reason, b.message),
        (_, None, Some(c)) => (
            Status::False,
            c.reason.clone(),
            format!("machine {}: {}", m.name_any(), c.message),
        ),
        (_, None, None) => (
            Status::False,
            "Allocated".to_string(),
            format!("allocated machine {}", m.name_any()),
        ),
    };
    conditions::set(
        &mut s.conditions,
        READY,
        status,
        &reason,
        &message,
        d.metadata.generation,
        now,
    );
    s.observed_generation = d.metadata.generation;
    s
}

/// Status of `d` while no machine fits it.
pub fn pending(d: &Deployment, why: &str, now: Timestamp) -> DeploymentStatus {
    let mut s = d.status.clone().unwrap_or_default();
    let now = Time(now);
    record_timing(&mut s.timings, "Pending", &now);
    s.phase = Some(DeploymentPhase::Pending);
    s.machine_ref = None;
    s.progress = None;
    conditions::set(
        &mut s.conditions,
        READY,
        Status::False,
        "NoMachineAvailable",
        why,
        d.metadata.generation,
        now,
    );
    s.observed_generation = d.metadata.generation;
    s
}

/// Writes `status` if it differs from what `d` has: a merge patch of only the fields that
/// change, with `d`'s resourceVersion as precondition (a [`Error::Conflict`] if `d` is
/// stale, so a patch computed from an old copy never lands).
pub async fn write(
    api: &Api<Deployment>,
    d: &Deployment,
    status: DeploymentStatus,
) -> Result<Option<Deployment>, Error> {
    let old = serde_json::to_value(d.status.clone().unwrap_or_default())
        .map_err(|e| Error::Malformed(format!("Deployment {} status: {e}", d.name_any())))?;
    let new = serde_json::to_value(&status)
        .map_err(|e| Error::Malformed(format!("Deployment {} status: {e}", d.name_any())))?;
    let Some(diff) = crate::merge_patch::diff(&old, &new) else {
        return Ok(None);
    };
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": d.resource_version() },
        "status": diff,
    });
    let written = api
        .patch_status(
            &d.name_any(),
            &PatchParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| conflict_as(e, || format!("Deployment {}", d.name_any())))?;
    Ok(Some(written))
}
