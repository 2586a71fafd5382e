//! BMC emulators in front of QEMU VMs, for the lab and tests: a Redfish BMC (sushy-tools'
//! emulator app, one process serving several systems) and an IPMI BMC (a pyghmi `Bmc`, one
//! process per VM), both driving the VMs' power through their QMP sockets
//! (`e2e/support/qemu_bmc.py`, run by the venv of `e2e/scripts/install-bmc-emulators.sh`).
//! No libvirt. Power follows a real server: on = QMP `running`; off = `prelaunch`,
//! `paused` or `shutdown`; power on from off is a cold boot from the firmware (reset, then
//! continue); force off stops the CPUs and resets; graceful off is the ACPI power button.
//!
//! ```no_run
//! # fn demo(vm: &ironpool_e2e::qemu::Vm, dir: &std::path::Path) -> anyhow::Result<()> {
//! use ironpool_e2e::bmc::{BmcEmulator, BmcOptions, EmulatedSystem};
//! let system = EmulatedSystem::new("vm-1", "52:54:00:00:00:01", vm.qmp_path());
//! let opts = BmcOptions::new("127.0.0.1", 8000).with_credentials("admin", "s3cret");
//! let redfish = BmcEmulator::redfish(&[system.clone()], &opts, None, dir)?;
//! let ipmi = BmcEmulator::ipmi(&system, &BmcOptions { port: 6230, ..opts }, None, dir)?;
//! println!("{} {}", redfish.address(), ipmi.address());
//! # Ok(())
//! # }
//! ```
//!
//! Passwords go to the emulator in a 0600 file that is removed once it has started; they
//! never appear in a command line or a log.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netlab::{Netns, NsChild};

/// The venv bin directory with sushy-tools and pyghmi: `$IRONPOOL_BMC_VENV_BIN`, else what
/// `e2e/scripts/install-bmc-emulators.sh` prints (it installs on first use; run once per
/// process).
pub fn venv_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(b) = std::env::var_os("IRONPOOL_BMC_VENV_BIN") {
            return Ok(b.into());
        }
        let script = crate::repo_dir().join("e2e/scripts/install-bmc-emulators.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed", script.display()));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// The emulator script.
pub fn script() -> PathBuf {
    crate::repo_dir().join("e2e/support/qemu_bmc.py")
}

/// One machine behind a BMC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatedSystem {
    /// The system's name (Redfish `Name`; also how logs name it).
    pub name: String,
    /// Its UUID (the Redfish system's id and `UUID`; IPMI's system GUID).
    pub uuid: String,
    /// The MAC of its NIC (Redfish `EthernetInterfaces`).
    pub mac: String,
    /// The VM's QMP socket ([`crate::qemu::Vm::qmp_path`]).
    pub qmp: PathBuf,
    /// `UEFI` or `Legacy` (Redfish `BootSourceOverrideMode`).
    pub boot_mode: String,
}

impl EmulatedSystem {
    /// A UEFI system whose UUID is derived from its MAC (stable across runs).
    pub fn new(name: &str, mac: &str, qmp: &Path) -> Self {
        EmulatedSystem {
            name: name.to_string(),
            uuid: uuid_for_mac(mac),
            mac: mac.to_string(),
            qmp: qmp.to_path_buf(),
            boot_mode: "UEFI".into(),
        }
    }
}

/// A stable UUID for a MAC: `5ca1ab1e-0000-4000-8000-<mac digits>`.
pub fn uuid_for_mac(mac: &str) -> String {
    let hex: String = mac
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("5ca1ab1e-0000-4000-8000-{hex:0>12.12}")
}

/// Where an emulator listens and who may use it.
#[derive(Clone)]
pub struct BmcOptions {
    /// Listen address (inside the namespace when one is given).
    pub listen: String,
    /// TCP (Redfish) or UDP (IPMI) port.
    pub port: u16,
    /// Username and password; Redfish without them needs no authentication, IPMI needs
    /// them.
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for BmcOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BmcOptions")
            .field("listen", &self.listen)
            .field("port", &self.port)
            .field(
                "username",
                &self.credentials.as_ref().map(|(u, _)| u.as_str()),
            )
            .finish()
    }
}

impl BmcOptions {
    /// Listen on `listen:port`, no credentials.
    pub fn new(listen: &str, port: u16) -> Self {
        BmcOptions {
            listen: listen.to_string(),
            port,
            credentials: None,
        }
    }

    /// The same with a username and password.
    pub fn with_credentials(mut self, username: &str, password: &str) -> Self {
        self.credentials = Some((username.to_string(), password.to_string()));
        self
    }
}

/// Which front an emulator is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    /// Redfish over HTTP.
    Redfish,
    /// IPMI v2.0 lanplus over UDP.
    Ipmi,
}

/// Both BMC fronts for one QEMU VM, as the power tests use them: Redfish on a free loopback
/// TCP port and IPMI on a free loopback UDP port, with `user` and a random password made
/// for this run (never a constant in the code). No Debug: it holds the password.
pub struct BmcPair {
    /// The VM as the emulators see it (boot mode Legacy).
    pub system: EmulatedSystem,
    /// The Redfish front.
    pub redfish: BmcEmulator,
    /// The IPMI front.
    pub ipmi: BmcEmulator,
    /// The password of `user` on both.
    pub password: String,
}

impl BmcPair {
    /// Starts both fronts for the VM `name` (boot MAC `mac`) whose QMP socket is `qmp`;
    /// their files go to `dir`.
    pub fn start(name: &str, mac: &str, qmp: &Path, user: &str, dir: &Path) -> Result<Self> {
        let mut system = EmulatedSystem::new(name, mac, qmp);
        system.boot_mode = "Legacy".into();
        let password = crate::secret::random_secret(16)?;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let opts = BmcOptions::new("127.0.0.1", tcp).with_credentials(user, &password);
        let redfish = BmcEmulator::redfish(std::slice::from_ref(&system), &opts, None, dir)?;
        let opts = BmcOptions { port: udp, ..opts };
        let ipmi = BmcEmulator::ipmi(&system, &opts, None, dir)?;
        Ok(Self {
            system,
            redfish,
            ipmi,
            password,
        })
    }
}

/// A running BMC emulator, killed on drop. Its output (one `EVENT <system> <what>
/// <QMP status before>` line per power or boot command, plus the HTTP server's request
/// log) is in a log file.
#[derive(Debug)]
pub struct BmcEmulator {
    child: NsChild,
    front: Front,
    listen: String,
    port: u16,
}

impl BmcEmulator {
    /// Starts a Redfish BMC for `systems` (inside `ns` when given); files go to `dir`.
    pub fn redfish(
        systems: &[EmulatedSystem],
        opts: &BmcOptions,
        ns: Option<&Netns>,
        dir: &Path,
    ) -> Result<Self> {
        if systems.is_empty() {
            bail!("a Redfish BMC needs at least one system");
        }
        let tag = format!("redfish-{}", opts.port);
        let list: Vec<serde_json::Value> = systems
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "uuid": s.uuid, "mac": s.mac,
                    "qmp": s.qmp, "boot_mode": s.boot_mode,
                })
            })
            .collect();
        let systems_file = dir.join(format!("{tag}.systems.json"));
        std::fs::write(&systems_file, serde_json::to_vec_pretty(&list)?)
            .with_context(|| format!("writing {}", systems_file.display()))?;
        let mut args = vec![
            "redfish".to_string(),
            "--listen".into(),
            opts.listen.clone(),
            "--port".into(),
            opts.port.to_string(),
            "--systems".into(),
            systems_file.display().to_string(),
        ];
        Self::start(Front::Redfish, &tag, &mut args, opts, ns, dir)
    }

    /// Starts an IPMI BMC for `system` (inside `ns` when given); files go to `dir`.
    /// `opts` must carry credentials (IPMI has no anonymous access here).
    pub fn ipmi(
        system: &EmulatedSystem,
        opts: &BmcOptions,
        ns: Option<&Netns>,
        dir: &Path,
    ) -> Result<Self> {
        if opts.credentials.is_none() {
            bail!("an IPMI BMC needs a username and password");
        }
        let tag = format!("ipmi-{}", opts.port);
        let mut args = vec![
            "ipmi".to_string(),
            "--listen".into(),
            opts.listen.clone(),
            "--port".into(),
            opts.port.to_string(),
            "--qmp".into(),
            system.qmp.display().to_string(),
            "--name".into(),
            system.name.clone(),
            "--uuid".into(),
            system.uuid.clone(),
        ];
        Self::start(Front::Ipmi, &tag, &mut args, opts, ns, dir)
    }

    fn start(
        front: Front,
        tag: &str,
        args: &mut Vec<String>,
        opts: &BmcOptions,
        ns: Option<&Netns>,
        dir: &Path,
    ) -> Result<Self> {
        let python = venv_bin()?.join("python");
        if !python.exists() {
            bail!(
                "{} is missing: run e2e/scripts/install-bmc-emulators.sh (e2e/run test does)",
                python.display()
            );
        }
        let password_file = dir.join(format!("{tag}.password"));
        if let Some((user, password)) = &opts.credentials {
            if password.is_empty() || password.contains('\n') {
                bail!("the BMC password must be one non-empty line");
            }
            let _ = std::fs::remove_file(&password_file);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&password_file)
                .with_context(|| format!("creating {}", password_file.display()))?;
            f.write_all(password.as_bytes())?;
            args.extend([
                "--user".to_string(),
                user.clone(),
                "--password-file".into(),
                password_file.display().to_string(),
            ]);
        }
        let mut cmd = match ns {
            Some(ns) => ns.cmd(&python),
            None => Command::new(&python),
        };
        cmd.arg("-u").arg(script()).args(args.iter());
        cmd.env("PYTHONUNBUFFERED", "1");
        let child = NsChild::spawn(
            &format!("{tag} BMC emulator"),
            cmd,
            &dir.join(format!("{tag}.log")),
        )?;
        let mut emu = BmcEmulator {
            child,
            front,
            listen: opts.listen.clone(),
            port: opts.port,
        };
        let ready = emu.wait_ready(Duration::from_secs(30));
        let _ = std::fs::remove_file(&password_file);
        ready?;
        Ok(emu)
    }

    /// Waits for the emulator's `LISTENING` line, which it prints once its socket is bound
    /// (so the port accepts requests from then on, also inside a namespace).
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.output().contains("LISTENING") {
                break;
            }
            if !self.child.running() {
                bail!("the BMC emulator exited\n{}", self.child.tail(30));
            }
            if Instant::now() > deadline {
                bail!(
                    "the BMC emulator did not start in {timeout:?}\n{}",
                    self.child.tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Which front this is.
    pub fn front(&self) -> Front {
        self.front
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address a Machine's `spec.bmc.address` names it by: `redfish+http://host:port`
    /// or `ipmi://host:port`.
    pub fn address(&self) -> String {
        let host = if self.listen.contains(':') {
            format!("[{}]", self.listen)
        } else {
            self.listen.clone()
        };
        match self.front {
            Front::Redfish => format!("redfish+http://{host}:{}", self.port),
            Front::Ipmi => format!("ipmi://{host}:{}", self.port),
        }
    }

    /// The `EVENT` lines so far, without the prefix (`<system> <what> <status before>`).
    pub fn events(&self) -> Vec<String> {
        self.child
            .output()
            .lines()
            .filter_map(|l| l.strip_prefix("EVENT "))
            .map(str::to_string)
            .collect()
    }

    /// The emulator's process.
    pub fn child(&mut self) -> &mut NsChild {
        &mut self.child
    }

    /// The log's last lines, for failure messages.
    pub fn tail(&self, lines: usize) -> String {
        self.child.tail(lines)
    }
}

/// What QEMU says about a VM: the `status` of QMP `query-status` (`running`,
/// `prelaunch`, `paused`, `shutdown`, ...). One short connection, so it can be used while
/// an emulator drives the same VM.
pub fn qmp_status(qmp: &Path) -> Result<String> {
    let v = qmp_execute(qmp, "query-status")?;
    v.get("status")
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .with_context(|| format!("query-status answered {v}"))
}

/// Runs one QMP command without arguments and returns its `return` value.
pub fn qmp_execute(qmp: &Path, command: &str) -> Result<serde_json::Value> {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    let s = UnixStream::connect(qmp).with_context(|| format!("connecting to {}", qmp.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if !line.contains("\"QMP\"") {
        bail!("no QMP greeting on {}: {line:?}", qmp.display());
    }
    let mut result = serde_json::Value::Null;
    for cmd in ["qmp_capabilities", command] {
        writeln!(w, "{}", serde_json::json!({ "execute": cmd }))?;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                bail!("QEMU closed {} during {cmd}", qmp.display());
            }
            let msg: serde_json::Value = serde_json::from_str(&line)?;
            if msg.get("event").is_some() {
                continue;
            }
            if let Some(e) = msg.get("error") {
                bail!("QMP {cmd}: {e}");
            }
            result = msg.get("return").cloned().unwrap_or_default();
            break;
        }
    }
    Ok(result)
}

/// Polls [`qmp_status`] until `want(status)` holds; returns the status.
pub fn wait_qmp_status(
    qmp: &Path,
    timeout: Duration,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = qmp_status(qmp)?;
        if want(&s) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("QMP status is {s:?}, not {what}, after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uuids_come_from_macs() {
        assert_eq!(
            uuid_for_mac("52:54:00:AB:00:01"),
            "5ca1ab1e-0000-4000-8000-525400ab0001"
        );
    }

    #[test]
    fn options_never_show_the_password() {
        let o = BmcOptions::new("127.0.0.1", 623).with_credentials("admin", "hunter2");
        let s = format!("{o:?}");
        assert!(s.contains("admin") && !s.contains("hunter2"), "{s}");
    }
}
