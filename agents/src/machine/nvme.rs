//! NVMe Format NVM with Secure Erase Setting 1 (user data erase), the erase a drive does
//! itself, through the kernel's admin passthrough ioctl (`NVME_IOCTL_ADMIN_CMD`, what
//! `nvme format --ses=1` sends). It reaches every block of the namespace, including blocks
//! the drive keeps out of the host's sight (over-provisioning, remapped blocks), which no
//! write or Write Zeroes from the host can.
//!
//! This is the workspace's one module with unsafe code, an exception to `unsafe_code =
//! "deny"` made because the kernel offers no other way to send an NVMe admin command and
//! the ramdisk has no nvme-cli (Debian ships it only dynamically linked). The unsafe part
//! is the single ioctl call in [`admin`]: a `repr(C)` copy of the kernel's
//! `struct nvme_admin_cmd` (its size checked at compile time) and, for Identify, a buffer
//! that this module owns and keeps alive across the call.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs::File;

use rustix::ioctl::{Ioctl, IoctlOutput, Opcode, opcode};

/// The kernel's `struct nvme_admin_cmd` (= `nvme_passthru_cmd`, include/uapi/linux/nvme_ioctl.h).
#[repr(C)]
#[derive(Debug, Default)]
struct AdminCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

const _: () = assert!(std::mem::size_of::<AdminCmd>() == 72);

/// `_IOWR('N', 0x41, struct nvme_admin_cmd)`.
const ADMIN_CMD: Opcode = opcode::read_write::<AdminCmd>(b'N', 0x41);

/// Identify (admin opcode 06h) and Format NVM (80h).
const IDENTIFY: u8 = 0x06;
const FORMAT_NVM: u8 = 0x80;

/// Format of a large drive can take many minutes; the kernel's default admin timeout is 60 s.
const FORMAT_TIMEOUT_MS: u32 = 4 * 3600 * 1000;

/// The ioctl, returning the kernel's answer: 0, or the NVMe status of a failed command.
struct Passthru<'a>(&'a mut AdminCmd);

// SAFETY: `ADMIN_CMD` is the kernel's NVME_IOCTL_ADMIN_CMD and its argument is a pointer to
// a `struct nvme_admin_cmd`, which `AdminCmd` reproduces field for field (`repr(C)`, 72
// bytes, checked above). The kernel reads the struct and writes `result` back into it, so
// the ioctl is mutating; the pointer comes from a live `&mut AdminCmd`.
unsafe impl Ioctl for Passthru<'_> {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        ADMIN_CMD
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::from_mut(self.0).cast()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// Sends `cmd` with `buf` (if any) as its data buffer; Err says what failed: the ioctl
/// itself (not an NVMe device, no permission) or the command (its NVMe status).
/// `buf` is borrowed mutably for the whole call, so the `data_len` bytes at `addr` stay
/// valid and unaliased while the kernel fills them.
fn admin(dev: &File, mut cmd: AdminCmd, buf: Option<&mut [u8]>) -> Result<u32, String> {
    if let Some(b) = buf {
        cmd.addr = b.as_mut_ptr() as u64;
        cmd.data_len = u32::try_from(b.len()).map_err(|_| "buffer too large".to_string())?;
    }
    let op = cmd.opcode;
    // SAFETY: see `Passthru`; the data buffer, if any, is `buf`, alive until we return.
    let status = unsafe { rustix::ioctl::ioctl(dev, Passthru(&mut cmd)) }
        .map_err(|e| format!("the NVMe admin ioctl (opcode {op:#04x}) failed: {e}"))?;
    if status != 0 {
        return Err(format!(
            "the drive refused admin command {op:#04x}: NVMe status {status:#06x}"
        ));
    }
    Ok(cmd.result)
}

/// What Identify Controller and Identify Namespace say about formatting namespace `nsid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatSupport {
    /// OACS bit 1: the controller supports Format NVM.
    pub format: bool,
    /// FNA bit 1: a secure erase applies to every namespace of the controller.
    pub erase_all_namespaces: bool,
    /// The `cdw10` that keeps the namespace's current LBA format, metadata and protection
    /// settings, with Secure Erase Setting 1.
    pub cdw10: u32,
}

/// Reads the format support from the two Identify data structures (4 KiB each).
pub fn support(ctrl: &[u8], ns: &[u8]) -> FormatSupport {
    let byte = |d: &[u8], i: usize| d.get(i).copied().unwrap_or(0);
    let oacs = u16::from_le_bytes([byte(ctrl, 256), byte(ctrl, 257)]);
    let fna = byte(ctrl, 524);
    let flbas = byte(ns, 26);
    let dps = byte(ns, 29);
    let lbaf = u32::from(flbas & 0x0f) | (u32::from((flbas >> 5) & 0x03) << 4);
    let mset = u32::from((flbas >> 4) & 1);
    let pi = u32::from(dps & 0x07);
    let pil = u32::from((dps >> 3) & 1);
    let ses = 1u32;
    FormatSupport {
        format: oacs & 0x2 != 0,
        erase_all_namespaces: fna & 0x2 != 0,
        cdw10: (lbaf & 0x0f)
            | (mset << 4)
            | (pi << 5)
            | (pil << 8)
            | (ses << 9)
            | ((lbaf >> 4) << 12),
    }
}

/// Formats namespace `nsid` of the drive behind `dev` (its block device) with a user data
/// erase, keeping its LBA format; Ok says what the drive did. Err means the drive was not
/// formatted (no Format NVM, refused, not NVMe): the caller erases another way.
pub fn format_user_data_erase(dev: &File, nsid: u32) -> Result<String, String> {
    let mut ctrl = vec![0u8; 4096];
    admin(
        dev,
        AdminCmd {
            opcode: IDENTIFY,
            cdw10: 1,
            ..AdminCmd::default()
        },
        Some(&mut ctrl),
    )?;
    let mut ns = vec![0u8; 4096];
    admin(
        dev,
        AdminCmd {
            opcode: IDENTIFY,
            nsid,
            cdw10: 0,
            ..AdminCmd::default()
        },
        Some(&mut ns),
    )?;
    let s = support(&ctrl, &ns);
    if !s.format {
        return Err("the controller does not support Format NVM (OACS bit 1 clear)".into());
    }
    admin(
        dev,
        AdminCmd {
            opcode: FORMAT_NVM,
            nsid,
            cdw10: s.cdw10,
            timeout_ms: FORMAT_TIMEOUT_MS,
            ..AdminCmd::default()
        },
        None,
    )?;
    Ok(format!(
        "NVMe Format NVM, user data erase (SES 1), namespace {nsid}{}",
        if s.erase_all_namespaces {
            " (the drive erases all its namespaces)"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_keeps_the_namespace_settings_and_asks_for_a_user_data_erase() {
        let mut ctrl = vec![0u8; 4096];
        let mut ns = vec![0u8; 4096];
        assert!(!support(&ctrl, &ns).format);
        ctrl[256] = 0x02; // OACS: Format NVM
        ctrl[524] = 0x02; // FNA: secure erase applies to all namespaces
        let s = support(&ctrl, &ns);
        assert_eq!(
            (s.format, s.erase_all_namespaces, s.cdw10),
            (true, true, 1 << 9)
        );
        // LBA format 2 with metadata in the LBA (MSET) and protection type 1, PI first.
        ns[26] = 0x12;
        ns[29] = 0x09;
        assert_eq!(
            support(&ctrl, &ns).cdw10,
            2 | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9)
        );
        // LBA format 18 (NVMe 2.0: upper bits in FLBAS 6:5 go to CDW10 13:12).
        ns[26] = 0x22;
        ns[29] = 0;
        assert_eq!(support(&ctrl, &ns).cdw10, 2 | (1 << 9) | (1 << 12));
        // Short or missing data reads as "not supported", never a panic.
        assert!(!support(&[], &[]).format);
    }

    #[test]
    fn a_file_that_is_not_an_nvme_device_is_refused_with_the_reason() {
        let f = tempfile::tempfile().unwrap();
        let err = format_user_data_erase(&f, 1).unwrap_err();
        assert!(err.contains("NVMe admin ioctl"), "{err}");
    }
}
