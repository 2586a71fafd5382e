//! The machine API's wire types (JSON, camelCase) and its pure decisions: who is calling
//! (token check against the Machine's current attempt) and what the ramdisk must do (the
//! plan).

use ironpool_crds::common::RootDeviceHints;
use ironpool_crds::deployment::{ErasePolicy, ImageFormat, StorageLayout};
use ironpool_crds::machine::{BootPurpose, BootTarget, FailureReason, Hardware, ProvisioningStep};
use serde::{Deserialize, Serialize};

use super::cache::CacheKey;
use super::token::{ENLIST_ATTEMPT, TokenKey};
use super::{MacAddr, MachineView};

/// Response header on an image the agent will not serve because of a failure that another
/// boot cannot fix; its value is a [`FailureReason`] (e.g. `ChecksumMismatch`).
pub const FAILURE_HEADER: &str = "ironpool-failure";

/// `POST /api/v1/machines/<mac>/inventory`: the hardware inventory, shaped like the
/// Machine's `status.hardware`.
pub type InventoryReport = Hardware;

/// `POST /api/v1/machines/<mac>/progress`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProgressReport {
    /// Current step: Inventory, Erasing, WritingImage or WritingConfig.
    pub step: ProvisioningStep,
    /// Bytes written so far.
    #[serde(default)]
    pub bytes_written: Option<i64>,
    /// Total bytes to write, when known.
    #[serde(default)]
    pub bytes_total: Option<i64>,
    /// Free text (truncated to 1024 characters).
    #[serde(default)]
    pub message: Option<String>,
}

/// `POST /api/v1/machines/<mac>/result`: the end of the attempt's work.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResultReport {
    /// The attempt this result belongs to (must be the token's).
    pub attempt: i64,
    /// Succeeded or Failed.
    pub step: ProvisioningStep,
    /// What happened; for Failed, why (truncated to 1024 characters).
    #[serde(default)]
    pub message: Option<String>,
    /// For Failed: a failure that another boot cannot fix, when the ramdisk can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
}

/// `GET /api/v1/machines/<mac>/plan`: what the ramdisk must do in this attempt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// `<namespace>/<name>` of the Machine; absent while enlisting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// The boot MAC, colon-separated, lower case.
    pub mac: String,
    /// Enlist, Commission, Deploy or Erase.
    pub purpose: BootPurpose,
    /// The boot intent attempt (0 while enlisting).
    pub attempt: i64,
    /// Deploy: the image to write, served by this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PlanImage>,
    /// Deploy: the disk to write (Deployment hints, else the Machine's); Erase: unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_hints: Option<RootDeviceHints>,
    /// Deploy: partition layout after writing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<StorageLayout>,
    /// Erase: how to erase every disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erase: Option<ErasePolicy>,
    /// Deploy: the cloud-init NoCloud seed to write for first boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInitSeed>,
    /// Rescue: the SSH public keys admitted as root (`spec.rescue.sshAuthorizedKeys`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
}

/// The image in a Deploy plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlanImage {
    /// Where to download it: this agent's cache, `<base>/images/<algo>-<hex>`.
    pub url: String,
    /// `sha256:<hex>` or `sha512:<hex>`; the ramdisk verifies it too.
    pub checksum: String,
    /// raw or qcow2.
    pub format: ImageFormat,
}

/// cloud-init NoCloud seed files.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CloudInitSeed {
    /// `meta-data`: instance-id (new per attempt, so cloud-init runs again), hostname, and
    /// provider_id (`ironpool://<namespace>/<machine>`, the Cluster API provider ID a
    /// kubelet registers with, e.g. `{{ ds.meta_data.provider_id }}` in a cloud-init
    /// template).
    pub meta_data: String,
    /// `user-data`, if the Deployment has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// `network-config`, if the Deployment has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
}

/// `POST /api/v1/machines/<mac>/booted`: the deployed OS checks in on its first boot from
/// disk (its first-boot step finds the URL and token in the cloud-init meta-data keys
/// `ironpool-checkin-url` and `ironpool-checkin-token`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OsCheckIn {
    /// meta-data `instance-id` the OS booted with (`<namespace>-<machine>-<attempt>`).
    pub instance_id: String,
    /// Host name the OS set.
    #[serde(default)]
    pub hostname: Option<String>,
    /// `uname -r`.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Seconds since the OS kernel started.
    #[serde(default)]
    pub uptime_seconds: Option<f64>,
    /// What running the user-data did.
    #[serde(default)]
    pub user_data: Option<UserDataResult>,
}

/// The outcome of the deployed OS's user-data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserDataResult {
    /// `none`, `script` or `cloud-config`.
    pub kind: String,
    /// Exit code of the script or of the last failing command, if anything ran.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The tail of its output.
    #[serde(default)]
    pub output: String,
}

impl OsCheckIn {
    /// One line for the flight recorder (at most 512 characters), e.g.
    /// `OS booted from disk (Deploy attempt 3, kernel 6.1.0-28, up 9.8 s); user-data script exit 0: hello`.
    pub fn summary(&self, attempt: i64) -> String {
        let mut s = format!("OS booted from disk (Deploy attempt {attempt}");
        if let Some(k) = &self.kernel {
            s.push_str(&format!(", kernel {k}"));
        }
        if let Some(u) = self.uptime_seconds {
            s.push_str(&format!(", up {u:.1} s"));
        }
        s.push(')');
        match &self.user_data {
            Some(u) if u.kind != "none" => {
                let code = u.exit_code.map_or("-".to_string(), |c| c.to_string());
                let out: String = u.output.split_whitespace().collect::<Vec<_>>().join(" ");
                s.push_str(&format!("; user-data {} exit {code}", u.kind));
                if !out.is_empty() {
                    // The end of the output is kept: a failure's reason (and cloud-init's
                    // errors) come last.
                    let room = 512usize.saturating_sub(s.chars().count() + 2);
                    let n = out.chars().count();
                    s.push_str(": ");
                    if n > room {
                        s.push_str("...");
                        s.extend(out.chars().skip(n - room.saturating_sub(3)));
                    } else {
                        s.push_str(&out);
                    }
                }
            }
            _ => s.push_str("; no user-data"),
        }
        if s.chars().count() > 512 {
            s = s.chars().take(509).collect::<String>() + "...";
        }
        s
    }
}

/// Checks an OS check-in for `mac`: the token must be the OS token of the Deploy attempt
/// that wrote the disk, the attempt whose ramdisk last reported success (the OS of Deploy
/// attempt `n` first boots under the Disk intent `n + 1`; a person's power-on or cycle
/// issues later Disk attempts for the same OS). Without that report, the current Disk
/// attempt minus one. Returns the Machine and the Deploy attempt; the error is the 401
/// message.
pub fn authenticate_os(
    keys: &TokenKey,
    mac: &MacAddr,
    machine: Option<MachineView>,
    bearer: Option<&str>,
) -> Result<(MachineView, i64), String> {
    let Some(token) = bearer else {
        return Err(
            "missing 'Authorization: Bearer <token>' header; the deployed OS finds \
                    its token in the cloud-init meta-data (ironpool-checkin-token)"
                .to_string(),
        );
    };
    let Some(m) = machine else {
        return Err(format!("no Machine has MAC {mac}"));
    };
    let who = format!("Machine {}/{}", m.namespace, m.name);
    match &m.intent {
        Some(i) if i.target == BootTarget::Disk => {
            let deployed = m
                .deployed_attempt
                .filter(|&d| d < i.attempt)
                .unwrap_or(i.attempt - 1);
            if keys.verify_os(mac, deployed, token) {
                return Ok((m, deployed));
            }
            Err(format!(
                "token is not the check-in token of the OS that Deploy attempt {deployed} \
                 wrote to {who}; this OS is from an earlier deployment"
            ))
        }
        Some(i) => Err(format!(
            "{who} is not booting a deployed OS (its boot intent is {:?}/{:?} attempt {})",
            i.target, i.purpose, i.attempt
        )),
        None => Err(format!("{who} has no boot intent")),
    }
}

/// Who is calling the machine API, once the token checked out.
#[derive(Clone, Debug, PartialEq)]
pub enum Caller {
    /// The ramdisk of a known Machine, for its current attempt.
    Machine {
        /// The Machine.
        machine: Box<MachineView>,
        /// Its current ramdisk attempt.
        attempt: i64,
        /// Its current purpose.
        purpose: BootPurpose,
    },
    /// The enlistment ramdisk of a MAC no Machine has.
    Enlisting(MacAddr),
}

/// How many earlier attempts are recognised to tell "stale ramdisk" from "bad token".
const STALE_LOOKBACK: i64 = 16;

/// Checks `bearer` for `mac`: the token of the Machine's current ramdisk attempt, or the
/// enlistment token while no Machine has the MAC. The error is the 401 message.
pub fn authenticate(
    keys: &TokenKey,
    mac: &MacAddr,
    machine: Option<MachineView>,
    bearer: Option<&str>,
) -> Result<Caller, String> {
    let Some(token) = bearer else {
        return Err(
            "missing 'Authorization: Bearer <token>' header; the ramdisk finds its \
                    token on the kernel command line (ironpool.token=)"
                .to_string(),
        );
    };
    let Some(m) = machine else {
        if keys.verify(mac, ENLIST_ATTEMPT, token) {
            return Ok(Caller::Enlisting(*mac));
        }
        return Err(format!(
            "token is not valid for MAC {mac}, which no Machine has"
        ));
    };
    let who = format!("Machine {}/{}", m.namespace, m.name);
    let current = match &m.intent {
        Some(i) if i.target == BootTarget::Ramdisk => Some((i.attempt, i.purpose)),
        _ => None,
    };
    if let Some((attempt, purpose)) = current
        && keys.verify(mac, attempt, token)
    {
        return Ok(Caller::Machine {
            machine: Box::new(m),
            attempt,
            purpose,
        });
    }
    let now = match &m.intent {
        Some(i) => format!(
            "its current boot intent is {:?}/{:?} attempt {}",
            i.target, i.purpose, i.attempt
        ),
        None => "it has no boot intent".to_string(),
    };
    if keys.verify(mac, ENLIST_ATTEMPT, token) {
        return Err(format!(
            "enlistment token, but {who} now has this MAC and {now}; reboot the machine"
        ));
    }
    let newest = m.intent.as_ref().map_or(0, |i| i.attempt);
    let stale = (newest.saturating_sub(STALE_LOOKBACK).max(1)..newest)
        .rev()
        .find(|a| keys.verify(mac, *a, token));
    Err(match (stale, current) {
        (Some(a), _) => format!("token of attempt {a} has expired: {now}; this ramdisk is stale"),
        (None, None) => format!("token rejected: {who} has no ramdisk work ({now})"),
        (None, Some(_)) => format!("token does not match {who} ({now})"),
    })
}

/// The plan for a caller; `base_url` is this agent's. `Err` is a 409 message (the
/// Machine's facts are not complete yet; the ramdisk retries).
pub fn plan(caller: &Caller, base_url: &str, keys: &TokenKey) -> Result<Plan, String> {
    let (m, attempt, purpose) = match caller {
        Caller::Enlisting(mac) => {
            return Ok(Plan {
                machine: None,
                mac: mac.to_string(),
                purpose: BootPurpose::Enlist,
                attempt: ENLIST_ATTEMPT,
                image: None,
                root_device_hints: None,
                layout: None,
                erase: None,
                cloud_init: None,
                ssh_authorized_keys: Vec::new(),
            });
        }
        Caller::Machine {
            machine,
            attempt,
            purpose,
        } => (machine, *attempt, *purpose),
    };
    let mut plan = Plan {
        machine: Some(format!("{}/{}", m.namespace, m.name)),
        mac: m.mac.to_string(),
        purpose,
        attempt,
        image: None,
        root_device_hints: None,
        layout: None,
        erase: None,
        cloud_init: None,
        ssh_authorized_keys: Vec::new(),
    };
    match purpose {
        BootPurpose::Erase => plan.erase = Some(m.erase),
        BootPurpose::Rescue => {
            if m.rescue_keys.is_empty() {
                return Err(format!(
                    "Machine {}/{} is to boot into rescue (attempt {attempt}) but its \
                     spec.rescue has no SSH key this agent knows of yet; retry shortly",
                    m.namespace, m.name
                ));
            }
            plan.ssh_authorized_keys = m.rescue_keys.clone();
        }
        BootPurpose::Deploy => {
            let Some(d) = &m.deploy else {
                return Err(format!(
                    "Machine {}/{} is to deploy (attempt {attempt}) but its Deployment's image \
                     is not known to this agent yet; retry shortly",
                    m.namespace, m.name
                ));
            };
            let key = CacheKey::from_checksum(&d.image.checksum).map_err(|e| e.to_string())?;
            plan.image = Some(PlanImage {
                url: format!("{base_url}/images/{}", key.file_name()),
                checksum: d.image.checksum.clone(),
                format: d.image.format,
            });
            plan.root_device_hints = d
                .root_device_hints
                .clone()
                .or_else(|| m.root_device_hints.clone());
            plan.layout = Some(d.layout);
            let hostname = d.hostname.clone().unwrap_or_else(|| m.name.clone());
            plan.cloud_init = Some(CloudInitSeed {
                meta_data: format!(
                    "instance-id: {}-{}-{attempt}\nlocal-hostname: {hostname}\n\
                     provider_id: {}\n\
                     ironpool-checkin-url: {base_url}/api/v1/machines/{}/booted\n\
                     ironpool-checkin-token: {}\n",
                    m.namespace,
                    m.name,
                    ironpool_crds::capi::provider_id(&m.namespace, &m.name),
                    m.mac.to_string().replace(':', "-"),
                    keys.derive_os(&m.mac, attempt)
                ),
                user_data: d.user_data.clone(),
                network_data: d.network_data.clone(),
            });
        }
        _ => {}
    }
    Ok(plan)
}

/// Cuts `message` to at most 1024 characters (the Machine status limit).
pub fn clip(message: Option<String>) -> Option<String> {
    message.map(|m| m.chars().take(1024).collect())
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
