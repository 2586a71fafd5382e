//! Which Subnets this agent may serve. A Subnet with no `spec.agentSelector` (or an empty
//! one) admits every agent; otherwise the operator, which watches Node labels, names the
//! matching Nodes in `status.candidateNodes`, and an agent serves only where its own Node
//! is named. So the agent never reads a Node: RBAC cannot grant "the Node I run on", and
//! get on every Node is more than an agent on a provisioning network should have.

use ironpool_crds::Subnet;
use kube::core::Selector;

/// Whether the agent on Node `node` may serve `subnet`.
pub fn admits(subnet: &Subnet, node: &str) -> bool {
    let Some(selector) = subnet.spec.agent_selector.clone() else {
        return true;
    };
    match Selector::try_from(selector) {
        Ok(s) if s.selects_all() => true,
        Ok(_) => subnet
            .status
            .as_ref()
            .is_some_and(|status| status.candidate_nodes.iter().any(|n| n == node)),
        Err(e) => {
            tracing::warn!(subnet = %subnet.metadata.name.as_deref().unwrap_or(""), error = %e,
                "agentSelector does not parse; no agent serves this Subnet");
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn subnet(selector: serde_json::Value, candidates: &[&str]) -> Subnet {
        let mut spec = serde_json::json!({"cidr": "10.0.0.0/24", "leaseTime": "1h"});
        if !selector.is_null() {
            spec["agentSelector"] = selector;
        }
        let mut s = Subnet::new("s", serde_json::from_value(spec).unwrap());
        s.status = serde_json::from_value(serde_json::json!({"candidateNodes": candidates})).ok();
        s
    }

    #[test]
    fn selectors() {
        let labelled = serde_json::json!({"matchLabels": {"ironpool.dev/provisioning": "true"}});
        // No selector, or an empty one: every agent, whatever the operator wrote.
        assert!(admits(&subnet(serde_json::Value::Null, &[]), "n1"));
        assert!(admits(&subnet(serde_json::json!({}), &[]), "n1"));
        // A selector: only the Nodes the operator named.
        assert!(admits(&subnet(labelled.clone(), &["n1", "n2"]), "n1"));
        assert!(!admits(&subnet(labelled.clone(), &["n2"]), "n1"));
        assert!(!admits(&subnet(labelled, &[]), "n1"));
        // A selector that does not parse: nobody.
        let bad = serde_json::json!({"matchExpressions": [
            {"key": "rack", "operator": "Sometimes", "values": ["r1"]}]});
        assert!(!admits(&subnet(bad, &["n1"]), "n1"));
    }
}
