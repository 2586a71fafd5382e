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
        power_cycle_handled: s.power_cycle_handled.clone(),
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
    if let Some(request) = &d.power_cycle_handled {
        s.power_cycle_handled = Some(request.clone());
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

/// The operator's fields, in the JSON of a Machine status.
const OPERATOR_KEYS: [&str; 6] = [
    "phase",
    "bootIntent",
    "deploymentRef",
    "lastOperation",
    "powerCycleHandled",
    "observedGeneration",
];

/// The merge patch of `m`'s status that sets the operator's fields to `status`, leaving
/// every other field as it is; `None` when nothing changes. The conditions list goes
/// whole when the Ready condition changes (merge patches replace lists), with the other
/// writers' conditions as `m` has them, which the resourceVersion precondition of the
/// write makes safe.
pub fn patch_for(m: &Machine, status: &MachineStatus) -> Option<serde_json::Value> {
    let current = m.status.clone().unwrap_or_default();
    let old = serde_json::to_value(&current).ok()?;
    let next = serde_json::to_value(status).ok()?;
    let mut new = old.clone();
    let obj = new.as_object_mut()?;
    for key in OPERATOR_KEYS {
        match next.get(key) {
            Some(v) => {
                obj.insert(key.to_string(), v.clone());
            }
            None => {
                obj.remove(key);
            }
        }
    }
    let mut conditions = current.conditions.clone();
    let ready = status.conditions.iter().find(|c| c.type_ == READY);
    match (conditions.iter().position(|c| c.type_ == READY), ready) {
        (Some(i), Some(r)) => conditions[i] = r.clone(),
        (Some(i), None) => {
            conditions.remove(i);
        }
        (None, Some(r)) => conditions.push(r.clone()),
        (None, None) => {}
    }
    if conditions.is_empty() {
        obj.remove("conditions");
    } else {
        obj.insert("conditions".into(), serde_json::to_value(conditions).ok()?);
    }
    crate::merge_patch::diff(&old, &new)
}

/// Writes the operator's status fields of machine `m`: a merge patch of only the fields
/// that change, failing with [`Error::Conflict`] if the machine changed since it was read.
/// `status` must hold every operator field (one it lacks is removed).
pub async fn apply(
    api: &Api<Machine>,
    m: &Machine,
    status: &MachineStatus,
) -> Result<Machine, Error> {
    let Some(diff) = patch_for(m, status) else {
        return Ok(m.clone());
    };
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": m.resource_version() },
        "status": diff,
    });
    api.patch_status(
        &m.name_any(),
        &PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| conflict_as(e, || format!("Machine {}", m.name_any())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironpool_crds::MachineSpec;
    use ironpool_crds::machine::{MachinePhase, PowerState, PowerStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use serde_json::json;

    fn condition(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            last_transition_time: Time(Timestamp::from_second(1_800_000_000).unwrap()),
            observed_generation: None,
        }
    }

    fn machine() -> Machine {
        let mut m = Machine::new("m1", MachineSpec::for_boot_mac("52:54:00:00:00:01"));
        m.status = Some(MachineStatus {
            phase: Some(MachinePhase::Ready),
            power: Some(PowerStatus {
                state: PowerState::Off,
                last_sync: None,
            }),
            deployment_ref: Some(ironpool_crds::LocalObjectRef::new("old")),
            conditions: vec![condition("BMCReachable", "True"), condition(READY, "True")],
            ..Default::default()
        });
        m
    }

    #[test]
    fn the_patch_holds_only_the_operator_fields_that_change() {
        let m = machine();
        let mut next = operator_fields(m.status.as_ref());
        next.phase = Some(MachinePhase::Deploying);
        next.deployment_ref = None;
        assert_eq!(
            patch_for(&m, &next),
            Some(json!({"phase": "Deploying", "deploymentRef": null}))
        );
        assert_eq!(patch_for(&m, &operator_fields(m.status.as_ref())), None);
    }

    #[test]
    fn a_changed_ready_condition_keeps_the_agents_conditions() {
        let m = machine();
        let mut next = operator_fields(m.status.as_ref());
        next.conditions = vec![condition(READY, "False")];
        let p = patch_for(&m, &next).unwrap();
        let types: Vec<(&str, &str)> = p["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
            .collect();
        assert_eq!(types, [("BMCReachable", "True"), (READY, "False")]);
        assert!(
            p.get("power").is_none(),
            "the agent's fields are not sent: {p}"
        );
    }
}
