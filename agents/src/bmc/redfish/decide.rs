//! Pure Redfish decisions: which ResetTypes carry out a power action, the boot override
//! body, and how a PowerState string reads.

use serde_json::{Value, json};

use crate::bmc::{BootDevice, BootMode, BootOverride, Persistence, PowerAction, PowerState};

/// ResetTypes to POST, in order, for `action`, using only those in `allowed`. `None` for
/// `allowed` means the BMC advertises nothing, and the standard choice is tried.
/// `Err` carries what the action would need.
pub fn reset_plan(
    action: PowerAction,
    allowed: Option<&[String]>,
) -> Result<Vec<&'static str>, &'static str> {
    let has = |t: &str| allowed.is_none_or(|a| a.iter().any(|x| x == t));
    let first = |options: &[&'static str]| options.iter().copied().find(|t| has(t));
    let plan = match action {
        PowerAction::On => first(&["On", "ForceOn"]).map(|t| vec![t]),
        PowerAction::Off => first(&["ForceOff"]).map(|t| vec![t]),
        PowerAction::GracefulOff => first(&["GracefulShutdown"]).map(|t| vec![t]),
        PowerAction::Cycle => first(&["PowerCycle", "ForceRestart"])
            .map(|t| vec![t])
            .or_else(|| {
                let on = first(&["On", "ForceOn"])?;
                has("ForceOff").then(|| vec!["ForceOff", on])
            }),
    };
    plan.ok_or(match action {
        PowerAction::On => "On or ForceOn",
        PowerAction::Off => "ForceOff",
        PowerAction::GracefulOff => "GracefulShutdown",
        PowerAction::Cycle => "PowerCycle, ForceRestart, or ForceOff with On",
    })
}

/// The Redfish `BootSourceOverrideTarget` for a device.
pub fn boot_target(device: BootDevice) -> &'static str {
    match device {
        BootDevice::Pxe => "Pxe",
        BootDevice::Disk => "Hdd",
        BootDevice::UefiHttp => "UefiHttp",
    }
}

/// The PATCH body that sets `boot`; the mode is sent only when the BMC shows the
/// `BootSourceOverrideMode` property (some reject properties they lack).
pub fn boot_patch(boot: BootOverride, mode_supported: bool) -> Value {
    let mut b = json!({
        "BootSourceOverrideTarget": boot_target(boot.device),
        "BootSourceOverrideEnabled": match boot.persistence {
            Persistence::Once => "Once",
            Persistence::Continuous => "Continuous",
        },
    });
    if mode_supported && let Some(o) = b.as_object_mut() {
        let mode = match boot.mode {
            BootMode::Uefi => "UEFI",
            BootMode::Legacy => "Legacy",
        };
        o.insert("BootSourceOverrideMode".into(), json!(mode));
    }
    json!({ "Boot": b })
}

/// Reads a Redfish `PowerState`: transitions count as where they are heading.
pub fn power_state(s: Option<&str>) -> PowerState {
    match s {
        Some("On" | "PoweringOn" | "Paused") => PowerState::On,
        Some("Off" | "PoweringOff") => PowerState::Off,
        _ => PowerState::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reset_plan_uses_only_advertised_types() {
        let sushy = v(&[
            "On",
            "ForceOff",
            "GracefulShutdown",
            "GracefulRestart",
            "ForceRestart",
            "Nmi",
            "ForceOn",
        ]);
        let full = v(&["On", "ForceOff", "PowerCycle", "ForceRestart"]);
        let minimal = v(&["ForceOn", "ForceOff"]);
        let only_on = v(&["On"]);
        use PowerAction::*;
        type Case<'a> = (
            PowerAction,
            Option<&'a Vec<String>>,
            Result<Vec<&'a str>, ()>,
        );
        let cases: &[Case] = &[
            (Cycle, Some(&full), Ok(vec!["PowerCycle"])),
            (Cycle, Some(&sushy), Ok(vec!["ForceRestart"])),
            (Cycle, Some(&minimal), Ok(vec!["ForceOff", "ForceOn"])),
            (Cycle, Some(&only_on), Err(())),
            (Cycle, None, Ok(vec!["PowerCycle"])),
            (On, Some(&minimal), Ok(vec!["ForceOn"])),
            (On, Some(&sushy), Ok(vec!["On"])),
            (Off, Some(&only_on), Err(())),
            (Off, Some(&sushy), Ok(vec!["ForceOff"])),
            (GracefulOff, Some(&minimal), Err(())),
            (GracefulOff, Some(&sushy), Ok(vec!["GracefulShutdown"])),
        ];
        for (action, allowed, want) in cases {
            let got = reset_plan(*action, allowed.map(|a| a.as_slice())).map_err(|_| ());
            assert_eq!(&got, want, "{action:?} with {allowed:?}");
        }
    }

    #[test]
    fn boot_patch_sends_mode_only_when_supported() {
        let b = BootOverride {
            device: BootDevice::Pxe,
            persistence: Persistence::Once,
            mode: BootMode::Uefi,
        };
        assert_eq!(
            boot_patch(b, true),
            json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"}})
        );
        let d = BootOverride {
            device: BootDevice::Disk,
            persistence: Persistence::Continuous,
            mode: BootMode::Legacy,
        };
        assert_eq!(
            boot_patch(d, false),
            json!({"Boot": {"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Continuous"}})
        );
    }

    #[test]
    fn power_states_read_as_their_destination() {
        for (s, want) in [
            (Some("On"), PowerState::On),
            (Some("PoweringOn"), PowerState::On),
            (Some("PoweringOff"), PowerState::Off),
            (Some("Off"), PowerState::Off),
            (Some("Weird"), PowerState::Unknown),
            (None, PowerState::Unknown),
        ] {
            assert_eq!(power_state(s), want, "{s:?}");
        }
    }
}
