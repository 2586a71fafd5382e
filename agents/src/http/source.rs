//! The narrow interfaces between the HTTP server and the rest of the agent: where machine
//! facts come from ([`BootSource`]), where ramdisk reports go ([`ReportSink`]) and the boot
//! flight-recorder events ([`BootEvent`]).

use futures::future::BoxFuture;
use ironpool_crds::common::RootDeviceHints;
use ironpool_crds::deployment::{ErasePolicy, ImageFormat, StorageLayout};
use ironpool_crds::machine::{
    Architecture, BootIntent, BootMode, BootStep, Hardware, ProvisioningReport,
};

use super::{HttpError, MacAddr};

/// What the HTTP server needs to know about one Machine. The agent builds it from its
/// Machine (and Deployment, Secret) reflectors.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineView {
    /// Machine name.
    pub name: String,
    /// Machine namespace.
    pub namespace: String,
    /// Machine UID (the owner of its MachineInventory); empty in tests without an API.
    pub uid: String,
    /// `spec.bootMACAddress`.
    pub mac: MacAddr,
    /// `spec.bootMode`: decides how "boot from disk" is spelled in iPXE.
    pub boot_mode: BootMode,
    /// `spec.architecture`.
    pub architecture: Architecture,
    /// `status.bootIntent`, if the operator has set one.
    pub intent: Option<BootIntent>,
    /// The attempt whose ramdisk last reported success (`status.provisioning`): under a
    /// Disk intent, the Deploy attempt that wrote the OS on the disk, however many times a
    /// person has powered it on or cycled it since (each a new Disk attempt).
    pub deployed_attempt: Option<i64>,
    /// `spec.rootDeviceHints` (a Deployment's storage hints override them in `deploy`).
    pub root_device_hints: Option<RootDeviceHints>,
    /// How to erase disks when the purpose is Erase (from the Deployment being released).
    pub erase: ErasePolicy,
    /// What to write when the purpose is Deploy.
    pub deploy: Option<DeployInputs>,
    /// `spec.rescue.sshAuthorizedKeys`: who may log in when the purpose is Rescue.
    pub rescue_keys: Vec<String>,
}

/// The Deployment facts a Deploy plan needs, with the cloud-init Secrets already read.
#[derive(Clone, Debug, PartialEq)]
pub struct DeployInputs {
    /// The image to write.
    pub image: ImageRef,
    /// Root disk hints of the Deployment; they override the Machine's.
    pub root_device_hints: Option<RootDeviceHints>,
    /// Partition layout after writing.
    pub layout: StorageLayout,
    /// Hostname of the deployed OS.
    pub hostname: Option<String>,
    /// cloud-init user-data (content of `userDataSecretRef`).
    pub user_data: Option<String>,
    /// cloud-init network-config (content of `networkDataSecretRef`).
    pub network_data: Option<String>,
    /// Secret (in the Machine's namespace) and key whose value becomes `user_data` when
    /// the plan is made; a changed Secret takes effect at the next deploy.
    pub user_data_secret: Option<SecretKey>,
    /// Secret and key whose value becomes `network_data` when the plan is made.
    pub network_data_secret: Option<SecretKey>,
}

/// A Secret in the Machine's namespace and the key of it to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretKey {
    /// Name of the Secret.
    pub name: String,
    /// Key in it, e.g. `userData`, or `value` for a Cluster API bootstrap Secret.
    pub key: String,
}

/// Key of the user-data in a `userDataSecretRef` Secret that names no other.
pub const USER_DATA_KEY: &str = "userData";
/// Key of the network-config in a `networkDataSecretRef` Secret that names no other.
pub const NETWORK_DATA_KEY: &str = "networkData";

/// An upstream image: where it is, its checksum and its format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Upstream http:// or https:// URL.
    pub url: String,
    /// `sha256:<hex>` or `sha512:<hex>`.
    pub checksum: String,
    /// raw or qcow2.
    pub format: ImageFormat,
}

/// Where the HTTP server looks machines up. Implemented by the agent from its Machine
/// reflector; [`super::MemoryBootSource`] serves tests.
pub trait BootSource: Send + Sync {
    /// The Machine whose `spec.bootMACAddress` is `mac`, if any.
    fn machine_by_mac(&self, mac: &MacAddr) -> Option<MachineView>;

    /// The value of `key` in Secret `namespace/name`; `Ok(None)` when there is no such
    /// Secret or key.
    fn secret_value<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, HttpError>>;
}

/// Where the machine API's reports go. Implemented by the agent by writing Machine status
/// (server-side apply, field manager `ironpool-agent`); [`super::MemoryReportSink`] serves
/// tests. `machine` is `None` for an unknown MAC that is enlisting.
pub trait ReportSink: Send + Sync {
    /// Hardware inventory from commissioning or enlistment (`status.hardware`).
    fn inventory<'a>(
        &'a self,
        mac: MacAddr,
        machine: Option<&'a MachineView>,
        hardware: Hardware,
    ) -> BoxFuture<'a, Result<(), HttpError>>;

    /// Progress or the final result of ramdisk work (`status.provisioning`).
    fn provisioning<'a>(
        &'a self,
        machine: &'a MachineView,
        report: ProvisioningReport,
    ) -> BoxFuture<'a, Result<(), HttpError>>;

    /// The rescue ramdisk's result (`status.rescue`), kept apart from `provisioning`.
    fn rescue<'a>(
        &'a self,
        machine: &'a MachineView,
        report: ProvisioningReport,
    ) -> BoxFuture<'a, Result<(), HttpError>>;
}

/// One step a MAC took on the HTTP server, for the boot flight recorder (`status.boot` and
/// Events). Sent with `try_send`: a full channel drops the event rather than stall a boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEvent {
    /// The machine's boot MAC.
    pub mac: MacAddr,
    /// What happened: ScriptFetched, AssetFetched or RamdiskCheckIn.
    pub step: BootStep,
    /// Details, e.g. "/boot/3c-ec-ef-12-34-56.ipxe: ramdisk for Deploy attempt 3".
    pub detail: String,
    /// Whether a Machine has this MAC (false: an unknown machine, enlisting).
    pub known: bool,
}
