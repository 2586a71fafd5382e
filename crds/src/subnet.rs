//! The `Subnet` kind: a provisioning or deployment network and its address pools.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::cel::{self, ipv4_int, is_ipv4, is_ipv4_cidr, rule, rule_expr};
use crate::common::IpRange;

/// Desired state of a Subnet: addressing, DHCP options and who serves it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "metal.ironpool.dev",
    version = "v1alpha1",
    kind = "Subnet",
    namespaced,
    status = "SubnetStatus",
    shortname = "bms",
    category = "ironpool",
    doc = "An IPv4 network that machines boot on or are deployed on. The agent elected for \
           it serves DHCP (reservations for known machines, the dynamic range for unknown \
           ones) and, with pxe: true, network boot.",
    printcolumn(
        name = "CIDR",
        type_ = "string",
        json_path = ".spec.cidr",
        description = "Network"
    ),
    printcolumn(
        name = "Used",
        type_ = "integer",
        json_path = ".status.addresses.allocated",
        description = "Addresses in use (static and dynamic)"
    ),
    printcolumn(
        name = "Free",
        type_ = "integer",
        json_path = ".status.addresses.free",
        description = "Addresses still free for allocation"
    ),
    printcolumn(
        name = "Served-By",
        type_ = "string",
        json_path = ".status.servedBy.agent",
        description = "Agent that holds the Subnet's lease and serves DHCP"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Gateway",
        type_ = "string",
        json_path = ".spec.gateway",
        priority = 1
    ),
    printcolumn(
        name = "Interface",
        type_ = "string",
        json_path = ".spec.interface",
        priority = 1
    ),
    printcolumn(name = "PXE", type_ = "boolean", json_path = ".spec.pxe", priority = 1)
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = gateway_inside_cidr())]
#[x_kube(validation = dynamic_range_inside_cidr())]
#[x_kube(validation = reserved_ranges_inside_cidr())]
#[x_kube(validation = dynamic_range_clear_of_reserved())]
#[x_kube(validation = gateway_outside_dynamic_range())]
pub struct SubnetSpec {
    /// The network in CIDR notation, e.g. 10.20.0.0/22. IPv4 only; host bits must be zero.
    /// Immutable.
    #[schemars(length(max = 18))]
    #[x_kube(validation = rule_expr(
        is_ipv4_cidr("self"),
        "'cidr ' + self + ' is not an IPv4 network in CIDR notation; write it like 10.20.0.0/22'"
    ))]
    #[x_kube(validation = rule_expr(
        format!("!{} || cidr(self) == cidr(self).masked()", is_ipv4_cidr("self")),
        "'cidr ' + self + ' has host bits set; write the network address, e.g. 10.20.0.0/22 rather than 10.20.0.5/22'"
    ))]
    #[x_kube(validation = cel::immutable(
        "cidr",
        "machines may hold addresses in it; create a new Subnet for the new network and delete this one"
    ))]
    pub cidr: String,

    /// Default router handed to machines (DHCP option 3). Must lie inside cidr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    #[x_kube(validation = cel::ipv4_field("gateway"))]
    pub gateway: Option<String>,

    /// DNS resolvers handed to machines (DHCP option 6), IPv4, most preferred first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = rule(
        format!("self.all(s, {})", is_ipv4("s")),
        "every dnsServers entry must be an IPv4 address such as 10.20.0.2"
    ))]
    pub dns_servers: Vec<String>,

    /// DNS domain of machines on this network (DHCP option 15), e.g. rack1.example.internal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = rule(
        r"self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$')",
        "domain must be a lower-case DNS name such as rack1.example.internal"
    ))]
    pub domain: Option<String>,

    /// 802.1Q VLAN ID of the network, 1-4094, when the agent's interface is a trunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4094))]
    pub vlan: Option<i32>,

    /// Interface MTU handed to machines (DHCP option 26), 576-9216.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9216))]
    pub mtu: Option<i32>,

    /// Pool for unknown and commissioning machines (dynamic DHCP leases). Must lie inside
    /// cidr and clear of reservedRanges. Without it, only known machines get addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_range: Option<IpRange>,

    /// Addresses Ironpool never hands out (routers, switches, other hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub reserved_ranges: Vec<IpRange>,

    /// DHCP lease time, e.g. 1h or 30m; at least 1m. Default 1h.
    #[serde(default = "default_lease_time")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = rule(
        r"self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != '' && duration(self) >= duration('60s') && duration(self) <= duration('8760h')",
        "leaseTime must be a duration between 1m and 8760h written like 1h, 30m or 1h30m"
    ))]
    pub lease_time: String,

    /// Serve network boot (PXE/iPXE/UEFI HTTP boot) on this network. Default true.
    #[serde(default = "default_true")]
    pub pxe: bool,

    /// Which nodes' agents may serve this Subnet; one of them is elected. Empty selects
    /// every agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_selector: Option<LabelSelector>,

    /// Interface on the agent's node that is attached to this network, e.g. eno2. Without
    /// it the agent uses the interface whose address lies inside cidr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub interface: Option<String>,
}

fn default_lease_time() -> String {
    "1h".into()
}

fn default_true() -> bool {
    true
}

/// CEL: the IPv4 address `ip` lies inside the spec's cidr (guarded against bad input).
fn inside_cidr(ip: &str) -> String {
    format!("(!{} || cidr(self.cidr).containsIP({ip}))", is_ipv4(ip))
}

fn cidr_ok() -> String {
    is_ipv4_cidr("self.cidr")
}

fn gateway_inside_cidr() -> Rule {
    rule_expr(
        format!("!has(self.gateway) || !{} || {}", cidr_ok(), inside_cidr("self.gateway")),
        "'gateway ' + self.gateway + ' lies outside cidr ' + self.cidr + '; pick an address inside it'",
    )
    .field_path(".gateway")
}

fn dynamic_range_inside_cidr() -> Rule {
    rule_expr(
        format!(
            "!has(self.dynamicRange) || !{} || ({} && {})",
            cidr_ok(),
            inside_cidr("self.dynamicRange.start"),
            inside_cidr("self.dynamicRange.end")
        ),
        "'dynamicRange ' + self.dynamicRange.start + '-' + self.dynamicRange.end + ' lies outside cidr ' + self.cidr",
    )
    .field_path(".dynamicRange")
}

fn reserved_ranges_inside_cidr() -> Rule {
    let inside = format!("({} && {})", inside_cidr("r.start"), inside_cidr("r.end"));
    rule_expr(
        format!(
            "!has(self.reservedRanges) || !{} || self.reservedRanges.all(r, {inside})",
            cidr_ok()
        ),
        "'every reservedRanges entry must lie inside cidr ' + self.cidr",
    )
    .field_path(".reservedRanges")
}

/// CEL: ranges `a` and `b` (both valid) do not overlap.
fn disjoint(a: &str, b: &str) -> String {
    format!(
        "({} < {} || {} > {})",
        ipv4_int(&format!("{a}.end")),
        ipv4_int(&format!("{b}.start")),
        ipv4_int(&format!("{a}.start")),
        ipv4_int(&format!("{b}.end"))
    )
}

fn range_valid(r: &str) -> String {
    format!(
        "({} && {})",
        is_ipv4(&format!("{r}.start")),
        is_ipv4(&format!("{r}.end"))
    )
}

fn dynamic_range_clear_of_reserved() -> Rule {
    let clear = format!(
        "(!{} || {})",
        range_valid("r"),
        disjoint("r", "self.dynamicRange")
    );
    rule_expr(
        format!(
            "!has(self.dynamicRange) || !has(self.reservedRanges) || !{} || self.reservedRanges.all(r, {clear})",
            range_valid("self.dynamicRange")
        ),
        "'dynamicRange ' + self.dynamicRange.start + '-' + self.dynamicRange.end + \
         ' overlaps a reservedRanges entry; make them disjoint'",
    )
    .field_path(".dynamicRange")
}

fn gateway_outside_dynamic_range() -> Rule {
    let g = ipv4_int("self.gateway");
    rule_expr(
        format!(
            "!has(self.gateway) || !has(self.dynamicRange) || !{} || !{} || {g} < {} || {g} > {}",
            is_ipv4("self.gateway"),
            range_valid("self.dynamicRange"),
            ipv4_int("self.dynamicRange.start"),
            ipv4_int("self.dynamicRange.end")
        ),
        "'gateway ' + self.gateway + ' lies inside dynamicRange ' + self.dynamicRange.start + '-' + \
         self.dynamicRange.end + '; the range would hand it out to a machine, so move one of them'",
    )
    .field_path(".gateway")
}

/// Observed state of a Subnet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubnetStatus {
    /// Address counts, written by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<AddressCounts>,
    /// Static addresses handed out from this Subnet, one entry per address. Written only by
    /// the operator, with the Subnet's resourceVersion as a precondition, so two writers can
    /// never hand out the same address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 65536))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["address".into()]))]
    pub allocations: Vec<AddressAllocation>,
    /// The agent that holds this Subnet's lease and serves it, written by that agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<ServedBy>,
    /// The Nodes whose labels match `spec.agentSelector`, sorted; the agents on them contend
    /// for the Subnet's Lease. Written by the operator, which watches Node labels, so that an
    /// agent needs no access to Nodes (RBAC cannot grant "the Node I run on"). Empty when
    /// no Node matches (then no agent serves the Subnet, and Ready says so) and unused
    /// when there is no agentSelector (every agent may serve).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub candidate_nodes: Vec<String>,
    /// Standard conditions; `Ready` is false when the Subnet overlaps another or no agent
    /// serves it, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation of the spec the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Address counts of a Subnet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressCounts {
    /// Usable host addresses in cidr (network and broadcast excluded).
    pub total: i64,
    /// Addresses never handed out (reservedRanges and the gateway).
    pub reserved: i64,
    /// Addresses in the dynamic range.
    pub dynamic: i64,
    /// Addresses in use: static allocations plus active dynamic leases.
    pub allocated: i64,
    /// Addresses still free for static allocation.
    pub free: i64,
}

/// One static address and the Deployment that holds it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressAllocation {
    /// The IPv4 address.
    pub address: String,
    /// Name of the Deployment (same namespace) that holds it.
    pub deployment: String,
}

/// The agent serving a Subnet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServedBy {
    /// Agent identity (its node name).
    pub agent: String,
    /// When it acquired the Subnet's lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_compares_both_ends() {
        let d = disjoint("a", "b");
        assert!(
            d.contains("a.end")
                && d.contains("b.start")
                && d.contains("a.start")
                && d.contains("b.end")
        );
    }
}
