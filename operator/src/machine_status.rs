//! The operator's part of a Machine's status: building it from a decision (pure) and
//! writing it (server-side apply with the resourceVersion read as a precondition).

use ironpool_crds::Machine;
use ironpool_crds::conditions::{self, READY, Status};
use ironpool_crds::machine::{BootIntent, MachineStatus, Operation, OperationResult};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::context::MANAGER;
use crate::error::{Error, conflict_as};
use crate::lifecycle::{Decision, OperationChange};

/// The fields of `status` the operator owns; the agent's fields and conditions are left out.
pub fn operator_fields(status: Option<&MachineStatus>) -> MachineStatus {
    let Some(s) = status else {
        return MachineStatus::default();
    };
    MachineStatus {
        phase: s.phase,
        boot_intent: s.boot_intent.clone(),
        deployment_ref: s.deployment_ref.clone(),
        last_operation: s.last_operation.clone(),
        conditions: s
            .conditions
            .iter()
            .filter(|c| c.type_ == READY)
            .cloned()
            .collect(),
        observed_generation: s.observed_generation,
        ..MachineStatus::default()
    }
}

/// The operator's status after carrying out `d` on `m` at `now`.
pub fn next_status(m: &Machine, d: &Decision, now: Timestamp) -> MachineStatus {
    let mut s = operator_fields(m.status.as_ref());
    s.phase = Some(d.phase);
    if let Some(i) = d.intent {
        let attempt = s.boot_intent.as_ref().map_or(0, |c| c.attempt) + 1;
        s.boot_intent = Some(BootIntent {
            target: i.target,
            purpose: i.purpose,
            attempt,
            issued_at: Some(MicroTime(now)),
        });
    }
    if d.release {
        s.deployment_ref = None;
    }
    s.last_operation = match &d.operation {
        OperationChange::Keep => s.last_operation,
        OperationChange::Start(kind, image) => Some(Operation {
            kind: *kind,
            started: Time(now),
            finished: None,
            result: OperationResult::Running,
            retries: 0,
            image: image.clone(),
            message: None,
        }),
        OperationChange::Retry => s.last_operation.map(|o| Operation {
            retries: o.retries + 1,
            ..o
        }),
        OperationChange::Finish(result, message) => s.last_operation.map(|o| Operation {
            result: *result,
            finished: Some(Time(now)),
            message: Some(message.clone()),
            ..o
        }),
    };
    let status = if d.report.ready {
        Status::True
    } else {
        Status::False
    };
    conditions::set(
        &mut s.conditions,
        READY,
        status,
        d.report.reason,
        &d.report.message,
        m.metadata.generation,
        Time(now),
    );
    s.observed_generation = m.metadata.generation;
    s
}

/// Writes the operator's status fields of machine `m`, failing with [`Error::Conflict`] if
/// the machine changed since it was read. Fields the operator omits are dropped from its
/// ownership, so `status` must hold every operator field.
pub async fn apply(
    api: &Api<Machine>,
    m: &Machine,
    status: &MachineStatus,
) -> Result<Machine, Error> {
    let patch = serde_json::json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1",
        "kind": "Machine",
        "metadata": { "name": m.name_any(), "resourceVersion": m.resource_version() },
        "status": status,
    });
    api.patch_status(
        &m.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| conflict_as(e, || format!("Machine {}", m.name_any())))
}
