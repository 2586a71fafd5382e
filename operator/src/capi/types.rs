//! The parts of Cluster API's own kinds (`cluster.x-k8s.io/v1beta2`) that Ironpool reads:
//! Machine and Cluster. Read only: the operator never writes them, and unknown fields are
//! ignored, so these stay valid as Cluster API adds fields.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The part of a Cluster API Machine's spec Ironpool reads.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "cluster.x-k8s.io",
    version = "v1beta2",
    kind = "Machine",
    root = "CapiMachine",
    namespaced,
    status = "CapiMachineStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct CapiMachineSpec {
    /// The Cluster this Machine belongs to.
    #[serde(default)]
    pub cluster_name: String,
    /// Where the bootstrap data comes from.
    #[serde(default)]
    pub bootstrap: Bootstrap,
    /// The infrastructure object (our IronpoolMachine).
    #[serde(default)]
    pub infrastructure_ref: ContractRef,
    /// The failure domain Cluster API placed the Machine in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_domain: Option<String>,
}

/// The part of a Cluster API Machine's status Ironpool reads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CapiMachineStatus {
    /// Conditions, among them MachineHealthCheck's HealthCheckSucceeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

impl CapiMachine {
    /// Why a MachineHealthCheck found this Machine unhealthy, if it did.
    pub fn unhealthy(&self) -> Option<String> {
        let c = self
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "HealthCheckSucceeded")?;
        (c.status == "False").then(|| {
            if c.message.is_empty() {
                c.reason.clone()
            } else {
                c.message.clone()
            }
        })
    }
}

/// `Machine.spec.bootstrap`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    /// The Secret (same namespace) holding the bootstrap data in key `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_secret_name: Option<String>,
}

/// A v1beta2 contract reference: API group, kind and name in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContractRef {
    /// API group, e.g. infrastructure.cluster.x-k8s.io.
    #[serde(default)]
    pub api_group: String,
    /// Kind, e.g. IronpoolMachine.
    #[serde(default)]
    pub kind: String,
    /// Name.
    #[serde(default)]
    pub name: String,
}

/// The part of a Cluster API Cluster Ironpool reads.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "cluster.x-k8s.io",
    version = "v1beta2",
    kind = "Cluster",
    root = "CapiCluster",
    namespaced,
    status = "CapiClusterStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct CapiClusterSpec {
    /// Whether reconciliation of the whole cluster is paused (clusterctl move sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// The endpoint of the workload cluster's API, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_endpoint: Option<Endpoint>,
    /// The infrastructure object (our IronpoolCluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure_ref: Option<ContractRef>,
}

/// `Cluster.spec.controlPlaneEndpoint`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    #[serde(default)]
    pub host: String,
    /// Port.
    #[serde(default)]
    pub port: i32,
}

/// The part of a Cluster's status Ironpool reads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CapiClusterStatus {
    /// Initialization flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<ClusterInitialization>,
}

/// `Cluster.status.initialization`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInitialization {
    /// True once the InfraCluster reported provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure_provisioned: Option<bool>,
}

impl CapiCluster {
    /// Whether `spec.paused` is set.
    pub fn paused(&self) -> bool {
        self.spec.paused == Some(true)
    }

    /// Whether Cluster API saw the cluster's infrastructure provisioned.
    pub fn infrastructure_provisioned(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.initialization.as_ref())
            .and_then(|i| i.infrastructure_provisioned)
            == Some(true)
    }
}
