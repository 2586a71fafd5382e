//! Pure decisions of the power controller: is an intent pending, and which BMC steps
//! carry it out given the power state.

use ironpool_crds::machine::{BootApplied, BootIntent, BootTarget};

use crate::bmc::{BootDevice, BootMode, BootOverride, Persistence, PowerAction, PowerState};

/// One BMC step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Set the boot device.
    SetBoot(BootOverride),
    /// Carry out a power action.
    Power(PowerAction),
}

/// The attempt to carry out, if the intent's attempt is newer than the one applied.
pub fn pending(intent: Option<&BootIntent>, applied: Option<&BootApplied>) -> Option<i64> {
    let intent = intent?;
    let done = applied.map_or(0, |a| a.attempt);
    (intent.attempt > done).then_some(intent.attempt)
}

/// Whether `action` must be recorded as in flight before it is sent. A power-on or a cycle
/// sent twice boots the machine twice; an off sent twice leaves it off, so a restart may
/// simply send it again.
pub fn needs_marker(action: PowerAction) -> bool {
    !matches!(action, PowerAction::Off | PowerAction::GracefulOff)
}

/// The steps for `target` when the machine's power is `power`.
///
/// `resumed` means an earlier run recorded that it was about to send the power action of
/// this attempt and then died: the action may have landed, so a second reboot is never
/// sent; only a machine found off is powered on (for Ramdisk and Disk), which cannot
/// reboot it twice.
pub fn plan(target: BootTarget, mode: BootMode, power: PowerState, resumed: bool) -> Vec<Step> {
    let boot = |device, persistence| {
        Step::SetBoot(BootOverride {
            device,
            persistence,
            mode,
        })
    };
    let bring_up = match (power, resumed) {
        (PowerState::Off, _) => Some(PowerAction::On),
        (_, true) => None,
        (PowerState::On | PowerState::Unknown, false) => Some(PowerAction::Cycle),
    };
    let mut steps = Vec::new();
    match target {
        BootTarget::Ramdisk => steps.push(boot(BootDevice::Pxe, Persistence::Once)),
        BootTarget::Disk => steps.push(boot(BootDevice::Disk, Persistence::Continuous)),
        BootTarget::Off => {
            if power != PowerState::Off {
                steps.push(Step::Power(PowerAction::Off));
            }
            return steps;
        }
    }
    steps.extend(bring_up.map(Step::Power));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use PowerAction::*;
    use PowerState as P;

    fn intent(attempt: i64) -> BootIntent {
        BootIntent {
            target: BootTarget::Ramdisk,
            purpose: ironpool_crds::machine::BootPurpose::Commission,
            attempt,
            issued_at: None,
        }
    }

    #[test]
    fn pending_only_when_the_intent_is_newer() {
        let applied = |a| {
            Some(BootApplied {
                attempt: a,
                applied_at: None,
            })
        };
        assert_eq!(pending(None, None), None);
        assert_eq!(pending(Some(&intent(1)), None), Some(1));
        assert_eq!(pending(Some(&intent(3)), applied(2).as_ref()), Some(3));
        assert_eq!(pending(Some(&intent(3)), applied(3).as_ref()), None);
        assert_eq!(pending(Some(&intent(2)), applied(3).as_ref()), None);
    }

    #[test]
    fn only_actions_that_boot_are_marked() {
        assert!(needs_marker(Cycle));
        assert!(needs_marker(On));
        assert!(!needs_marker(Off));
        assert!(!needs_marker(GracefulOff));
    }

    #[test]
    fn plans_by_target_power_and_resumption() {
        let pxe = Step::SetBoot(BootOverride {
            device: BootDevice::Pxe,
            persistence: Persistence::Once,
            mode: BootMode::Uefi,
        });
        let disk = Step::SetBoot(BootOverride {
            device: BootDevice::Disk,
            persistence: Persistence::Continuous,
            mode: BootMode::Uefi,
        });
        let cases: &[(BootTarget, PowerState, bool, Vec<Step>)] = &[
            (
                BootTarget::Ramdisk,
                P::On,
                false,
                vec![pxe, Step::Power(Cycle)],
            ),
            (
                BootTarget::Ramdisk,
                P::Off,
                false,
                vec![pxe, Step::Power(On)],
            ),
            (
                BootTarget::Ramdisk,
                P::Unknown,
                false,
                vec![pxe, Step::Power(Cycle)],
            ),
            (BootTarget::Ramdisk, P::On, true, vec![pxe]),
            (
                BootTarget::Ramdisk,
                P::Off,
                true,
                vec![pxe, Step::Power(On)],
            ),
            (
                BootTarget::Disk,
                P::On,
                false,
                vec![disk, Step::Power(Cycle)],
            ),
            (BootTarget::Disk, P::Off, false, vec![disk, Step::Power(On)]),
            (BootTarget::Disk, P::On, true, vec![disk]),
            (BootTarget::Off, P::On, false, vec![Step::Power(Off)]),
            (BootTarget::Off, P::Unknown, true, vec![Step::Power(Off)]),
            (BootTarget::Off, P::Off, false, vec![]),
        ];
        for (target, power, resumed, want) in cases {
            assert_eq!(
                &plan(*target, BootMode::Uefi, *power, *resumed),
                want,
                "{target:?} {power:?} resumed={resumed}"
            );
        }
    }
}
