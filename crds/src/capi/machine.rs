//! `IronpoolMachine` (the Cluster API InfraMachine) and `IronpoolMachineTemplate`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Initialization, TemplateMeta};
use crate::cel::rule;
use crate::common::{DataSecretRef, LocalObjectRef};
use crate::deployment::{DeploymentPhase, ErasePolicy, Image, MachineSelector, Storage};

/// Desired state of an IronpoolMachine: which server may host the Cluster API Machine and
/// what is written onto it. Cluster API copies it from an IronpoolMachineTemplate.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1beta1",
    kind = "IronpoolMachine",
    namespaced,
    status = "IronpoolMachineStatus",
    shortname = "ipm",
    category = "cluster-api",
    category = "ironpool",
    label("cluster.x-k8s.io/v1beta2", "v1beta1"),
    doc = "The bare-metal server of one Cluster API Machine. Once the Machine's bootstrap \
           data exists, Ironpool creates one Deployment (same name, owned by this object) \
           that allocates a Ready server matching hostSelector, writes the image with the \
           bootstrap data as cloud-init user data, and boots it. Deleting the \
           IronpoolMachine deletes that Deployment: the server is released, erased and \
           returns to the pool.",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".metadata.labels.cluster\\.x-k8s\\.io/cluster-name",
        description = "Cluster API Cluster this belongs to"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Phase of the Ironpool Deployment behind it"
    ),
    printcolumn(
        name = "Server",
        type_ = "string",
        json_path = ".status.machineRef.name",
        description = "The Ironpool Machine (server) it is bound to"
    ),
    printcolumn(
        name = "Provisioned",
        type_ = "boolean",
        json_path = ".status.initialization.provisioned",
        description = "The OS is deployed and booted"
    ),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress",
        description = "Current step of the deployment"
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
    ),
    printcolumn(
        name = "ProviderID",
        type_ = "string",
        json_path = ".spec.providerID",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = provider_id_stays())]
pub struct IronpoolMachineSpec {
    /// The ID of the server this Machine runs on, ironpool://<namespace>/<machine>. Set by
    /// Ironpool (as the Cluster API contract asks) once a server is bound; the Node's
    /// spec.providerID must match it. Leave it out.
    #[serde(
        rename = "providerID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = rule(
        r"self.matches('^ironpool://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')",
        "providerID must be ironpool://<namespace>/<machine>; Ironpool sets it, leave it out"
    ))]
    pub provider_id: Option<String>,

    /// The failure domain to place the server in: only Ironpool Machines whose
    /// failure-domain label (see IronpoolCluster.spec.failureDomainLabel) has this value
    /// are chosen. Cluster API's Machine.spec.failureDomain takes precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub failure_domain: Option<String>,

    /// Which servers may be chosen: Machine labels and minimum hardware, as in a
    /// Deployment's machineSelector. Empty: any Ready server of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selector: Option<MachineSelector>,

    /// The OS image to write (url, checksum, format). It needs cloud-init (or another
    /// NoCloud reader) to run the bootstrap data.
    pub image: Image,

    /// How the server's disks are erased when it is released: None, Quick (default) or
    /// Full.
    #[serde(default)]
    pub erase: ErasePolicy,

    /// Where and how the image is written (root disk hints, layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,

    /// Subnet to give the server a static address from; it becomes an InternalIP of the
    /// Machine. Without it the server uses DHCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_ref: Option<LocalObjectRef>,

    /// Secret with a cloud-init network-config (key networkData) for the server. Without
    /// it, Ironpool generates one for the static address of subnetRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<DataSecretRef>,
}

fn provider_id_stays() -> Rule {
    Rule::new(
        "!has(oldSelf.providerID) || (has(self.providerID) && self.providerID == oldSelf.providerID)",
    )
    .message(
        "spec.providerID is set by Ironpool once a server is bound and cannot change; \
         delete the Machine to get another server",
    )
    .field_path(".providerID")
}

/// An address of the server, in the shape of the Cluster API contract.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct MachineAddress {
    /// Hostname, InternalIP, ExternalIP, InternalDNS or ExternalDNS.
    #[serde(rename = "type")]
    pub type_: MachineAddressType,
    /// The address.
    #[schemars(length(min = 1, max = 256))]
    pub address: String,
}

/// Kinds of Machine addresses the contract accepts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MachineAddressType {
    /// The host name of the deployed OS.
    Hostname,
    /// An address inside the datacenter network.
    InternalIP,
    /// An address reachable from outside.
    ExternalIP,
    /// An internal DNS name.
    InternalDNS,
    /// An external DNS name.
    ExternalDNS,
}

/// Observed state of an IronpoolMachine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IronpoolMachineStatus {
    /// Cluster API contract: provisioned is true once the OS is written and has booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<Initialization>,
    /// Addresses of the server: its host name and the Deployment's addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<MachineAddress>,
    /// The failure domain the bound server is in (its failure-domain label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_domain: Option<String>,
    /// The Ironpool Deployment that carries this Machine (same name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_ref: Option<LocalObjectRef>,
    /// The Ironpool Machine (server) the Deployment was allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_ref: Option<LocalObjectRef>,
    /// The Deployment's phase: Pending, Allocated, Provisioning, Deployed, Failed or
    /// Releasing; WaitingForBootstrap before the Deployment exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The Deployment's progress line, e.g. "WritingImage 60% (1.2 of 2.0 GiB)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Ready (mirrored by Cluster API as the Machine's InfrastructureReady) says what
    /// blocks the server, with what to do; Paused says whether reconciliation is paused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl IronpoolMachineStatus {
    /// The phase word for a Deployment phase.
    pub fn phase_of(p: DeploymentPhase) -> &'static str {
        match p {
            DeploymentPhase::Pending => "Pending",
            DeploymentPhase::Allocated => "Allocated",
            DeploymentPhase::Provisioning => "Provisioning",
            DeploymentPhase::Deployed => "Deployed",
            DeploymentPhase::Failed => "Failed",
            DeploymentPhase::Releasing => "Releasing",
        }
    }
}

/// A template of IronpoolMachines, for MachineDeployments, MachineSets, control planes
/// and ClusterClass.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "infrastructure.cluster.x-k8s.io",
    version = "v1beta1",
    kind = "IronpoolMachineTemplate",
    namespaced,
    shortname = "ipmt",
    category = "cluster-api",
    label("cluster.x-k8s.io/v1beta2", "v1beta1"),
    doc = "A template that Cluster API copies into one IronpoolMachine per Machine of a \
           MachineDeployment, MachineSet or control plane.",
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.template.spec.image.url",
        description = "OS image written to each server"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct IronpoolMachineTemplateSpec {
    /// The IronpoolMachine to create for each Machine.
    pub template: IronpoolMachineTemplateResource,
}

/// The object an IronpoolMachineTemplate creates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct IronpoolMachineTemplateResource {
    /// Labels and annotations of each IronpoolMachine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMeta>,
    /// The spec of each IronpoolMachine; providerID must be left out.
    #[x_kube(validation = rule(
        "!has(self.providerID)",
        "a template must not set providerID: each IronpoolMachine gets the ID of its own server"
    ))]
    pub spec: IronpoolMachineSpec,
}
