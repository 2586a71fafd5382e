//! The `Deployment` kind: "put this OS on one machine that fits".

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelectorRequirement, Time};
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::cel::{self, rule, rule_expr};
use crate::common::{DataSecretRef, LocalObjectRef, RootDeviceHints};
use crate::machine::Architecture;

/// Desired state of a Deployment: which machine, which image, which first-boot data.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "metal.ironpool.dev",
    version = "v1alpha1",
    kind = "Deployment",
    namespaced,
    status = "DeploymentStatus",
    derive = "PartialEq",
    shortname = "bmd",
    category = "ironpool",
    doc = "An OS deployed onto one bare-metal machine. Ironpool allocates a Ready machine that \
           matches machineSelector (or the one machineRef names), writes the image to its \
           disk, boots it, and reports progress. Deleting the Deployment releases the machine \
           and erases it as `erase` says.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Deployment phase"
    ),
    printcolumn(
        name = "Machine",
        type_ = "string",
        json_path = ".status.machineRef.name",
        description = "Allocated machine"
    ),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress.summary",
        description = "Current step and percentage"
    ),
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".status.addresses[0]",
        description = "First address of the deployed machine"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image.url",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = one_machine_choice())]
pub struct DeploymentSpec {
    /// Pick any Ready machine that matches these labels and hardware constraints. Set
    /// exactly one of machineSelector and machineRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_selector: Option<MachineSelector>,

    /// Deploy onto this named Machine (it must be Ready). Set exactly one of
    /// machineSelector and machineRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_ref: Option<LocalObjectRef>,

    /// The OS image to write. Changing it on a deployed Deployment redeploys the machine.
    pub image: Image,

    /// Secret with cloud-init user-data (key `userData` unless `key` names another),
    /// written to the NoCloud seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_secret_ref: Option<DataSecretRef>,

    /// Secret with cloud-init network-config (key `networkData` unless `key` names
    /// another). Without it, Ironpool writes a network config for the address it
    /// allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<DataSecretRef>,

    /// Where and how the image is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,

    /// Host name of the deployed OS; a DNS label. Default: the Deployment's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = rule(
        r"self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')",
        "hostname must be a DNS label: lower-case letters, digits and '-', at most 63 characters, e.g. web-1"
    ))]
    pub hostname: Option<String>,

    /// Subnet to allocate a static address from for the deployed OS. Without it the
    /// machine keeps using DHCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_ref: Option<LocalObjectRef>,

    /// How the machine's disks are erased when the Deployment is deleted: None, Quick
    /// (wipe partition tables and signatures, default) or Full (discard or overwrite every
    /// block).
    #[serde(default)]
    pub erase: ErasePolicy,
}

fn one_machine_choice() -> Rule {
    rule(
        "has(self.machineSelector) != has(self.machineRef)",
        "set exactly one of machineSelector (any Ready machine that fits) or machineRef (one named machine)",
    )
}

/// Labels and hardware a machine must have.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineSelector {
    /// Machine labels that must all match, e.g. ironpool.dev/pool: gpu.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Label expressions that must all match (In, NotIn, Exists, DoesNotExist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
    /// Minimum hardware, compared with the inventory commissioning found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<HardwareConstraints>,
}

/// Minimum hardware for a machine to be chosen.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardwareConstraints {
    /// Required CPU architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Architecture>,
    /// Minimum physical CPU cores, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = cel::at_least_one("minCores"))]
    pub min_cores: Option<i32>,
    /// Minimum memory as a quantity, e.g. 256Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = cel::positive_quantity("minMemory", "256Gi"))]
    pub min_memory: Option<String>,
    /// Minimum size of the largest disk as a quantity, e.g. 200Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = cel::positive_quantity("minDisk", "200Gi"))]
    pub min_disk: Option<String>,
}

/// The OS image to deploy: an HTTP(S) URL with checksum and format, or an OCI reference.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rule(
    "has(self.url) != has(self.oci)",
    "set exactly one of image.url (with checksum and format) or image.oci"
))]
#[x_kube(validation = Rule::new("!has(self.url) || has(self.checksum)")
    .message("image.checksum is required with image.url, e.g. sha256:<64 hex digits>; Ironpool verifies every byte it writes")
    .field_path(".checksum"))]
#[x_kube(validation = Rule::new("!has(self.url) || has(self.format)")
    .message("image.format is required with image.url: raw or qcow2")
    .field_path(".format"))]
pub struct Image {
    /// HTTP or HTTPS URL of the image. The agent fetches it once, verifies the checksum,
    /// and serves it to machines from its cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = rule_expr(
        "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",
        "'image.url ' + self + ' must be an absolute http:// or https:// URL'"
    ))]
    pub url: Option<String>,
    /// Checksum of the image file as `sha256:<hex>` or `sha512:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 135))]
    #[x_kube(validation = rule(
        r"self.matches('^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$')",
        "image.checksum must be sha256:<64 lower-case hex digits> or sha512:<128 lower-case hex digits>"
    ))]
    pub checksum: Option<String>,
    /// Image file format: raw or qcow2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// OCI artifact reference holding the image, e.g. registry.example/os/ubuntu:24.04.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub oci: Option<String>,
}

/// Image file format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// A raw disk image, written byte for byte.
    Raw,
    /// A QCOW2 image, converted to raw while it is written.
    Qcow2,
}

/// Where and how the image is written.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// The disk to write to; overrides the Machine's rootDeviceHints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_hints: Option<RootDeviceHints>,
    /// AsImage writes the image's partitions as they are (and tells cloud-init not to grow
    /// them); GrowRoot (default) also grows the image's last partition to fill the disk up
    /// to the cloud-init seed, and the OS's cloud-init grows its filesystem.
    #[serde(default)]
    pub layout: StorageLayout,
}

/// Partition layout after the image is written.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StorageLayout {
    /// Grow the last partition to fill the disk (its filesystem: cloud-init's resize_rootfs).
    #[default]
    GrowRoot,
    /// Keep the image's partitions as they are.
    AsImage,
}

/// How disks are erased on release.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ErasePolicy {
    /// Do not erase.
    None,
    /// Wipe partition tables and filesystem signatures.
    #[default]
    Quick,
    /// Discard (TRIM/NVMe format) or overwrite every block.
    Full,
}

/// Observed state of a Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// Pending, Allocated, Provisioning, Deployed, Failed or Releasing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DeploymentPhase>,
    /// The machine allocated to this Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_ref: Option<LocalObjectRef>,
    /// Addresses of the deployed machine, the static one from subnetRef first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Progress of the current step, mirrored from the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// How long each step took.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["step".into()]))]
    pub timings: Vec<StepTiming>,
    /// Standard conditions; `Ready` is true once the OS runs, and otherwise says why not
    /// (e.g. "0 of 12 Ready machines have >= 64Gi memory").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation of the spec the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Phase of a Deployment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeploymentPhase {
    /// Waiting for a machine that fits; the Ready condition says what is missing.
    Pending,
    /// A machine is reserved.
    Allocated,
    /// The image is being written and booted.
    Provisioning,
    /// The OS runs on the machine.
    Deployed,
    /// Provisioning failed; the Ready condition says why.
    Failed,
    /// Being deleted: the machine is being released.
    Releasing,
}

/// Progress of the current step.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Current step, e.g. WritingImage.
    pub step: String,
    /// Bytes written so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<i64>,
    /// Bytes to write in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<i64>,
    /// Percent of the step done, 0-100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<i32>,
    /// One line for people, e.g. "WritingImage 60% (1.2 of 2.0 GiB)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// Duration of one provisioning step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepTiming {
    /// Step name, e.g. Allocating, PoweringOn, WritingImage, BootingOS.
    pub step: String,
    /// When the step started.
    pub started: Time,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
}
