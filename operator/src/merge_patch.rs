//! The smallest JSON merge patch (RFC 7386) from one JSON value to another: only the
//! fields that change, `null` for the ones that go. Status writes send this with the
//! resourceVersion they read as a precondition, instead of applying the whole status:
//! the apiserver decodes, merges and validates a few fields, not every one the operator
//! owns, and a write that changes nothing is never sent.

use serde_json::{Map, Value};

/// The merge patch that turns `old` into `new`, or `None` when they are equal. Objects
/// are compared key by key; anything else (arrays included, as merge patches replace
/// arrays whole) is sent whole when it differs.
pub fn diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        return Some(new.clone());
    };
    let mut patch = Map::new();
    for (k, v) in new {
        match old.get(k) {
            Some(o) => {
                if let Some(d) = diff(o, v) {
                    patch.insert(k.clone(), d);
                }
            }
            None => {
                patch.insert(k.clone(), v.clone());
            }
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            patch.insert(k.clone(), Value::Null);
        }
    }
    Some(Value::Object(patch))
}

/// `target` with merge patch `patch` applied (RFC 7386), as the apiserver applies it.
pub fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                apply(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_what_changes_and_null_for_what_goes() {
        let old = json!({"phase": "Ready", "bootIntent": {"attempt": 4, "target": "Off"},
                         "deploymentRef": {"name": "a"}, "conditions": [{"type": "Ready"}]});
        let new = json!({"phase": "Deploying", "bootIntent": {"attempt": 5, "target": "Off"},
                         "conditions": [{"type": "Ready"}], "lastOperation": {"kind": "Deploy"}});
        assert_eq!(
            diff(&old, &new),
            Some(json!({"phase": "Deploying", "bootIntent": {"attempt": 5},
                        "deploymentRef": null, "lastOperation": {"kind": "Deploy"}}))
        );
        assert_eq!(diff(&new, &new), None);
    }

    #[test]
    fn arrays_go_whole() {
        let old =
            json!({"conditions": [{"type": "Ready", "status": "True"}, {"type": "BMCReachable"}]});
        let new =
            json!({"conditions": [{"type": "Ready", "status": "False"}, {"type": "BMCReachable"}]});
        assert_eq!(diff(&old, &new), Some(new.clone()));
    }

    #[test]
    fn applying_the_diff_gives_the_new_value() {
        let cases = [
            (json!({}), json!({"a": {"b": 1}})),
            (
                json!({"a": {"b": 1, "c": [1, 2]}}),
                json!({"a": {"c": [2]}, "d": "x"}),
            ),
            (json!({"a": 1}), json!({})),
            (json!({"a": {"b": {"c": 1}}}), json!({"a": {"b": 2}})),
        ];
        for (old, new) in cases {
            let mut v = old.clone();
            if let Some(p) = diff(&old, &new) {
                apply(&mut v, &p);
            }
            assert_eq!(v, new, "from {old}");
        }
    }
}
