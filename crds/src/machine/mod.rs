//! The `Machine` kind: one physical server, its BMC and its lifecycle.

mod hardware;
mod inventory;
mod status;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use hardware::{Cpu, Disk, DiskType, Hardware, Nic, PciDevice, SystemInfo};
pub use inventory::{InventorySummary, MachineInventory, MachineInventorySpec, apply_object};
pub use status::{
    BOOT_RECORD_LIMIT, BootApplied, BootApplying, BootIntent, BootPurpose, BootRecord, BootStep,
    BootTarget, FailureReason, MachinePhase, MachineStatus, Operation, OperationKind,
    OperationResult, PowerState, PowerStatus, ProvisioningReport, ProvisioningStep,
};

use crate::cel::{self, rule};
use crate::common::{RootDeviceHints, SecretRef};

/// Desired state of a Machine: how to reach its BMC and how it boots.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "metal.ironpool.dev",
    version = "v1alpha1",
    kind = "Machine",
    namespaced,
    status = "MachineStatus",
    shortname = "bmm",
    category = "ironpool",
    label("clusterctl.cluster.x-k8s.io/move-hierarchy", ""),
    doc = "A physical server that Ironpool can power, boot, commission, deploy and erase. \
           Create one per server (or let Ironpool enlist unknown servers that PXE-boot); \
           its status shows the lifecycle phase, power, a hardware summary (the full \
           inventory is the MachineInventory of the same name) and the boot flight \
           recorder.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Power",
        type_ = "string",
        json_path = ".status.power.state",
        description = "Power state the BMC last reported"
    ),
    printcolumn(
        name = "Arch",
        type_ = "string",
        json_path = ".spec.architecture",
        description = "CPU architecture"
    ),
    printcolumn(
        name = "Cores",
        type_ = "integer",
        json_path = ".status.inventory.cores",
        description = "Physical CPU cores found by commissioning"
    ),
    printcolumn(
        name = "Memory",
        type_ = "string",
        json_path = ".status.inventory.memory",
        description = "Memory found by commissioning"
    ),
    printcolumn(
        name = "BMC",
        type_ = "string",
        json_path = ".spec.bmc.address",
        description = "BMC address"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "MAC",
        type_ = "string",
        json_path = ".spec.bootMACAddress",
        priority = 1,
        description = "MAC address of the boot NIC"
    ),
    printcolumn(
        name = "Disks",
        type_ = "integer",
        json_path = ".status.inventory.diskCount",
        priority = 1,
        description = "Disks found by commissioning"
    ),
    printcolumn(
        name = "Deployment",
        type_ = "string",
        json_path = ".status.deploymentRef.name",
        priority = 1,
        description = "Deployment this machine is allocated to"
    ),
    printcolumn(
        name = "Last-Boot-Step",
        type_ = "string",
        json_path = ".status.boot[-1:].step",
        priority = 1,
        description = "Newest step of the boot flight recorder"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1,
        description = "Why the machine is or is not ready"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    /// How to reach the server's baseboard management controller (power and boot device).
    /// Machines enlisted automatically have none until a person adds it; such a machine
    /// must be powered by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<Bmc>,

    /// MAC address of the NIC the server PXE-boots from, e.g. 3c:ec:ef:12:34:56. It is how
    /// Ironpool recognises the server on the provisioning network. Immutable.
    #[serde(rename = "bootMACAddress")]
    #[schemars(length(max = 17))]
    #[x_kube(validation = cel::mac_address("bootMACAddress"))]
    #[x_kube(validation = cel::immutable(
        "bootMACAddress",
        "it identifies the server on the wire; to use another NIC, delete this Machine and create a new one"
    ))]
    pub boot_mac_address: String,

    /// Firmware boot mode: UEFI (default) or Legacy BIOS. Picks the iPXE binary served and
    /// the BMC boot-override mode.
    #[serde(default)]
    pub boot_mode: BootMode,

    /// CPU architecture; decides which boot ramdisk and images fit. Default x86_64.
    #[serde(default)]
    pub architecture: Architecture,

    /// Which disk receives the OS when the server has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_hints: Option<RootDeviceHints>,

    /// Hold the machine where it is: no power actions, no phase changes, no allocation,
    /// until this is set back to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<bool>,

    /// Mark the server as broken (faulty hardware): it is never allocated and Ironpool
    /// takes no action on it until this is cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<bool>,

    /// Power of a Deployed machine: On (the default) runs the deployed OS; Off powers it
    /// off and keeps it off until this is set back to On, which boots the deployed OS
    /// again. Only a Deployed machine follows it: while commissioning, deploying or erasing
    /// the lifecycle decides power, and a Ready machine stays off. A machine deployed again
    /// while this is Off is powered off once its OS has checked in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<DesiredPower>,

    /// Power-cycle a Deployed machine once: set this to a new value (e.g. the current time)
    /// and Ironpool reboots the deployed OS, then records the value in
    /// `status.powerCycleHandled`. The same value never cycles twice; a machine whose
    /// `power` is Off is not cycled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub power_cycle_request: Option<String>,

    /// Rescue mode: boot a Deployed or Broken machine into the Ironpool ramdisk with an SSH
    /// server that admits these keys as root, without touching its disks (nothing is
    /// written, erased or inventoried). Its Ready condition then names the address to
    /// `ssh root@`. Remove this field to leave rescue: a Deployed machine boots its OS from
    /// disk again, a Broken one is powered off. Ignored in other phases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescue: Option<Rescue>,

    /// Free-form note for people, e.g. why the machine is broken or in maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

impl MachineSpec {
    /// A server known only by the MAC it PXE-boots from: no BMC, UEFI, x86_64, no hints.
    pub fn for_boot_mac(mac: impl Into<String>) -> Self {
        MachineSpec {
            bmc: None,
            boot_mac_address: mac.into(),
            boot_mode: BootMode::default(),
            architecture: Architecture::default(),
            root_device_hints: None,
            maintenance: None,
            broken: None,
            power: None,
            power_cycle_request: None,
            rescue: None,
            description: None,
        }
    }

    /// Whether a person asked for rescue mode (`spec.rescue`).
    pub fn wants_rescue(&self) -> bool {
        self.rescue.is_some()
    }

    /// Whether a person asked for the machine to be off (`spec.power: Off`).
    pub fn wants_off(&self) -> bool {
        self.power == Some(DesiredPower::Off)
    }
}

/// Rescue mode of a machine (`spec.rescue`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rescue {
    /// SSH public keys admitted as root by the rescue ramdisk, one authorized_keys line
    /// each, e.g. "ssh-ed25519 AAAAC3Nz... alice@laptop".
    #[schemars(length(min = 1, max = 16), inner(length(max = 8192)))]
    #[x_kube(validation = rule(
        r"self.all(k, k.matches('^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\\.com) [A-Za-z0-9+/]+={0,3}( [^\\n]*)?$'))",
        "every rescue.sshAuthorizedKeys entry must be one public key line such as \
         'ssh-ed25519 AAAAC3Nz... alice@laptop' (the contents of ~/.ssh/id_ed25519.pub; \
         ssh-rsa, ecdsa-sha2-nistp256/384/521 and sk- keys work too), never a private key"
    ))]
    pub ssh_authorized_keys: Vec<String>,
}

/// Desired power of a Deployed machine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DesiredPower {
    /// Run the deployed OS.
    On,
    /// Powered off.
    Off,
}

/// Baseboard management controller of a Machine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bmc {
    /// BMC address as a URL whose scheme picks the driver: redfish:// (HTTPS),
    /// redfish+https://, redfish+http://, or ipmi:// (IPMI 2.0 lanplus, default port 623).
    /// A Redfish path may name the ComputerSystem, e.g.
    /// redfish+https://10.30.0.7/redfish/v1/Systems/1; otherwise the only system is used.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = rule(
        r"self.matches('^(redfish|redfish\\+https|redfish\\+http|ipmi)://[^/?#@]+')",
        "bmc.address must start with redfish://, redfish+https://, redfish+http:// or ipmi:// \
         followed by the BMC host, e.g. redfish+https://10.30.0.7/redfish/v1/Systems/1 or ipmi://10.30.0.8:623"
    ))]
    #[x_kube(validation = rule(
        r"!self.startsWith('ipmi://') || self.matches('^ipmi://[^/?#@]+/?$')",
        "an ipmi:// address takes only a host and optional port, e.g. ipmi://10.30.0.8:623"
    ))]
    pub address: String,

    /// Secret in the Machine's namespace holding the BMC `username` and `password` keys.
    pub credentials_secret_ref: SecretRef,

    /// Accept any TLS certificate from a Redfish BMC. Default false: the certificate must
    /// verify. Only for lab BMCs with self-signed certificates.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Firmware boot mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BootMode {
    /// UEFI firmware.
    #[default]
    #[serde(rename = "UEFI")]
    Uefi,
    /// Legacy BIOS.
    Legacy,
}

/// CPU architecture.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Architecture {
    /// 64-bit x86 (amd64).
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit ARM (arm64).
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl Architecture {
    /// The spelling used in manifests and in kernel `uname -m` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Aarch64 => "aarch64",
        }
    }
}
