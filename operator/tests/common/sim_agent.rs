//! A simulated network agent: carries out each boot intent once (records bootApplied and
//! power) and plays the ramdisk's reports (inventory, image written, disks erased, OS
//! booted), writing exactly the status fields DESIGN.md gives the agent, as field manager
//! `ironpool-agent`. Tests can tell it to fail a purpose, to hold (not report), or to stop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ironpool_crds::machine::{
    BootPurpose, BootTarget, Hardware, InventorySummary, ProvisioningStep,
};
use ironpool_crds::{Machine, MachineInventory};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// One intent the agent carried out.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Applied {
    pub machine: String,
    pub attempt: i64,
    pub target: String,
    pub purpose: String,
}

/// How the simulated ramdisk behaves.
#[derive(Default)]
pub struct Script {
    /// Purposes whose ramdisk work fails.
    pub fail: HashSet<String>,
    /// Purposes for which the ramdisk never reports (to test timeouts).
    pub silent: HashSet<String>,
    /// Report WritingImage progress before success.
    pub progress: bool,
}

/// The simulated agent.
#[derive(Clone)]
pub struct SimAgent {
    pub applied: Arc<Mutex<Vec<Applied>>>,
    pub script: Arc<Mutex<Script>>,
    pub stop: CancellationToken,
}

impl SimAgent {
    /// Starts polling machines in `ns` every `period`.
    pub fn start(api: Api<Machine>, period: Duration) -> SimAgent {
        let agent = SimAgent {
            applied: Arc::default(),
            script: Arc::default(),
            stop: CancellationToken::new(),
        };
        let a = agent.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(list) = api.list(&ListParams::default()).await {
                    for m in list.items {
                        let _ = a.step(&api, &m).await;
                    }
                }
                tokio::select! {
                    _ = a.stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
            }
        });
        agent
    }

    /// Intents applied, per machine, in order.
    pub fn by_machine(&self) -> BTreeMap<String, Vec<(String, String)>> {
        let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for a in self.applied.lock().unwrap().iter() {
            out.entry(a.machine.clone())
                .or_default()
                .push((a.target.clone(), a.purpose.clone()));
        }
        out
    }

    async fn step(&self, api: &Api<Machine>, m: &Machine) -> Result<(), kube::Error> {
        let Some(st) = m.status.as_ref() else {
            return Ok(());
        };
        let Some(intent) = st.boot_intent.as_ref() else {
            return Ok(());
        };
        let applied = st.boot_applied.as_ref().map_or(0, |a| a.attempt);
        if intent.attempt <= applied {
            return Ok(());
        }
        let now = Timestamp::now().to_string();
        let purpose = format!("{:?}", intent.purpose);
        let (fail, silent, progress) = {
            let s = self.script.lock().unwrap();
            (
                s.fail.contains(&purpose),
                s.silent.contains(&purpose),
                s.progress,
            )
        };
        let power = if intent.target == BootTarget::Off {
            "Off"
        } else {
            "On"
        };
        // Server-side apply drops agent fields an apply leaves out: carry them forward.
        let mut status = json!({
            "bootApplied": {"attempt": intent.attempt, "appliedAt": now},
            "power": {"state": power, "lastSync": now},
        });
        if let Some(h) = &st.inventory {
            status["inventory"] = serde_json::to_value(h).unwrap();
        }
        if let Some(p) = &st.provisioning {
            status["provisioning"] = serde_json::to_value(p).unwrap();
        }
        if !st.boot.is_empty() {
            status["boot"] = serde_json::to_value(&st.boot).unwrap();
        }
        let report = |step: ProvisioningStep, msg: Option<&str>| json!({"attempt": intent.attempt, "step": step, "message": msg, "updatedAt": now});
        match (intent.target, intent.purpose) {
            (BootTarget::Ramdisk, _) if silent => {}
            (BootTarget::Ramdisk, _) if fail => {
                status["provisioning"] = report(
                    ProvisioningStep::Failed,
                    Some("simulated failure: disk /dev/vda not found"),
                );
            }
            (BootTarget::Ramdisk, BootPurpose::Commission) => {
                // As the agent does: the inventory object, then its summary in status.
                let hw: Hardware = serde_json::from_value(json!({"cpu": {"cores": 8, "threads": 16, "model": "Sim CPU"}, "memoryBytes": 34359738368i64, "memory": "32Gi",
                    "disks": [{"name": "vda", "sizeBytes": 107374182400i64, "type": "SSD"}], "nics": [{"name": "eth0", "mac": m.spec.boot_mac_address}]})).unwrap();
                let inventories: Api<MachineInventory> =
                    Api::namespaced(api.clone().into_client(), &m.namespace().unwrap());
                let object = json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "MachineInventory",
                    "metadata": {"name": m.name_any()}, "spec": {"hardware": hw}});
                inventories
                    .patch(
                        &m.name_any(),
                        &PatchParams::apply("ironpool-agent-hardware").force(),
                        &Patch::Apply(&object),
                    )
                    .await?;
                status["inventory"] =
                    serde_json::to_value(InventorySummary::of(&m.name_any(), &hw)).unwrap();
                status["provisioning"] = report(ProvisioningStep::Succeeded, None);
                status["boot"] = json!([{"step": "RamdiskCheckIn", "at": now}]);
            }
            (BootTarget::Ramdisk, BootPurpose::Deploy) if progress => {
                status["provisioning"] = json!({"attempt": intent.attempt, "step": "WritingImage", "bytesWritten": 644245095i64, "bytesTotal": 2147483648i64, "updatedAt": now});
                self.patch(api, m, &status).await?;
                tokio::time::sleep(Duration::from_millis(700)).await;
                status["provisioning"] = report(ProvisioningStep::Succeeded, None);
            }
            (BootTarget::Ramdisk, _) => {
                status["provisioning"] = report(ProvisioningStep::Succeeded, None)
            }
            (BootTarget::Disk, _) if !silent => {
                status["boot"] =
                    json!([{"step": "OSBooted", "detail": "booted from disk", "at": now}])
            }
            _ => {}
        }
        self.patch(api, m, &status).await?;
        self.applied.lock().unwrap().push(Applied {
            machine: m.name_any(),
            attempt: intent.attempt,
            target: format!("{:?}", intent.target),
            purpose,
        });
        Ok(())
    }

    async fn patch(
        &self,
        api: &Api<Machine>,
        m: &Machine,
        status: &serde_json::Value,
    ) -> Result<(), kube::Error> {
        let patch = json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine", "metadata": {"name": m.name_any()}, "status": status});
        api.patch_status(
            &m.name_any(),
            &PatchParams::apply("ironpool-agent").force(),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(())
    }
}
