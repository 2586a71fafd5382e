//! The IPMI driver (IPMI v2.0 RMCP+ `lanplus`), through Debian's `ipmitool`.
//!
//! The password never appears in a process listing: it is written to a 0600 file in a
//! private (0700) temporary directory held for the driver's lifetime, passed with `-f`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Stdio;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::process::Command;
use tracing::debug;

use super::{
    BmcError, BootDevice, BootMode, BootOverride, DriverConfig, DriverKind, Persistence,
    PowerAction, PowerDriver, PowerState, SystemInfo,
};

/// An IPMI BMC driven by `ipmitool -I lanplus`.
pub struct IpmiDriver {
    program: PathBuf,
    host: String,
    port: u16,
    username: String,
    timeout: std::time::Duration,
    password_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl IpmiDriver {
    /// A driver for `config`; writes the password file, sends nothing.
    pub fn new(config: DriverConfig) -> Result<Self, BmcError> {
        let setup = |e: std::io::Error| {
            BmcError::Setup(format!("cannot write the IPMI password file: {e}"))
        };
        if config.credentials.password.contains('\n') {
            return Err(BmcError::Setup(
                "the IPMI password holds a newline, which ipmitool cannot read".into(),
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("ironpool-ipmi-")
            .tempdir()
            .map_err(setup)?;
        let password_file = dir.path().join("password");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&password_file)
            .map_err(setup)?;
        f.write_all(config.credentials.password.as_bytes())
            .map_err(setup)?;
        Ok(Self {
            program: std::env::var_os("IRONPOOL_IPMITOOL")
                .map(PathBuf::from)
                .unwrap_or_else(|| "ipmitool".into()),
            host: config.address.host.clone(),
            port: config.address.port.unwrap_or(623),
            username: config.credentials.username,
            timeout: config.timeout,
            password_file,
            _dir: dir,
        })
    }

    fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Runs `ipmitool ... <args>`; returns stdout.
    async fn run(&self, args: &[&str]) -> Result<String, BmcError> {
        let operation = args.join(" ");
        let mut cmd = Command::new(&self.program);
        cmd.args([
            "-v",
            "-I",
            "lanplus",
            "-H",
            &self.host,
            "-p",
            &self.port.to_string(),
        ])
        .args(["-U", &self.username, "-f"])
        .arg(&self.password_file)
        // ipmitool's own retries: 2 s per try, 2 tries, inside our deadline.
        .args(["-N", "2", "-R", "2"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let out = match tokio::time::timeout(self.timeout, cmd.output()).await {
            Err(_) => {
                return Err(BmcError::Timeout {
                    host: self.host_port(),
                    operation,
                    after: self.timeout,
                });
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BmcError::Setup(format!(
                    "{} not found; install the Debian package ipmitool on the agent's image",
                    self.program.display()
                )));
            }
            Ok(Err(e)) => return Err(BmcError::Setup(format!("cannot run ipmitool: {e}"))),
            Ok(Ok(out)) => out,
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            debug!(bmc = %self.host_port(), operation, "ipmitool ok");
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(classify(
            &self.host_port(),
            &operation,
            &format!("{stdout}\n{stderr}"),
        ))
    }
}

/// Maps ipmitool's failure output onto a [`BmcError`].
pub fn classify(host: &str, operation: &str, output: &str) -> BmcError {
    let has = |s: &str| output.contains(s);
    let last_line = output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string();
    if has("RAKP 2 HMAC is invalid")
        || has("unauthorized name")
        || has("RAKP 1 message")
        || has("invalid password")
    {
        BmcError::Authentication {
            host: host.to_string(),
        }
    } else if has("Get Auth Capabilities error") || has("No response") || has("no response") {
        BmcError::Unreachable {
            host: host.to_string(),
            detail: last_line,
        }
    } else if has("Invalid command") || has("Invalid data field") || has("not supported") {
        BmcError::Unsupported {
            host: host.to_string(),
            what: operation.to_string(),
            offered: last_line,
        }
    } else {
        BmcError::Protocol {
            host: host.to_string(),
            operation: operation.to_string(),
            detail: last_line,
        }
    }
}

/// `ipmitool` arguments for a power action.
pub fn power_args(action: PowerAction) -> [&'static str; 3] {
    let verb = match action {
        PowerAction::On => "on",
        PowerAction::Off => "off",
        PowerAction::GracefulOff => "soft",
        PowerAction::Cycle => "cycle",
    };
    ["chassis", "power", verb]
}

/// `ipmitool` arguments for a boot override (UefiHttp has no IPMI boot device).
pub fn boot_args(boot: BootOverride) -> Option<Vec<String>> {
    let device = match boot.device {
        BootDevice::Pxe => "pxe",
        BootDevice::Disk => "disk",
        BootDevice::UefiHttp => return None,
    };
    let mut options = Vec::new();
    if boot.mode == BootMode::Uefi {
        options.push("efiboot");
    }
    if boot.persistence == Persistence::Continuous {
        options.push("persistent");
    }
    let mut args = vec!["chassis".to_string(), "bootdev".into(), device.into()];
    if !options.is_empty() {
        args.push(format!("options={}", options.join(",")));
    }
    Some(args)
}

/// Reads `Chassis Power is on|off`.
pub fn parse_power(stdout: &str) -> Option<PowerState> {
    let line = stdout.lines().find(|l| l.contains("Chassis Power is"))?;
    match line.rsplit(' ').next()?.trim() {
        "on" => Some(PowerState::On),
        "off" => Some(PowerState::Off),
        _ => None,
    }
}

/// Reads `fru print 0` fields.
pub fn parse_fru(stdout: &str) -> SystemInfo {
    let field = |name: &str| {
        stdout.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name)
                .then(|| v.trim().to_string())
                .filter(|v| !v.is_empty())
        })
    };
    SystemInfo {
        manufacturer: field("Product Manufacturer"),
        product: field("Product Name"),
        serial_number: field("Product Serial"),
        board_manufacturer: field("Board Mfg"),
        board_product: field("Board Product"),
        ..SystemInfo::default()
    }
}

impl PowerDriver for IpmiDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Ipmi
    }

    fn power_state(&self) -> BoxFuture<'_, Result<PowerState, BmcError>> {
        async move {
            let out = self.run(&["chassis", "power", "status"]).await?;
            parse_power(&out).ok_or_else(|| BmcError::Protocol {
                host: self.host_port(),
                operation: "chassis power status".into(),
                detail: format!("unexpected output {:?}", out.trim()),
            })
        }
        .boxed()
    }

    fn set_power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), BmcError>> {
        async move { self.run(&power_args(action)).await.map(drop) }.boxed()
    }

    fn set_boot_device(&self, boot: BootOverride) -> BoxFuture<'_, Result<(), BmcError>> {
        async move {
            let args = boot_args(boot).ok_or_else(|| BmcError::Unsupported {
                host: self.host_port(),
                what: "boot device UefiHttp".into(),
                offered: "pxe, disk (IPMI has no HTTP boot device)".into(),
            })?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.run(&args).await.map(drop)
        }
        .boxed()
    }

    fn system_info(&self) -> BoxFuture<'_, Result<SystemInfo, BmcError>> {
        async move {
            match self.run(&["fru", "print", "0"]).await {
                Ok(out) => Ok(parse_fru(&out)),
                // Many BMCs have no FRU 0; that is not a failure of the BMC.
                Err(BmcError::Unsupported { .. } | BmcError::Protocol { .. }) => {
                    Ok(SystemInfo::default())
                }
                Err(e) => Err(e),
            }
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_from_ipmitool_output() {
        let cases = [
            (
                "> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session",
                "AuthenticationFailed",
            ),
            (
                "> Error: no response from RAKP 1 message\nError: Unable to establish IPMI v2 / RMCP+ session",
                "AuthenticationFailed",
            ),
            (
                "Get Auth Capabilities error\nError: Unable to establish IPMI v2 / RMCP+ session",
                "Unreachable",
            ),
            (
                "Set Chassis Power Control to Cycle failed: Invalid data field in request",
                "ActionUnsupported",
            ),
            ("something odd", "BadResponse"),
        ];
        for (output, want) in cases {
            assert_eq!(
                classify("h:623", "op", output).metric_label(),
                want,
                "{output}"
            );
        }
    }

    #[test]
    fn boot_args_carry_efi_and_persistence() {
        let b = |device, persistence, mode| {
            boot_args(BootOverride {
                device,
                persistence,
                mode,
            })
        };
        assert_eq!(
            b(BootDevice::Pxe, Persistence::Once, BootMode::Uefi).unwrap(),
            ["chassis", "bootdev", "pxe", "options=efiboot"]
        );
        assert_eq!(
            b(BootDevice::Disk, Persistence::Continuous, BootMode::Uefi).unwrap(),
            ["chassis", "bootdev", "disk", "options=efiboot,persistent"]
        );
        assert_eq!(
            b(BootDevice::Pxe, Persistence::Once, BootMode::Legacy).unwrap(),
            ["chassis", "bootdev", "pxe"]
        );
        assert_eq!(
            b(BootDevice::UefiHttp, Persistence::Once, BootMode::Uefi),
            None
        );
    }

    #[test]
    fn power_and_fru_output_parse() {
        assert_eq!(parse_power("Chassis Power is on\n"), Some(PowerState::On));
        assert_eq!(
            parse_power("Loading IANA PEN Registry...\nChassis Power is off"),
            Some(PowerState::Off)
        );
        assert_eq!(parse_power("garbage"), None);
        let fru = parse_fru(
            " Product Manufacturer  : Lenovo\n Product Name          : SR650\n Board Mfg : X\n",
        );
        assert_eq!(fru.manufacturer.as_deref(), Some("Lenovo"));
        assert_eq!(fru.product.as_deref(), Some("SR650"));
        assert_eq!(fru.board_manufacturer.as_deref(), Some("X"));
    }
}
