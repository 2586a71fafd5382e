//! Finding the machine a verb names, and changing its spec.

use ironpool_crds::Machine;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

/// Machine `name` in `ns`, or an error that says how to list the machines there.
pub async fn machine(client: &Client, ns: &str, name: &str) -> anyhow::Result<Machine> {
    let machines: Api<Machine> = Api::namespaced(client.clone(), ns);
    machines.get_opt(name).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "machine {name} not found in namespace {ns}: `kubectl get bmm -n {ns}` lists the \
             machines there (or pass -n)"
        )
    })
}

/// Writes `patch` (a JSON merge patch, e.g. `{"spec": {"power": "Off"}}`) into machine
/// `name` in `ns`.
pub async fn patch_machine(
    client: &Client,
    ns: &str,
    name: &str,
    patch: &serde_json::Value,
) -> anyhow::Result<()> {
    let machines: Api<Machine> = Api::namespaced(client.clone(), ns);
    machines
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| anyhow::anyhow!("cannot change machine {name}: {e}"))?;
    Ok(())
}

/// A machine `m1` in `phase`, with an IPMI BMC when `bmc`, for the verbs' unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub fn test_machine(phase: ironpool_crds::machine::MachinePhase, bmc: bool) -> Machine {
    use ironpool_crds::machine::{Bmc, MachineSpec, MachineStatus};
    let mut spec = MachineSpec::for_boot_mac("52:54:00:00:00:01");
    spec.bmc = bmc.then(|| {
        serde_json::from_value::<Bmc>(serde_json::json!(
            {"address": "ipmi://10.0.0.1", "credentialsSecretRef": {"name": "b"}}
        ))
        .unwrap()
    });
    let mut m = Machine::new("m1", spec);
    m.status = Some(MachineStatus {
        phase: Some(phase),
        ..MachineStatus::default()
    });
    m
}
