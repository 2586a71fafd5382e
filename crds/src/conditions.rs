//! Helpers for standard `metav1.Condition` lists in status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition every kind carries: is the object usable, and if not, why.
pub const READY: &str = "Ready";

/// Condition status values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

impl Status {
    /// The spelling Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// Sets condition `type_` in `conditions`. `lastTransitionTime` changes only when the
/// status changes, as the Kubernetes API conventions ask. Returns true when anything changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: Status,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Time,
) -> bool {
    let new = Condition {
        type_: type_.to_string(),
        status: status.as_str().to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation,
        last_transition_time: now,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        None => {
            conditions.push(new);
            true
        }
        Some(old) => {
            let same_status = old.status == new.status;
            let changed = !same_status
                || old.reason != new.reason
                || old.message != new.message
                || old.observed_generation != new.observed_generation;
            if changed {
                let since = if same_status {
                    old.last_transition_time.clone()
                } else {
                    new.last_transition_time.clone()
                };
                *old = Condition {
                    last_transition_time: since,
                    ..new
                };
            }
            changed
        }
    }
}

/// The condition of type `type_`, if present.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether condition `type_` is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut c = Vec::new();
        assert!(set(
            &mut c,
            READY,
            Status::False,
            "Commissioning",
            "booting",
            Some(1),
            at(10)
        ));
        assert!(set(
            &mut c,
            READY,
            Status::False,
            "Commissioning",
            "inventory",
            Some(1),
            at(20)
        ));
        assert_eq!(
            c[0].last_transition_time,
            at(10),
            "same status keeps the transition time"
        );
        assert_eq!(c[0].message, "inventory");
        assert!(!set(
            &mut c,
            READY,
            Status::False,
            "Commissioning",
            "inventory",
            Some(1),
            at(30)
        ));
        assert!(set(
            &mut c,
            READY,
            Status::True,
            "Ready",
            "commissioned",
            Some(1),
            at(40)
        ));
        assert_eq!(c[0].last_transition_time, at(40));
        assert!(is_true(&c, READY));
        assert_eq!(c.len(), 1);
    }
}
