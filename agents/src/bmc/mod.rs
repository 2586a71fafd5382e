//! BMC power drivers behind one narrow trait: Redfish and IPMI (lanplus), chosen by the
//! scheme of the Machine's `spec.bmc.address`, plus a scriptable fake for unit tests.

mod address;
mod error;
pub mod fake;
pub mod ipmi;
pub mod redfish;

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;

pub use address::{BmcAddress, Protocol};
pub use error::BmcError;
pub use ironpool_crds::machine::{BootMode, PowerState, SystemInfo};

/// What to do with a machine's power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PowerAction {
    /// Power on (no-op on most BMCs when already on).
    On,
    /// Cut power at once (Redfish ForceOff, IPMI chassis power off).
    Off,
    /// Ask the OS to shut down (Redfish GracefulShutdown, IPMI soft).
    GracefulOff,
    /// Power-cycle or hard-reset a running machine so it boots again.
    Cycle,
}

impl PowerAction {
    /// The spelling used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "On",
            PowerAction::Off => "Off",
            PowerAction::GracefulOff => "GracefulOff",
            PowerAction::Cycle => "Cycle",
        }
    }
}

/// Where the machine boots from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BootDevice {
    /// Network boot (PXE).
    Pxe,
    /// Local disk.
    Disk,
    /// UEFI HTTP boot.
    UefiHttp,
}

/// How long a boot device setting lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Persistence {
    /// Next boot only.
    Once,
    /// Every boot until changed.
    Continuous,
}

/// A boot device override: device, how long it lasts and the firmware mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootOverride {
    /// Device to boot from.
    pub device: BootDevice,
    /// Next boot only, or every boot.
    pub persistence: Persistence,
    /// UEFI or Legacy BIOS.
    pub mode: BootMode,
}

/// Which driver talks to a BMC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DriverKind {
    /// DMTF Redfish over HTTP(S).
    Redfish,
    /// IPMI v2.0 RMCP+ (lanplus).
    Ipmi,
    /// The in-memory fake used by unit tests.
    Fake,
}

impl DriverKind {
    /// The spelling used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Redfish => "redfish",
            DriverKind::Ipmi => "ipmi",
            DriverKind::Fake => "fake",
        }
    }
}

/// A BMC: read and set power, set the boot device, read what the system is.
///
/// Methods return boxed futures so that drivers can live behind `Box<dyn PowerDriver>`.
pub trait PowerDriver: Send + Sync {
    /// Which driver this is.
    fn kind(&self) -> DriverKind;
    /// The current power state.
    fn power_state(&self) -> BoxFuture<'_, Result<PowerState, BmcError>>;
    /// Carry out a power action. Returns when the BMC accepted it, not when it landed.
    fn set_power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), BmcError>>;
    /// Set the boot device for the next boot or every boot.
    fn set_boot_device(&self, boot: BootOverride) -> BoxFuture<'_, Result<(), BmcError>>;
    /// Manufacturer, model, serial number and UUID as far as the BMC tells them.
    fn system_info(&self) -> BoxFuture<'_, Result<SystemInfo, BmcError>>;
    /// Release what the driver holds on the BMC (e.g. log out of a Redfish session).
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// BMC username and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Everything needed to build a driver for one BMC.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Parsed `spec.bmc.address`.
    pub address: BmcAddress,
    /// Username and password.
    pub credentials: Credentials,
    /// Accept any TLS certificate (Redfish over HTTPS only).
    pub insecure_skip_verify: bool,
    /// PEM CA bundle that verifies BMC certificates instead of the system roots.
    pub ca_bundle: Option<Vec<u8>>,
    /// Deadline of one BMC call.
    pub timeout: Duration,
}

impl DriverConfig {
    /// A config with verified TLS, no CA bundle and a 20 s call deadline.
    pub fn new(address: BmcAddress, credentials: Credentials) -> Self {
        Self {
            address,
            credentials,
            insecure_skip_verify: false,
            ca_bundle: None,
            timeout: Duration::from_secs(20),
        }
    }
}

/// Builds the driver the address scheme names. Does not contact the BMC.
pub fn connect(config: DriverConfig) -> Result<Box<dyn PowerDriver>, BmcError> {
    match config.address.protocol {
        Protocol::RedfishHttps | Protocol::RedfishHttp => {
            Ok(Box::new(redfish::RedfishDriver::new(config)?))
        }
        Protocol::Ipmi => Ok(Box::new(ipmi::IpmiDriver::new(config)?)),
    }
}
