//! What the power controller writes: the agent-owned status fields and the
//! `BMCReachable` condition, by server-side apply; and the applying-attempt annotation.

use ironpool_crds::Machine;
use ironpool_crds::conditions::{self, Status};
use ironpool_crds::machine::{BootApplied, PowerState, PowerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

use crate::bmc::BmcError;

/// The condition type the controller owns.
pub const BMC_REACHABLE: &str = "BMCReachable";

/// Annotation recording the attempt whose power action may have been sent.
pub const APPLYING_ATTEMPT: &str = "metal.ironpool.dev/applying-attempt";

/// Why the BMC is or is not reachable, as the condition says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reachability {
    /// True when the last call worked.
    pub ok: bool,
    /// Reachable, Unreachable, TLSVerificationFailed, AuthenticationFailed,
    /// ActionUnsupported, NoCredentials, ...
    pub reason: &'static str,
    /// What a person should do.
    pub message: String,
}

impl Reachability {
    /// The BMC answered.
    pub fn reachable(driver: &str) -> Self {
        Self {
            ok: true,
            reason: "Reachable",
            message: format!("the BMC answers over {driver}"),
        }
    }

    /// A BMC call failed.
    pub fn failed(e: &BmcError) -> Self {
        let reason = match e {
            BmcError::Timeout { .. } => "Unreachable",
            other => other.metric_label(),
        };
        Self {
            ok: false,
            reason,
            message: e.to_string(),
        }
    }

    /// The credentials Secret is missing or incomplete.
    pub fn no_credentials(detail: String) -> Self {
        Self {
            ok: false,
            reason: "NoCredentials",
            message: detail,
        }
    }
}

/// The `BMCReachable` condition, keeping `lastTransitionTime` when the status is unchanged.
pub fn condition(machine: &Machine, r: &Reachability, now: Time) -> Condition {
    let mut list: Vec<Condition> = machine
        .status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .filter(|c| c.type_ == BMC_REACHABLE)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let status = if r.ok { Status::True } else { Status::False };
    conditions::set(
        &mut list,
        BMC_REACHABLE,
        status,
        r.reason,
        &r.message,
        machine.metadata.generation,
        now.clone(),
    );
    list.pop().unwrap_or(Condition {
        type_: BMC_REACHABLE.into(),
        status: status.as_str().into(),
        reason: r.reason.into(),
        message: r.message.clone(),
        observed_generation: machine.metadata.generation,
        last_transition_time: now,
    })
}

/// Whether applying `power`, `applied` and `condition` would change nothing the status
/// already shows. The time of the read does not count: a periodic sync that sees what the
/// status says writes nothing (`power.lastSync` is the time of the last observed change).
pub fn unchanged(
    machine: &Machine,
    power: Option<&PowerStatus>,
    applied: Option<&BootApplied>,
    condition: &Condition,
) -> bool {
    let Some(st) = machine.status.as_ref() else {
        return false;
    };
    let same_power = match (power, st.power.as_ref()) {
        (Some(new), Some(old)) => new.state == old.state,
        (None, None) => true,
        _ => false,
    };
    let same_applied = applied.map(|a| a.attempt) == st.boot_applied.as_ref().map(|a| a.attempt);
    let same_condition = st.conditions.iter().any(|c| {
        c.type_ == condition.type_
            && c.status == condition.status
            && c.reason == condition.reason
            && c.message == condition.message
            && c.observed_generation == condition.observed_generation
    });
    same_power && same_applied && same_condition
}

/// The whole agent-owned part of status that this controller writes. Every apply carries
/// all of it (power, bootApplied, the condition): server-side apply removes owned fields
/// an apply leaves out.
pub fn patch(
    power: Option<PowerStatus>,
    applied: Option<&BootApplied>,
    condition: Condition,
) -> Value {
    let mut status = serde_json::Map::new();
    if let Some(p) = power {
        status.insert("power".into(), json!(p));
    }
    if let Some(a) = applied {
        status.insert("bootApplied".into(), json!(a));
    }
    status.insert("conditions".into(), json!([condition]));
    json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1",
        "kind": "Machine",
        "status": status,
    })
}

/// Power status read now.
pub fn power(state: PowerState, now: Time) -> PowerStatus {
    PowerStatus {
        state,
        last_sync: Some(now),
    }
}

/// The metadata apply that sets (Some) or removes (None) the applying-attempt annotation.
pub fn annotation_patch(name: &str, attempt: Option<i64>) -> Value {
    let annotations = match attempt {
        Some(a) => json!({ APPLYING_ATTEMPT: a.to_string() }),
        None => json!({}),
    };
    json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1",
        "kind": "Machine",
        "metadata": { "name": name, "annotations": annotations },
    })
}

/// The attempt an earlier run was applying, from the annotation.
pub fn applying_attempt(machine: &Machine) -> Option<i64> {
    machine
        .metadata
        .annotations
        .as_ref()?
        .get(APPLYING_ATTEMPT)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_always_carries_boot_applied() {
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(10).unwrap());
        let m = Machine::new(
            "m",
            serde_json::from_value(json!({"bootMACAddress": "52:54:00:00:00:01"})).unwrap(),
        );
        let c = condition(&m, &Reachability::reachable("redfish"), now.clone());
        let p = patch(
            Some(power(PowerState::On, now)),
            Some(&BootApplied {
                attempt: 2,
                applied_at: None,
            }),
            c,
        );
        assert_eq!(p["status"]["bootApplied"]["attempt"], 2);
        assert_eq!(p["status"]["conditions"][0]["reason"], "Reachable");
        assert_eq!(p["status"]["power"]["state"], "On");
    }

    #[test]
    fn only_a_change_needs_a_write() {
        let t = |s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap());
        let mut m = Machine::new(
            "m",
            serde_json::from_value(json!({"bootMACAddress": "52:54:00:00:00:01"})).unwrap(),
        );
        let ok = Reachability::reachable("redfish");
        let c = condition(&m, &ok, t(10));
        let on = power(PowerState::On, t(10));
        assert!(!unchanged(&m, Some(&on), None, &c), "no status yet");
        m.status = Some(
            serde_json::from_value(json!({
                "power": {"state": "On", "lastSync": "1970-01-01T00:00:10Z"},
                "bootApplied": {"attempt": 1},
                "conditions": [c],
            }))
            .unwrap(),
        );
        let applied = BootApplied {
            attempt: 1,
            applied_at: None,
        };
        let later = condition(&m, &ok, t(99));
        let on_later = power(PowerState::On, t(99));
        assert!(unchanged(&m, Some(&on_later), Some(&applied), &later));
        let off = power(PowerState::Off, t(99));
        assert!(!unchanged(&m, Some(&off), Some(&applied), &later));
        let next = BootApplied {
            attempt: 2,
            applied_at: None,
        };
        assert!(!unchanged(&m, Some(&on_later), Some(&next), &later));
        let e = BmcError::Authentication { host: "h".into() };
        let failed = condition(&m, &Reachability::failed(&e), t(99));
        assert!(!unchanged(&m, Some(&on_later), Some(&applied), &failed));
    }

    #[test]
    fn timeouts_read_as_unreachable() {
        let e = BmcError::Timeout {
            host: "h".into(),
            operation: "op".into(),
            after: std::time::Duration::from_secs(1),
        };
        assert_eq!(Reachability::failed(&e).reason, "Unreachable");
        let e = BmcError::Authentication { host: "h".into() };
        assert_eq!(Reachability::failed(&e).reason, "AuthenticationFailed");
    }

    #[test]
    fn annotation_is_set_and_cleared() {
        assert_eq!(
            annotation_patch("m", Some(3))["metadata"]["annotations"][APPLYING_ATTEMPT],
            "3"
        );
        assert_eq!(
            annotation_patch("m", None)["metadata"]["annotations"],
            json!({})
        );
    }
}
