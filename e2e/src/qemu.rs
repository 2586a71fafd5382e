//! Virtual machines for tests and the lab: QEMU (`-accel tcg`, no display) with one virtio
//! NIC on a tap device inside a [`Netns`], network boot first, its serial console in a file.
//! Legacy BIOS is SeaBIOS with the iPXE option ROM of Debian's `ipxe-qemu` (its output
//! mirrored to the serial port through SeaBIOS's `etc/sercon-port`); UEFI is OVMF with a
//! private copy of the variable store. The VM is killed on drop.
//!
//! Every VM has a QMP socket (`<dir>/<name>.qmp`, [`Vm::qmp_path`]) so a BMC emulator
//! (the `bmc` module) can drive its power like a server's: [`VmConfig::bmc_managed`] starts it
//! powered off (`-S`) and keeps QEMU alive when the guest powers off (`-no-shutdown`).
//!
//! ```no_run
//! # fn demo(ns: &ironpool_e2e::netlab::Netns, dir: &std::path::Path) -> anyhow::Result<()> {
//! use ironpool_e2e::qemu::{Firmware, Vm, VmConfig};
//! let mut vm = Vm::start(ns, &VmConfig::new("pxe-1", "52:54:00:00:00:01", "tap0", Firmware::Uefi), dir)?;
//! vm.wait_serial("iPXE", std::time::Duration::from_secs(120))?;
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netlab::{Netns, NsChild};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// OVMF firmware code (Debian `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variable store template (copied per VM).
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The iPXE ROM QEMU's virtio NIC uses (Debian `ipxe-qemu`; BIOS and EFI images in one).
/// Debian's QEMU finds it on its firmware path by its default name; naming it with
/// `romfile=<absolute path>` made SeaBIOS skip it in QEMU 7.2, so the VM relies on the
/// default and this constant only checks that the package is installed.
pub const VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";

/// Firmware of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (legacy PXE through the iPXE option ROM).
    Bios,
    /// OVMF (UEFI network boot).
    Uefi,
}

impl Firmware {
    /// The files this firmware needs on the host.
    pub fn required_files(self) -> &'static [&'static str] {
        match self {
            Firmware::Bios => &[VIRTIO_ROM],
            Firmware::Uefi => &[VIRTIO_ROM, OVMF_CODE, OVMF_VARS],
        }
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// A name for logs and file names.
    pub name: String,
    /// The NIC's MAC address.
    pub mac: String,
    /// The tap device (already created in the namespace, e.g. by [`Netns::tap`]).
    pub tap: String,
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Whether the NIC carries the iPXE option ROM (true, the default). Without it a UEFI
    /// VM network-boots with EDK2's own PXE client (and a BIOS VM cannot network-boot).
    pub ipxe_rom: bool,
    /// A virtio disk (device id `disk0`, boot index 2, after the NIC `nic0`; a BMC
    /// emulator changes the order through QMP for a boot override).
    pub disk: Option<Disk>,
    /// Start with the CPUs stopped (`-S`): the machine is powered off until something
    /// (a BMC emulator through QMP) powers it on.
    pub start_powered_off: bool,
    /// Keep QEMU running when the guest powers off (`-no-shutdown`): the VM then reads as
    /// powered off (QMP status `shutdown`) instead of QEMU exiting.
    pub no_shutdown: bool,
    /// Extra QEMU arguments.
    pub extra: Vec<String>,
}

/// A virtio disk image on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The image file (must exist).
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
}

/// Disk image formats QEMU is told explicitly (never probed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw image.
    Raw,
    /// QCOW2.
    Qcow2,
}

impl DiskFormat {
    /// QEMU's name of the format.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// A path as a QEMU option value (commas doubled).
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

impl VmConfig {
    /// A 256 MiB VM that boots from its NIC.
    pub fn new(name: &str, mac: &str, tap: &str, firmware: Firmware) -> Self {
        VmConfig {
            name: name.to_string(),
            mac: mac.to_string(),
            tap: tap.to_string(),
            firmware,
            memory_mib: 256,
            ipxe_rom: true,
            disk: None,
            start_powered_off: false,
            no_shutdown: false,
            extra: Vec::new(),
        }
    }

    /// The same VM set up to sit behind a BMC: powered off at start, and powered off
    /// (not gone) after the guest shuts down.
    pub fn bmc_managed(mut self) -> Self {
        self.start_powered_off = true;
        self.no_shutdown = true;
        self
    }

    /// The QMP socket of a VM named `name` with its files in `dir`.
    pub fn qmp_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.qmp", self.name))
    }

    /// The QEMU arguments; `dir` holds the serial log and the firmware's private files.
    pub fn args(&self, dir: &Path) -> Vec<String> {
        let serial = dir.join(format!("{}.serial.log", self.name));
        let mut a: Vec<String> = [
            "-name",
            &self.name,
            "-accel",
            "tcg",
            "-m",
            &self.memory_mib.to_string(),
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-user-config",
            "-serial",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(format!("file:{}", opt_path(&serial)));
        a.push("-qmp".into());
        a.push(format!(
            "unix:{},server=on,wait=off",
            opt_path(&self.qmp_path(dir))
        ));
        if self.start_powered_off {
            a.push("-S".into());
        }
        if self.no_shutdown {
            a.push("-no-shutdown".into());
        }
        a.push("-netdev".into());
        a.push(format!(
            "tap,id=n0,ifname={},script=no,downscript=no",
            self.tap
        ));
        a.push("-device".into());
        let rom = if self.ipxe_rom { "" } else { ",romfile=" };
        a.push(format!(
            "virtio-net-pci,netdev=n0,id=nic0,mac={}{rom},bootindex=1",
            self.mac
        ));
        match self.firmware {
            Firmware::Bios => {
                // SeaBIOS mirrors the screen (its own and the iPXE ROM's) to COM1.
                a.push("-fw_cfg".into());
                a.push(format!(
                    "name=etc/sercon-port,file={}",
                    sercon(dir).display()
                ));
            }
            Firmware::Uefi => {
                a.push("-drive".into());
                a.push(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
                ));
                a.push("-drive".into());
                a.push(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars(dir, &self.name).display()
                ));
            }
        }
        if let Some(disk) = &self.disk {
            a.push("-drive".into());
            a.push(format!(
                "if=none,id=drive0,format={},file={}",
                disk.format.as_str(),
                opt_path(&disk.path)
            ));
            a.push("-device".into());
            a.push("virtio-blk-pci,drive=drive0,id=disk0,bootindex=2".into());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

fn sercon(dir: &Path) -> PathBuf {
    dir.join("sercon-port")
}

fn vars(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.OVMF_VARS.fd"))
}

/// A running VM, killed on drop.
#[derive(Debug)]
pub struct Vm {
    child: NsChild,
    serial: PathBuf,
    qmp: PathBuf,
    started: Instant,
}

impl Vm {
    /// Starts `config` inside `ns`; files go to `dir`.
    pub fn start(ns: &Netns, config: &VmConfig, dir: &Path) -> Result<Vm> {
        for f in config.firmware.required_files() {
            if !Path::new(f).exists() {
                bail!("{f} is missing: run e2e/scripts/install-qemu.sh");
            }
        }
        match config.firmware {
            // COM1 (0x3f8) as a little-endian integer, the form SeaBIOS reads.
            Firmware::Bios => std::fs::write(sercon(dir), 0x3f8u16.to_le_bytes())?,
            Firmware::Uefi => {
                std::fs::copy(OVMF_VARS, vars(dir, &config.name))
                    .with_context(|| format!("copying {OVMF_VARS}"))?;
            }
        }
        if let Some(disk) = &config.disk
            && !disk.path.is_file()
        {
            bail!("the disk image {} does not exist", disk.path.display());
        }
        let serial = dir.join(format!("{}.serial.log", config.name));
        let qmp = config.qmp_path(dir);
        // A socket left by an earlier VM of the same name would make QEMU fail to bind.
        let _ = std::fs::remove_file(&qmp);
        // ...and so would the boot settings a BMC emulator keeps beside it.
        let mut boot = qmp.clone().into_os_string();
        boot.push(".boot");
        let _ = std::fs::remove_file(boot);
        let mut cmd = ns.cmd(QEMU);
        cmd.args(config.args(dir));
        let child = NsChild::spawn(
            &format!("qemu {}", config.name),
            cmd,
            &dir.join(format!("{}.qemu.log", config.name)),
        )?;
        Ok(Vm {
            child,
            serial,
            qmp,
            started: Instant::now(),
        })
    }

    /// The QMP socket (JSON over a unix socket; the BMC emulators drive power with it).
    pub fn qmp_path(&self) -> &Path {
        &self.qmp
    }

    /// Waits until QEMU has created its QMP socket; fails early if QEMU exits.
    pub fn wait_qmp(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while std::os::unix::net::UnixStream::connect(&self.qmp).is_err() {
            if !self.child.running() {
                bail!("QEMU exited\n{}", self.child.tail(20));
            }
            if Instant::now() > deadline {
                bail!(
                    "no QMP socket at {} after {timeout:?}\n{}",
                    self.qmp.display(),
                    self.child.tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The serial console so far, escape sequences and carriage returns removed.
    pub fn serial(&self) -> String {
        let raw = std::fs::read(&self.serial).unwrap_or_default();
        clean(&String::from_utf8_lossy(&raw))
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        self.child.running()
    }

    /// Time since the VM was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the serial console contains `needle`; fails early if QEMU exits.
    pub fn wait_serial(&mut self, needle: &str, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial().contains(needle) {
                return Ok(self.started.elapsed());
            }
            if !self.child.running() {
                bail!("QEMU exited\n{}\n{}", self.child.tail(20), self.report());
            }
            if Instant::now() > deadline {
                bail!(
                    "serial console shows no '{needle}' after {timeout:?}\n{}",
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The serial console and QEMU's own output, for failure messages.
    pub fn report(&self) -> String {
        format!(
            "--- serial console {} ---\n{}\n{}",
            self.serial.display(),
            self.serial(),
            self.child.tail(20)
        )
    }
}

/// Removes ANSI escape sequences, backspace runs and carriage returns.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for n in chars.by_ref() {
                        if n.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' | '\u{8}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn clean_strips_escapes() {
        assert_eq!(
            clean("\u{1b}c\u{1b}[?7l\u{1b}[0;1miPXE\u{1b}[0m ok\r\n\u{8} \u{8}x"),
            "iPXE ok\n x"
        );
    }

    #[test]
    fn args_name_the_firmware_and_the_tap() {
        let dir = Path::new("/tmp/x");
        let bios = VmConfig::new("a", "52:54:00:00:00:01", "tap0", Firmware::Bios).args(dir);
        let s = bios.join(" ");
        assert!(s.contains("-accel tcg") && s.contains("ifname=tap0") && s.contains("sercon"));
        assert!(s.contains("mac=52:54:00:00:00:01") && s.contains("-m 256"));
        let uefi = VmConfig::new("a", "52:54:00:00:00:01", "tap0", Firmware::Uefi).args(dir);
        let s = uefi.join(" ");
        assert!(s.contains(OVMF_CODE) && s.contains("/tmp/x/a.OVMF_VARS.fd"));
        assert!(s.contains("-qmp unix:/tmp/x/a.qmp,server=on,wait=off"));
        assert!(!s.contains(" -S") && !s.contains("-no-shutdown") && !s.contains("virtio-blk"));
    }

    #[test]
    fn bmc_managed_vms_start_off_and_survive_poweroff_with_a_disk() {
        let dir = Path::new("/tmp/x");
        let mut c = VmConfig::new("b", "52:54:00:00:00:02", "tap1", Firmware::Bios).bmc_managed();
        c.disk = Some(Disk {
            path: "/images/a,b.qcow2".into(),
            format: DiskFormat::Qcow2,
        });
        let a = c.args(dir);
        assert!(a.iter().any(|x| x == "-S") && a.iter().any(|x| x == "-no-shutdown"));
        let s = a.join(" ");
        assert!(
            s.contains("-drive if=none,id=drive0,format=qcow2,file=/images/a,,b.qcow2"),
            "{s}"
        );
        assert!(s.contains("virtio-blk-pci,drive=drive0,id=disk0,bootindex=2"));
        assert_eq!(c.qmp_path(dir), Path::new("/tmp/x/b.qmp"));
    }
}
