//! The few Redfish resources the driver reads, as tolerant serde types: every field is
//! optional and unknown fields are ignored, because BMCs omit "required" properties.

use serde::Deserialize;

/// A link: `{"@odata.id": "/redfish/v1/..."}`.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Link {
    /// The linked resource's path.
    #[serde(rename = "@odata.id", default)]
    pub odata_id: Option<String>,
}

/// `/redfish/v1`.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRoot {
    /// Link to the Systems collection.
    #[serde(default)]
    pub systems: Option<Link>,
    /// Link to the SessionService.
    #[serde(default)]
    pub session_service: Option<Link>,
    /// Links, among them `Sessions`.
    #[serde(default)]
    pub links: Option<RootLinks>,
}

/// `ServiceRoot.Links`.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RootLinks {
    /// Link to the Sessions collection.
    #[serde(default)]
    pub sessions: Option<Link>,
}

/// `SessionService`.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct SessionService {
    /// Link to the Sessions collection.
    #[serde(default)]
    pub sessions: Option<Link>,
}

/// A resource collection (only the members matter).
#[derive(Deserialize, Clone, Debug, Default)]
pub struct Collection {
    /// Member links.
    #[serde(rename = "Members", default)]
    pub members: Vec<Link>,
}

/// `ComputerSystem`.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ComputerSystem {
    /// On, Off, PoweringOn, PoweringOff, Paused.
    #[serde(default)]
    pub power_state: Option<String>,
    /// Boot override settings.
    #[serde(default)]
    pub boot: Option<Boot>,
    /// Actions, among them `#ComputerSystem.Reset`.
    #[serde(default)]
    pub actions: Option<SystemActions>,
    /// Manufacturer.
    #[serde(default)]
    pub manufacturer: Option<String>,
    /// Model.
    #[serde(default)]
    pub model: Option<String>,
    /// Serial number.
    #[serde(default)]
    pub serial_number: Option<String>,
    /// UUID.
    #[serde(rename = "UUID", default)]
    pub uuid: Option<String>,
    /// BIOS version.
    #[serde(default)]
    pub bios_version: Option<String>,
}

/// `ComputerSystem.Boot`.
#[derive(Deserialize, Clone, Debug, Default)]
pub struct Boot {
    /// Current override target.
    #[serde(rename = "BootSourceOverrideTarget", default)]
    pub target: Option<String>,
    /// Targets the BMC accepts.
    #[serde(rename = "BootSourceOverrideTarget@Redfish.AllowableValues", default)]
    pub allowed_targets: Option<Vec<String>>,
    /// Disabled, Once, Continuous.
    #[serde(rename = "BootSourceOverrideEnabled", default)]
    pub enabled: Option<String>,
    /// UEFI or Legacy; absent on BMCs that cannot set the mode.
    #[serde(rename = "BootSourceOverrideMode", default)]
    pub mode: Option<String>,
}

/// `ComputerSystem.Actions`.
#[derive(Deserialize, Clone, Debug, Default)]
pub struct SystemActions {
    /// The Reset action.
    #[serde(rename = "#ComputerSystem.Reset", default)]
    pub reset: Option<ResetAction>,
}

/// `#ComputerSystem.Reset`.
#[derive(Deserialize, Clone, Debug, Default)]
pub struct ResetAction {
    /// Where to POST.
    #[serde(default)]
    pub target: Option<String>,
    /// ResetTypes advertised inline.
    #[serde(rename = "ResetType@Redfish.AllowableValues", default)]
    pub allowed: Option<Vec<String>>,
    /// Link to an ActionInfo that lists them instead.
    #[serde(rename = "@Redfish.ActionInfo", default)]
    pub action_info: Option<String>,
}

/// `ActionInfo`.
#[derive(Deserialize, Clone, Debug, Default)]
pub struct ActionInfo {
    /// Parameters of the action.
    #[serde(rename = "Parameters", default)]
    pub parameters: Vec<ActionParameter>,
}

/// One `ActionInfo.Parameters` entry.
#[derive(Deserialize, Clone, Debug, Default)]
pub struct ActionParameter {
    /// Parameter name, e.g. ResetType.
    #[serde(rename = "Name", default)]
    pub name: Option<String>,
    /// Values the action accepts.
    #[serde(rename = "AllowableValues", default)]
    pub allowable_values: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_vendor_documents_parse() {
        let root: ServiceRoot = serde_json::from_str(r#"{"Systems": {}}"#).unwrap();
        assert!(root.links.is_none());
        let sys: ComputerSystem = serde_json::from_str(
            r##"{"PowerState": "On", "Boot": {"BootSourceOverrideTarget": "None"},
                "Actions": {"#ComputerSystem.Reset": {"target": "/r",
                "@Redfish.ActionInfo": "/r/info"}}, "Oem": {"x": 1}}"##,
        )
        .unwrap();
        let reset = sys.actions.unwrap().reset.unwrap();
        assert_eq!(reset.allowed, None);
        assert_eq!(reset.action_info.as_deref(), Some("/r/info"));
        let empty: ComputerSystem = serde_json::from_str("{}").unwrap();
        assert!(empty.power_state.is_none());
    }
}
