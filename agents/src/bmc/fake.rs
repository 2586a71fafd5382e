//! A stateful in-memory BMC for unit tests: it records every call and can be told to fail.

use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{BmcError, BootOverride, DriverKind, PowerAction, PowerDriver, PowerState, SystemInfo};

/// What the fake BMC holds and what it was asked.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Current power (None reads as Off).
    pub power: Option<PowerState>,
    /// Last boot override set.
    pub boot: Option<BootOverride>,
    /// Every power action received, in order.
    pub actions: Vec<PowerAction>,
    /// When set, every call fails with an error built by this function.
    pub fail_with: Option<fn() -> BmcError>,
    /// Refuse a Cycle of a machine that is off, as real BMCs do (Redfish ForceRestart,
    /// IPMI chassis power cycle).
    pub refuse_cycle_when_off: bool,
    /// Accept a Cycle and leave the machine off, as when it was shutting down by itself as
    /// the restart arrived.
    pub cycle_ends_off: bool,
}

/// A fake BMC shared between a test and the driver under test.
#[derive(Clone, Debug, Default)]
pub struct FakeBmc {
    state: Arc<Mutex<FakeState>>,
}

impl FakeBmc {
    /// A fake that is powered off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks the state for inspection or to script failures.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn check(&self) -> Result<(), BmcError> {
        match self.state().fail_with {
            Some(f) => Err(f()),
            None => Ok(()),
        }
    }
}

impl PowerDriver for FakeBmc {
    fn kind(&self) -> DriverKind {
        DriverKind::Fake
    }

    fn power_state(&self) -> BoxFuture<'_, Result<PowerState, BmcError>> {
        let r = self
            .check()
            .map(|()| self.state().power.unwrap_or(PowerState::Off));
        async move { r }.boxed()
    }

    fn set_power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), BmcError>> {
        let r = self.check().and_then(|()| {
            let mut s = self.state();
            let off = s.power.unwrap_or(PowerState::Off) == PowerState::Off;
            if action == PowerAction::Cycle && off && s.refuse_cycle_when_off {
                return Err(BmcError::Protocol {
                    host: "fake".into(),
                    operation: "Reset ForceRestart".into(),
                    detail: "the system is powered off".into(),
                });
            }
            s.actions.push(action);
            s.power = Some(match action {
                PowerAction::Cycle if s.cycle_ends_off => PowerState::Off,
                PowerAction::On | PowerAction::Cycle => PowerState::On,
                PowerAction::Off | PowerAction::GracefulOff => PowerState::Off,
            });
            Ok(())
        });
        async move { r }.boxed()
    }

    fn set_boot_device(&self, boot: BootOverride) -> BoxFuture<'_, Result<(), BmcError>> {
        let r = self.check().map(|()| self.state().boot = Some(boot));
        async move { r }.boxed()
    }

    fn system_info(&self) -> BoxFuture<'_, Result<SystemInfo, BmcError>> {
        let r = self.check().map(|()| SystemInfo {
            manufacturer: Some("Ironpool".into()),
            product: Some("Fake".into()),
            ..SystemInfo::default()
        });
        async move { r }.boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}
