//! In-memory [`BootSource`] and [`ReportSink`] for tests and the dev server, and builders of
//! [`MachineView`] test objects.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, RwLock};

use futures::future::BoxFuture;
use ironpool_crds::deployment::{ErasePolicy, ImageFormat, StorageLayout};
use ironpool_crds::machine::{
    Architecture, BootIntent, BootMode, BootPurpose, BootTarget, Hardware, ProvisioningReport,
};

use super::{BootSource, DeployInputs, HttpError, ImageRef, MacAddr, MachineView, ReportSink};

impl MachineView {
    /// A Machine `datacenter-a/<name>` with boot MAC `mac`, UEFI, x86_64, no intent.
    pub fn example(name: &str, mac: MacAddr) -> Self {
        Self {
            name: name.to_string(),
            namespace: "datacenter-a".to_string(),
            uid: String::new(),
            mac,
            boot_mode: BootMode::Uefi,
            architecture: Architecture::X86_64,
            intent: None,
            deployed_attempt: None,
            root_device_hints: None,
            erase: ErasePolicy::Quick,
            deploy: None,
            rescue_keys: Vec::new(),
        }
    }

    /// The same machine with another boot mode.
    pub fn with_boot_mode(mut self, mode: BootMode) -> Self {
        self.boot_mode = mode;
        self
    }

    /// The same machine with a boot intent.
    pub fn with_intent(mut self, target: BootTarget, purpose: BootPurpose, attempt: i64) -> Self {
        self.intent = Some(BootIntent {
            target,
            purpose,
            attempt,
            issued_at: None,
        });
        self
    }

    /// The same machine with a Deployment's image (raw, GrowRoot, hostname `web-1`).
    pub fn with_image(mut self, url: &str, checksum: &str) -> Self {
        self.deploy = Some(DeployInputs {
            image: ImageRef {
                url: url.to_string(),
                checksum: checksum.to_string(),
                format: ImageFormat::Raw,
            },
            root_device_hints: None,
            layout: StorageLayout::GrowRoot,
            hostname: Some("web-1".to_string()),
            user_data: Some("#cloud-config\n".to_string()),
            network_data: None,
            user_data_secret: None,
            network_data_secret: None,
        });
        self
    }
}

/// A [`BootSource`] backed by a map; tests insert and change machines at will.
#[derive(Debug, Default)]
pub struct MemoryBootSource {
    machines: RwLock<HashMap<MacAddr, MachineView>>,
    secrets: RwLock<HashMap<(String, String, String), String>>,
}

impl MemoryBootSource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the machine with `view.mac`.
    pub fn put(&self, view: MachineView) {
        let mut map = self
            .machines
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(view.mac, view);
    }

    /// Sets key `key` of Secret `namespace/name`.
    pub fn put_secret(&self, namespace: &str, name: &str, key: &str, value: &str) {
        let mut map = self.secrets.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(
            (namespace.into(), name.into(), key.into()),
            value.to_string(),
        );
    }

    /// Removes the machine with `mac`.
    pub fn remove(&self, mac: &MacAddr) {
        let mut map = self
            .machines
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(mac);
    }
}

impl BootSource for MemoryBootSource {
    fn machine_by_mac(&self, mac: &MacAddr) -> Option<MachineView> {
        let map = self.machines.read().unwrap_or_else(PoisonError::into_inner);
        map.get(mac).cloned()
    }

    fn secret_value<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, HttpError>> {
        let map = self.secrets.read().unwrap_or_else(PoisonError::into_inner);
        let value = map
            .get(&(namespace.into(), name.into(), key.into()))
            .cloned();
        Box::pin(async move { Ok(value) })
    }
}

/// One report received by [`MemoryReportSink`].
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// An inventory; `machine` is `None` for an enlisting MAC.
    Inventory {
        /// The reporting MAC.
        mac: MacAddr,
        /// The Machine name, if one has the MAC.
        machine: Option<String>,
        /// The inventory.
        hardware: Box<Hardware>,
    },
    /// A progress report or result.
    Provisioning {
        /// The Machine name.
        machine: String,
        /// The report.
        report: ProvisioningReport,
    },
    /// The rescue ramdisk's result.
    Rescue {
        /// The Machine name.
        machine: String,
        /// The report.
        report: ProvisioningReport,
    },
}

/// A [`ReportSink`] that keeps every report and can be told to fail.
#[derive(Debug, Default)]
pub struct MemoryReportSink {
    reports: Mutex<Vec<Report>>,
    fail: Mutex<Option<String>>,
}

impl MemoryReportSink {
    /// An empty sink that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every report so far, oldest first.
    pub fn reports(&self) -> Vec<Report> {
        self.reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From now on, fail every report with `message` (`None`: accept again).
    pub fn fail_with(&self, message: Option<&str>) {
        *self.fail.lock().unwrap_or_else(PoisonError::into_inner) = message.map(str::to_string);
    }

    fn record(&self, report: Report) -> Result<(), HttpError> {
        if let Some(msg) = self
            .fail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Err(HttpError::Sink(msg));
        }
        self.reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(report);
        Ok(())
    }
}

impl ReportSink for MemoryReportSink {
    fn inventory<'a>(
        &'a self,
        mac: MacAddr,
        machine: Option<&'a MachineView>,
        hardware: Hardware,
    ) -> BoxFuture<'a, Result<(), HttpError>> {
        let machine = machine.map(|m| m.name.clone());
        let result = self.record(Report::Inventory {
            mac,
            machine,
            hardware: Box::new(hardware),
        });
        Box::pin(async move { result })
    }

    fn provisioning<'a>(
        &'a self,
        machine: &'a MachineView,
        report: ProvisioningReport,
    ) -> BoxFuture<'a, Result<(), HttpError>> {
        let result = self.record(Report::Provisioning {
            machine: machine.name.clone(),
            report,
        });
        Box::pin(async move { result })
    }

    fn rescue<'a>(
        &'a self,
        machine: &'a MachineView,
        report: ProvisioningReport,
    ) -> BoxFuture<'a, Result<(), HttpError>> {
        let result = self.record(Report::Rescue {
            machine: machine.name.clone(),
            report,
        });
        Box::pin(async move { result })
    }
}
