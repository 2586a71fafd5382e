//! Observed state of a Machine: phase, power, boot intent and flight recorder.
//!
//! Who writes what (DESIGN.md, "Who writes what"): the operator owns `phase`,
//! `conditions`, `bootIntent`, `deploymentRef`, `lastOperation`, `observedGeneration`;
//! the agent owns `power`, `bootApplied`, `boot`, `inventory` and `provisioning`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::hardware::Hardware;
use super::inventory::InventorySummary;
use crate::common::LocalObjectRef;

/// How many boot steps `status.boot` keeps; older steps are dropped first.
pub const BOOT_RECORD_LIMIT: usize = 20;

/// Observed state of a Machine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    /// Lifecycle phase (MAAS vocabulary): New, Commissioning, Ready, Allocated, Deploying,
    /// Deployed, Releasing, FailedCommissioning, FailedDeployment, Broken, Maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MachinePhase>,

    /// Power state as the BMC last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerStatus>,

    /// What the machine must boot into next, decided by the operator. The agent that
    /// reaches the BMC carries out each attempt exactly once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_intent: Option<BootIntent>,

    /// The last boot intent attempt the agent carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_applied: Option<BootApplied>,

    /// The attempt whose power action the agent is about to send or has sent, written
    /// before the action and removed by the write of `bootApplied`: an agent that finds it
    /// equal to the pending attempt knows the action may have landed and never sends it
    /// again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_applying: Option<BootApplying>,

    /// Boot flight recorder: the last steps the machine took on the provisioning network
    /// (DHCP, TFTP, iPXE script, ramdisk check-in), newest last. Answers "where did the
    /// boot stop?".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub boot: Vec<BootRecord>,

    /// What commissioning found, in brief (architecture, cores, memory, disk count and
    /// sizes, NIC count); the full inventory is the MachineInventory named in `inventoryRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<InventorySummary>,

    /// Deprecated: where versions before the MachineInventory kind kept the full
    /// inventory. The operator moves it into a MachineInventory and clears it; nothing
    /// writes it any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<Hardware>,

    /// Progress and result the boot ramdisk last reported (erase, image write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<ProvisioningReport>,

    /// What the rescue ramdisk last reported (spec.rescue): Succeeded with the address to
    /// `ssh root@`, or Failed with why. Kept apart from `provisioning`, which still tells
    /// which attempt wrote the OS on the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescue: Option<ProvisioningReport>,

    /// The Deployment this machine is allocated to, while it is allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_ref: Option<LocalObjectRef>,

    /// The last long-running operation (commission, deploy, release...) and how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_operation: Option<Operation>,

    /// Standard conditions; `Ready` says whether the machine is usable and, if not, why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The `spec.powerCycleRequest` the operator last carried out (by issuing a reboot
    /// intent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_cycle_handled: Option<String>,

    /// The metadata.generation of the spec the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Lifecycle phase of a Machine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum MachinePhase {
    /// Known but not yet commissioned.
    New,
    /// Booting the ramdisk to take a hardware inventory.
    Commissioning,
    /// Commissioned, powered off, free to allocate.
    Ready,
    /// Reserved by a Deployment, not yet deploying.
    Allocated,
    /// Booting the ramdisk to write the OS image.
    Deploying,
    /// Running the deployed OS from its own disk.
    Deployed,
    /// Being released from its Deployment (erasing disks as asked), then Ready.
    Releasing,
    /// Commissioning failed; see the Ready condition for why.
    FailedCommissioning,
    /// Deploying failed; see the Ready condition for why.
    FailedDeployment,
    /// Marked broken by a person (spec.broken).
    Broken,
    /// Held by a person (spec.maintenance).
    Maintenance,
}

impl MachinePhase {
    /// The spelling used in manifests and printer columns.
    pub fn as_str(self) -> &'static str {
        match self {
            MachinePhase::New => "New",
            MachinePhase::Commissioning => "Commissioning",
            MachinePhase::Ready => "Ready",
            MachinePhase::Allocated => "Allocated",
            MachinePhase::Deploying => "Deploying",
            MachinePhase::Deployed => "Deployed",
            MachinePhase::Releasing => "Releasing",
            MachinePhase::FailedCommissioning => "FailedCommissioning",
            MachinePhase::FailedDeployment => "FailedDeployment",
            MachinePhase::Broken => "Broken",
            MachinePhase::Maintenance => "Maintenance",
        }
    }
}

/// Power state of a Machine as its BMC reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PowerStatus {
    /// On, Off, or Unknown (BMC unreachable or no BMC).
    pub state: PowerState,
    /// When the agent last observed a change of the power state (periodic reads that find
    /// nothing new write nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<Time>,
}

/// Power state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PowerState {
    /// Powered on.
    On,
    /// Powered off.
    Off,
    /// Not known: the BMC is unreachable or the machine has no BMC.
    Unknown,
}

/// What the machine must boot into next.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootIntent {
    /// Ramdisk (network boot into the Ironpool ramdisk), Disk (boot the installed OS) or
    /// Off (power off).
    pub target: BootTarget,
    /// Why: Enlist, Commission, Deploy, Erase (ramdisk), Run (disk), Idle or Stop (off).
    pub purpose: BootPurpose,
    /// Increases by one for every new intent; the agent applies each attempt once.
    #[schemars(range(min = 1))]
    pub attempt: i64,
    /// When the operator issued this attempt, to the microsecond: a boot step recorded
    /// after it belongs to this attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<MicroTime>,
}

/// Boot target of a boot intent.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BootTarget {
    /// Network-boot the Ironpool ramdisk.
    Ramdisk,
    /// Boot the OS installed on the local disk.
    Disk,
    /// Power the machine off.
    Off,
}

/// Purpose of a boot intent.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BootPurpose {
    /// Ramdisk reports an unknown machine.
    Enlist,
    /// Ramdisk takes the hardware inventory.
    Commission,
    /// Ramdisk writes the OS image.
    Deploy,
    /// Ramdisk erases the disks.
    Erase,
    /// Run the deployed OS from disk.
    Run,
    /// Stay powered off, ready for allocation.
    Idle,
    /// Stay powered off as a person asked (spec.power: Off on a Deployed machine).
    Stop,
    /// Ramdisk serves an SSH shell for repair (spec.rescue), touching no disk.
    Rescue,
}

/// The boot intent attempt the agent last carried out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootApplied {
    /// The `bootIntent.attempt` carried out.
    pub attempt: i64,
    /// When the BMC accepted the boot device and power actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<Time>,
}

/// A power action of a boot intent attempt that may be in flight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootApplying {
    /// The `bootIntent.attempt` whose power action may have been sent.
    pub attempt: i64,
    /// When the agent recorded it, just before sending the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// One step of the boot flight recorder.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootRecord {
    /// What happened.
    pub step: BootStep,
    /// Details, e.g. "10.20.3.17, ipxe.efi over TFTP".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub detail: Option<String>,
    /// When it happened, to the microsecond (compared with `bootIntent.issuedAt`).
    pub at: MicroTime,
}

/// A step a machine takes while booting over the network.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BootStep {
    /// DHCP DISCOVER received.
    #[serde(rename = "DHCPDiscover")]
    DhcpDiscover,
    /// DHCP OFFER sent.
    #[serde(rename = "DHCPOffer")]
    DhcpOffer,
    /// DHCP ACK sent.
    #[serde(rename = "DHCPAck")]
    DhcpAck,
    /// DHCP NAK sent.
    #[serde(rename = "DHCPNak")]
    DhcpNak,
    /// A file was read over TFTP (e.g. the iPXE binary).
    #[serde(rename = "TFTPRead")]
    TftpRead,
    /// The iPXE script was fetched over HTTP.
    ScriptFetched,
    /// A kernel, initrd or image was fetched over HTTP.
    AssetFetched,
    /// The ramdisk agent checked in.
    RamdiskCheckIn,
    /// The deployed OS booted from disk and checked in.
    #[serde(rename = "OSBooted")]
    OsBooted,
}

/// Progress and result the ramdisk reported for the current operation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningReport {
    /// The boot intent attempt this report belongs to.
    pub attempt: i64,
    /// Current step.
    pub step: ProvisioningStep,
    /// Bytes written so far (image write or erase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<i64>,
    /// Total bytes to write, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<i64>,
    /// What the ramdisk says about the step, e.g. an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// For Failed: the kind of failure, when the ramdisk can tell. The operator does not
    /// retry these: another boot would fail the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    /// When the ramdisk last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

/// A step of ramdisk work.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ProvisioningStep {
    /// Taking the hardware inventory.
    Inventory,
    /// Erasing disks.
    Erasing,
    /// Writing the OS image to the root disk.
    WritingImage,
    /// Writing first-boot (cloud-init) data.
    WritingConfig,
    /// The work finished successfully.
    Succeeded,
    /// The work failed; see message.
    Failed,
}

/// A ramdisk failure that retrying cannot fix.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FailureReason {
    /// The image's bytes do not hash to the Deployment's checksum.
    ChecksumMismatch,
    /// No disk matches the root-device hints, or none can hold the image.
    NoMatchingDisk,
}

impl FailureReason {
    /// The spelling used in conditions and events.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ChecksumMismatch => "ChecksumMismatch",
            FailureReason::NoMatchingDisk => "NoMatchingDisk",
        }
    }
}

/// A long-running operation on a Machine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Which operation.
    pub kind: OperationKind,
    /// When it started.
    pub started: Time,
    /// When it finished, if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
    /// Running, Succeeded or Failed.
    pub result: OperationResult,
    /// Retries used so far (each retry issues a new boot intent attempt).
    #[serde(default)]
    pub retries: i32,
    /// For Deploy: the image being written, as `<url or oci>@<checksum>`; a Deployment whose
    /// image differs from it is redeployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub image: Option<String>,
    /// Why it failed, or what it is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// Kind of a Machine operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OperationKind {
    /// Enlisting an unknown machine.
    Enlist,
    /// Taking the hardware inventory.
    Commission,
    /// Writing an OS image and booting it.
    Deploy,
    /// Releasing from a Deployment, erasing as asked.
    Release,
}

/// Outcome of a Machine operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OperationResult {
    /// Still running.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error.
    Failed,
}
