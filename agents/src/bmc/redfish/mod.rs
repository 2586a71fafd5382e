//! The Redfish driver: finds the ComputerSystem, reads power, resets with only the
//! ResetTypes the system advertises, and sets the boot source override.

mod decide;
mod http;
mod session;
pub mod types;

use std::time::Duration;

use ::http::{Method, StatusCode};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tracing::debug;

pub use decide::{boot_patch, boot_target, power_state, reset_plan};
use http::{Response, Transport};
use session::{Auth, excerpt, parse};
use types::{ActionInfo, Collection, ComputerSystem};

use super::{
    BmcError, BootOverride, Credentials, DriverConfig, DriverKind, PowerAction, PowerDriver,
    PowerState, SystemInfo,
};

/// A Redfish BMC.
pub struct RedfishDriver {
    t: Transport,
    creds: Credentials,
    path: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    auth: Option<Auth>,
    system: Option<String>,
    systems_link: Option<String>,
}

impl RedfishDriver {
    /// A driver for the BMC in `config`; nothing is sent until the first call.
    pub fn new(config: DriverConfig) -> Result<Self, BmcError> {
        let t = Transport::new(
            &config.address,
            config.insecure_skip_verify,
            config.ca_bundle.as_deref(),
            config.timeout,
        )?;
        Ok(Self {
            t,
            creds: config.credentials,
            path: config.address.path,
            state: Mutex::new(State::default()),
        })
    }

    /// Logs in if needed; returns the auth to use.
    async fn auth(&self, renew: bool) -> Result<Auth, BmcError> {
        let mut st = self.state.lock().await;
        if !renew && let Some(a) = &st.auth {
            return Ok(a.clone());
        }
        if let Some(old) = st.auth.take() {
            session::logout(&self.t, &old).await;
        }
        let root = session::service_root(&self.t, &self.creds).await?;
        st.systems_link = root.systems.as_ref().and_then(|l| l.odata_id.clone());
        let auth = session::login(&self.t, &self.creds, &root).await?;
        st.auth = Some(auth.clone());
        Ok(auth)
    }

    /// One authenticated request; on 401 logs in again once.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, BmcError> {
        let auth = self.auth(false).await?;
        let resp = self
            .t
            .send(method.clone(), path, session::header(&auth), body)
            .await?;
        if resp.status != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        debug!(bmc = self.t.host(), "401: logging in again");
        let auth = self.auth(true).await?;
        let resp = self
            .t
            .send(method, path, session::header(&auth), body)
            .await?;
        if resp.status == StatusCode::UNAUTHORIZED {
            return Err(BmcError::Authentication {
                host: self.t.host().to_string(),
            });
        }
        Ok(resp)
    }

    /// The ComputerSystem path: named in the address, or the only member of Systems.
    async fn system_path(&self) -> Result<String, BmcError> {
        if self.path.contains("/Systems/") {
            return Ok(self.path.clone());
        }
        if let Some(p) = self.state.lock().await.system.clone() {
            return Ok(p);
        }
        self.auth(false).await?;
        let link = self.state.lock().await.systems_link.clone();
        let link = link.unwrap_or_else(|| "/redfish/v1/Systems".to_string());
        let resp = self.call(Method::GET, &link, None).await?;
        let members: Collection = parse(&self.t, &format!("GET {link}"), &resp)?;
        let ids: Vec<String> = members
            .members
            .into_iter()
            .filter_map(|m| m.odata_id)
            .collect();
        match ids.as_slice() {
            [one] => {
                self.state.lock().await.system = Some(one.clone());
                Ok(one.clone())
            }
            [] => Err(BmcError::Protocol {
                host: self.t.host().to_string(),
                operation: format!("GET {link}"),
                detail: "the BMC lists no ComputerSystem".into(),
            }),
            many => Err(BmcError::InvalidAddress {
                address: format!("{}{}", self.t.host(), self.path),
                detail: format!(
                    "the BMC has {} systems ({}); name one in the address path, e.g. .../{}",
                    many.len(),
                    many.join(", "),
                    many[0]
                ),
            }),
        }
    }

    async fn system(&self) -> Result<(String, ComputerSystem), BmcError> {
        let path = self.system_path().await?;
        let resp = self.call(Method::GET, &path, None).await?;
        let sys = parse(&self.t, &format!("GET {path}"), &resp)?;
        Ok((path, sys))
    }

    /// Accepts 2xx; maps the rest onto errors a person can act on.
    fn accepted(&self, operation: &str, resp: &Response, what: &str) -> Result<(), BmcError> {
        match resp.status {
            s if s.is_success() => Ok(()),
            StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::NOT_IMPLEMENTED
            | StatusCode::NOT_FOUND => Err(BmcError::Unsupported {
                host: self.t.host().to_string(),
                what: what.to_string(),
                offered: format!("HTTP {} to {operation}", resp.status),
            }),
            StatusCode::FORBIDDEN => Err(BmcError::Authentication {
                host: self.t.host().to_string(),
            }),
            s => Err(BmcError::Protocol {
                host: self.t.host().to_string(),
                operation: operation.to_string(),
                detail: format!("HTTP {s}: {}", excerpt(&resp.body)),
            }),
        }
    }

    async fn allowed_reset_types(
        &self,
        sys: &ComputerSystem,
    ) -> Result<(String, Option<Vec<String>>), BmcError> {
        let reset = sys
            .actions
            .as_ref()
            .and_then(|a| a.reset.clone())
            .unwrap_or_default();
        let target = reset.target.ok_or_else(|| BmcError::Unsupported {
            host: self.t.host().to_string(),
            what: "ComputerSystem.Reset".into(),
            offered: "no Reset action".into(),
        })?;
        if reset.allowed.is_some() {
            return Ok((target, reset.allowed));
        }
        let Some(info) = reset.action_info else {
            return Ok((target, None));
        };
        let resp = self.call(Method::GET, &info, None).await?;
        let info: ActionInfo = parse(&self.t, &format!("GET {info}"), &resp)?;
        let allowed = info
            .parameters
            .into_iter()
            .find(|p| p.name.as_deref() == Some("ResetType"))
            .map(|p| p.allowable_values)
            .filter(|v| !v.is_empty());
        Ok((target, allowed))
    }

    async fn reset(&self, action: PowerAction) -> Result<(), BmcError> {
        let (_, sys) = self.system().await?;
        let (target, allowed) = self.allowed_reset_types(&sys).await?;
        let plan =
            reset_plan(action, allowed.as_deref()).map_err(|needed| BmcError::Unsupported {
                host: self.t.host().to_string(),
                what: format!("power action {} (needs {needed})", action.as_str()),
                offered: allowed.as_deref().map(|a| a.join(", ")).unwrap_or_default(),
            })?;
        for (i, reset_type) in plan.iter().enumerate() {
            if i > 0 {
                self.wait_for(PowerState::Off).await?;
            }
            let body = serde_json::json!({ "ResetType": reset_type });
            let resp = self.call(Method::POST, &target, Some(&body)).await?;
            self.accepted(
                &format!("POST {target}"),
                &resp,
                &format!("ResetType {reset_type}"),
            )?;
            debug!(bmc = self.t.host(), reset_type, "reset accepted");
        }
        Ok(())
    }

    /// Polls until the power state is `want` (used between ForceOff and On).
    async fn wait_for(&self, want: PowerState) -> Result<(), BmcError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, sys) = self.system().await?;
            if power_state(sys.power_state.as_deref()) == want {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BmcError::Timeout {
                    host: self.t.host().to_string(),
                    operation: format!("waiting for power {want:?}"),
                    after: Duration::from_secs(60),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn boot(&self, boot: BootOverride) -> Result<(), BmcError> {
        let (path, sys) = self.system().await?;
        let b = sys.boot.unwrap_or_default();
        let target = boot_target(boot.device);
        if let Some(allowed) = &b.allowed_targets
            && !allowed.iter().any(|a| a == target)
        {
            return Err(BmcError::Unsupported {
                host: self.t.host().to_string(),
                what: format!("boot device {target}"),
                offered: allowed.join(", "),
            });
        }
        let body = boot_patch(boot, b.mode.is_some());
        let resp = self.call(Method::PATCH, &path, Some(&body)).await?;
        self.accepted(&format!("PATCH {path}"), &resp, "boot source override")
    }
}

impl PowerDriver for RedfishDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Redfish
    }

    fn power_state(&self) -> BoxFuture<'_, Result<PowerState, BmcError>> {
        async move {
            let (_, sys) = self.system().await?;
            Ok(power_state(sys.power_state.as_deref()))
        }
        .boxed()
    }

    fn set_power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), BmcError>> {
        self.reset(action).boxed()
    }

    fn set_boot_device(&self, boot: BootOverride) -> BoxFuture<'_, Result<(), BmcError>> {
        self.boot(boot).boxed()
    }

    fn system_info(&self) -> BoxFuture<'_, Result<SystemInfo, BmcError>> {
        async move {
            let (_, sys) = self.system().await?;
            Ok(SystemInfo {
                manufacturer: sys.manufacturer,
                product: sys.model,
                serial_number: sys.serial_number,
                uuid: sys.uuid,
                bios_version: sys.bios_version,
                ..SystemInfo::default()
            })
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            if let Some(auth) = self.state.lock().await.auth.take() {
                session::logout(&self.t, &auth).await;
            }
        }
        .boxed()
    }
}

impl Drop for RedfishDriver {
    fn drop(&mut self) {
        let Some(auth @ Auth::Session { .. }) = self.state.get_mut().auth.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let t = self.t.clone();
            rt.spawn(async move { session::logout(&t, &auth).await });
        }
    }
}
