//! The cloud-init network-config Ironpool writes when a Deployment has a static address
//! (`subnetRef`, allocated into `status.addresses`) and no `networkDataSecretRef` of its
//! own: version 2 (netplan syntax, which cloud-init also renders for other distributions),
//! one interface matched by the machine's boot MAC, with the Subnet's prefix, gateway, DNS
//! servers, search domain and MTU.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ironpool_crds::{Deployment, Subnet};
use kube::ResourceExt;

use crate::http::MacAddr;

/// The generated network-config for `d` on the machine with boot MAC `mac`, or `None`
/// when the user supplies their own, the Deployment has no static address yet, or its
/// Subnet is not known (the OS then configures itself, e.g. by DHCP, which hands out the
/// same reserved address).
pub fn for_deployment(d: &Deployment, subnet: Option<&Subnet>, mac: MacAddr) -> Option<String> {
    if d.spec.network_data_secret_ref.is_some() {
        return None;
    }
    let subnet = subnet?;
    if d.spec.subnet_ref.as_ref()?.name != subnet.name_any() {
        return None;
    }
    render(mac, super::reservations::deployment_address(d)?, subnet)
}

/// Renders the network-config; `None` if the Subnet's cidr is malformed (the apiserver's
/// validation makes that impossible for stored objects).
pub fn render(mac: MacAddr, address: Ipv4Addr, subnet: &Subnet) -> Option<String> {
    let spec = &subnet.spec;
    let (_, prefix) = spec.cidr.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mut out = String::from("# written by Ironpool for the address it allocated\n");
    out.push_str("version: 2\nethernets:\n  provisioning:\n    match:\n");
    let _ = writeln!(out, "      macaddress: \"{mac}\"");
    let _ = writeln!(out, "    addresses:\n      - \"{address}/{prefix}\"");
    if let Some(gw) = &spec.gateway {
        let _ = writeln!(
            out,
            "    routes:\n      - to: \"0.0.0.0/0\"\n        via: \"{gw}\""
        );
    }
    if !spec.dns_servers.is_empty() || spec.domain.is_some() {
        out.push_str("    nameservers:\n");
        if !spec.dns_servers.is_empty() {
            let list: Vec<String> = spec
                .dns_servers
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect();
            let _ = writeln!(out, "      addresses: [{}]", list.join(", "));
        }
        if let Some(domain) = &spec.domain {
            let _ = writeln!(out, "      search: [\"{domain}\"]");
        }
    }
    if let Some(mtu) = spec.mtu {
        let _ = writeln!(out, "    mtu: {mtu}");
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn subnet(extra: serde_json::Value) -> Subnet {
        let mut spec = serde_json::json!({"cidr": "10.20.0.0/22", "leaseTime": "1h"});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        Subnet::new("rack1", serde_json::from_value(spec).unwrap())
    }

    fn deployment(status_addresses: &[&str], secret: bool) -> Deployment {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Deployment",
            "metadata": {"name": "web-1", "namespace": "lab"},
            "spec": {
                "machineRef": {"name": "m1"}, "subnetRef": {"name": "rack1"},
                "image": {"url": "http://x/os.raw", "checksum": format!("sha256:{}", "a".repeat(64))}
            },
            "status": {"addresses": status_addresses}
        }))
        .unwrap();
        if secret {
            d.spec.network_data_secret_ref =
                serde_json::from_value(serde_json::json!({"name": "net"})).unwrap();
        }
        d
    }

    fn mac() -> MacAddr {
        "52:54:00:12:34:56".parse().unwrap()
    }

    #[test]
    fn renders_every_subnet_option() {
        let s = subnet(serde_json::json!({
            "gateway": "10.20.0.1", "dnsServers": ["10.20.0.2", "10.20.0.3"],
            "domain": "rack1.example.internal", "mtu": 9000
        }));
        let text = for_deployment(&deployment(&["10.20.1.7"], false), Some(&s), mac()).unwrap();
        assert_eq!(
            text,
            "# written by Ironpool for the address it allocated\n\
             version: 2\nethernets:\n  provisioning:\n    match:\n      macaddress: \"52:54:00:12:34:56\"\n    \
             addresses:\n      - \"10.20.1.7/22\"\n    routes:\n      - to: \"0.0.0.0/0\"\n        via: \"10.20.0.1\"\n    \
             nameservers:\n      addresses: [\"10.20.0.2\", \"10.20.0.3\"]\n      search: [\"rack1.example.internal\"]\n    \
             mtu: 9000\n"
        );
        // It is YAML that says what it means.
        let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let eth = &v["ethernets"]["provisioning"];
        assert_eq!(eth["match"]["macaddress"], "52:54:00:12:34:56");
        assert_eq!(eth["addresses"][0], "10.20.1.7/22");
        assert_eq!(eth["routes"][0]["via"], "10.20.0.1");
        assert_eq!(eth["nameservers"]["addresses"][1], "10.20.0.3");
        assert_eq!(eth["mtu"], 9000);
    }

    #[test]
    fn minimal_subnet_has_only_the_address() {
        let text = for_deployment(
            &deployment(&["10.20.1.7"], false),
            Some(&subnet(serde_json::json!({}))),
            mac(),
        )
        .unwrap();
        assert!(
            text.ends_with("addresses:\n      - \"10.20.1.7/22\"\n"),
            "{text}"
        );
    }

    #[test]
    fn none_without_an_address_a_subnet_or_with_the_users_own() {
        let s = subnet(serde_json::json!({}));
        assert_eq!(
            for_deployment(&deployment(&[], false), Some(&s), mac()),
            None
        );
        assert_eq!(
            for_deployment(&deployment(&["10.20.1.7"], false), None, mac()),
            None
        );
        assert_eq!(
            for_deployment(&deployment(&["10.20.1.7"], true), Some(&s), mac()),
            None
        );
        let other = Subnet::new("rack2", s.spec.clone());
        assert_eq!(
            for_deployment(&deployment(&["10.20.1.7"], false), Some(&other), mac()),
            None
        );
    }
}
