//! The HTTP server's view of the API: [`StoreBootSource`] answers "which Machine has this
//! MAC" from the reflectors, and [`ApiReportSink`] writes ramdisk reports: the inventory
//! into the Machine's MachineInventory and its summary into Machine status (`inventory`,
//! as `ironpool-agent-hardware`), progress into `provisioning` (as
//! `ironpool-agent-provisioning`), each writer applying only its own field.

use futures::future::BoxFuture;
use ironpool_crds::deployment::ImageFormat;
use ironpool_crds::machine::{Hardware, InventorySummary, ProvisioningReport, ProvisioningStep};
use ironpool_crds::{Deployment, Machine, MachineInventory, Subnet};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::netconfig;
use super::stores::Stores;
use super::{MANAGER_HARDWARE, MANAGER_PROVISIONING, MANAGER_RESCUE};
use crate::http::source::{NETWORK_DATA_KEY, USER_DATA_KEY};
use crate::http::{
    BootSource, DeployInputs, HttpError, ImageRef, MacAddr, MachineView, ReportSink, SecretKey,
};

/// [`BootSource`] over the Machine and Deployment stores; cloud-init Secrets are read
/// with a GET when a Deploy plan is made.
#[derive(Clone)]
pub struct StoreBootSource {
    /// The stores.
    pub stores: Stores,
    /// Kubernetes client (Secrets).
    pub client: Client,
}

/// The Deploy inputs of a Deployment with an HTTP image; its cloud-init Secrets are named
/// for the plan to read. Without a networkDataSecretRef, a Deployment with a static address
/// on a known Subnet gets the network-config of [`netconfig::for_deployment`]. OCI images
/// are not served yet.
pub fn deploy_inputs(
    d: &Deployment,
    subnet: Option<&Subnet>,
    mac: MacAddr,
) -> Option<DeployInputs> {
    let image = &d.spec.image;
    let storage = d.spec.storage.clone().unwrap_or_default();
    Some(DeployInputs {
        image: ImageRef {
            url: image.url.clone()?,
            checksum: image.checksum.clone()?,
            format: image.format.unwrap_or(ImageFormat::Raw),
        },
        root_device_hints: storage.root_device_hints,
        layout: storage.layout,
        hostname: d.spec.hostname.clone(),
        user_data: None,
        network_data: netconfig::for_deployment(d, subnet, mac),
        user_data_secret: d.spec.user_data_secret_ref.as_ref().map(|r| SecretKey {
            name: r.name.clone(),
            key: r.key_or(USER_DATA_KEY).to_string(),
        }),
        network_data_secret: d.spec.network_data_secret_ref.as_ref().map(|r| SecretKey {
            name: r.name.clone(),
            key: r.key_or(NETWORK_DATA_KEY).to_string(),
        }),
    })
}

/// The HTTP server's view of a Machine (and its Deployment and that one's Subnet, if
/// allocated).
pub fn view(
    machine: &Machine,
    mac: MacAddr,
    deployment: Option<&Deployment>,
    subnet: Option<&Subnet>,
) -> MachineView {
    MachineView {
        name: machine.name_any(),
        namespace: machine.namespace().unwrap_or_default(),
        uid: machine.uid().unwrap_or_default(),
        mac,
        boot_mode: machine.spec.boot_mode,
        architecture: machine.spec.architecture,
        intent: machine.status.as_ref().and_then(|s| s.boot_intent.clone()),
        deployed_attempt: machine
            .status
            .as_ref()
            .and_then(|s| s.provisioning.as_ref())
            .filter(|p| p.step == ProvisioningStep::Succeeded)
            .map(|p| p.attempt),
        root_device_hints: machine.spec.root_device_hints.clone(),
        erase: deployment.map(|d| d.spec.erase).unwrap_or_default(),
        deploy: deployment.and_then(|d| deploy_inputs(d, subnet, mac)),
        rescue_keys: machine
            .spec
            .rescue
            .as_ref()
            .map(|r| r.ssh_authorized_keys.clone())
            .unwrap_or_default(),
    }
}

impl BootSource for StoreBootSource {
    fn machine_by_mac(&self, mac: &MacAddr) -> Option<MachineView> {
        let m = self.stores.machine_by_mac(mac)?;
        let d = self.stores.deployment_of(&m);
        let subnet = d.as_ref().and_then(|d| {
            let name = &d.spec.subnet_ref.as_ref()?.name;
            self.stores.subnet(&d.namespace()?, name)
        });
        Some(view(&m, *mac, d.as_deref(), subnet.as_deref()))
    }

    fn secret_value<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, HttpError>> {
        Box::pin(async move {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            let secret = api
                .get_opt(name)
                .await
                .map_err(|e| HttpError::Sink(format!("reading Secret {namespace}/{name}: {e}")))?;
            let Some(secret) = secret else {
                return Ok(None);
            };
            let from_data = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned());
            let from_string = secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned();
            Ok(from_data.or(from_string))
        })
    }
}

/// [`ReportSink`] writing Machine status by server-side apply.
#[derive(Clone)]
pub struct ApiReportSink {
    /// Kubernetes client.
    pub client: Client,
}

impl ApiReportSink {
    async fn apply(
        &self,
        machine: &MachineView,
        manager: &str,
        status: serde_json::Value,
    ) -> Result<(), HttpError> {
        let api: Api<Machine> = Api::namespaced(self.client.clone(), &machine.namespace);
        let patch = json!({
            "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine", "status": status,
        });
        api.patch_status(
            &machine.name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|e| HttpError::Sink(format!("Machine {}: {e}", machine.name)))
    }
}

impl ReportSink for ApiReportSink {
    fn inventory<'a>(
        &'a self,
        mac: MacAddr,
        machine: Option<&'a MachineView>,
        hardware: Hardware,
    ) -> BoxFuture<'a, Result<(), HttpError>> {
        Box::pin(async move {
            let Some(m) = machine else {
                // Enlistment creates the Machine from DHCP; its next inventory lands here.
                tracing::info!(%mac, "inventory from a MAC without a Machine; not recorded");
                return Ok(());
            };
            // The full inventory first, then the summary that says it is there: the
            // operator reads a commissioning as done from the summary. Both are applies, so
            // a report repeated after a failure between them writes the same again.
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let object = ironpool_crds::machine::apply_object(
                &m.namespace,
                &m.name,
                Some(&m.uid),
                &hardware,
                Some(&now),
            );
            let api: Api<MachineInventory> = Api::namespaced(self.client.clone(), &m.namespace);
            api.patch(
                &m.name,
                &PatchParams::apply(MANAGER_HARDWARE).force(),
                &Patch::Apply(&object),
            )
            .await
            .map_err(|e| HttpError::Sink(format!("MachineInventory {}: {e}", m.name)))?;
            let summary = InventorySummary::of(&m.name, &hardware);
            self.apply(m, MANAGER_HARDWARE, json!({"inventory": summary}))
                .await
        })
    }

    fn provisioning<'a>(
        &'a self,
        machine: &'a MachineView,
        report: ProvisioningReport,
    ) -> BoxFuture<'a, Result<(), HttpError>> {
        Box::pin(async move {
            self.apply(
                machine,
                MANAGER_PROVISIONING,
                json!({"provisioning": report}),
            )
            .await
        })
    }

    fn rescue<'a>(
        &'a self,
        machine: &'a MachineView,
        report: ProvisioningReport,
    ) -> BoxFuture<'a, Result<(), HttpError>> {
        Box::pin(async move {
            self.apply(machine, MANAGER_RESCUE, json!({"rescue": report}))
                .await
        })
    }
}
