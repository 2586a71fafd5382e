//! Pure computation of DHCP reservations from Machines and Deployments: a Machine's boot
//! MAC gets the address its Deployment got from IPAM (`status.addresses[0]`) when that
//! address lies in a served Subnet of the Deployment's namespace; every other MAC (known or
//! not) gets an address from the dynamic range.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ironpool_crds::{Deployment, Machine};
use kube::ResourceExt;

use crate::dhcp::config::Reservations;
use crate::dhcp::{MacAddr, Reservation, SubnetConfig};

/// A served Subnet: its namespace and validated config.
#[derive(Clone, Debug)]
pub struct Served {
    /// Namespace of the Subnet.
    pub namespace: String,
    /// The validated config (named).
    pub config: SubnetConfig,
}

/// The address a Deployment got, parsed (a `/prefix` suffix is ignored).
pub fn deployment_address(d: &Deployment) -> Option<Ipv4Addr> {
    let first = d.status.as_ref()?.addresses.first()?;
    first.split('/').next()?.parse().ok()
}

/// Reservations for the MACs of `machines` whose Deployment address lies in one of
/// `served`. `deployment_of` finds a Machine's Deployment.
pub fn compute(
    served: &[Served],
    machines: &[Arc<Machine>],
    deployment_of: impl Fn(&Machine) -> Option<Arc<Deployment>>,
) -> Reservations {
    let mut out = Reservations::new();
    for m in machines {
        let Ok(mac) = m.spec.boot_mac_address.parse::<MacAddr>() else {
            continue;
        };
        let Some(d) = deployment_of(m) else { continue };
        let Some(ip) = deployment_address(&d) else {
            continue;
        };
        let ns = d.namespace().unwrap_or_default();
        if !served
            .iter()
            .any(|s| s.namespace == ns && s.config.contains(ip))
        {
            continue;
        }
        let hostname = d.spec.hostname.clone().or_else(|| Some(m.name_any()));
        out.insert(mac, Reservation { ip, hostname });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ironpool_crds::subnet::SubnetSpec;

    fn served() -> Served {
        let spec: SubnetSpec = serde_json::from_value(serde_json::json!({
            "cidr": "10.20.0.0/24", "leaseTime": "1h",
            "dynamicRange": {"start": "10.20.0.100", "end": "10.20.0.200"}
        }))
        .unwrap();
        Served {
            namespace: "dc".into(),
            config: SubnetConfig::try_from(&spec).unwrap().named("prov"),
        }
    }

    fn machine(name: &str, mac: &str, deployment: Option<&str>) -> Arc<Machine> {
        let mut m: Machine = serde_json::from_value(serde_json::json!({
            "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
            "metadata": {"name": name, "namespace": "dc"},
            "spec": {"bootMACAddress": mac}
        }))
        .unwrap();
        if let Some(d) = deployment {
            m.status = Some(
                serde_json::from_value(serde_json::json!({"deploymentRef": {"name": d}})).unwrap(),
            );
        }
        Arc::new(m)
    }

    fn deployment(ns: &str, addr: &str) -> Arc<Deployment> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Deployment",
                "metadata": {"name": "web-1", "namespace": ns},
                "spec": {"machineRef": {"name": "m"}, "hostname": "web-1",
                         "image": {"url": "http://x/i.raw", "checksum": format!("sha256:{}", "a".repeat(64)), "format": "raw"}},
                "status": {"addresses": [addr]}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn reserves_deployment_addresses_inside_served_subnets() {
        let machines = vec![
            machine("a", "02:00:00:00:00:0a", Some("web-1")),
            machine("b", "02:00:00:00:00:0b", None),
        ];
        let r = compute(&[served()], &machines, |_| {
            Some(deployment("dc", "10.20.0.57"))
        });
        assert_eq!(r.len(), 2, "both have a deployment in this closure");
        let r = compute(&[served()], &machines, |m| {
            m.status
                .as_ref()
                .and_then(|s| s.deployment_ref.as_ref())
                .map(|_| deployment("dc", "10.20.0.57"))
        });
        assert_eq!(r.len(), 1);
        let res = r.get(&"02:00:00:00:00:0a".parse().unwrap()).unwrap();
        assert_eq!(res.ip, Ipv4Addr::new(10, 20, 0, 57));
        assert_eq!(res.hostname.as_deref(), Some("web-1"));
    }

    #[test]
    fn other_subnets_and_namespaces_fall_back_to_the_dynamic_range() {
        let machines = vec![machine("a", "02:00:00:00:00:0a", Some("web-1"))];
        assert!(
            compute(&[served()], &machines, |_| Some(deployment(
                "dc",
                "10.99.0.5"
            )))
            .is_empty()
        );
        assert!(
            compute(&[served()], &machines, |_| Some(deployment(
                "other",
                "10.20.0.5"
            )))
            .is_empty()
        );
        assert!(compute(&[], &machines, |_| Some(deployment("dc", "10.20.0.5"))).is_empty());
    }
}
