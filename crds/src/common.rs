//! Types shared by the kinds: references, address ranges, root-device hints.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::cel::{self, ipv4_int, is_ipv4, rule_expr};

/// A reference to another object of the same namespace, by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
pub struct LocalObjectRef {
    /// Name of the object, in the same namespace as the referring object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl LocalObjectRef {
    /// A reference to the object called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// A reference to a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
pub struct SecretRef {
    /// Name of the Secret, in the same namespace as the referring object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A Secret in the same namespace and the key in it that holds the data.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
pub struct DataSecretRef {
    /// Name of the Secret, in the same namespace as the referring object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key of the Secret that holds the data. Default: userData for user data,
    /// networkData for a network config. A Cluster API bootstrap Secret keeps it in value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = cel::rule(
        r"self.matches('^[-._a-zA-Z0-9]+$')",
        "key must be a Secret key: letters, digits, '-', '_' and '.', e.g. userData"
    ))]
    pub key: Option<String>,
}

impl DataSecretRef {
    /// A reference to key `default_key` of Secret `name` unless the reference names another.
    pub fn key_or<'a>(&'a self, default_key: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default_key)
    }
}

/// An inclusive range of IPv4 addresses, `start` to `end`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = range_order_rule())]
pub struct IpRange {
    /// First address of the range (inclusive), e.g. 10.20.3.0.
    #[schemars(length(max = 15))]
    #[x_kube(validation = cel::ipv4_field("range start"))]
    pub start: String,
    /// Last address of the range (inclusive), e.g. 10.20.3.250. Must not be before `start`.
    #[schemars(length(max = 15))]
    #[x_kube(validation = cel::ipv4_field("range end"))]
    pub end: String,
}

fn range_order_rule() -> kube::core::Rule {
    rule_expr(
        format!(
            "!{} || !{} || {} <= {}",
            is_ipv4("self.start"),
            is_ipv4("self.end"),
            ipv4_int("self.start"),
            ipv4_int("self.end")
        ),
        "'range start ' + self.start + ' comes after its end ' + self.end + '; swap them'",
    )
}

/// Hints that select the disk an OS is written to, when a machine has several.
/// Every hint given must match; a disk that matches all of them is chosen, the smallest
/// first. With no hints, the first disk by device name is used.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootDeviceHints {
    /// Kernel device name or a /dev/disk/by-path link, e.g. /dev/nvme0n1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub device_name: Option<String>,
    /// Disk model as reported by the kernel (substring match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub model: Option<String>,
    /// Disk vendor as reported by the kernel (substring match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub vendor: Option<String>,
    /// Disk serial number (exact match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub serial_number: Option<String>,
    /// World Wide Name of the disk (exact match), e.g. 0x5000c500a0b1c2d3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub wwn: Option<String>,
    /// Smallest acceptable disk size, in gigabytes (10^9 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = cel::at_least_one("minSizeGigabytes"))]
    pub min_size_gigabytes: Option<i64>,
    /// true selects only spinning disks, false only solid-state ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}
