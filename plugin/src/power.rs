//! `kubectl ironpool power on|off|cycle MACHINE`: a person's power request, written into the
//! Machine's spec (`spec.power`, `spec.powerCycleRequest`). The operator turns it into a boot
//! intent and the agent that reaches the BMC carries it out once; nothing here talks to a
//! BMC. Only a Deployed machine follows a person's power: while it commissions, deploys or
//! erases the lifecycle decides, and a Ready machine stays off until it is allocated.

use std::io::Write;

use ironpool_crds::Machine;
use ironpool_crds::machine::MachinePhase;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use serde::Serialize;
use serde_json::json;

use crate::output::{Format, structured};

/// What to do with the machine's power.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Boot the deployed OS (spec.power: On).
    On,
    /// Power off and stay off (spec.power: Off).
    Off,
    /// Reboot the deployed OS once (a new spec.powerCycleRequest).
    Cycle,
}

/// `power` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// on, off or cycle.
    pub action: Action,
    /// Machine name.
    pub machine: String,
}

/// What `-o json|yaml` prints.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Requested {
    machine: String,
    action: String,
    /// The spec change written, as a merge patch.
    patch: serde_json::Value,
}

impl Requested {
    /// `action` asked of `machine` with the merge patch `patch`.
    pub fn new(machine: &str, action: &str, patch: serde_json::Value) -> Self {
        Requested {
            machine: machine.to_string(),
            action: action.to_string(),
            patch,
        }
    }
}

/// The spec change that asks for `action` on `m` at `now`, or why it cannot be asked.
pub fn request(m: &Machine, action: Action, now: Timestamp) -> Result<serde_json::Value, String> {
    let name = m.metadata.name.as_deref().unwrap_or("?");
    let phase = m
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(MachinePhase::New);
    let wants_off = m.spec.wants_off();
    if m.spec.bmc.is_none() {
        return Err(format!(
            "machine {name} has no BMC, so Ironpool cannot power it: add spec.bmc \
             (`kubectl ironpool enlist --mac {} --bmc ...` fills it in) or power it by hand",
            m.spec.boot_mac_address
        ));
    }
    if matches!(phase, MachinePhase::Maintenance | MachinePhase::Broken) {
        return Err(format!(
            "machine {name} is {}: Ironpool takes no power action on it until spec.{} is \
             cleared",
            phase.as_str(),
            if phase == MachinePhase::Broken {
                "broken"
            } else {
                "maintenance"
            }
        ));
    }
    // Setting power back to On is always allowed: it only withdraws a person's Off.
    if action == Action::On && wants_off {
        return Ok(json!({"spec": {"power": "On"}}));
    }
    let deployed_soon = matches!(
        phase,
        MachinePhase::Allocated | MachinePhase::Deploying | MachinePhase::Deployed
    );
    match action {
        Action::Off if deployed_soon => Ok(json!({"spec": {"power": "Off"}})),
        Action::On | Action::Cycle if phase != MachinePhase::Deployed => Err(format!(
            "machine {name} is {}: {}",
            phase.as_str(),
            not_deployed(phase, action)
        )),
        Action::Off => Err(format!(
            "machine {name} is {}: {}",
            phase.as_str(),
            not_deployed(phase, action)
        )),
        Action::Cycle if wants_off => Err(format!(
            "machine {name} is powered off as asked (spec.power: Off): \
             `kubectl ironpool power on {name}` boots it"
        )),
        Action::Cycle => Ok(json!({"spec": {"powerCycleRequest": now.to_string()}})),
        Action::On => Err(format!(
            "machine {name} is Deployed and its power is On already (spec.power); \
             `kubectl ironpool power cycle {name}` reboots it"
        )),
    }
}

/// Why `action` does not apply to a machine in `phase`, and what to do instead.
fn not_deployed(phase: MachinePhase, action: Action) -> &'static str {
    match phase {
        MachinePhase::Ready => {
            "a Ready machine stays powered off until a Deployment is allocated to it; \
             power applies to Deployed machines"
        }
        MachinePhase::Releasing => {
            "it is being released and erased, then powered off; wait until it is Ready"
        }
        MachinePhase::Allocated | MachinePhase::Deploying => {
            if action == Action::Cycle {
                "it is being deployed; the lifecycle reboots it into its OS when the image is \
                 written"
            } else {
                "it is being deployed and boots its OS when the image is written"
            }
        }
        _ => {
            "the lifecycle decides its power until it is Deployed (while commissioning, \
             deploying or erasing); set spec.maintenance to hold it where it is"
        }
    }
}

/// Writes the request into the machine's spec.
pub async fn run(
    client: &Client,
    ns: &str,
    args: &Args,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let name = &args.machine;
    let m = crate::lookup::machine(client, ns, name).await?;
    let patch = request(&m, args.action, Timestamp::now()).map_err(|why| anyhow::anyhow!(why))?;
    crate::lookup::patch_machine(client, ns, name, &patch).await?;
    let action = format!("{:?}", args.action).to_lowercase();
    let result = Requested::new(name, &action, patch);
    if !structured(format, &result, out)? {
        let what = match args.action {
            Action::On => "powering on into its deployed OS (spec.power: On)",
            Action::Off => "powering off; it stays off until `kubectl ironpool power on`",
            Action::Cycle => "power-cycling once (spec.powerCycleRequest)",
        };
        writeln!(
            out,
            "machine {name}: {what}; `kubectl get bmm {name} -w` shows POWER change"
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ironpool_crds::machine::DesiredPower;

    fn machine(phase: MachinePhase, bmc: bool, power: Option<DesiredPower>) -> Machine {
        let mut m = crate::lookup::test_machine(phase, bmc);
        m.spec.power = power;
        m
    }

    #[test]
    fn each_phase_gets_the_request_or_says_why_not() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let deployed = machine(MachinePhase::Deployed, true, None);
        assert_eq!(
            request(&deployed, Action::Off, now).unwrap(),
            json!({"spec": {"power": "Off"}})
        );
        assert_eq!(
            request(&deployed, Action::Cycle, now).unwrap(),
            json!({"spec": {"powerCycleRequest": "2027-01-15T08:00:00Z"}})
        );
        assert!(
            request(&deployed, Action::On, now)
                .unwrap_err()
                .contains("power cycle m1")
        );
        let off = machine(MachinePhase::Deployed, true, Some(DesiredPower::Off));
        assert_eq!(
            request(&off, Action::On, now).unwrap(),
            json!({"spec": {"power": "On"}})
        );
        assert!(
            request(&off, Action::Cycle, now)
                .unwrap_err()
                .contains("power on m1")
        );
        let ready = machine(MachinePhase::Ready, true, None);
        assert!(
            request(&ready, Action::On, now)
                .unwrap_err()
                .contains("stays powered off until a Deployment")
        );
        let deploying = machine(MachinePhase::Deploying, true, None);
        assert!(request(&deploying, Action::Off, now).is_ok());
        assert!(request(&deploying, Action::Cycle, now).is_err());
        assert!(
            request(
                &machine(MachinePhase::Deployed, false, None),
                Action::Off,
                now
            )
            .unwrap_err()
            .contains("has no BMC")
        );
        assert!(
            request(
                &machine(MachinePhase::Maintenance, true, None),
                Action::Off,
                now
            )
            .unwrap_err()
            .contains("spec.maintenance")
        );
    }
}
