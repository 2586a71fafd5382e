//! What the power controller writes: the agent-owned status fields (power, bootApplied,
//! the in-flight marker bootApplying) and the `BMCReachable` condition, by server-side
//! apply. Agents before the marker moved into status kept it in the applying-attempt
//! annotation; it is still read, and removed once its attempt is applied.

use ironpool_crds::Machine;
use ironpool_crds::conditions::{self, Status};
use ironpool_crds::machine::{BootApplied, BootApplying, PowerState, PowerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

use crate::bmc::BmcError;

/// The condition type the controller owns.
pub const BMC_REACHABLE: &str = "BMCReachable";

/// Annotation in which older agents recorded the attempt whose power action may have been
/// sent (now `status.bootApplying`); still honoured, and removed when found.
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
    applying: Option<&BootApplying>,
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
    let same_applying = applying.map(|a| a.attempt) == st.boot_applying.as_ref().map(|a| a.attempt);
    let same_condition = st.conditions.iter().any(|c| {
        c.type_ == condition.type_
            && c.status == condition.status
            && c.reason == condition.reason
            && c.message == condition.message
            && c.observed_generation == condition.observed_generation
    });
    same_power && same_applied && same_applying && same_condition
}

/// The whole agent-owned part of status that this controller writes. Every apply carries
/// all of it (power, bootApplied, bootApplying, the condition): server-side apply removes
/// owned fields an apply leaves out, which is how the write of `bootApplied` removes the
/// marker (pass `applying: None`).
pub fn patch(
    power: Option<PowerStatus>,
    applied: Option<&BootApplied>,
    applying: Option<&BootApplying>,
    condition: Condition,
) -> Value {
    let mut status = serde_json::Map::new();
    if let Some(p) = power {
        status.insert("power".into(), json!(p));
    }
    if let Some(a) = applied {
        status.insert("bootApplied".into(), json!(a));
    }
    if let Some(a) = applying {
        status.insert("bootApplying".into(), json!(a));
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

/// The metadata merge patch that removes the applying-attempt annotation.
pub fn annotation_removal() -> Value {
    json!({ "metadata": { "annotations": { APPLYING_ATTEMPT: null } } })
}

/// The marker to keep in a status write that records `applied`: none once its attempt is
/// applied (the write then removes it), else as it is.
pub fn still_applying<'a>(
    applying: Option<&'a BootApplying>,
    applied: Option<&BootApplied>,
) -> Option<&'a BootApplying> {
    applying.filter(|m| applied.is_none_or(|a| a.attempt < m.attempt))
}

/// The attempt an older agent was applying, from the annotation.
pub fn applying_annotation(machine: &Machine) -> Option<i64> {
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
            None,
            c,
        );
        assert_eq!(p["status"]["bootApplied"]["attempt"], 2);
        assert!(
            p["status"].get("bootApplying").is_none(),
            "omitted = removed"
        );
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
        assert!(!unchanged(&m, Some(&on), None, None, &c), "no status yet");
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
        assert!(unchanged(&m, Some(&on_later), Some(&applied), None, &later));
        let off = power(PowerState::Off, t(99));
        assert!(!unchanged(&m, Some(&off), Some(&applied), None, &later));
        let marker = BootApplying {
            attempt: 2,
            since: None,
        };
        assert!(
            !unchanged(&m, Some(&on_later), Some(&applied), Some(&marker), &later),
            "a new marker is a change"
        );
        let next = BootApplied {
            attempt: 2,
            applied_at: None,
        };
        assert!(!unchanged(&m, Some(&on_later), Some(&next), None, &later));
        let e = BmcError::Authentication { host: "h".into() };
        let failed = condition(&m, &Reachability::failed(&e), t(99));
        assert!(!unchanged(
            &m,
            Some(&on_later),
            Some(&applied),
            None,
            &failed
        ));
    }

    #[test]
    fn the_marker_goes_with_the_write_that_applies_its_attempt() {
        let marker = BootApplying {
            attempt: 3,
            since: None,
        };
        let applied = |attempt| BootApplied {
            attempt,
            applied_at: None,
        };
        assert_eq!(still_applying(Some(&marker), None), Some(&marker));
        assert_eq!(
            still_applying(Some(&marker), Some(&applied(2))),
            Some(&marker)
        );
        assert_eq!(still_applying(Some(&marker), Some(&applied(3))), None);
        assert_eq!(still_applying(Some(&marker), Some(&applied(4))), None);
        assert_eq!(still_applying(None, Some(&applied(1))), None);
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
    fn the_old_annotation_is_removed_by_name() {
        assert_eq!(
            annotation_removal()["metadata"]["annotations"][APPLYING_ATTEMPT],
            Value::Null
        );
    }
}
