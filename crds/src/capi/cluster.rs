//! `IronpoolCluster` (the Cluster API InfraCluster) and `IronpoolClusterTemplate`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{Initialization, TemplateMeta};
use crate::cel::rule;

/// Desired state of an IronpoolCluster: where the workload cluster's API is reached, and
/// how Ironpool Machines are grouped into failure domains.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1beta1",
    kind = "IronpoolCluster",
    namespaced,
    status = "IronpoolClusterStatus",
    shortname = "ipc",
    category = "cluster-api",
    category = "ironpool",
    label("cluster.x-k8s.io/v1beta2", "v1beta1"),
    doc = "The bare-metal infrastructure of one Cluster API Cluster. Cluster API creates it \
           from the Cluster's infrastructureRef; Ironpool reports the control-plane endpoint \
           and the failure domains (the zones of the Ironpool Machines in this namespace) \
           and marks it provisioned. The servers themselves come with each IronpoolMachine.",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".metadata.labels.cluster\\.x-k8s\\.io/cluster-name",
        description = "Cluster API Cluster this belongs to"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.controlPlaneEndpoint.host",
        description = "Control-plane endpoint host"
    ),
    printcolumn(
        name = "Port",
        type_ = "integer",
        json_path = ".spec.controlPlaneEndpoint.port",
        description = "Control-plane endpoint port"
    ),
    printcolumn(
        name = "Provisioned",
        type_ = "boolean",
        json_path = ".status.initialization.provisioned",
        description = "Cluster infrastructure is ready for Machines"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why it is (not) ready"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IronpoolClusterSpec {
    /// The endpoint of the workload cluster's Kubernetes API: a virtual IP or load balancer
    /// in front of the control-plane servers (bare metal has no cloud load balancer to
    /// make one). Leave it out only if the Cluster's own spec.controlPlaneEndpoint is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_endpoint: Option<ApiEndpoint>,

    /// The Ironpool Machine label whose distinct values are this cluster's failure domains.
    /// Default: topology.kubernetes.io/zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    #[x_kube(validation = rule(
        r"self.matches('^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')",
        "failureDomainLabel must be a label key such as topology.kubernetes.io/zone"
    ))]
    pub failure_domain_label: Option<String>,

    /// Failure domains that may host control-plane servers. Empty: every failure domain may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub control_plane_failure_domains: Vec<String>,
}

/// A reachable Kubernetes API endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
pub struct ApiEndpoint {
    /// Host name or IP address the API server is served on, e.g. 10.20.0.5.
    #[schemars(length(min = 1, max = 512))]
    pub host: String,
    /// Port the API server is served on, e.g. 6443.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Observed state of an IronpoolCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IronpoolClusterStatus {
    /// Cluster API contract: provisioned is true once Machines of this cluster may be
    /// created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<Initialization>,
    /// The failure domains: each distinct value of the failure-domain label among the
    /// Ironpool Machines of this namespace, with how many of them are Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub failure_domains: Vec<FailureDomain>,
    /// Ready says whether the cluster infrastructure is provisioned, and if not why;
    /// Paused says whether reconciliation is paused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One failure domain, in the shape of the Cluster API contract.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureDomain {
    /// The failure domain, a value of the failure-domain label, e.g. rack1.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Whether control-plane servers may be placed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<bool>,
    /// Facts about the domain: machines (how many Ironpool Machines carry the label) and
    /// ready (how many of them are Ready to deploy).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// A template of IronpoolClusters, for ClusterClass.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1beta1",
    kind = "IronpoolClusterTemplate",
    namespaced,
    shortname = "ipct",
    category = "cluster-api",
    label("cluster.x-k8s.io/v1beta2", "v1beta1"),
    doc = "A template that ClusterClass uses to create IronpoolClusters.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct IronpoolClusterTemplateSpec {
    /// The IronpoolCluster to create.
    pub template: IronpoolClusterTemplateResource,
}

/// The object an IronpoolClusterTemplate creates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct IronpoolClusterTemplateResource {
    /// Labels and annotations of the IronpoolCluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMeta>,
    /// The spec of the IronpoolCluster.
    pub spec: IronpoolClusterSpec,
}
