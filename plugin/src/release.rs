//! `kubectl ironpool release MACHINE`: frees a deployed (or deploying) machine by deleting the
//! Deployment that holds it. Deleting is the API's way to release: the Deployment's finalizer
//! makes the operator release the machine and erase its disks as the Deployment's `erase`
//! says, and the machine returns to Ready. Refused for a machine no Deployment holds, and
//! for a Deployment Cluster API owns (its MachineDeployment would make another).

use std::io::Write;

use ironpool_crds::machine::MachinePhase;
use ironpool_crds::{Deployment, Machine};
use kube::api::DeleteParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::output::{Format, structured};

/// `release` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine name.
    pub machine: String,
    /// Release even when Cluster API owns the Deployment (it may create another).
    #[arg(long)]
    pub force: bool,
}

/// What `-o json|yaml` prints.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Released {
    machine: String,
    deployment: String,
    erase: String,
}

/// Why `m` cannot be released by deleting `d`, if it cannot: `d` is owned by Cluster API and
/// `force` is not set.
pub fn refusal(m: &Machine, d: &Deployment, force: bool) -> Option<String> {
    let owner = d
        .owner_references()
        .iter()
        .find(|o| o.kind == "IronpoolMachine")?;
    (!force).then(|| {
        format!(
            "machine {} is held by Deployment {}, which Cluster API's IronpoolMachine {} owns: \
             scale its MachineDeployment down or delete the Cluster API Machine instead \
             (--force deletes the Deployment anyway, and Cluster API may create another)",
            m.name_any(),
            d.name_any(),
            owner.name
        )
    })
}

/// Deletes the Deployment holding the machine.
pub async fn run(
    client: &Client,
    ns: &str,
    args: &Args,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let name = &args.machine;
    let m = crate::lookup::machine(client, ns, name).await?;
    let st = m.status.as_ref();
    let phase = st.and_then(|s| s.phase).unwrap_or(MachinePhase::New);
    let Some(held_by) = st
        .and_then(|s| s.deployment_ref.as_ref())
        .map(|r| r.name.clone())
    else {
        anyhow::bail!(
            "machine {name} is {}: no Deployment holds it, so there is nothing to release{}",
            phase.as_str(),
            if phase == MachinePhase::Releasing {
                " (it is being released already: `kubectl ironpool watch` follows the erase)"
            } else {
                ""
            }
        );
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let Some(d) = deployments.get_opt(&held_by).await? else {
        anyhow::bail!(
            "machine {name} names Deployment {held_by}, which is gone: the operator is releasing it already"
        );
    };
    if let Some(why) = refusal(&m, &d, args.force) {
        anyhow::bail!(why);
    }
    if d.metadata.deletion_timestamp.is_some() {
        anyhow::bail!(
            "Deployment {held_by} is being deleted already: machine {name} is on its way out"
        );
    }
    deployments
        .delete(&held_by, &DeleteParams::default())
        .await
        .map_err(|e| anyhow::anyhow!("cannot delete Deployment {held_by}: {e}"))?;
    let erase = format!("{:?}", d.spec.erase);
    let result = Released {
        machine: name.clone(),
        deployment: held_by.clone(),
        erase: erase.clone(),
    };
    if !structured(format, &result, out)? {
        writeln!(
            out,
            "machine {name}: releasing (Deployment {held_by} deleted; erase {erase}); \
             `kubectl ironpool watch` follows it back to Ready"
        )?;
    }
    Ok(())
}
