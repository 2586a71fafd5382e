//! The Cluster API infrastructure kinds (group `infrastructure.cluster.x-k8s.io`, version
//! `v1beta1`, Cluster API contract v1beta2): `IronpoolCluster`, `IronpoolMachine` and their
//! templates. An IronpoolMachine becomes one Ironpool `Deployment`, so a CAPI Machine gets a
//! bare-metal server through the same allocator, image writer and release path as any
//! Deployment.

mod cluster;
mod machine;

pub use cluster::{
    ApiEndpoint, FailureDomain, IronpoolCluster, IronpoolClusterSpec, IronpoolClusterStatus,
    IronpoolClusterTemplate, IronpoolClusterTemplateResource, IronpoolClusterTemplateSpec,
};
pub use machine::{
    IronpoolMachine, IronpoolMachineSpec, IronpoolMachineStatus, IronpoolMachineTemplate,
    IronpoolMachineTemplateResource, IronpoolMachineTemplateSpec, MachineAddress,
    MachineAddressType,
};

use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The API group of the Cluster API kinds.
pub const INFRA_GROUP: &str = "infrastructure.cluster.x-k8s.io";
/// Their API version.
pub const INFRA_VERSION: &str = "v1beta1";
/// The Machine label whose values are failure domains, unless an IronpoolCluster names
/// another.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Annotation that pauses reconciliation of one Cluster API object.
pub const PAUSED_ANNOTATION: &str = "cluster.x-k8s.io/paused";
/// Label Cluster API sets on every object of a cluster.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// Label of infrastructure managed outside Cluster API (the InfraCluster is left alone).
pub const MANAGED_BY_LABEL: &str = "cluster.x-k8s.io/managed-by";
/// Annotation Ironpool puts on a server (Ironpool Machine) whose Cluster API Machine a
/// MachineHealthCheck remediated: `<RFC 3339 time> <namespace>/<machine>: <reason>`. For an
/// hour the allocator picks such a server only when no other fits, so a replacement does
/// not land on the hardware that just failed. Delete the annotation to lift it.
pub const REMEDIATED_ANNOTATION: &str = "infrastructure.cluster.x-k8s.io/ironpool-remediated";

/// Annotation clusterctl move waits on (`clusterctl.cluster.x-k8s.io/block-move`): Ironpool
/// keeps it on each IronpoolMachine with a server until, once the Cluster is paused, it has
/// written the status backups below.
pub const BLOCK_MOVE_ANNOTATION: &str = "clusterctl.cluster.x-k8s.io/block-move";

/// Annotation holding an object's status as JSON, written on a Deployment and its server
/// (Ironpool Machine) before clusterctl move, which never copies status: the operator on the
/// target cluster restores a status-less object from it, so a deployed server stays
/// deployed instead of being commissioned again.
pub const STATUS_BACKUP_ANNOTATION: &str = "metal.ironpool.dev/status-backup";

/// Prefix of every provider ID Ironpool sets: `ironpool://<namespace>/<machine>`.
pub const PROVIDER_ID_PREFIX: &str = "ironpool://";

/// The provider ID of Ironpool Machine `name` in `namespace`.
pub fn provider_id(namespace: &str, name: &str) -> String {
    format!("{PROVIDER_ID_PREFIX}{namespace}/{name}")
}

/// The (namespace, machine) a provider ID names, if it is one of ours.
pub fn parse_provider_id(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix(PROVIDER_ID_PREFIX)?;
    let (ns, name) = rest.split_once('/')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some((ns, name))
}

/// Metadata a template gives the objects made from it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct TemplateMeta {
    /// Labels for each object made from the template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations for each object made from the template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `status.initialization` of the contract: whether the infrastructure is provisioned.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct Initialization {
    /// True once the infrastructure is fully provisioned; Cluster API waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned: Option<bool>,
}

/// Condition types the two kinds set besides Ready.
pub mod condition {
    /// True while the object or its Cluster is paused (`cluster.x-k8s.io/paused` or
    /// `Cluster.spec.paused`): nothing is changed until it is unpaused.
    pub const PAUSED: &str = "Paused";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids_round_trip_and_reject_others() {
        let id = provider_id("lab", "r1-u07");
        assert_eq!(id, "ironpool://lab/r1-u07");
        assert_eq!(parse_provider_id(&id), Some(("lab", "r1-u07")));
        for bad in [
            "metal3://lab/r1",
            "ironpool://lab",
            "ironpool:///r1",
            "ironpool://lab/",
            "ironpool://a/b/c",
        ] {
            assert_eq!(parse_provider_id(bad), None, "{bad}");
        }
    }
}
