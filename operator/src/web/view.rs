//! What the fleet web view shows, as JSON for the page's script: pure functions from the
//! API objects to the table row, the machine page and the Subnet page.

use std::net::Ipv4Addr;

use ironpool_crds::machine::BootStep;
use ironpool_crds::{Deployment, Machine, Subnet, conditions};
use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::ipam::Pool;

/// `namespace/name` of an object, the key rows and pages use.
pub fn key<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// "512 GiB" style sizes, binary units as `kubectl` users read them.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n.max(0) as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 || (v - v.round()).abs() < 0.05 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The address the agent last offered or acknowledged to the machine (the flight
/// recorder's DHCP details start with it).
fn last_dhcp_address(m: &Machine) -> Option<Ipv4Addr> {
    let status = m.status.as_ref()?;
    status
        .boot
        .iter()
        .rev()
        .filter(|r| matches!(r.step, BootStep::DhcpOffer | BootStep::DhcpAck))
        .find_map(|r| r.detail.as_deref()?.split([',', ' ']).next()?.parse().ok())
}

/// The Subnets of the machine's namespace it is on: the one whose CIDR holds the address
/// DHCP last gave it, and the one holding its Deployment's static address.
pub fn subnets_of(m: &Machine, subnets: &[std::sync::Arc<Subnet>]) -> Vec<String> {
    let ns = m.namespace();
    let ip = last_dhcp_address(m);
    let deployment = m
        .status
        .as_ref()
        .and_then(|s| s.deployment_ref.as_ref())
        .map(|d| d.name.as_str());
    let mut names: Vec<String> = subnets
        .iter()
        .filter(|s| s.namespace() == ns)
        .filter(|s| {
            let by_ip = ip.is_some_and(|ip| Pool::from_spec(&s.spec).is_ok_and(|p| p.contains(ip)));
            let by_claim = deployment.is_some_and(|d| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.allocations.iter().any(|a| a.deployment == d))
            });
            by_ip || by_claim
        })
        .map(|s| s.name_any())
        .collect();
    names.sort();
    names
}

fn ready_reason(conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> Value {
    match conditions::get(conds, "Ready") {
        Some(c) if c.status != "True" => json!({"reason": c.reason, "message": c.message}),
        _ => Value::Null,
    }
}

/// One row of the machine table (the columns of MAAS's machine list).
pub fn row(m: &Machine, subnets: &[std::sync::Arc<Subnet>]) -> Value {
    let status = m.status.clone().unwrap_or_default();
    let inv = status.inventory.as_ref();
    let disks = inv.map(|i| {
        let total = i.total_disk_bytes.unwrap_or_default();
        format!("{} ({})", i.disk_count, bytes(total))
    });
    let last = status
        .boot
        .last()
        .map(|b| json!({"step": b.step, "detail": b.detail, "at": b.at.0.to_string()}));
    json!({
        "key": key(m),
        "namespace": m.namespace(),
        "name": m.name_any(),
        "labels": m.labels(),
        "phase": status.phase.map(|p| p.as_str()).unwrap_or("New"),
        "power": status.power.as_ref().map(|p| p.state),
        "arch": inv.and_then(|i| i.architecture.clone())
            .unwrap_or_else(|| m.spec.architecture.as_str().to_string()),
        "cores": inv.and_then(|i| i.cores),
        "memory": inv.and_then(|i| i.memory_bytes).map(bytes),
        "disks": disks,
        "deployment": status.deployment_ref.as_ref().map(|d| d.name.clone()),
        "lastBoot": last,
        "subnets": subnets_of(m, subnets),
        "attention": ready_reason(&status.conditions),
    })
}

/// One Subnet in the fleet summary.
pub fn subnet_row(s: &Subnet) -> Value {
    let status = s.status.clone().unwrap_or_default();
    json!({
        "key": key(s),
        "namespace": s.namespace(),
        "name": s.name_any(),
        "cidr": s.spec.cidr,
        "servedBy": status.served_by.as_ref().map(|b| b.agent.clone()),
        "addresses": status.addresses,
    })
}

/// The machine page: the row, spec, inventory, conditions, flight recorder, operation,
/// progress (the Machine's report and its Deployment's), and the Events given.
pub fn machine_page(
    m: &Machine,
    deployment: Option<&Deployment>,
    subnets: &[std::sync::Arc<Subnet>],
    events: &[Event],
) -> Value {
    let status = m.status.clone().unwrap_or_default();
    let boot: Vec<Value> = status
        .boot
        .iter()
        .map(|b| json!({"step": b.step, "detail": b.detail, "at": b.at.0.to_string()}))
        .collect();
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by_key(|e| event_time(e));
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "type": e.type_, "reason": e.reason, "message": e.message,
                "at": event_time(e), "count": e.count,
            })
        })
        .collect();
    json!({
        "row": row(m, subnets),
        "spec": {
            "bmc": m.spec.bmc.as_ref().map(|b| b.address.clone()),
            "bootMACAddress": m.spec.boot_mac_address,
            "bootMode": m.spec.boot_mode,
            "maintenance": m.spec.maintenance,
            "broken": m.spec.broken,
            "description": m.spec.description,
        },
        "inventory": status.inventory,
        "conditions": status.conditions,
        "bootIntent": status.boot_intent,
        "bootApplied": status.boot_applied,
        "boot": boot,
        "lastOperation": status.last_operation,
        "provisioning": status.provisioning,
        "deployment": deployment.map(|d| json!({
            "name": d.name_any(),
            "phase": d.status.as_ref().and_then(|s| s.phase),
            "progress": d.status.as_ref().and_then(|s| s.progress.clone()),
            "addresses": d.status.as_ref().map(|s| s.addresses.clone()).unwrap_or_default(),
            "image": d.spec.image.url,
        })),
        "events": events,
    })
}

fn event_time(e: &Event) -> String {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| {
            e.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
        })
        .unwrap_or_default()
}

/// The Subnet page: spec (ranges, options), status (counts, static leases, who serves
/// it, candidate agents, conditions) and the machines on it.
pub fn subnet_page(s: &Subnet, machines: &[Value]) -> Value {
    let status = s.status.clone().unwrap_or_default();
    json!({
        "row": subnet_row(s),
        "spec": s.spec,
        "allocations": status.allocations,
        "servedBy": status.served_by,
        "candidateNodes": status.candidate_nodes,
        "conditions": status.conditions,
        "machines": machines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn machine(boot_detail: &str) -> Machine {
        serde_json::from_value(json!({
            "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
            "metadata": {"name": "r1-u07", "namespace": "dc"},
            "spec": {"bootMACAddress": "3c:ec:ef:12:34:56"},
            "status": {
                "phase": "Deploying",
                "power": {"state": "On"},
                "boot": [
                    {"step": "DHCPOffer", "detail": boot_detail, "at": "2026-12-07T10:00:00.000001Z"},
                    {"step": "ScriptFetched", "detail": "/boot/x.ipxe", "at": "2026-12-07T10:00:01.000001Z"},
                ],
                "inventory": {"inventoryRef": {"name": "r1-u07"}, "architecture": "x86_64",
                    "cores": 64, "memoryBytes": 549755813888i64,
                    "diskCount": 1, "largestDiskBytes": 214748364800i64,
                    "totalDiskBytes": 214748364800i64, "nicCount": 2},
                "deploymentRef": {"name": "web-1"},
                "conditions": [{"type": "Ready", "status": "False", "reason": "Deploying",
                    "message": "writing image", "lastTransitionTime": "2026-12-07T10:00:00Z"}],
            }
        }))
        .unwrap()
    }

    fn subnet(name: &str, cidr: &str) -> Arc<Subnet> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Subnet",
                "metadata": {"name": name, "namespace": "dc"},
                "spec": {"cidr": cidr},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn sizes_read_like_kubectl() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(549_755_813_888), "512 GiB");
        assert_eq!(bytes(1_610_612_736), "1.5 GiB");
        assert_eq!(bytes(214_748_364_800), "200 GiB");
    }

    #[test]
    fn row_has_the_maas_columns() {
        let subnets = [
            subnet("prov", "10.20.0.0/22"),
            subnet("other", "10.30.0.0/24"),
        ];
        let r = row(&machine("10.20.3.17, ipxe.efi over TFTP"), &subnets);
        assert_eq!(r["key"], "dc/r1-u07");
        assert_eq!(r["phase"], "Deploying");
        assert_eq!(r["power"], "On");
        assert_eq!(r["arch"], "x86_64");
        assert_eq!(r["cores"], 64);
        assert_eq!(r["memory"], "512 GiB");
        assert_eq!(r["disks"], "1 (200 GiB)");
        assert_eq!(r["deployment"], "web-1");
        assert_eq!(r["lastBoot"]["step"], "ScriptFetched");
        assert_eq!(r["subnets"], json!(["prov"]));
        assert_eq!(r["attention"]["reason"], "Deploying");
    }

    #[test]
    fn subnet_by_dhcp_address_or_static_claim() {
        let subnets = [subnet("prov", "10.20.0.0/22")];
        assert!(subnets_of(&machine("garbage"), &subnets).is_empty());
        let mut claimed = (*subnets[0]).clone();
        claimed.status = serde_json::from_value(json!({
            "allocations": [{"address": "10.20.0.57", "deployment": "web-1"}]
        }))
        .ok();
        assert_eq!(
            subnets_of(&machine("garbage"), &[Arc::new(claimed)]),
            ["prov"]
        );
    }

    #[test]
    fn machine_page_carries_the_flight_recorder() {
        let page = machine_page(&machine("10.20.3.17"), None, &[], &[]);
        assert_eq!(page["boot"].as_array().unwrap().len(), 2);
        assert_eq!(page["boot"][0]["step"], "DHCPOffer");
        assert_eq!(page["inventory"]["nicCount"], 2);
    }
}
