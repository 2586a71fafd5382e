//! Which Subnets this agent may serve: a Subnet's `spec.agentSelector` matched against the
//! labels of this agent's Node. A Node that cannot be read counts as having no labels.

use std::collections::BTreeMap;

use ironpool_crds::Subnet;
use k8s_openapi::api::core::v1::Node;
use kube::core::{Selector, SelectorExt};
use kube::{Api, Client};

/// Whether an agent on a node with `labels` may serve `subnet`: no selector (or an empty
/// one) admits every agent; a selector that does not parse admits none.
pub fn admits(subnet: &Subnet, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = subnet.spec.agent_selector.clone() else {
        return true;
    };
    match Selector::try_from(sel) {
        Ok(s) => s.matches(labels),
        Err(e) => {
            tracing::warn!(subnet = %subnet.metadata.name.as_deref().unwrap_or(""), error = %e,
                "agentSelector does not parse; no agent serves this Subnet");
            false
        }
    }
}

/// The labels of Node `name`; empty (and logged) when it is missing or unreadable.
pub async fn node_labels(client: &Client, name: &str) -> BTreeMap<String, String> {
    match Api::<Node>::all(client.clone()).get_opt(name).await {
        Ok(Some(node)) => node.metadata.labels.unwrap_or_default(),
        Ok(None) => {
            tracing::warn!(
                node = name,
                "no Node of this name; matching agentSelectors against no labels"
            );
            BTreeMap::new()
        }
        Err(e) => {
            tracing::warn!(node = name, error = %e,
                "cannot read this Node (grant get on nodes); matching agentSelectors against no labels");
            BTreeMap::new()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn subnet(selector: serde_json::Value) -> Subnet {
        let mut spec = serde_json::json!({"cidr": "10.0.0.0/24", "leaseTime": "1h"});
        if !selector.is_null() {
            spec["agentSelector"] = selector;
        }
        Subnet::new("s", serde_json::from_value(spec).unwrap())
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> =
            [("ironpool.dev/provisioning".to_string(), "true".to_string())].into();
        let none = BTreeMap::new();
        assert!(admits(&subnet(serde_json::Value::Null), &none));
        let want =
            subnet(serde_json::json!({"matchLabels": {"ironpool.dev/provisioning": "true"}}));
        assert!(admits(&want, &labels));
        assert!(!admits(&want, &none));
        let expr = subnet(serde_json::json!({"matchExpressions": [
            {"key": "rack", "operator": "NotIn", "values": ["r9"]}]}));
        assert!(admits(&expr, &labels));
    }
}
