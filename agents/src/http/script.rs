//! iPXE script rendering: a pure function from a MAC, the Machine that has it (if any) and
//! its boot intent to the `#!ipxe` script served at `/boot/<mac>.ipxe`.
//!
//! - unknown MAC: the enlistment ramdisk (purpose Enlist, attempt 0, an enlistment token
//!   honoured only while no Machine has the MAC; see [`super::token`]);
//! - intent Ramdisk: the ramdisk with the purpose, attempt and the per-attempt token;
//! - intent Disk: hand over to the local disk (`sanboot` on Legacy BIOS, `exit 1` on UEFI so
//!   the firmware boots the next entry in its boot order: an `exit` with success would make
//!   EDK2 open its boot menu instead);
//! - intent Off: power off where iPXE can, otherwise hand back to the firmware;
//! - no intent yet: wait and ask again, so the operator's first intent is picked up
//!   without a BMC.
//!
//! Every script `echo`es what it does and why, so a serial console tells the story.

use ironpool_crds::machine::{Architecture, BootMode, BootPurpose, BootTarget};

use super::token::{ENLIST_ATTEMPT, TokenKey};
use super::{HttpError, MacAddr, MachineView};

/// Settings of script rendering, validated by [`ScriptConfig::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptConfig {
    base_url: String,
    kernel: String,
    initrd: String,
    extra_args: String,
    retry_seconds: u32,
}

impl ScriptConfig {
    /// `base_url` is how machines reach this agent, e.g. `http://10.20.0.2:8080` (no path);
    /// `extra_args` are appended to the ramdisk kernel command line.
    pub fn new(base_url: &str, extra_args: &str) -> Result<Self, HttpError> {
        let base_url = base_url.trim_end_matches('/').to_string();
        let ok_url = base_url.starts_with("http://") || base_url.starts_with("https://");
        if !ok_url || base_url.len() <= "http://".len() || has_unsafe(&base_url) {
            return Err(HttpError::Config(format!(
                "agent base URL '{base_url}' must be an absolute http:// URL without spaces, \
                 quotes or '$', e.g. http://10.20.0.2:8080"
            )));
        }
        if has_unsafe(extra_args.replace(' ', "").as_str()) {
            return Err(HttpError::Config(format!(
                "extra kernel arguments '{extra_args}' must not contain quotes, '$' or newlines"
            )));
        }
        Ok(Self {
            base_url,
            kernel: "vmlinuz".into(),
            initrd: "initramfs".into(),
            extra_args: extra_args.split_whitespace().collect::<Vec<_>>().join(" "),
            retry_seconds: 10,
        })
    }

    /// The agent base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn asset(&self, arch: Architecture, name: &str) -> String {
        match arch {
            Architecture::X86_64 => format!("{}/assets/{name}", self.base_url),
            other => format!("{}/assets/{}/{name}", self.base_url, other.as_str()),
        }
    }
}

fn has_unsafe(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_whitespace() || matches!(c, '$' | '"' | '\'' | '\\'))
}

/// A rendered script and a one-line summary for the boot flight recorder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The `#!ipxe` script.
    pub script: String,
    /// What the script does, e.g. "ramdisk for Deploy attempt 3".
    pub summary: String,
}

/// Renders the script for `mac`; `machine` is the Machine with that boot MAC, if any.
pub fn render_script(
    cfg: &ScriptConfig,
    keys: &TokenKey,
    mac: &MacAddr,
    machine: Option<&MachineView>,
) -> Rendered {
    let Some(m) = machine else {
        let why = format!("no Machine has MAC {mac}: booting the enlistment ramdisk");
        return ramdisk(
            cfg,
            keys,
            mac,
            Architecture::X86_64,
            BootPurpose::Enlist,
            ENLIST_ATTEMPT,
            &why,
        );
    };
    let who = format!("{}/{}", m.namespace, m.name);
    let Some(intent) = &m.intent else {
        return wait_for_intent(cfg, mac, &who);
    };
    let (purpose, attempt) = (intent.purpose, intent.attempt);
    match intent.target {
        BootTarget::Ramdisk => {
            let why = format!("Machine {who}: {purpose:?} (attempt {attempt})");
            ramdisk(cfg, keys, mac, m.architecture, purpose, attempt, &why)
        }
        BootTarget::Disk => disk(m.boot_mode, &who, purpose, attempt),
        BootTarget::Off => off(&who, purpose, attempt),
    }
}

fn header(lines: &[String]) -> String {
    let mut s = String::from("#!ipxe\n");
    for line in lines {
        s.push_str("echo Ironpool: ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

fn ramdisk(
    cfg: &ScriptConfig,
    keys: &TokenKey,
    mac: &MacAddr,
    arch: Architecture,
    purpose: BootPurpose,
    attempt: i64,
    why: &str,
) -> Rendered {
    // `?mac=` lets the asset route record AssetFetched for this MAC; iPXE names an image
    // after the basename of the URL path, so `initrd=initramfs` still matches.
    let kernel = format!("{}?mac={}", cfg.asset(arch, &cfg.kernel), mac.dashed());
    let initrd = format!("{}?mac={}", cfg.asset(arch, &cfg.initrd), mac.dashed());
    let mut args = format!(
        "initrd={} ironpool.url={} ironpool.token={} ironpool.mac={mac} ironpool.purpose={purpose:?} \
         ironpool.attempt={attempt} console=ttyS0",
        cfg.initrd,
        cfg.base_url,
        keys.derive(mac, attempt),
    );
    if !cfg.extra_args.is_empty() {
        args.push(' ');
        args.push_str(&cfg.extra_args);
    }
    let mut script = header(&[
        why.to_string(),
        format!("loading kernel {kernel}"),
        format!("loading initrd {initrd}"),
    ]);
    script.push_str(&format!("kernel {kernel} {args}\ninitrd {initrd}\nboot\n"));
    let summary = if attempt == ENLIST_ATTEMPT && purpose == BootPurpose::Enlist {
        "enlistment ramdisk (unknown MAC)".to_string()
    } else {
        format!("ramdisk for {purpose:?} attempt {attempt}")
    };
    Rendered { script, summary }
}

fn disk(mode: BootMode, who: &str, purpose: BootPurpose, attempt: i64) -> Rendered {
    let why = format!("Machine {who}: {purpose:?} (attempt {attempt}) boots from its local disk");
    let (how, cmd) = match mode {
        BootMode::Legacy => (
            "Legacy BIOS: sanboot drive 0x80, else back to the BIOS boot order",
            "sanboot --no-describe --drive 0x80 || exit\n",
        ),
        // A non-zero exit status: UEFI boot managers that see a boot option return
        // EFI_SUCCESS stop walking BootOrder and open their menu (EDK2/OVMF does); an
        // error makes them try the next entry, the local disk.
        BootMode::Uefi => (
            "UEFI: exiting with an error so the firmware tries its next boot entry",
            "exit 1\n",
        ),
    };
    let mut script = header(&[why, how.to_string()]);
    script.push_str(cmd);
    Rendered {
        script,
        summary: format!("local disk for {purpose:?} attempt {attempt}"),
    }
}

fn off(who: &str, purpose: BootPurpose, attempt: i64) -> Rendered {
    let mut script = header(&[
        format!("Machine {who}: {purpose:?} (attempt {attempt}) wants it powered off"),
        "nothing to boot; powering off (or handing back to the firmware)".to_string(),
    ]);
    script.push_str("poweroff || exit\n");
    Rendered {
        script,
        summary: format!("power off for {purpose:?} attempt {attempt}"),
    }
}

fn wait_for_intent(cfg: &ScriptConfig, mac: &MacAddr, who: &str) -> Rendered {
    let again = format!("{}/boot/{}.ipxe", cfg.base_url, mac.dashed());
    let mut script = header(&[
        format!("Machine {who} has no boot intent yet (the operator has not decided)"),
        format!("asking again in {} seconds", cfg.retry_seconds),
    ]);
    script.push_str(&format!(
        "sleep {}\nchain --replace --autofree {again}\n",
        cfg.retry_seconds
    ));
    Rendered {
        script,
        summary: "no boot intent yet: waiting".to_string(),
    }
}

#[cfg(test)]
#[path = "script_tests.rs"]
mod tests;
