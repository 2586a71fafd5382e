//! Booting an OS image straight from a disk file, as the image tests do (the tiny test OS
//! and the Debian image): QEMU (TCG) with the disk on virtio, QEMU's user-mode network
//! (the guest's 10.0.2.2 is the host's 127.0.0.1), SeaBIOS or OVMF, the serial console to a
//! file; and a check-in endpoint on the host for the OS's first-boot step.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context as _;

use crate::qemu::{OVMF_CODE, OVMF_VARS};

/// Which firmware boots the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default, machine `pc`).
    Bios,
    /// OVMF (machine `q35`).
    Uefi,
}

/// One check-in the endpoint received.
#[derive(Clone, Debug)]
pub struct CheckIn {
    /// Request line and headers.
    pub head: String,
    /// Body (JSON).
    pub body: String,
    /// When it arrived.
    pub at: Instant,
}

/// A check-in endpoint on 127.0.0.1: answers every POST 204 and sends each to the channel.
/// Returns its port.
pub fn checkin_listener() -> std::io::Result<(u16, mpsc::Receiver<CheckIn>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(s) = conn else { continue };
            let Ok(reader) = s.try_clone() else { continue };
            let mut r = BufReader::new(reader);
            let (mut head, mut len) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = (&s).write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            let body = String::from_utf8_lossy(&body).into_owned();
            let at = Instant::now();
            if tx.send(CheckIn { head, body, at }).is_err() {
                return;
            }
        }
    });
    Ok((port, rx))
}

/// `qemu-system-x86_64` booting `disk` (raw, virtio) under `fw` with `memory_mib` and `cpus`,
/// one virtio NIC on the user-mode network with `nic` appended to its `-nic user,...`
/// options (e.g. `mac=...,hostfwd=...`), the console in `dir/console.log` and OVMF's
/// variables copied into `dir`. The caller adds what else it needs and spawns it.
pub fn qemu_command(
    fw: Firmware,
    disk: &Path,
    dir: &Path,
    memory_mib: u32,
    cpus: u32,
    nic: &str,
) -> anyhow::Result<Command> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-smp", &cpus.to_string()])
        .args(["-m", &memory_mib.to_string()])
        .args(["-nodefaults", "-no-reboot", "-display", "none"])
        .args(["-monitor", "none", "-serial"])
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .arg("-nic")
        .arg(format!("user,model=virtio-net-pci,{nic}"));
    if fw == Firmware::Uefi {
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars)
            .with_context(|| format!("copy {OVMF_VARS} (Debian ovmf)"))?;
        cmd.args(["-machine", "q35"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
    }
    Ok(cmd)
}
